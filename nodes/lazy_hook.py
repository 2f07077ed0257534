"""The one hook: keyed OUTER_SAMPLE and APPLY_MODEL wrappers that run a model's blocks through the lazy engine.

OUTER_SAMPLE creates the run's state and frees it in `finally` (so nothing outlives a run, a failed or
interrupted one included); APPLY_MODEL opens a call per batch chunk, laid out by the chunk's cond uuids,
and swaps the module proxies into the diffusion model's blocks for exactly that call.
"""

import ast
import dataclasses
import functools
import logging
import math
import sys

import comfy.patcher_extension
import torch
from comfy.ldm.pixart.pixartms import PixArtMSBlock

from ..lazy_core.engine.cache import CacheOptions, RunState
from ..lazy_core.engine.policies import StepRange
from ..lazy_core.engine.proxies import DIT_NORMS, UnsupportedModelError, describe, register_block
from ..lazy_core.models.checkpoint import blank_weights
from ..lazy_core.models.dydit import DENSE_GATES_REFUSAL, LAZY_REFUSAL
from . import families
from .families import family_of, patch_blocks, unpatch_blocks

log = logging.getLogger(__name__)

KEY = "lazydit"
WRAPPERS = comfy.patcher_extension.WrappersMP
STREAM_LABELS = {0: "positive", 1: "negative"}

register_block(PixArtMSBlock, "pixart", norms=DIT_NORMS)     # self-attention and MLP; cross-attention computes

# Core caches (comfy_extras/nodes_easycache.py), by the key of their OUTER_SAMPLE wrapper. They skip whole
# model calls and answer with a cached output, so a lazy module's last output would come from a step that
# never ran; the lazy cache and theirs also count steps differently. One cache per MODEL.
CORE_CACHES = {"easycache": "EasyCache", "lazycache": "LazyCache"}


class MissingKeys(logging.Handler):
    """Core's loaders log a checkpoint's missing keys ("unet missing: [...]") and sample with those weights
    left as they were allocated. This handler notes the keys on the model being loaded (the `self` of the
    load_model_weights frame that logs them), so that a LazyDiT node can name them (patch_notes)."""

    PREFIX = "unet missing: "

    def emit(self, record):
        if record.funcName != "load_model_weights" or not str(record.msg).startswith(self.PREFIX):
            return
        frame = sys._getframe()
        while frame is not None and frame.f_code.co_name != "load_model_weights":
            frame = frame.f_back
        model = frame.f_locals.get("self") if frame is not None else None
        try:
            keys = ast.literal_eval(record.getMessage()[len(self.PREFIX):])
        except (ValueError, SyntaxError):
            return
        if isinstance(model, torch.nn.Module) and isinstance(keys, list):
            model.__dict__["_lazydit_missing"] = [str(k) for k in keys]


logging.getLogger().addHandler(MissingKeys(logging.WARNING))


class CacheConflictError(ValueError):
    """A MODEL carries both a LazyDiT patch and one of core ComfyUI's caches."""


def check_no_core_cache(model):
    """Raises CacheConflictError if core EasyCache or LazyCache patched `model` (a ModelPatcher)."""
    for key, name in CORE_CACHES.items():
        if model.get_wrappers(WRAPPERS.OUTER_SAMPLE, key):
            raise CacheConflictError(
                f"this MODEL carries core {name} as well as a LazyDiT patch: both make steps reuse earlier "
                f"work, and {name}'s skipped model calls would leave the lazy cache with outputs of steps "
                f"that never ran. Use one of them: remove the {name} node, or the LazyDiT node (Apply Lazy "
                f"Gates, FORA, Δ-DiT)")


class LazySession:
    """What a patched MODEL carries: how to make each run's policy, the cache options, the last report.

    Small and tensor-free apart from the policy's gate bank, which is the additional model's own module
    (never copied): ModelPatcher.clone() shares attachments and wrappers by reference."""

    def __init__(self, make_policy, options: CacheOptions, title: str):
        self.make_policy = make_policy
        self.options = options
        self.title = title
        self.state = None
        self.report = None
        self.family = None              # a block-replacement family (families.Family): block level
        self.scale = 1.0                # its timesteps to plan timesteps (time_scale), set once per run

    def __deepcopy__(self, memo):
        return self


