"""Gate training from the graph, and the training-free sensitivity schedule: both measure the connected model
on its own trajectories (no data set) and save a gate file to models/lazy_gates."""

import functools
import logging
import os
import time

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..lazy_core.demo.fashion import names_for
from ..lazy_core.models.diffusion import parse_step_counts
from ..lazy_core.models.dit import DiT
from ..lazy_core.models.dydit import DyDiT
from ..lazy_core.models.labels import parse_labels
from ..lazy_core.training.calibrate import CHECK_VALUES, THRESHOLDS, calibrate, calibration_calls, check_psnr
from ..lazy_core.training.denoisers import ContextDenoiser, LabelDenoiser
from ..lazy_core.training.sensitivity import CHAIN, HISTORY, ORDER, measure, measure_calls, schedule_bank
from ..lazy_core.training.train_gates import LOSS_CALLS, parser, train, train_calls
from . import family_schedule as fs
from .checks import Combo, Float, answer, check_inputs
from .dit_model import DySession, dy_session_of
from .families import family_of
from .files import check_prefix, create_new
from .lazy_hook import lazy_layout
from .lazy_nodes import CATEGORY, GATES
from .work import CallBar, interruptible

log = logging.getLogger(__name__)

OBJECTIVES = {"sensitivity": "sensitivity", "local (paper)": "local"}
SCHEDULE_STEPS = 20                       # trajectories measured at DDIM 20; the plan serves any step count
SCHEDULE_CALIBRATION = (10, 20, 30, 50)
FAMILY_CALIBRATION = (4, 8, 10, 20, 30, 50)   # few-step (distilled) runs too: the plan says what they allow
# Guided evaluations, the same for every model depth: modules=False measures whole steps only.
SCHEDULE_CALLS = measure_calls(SCHEDULE_STEPS, 1, CHAIN, modules=False, history=HISTORY)
CHECK_CALLS = len(CHECK_VALUES) * SCHEDULE_STEPS      # the predicted PSNR, checked on the measured trajectories
CALLS_PER_STEP = ("a guided evaluation is one model call for a DiT (cond and uncond batched) and one per "
                  "prompt plus one for the negative for PixArt")


def make_denoiser(model, labels, positive, negative, latent, dydit=False):
    """The model as lazy_core training sees it: class labels for a DiT, prompt contexts for PixArt. A DyDiT
    model only where `dydit` (the schedule, measured on it), sampled as its DyDiT Width node says."""
    base = model.model
    net = base.diffusion_model
    if not (dydit and isinstance(net, DyDiT)):
        lazy_layout(net)                      # a clear error for models the lazy caches cannot patch
    if isinstance(net, DiT):
        n = net.config.num_classes
        return LabelDenoiser(net, parse_labels(labels, n, names_for(n)), dydit_forward(model, net))
    missing = [n for n, v in (("positive", positive), ("negative", negative), ("latent", latent)) if v is None]
    if missing:
        raise ValueError(f"Train Lazy Gates on {type(net).__name__} (a text-conditioned model) learns from prompts: "
                         f"connect {', '.join(missing)} (positive = the prompts, negative = the uncond prompt, "
                         f"latent = an empty latent of the size to train at)")
    dtype = base.manual_cast_dtype or base.get_dtype()

    def forward(x, t, context):
        return net(x.to(dtype), t.float(), context.to(dtype))
    contexts = [c[0][i:i + 1] for c in positive for i in range(c[0].shape[0])]
    return ContextDenoiser(net, forward, contexts, negative[0][0][:1], latent["samples"].shape[1:])


def dydit_forward(model, net):
    """A DyDiT's forward routed as its MODEL's DySession says (dynamic at 0.5 if none); None for a DiT."""
    if not isinstance(net, DyDiT):
        return None
    session = dy_session_of(model) or DySession()

    def forward(x, t, y):
        return DyDiT.forward(net, x, t, y, route=session.route, tokens=session.tokens, threshold=session.threshold)
    return forward


