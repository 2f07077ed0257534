"""LazyDiT nodes: load gates, set laziness, apply to a MODEL, and report what a run did."""

import functools
import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..lazy_core.engine.cache import GATE_REUSE, CacheOptions
from ..lazy_core.engine.gates import GateBank
from ..lazy_core.engine.policies import LearnedGates, NeverLazy
from ..lazy_core.models.dydit import DyDiT, summarize
from .checks import Combo, Float, check_inputs, check_range
from .dit_model import dy_session_of
from .lazy_hook import LazySession, in_range, install, lazy_layout, patch_notes, range_title, session_of, step_range
from .lazy_report import render_heatmap

log = logging.getLogger(__name__)

GATES = io.Custom("LAZY_GATES")
CATEGORY = "LazyDiT"
DEFAULT_LAZINESS = 0.5        # half of the most laziness the gates allow
CACHE_DTYPES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CACHE_DEVICES = ("auto", "cpu")


WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DEMO_GATES = "dit_demo_fashion_gates.safetensors"
# The demo model's learned gates (first: the combo's default), its sensitivity schedule, the paper's recipe.
DEMO_FILES = (DEMO_GATES, "dit_demo_fashion_schedule.safetensors", "dit_demo_fashion_gates_local.safetensors")
BUILT_IN = {f"{name} (built in)": os.path.join(WEIGHTS, name) for name in DEMO_FILES}


def gate_files():
    return [*BUILT_IN, *folder_paths.get_filename_list("lazy_gates")]


def range_inputs():
    """The optional step range every cache node appends (so saved workflows keep loading)."""
    return [Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                  tooltip="Fraction of the schedule before which everything computes (0 = from the first "
                          "step). Keeping the start exact protects the composition. At most end_percent."),
            Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                  tooltip="Fraction of the schedule after which everything computes again (1 = to the last "
                          "step). Keeping the end exact protects fine detail.")]


def apply_gates(model, gates, laziness, options, start_percent=0.0, end_percent=1.0):
    """`model` made lazy by `gates` at `laziness`, within the step range; returns (MODEL, expected text)."""
    bank = gates.model
    arch, depth, width = lazy_layout(model.model.diffusion_model, bank)
    bank.check_fits(arch, depth, width, name="the loaded gates")
    if laziness <= 0:
        make_policy, expected = NeverLazy, "laziness 0: exact, nothing lazy"
    else:
        threshold = bank.threshold_for(laziness)
        make_policy = functools.partial(LearnedGates, bank, threshold, laziness)
        ratio = bank.expected_ratio(threshold)
        per_steps = sorted(int(n) for n in bank.info.recipe.get("calibration_per_steps") or {})
        if ratio is None:
            expected = f"laziness {laziness:.2f}: no calibration table in these gates"
        elif per_steps:
            shares = [f"{bank.expected_ratio(bank.threshold_for(laziness, n), n):.0%} at {n} steps" for n in per_steps]
            expected = f"laziness {laziness:.2f}: expect about {', '.join(shares)} of modules lazy"
        else:
            expected = f"laziness {laziness:.2f}: expect about {ratio:.0%} of modules lazy"
        if bank.info.score == "log-cost" and options.max_lazy_steps < bank.longest_chain:
            expected += (f"; max_lazy_steps {options.max_lazy_steps} cuts the gates' chains of up to "
                         f"{bank.longest_chain} steps, so expect less")
        where = range_title(start_percent, end_percent)
        if where:
            expected += f" within the range{where}"
    make_policy = in_range(make_policy, step_range(model, start_percent, end_percent))
    expected = "; ".join([expected, *patch_notes(model)])
    title = f"LazyDiT gates, laziness {laziness:.2f}{range_title(start_percent, end_percent)}"
    patched = install(model, LazySession(make_policy, options, title), bank)
    patched.set_additional_models("lazydit_gates", [gates])
    return patched, expected