def time_scale(sampling, family):
    """Factor from a model's own timestep to the 0..999 that gate files and plans count in: 1 for DiT and
    PixArt; for a block family, 999 / its timestep at sigma_max (Flux counts 0..1, SD3 and Wan 0..1000)."""
    if family is None:
        return 1.0
    top = float(sampling.timestep(torch.as_tensor(sampling.sigma_max, dtype=torch.float32).reshape(1)).float()[0])
    return 999.0 / top if top > 0 else 1.0


def schedule_times(sampling, sigmas, family):
    """A schedule's sigmas as plan timesteps (sampling order, 0..999), the last (sigma 0) left out."""
    live = sigmas[:-1][sigmas[:-1] > 0]
    scale = time_scale(sampling, family)
    return [float(t) * scale for t in sampling.timestep(live.float().cpu()).float()]


def run_timesteps(session, executor, args, kwargs):
    """The run's schedule as plan timesteps (sampling order), from the sigmas OUTER_SAMPLE receives
    (CFGGuider.outer_sample(noise, latent_image, sampler, sigmas, ...)); None if they cannot be read."""
    sigmas = kwargs.get("sigmas", args[3] if len(args) > 3 else None)
    guider = getattr(executor, "class_obj", None)
    patcher = getattr(guider, "model_patcher", None)
    if not isinstance(sigmas, torch.Tensor) or patcher is None:
        return None
    return schedule_times(patcher.get_model_object("model_sampling"), sigmas, session.family)


def outer_sample(session, executor, *args, **kwargs):
    """One sampling run: a fresh RunState, freed whatever happens. Refused before any model call if a core
    cache was put on the MODEL after the LazyDiT node."""
    patcher = getattr(getattr(executor, "class_obj", None), "model_patcher", None)
    if patcher is not None:
        check_no_core_cache(patcher)
    if patcher is not None:
        session.scale = time_scale(patcher.get_model_object("model_sampling"), session.family)
    timesteps = run_timesteps(session, executor, args, kwargs)
    state = RunState(session.make_policy(), session.options, timesteps, euler_sigmas(args, kwargs, timesteps))
    notice = few_steps_notice(state.policy, timesteps)
    if notice:
        log.warning("LazyDiT: %s", notice)
    previous, session.state = session.state, state
    try:
        return executor(*args, **kwargs)
    finally:
        session.state = previous
        state.finish()
        if state.calls:
            session.report = state.report()
            session.report["title"] = session.title
            log.info("%s", session.report["text"].splitlines()[0])


FIRST_ORDER = ("sample_euler",)       # KSampler's euler and ddim: one call per step, x += d * (sigma_next - sigma)


def euler_sigmas(args, kwargs, timesteps):
    """The run's sigmas (host floats) when its sampler is Euler (KSampler's euler and ddim), for the trajectory
    correction (correct.py); None for every other sampler, whose steps use d otherwise."""
    sampler = kwargs.get("sampler", args[2] if len(args) > 2 else None)
    sigmas = kwargs.get("sigmas", args[3] if len(args) > 3 else None)
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    if name not in FIRST_ORDER or not isinstance(sigmas, torch.Tensor) or timesteps is None:
        return None
    values = sigmas.float().cpu().tolist()
    return values if len(values) == len(timesteps) + 1 else None


def corrected(state, x, t, denoised):
    """denoised after the run's trajectory correction: d = (x - denoised) / sigma corrected (RunState.correct)."""
    if state.correction is None:
        return denoised
    sigma = t.reshape(-1, *([1] * (x.dim() - 1))).to(denoised.dtype)
    fixed = state.correct((x.to(denoised.dtype) - denoised) / sigma)
    return denoised if fixed is None else x.to(denoised.dtype) - fixed * sigma


def few_steps_notice(policy, timesteps):
    """What to tell a user whose run is too short for the schedule to make anything lazy (a distilled
    few-step model's 4 or 8 steps): the plan, made from the measured chain costs, found no step cheap
    enough. '' otherwise."""
    inner = getattr(policy, "inner", policy)
    if getattr(inner, "share", None) != 0 or not timesteps or not getattr(inner, "laziness", None):
        return ""
    return (f"at {len(timesteps)} steps this schedule makes nothing lazy: each step of so short a run moves the "
            f"image more than any chain of lazy steps it measured, so laziness would cost more than it saves "
            f"(a distilled few-step model: sample it exact)")


