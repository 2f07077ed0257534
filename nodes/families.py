"""ComfyUI's other diffusion transformers, lazy a whole block at a time.

Flux, Chroma, SD3, Wan, HunyuanVideo, Qwen-Image, LTXV and AuraFlow consult block replacements in their own
forward: transformer_options["patches_replace"]["dit"][(kind, i)](args, {"original_block": run}), where
`args` holds the block's stream inputs ("img", and "txt" for two-stream blocks) and `run(args)` returns its
outputs by the same names. A BlockPatch sits in every slot: it asks the run's current call (the engine's
Call.run_block) whether each row computes or returns its inputs plus the block's forecast residual. No model
forward is copied, so a change inside a core block cannot break the pack.
"""

import importlib
from dataclasses import dataclass

import torch

from ..lazy_core.engine.proxies import UnsupportedModelError

STREAMS = ("img", "txt")          # the inputs a block writes back; vec, pe, masks are per-call constants


@dataclass(frozen=True)
class Family:
    """A model class whose forward consults block replacements: the architecture name gate files carry,
    and its block lists in forward order as (replacement kind, attribute)."""

    name: str
    groups: tuple

    def blocks(self, net):
        """[(kind, index within its kind, block module)] in forward order."""
        return [(kind, i, blk) for kind, attr in self.groups for i, blk in enumerate(getattr(net, attr))]


# (module, class) -> Family. Subclasses (Wan's VACE and camera models, ...) are found through the MRO.
FAMILIES = {
    ("comfy.ldm.flux.model", "Flux"): Family("flux", (("double_block", "double_blocks"),
                                                      ("single_block", "single_blocks"))),
    ("comfy.ldm.chroma.model", "Chroma"): Family("chroma", (("double_block", "double_blocks"),
                                                            ("single_block", "single_blocks"))),
    ("comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT"): Family("sd3", (("double_block", "joint_blocks"),)),
    ("comfy.ldm.wan.model", "WanModel"): Family("wan", (("double_block", "blocks"),)),
    ("comfy.ldm.hunyuan_video.model", "HunyuanVideo"): Family("hunyuan_video", (("double_block", "double_blocks"),
                                                                                ("single_block", "single_blocks"))),
    ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel"): Family("qwen_image",
                                                                          (("double_block", "transformer_blocks"),)),
    ("comfy.ldm.lightricks.model", "LTXVModel"): Family("ltxv", (("double_block", "transformer_blocks"),)),
    ("comfy.ldm.aura.mmdit", "MMDiT"): Family("auraflow", (("double_block", "double_layers"),
                                                          ("single_block", "single_layers"))),
}


def family_of(net):
    """The Family of a diffusion model, or None (DiT, PixArt: the module path; anything else: unsupported)."""
    for cls in type(net).__mro__:
        family = FAMILIES.get((cls.__module__, cls.__name__))
        if family is not None:
            return family
    return None


def layout(net, family):
    """(architecture, depth, width) of a family model: every block counts; width = the first linear layer's
    input width (the hidden size)."""
    blocks = family.blocks(net)
    if not blocks:
        raise UnsupportedModelError(f"this {type(net).__name__} has no transformer blocks to make lazy")
    first = next((m for m in blocks[0][2].modules() if isinstance(m, torch.nn.Linear)), None)
    return family.name, len(blocks), first.in_features if first is not None else 0


class BlockPatch:
    """One block slot's replacement: the run's current call decides, per row, compute or reuse.

    Outside a lazy run (no call open: another model's run, a preview) the block runs as it would. Shared by
    reference when ComfyUI copies model options, like the session it reads."""

    def __init__(self, session, index):
        self.session, self.index = session, index

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        run = extra["original_block"]
        state = self.session.state
        call = getattr(state, "call", None)
        if call is None:
            return run(args)
        # Flux, Chroma, HunyuanVideo and LTXV blocks write their outputs into their input tensors: keep copies.
        inputs = {k: args[k].clone() for k in STREAMS if isinstance(args.get(k), torch.Tensor)}
        rows = call.rows

        def fn(idx):
            if idx is None:
                return run(args)
            return run({k: v.index_select(0, idx.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() and
                        v.shape[0] == rows else v for k, v in args.items()})
        blocks = state.blocks
        return call.run_block(self.index, inputs, fn, blocks[self.index] if self.index < len(blocks) else None)


def patch_blocks(model, session, family):
    """Puts a BlockPatch into every block slot of `model` (a ModelPatcher clone); refuses slots another node
    already replaced, whose work the cache would silently drop."""
    net = model.model.diffusion_model
    taken = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for index, (kind, i, _) in enumerate(family.blocks(net)):
        other = taken.get((kind, i))
        if other is not None and not isinstance(other, BlockPatch):
            raise ValueError(f"another node already replaces {kind} {i} of this {family.name} model "
                             f"({getattr(other, '__qualname__', type(other).__name__)}); a LazyDiT cache would "
                             f"skip its work. Apply the LazyDiT node before that node, or use one of them")
        model.set_model_patch_replace(BlockPatch(session, index), "dit", kind, i)


def unpatch_blocks(model):
    """Removes every BlockPatch from `model` (a ModelPatcher clone), leaving other nodes' replacements."""
    to = model.model_options.get("transformer_options")
    dit = (to or {}).get("patches_replace", {}).get("dit")
    if not dit:
        return
    kept = {k: v for k, v in dit.items() if not isinstance(v, BlockPatch)}
    to = model.model_options["transformer_options"] = dict(to)
    to["patches_replace"] = {**to["patches_replace"], "dit": kept}


def import_families():
    """The family classes this ComfyUI has, by architecture name (for tests and the README table)."""
    found = {}
    for (module, name), family in FAMILIES.items():
        try:
            found[family.name] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return found