class LoadLazyGates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_LoadGates",
            display_name="LazyDiT Load Lazy Gates",
            category=CATEGORY,
            description="Loads trained LazyDiT gates (.safetensors from models/lazy_gates). The gates decide, per "
                        "image, block, module and step, whether attention or MLP may reuse its last output.",
            inputs=[Combo("gate_name", gate_files(), tooltip="Gate file in models/lazy_gates.")],
            outputs=[GATES.Output(display_name="gates"),
                     io.String.Output(display_name="info", tooltip="What the gates were trained for.")],
        )

    @classmethod
    def execute(cls, gate_name):
        path = BUILT_IN.get(gate_name) or folder_paths.get_full_path_or_raise("lazy_gates", gate_name)
        bank = GateBank.load(path, name=gate_name)
        patcher = comfy.model_patcher.ModelPatcher(bank, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        i = bank.info
        table = ", ".join(f"{t:.2f}->{r:.0%}" for t, r in i.calibration) or "none"
        info = (f"{gate_name}: {i.architecture}, depth {i.depth}, width {i.width}, {i.pooling} pooling, "
                f"{len(i.timesteps)} timestep buckets; calibration (laziness->lazy ratio): {table}")
        return io.NodeOutput(patcher, info)


class Laziness(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_Laziness",
            display_name="LazyDiT Laziness",
            category=CATEGORY,
            description="One laziness value to drive several Apply Lazy Gates nodes. 0 = exact (never lazy); "
                        "1 = as lazy as the gates allow; in between the lazy share grows evenly.",
            inputs=[Float("laziness", default=DEFAULT_LAZINESS, min=0.0, max=1.0, step=0.01,
                          display_mode=io.NumberDisplay.slider,
                          tooltip="0 = exact, 1 = as lazy as the gates allow; the lazy share grows evenly "
                                  "in between.")],
            outputs=[io.Float.Output(display_name="laziness")],
        )

    @classmethod
    def execute(cls, laziness):
        check_inputs(cls, laziness=laziness)
        return io.NodeOutput(laziness)


class ApplyLazyGates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_ApplyGates",
            display_name="LazyDiT Apply Lazy Gates",
            category=CATEGORY,
            description="Makes a DiT or PixArt model lazy: at each step, each image's attention and MLP modules "
                        "whose gate allows it reuse their output from the previous step instead of computing. "
                        "Laziness 0 gives exactly the original model. Works with any sampler, scheduler and "
                        "step count; the cache lives for one sampling run.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model, or a DyDiT with a Sensitivity Schedule "
                                                "measured on it."),
                GATES.Input("gates", tooltip="Gates trained for this model (Load Lazy Gates), or its Sensitivity "
                                             "Schedule."),
                Float("laziness", default=DEFAULT_LAZINESS, min=0.0, max=1.0, step=0.01,
                      display_mode=io.NumberDisplay.slider,
                      tooltip="0 = exact (never lazy); 1 = as lazy as the gates allow (gates with measured "
                              "chains: about 80 % of the attention/MLP work at 20 steps; older gates: half); "
                              "the lazy share grows evenly in between, from the gates' calibration table at "
                              "the run's step count. Higher is faster and drifts more."),
                io.Int.Input("max_lazy_steps", default=4, min=1, max=8,
                             tooltip="Most consecutive steps a module may stay lazy. Gates with measured "
                                     "chains plan chains up to their own longest (the demo gates: 4) and never "
                                     "beyond; set 1 to cap them at half. The paper's gates were trained for 1."),
                Combo("cache_device", CACHE_DEVICES, default="auto",
                      tooltip="Where reusable outputs are kept: with the model (auto) or in system "
                              "RAM (cpu; saves VRAM, costs transfers)."),
                Combo("cache_dtype", CACHE_DTYPES, default="auto",
                      tooltip="Precision of kept outputs: auto = as computed; float16/bfloat16 halve "
                              "the memory of a float32 model."),
                Combo("reuse", GATE_REUSE, default="extrapolate", optional=True,
                      tooltip="How a lazy module stands in for its output: extrapolate = continue the "
                              "line through its last two outputs to this step (much closer to the "
                              "exact image, twice the cache memory); repeat = its last output, as "
                              "in the LazyDiT paper; learned = the forecaster fitted into the gate "
                              "file (three outputs kept; on the demo 1-2.5 dB below the line)."),
                *range_inputs(),
            ],
            outputs=[io.Model.Output(display_name="model"),
                     io.String.Output(display_name="expected", tooltip="Expected lazy ratio from the gates' "
                                                                       "calibration table.")],
        )

    @classmethod
    def execute(cls, model, gates, laziness, max_lazy_steps, cache_device, cache_dtype, reuse="extrapolate",
                start_percent=0.0, end_percent=1.0):
        check_inputs(cls, laziness=laziness, max_lazy_steps=max_lazy_steps, cache_device=cache_device,
                     cache_dtype=cache_dtype, reuse=reuse, start_percent=start_percent, end_percent=end_percent)
        check_range(start_percent, end_percent)
        coefficients = None
        if reuse == "learned":
            coefficients = gates.model.forecast
            if coefficients is None:
                raise ValueError("reuse 'learned' needs gates with a fitted forecaster, and these gates have none: "
                                 "fit one into the file with `python -m lazy_core.training.forecaster --model "
                                 "<model> --gates <gate file>`, or choose reuse 'extrapolate'")
        options = CacheOptions(max_lazy_steps=max_lazy_steps, dtype=CACHE_DTYPES[cache_dtype],
                               device=None if cache_device == "auto" else torch.device(cache_device), reuse=reuse,
                               correct=True, coefficients=coefficients)
        return io.NodeOutput(*apply_gates(model, gates, laziness, options, start_percent, end_percent))


def dydit_line(model):
    """For a DyDiT, what its run really computed: the MACs saved above count each lazy module at the dense
    model's cost, while a DyDiT's computed ones ran at their step's widths and tokens."""
    net = model.model.diffusion_model
    session = dy_session_of(model)
    if not isinstance(net, DyDiT) or session is None or not session.report:
        return ""
    return "\n" + summarize(net.config, session.report)["text"].splitlines()[0] + " (lazy steps count none)"


class LazyReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_Report",
            display_name="LazyDiT Lazy Report",
            category=CATEGORY,
            description="What the last sampling run of a lazy model did: lazy ratio per stream (positive / "
                        "negative prompt), block, module and step, modules skipped and MACs saved, as a heat-map "
                        "image (bright = lazy) and text. Connect the sampler's LATENT so it runs after sampling.",
            inputs=[io.Model.Input("model", tooltip="The model from Apply Lazy Gates (or another LazyDiT node)."),
                    io.Latent.Input("latent", tooltip="The sampler's output; only orders this node after it.")],
            outputs=[io.Image.Output(display_name="heatmap"), io.String.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, model, latent):
        session = session_of(model)
        if session is None:
            raise ValueError("Lazy Report needs a model patched by a LazyDiT node (Apply Lazy Gates, ...); "
                             "this MODEL has no LazyDiT patch")
        report = session.report
        if report is None:
            raise ValueError("the lazy model has not been sampled yet: connect the LATENT of the sampler that "
                             "used this MODEL")
        return io.NodeOutput(render_heatmap(report), report["text"] + dydit_line(model))


NODES = [LoadLazyGates, Laziness, ApplyLazyGates, LazyReport]