def apply_model(session, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                **kwargs):
    """One batch chunk: rows grouped by cond uuid; the proxies are attached for this call only."""
    state = session.state
    options = transformer_options if transformer_options is not None else {}
    uuids = options.get("uuids")
    if state is None or not uuids or x.shape[0] % len(uuids):
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    base_model = executor.class_obj
    timestep = base_model.model_sampling.timestep(t[:1]).float()      # rows share one sigma; stays on the device
    if session.scale != 1.0:
        timestep = timestep * session.scale
    labels = [STREAM_LABELS.get(c, f"cond {c}") for c in options.get("cond_or_uncond", [])] or ["batch"] * len(uuids)
    state.begin_call(uuids, labels, x.shape[0] // len(uuids), x, timestep)
    if session.family is not None:            # the block patches read the call; nothing to swap in
        state.blocks = [blk for _, _, blk in session.family.blocks(base_model.diffusion_model)]
        try:
            return corrected(state, x, t, executor(x, t, c_concat, c_crossattn, control, transformer_options,
                                                   **kwargs))
        finally:
            state.end_call()
    handle = state.attach(base_model.diffusion_model)
    try:
        return corrected(state, x, t, executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs))
    finally:
        handle.detach()
        state.end_call()


def lazy_layout(net, gates=None):
    """(architecture, depth, width) of a diffusion model the cache nodes patch; a clear error for models
    without supported blocks. A DyDiT model takes only gates (a GateBank) made on a DyDiT, its Sensitivity
    Schedule: its widths change with every step, which no other cache's decisions were made for. A model of
    a block-replacement family (families.py) is lazy a whole block at a time."""
    family = family_of(net)
    if family is not None:
        if gates is not None and not gates.static:
            raise UnsupportedModelError(f"these gates read each image's module inputs, which only DiT and PixArt "
                                        f"models offer; a {family.name} model is lazy a whole block at a time: "
                                        f"connect a LazyDiT Sensitivity Schedule measured on this model")
        return families.layout(net, family)
    try:
        layout = describe(net)
    except UnsupportedModelError as err:
        names = ", ".join(sorted({f.name for f in families.FAMILIES.values()}))
        raise UnsupportedModelError(f"{err}, and ComfyUI's {names} models through the block replacements their "
                                    f"forward offers; this {type(net).__name__} offers none") from None
    if layout[0] == "dydit" and gates is None:
        raise UnsupportedModelError(LAZY_REFUSAL)
    if layout[0] == "dydit" and gates.info.architecture == "dit":
        raise UnsupportedModelError(DENSE_GATES_REFUSAL)
    return layout                               # gates of another architecture: check_fits names both


def architecture(net):
    """The architecture name of a diffusion model the cache nodes patch (UnsupportedModelError otherwise)."""
    family = family_of(net)
    return family.name if family is not None else describe(net)[0]


def patch_notes(model):
    """What the user should hear when a LazyDiT node patches `model` (a ModelPatcher): the earlier LazyDiT
    patch it replaces, and weights that were never loaded."""
    notes = []
    earlier = session_of(model)
    if earlier is not None:
        notes.append(f"this replaces the MODEL's earlier LazyDiT patch ({earlier.title}): one LazyDiT patch "
                     f"per MODEL, the last one applied wins")
    missing = model.model.__dict__.get("_lazydit_missing")
    if missing:
        notes.append(f"the checkpoint lacks {len(missing)} of this model's weights ({shortlist(missing)}); the "
                     f"loader only logged them as 'unet missing' and left them unset, so its images are wrong "
                     f"with or without a cache: use a complete file")
    net = model.model.diffusion_model
    blank = net.__dict__.get("_lazydit_blank")
    if blank is None and architecture(net) not in ("dit", "dydit"):   # the pack's DiT loader refuses such files itself
        blank = net.__dict__["_lazydit_blank"] = blank_weights(net)
    blank = [k for k in blank or () if k not in (missing or ())]
    if blank:
        notes.append(f"{len(blank)} weight tensors of this model are all zero or not finite ({shortlist(blank)}): "
                     f"a damaged checkpoint, whose images are wrong with or without a cache; check the file")
    return notes


