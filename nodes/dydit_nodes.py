"""DyDiT in the graph: sample a DyDiT checkpoint dynamically or dense, and see what each block computed."""

from comfy_api.latest import io

from ..lazy_core.models.diffusion import space_timesteps
from ..lazy_core.models.dydit import DyDiT, dense_macs, macs, summarize, width_table
from .checks import Combo, Float, check_inputs
from .dit_model import DySession, dy_session_of, with_dy_session
from .lazy_nodes import CATEGORY
from .lazy_report import render_widths

MODES = {"dynamic": "sliced", "dense": "dense"}
INFO_STEPS = 50


def dydit_of(model, node):
    net = model.model.diffusion_model
    if not isinstance(net, DyDiT):
        raise ValueError(f"{node} needs a DyDiT model (a checkpoint with the routers attn_rate, mlp_rate and "
                         f"token_selection, e.g. the built-in dydit_demo_fashion); this MODEL is a "
                         f"{type(net).__name__}: load a DyDiT checkpoint with Load DiT Checkpoint")
    return net


def describe_widths(net, threshold, mode, tokens):
    """What the routers will use over a 50-step schedule (TDW depends on t alone); tokens are decided per
    image while sampling."""
    config = net.config
    if mode == "dense":
        return "dense: every head, MLP channel and token computes (DyDiT's complete model)"
    table = width_table(net, space_timesteps(INFO_STEPS)[::-1], threshold)
    H, depth = config.num_heads, config.depth
    heads = sum(sum(h) for _, h, _ in table) / (len(table) * depth * H)
    groups = sum(sum(g) for _, _, g in table) / (len(table) * depth * H)
    width = sum(macs(config, h, g, 1.0) for _, hs, gs in table for h, g in zip(hs, gs))
    full = dense_macs(config) * depth * len(table)
    token_note = ("MLP tokens are chosen per image while sampling (see DyDiT Report)" if tokens
                  else "token skipping off: every token runs the MLP")
    return (f"dynamic width at threshold {threshold:.2f}, over a {INFO_STEPS}-step schedule: heads {heads:.0%}, "
            f"MLP channels {groups:.0%}; attention + MLP at {width / full:.0%} of the dense MACs before token "
            f"skipping; {token_note}")


class DyDiTWidth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_DyDiT",
            display_name="LazyDiT DyDiT Width",
            category=CATEGORY,
            description="How a DyDiT model samples. dynamic: at each step its routers pick the attention heads "
                        "and MLP channel groups every block uses (from the timestep), and which tokens skip the "
                        "MLP (per image); only those weights and tokens compute. dense: the complete model, for "
                        "A/B comparisons. A DyDiT checkpoint samples dynamically without this node.",
            inputs=[
                io.Model.Input("model", tooltip="A DyDiT model (Load DiT Checkpoint with a DyDiT file)."),
                Combo("mode", MODES, default="dynamic",
                      tooltip="dynamic = the routers decide (fast); dense = everything computes."),
                io.Boolean.Input("token_skip", default=True,
                                 tooltip="Let tokens the token routers pass over skip each block's MLP."),
                Float("threshold", default=0.5, min=0.05, max=0.95, step=0.01,
                      display_mode=io.NumberDisplay.slider,
                      tooltip="Where the routers decide (sigmoid of their logit above it = compute). 0.5 as "
                              "trained; higher computes less and drifts more."),
            ],
            outputs=[io.Model.Output(display_name="model"),
                     io.String.Output(display_name="info", tooltip="The widths the routers choose over a "
                                                                   "50-step schedule, and their share of the "
                                                                   "dense MACs.")],
        )

    @classmethod
    def execute(cls, model, mode, token_skip, threshold):
        check_inputs(cls, mode=mode, threshold=threshold)
        net = dydit_of(model, "DyDiT Width")
        session = DySession(MODES[mode], bool(token_skip), float(threshold))
        return io.NodeOutput(with_dy_session(model, session), describe_widths(net, threshold, mode, token_skip))


class DyDiTReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_DyDiTReport",
            display_name="LazyDiT DyDiT Report",
            category=CATEGORY,
            description="What the last sampling run of a DyDiT model computed: each block's share of attention "
                        "heads, MLP channels and MLP tokens per step as a heat-map (bright = computed), and the "
                        "attention + MLP MACs against the dense model. Connect the sampler's LATENT so it runs "
                        "after sampling.",
            inputs=[io.Model.Input("model", tooltip="The DyDiT model the sampler used."),
                    io.Latent.Input("latent", tooltip="The sampler's output; only orders this node after it.")],
            outputs=[io.Image.Output(display_name="heatmap"), io.String.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, model, latent):
        net = dydit_of(model, "DyDiT Report")
        session = dy_session_of(model)
        if session is None or not session.report:
            raise ValueError("the DyDiT model has not been sampled yet: connect the LATENT of the sampler that "
                             "used this MODEL")
        report = summarize(net.config, session.report)
        return io.NodeOutput(render_widths(report), report["text"])


NODES = [DyDiTWidth, DyDiTReport]
