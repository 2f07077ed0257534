"""The Sensitivity Schedule of a block family (Flux, SD3, Wan, ...), measured through core ComfyUI's guider.

CFGGuider prepares the user's prompt, negative and latent as KSampler does (conds, batching, cond uuids,
the model's own wrappers); a KSAMPLER whose sampler function is the measuring loop (chains.measure_blocks)
then calls the guided model at each step of Euler on the model's "simple" sigmas. The block patches answer
to the loop's Holder, so a chain's lazy blocks stand in with the forecast the engine would make.
"""

import functools
import logging

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import torch

from ..lazy_core.engine.cache import CacheOptions
from ..lazy_core.engine.forecast import history
from ..lazy_core.training import chains
from ..lazy_core.training.sensitivity import CHAIN, ORDER
from . import lazy_hook
from .families import family_of, layout, patch_blocks

log = logging.getLogger(__name__)

SCHEDULER = "simple"
MEMORY_SHARE = 0.8            # of the free memory the measured residuals may take


def accelerator():
    return mm.get_torch_device()


def free_memory(device):
    return mm.get_free_memory(device)


def timesteps_for(model, steps):
    """Plan timesteps of a `steps`-step run on the measured scheduler (the calibration's schedule)."""
    ms = model.get_model_object("model_sampling")
    family = family_of(model.model.diffusion_model)
    return lazy_hook.schedule_times(ms, comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).cpu(), family)


def measuring_model(model, family, holder):
    """A clone of `model` whose blocks answer to `holder`; no OUTER_SAMPLE wrapper, as the loop holds the
    state, and no earlier LazyDiT patch."""
    m = lazy_hook.uninstall(model).clone()
    session = lazy_hook.LazySession(None, CacheOptions(level="block"), "sensitivity schedule")
    session.family, session.state = family, holder
    session.scale = lazy_hook.time_scale(model.get_model_object("model_sampling"), family)
    patch_blocks(m, session, family)
    m.add_wrapper_with_key(lazy_hook.WRAPPERS.APPLY_MODEL, lazy_hook.KEY,
                           functools.partial(lazy_hook.apply_model, session))
    return m


def trajectories(model, latent, images, seed, steps):
    """(sigmas, latent batch, noise) of the measured trajectories: the latent's first image `images` times,
    one noise per trajectory from `seed`, on `steps` sigmas of SCHEDULER."""
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).cpu()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    samples = samples[:1].repeat(images, *([1] * (samples.dim() - 1)))
    return sigmas, samples, comfy.sample.prepare_noise(samples, seed)


def guider(model, positive, negative, cfg):
    g = comfy.samplers.CFGGuider(model)
    g.set_conds(positive, negative)
    g.set_cfg(cfg)
    return g


def measure(model, positive, negative, latent, images, cfg, seed, steps, on_progress=None):
    """chains.measure_blocks on `images` trajectories of the user's latent (its first image, one noise per
    trajectory from `seed`) at `steps` Euler steps with guidance `cfg`. Refuses, after the first step,
    residuals that would not fit in the free memory."""
    net = model.model.diffusion_model
    family = family_of(net)
    _, depth, _ = layout(net, family)
    sigmas, samples, noise = trajectories(model, latent, images, seed, steps)
    timesteps = lazy_hook.schedule_times(model.get_model_object("model_sampling"), sigmas, family)
    holder = chains.Holder()
    span = chains.window(CHAIN, history("extrapolate", ORDER))
    device = accelerator()

    def check_memory(k, nbytes):
        """After the first step: the residuals stay where they are if the window fits, go to system RAM if
        only that has room (at the cost of transfers), else a clear refusal."""
        if k:
            return None
        need, free = nbytes * span, free_memory(device)
        if need <= MEMORY_SHARE * free:
            return None
        cpu = torch.device("cpu")
        ram = free_memory(cpu)
        if device.type != "cpu" and need <= MEMORY_SHARE * ram:
            log.info("LazyDiT schedule: %.1f GiB of residuals kept in system RAM (%.1f GiB free on %s)",
                     need / 2 ** 30, free / 2 ** 30, device)
            return cpu
        raise ValueError(f"the schedule keeps {span} steps of every block's residuals: {need / 2 ** 30:.1f} GiB for "
                         f"{images} trajectories of this latent, more than {MEMORY_SHARE:.0%} of the "
                         f"{free / 2 ** 30:.1f} GiB free on {device} (and of the {ram / 2 ** 30:.1f} GiB of free "
                         f"system RAM): set `images` lower or measure on a smaller latent")

    def progress(done, total):
        mm.throw_exception_if_processing_interrupted()
        if on_progress is not None:
            per = holder.calls / done if done else 1.0
            on_progress(holder.calls, max(holder.calls, round(total * per)))

    result = {}

    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])

        def evaluate(xx, k):
            return model_k(xx, sigmas[k] * s_in, **(extra_args or {}))

        def step(xx, k, denoised):
            return xx + (xx - denoised) / sigmas[k] * (sigmas[k + 1] - sigmas[k])
        result["costs"] = chains.measure_blocks(holder, evaluate, step, timesteps, x, depth, on_step=check_memory,
                                                on_progress=progress)
        return x

    guider(measuring_model(model, family, holder), positive, negative, cfg).sample(
        noise, samples, comfy.samplers.KSAMPLER(sampler_function), sigmas, seed=seed, disable_pbar=True)
    return result["costs"]


