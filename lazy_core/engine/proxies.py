"""Module proxies: for the duration of one model call, each block's attention and MLP are stand-ins that hand
their work to the run's cache; the block's own forward runs unchanged.

The stock forward is the only statement of the block math, so with nothing lazy the output is bit-identical
by construction, and any block whose two gated modules are children named like DiT's (`attn`, `mlp`) works.
Blocks laid out differently register their module names (`register_block`). Proxies hold the original
modules without registering them and are swapped in and out per call, so the model's parameters, state dict
and memory management never see them.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.dit import DiTBlock
from ..models.dydit import DyDiTBlock
from .gates import ATTN, MLP


@dataclass(frozen=True)
class Layout:
    """How a block class exposes its gated modules: the architecture gate files name, and the child names
    of its attention and MLP (the pair gates decide for; anything else, e.g. cross-attention, computes).
    norms: the child names of the norms whose output only the attention and the MLP read, in that order,
    through elementwise ops that broadcast over tokens (adaLN's modulate): where no row computes the module,
    the norm is skipped too (NormProxy). Empty: the norms always run."""

    architecture: str
    attn: str = "attn"
    mlp: str = "mlp"
    norms: tuple = ()


# Block class -> layout. Hosts register their own classes (ComfyUI's PixArtMSBlock is registered by the
# node pack, since lazy_core imports nothing from ComfyUI). DyDiT has DiT's modules but is its own
# architecture: gates measured on the dense weights do not fit its dynamic widths, nor the other way round.
DIT_NORMS = ("norm1", "norm2")
LAYOUTS = {DyDiTBlock: Layout("dydit", norms=DIT_NORMS), DiTBlock: Layout("dit", norms=DIT_NORMS)}


class UnsupportedModelError(TypeError):
    """The model's blocks have no attention/MLP pair the proxies can stand in for."""


def register_block(block_class, architecture, attn="attn", mlp="mlp", norms=()):
    """Lets a host name the gated modules of its own block class (and the norms that feed them: Layout)."""
    LAYOUTS[block_class] = Layout(architecture, attn, mlp, tuple(norms))


def layout_for(block):
    for cls in type(block).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    kids = dict(block.named_children())
    if isinstance(kids.get("attn"), nn.Module) and isinstance(kids.get("mlp"), nn.Module):
        return Layout(type(block).__name__)          # a DiT-like block nobody registered
    names = ", ".join(sorted(c.__name__ for c in LAYOUTS))
    raise UnsupportedModelError(f"blocks of type {type(block).__name__} have no `attn` and `mlp` modules and no "
                                f"registered layout; supported: {names} and DiT-like blocks")


class ModuleProxy(nn.Module):
    """Stands in for one gated module: the run's current call decides, per row, compute or reuse.

    Extra arguments pass through. Tensors among them whose first dimension is the row count are per row
    (DyDiT's token masks, its per-row head masks): the computing rows get their own rows of them. Others
    (PixArt's HW, DyDiT's active heads) pass unchanged."""

    def __init__(self, module, block, kind, state):
        super().__init__()
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "state", state)
        self.block, self.kind = block, kind

    # Under torch.compile the decision is host work on per-row data: dynamo would break the graph here anyway
    # and recompile per block. Running the proxy eagerly keeps the compiled graphs between modules stable.
    @torch.compiler.disable
    def forward(self, z, *args, **kwargs):
        module = self.module
        rows = z.shape[0]

        def fn(x, idx=None):
            """The module on x, the rows `idx` of z (None: all of them)."""
            if idx is None or not (args or kwargs):
                return module(x, *args, **kwargs)
            return module(x, *pick_rows(args, idx, rows), **dict(zip(kwargs, pick_rows(kwargs.values(), idx, rows))))
        return self.state.call.run(self.block, self.kind, fn, z)


class NormProxy(ModuleProxy):
    """Stands in for the norm that feeds gated module `kind`. When the call knows before the module's input
    exists that no row computes the module (policies that do not read it), it returns a one-token view of
    its own input instead of normalizing every token: a lazy module reads only its input's rows, dtype and
    device, and the modulation in between broadcasts over tokens, so a lazy step skips the norm and the
    modulation and the output stays bit-identical."""

    @torch.compiler.disable
    def forward(self, x, *args, **kwargs):
        if x.dim() == 3 and self.state.call.skips(self.block, self.kind, x):
            return x[:, :1]
        return self.module(x, *args, **kwargs)


class BlockProxy(nn.Module):
    """Stands in for a whole block, for policies that cache block ranges (Δ-DiT)."""

    def __init__(self, block, index, state):
        super().__init__()
        object.__setattr__(self, "inner", block)
        object.__setattr__(self, "state", state)
        self.index = index

    @torch.compiler.disable
    def forward(self, x, *args, **kwargs):
        return self.state.call.block(self.index, self.inner, x, *args, **kwargs)