class TrainLazyGates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_TrainGates",
            display_name="LazyDiT Train Lazy Gates",
            category=CATEGORY,
            description="Trains lazy gates for the connected model without any data set: the model samples its "
                        "own trajectories (with guidance) from class labels (DiT) or from the prompts in "
                        "`positive` with `negative` as the uncond prompt (PixArt: connect both and a latent of "
                        "the size to train at). Objective `sensitivity` (default): measures what being lazy at "
                        "each step costs each final image and fits the gates to predict it from their input; "
                        "`local (paper)`: the paper's recipe (iterations, batch, pressure). Saves to "
                        "models/lazy_gates with a calibration table (laziness -> lazy share). Cost: "
                        f"sensitivity: {SCHEDULE_CALLS} guided evaluations of `batch` images, calibrated "
                        "from the plan at no further cost; local: sum(step_counts) guided evaluations of 64 "
                        f"or more images for its trajectories, {LOSS_CALLS} model calls per iteration, then "
                        f"{len(THRESHOLDS)} x sum(step_counts) guided evaluations of 8 images to calibrate; "
                        f"{CALLS_PER_STEP}. The node's text gives the calls and seconds. Minutes on a GPU; "
                        "the small demo model trains in a few minutes on a CPU.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT (Load DiT Checkpoint) or a PixArt model."),
                io.String.Input("labels", default="all", tooltip="DiT: classes to learn from: 'all', '0-9', "
                                                                  "'1, 5, 9' or demo class names."),
                io.Int.Input("iterations", default=300, min=10, max=20000, tooltip="Training iterations "
                             "(paper: 500)."),
                io.Int.Input("batch", default=32, min=2, max=1024, step=2, tooltip="Rows per iteration."),
                Float("laziness_pressure", default=1e-4, min=0.0, max=0.1, step=1e-5, round=1e-7,
                      tooltip="ρ: higher trains lazier gates (paper range 1e-7 .. 1e-2)."),
                io.String.Input("step_counts", default="10,20,30,50",
                                tooltip="Step counts whose step sizes the gates learn."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the training noise and labels."),
                io.String.Input("filename_prefix", default="lazydit_gates",
                                tooltip="File name (or subfolder/name) inside models/lazy_gates; never overwritten."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="PixArt: the prompts to learn from (several via Conditioning "
                                              "Combine). Not used for DiT, which learns from `labels`."),
                io.Conditioning.Input("negative", optional=True, tooltip="PixArt: the uncond prompt."),
                io.Latent.Input("latent", optional=True, tooltip="PixArt: an empty latent of the size to train "
                                                                 "at (gates are trained per token count)."),
                Combo("objective", OBJECTIVES, default="sensitivity", optional=True,
                      tooltip="sensitivity: gates that see the final image; `batch` trajectories of 20 steps "
                              "are measured (iterations and pressure are not used). local (paper): the "
                              "paper's recipe."),
            ],
            outputs=[GATES.Output(display_name="gates"), io.String.Output(display_name="log")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        return answer(check_prefix, filename_prefix)

    @classmethod
    def execute(cls, model, labels, iterations, batch, laziness_pressure, step_counts, seed, filename_prefix,
                positive=None, negative=None, latent=None, objective="sensitivity"):
        check_inputs(cls, iterations=iterations, batch=batch, laziness_pressure=laziness_pressure, seed=seed,
                     objective=objective)
        check_prefix(filename_prefix)
        counts = parse_step_counts(step_counts)
        mm.load_models_gpu([model])                # first: the denoiser works where the model now is
        denoiser = make_denoiser(model, labels, positive, negative, latent)
        args = parser().parse_args(["--model", "-", "--out", "-", "--iters", str(iterations), "--batch", str(batch),
                                    "--rho", str(laziness_pressure), "--step-counts", step_counts,
                                    "--seed", str(seed), "--pool", str(max(batch, 64)),
                                    "--objective", OBJECTIVES[objective], "--images", str(batch)])
        # Planned calls until the gates exist; finish() then counts the calibration exactly.
        sampled = 0 if args.objective == "sensitivity" else (len(THRESHOLDS) * sum(counts)
                                                          * denoiser.calls_per_step(8, 4.0))
        bar = CallBar(train_calls(denoiser, args), sampled)
        losses = []
        t0 = time.perf_counter()
        with interruptible(denoiser.model):
            with torch.inference_mode(False), torch.enable_grad():
                gates = train(denoiser, args, on_iter=lambda i, n, loss: losses.append(loss),
                              on_progress=bar.phase(0))
            trained, seconds = bar.calls, time.perf_counter() - t0
            path = finish(gates, denoiser, counts, filename_prefix, bar)
        if args.objective == "local":
            done = f"loss {losses[0]:.5f} -> {losses[-1]:.5f} over {iterations} iterations"
        else:
            done = f"{batch} trajectories measured, held-out R² {gates.info.recipe['r2_holdout_mean']:.3f}"
        text = (f"saved {shown(path)}; {done}; {cost_text(trained, seconds, bar.calls - trained, t0)}; "
                f"{calibration_text(gates)}")
        log.info(text)
        return io.NodeOutput(as_patcher(gates), text)


def calibration_text(gates, steps=None):
    """The slider's table, averaged over the calibrated step counts or at `steps`."""
    table = gates._table(steps)
    top = table[-1][1] if table else 0.0
    at = f" at {steps} steps" if steps else ""
    return f"laziness -> lazy share{at}: " + ", ".join(
        f"{lz:.1f}->{gates.expected_ratio(gates.threshold_for(lz, steps), steps):.0%}"
        for lz in (0.2, 0.4, 0.6, 0.8, 1.0)) + f" (max {top:.0%})"


def cost_text(calls, seconds, calibration, t0):
    """What a node's work cost: its measuring or training calls and seconds, then the calibration's."""
    total = time.perf_counter() - t0
    how = f"{calibration} model calls, {total - seconds:.0f} s" if calibration else "from the plan, no model calls"
    return f"{calls} model calls in {seconds:.0f} s; calibrated {how}"


def finish(gates, denoiser, counts, prefix, bar, schedule=None, check=None):
    """Calibrates at `counts` (the bar's phase 1) on schedule(steps) -> timesteps (default DDIM's), runs
    check(gates) if given (a schedule's PSNR check, which needs the slider's table), saves to
    models/lazy_gates as prefix_NNNNN.safetensors; returns the path."""
    bar.phase(1)(0, calibration_calls(denoiser, gates, counts))
    with torch.no_grad():
        gates.info.calibration, per_steps = calibrate(denoiser, gates, step_counts=counts, on_progress=bar.phase(1),
                                                      schedule=schedule)
    gates.__dict__.pop("measured", None)
    gates.info.recipe["calibration_per_steps"] = per_steps
    if check is not None:
        check(gates)
    return create_new(folder_paths.get_folder_paths("lazy_gates")[0], prefix, gates.to_bytes())


def shown(path):
    """The saved file as the user finds it: relative to ComfyUI's base folder when it lies there."""
    base = os.path.realpath(folder_paths.base_path)
    return os.path.relpath(path, base) if os.path.commonpath([base, path]) == base else path


def as_patcher(gates):
    return comfy.model_patcher.ModelPatcher(gates, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class SensitivitySchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_SensitivitySchedule",
            display_name="LazyDiT Sensitivity Schedule",
            category=CATEGORY,
            description="Training-free lazy schedule for the connected model, for when you have no gates: the "
                        "model samples a few of its own trajectories, measures how much being lazy at each "
                        "step would change the final image, and the run then spends its lazy budget on the "
                        "steps where that costs least, in chains of up to 4 lazy steps (a chain's cost is "
                        f"measured, not summed). Plug the output into Apply Lazy Gates. Cost: {SCHEDULE_CALLS} "
                        f"guided evaluations of a batch of `images` images, whatever the model; {CALLS_PER_STEP}. "
                        "The calibration follows from the plan and makes no model call. The progress bar "
                        "counts every call, and the node's text gives the count and the seconds (a few "
                        "minutes for the demo model on a CPU). Saved to models/lazy_gates.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT (Load DiT Checkpoint) or a PixArt model."),
                io.String.Input("labels", default="all", tooltip="DiT: classes to measure on: 'all', '0-9', "
                                                                  "'1, 5, 9' or demo class names."),
                io.Int.Input("images", default=16, min=2, max=256, tooltip="Trajectories measured; more is "
                             "steadier and slower."),
                Float("cfg", default=4.0, min=1.0, max=20.0, step=0.1, tooltip="Guidance scale you sample with."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the measured trajectories."),
                io.String.Input("filename_prefix", default="lazydit_schedule",
                                tooltip="File name (or subfolder/name) inside models/lazy_gates; never overwritten."),
                io.Conditioning.Input("positive", optional=True, tooltip="PixArt: prompts to measure on."),
                io.Conditioning.Input("negative", optional=True, tooltip="PixArt: the uncond prompt."),
                io.Latent.Input("latent", optional=True, tooltip="PixArt: an empty latent of the size you "
                                                                 "sample at."),
            ],
            outputs=[GATES.Output(display_name="gates"), io.String.Output(display_name="info")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        return answer(check_prefix, filename_prefix)

    @classmethod
    def execute(cls, model, labels, images, cfg, seed, filename_prefix, positive=None, negative=None,
                latent=None):
        check_inputs(cls, images=images, cfg=cfg, seed=seed)
        check_prefix(filename_prefix)
        if family_of(model.model.diffusion_model) is not None:
            return io.NodeOutput(*family_schedule(model, positive, negative, latent, images, cfg, seed,
                                                  filename_prefix))
        mm.load_models_gpu([model])
        denoiser = make_denoiser(model, labels, positive, negative, latent, dydit=True)
        per = denoiser.calls_per_step(images, cfg)
        bar = CallBar(SCHEDULE_CALLS * per, 0, CHECK_CALLS * per)
        t0 = time.perf_counter()
        with interruptible(denoiser.model):
            # Chains measured with the trajectory correction Apply Lazy Gates makes on euler and ddim.
            costs = measure(denoiser, steps=SCHEDULE_STEPS, images=images, cfg_scale=cfg, seed=seed, order=ORDER,
                            chain=CHAIN, modules=False, history=HISTORY, on_progress=bar.phase(0), correct=True)
            gates = schedule_bank(denoiser, costs, recipe={"measure_steps": SCHEDULE_STEPS, "images": images,
                                                           "cfg_scale": cfg, "seed": seed, "correct": True,
                                                           "measure_calls": costs.calls,
                                                           "model_calls": costs.model_calls})
            gates.info.recipe.update(measure_seconds=round(costs.seconds, 1), **predicting(model, costs))

            def check(bank):
                bank.info.recipe["psnr_check"], _ = check_psnr(denoiser, bank, costs, cfg, seed,
                                                               on_progress=bar.phase(2))
                bank.info.recipe["check_calls"] = bar.done[2]
            path = finish(gates, denoiser, SCHEDULE_CALIBRATION, filename_prefix, bar, check=check)
        text = (f"saved {shown(path)}; measured {images} trajectories ({costs.calls} guided evaluations) in "
                f"{cost_text(costs.model_calls, costs.seconds, bar.done[1], t0)}; {calibration_text(gates)}; "
                f"{predicted(gates, costs.timesteps)}, checked on them in {bar.done[2]} model calls")
        log.info(text)
        return io.NodeOutput(as_patcher(gates), text)


def predicting(model, costs):
    """What the predicted PSNR needs, kept in the recipe: the latent's values per image and squared range."""
    return {"latent_numel": costs.final[0].numel(), "peak2": round(fs.peak2(model, costs.final), 6)}


def predicted(gates, timesteps):
    r = gates.info.recipe
    return fs.prediction_text(gates, timesteps, r["latent_numel"], r["peak2"])


def family_schedule(model, positive, negative, latent, images, cfg, seed, prefix):
    """The schedule of a block-family model (families.py), measured on the user's prompt, negative and
    latent through core's guider; (gates, text)."""
    missing = [n for n, v in (("positive", positive), ("negative", negative), ("latent", latent)) if v is None]
    if missing:
        raise ValueError(f"a Sensitivity Schedule on {type(model.model.diffusion_model).__name__} measures your "
                         f"own prompt: connect {', '.join(missing)} (positive = the prompt, negative = the "
                         f"negative prompt, latent = an empty latent of the size you sample at)")
    net = model.model.diffusion_model
    arch, depth, width = lazy_layout(net)
    bar = CallBar(SCHEDULE_CALLS, 0, CHECK_CALLS)
    t0 = time.perf_counter()
    costs = fs.measure(model, positive, negative, latent, images, cfg, seed, SCHEDULE_STEPS, bar.phase(0))
    gates = schedule_bank(None, costs, layout=(arch, depth, width, 0),
                          recipe={"measure_steps": SCHEDULE_STEPS, "scheduler": fs.SCHEDULER, "sampler": "euler",
                                  "images": images, "cfg_scale": cfg, "seed": seed, "measure_calls": costs.calls,
                                  "model_calls": costs.model_calls, "measure_seconds": round(costs.seconds, 1),
                                  **predicting(model, costs)})
    gates.info.source_model = fs.fingerprint(net)
    def check(bank):
        bank.info.recipe["psnr_check"] = fs.check(model, as_patcher(bank), costs, positive, negative, latent,
                                                  images, cfg, seed, bar.phase(2))
        bank.info.recipe["check_calls"] = bar.done[2]
    path = finish(gates, None, FAMILY_CALIBRATION, prefix, bar, functools.partial(fs.timesteps_for, model), check)
    few = [n for n, rows in gates.info.recipe["calibration_per_steps"].items() if rows[-1][1] == 0]
    note = (f"; at {', '.join(map(str, few))} steps the plan makes nothing lazy: each step of so short a run (a "
            f"distilled few-step model's) moves the image more than any measured chain, so laziness there would "
            f"cost more than it saves" if few else "")
    text = (f"saved {shown(path)}; {arch}, {depth} blocks; measured {images} trajectories of "
            f"{SCHEDULE_STEPS} euler steps ({costs.calls} guided evaluations) in "
            f"{cost_text(costs.model_calls, costs.seconds, 0, t0)}; {calibration_text(gates, SCHEDULE_STEPS)}; "
            f"{predicted(gates, costs.timesteps)}, checked on them in {bar.done[2]} model calls{note}")
    log.info(text)
    return as_patcher(gates), text


NODES = [TrainLazyGates, SensitivitySchedule]
