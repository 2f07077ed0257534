"""Training-free siblings on the same hook, cache and report: Δ-DiT, FORA and TaylorSeer."""

import functools

from comfy_api.latest import io

from ..lazy_core.engine.cache import MAX_ORDER, REUSE, CacheOptions
from ..lazy_core.engine.policies import DeltaDiT, Fora, TaylorSeer
from .checks import Combo, Float, check_inputs, check_range
from .lazy_hook import LazySession, in_range, install, lazy_layout, percent_to_timestep, range_title, step_range
from .lazy_nodes import CATEGORY, range_inputs


class DeltaDiTNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_DeltaDiT",
            display_name="LazyDiT Δ-DiT Cache",
            category=CATEGORY,
            description="Training-free Δ-DiT: reuses the change (output minus input) of a range of blocks. Early "
                        "in sampling (outline) the rear blocks are cached, later (details) the front blocks. "
                        "Refresh rule: every stream computes fully on its first step, every `interval`-th step, "
                        "and on the first step after the boundary (the cached range changes). Works on any DiT "
                        "or PixArt model, no gates needed.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model."),
                Float("cached_share", default=0.5, min=0.05, max=1.0, step=0.05,
                      tooltip="Share of the blocks whose work is reused between refreshes."),
                Float("boundary_percent", default=0.5, min=0.0, max=1.0, step=0.01,
                      display_mode=io.NumberDisplay.slider,
                      tooltip="Point of the sampling schedule where caching moves from the rear blocks "
                              "(outline stage) to the front blocks (detail stage)."),
                io.Int.Input("interval", default=2, min=1, max=10,
                             tooltip="A full step every N steps; 1 = never reuse (exact)."),
                *range_inputs(),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, cached_share, boundary_percent, interval, start_percent=0.0, end_percent=1.0):
        check_inputs(cls, cached_share=cached_share, boundary_percent=boundary_percent, interval=interval,
                     start_percent=start_percent, end_percent=end_percent)
        check_range(start_percent, end_percent)
        _, depth, _ = lazy_layout(model.model.diffusion_model)
        blocks = max(1, min(depth, round(cached_share * depth)))
        boundary = percent_to_timestep(model, boundary_percent)
        make_policy = in_range(functools.partial(DeltaDiT, depth, blocks, boundary, interval),
                               step_range(model, start_percent, end_percent))
        title = (f"Δ-DiT, {blocks}/{depth} blocks, boundary {boundary_percent:.0%}, interval {interval}"
                 f"{range_title(start_percent, end_percent)}")
        return io.NodeOutput(install(model, LazySession(make_policy, CacheOptions(), title)))


class ForaNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_FORA",
            display_name="LazyDiT FORA Cache",
            category=CATEGORY,
            description="Training-free FORA: every block's attention and MLP compute on every N-th step and reuse "
                        "their last output (with the current step's modulation) in between.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model."),
                io.Int.Input("interval", default=3, min=1, max=10,
                             tooltip="Compute every N-th step (FORA's default is 3); 1 = exact."),
                Combo("reuse", REUSE, default="repeat", optional=True,
                      tooltip="repeat = FORA as published; extrapolate = continue the line through the last "
                              "two computed outputs (closer to exact, twice the memory)."),
                *range_inputs(),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, interval, reuse="repeat", start_percent=0.0, end_percent=1.0):
        check_inputs(cls, interval=interval, reuse=reuse, start_percent=start_percent, end_percent=end_percent)
        check_range(start_percent, end_percent)
        lazy_layout(model.model.diffusion_model)
        options = CacheOptions(max_lazy_steps=max(1, interval - 1), reuse=reuse)
        make_policy = in_range(functools.partial(Fora, interval), step_range(model, start_percent, end_percent))
        title = f"FORA, interval {interval}, {reuse}{range_title(start_percent, end_percent)}"
        session = LazySession(make_policy, options, title)
        return io.NodeOutput(install(model, session))


class TaylorSeerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_TaylorSeer",
            display_name="LazyDiT TaylorSeer Cache",
            category=CATEGORY,
            description="Training-free TaylorSeer (Liu et al., ICCV 2025): every block's attention and MLP compute "
                        "on every N-th step; in between each forecasts its output with a Taylor series whose "
                        "derivatives are finite differences of its last computed outputs. Memory: order + 1 "
                        "kept outputs per module. A baseline for Apply Lazy Gates, which plans where the "
                        "computed steps go.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model."),
                io.Int.Input("interval", default=4, min=1, max=10,
                             tooltip="Compute every N-th step; N - 1 forecast steps in between (4: 75 % lazy). "
                                     "1 = exact."),
                io.Int.Input("order", default=2, min=1, max=MAX_ORDER,
                             tooltip="Taylor order: 1 = a line through the last two computed outputs, 2 = also "
                                     "their curvature (three kept outputs)."),
                *range_inputs(),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, interval, order, start_percent=0.0, end_percent=1.0):
        check_inputs(cls, interval=interval, order=order, start_percent=start_percent, end_percent=end_percent)
        check_range(start_percent, end_percent)
        lazy_layout(model.model.diffusion_model)
        options = CacheOptions(max_lazy_steps=max(1, interval - 1), reuse="taylor", order=order)
        make_policy = in_range(functools.partial(TaylorSeer, interval), step_range(model, start_percent, end_percent))
        title = f"TaylorSeer, interval {interval}, order {order}{range_title(start_percent, end_percent)}"
        return io.NodeOutput(install(model, LazySession(make_policy, options, title)))


NODES = [DeltaDiTNode, ForaNode, TaylorSeerNode]