def shortlist(names, n=3):
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def install(model, session, gates=None):
    """A clone of `model` whose sampling runs go through `session` (whose policy uses `gates`, if any);
    replaces an earlier LazyDiT patch. Logs patch_notes(model)."""
    net = model.model.diffusion_model
    lazy_layout(net, gates)
    check_no_core_cache(model)
    family = family_of(net)
    if family is not None and session.make_policy().ranges:
        raise UnsupportedModelError(f"Δ-DiT caches ranges of DiT blocks; a {family.name} model is lazy a whole "
                                    f"block at a time: use FORA, TaylorSeer or Apply Lazy Gates with a "
                                    f"Sensitivity Schedule measured on it")
    for note in patch_notes(model):
        log.warning("LazyDiT: %s", note)
    m = model.clone()
    unpatch_blocks(m)
    if family is not None:
        session.family = family
        if session.options.reuse == "learned":
            raise UnsupportedModelError(f"reuse 'learned' is fitted per attention and MLP module of DiT and PixArt, "
                                        f"and a {family.name} model is lazy a whole block at a time: choose reuse "
                                        f"'extrapolate'")
        # The correction was measured on DiT's module-level path only; block families keep their steps as they are.
        session.options = dataclasses.replace(session.options, level="block", correct=False)
        patch_blocks(m, session, family)
    for kind in (WRAPPERS.OUTER_SAMPLE, WRAPPERS.APPLY_MODEL):
        m.remove_wrappers_with_key(kind, KEY)
    m.add_wrapper_with_key(WRAPPERS.OUTER_SAMPLE, KEY, functools.partial(outer_sample, session))
    m.add_wrapper_with_key(WRAPPERS.APPLY_MODEL, KEY, functools.partial(apply_model, session))
    m.set_attachments(KEY, session)
    return m


def uninstall(model):
    """A clone of `model` without its LazyDiT patch (the exact model), or `model` itself if it has none."""
    if session_of(model) is None:
        return model
    m = model.clone()
    unpatch_blocks(m)
    for kind in (WRAPPERS.OUTER_SAMPLE, WRAPPERS.APPLY_MODEL):
        m.remove_wrappers_with_key(kind, KEY)
    m.remove_attachments(KEY)
    m.remove_additional_models("lazydit_gates")
    return m


def session_of(model):
    """The LazySession a MODEL was patched with, or None."""
    return model.get_attachment(KEY) if hasattr(model, "get_attachment") else None


def percent_to_timestep(model, percent):
    """Diffusion timestep (0..999) at a fraction of the sampling schedule (0 = start, 1 = end), counted as
    ComfyUI's own nodes count it (model_sampling.percent_to_sigma)."""
    ms = model.get_model_object("model_sampling")
    sigma = ms.percent_to_sigma(percent)
    if sigma <= 0:
        return -1.0                       # past the last step
    return float(ms.timestep(torch.tensor([sigma])).float()[0])


def step_range(model, start_percent, end_percent):
    """(low, high) timesteps between two fractions of the schedule, or None for the whole run. The ends are
    open (0 and 1 take in every step whatever the float rounding of the first and last sigma)."""
    if start_percent <= 0 and end_percent >= 1:
        return None
    high = percent_to_timestep(model, start_percent) if start_percent > 0 else math.inf
    low = percent_to_timestep(model, end_percent) if end_percent < 1 else -math.inf
    return low, high


def _ranged(make_policy, low, high):
    return StepRange(make_policy(), low, high)


def in_range(make_policy, bounds):
    """A policy factory that applies make_policy's policy only within `bounds` (step_range)."""
    return make_policy if bounds is None else functools.partial(_ranged, make_policy, *bounds)


def range_title(start_percent, end_percent):
    if start_percent <= 0 and end_percent >= 1:
        return ""
    return f", only {start_percent:.0%}-{end_percent:.0%} of the schedule"