def check(model, gates, costs, positive, negative, latent, images, cfg, seed, on_progress=None):
    """The schedule's predicted-PSNR check (calibrate.psnr_offsets): core's euler sampler over the measured
    trajectories (the same latent, noise and sigmas) with the gates at each of CHECK_VALUES, through Apply
    Lazy Gates' own patch, against the exact finals the measurement kept."""
    from ..lazy_core.training.calibrate import CHECK_VALUES, psnr_offsets
    from .lazy_nodes import apply_gates

    bank = gates.model
    steps = len(costs.timesteps)
    sigmas, samples, noise = trajectories(model, latent, images, seed, steps)
    r = bank.info.recipe
    options = CacheOptions(reuse=r.get("reuse", "extrapolate"), order=r.get("order", 1),
                           max_lazy_steps=bank.longest_chain)
    per = costs.model_calls / max(costs.calls, 1)              # model calls per guided evaluation
    total, errors = round(len(CHECK_VALUES) * steps * per), []
    for n, v in enumerate(CHECK_VALUES):
        lazy, _ = apply_gates(model, gates, v, options)

        def callback(step, x0, x, total_steps, n=n):
            mm.throw_exception_if_processing_interrupted()
            if on_progress is not None:
                on_progress(round((n * steps + step + 1) * per), total)
        z = guider(lazy, positive, negative, cfg).sample(noise, samples, comfy.samplers.sampler_object("euler"),
                                                         sigmas, callback=callback, disable_pbar=True, seed=seed)
        errors.append((z.float().cpu() - costs.final).pow(2).flatten(1).sum(1))
    return psnr_offsets(bank, CHECK_VALUES, errors, list(costs.timesteps), costs.final[0].numel(), r["peak2"])


def peak2(model, final):
    """The squared range the predicted PSNR counts against: the demo's pixel latent spans [-1, 1] (its
    decoded image's PSNR); any other latent, the range of the exact final latents."""
    from .dit_model import PixelLatent
    if isinstance(model.model.latent_format, PixelLatent):
        return 4.0
    return float(final.max() - final.min()) ** 2 or 1.0


def prediction_text(gates, timesteps, numel, range2, values=(0.25, 0.5, 0.75, 1.0)):
    """'laziness 0.25 -> 20 % lazy, 41.2 dB; ...' at a run's schedule, or '' for gates without chains."""
    from ..lazy_core.engine.policies import predicted_psnr
    parts = []
    for v in values:
        got = predicted_psnr(gates, timesteps, v, numel, range2)
        if got is None:
            return ""
        parts.append(f"{v:.2f} -> {got[0]:.0%} lazy, {got[1]:.1f} dB")
    return f"predicted PSNR at {len(timesteps)} steps (laziness -> lazy share, PSNR against the exact run): " + \
        "; ".join(parts)


def fingerprint(net):
    """A short identity of a model's weights (names, shapes, sums), for the file's source_model."""
    import hashlib
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in net.state_dict().items():
            h.update(f"{name}{tuple(p.shape)}{float(p.float().sum()) if p.numel() else 0:.6e}".encode())
    return h.hexdigest()
