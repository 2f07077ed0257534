"""Tools for choosing a laziness: a sweep grid of one prompt at several values, and an A/B compare."""

import hashlib
import math
import time

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..lazy_core.demo.metrics import STRIP_ROWS, WINDOW, pair_scores, psnr_of, summarize_psnr
from ..lazy_core.engine.cache import CacheOptions
from ..lazy_core.engine.policies import predicted_psnr
from .checks import Combo, Float, answer, check_inputs, check_range, short
from .families import family_of
from .family_schedule import peak2
from .lazy_hook import check_no_core_cache, lazy_layout, schedule_times, session_of, uninstall
from .lazy_nodes import CATEGORY, GATES, apply_gates, range_inputs
from .lazy_report import render_difference, render_grid
from .work import interruptible

DEFAULT_VALUES = "0, 0.25, 0.5, 0.75, 1"
MAX_VALUES = 12
MAX_STEPS = 1000             # per column; a sweep samples at most (MAX_VALUES + 1) x MAX_STEPS steps
MAX_ROWS = 16                # images per column (the latent's batch)
MAX_SIDE = 4096              # pixels (latent side x 8) of a model without a fixed size, e.g. PixArt
MAX_COMPARE_PIXELS = 16 * 4096 * 4096    # per Compare batch: 16 images of 4096 x 4096
_exact = {}              # fingerprint -> the last exact run (samples, seconds): a changed list reuses it


def parse_values(text):
    """'0, 0.5, 1' -> [0.0, 0.5, 1.0] (sorted, unique, 0 first); a clear error for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = sorted({float(p) for p in parts})
    except ValueError:
        raise ValueError(f"laziness_values = {short(text)} is not a list of numbers: write them separated by "
                         f"commas, e.g. {DEFAULT_VALUES!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values) or len(values) > MAX_VALUES:
        raise ValueError(f"laziness_values = {short(text)} must hold 1 to {MAX_VALUES} numbers in 0..1 (0 = exact, "
                         f"1 = as lazy as the gates allow), e.g. {DEFAULT_VALUES!r}")
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


def predictions(model, gates, values, exact, steps, scheduler):
    """Per column (the exact one first: None), the (lazy share, PSNR) a chain schedule's plan predicts on
    this run's schedule, from its measured chain costs; None for gates whose decisions read each image."""
    if gates is None or gates.model.chain is None or not gates.model.static:
        return [None] * len(values)
    bank = gates.model
    ms = model.get_model_object("model_sampling")
    times = schedule_times(ms, comfy.samplers.calculate_sigmas(ms, scheduler, steps).cpu(),
                           family_of(model.model.diffusion_model))
    final = model.model.process_latent_in(exact.float().cpu())          # the units the costs were measured in
    numel = bank.info.recipe.get("latent_numel") or final[0].numel()
    range2 = bank.info.recipe.get("peak2") if "latent_numel" in bank.info.recipe else peak2(model, final)
    return [None] + [predicted_psnr(bank, times, v, numel, range2) for v in values[1:]]


def value_labels(values):
    """'laziness 0.25' per value, with as many decimals (2 to 12) as it takes to tell them apart."""
    for digits in range(2, 13):
        names = [f"{v:.{digits}f}" for v in values]
        if len(set(names)) == len(names):
            break
    else:
        names = [repr(v) for v in values]
    return [f"laziness {n}" for n in names]


def check_latent(net, latent):
    """Refuses, before any sampling, a latent the model cannot draw or one past the sweep's limits."""
    samples = latent["samples"]
    rows, (h, w) = samples.shape[0], samples.shape[-2:]
    side = getattr(getattr(net, "config", None), "input_size", None)
    if side is not None and (h, w) != (side, side):
        raise ValueError(f"latent_image is {w * 8}x{h * 8} px (latent {w}x{h}), but this DiT draws only "
                         f"{side * 8}x{side * 8} (its position embedding has a fixed size): set the empty "
                         f"latent to {side * 8}x{side * 8}")
    if max(h, w) * 8 > MAX_SIDE:
        raise ValueError(f"latent_image is {w * 8}x{h * 8} px, larger than the sweep's {MAX_SIDE} px per side: "
                         f"sweep at a smaller size (the laziness that works carries over)")
    if rows > MAX_ROWS:
        raise ValueError(f"latent_image holds {rows} images, more than the sweep's {MAX_ROWS} rows: use a "
                         f"batch of at most {MAX_ROWS}")


class LazinessSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_LazinessSweep",
            display_name="LazyDiT Laziness Sweep",
            category=CATEGORY,
            description="Samples the same seed and prompt at several laziness values and draws one grid: a column "
                        "per value (the exact run first), a row per image, each labelled with the lazy share "
                        "measured, the sampling time and its PSNR against the exact column (median, min-max "
                        "over the rows). Without gates it compares the MODEL's own LazyDiT patch (FORA, Δ-DiT, "
                        "...) with the exact run.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model (a LazyDiT patch on it is replaced)."),
                io.Conditioning.Input("positive", tooltip="The prompt (or class label) every column samples."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (or null label) for CFG."),
                io.Latent.Input("latent_image", tooltip=f"The starting latent; its batch is each column's images. At "
                                                        f"most {MAX_ROWS} images of at most {MAX_SIDE} px per side "
                                                        f"(a DiT: its own size)."),
                io.Vae.Input("vae", tooltip="Decodes each column for the grid."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The noise seed, the same for every column."),
                io.Int.Input("steps", default=20, min=1, max=MAX_STEPS,
                             tooltip=f"Sampler steps of every column (at most {MAX_STEPS})."),
                Float("cfg", default=4.0, min=0.0, max=100.0, step=0.1, round=0.01,
                      tooltip="Classifier-free guidance scale, as on KSampler."),
                Combo("sampler_name", comfy.samplers.KSampler.SAMPLERS, default="euler",
                      tooltip="The sampler, as on KSampler."),
                Combo("scheduler", comfy.samplers.KSampler.SCHEDULERS, default="normal",
                      tooltip="The scheduler, as on KSampler."),
                io.String.Input("laziness_values", default=DEFAULT_VALUES,
                                tooltip=f"Comma-separated laziness values (0..1, at most {MAX_VALUES}) to draw; "
                                        f"0 (exact) is always drawn first, as the reference."),
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
    def validate_inputs(cls, laziness_values=None):
        return True if laziness_values is None else answer(parse_values, laziness_values)

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name, scheduler,
                laziness_values, gates=None, start_percent=0.0, end_percent=1.0):
        # Everything that can fail is checked before the first model call (the exact column is a full run).
        check_inputs(cls, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                     start_percent=start_percent, end_percent=end_percent)
        check_range(start_percent, end_percent)
        values = parse_values(laziness_values)
        exact_model = uninstall(model)
        net = exact_model.model.diffusion_model
        check_latent(net, latent_image)
        patch = session_of(model)
        if gates is not None or patch is not None:
            check_no_core_cache(model)                  # else the exact column would run first
        if gates is not None:
            gates.model.check_fits(*lazy_layout(net, gates.model), name="gates")
            # As Apply Lazy Gates' defaults: chains as long as the gates measured, so 1 is as lazy as they allow.
            options = CacheOptions(reuse="extrapolate", max_lazy_steps=gates.model.longest_chain, correct=True)
            runs = [apply_gates(exact_model, gates, v, options, start_percent, end_percent)[0] for v in values[1:]]
            names = ["exact", *value_labels(values[1:])]
        elif patch is not None:
            runs, names = [model], ["exact", patch.title]
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
        with interruptible(net):
            if reused:
                exact, exact_seconds = _exact[key]
                bar.update_absolute(steps, total)
            else:
                exact, exact_seconds = sample(exact_model, noise, latent, steps, cfg, sampler_name, scheduler,
                                              positive, negative, seed, progress(0))
                _exact.clear()                               # keep one: a reference costs a full run
                _exact[key] = (exact.cpu(), exact_seconds)
            columns = [(exact, exact_seconds, 0.0)]
            for i, lazy_model in enumerate(runs):
                samples, seconds = sample(lazy_model, noise, latent, steps, cfg, sampler_name, scheduler, positive,
                                          negative, seed, progress(steps * (i + 1)))
                report = session_of(lazy_model).report
                columns.append((samples, seconds, report["ratio"] if report else 0.0))

        images = [vae.decode(samples.to(mm.intermediate_device())).float().cpu().clamp(0, 1)
                  for samples, _, _ in columns]                                   # each (B, H, W, C)
        if len(images[0].shape) == 5:                                              # video VAEs: first frame
            images = [im[:, 0] for im in images]
        ref = images[0]
        expected = predictions(exact_model, gates, values, exact, steps, scheduler)      # at the same chains
        labels, lines = [], []
        for name, image, (_, seconds, share), guess in zip(names, images, columns, expected):
            scores = [psnr_of(float((image[b].double() - ref[b].double()).square().mean())) for b in range(len(image))]
            _, quality, label = summarize_psnr(scores)
            speed = exact_seconds / seconds if seconds > 0 else float("nan")
            if guess is not None:             # the prediction is of the images' mean log error: their mean PSNR
                known = [v for v in scores if math.isfinite(v)]
                mean = f"mean {sum(known) / len(known):.2f} dB, " if known else ""
                quality += f", {mean}predicted {guess[1]:.1f} dB at {guess[0]:.0%} lazy"
                label += f" (pred. {guess[1]:.1f})"
            if name == "exact":
                quality = label = "reference"
            labels.append([name, f"{share:.0%} lazy, {seconds:.1f} s ({speed:.2f}x)", label])
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
            description="How far image_b is from image_a (say, a lazy run from the exact one): PSNR (median, min "
                        "and max over the batch) and SSIM per image, and a heat-map of the per-pixel difference "
                        "(dark = same, bright = differs by a quarter of the range or more, or NaN). Works in "
                        f"strips of {STRIP_ROWS} rows, so memory stays bounded; at most {MAX_COMPARE_PIXELS >> 20} "
                        "megapixels per batch.",
            inputs=[io.Image.Input("image_a", tooltip="The reference, e.g. the exact run."),
                    io.Image.Input("image_b", tooltip="The images to score; a batch of one is compared with "
                                                      "every image_a, and the other way round.")],
            outputs=[io.Image.Output(display_name="difference"),
                     io.Float.Output(display_name="psnr", tooltip="Median PSNR over the batch (inf: identical)."),
                     io.Float.Output(display_name="ssim", tooltip="Mean SSIM over the images without NaN."),
                     io.String.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, image_a, image_b):
        a, b = image_a.float().cpu(), image_b.float().cpu()                   # (N, H, W, C), no copy if so
        check_pair(a, b)
        n, h, w = max(len(a), len(b)), a.shape[1], a.shape[2]
        a, b = a.expand(n, *a.shape[1:]), b.expand(n, *b.shape[1:])
        interrupt = mm.throw_exception_if_processing_interrupted
        difference = torch.empty(n, h, w, 3)
        scores, lines = [], []
        for i in range(n):
            pa, pb = a[i].movedim(-1, 0), b[i].movedim(-1, 0)                 # (C, H, W) views
            scores.append(pair_scores(pa, pb, clamp=True, on_strip=interrupt))
            for r0 in range(0, h, STRIP_ROWS):
                interrupt()
                difference[i, r0:r0 + STRIP_ROWS] = render_difference(a[i:i + 1, r0:r0 + STRIP_ROWS],
                                                                      b[i:i + 1, r0:r0 + STRIP_ROWS])[0]
        psnr, psnr_text, _ = summarize_psnr([s.psnr for s in scores])
        ssims = [s.ssim for s in scores if not (s.nan_a or s.nan_b or s.ssim != s.ssim)]
        ssim = sum(ssims) / len(ssims) if ssims else float("nan")
        ssim_text = f"SSIM {ssim:.4f}" + (" (mean)" if len(ssims) > 1 else "") if ssims else \
            "no SSIM" + (f" (the images are smaller than its {WINDOW}-px window)" if min(h, w) < 11 else "")
        lines.append(f"{n} image{'s' * (n != 1)}: {psnr_text}, {ssim_text}")
        for i, s in enumerate(scores):
            held = [name for name, bad in (("image_a", s.nan_a), ("image_b", s.nan_b)) if bad]
            if held:
                lines.append(f"image {i}: {' and '.join(held)} hold{'s' * (len(held) == 1)} NaN values (no PSNR "
                             f"or SSIM; the run that made {'it' if len(held) == 1 else 'them'} diverged)")
            elif n > 1:
                lines.append(f"image {i}: PSNR {s.psnr:.2f} dB, SSIM {s.ssim:.4f}")
        return io.NodeOutput(difference, psnr, ssim, "\n".join(lines))


def check_pair(a, b):
    """Refuses image batches Compare cannot pair up, naming what differs: channels, size, batch, or a size
    past MAX_COMPARE_PIXELS."""
    def kind(c):
        return {1: "grey", 3: "RGB", 4: "RGBA"}.get(c, f"{c}-channel")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"image_a has {a.shape[-1]} channels ({kind(a.shape[-1])}), image_b {b.shape[-1]} "
                         f"({kind(b.shape[-1])}): compare images of the same kind (core Split Image with Alpha "
                         f"takes the alpha channel off an RGBA image)")
    if a.shape[1:3] != b.shape[1:3] or (len(a) != len(b) and 1 not in (len(a), len(b))):
        raise ValueError(f"Compare needs images of one size: image_a is {len(a)} x {a.shape[2]}x{a.shape[1]}, "
                         f"image_b {len(b)} x {b.shape[2]}x{b.shape[1]} (batch x width x height); compare runs "
                         f"of the same latent size (equal batches, or a batch of one)")
    pixels = max(len(a), len(b)) * a.shape[1] * a.shape[2]
    if pixels > MAX_COMPARE_PIXELS:
        raise ValueError(f"image_a and image_b hold {pixels / 2 ** 20:.0f} megapixels per batch, more than "
                         f"Compare's {MAX_COMPARE_PIXELS >> 20}: compare fewer or smaller images at a time")


NODES = [LazinessSweep, Compare]
