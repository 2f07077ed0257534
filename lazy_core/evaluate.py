"""Quality of the demo model under a sampling method: class accuracy and FID in the Fashion-MNIST
classifier's feature space (against the test split), PSNR/SSIM against an exact reference, MACs, time."""

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import fashion
from .classifier import FashionClassifier, evaluate
from .diffusion import GaussianDiffusion
from .metrics import frechet_distance, gaussian_stats, psnr, ssim
from .run import LazyRun


def latents_to_grey(z):
    """Demo latents (N, 4, 16, 16) -> grey images (N, 1, 32, 32) in [0, 1] (the VAE stand-in's map)."""
    return ((F.pixel_shuffle(z.float(), 2) + 1) / 2).clamp(0, 1)


@dataclass
class Sampled:
    images: torch.Tensor          # (N, 1, 32, 32)
    seconds: float
    lazy_ratio: float
    macs: float                   # attention + MLP MACs actually computed, per image (cond + uncond rows)


class Evaluator:
    """Fixed labels and noise for every method, and the test split's feature statistics."""

    def __init__(self, model, classifier_path, per_class=30, seed=0, batch=100):
        self.model = model
        self.classifier = FashionClassifier.load(classifier_path)
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(10).repeat_interleave(per_class)
        c = model.config
        self.noise = torch.randn(len(self.labels), c.in_channels, c.input_size, c.input_size, generator=g)
        self.batch = batch
        images, labels = fashion.load("test")
        test = torch.from_numpy(fashion.to_grey32(images))
        _, feats = evaluate(self.classifier, test, torch.from_numpy(labels))
        self.test_stats = gaussian_stats(feats)
        self.diffusion = GaussianDiffusion()

    def sample(self, steps, cfg, policy=None, options=None):
        """Samples every label with DDIM; with a policy, lazily (one LazyRun per batch)."""
        outs, ratio_sum, macs_saved, t0 = [], 0.0, 0.0, time.perf_counter()
        for i in range(0, len(self.labels), self.batch):
            noise, y = self.noise[i:i + self.batch], self.labels[i:i + self.batch]
            if policy is None:
                z = self.diffusion.ddim_sample(self.model, noise, y, steps, cfg, null_label=10)
            else:
                kw = {} if options is None else {"options": options}
                with LazyRun(self.model, policy, **kw) as run:
                    z = self.diffusion.ddim_sample(run, noise, y, steps, cfg, null_label=10)
                ratio_sum += run.report["ratio"] * len(y)
                macs_saved += run.report["macs_saved"]
            outs.append(latents_to_grey(z))
        seconds = time.perf_counter() - t0
        n = len(self.labels)
        full = self.full_macs(steps, cfg)
        return Sampled(torch.cat(outs), seconds, ratio_sum / n, full - macs_saved / n)

    def full_macs(self, steps, cfg):
        """Attention + MLP MACs per image of an exact run (both CFG rows)."""
        from .adapters import module_macs
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
        return out
