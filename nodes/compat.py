"""Schema features of newer ComfyUI releases, used where the running ComfyUI has them.

ComfyUI 0.33.0's V3 inputs take `advanced=True` (the front end folds such inputs into the node's advanced
section) and schemas take `search_aliases` (more words the node search matches). 0.3.75 has neither, and
passing them there is a TypeError. So the node files build their schemas as 0.3.75 wants them, and
`with_ui_hints` adds both, from the tables below, to each schema as it is created, only where this ComfyUI's
`io.Input` / `io.Schema` take them. Widget names and order do not change: saved workflows load either way.
"""

import dataclasses
import inspect

from comfy_api.latest import io

# Technical knobs an artist rarely touches: folded away by front ends that support it.
ADVANCED = {
    "LazyDiT_ApplyGates": ("max_lazy_steps", "cache_device", "cache_dtype", "reuse", "start_percent", "end_percent"),
    "LazyDiT_DeltaDiT": ("boundary_percent", "start_percent", "end_percent"),
    "LazyDiT_FORA": ("reuse", "start_percent", "end_percent"),
    "LazyDiT_TaylorSeer": ("start_percent", "end_percent"),
    "LazyDiT_LazinessSweep": ("start_percent", "end_percent"),
    "LazyDiT_DiTLoader": ("cfg_mode",),
    "LazyDiT_DyDiT": ("threshold",),
    "LazyDiT_TrainGates": ("laziness_pressure", "step_counts", "objective"),
}

# What people type when they look for a node like this one.
_SPEED = ["cache", "speed up", "lazy", "teacache", "taylorseer", "block cache", "step cache"]
SEARCH_ALIASES = {
    "LazyDiT_ApplyGates": [*_SPEED, "lazydit", "skip blocks"],
    "LazyDiT_LoadGates": ["lazy", "lazy gates", "lazydit", "cache", "speed up"],
    "LazyDiT_Laziness": ["lazy", "laziness slider", "speed up"],
    "LazyDiT_Report": ["lazy", "cache report", "heatmap"],
    "LazyDiT_DeltaDiT": [*_SPEED, "delta dit", "delta-dit"],
    "LazyDiT_FORA": [*_SPEED, "fora"],
    "LazyDiT_TaylorSeer": [*_SPEED, "taylor", "forecast"],
    "LazyDiT_LazinessSweep": ["lazy", "laziness sweep", "xy plot", "speed up"],
    "LazyDiT_Compare": ["psnr", "ssim", "image difference", "compare images"],
    "LazyDiT_DiTLoader": ["dit", "dit-xl", "facebook dit", "load checkpoint"],
    "LazyDiT_DemoVAELoader": ["demo vae", "pixel vae"],
    "LazyDiT_ClassLabel": ["dit", "class label", "imagenet class"],
    "LazyDiT_NullLabel": ["dit", "null class", "negative label"],
    "LazyDiT_DiTSchedule": ["dit", "ddim", "respace", "sigmas"],
    "LazyDiT_DyDiT": ["dydit", "dynamic width", "token skip", "speed up"],
    "LazyDiT_DyDiTReport": ["dydit", "heatmap"],
    "LazyDiT_TrainGates": ["lazy", "train gates", "lazydit"],
    "LazyDiT_SensitivitySchedule": ["lazy", "training-free", "cache", "speed up", "teacache"],
}


def supports_advanced():
    """Whether this ComfyUI's V3 inputs take `advanced` (0.33.0 and later)."""
    return "advanced" in inspect.signature(io.Input.__init__).parameters


def supports_search_aliases():
    """Whether this ComfyUI's V3 schemas take `search_aliases` (0.33.0 and later)."""
    return any(f.name == "search_aliases" for f in dataclasses.fields(io.Schema))


def add_hints(schema):
    """`schema` with its advanced flags and search aliases from the tables, where this ComfyUI supports them.
    An input named in ADVANCED that the schema lacks is an error (a renamed input must be renamed here too)."""
    names = ADVANCED.get(schema.node_id, ())
    inputs = {i.id: i for i in schema.inputs}
    unknown = [n for n in names if n not in inputs]
    if unknown:
        raise ValueError(f"{schema.node_id} has no inputs {unknown} (nodes/compat.py ADVANCED names them)")
    if supports_advanced():
        for name in names:
            inputs[name].advanced = True
    if supports_search_aliases() and schema.node_id in SEARCH_ALIASES:
        schema.search_aliases = list(SEARCH_ALIASES[schema.node_id])
    return schema


def with_ui_hints(node):
    """The V3 node class with add_hints applied to the schema its define_schema returns."""
    define = node.define_schema
    if getattr(define, "_ui_hints", False):
        return node

    def define_schema(cls):
        return add_hints(define())
    define_schema._ui_hints = True
    node.define_schema = classmethod(define_schema)
    return node
