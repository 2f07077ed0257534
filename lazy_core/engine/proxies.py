"""Block adapters: the stock block's computation, with each gated module routed through the run's cache.

One adapter per block layout. With nothing lazy an adapter performs exactly the stock block's operations
in the same order, so its output is bit-identical. Adapters hold the original submodules without
registering them, so the model's parameters, state dict and memory management stay untouched.
"""

import torch.nn as nn

from ..models.dit import DiTBlock, modulate
from .gates import ATTN, MLP


class BlockAdapter(nn.Module):
    """Base: keeps the original block and the run state outside nn.Module's registry."""

    def __init__(self, block, index, state):
        super().__init__()
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "state", state)
        self.index = index

    @staticmethod
    def module_macs(block, tokens):
        """(attn, mlp) multiply-accumulates per row at `tokens` tokens."""
        raise NotImplementedError


def _linear_macs(*linears):
    return sum(m.in_features * m.out_features for m in linears)


class DiTBlockAdapter(BlockAdapter):
    """DiT block (adaLN-Zero): gates on the modulated inputs of attention and MLP."""

    architecture = "dit"

    def forward(self, x, c):
        return self.state.call.block(self.index, self._forward, x, c)

    def _forward(self, x, c):
        b, call = self.block, self.state.call
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = b.adaLN_modulation(c).chunk(6, dim=1)
        z = modulate(b.norm1(x), shift_msa, scale_msa)                             # (N, T, D)
        x = x + gate_msa.unsqueeze(1) * call.run(self.index, ATTN, b.attn, z)
        z = modulate(b.norm2(x), shift_mlp, scale_mlp)                             # (N, T, D)
        x = x + gate_mlp.unsqueeze(1) * call.run(self.index, MLP, b.mlp, z)
        return x

    @staticmethod
    def module_macs(block, tokens):
        d = block.attn.proj.in_features
        attn = tokens * _linear_macs(block.attn.qkv, block.attn.proj) + 2 * tokens * tokens * d
        return attn, tokens * _linear_macs(block.mlp.fc1, block.mlp.fc2)


def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


class PixArtBlockAdapter(BlockAdapter):
    """PixArt(-Σ) block (adaLN-single): gates on self-attention and MLP; cross-attention always computes."""

    architecture = "pixart"

    def forward(self, x, y, t, mask=None, HW=None, **kwargs):
        return self.state.call.block(self.index, self._forward, x, y, t, mask, HW)

    def _forward(self, x, y, t, mask=None, HW=None):
        b, call = self.block, self.state.call
        B = x.shape[0]
        table = b.scale_shift_table[None].to(dtype=x.dtype, device=x.device)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (table + t.reshape(B, 6, -1)).chunk(6, dim=1)
        z = t2i_modulate(b.norm1(x), shift_msa, scale_msa)                         # (N, T, D)
        x = x + (gate_msa * call.run(self.index, ATTN, lambda rows: b.attn(rows, HW=HW), z))
        x = x + b.cross_attn(x, y, mask)
        z = t2i_modulate(b.norm2(x), shift_mlp, scale_mlp)                         # (N, T, D)
        x = x + (gate_mlp * call.run(self.index, MLP, b.mlp, z))
        return x

    @staticmethod
    def module_macs(block, tokens):
        d = block.attn.proj.in_features
        attn = tokens * _linear_macs(block.attn.qkv, block.attn.proj) + 2 * tokens * tokens * d
        return attn, tokens * _linear_macs(block.mlp.fc1, block.mlp.fc2)


# Block class -> adapter. Hosts register their own block classes (ComfyUI's PixArtMSBlock is registered by
# the node pack, since lazy_core imports nothing from ComfyUI).
ADAPTERS = {DiTBlock: DiTBlockAdapter}


class UnsupportedModelError(TypeError):
    """The model's blocks have no adapter."""


def adapter_for(block):
    for cls in type(block).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls]
    names = ", ".join(sorted(c.__name__ for c in ADAPTERS))
    raise UnsupportedModelError(f"no lazy adapter for blocks of type {type(block).__name__}; supported: {names}")


class Attachment:
    """Adapters for `model.blocks`, built once per run; attach()/detach() swap them in and put back the very
    same ModuleList (one swap per model call, so other code never sees the adapters between calls)."""

    def __init__(self, model, state):
        self.model = model
        self.original = model.blocks
        self.adapters = nn.ModuleList([adapter_for(blk)(blk, i, state) for i, blk in enumerate(self.original)])
        state.blocks = list(self.original)

    def attach(self):
        blocks = self.model.blocks
        if blocks is not self.original:
            what = "lazy adapters are already attached" if blocks is self.adapters or (
                len(blocks) and isinstance(blocks[0], BlockAdapter)) else "model.blocks changed"
            raise RuntimeError(f"{what}: detach them first")
        self.model.blocks = self.adapters
        return self

    def detach(self):
        self.model.blocks = self.original


def attach(model, state):
    """Routes `model.blocks` through adapters bound to `state` until detach() is called."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) and isinstance(blocks[0], BlockAdapter):
        raise RuntimeError("lazy adapters are already attached to this model; detach them first")
    return Attachment(model, state).attach()


def describe(model):
    """(architecture, depth, width) of a model whose blocks have an adapter; raises if none fits."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise UnsupportedModelError(f"{type(model).__name__} has no `blocks` list of transformer blocks; "
                                    f"LazyDiT supports DiT and PixArt models")
    adapter = adapter_for(blocks[0])
    return adapter.architecture, len(blocks), blocks[0].attn.proj.in_features


def module_macs(blocks, tokens):
    """[(attn, mlp)] MACs per row for each block at `tokens` tokens."""
    return [adapter_for(blk).module_macs(blk, tokens) for blk in blocks]


def register_adapter(block_class, adapter_class):
    """Lets a host map its own block class to an adapter (the layouts here are the ones supported)."""
    if adapter_class not in (DiTBlockAdapter, PixArtBlockAdapter):
        raise ValueError(f"unknown adapter {adapter_class!r}")
    ADAPTERS[block_class] = adapter_class
