"""Quality of the demo model under a sampling method: class accuracy and FID in the Fashion-MNIST
classifier's feature space (against the test split), PSNR/SSIM against an exact reference, MACs, time."""

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.run import LazyRun
from ..models.diffusion import GaussianDiffusion, space_timesteps
from . import fashion
from .classifier import FashionClassifier, evaluate
from .metrics import frechet_distance, gaussian_stats, psnr, ssim


def latents_to_grey(z):
    """Demo latents (N, 4, 16, 16) -> grey images (N, 1, 32, 32) in [0, 1] (the VAE stand-in's map)."""
    return ((F.pixel_shuffle(z.float(), 2) + 1) / 2).clamp(0, 1)


@dataclass
class Sampled:
    images: torch.Tensor          # (N, 1, 32, 32)
    seconds: float
    lazy_ratio: float
    macs: float                   # attention + MLP MACs actually computed, per image (cond + uncond rows)
    lazy_map: torch.Tensor = None     # (steps, depth, 2) share of rows lazy, over all streams and images


class Evaluator:
    """Fixed labels and noise for every method, and the test split's feature statistics."""

    def __init__(self, model, classifier_path, per_class=30, seed=0, batch=100, seeds=None):
        """seeds: several noise seeds, `per_class` images per class each, scored together and per seed."""
        self.model = model
        self.classifier = FashionClassifier.load(classifier_path)
        self.seeds = list(seeds) if seeds else [seed]
        c = model.config
        labels, noise = [], []
        for s in self.seeds:
            g = torch.Generator().manual_seed(s)
            labels.append(torch.arange(10).repeat_interleave(per_class))
            noise.append(torch.randn(len(labels[-1]), c.in_channels, c.input_size, c.input_size, generator=g))
        self.labels, self.noise = torch.cat(labels), torch.cat(noise)
        self.group = len(labels[0])                 # images per seed
        self.batch = batch
        images, labels = fashion.load("test")
        test = torch.from_numpy(fashion.to_grey32(images))
        _, feats = evaluate(self.classifier, test, torch.from_numpy(labels))
        self.test_stats = gaussian_stats(feats)
        self.diffusion = GaussianDiffusion()

    def sample(self, steps, cfg, policy=None, options=None, dydit=None):
        """Samples every label with DDIM; with a policy, lazily (one LazyRun per batch); with `dydit`, a DyDiT
        model instead of the evaluator's: {"model": m} samples it dynamically (its MACs measured from the calls'
        widths, and with a policy from what its modules computed), {"model": m, "route": "dense"} as its
        complete model; other keys go to its forward."""
        model, calls, forward = self.model, None, None
        if dydit is not None:
            model, calls, dydit = dydit["model"], [], {k: v for k, v in dydit.items() if k != "model"}

            def forward(x, t, y):
                return model(x, t, y, stats=calls, **dydit)
        outs, ratio_sum, macs_saved, t0 = [], 0.0, 0.0, time.perf_counter()
        lazy_map = None
        for i in range(0, len(self.labels), self.batch):
            noise, y = self.noise[i:i + self.batch], self.labels[i:i + self.batch]
            if policy is None:
                z = self.diffusion.ddim_sample(forward or model, noise, y, steps, cfg, null_label=10)
            else:
                kw = {} if options is None else {"options": options}
                streams = ("positive", "negative") if cfg != 1 else None
                with LazyRun(model, policy, streams=streams, timesteps=space_timesteps(steps)[::-1], forward=forward,
                             sigmas=self.diffusion.ddim_sigmas(steps), **kw) as run:
                    z = self.diffusion.ddim_sample(run, noise, y, steps, cfg, null_label=10)
                ratio_sum += run.report["ratio"] * len(y)
                macs_saved += run.report["macs_saved"]
                maps = [st["ratio_map"] * st["rows"] for st in run.report["streams"]]     # (depth, 2, steps)
                part = torch.stack(maps).sum(0).permute(2, 0, 1) / (2 * len(y))             # (steps, depth, 2)
                lazy_map = part * len(y) if lazy_map is None else lazy_map + part * len(y)
            outs.append(latents_to_grey(z))
        seconds = time.perf_counter() - t0
        n = len(self.labels)
        lazy_map = None if lazy_map is None else lazy_map / n
        if dydit is None or dydit.get("route") == "dense":
            macs = self.full_macs(steps, cfg) - macs_saved / n
        else:
            from ..models.dydit import summarize
            macs = summarize(model.config, calls)["macs"] / n
        return Sampled(torch.cat(outs), seconds, ratio_sum / n, macs, lazy_map)

    def full_macs(self, steps, cfg):
        """Attention + MLP MACs per image of an exact run (both CFG rows)."""
        from ..engine.proxies import module_macs
        tokens = self.model.x_embedder.num_patches
        per_row = sum(a + m for a, m in module_macs(self.model.blocks, tokens))
        return per_row * steps * (2 if cfg != 1 else 1)

    @torch.no_grad()
    def scores(self, s: Sampled, reference: Sampled = None):
        acc, feats = evaluate(self.classifier, s.images, self.labels)
        out = {"accuracy": acc, "fid": frechet_distance(gaussian_stats(feats), self.test_stats),
               "seconds": s.seconds, "lazy_ratio": s.lazy_ratio, "gmacs": s.macs / 1e9}
        if reference is not None:
            out["psnr"] = psnr(s.images, reference.images)
            out["ssim"] = ssim(s.images, reference.images)
            if len(self.seeds) > 1:
                per = [psnr(s.images[i:i + self.group], reference.images[i:i + self.group])
                       for i in range(0, len(self.labels), self.group)]
                out["psnr_seeds"] = per
                out["psnr_sd"] = float(torch.tensor(per).std())
        return out
