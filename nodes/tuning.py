"""Tools for choosing a laziness: a sweep grid of one prompt at several values, and an A/B compare."""

import hashlib
import time

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..lazy_core.demo.metrics import psnr, ssim
from ..lazy_core.engine.cache import CacheOptions
from .lazy_hook import session_of, uninstall
from .lazy_nodes import CATEGORY, GATES, apply_gates, range_inputs
from .lazy_report import render_difference, render_grid

DEFAULT_VALUES = "0, 0.25, 0.5, 0.75, 1"
MAX_VALUES = 12
_exact = {}              # fingerprint -> the last exact run (samples, seconds): a changed list reuses it


def parse_values(text):
    """'0, 0.5, 1' -> [0.0, 0.5, 1.0] (sorted, unique, 0 first); a clear error for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = sorted({float(p) for p in parts})
    except ValueError:
        raise ValueError(f"laziness_values = {text!r} is not a list of numbers: write them separated by commas, "
                         f"e.g. {DEFAULT_VALUES!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values) or len(values) > MAX_VALUES:
        raise ValueError(f"laziness_values = {text!r} must hold 1 to {MAX_VALUES} numbers in 0..1 (0 = exact, 1 = as "
                         f"lazy as the gates allow), e.g. {DEFAULT_VALUES!r}")
    return values if values[0] == 0 else [0.0, *values]        # the exact run is every column's reference


def _digest(value, h):
    """Feeds conditioning / latent structure into a hash: tensors by bytes, containers recursively."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _digest(value[k], h)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _digest(v, h)
    else:
        h.update(repr(value).encode())


def fingerprint(model, *parts):
    """What the exact run depends on: the base model object and its weight patches, every sampling input."""
    h = hashlib.sha256()
    h.update(f"{id(model.model)}/{model.patches_uuid}".encode())
    for part in parts:
        _digest(part, h)
    return h.hexdigest()


def sample(model, noise, latent, steps, cfg, sampler_name, scheduler, positive, negative, seed, progress):
    """One KSampler run (as core's common_ksampler), timed on the device; returns (samples, seconds)."""
    device = mm.get_torch_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                  latent["samples"], noise_mask=latent.get("noise_mask"), callback=progress,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return samples, time.perf_counter() - started


class LazinessSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_LazinessSweep",
            display_name="LazyDiT Laziness Sweep",
            category=CATEGORY,
            description="Samples the same seed and prompt at several laziness values and draws one grid: a column "
                        "per value (the exact run first), a row per image, each labelled with the lazy share "
                        "measured, the sampling time and its PSNR against the exact column. Without gates it "
                        "compares the MODEL's own LazyDiT patch (FORA, Δ-DiT, ...) with the exact run.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model (a LazyDiT patch on it is replaced)."),
                io.Conditioning.Input("positive", tooltip="The prompt (or class label) every column samples."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (or null label) for CFG."),
                io.Latent.Input("latent_image", tooltip="The starting latent; its batch is each column's images."),
                io.Vae.Input("vae", tooltip="Decodes each column for the grid."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The noise seed, the same for every column."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampler steps of every column."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as on KSampler."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="The sampler, as on KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The scheduler, as on KSampler."),
                io.String.Input("laziness_values", default=DEFAULT_VALUES,
                                tooltip="Comma-separated laziness values (0..1) to draw; 0 (exact) is always "
                                        "drawn first, as the reference."),
                GATES.Input("gates", optional=True,
                            tooltip="Gates for the model (Load Lazy Gates). Left out: the MODEL's own LazyDiT "
                                    "patch is drawn next to the exact run."),
                *range_inputs(),
            ],
            outputs=[io.Image.Output(display_name="grid"),
                     io.Image.Output(display_name="images", tooltip="Every column's images, column by column."),
                     io.String.Output(display_name="text")],
        )

    @classmethod
    def validate_inputs(cls, laziness_values=None, **_):
        if laziness_values is not None:
            try:
                parse_values(laziness_values)
            except ValueError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name, scheduler,
                laziness_values, gates=None, start_percent=0.0, end_percent=1.0):
        exact_model = uninstall(model)
        patch = session_of(model)
        if gates is not None:
            options = CacheOptions(reuse="extrapolate")
            runs = [(v, lambda v=v: apply_gates(exact_model, gates, v, options, start_percent, end_percent)[0])
                    for v in parse_values(laziness_values)[1:]]
            names = ["exact", *(f"laziness {v:.2f}" for v, _ in runs)]
        elif patch is not None:
            runs, names = [(None, lambda: model)], ["exact", patch.title]
        else:
            raise ValueError("Laziness Sweep needs gates (connect Load Lazy Gates) or a MODEL patched by a LazyDiT "
                             "node (Apply Lazy Gates, FORA Cache, Δ-DiT Cache) to compare with the exact run")

        latent = latent_image.copy()
        latent["samples"] = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))
        total = steps * (len(runs) + 1)
        bar = comfy.utils.ProgressBar(total)
        previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

        def progress(offset):
            def callback(step, x0, x, total_steps):
                preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
                bar.update_absolute(offset + step + 1, total, preview)
            return callback

        key = fingerprint(exact_model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler)
        reused = key in _exact
        if reused:
            exact, exact_seconds = _exact[key]
            bar.update_absolute(steps, total)
        else:
            exact, exact_seconds = sample(exact_model, noise, latent, steps, cfg, sampler_name, scheduler, positive,
                                          negative, seed, progress(0))
            _exact.clear()                                   # keep one: a reference costs a full run
            _exact[key] = (exact.cpu(), exact_seconds)
        columns = [(exact, exact_seconds, 0.0)]
        for i, (_, make) in enumerate(runs):
            lazy_model = make()
            samples, seconds = sample(lazy_model, noise, latent, steps, cfg, sampler_name, scheduler, positive,
                                      negative, seed, progress(steps * (i + 1)))
            report = session_of(lazy_model).report
            columns.append((samples, seconds, report["ratio"] if report else 0.0))

        images = [vae.decode(samples.to(mm.intermediate_device())).float().cpu().clamp(0, 1)
                  for samples, _, _ in columns]                                   # each (B, H, W, C)
        if len(images[0].shape) == 5:                                              # video VAEs: first frame
            images = [im[:, 0] for im in images]
        ref = images[0].movedim(-1, 1)
        labels, lines = [], []
        for name, image, (_, seconds, share) in zip(names, images, columns):
            scores = [psnr(image[b:b + 1].movedim(-1, 1), ref[b:b + 1]) for b in range(len(image))]
            mean = sum(scores) / len(scores)
            speed = exact_seconds / seconds if seconds > 0 else float("nan")
            quality = "reference" if name == "exact" else f"PSNR {mean:.1f} dB"
            labels.append([name, f"{share:.0%} lazy, {seconds:.1f} s ({speed:.2f}x)", quality])
            lines.append(f"{name}: {share:.1%} of attention/MLP modules lazy, {seconds:.2f} s ({speed:.2f}x), "
                         f"{quality}" + (" (exact run reused from the last sweep)" if reused and name == "exact"
                                         else ""))
        grid = render_grid(images, labels)
        return io.NodeOutput(grid, torch.cat(images), "\n".join(lines))