def pick_rows(values, idx, rows):
    """The values with tensors whose first dimension is `rows` cut to the rows `idx` (others as they are)."""
    out = []
    for a in values:
        per_row = isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == rows
        out.append(a.index_select(0, idx.to(a.device)) if per_row else a)
    return out


class LazyBlock(BlockProxy):
    """Stands in for a whole block at block level (CacheOptions.level "block"): the block computes, or
    returns its input plus its forecast residual (Call.run_block). Per-row extra arguments are picked for
    the computing rows as ModuleProxy picks them."""

    @torch.compiler.disable
    def forward(self, x, *args, **kwargs):
        block, rows = self.inner, x.shape[0]

        def fn(idx):
            if idx is None:
                return {"img": block(x, *args, **kwargs)}
            return {"img": block(x.index_select(0, idx), *pick_rows(args, idx, rows),
                                 **dict(zip(kwargs, pick_rows(kwargs.values(), idx, rows))))}
        return self.state.call.run_block(self.index, {"img": x}, fn, block)["img"]


class Attachment:
    """The proxies for one model, built once per run. attach() swaps them into the blocks (module proxies
    always, block proxies when the run's policy caches ranges); detach() puts the very same modules back."""

    def __init__(self, model, state):
        blocks = blocks_of(model)
        self.model = model
        self.swaps = []                  # (parent's _modules, name, original, proxy)
        state.blocks = list(blocks)
        level = getattr(getattr(state, "options", None), "level", "module")
        if level == "block":
            if getattr(getattr(state, "policy", None), "ranges", False):
                raise ValueError("Δ-DiT caches block ranges itself: run it at module level")
            for i, blk in enumerate(blocks):
                if isinstance(blk, (LazyBlock, BlockProxy)):
                    raise RuntimeError("lazy proxies are already attached to this model: detach them first")
                self.swaps.append((blocks._modules, str(i), blk, LazyBlock(blk, i, state)))
            return
        # Norms get proxies only where the policy decides without reading the modules' inputs.
        blind = not getattr(getattr(state, "policy", None), "reads_input", True)
        for i, blk in enumerate(blocks):
            layout = layout_for(blk)
            for kind, name in ((ATTN, layout.attn), (MLP, layout.mlp)):
                module = blk._modules[name]
                if isinstance(module, ModuleProxy):
                    raise RuntimeError("lazy proxies are already attached to this model: detach them first")
                self.swaps.append((blk._modules, name, module, ModuleProxy(module, i, kind, state)))
            if blind:
                self.swaps += [(blk._modules, name, blk._modules[name], NormProxy(blk._modules[name], i, kind, state))
                               for kind, name in zip((ATTN, MLP), layout.norms)]
        if getattr(getattr(state, "policy", None), "ranges", False):
            self.swaps += [(blocks._modules, str(i), blk, BlockProxy(blk, i, state)) for i, blk in enumerate(blocks)]

    def attach(self):
        for modules, name, original, _ in self.swaps:
            if modules[name] is not original:
                ours = isinstance(modules[name], (ModuleProxy, BlockProxy, LazyBlock))
                what = ("lazy proxies are already attached" if ours
                        else "the model's blocks changed since this run began")
                raise RuntimeError(f"{what}: detach them first")
        for modules, name, _, proxy in self.swaps:
            modules[name] = proxy
        return self

    def detach(self):
        for modules, name, original, _ in self.swaps:
            modules[name] = original


def attach(model, state):
    """Routes the gated modules of `model.blocks` through `state` until detach() is called."""
    return Attachment(model, state).attach()


def blocks_of(model):
    """The model's transformer blocks (its `blocks` ModuleList); a torch.compile wrapper is looked through."""
    model = getattr(model, "_orig_mod", model)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise UnsupportedModelError(f"{type(model).__name__} has no `blocks` list of transformer blocks; "
                                    f"LazyDiT supports DiT and PixArt models")
    return blocks


def _linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def describe(model):
    """(architecture, depth, width) of a model whose blocks the proxies support; width is the gated modules'
    input width. Raises UnsupportedModelError if none fits."""
    blocks = blocks_of(model)
    layout = layout_for(blocks[0])
    linears = _linears(blocks[0]._modules[layout.attn])
    if not linears:
        raise UnsupportedModelError(f"the `{layout.attn}` module of {type(blocks[0]).__name__} has no linear layers")
    return layout.architecture, len(blocks), linears[0].in_features


def module_macs(blocks, tokens):
    """[(attn, mlp)] multiply-accumulates per row of each block at `tokens` tokens: every linear layer of the
    module, plus QK^T and AV for attention (2 T^2 d, d the width its output projection reads)."""
    out = []
    for blk in blocks:
        layout = layout_for(blk)
        attn, mlp = (_linears(blk._modules[name]) for name in (layout.attn, layout.mlp))
        per_token = [sum(m.in_features * m.out_features for m in mods) for mods in (attn, mlp)]
        scores = 2 * tokens * tokens * attn[-1].in_features if attn else 0
        out.append((tokens * per_token[0] + scores, tokens * per_token[1]))
    return out