class Compare(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_Compare",
            display_name="LazyDiT Compare Images",
            category=CATEGORY,
            description="How far image_b is from image_a (say, a lazy run from the exact one): PSNR and SSIM "
                        "per image and on average, and a heat-map of the per-pixel difference (dark = same, "
                        "bright = differs by a quarter of the range or more).",
            inputs=[io.Image.Input("image_a", tooltip="The reference, e.g. the exact run."),
                    io.Image.Input("image_b", tooltip="The images to score; a batch of one is compared with "
                                                      "every image_a, and the other way round.")],
            outputs=[io.Image.Output(display_name="difference"),
                     io.Float.Output(display_name="psnr"),
                     io.Float.Output(display_name="ssim"),
                     io.String.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, image_a, image_b):
        a, b = image_a.float().cpu(), image_b.float().cpu()
        if a.shape[1:] != b.shape[1:] or (len(a) != len(b) and 1 not in (len(a), len(b))):
            raise ValueError(f"Compare needs images of one size: image_a is {len(a)} x {a.shape[2]}x{a.shape[1]}, "
                             f"image_b {len(b)} x {b.shape[2]}x{b.shape[1]} (batch x width x height); compare runs "
                             f"of the same latent size (equal batches, or a batch of one)")
        n = max(len(a), len(b))
        a, b = a.expand(n, *a.shape[1:]), b.expand(n, *b.shape[1:])
        pa, pb = a.movedim(-1, 1).clamp(0, 1), b.movedim(-1, 1).clamp(0, 1)
        psnrs = [psnr(pa[i:i + 1], pb[i:i + 1]) for i in range(n)]
        small = min(a.shape[1], a.shape[2]) < 11                   # SSIM's 11-px window does not fit
        ssims = [float("nan") if small else ssim(pa[i:i + 1], pb[i:i + 1]) for i in range(n)]
        mean_psnr, mean_ssim = sum(psnrs) / n, sum(ssims) / n
        lines = [f"{n} image{'s' * (n != 1)}: PSNR {mean_psnr:.2f} dB, SSIM {mean_ssim:.4f} (mean; identical "
                 f"images give PSNR inf, SSIM 1)"]
        if n > 1:
            lines += [f"image {i}: PSNR {p:.2f} dB, SSIM {s:.4f}" for i, (p, s) in enumerate(zip(psnrs, ssims))]
        return io.NodeOutput(render_difference(a, b), mean_psnr, mean_ssim, "\n".join(lines))


NODES = [LazinessSweep, Compare]
