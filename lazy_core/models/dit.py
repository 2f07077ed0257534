"""DiT (Peebles & Xie, 2023) with the original module layout and state-dict keys.

A checkpoint of facebookresearch/DiT (`DiT-XL-2-256x256.pt`, ...) loads into `DiT` with
`strict=True`. Linear, LayerNorm, Conv2d and Embedding layers come from an injectable `ops`
namespace, so a host (ComfyUI) can build the model from its own casting/offloading layers.
"""

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TORCH_OPS = SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm, Conv2d=nn.Conv2d, Embedding=nn.Embedding)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#               Embedding Layers for Timesteps and Class Labels                 #
#################################################################################

class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vector representations."""

    def __init__(self, hidden_size, frequency_embedding_size=256, ops=TORCH_OPS, **factory):
        super().__init__()
        self.mlp = nn.Sequential(
            ops.Linear(frequency_embedding_size, hidden_size, bias=True, **factory),
            nn.SiLU(),
            ops.Linear(hidden_size, hidden_size, bias=True, **factory),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        """Sinusoidal embedding [cos | sin] of (N,) timesteps, as in the original DiT."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]                               # (N, half)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)     # (N, dim)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embeds class labels; row `num_classes` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes, hidden_size, dropout_prob, ops=TORCH_OPS, **factory):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = ops.Embedding(num_classes + use_cfg_embedding, hidden_size, **factory)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        """Replaces labels by the null class: at random while training, or where force_drop_ids == 1."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


#################################################################################
#                                 Core DiT Model                                #
#################################################################################

class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's key layout)."""

    def __init__(self, dim, num_heads, ops=TORCH_OPS, **factory):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = ops.Linear(dim, dim * 3, bias=True, **factory)
        self.proj = ops.Linear(dim, dim, **factory)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                    # (B, H, N, C/H) each
        x = F.scaled_dot_product_attention(q, k, v)                # (B, H, N, C/H)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))      # (B, N, C)


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU."""

    def __init__(self, dim, hidden, ops=TORCH_OPS, **factory):
        super().__init__()
        self.fc1 = ops.Linear(dim, hidden, **factory)
        self.fc2 = ops.Linear(hidden, dim, **factory)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    attention, feed_forward = Attention, Mlp     # subclasses (DyDiT) swap in their own, same keys

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, ops=TORCH_OPS, **factory):
        super().__init__()
        self.norm1 = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.attn = self.attention(hidden_size, num_heads, ops=ops, **factory)
        self.norm2 = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.mlp = self.feed_forward(hidden_size, int(hidden_size * mlp_ratio), ops=ops, **factory)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(hidden_size, 6 * hidden_size, bias=True, **factory))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN, then a linear map back to patches."""

    def __init__(self, hidden_size, patch_size, out_channels, ops=TORCH_OPS, **factory):
        super().__init__()
        self.norm_final = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.linear = ops.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True, **factory)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(hidden_size, 2 * hidden_size, bias=True, **factory))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


@dataclass(frozen=True)
class DiTConfig:
    """Everything needed to build a DiT; `from_state_dict` infers it from a checkpoint."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def to_dict(self):
        return asdict(self)

    @property
    def tokens(self):
        return (self.input_size // self.patch_size) ** 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be turned into a DiT; the message says what is wrong and what to do."""


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone."""

    block = DiTBlock

    def __init__(self, config: DiTConfig = DiTConfig(), ops=TORCH_OPS, dtype=None, device=None):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.config = config
        c = config
        self.learn_sigma = c.learn_sigma
        self.in_channels = c.in_channels
        self.out_channels = c.in_channels * 2 if c.learn_sigma else c.in_channels
        self.patch_size = c.patch_size
        self.num_heads = c.num_heads

        self.x_embedder = PatchEmbed(c.input_size, c.patch_size, c.in_channels, c.hidden_size, ops=ops, **factory)
        self.t_embedder = TimestepEmbedder(c.hidden_size, ops=ops, **factory)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob, ops=ops, **factory)
        # Fixed sin-cos embedding, stored as a frozen parameter so that official checkpoints load strictly.
        self.pos_embed = nn.Parameter(torch.zeros(1, c.tokens, c.hidden_size, **factory), requires_grad=False)
        self.blocks = nn.ModuleList([
            self.block(c.hidden_size, c.num_heads, mlp_ratio=c.mlp_ratio, ops=ops, **factory) for _ in range(c.depth)
        ])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, self.out_channels, ops=ops, **factory)

    @property
    def family(self):
        """The plain class whose keys this model's state dict has (hosts subclass with other signatures)."""
        return DiT

    def initialize_weights(self, seed=None):
        """The original training initialisation (only needed to train from scratch)."""
        generator_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)

        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)

        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], int(self.x_embedder.num_patches ** 0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))

        # Initialize patch_embed like nn.Linear (instead of nn.Conv2d):
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        # Zero-out adaLN modulation layers, so every block starts as the identity (adaLN-Zero):
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)

        # Zero-out output layers:
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)
        if seed is not None:
            torch.random.set_rng_state(generator_state)

    def unpatchify(self, x):
        """(N, T, patch_size**2 * C) -> (N, C, H, W)."""
        c = self.out_channels
        p = self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def check_size(self, x):
        side = self.x_embedder.img_size
        if x.shape[-2:] != (side, side):
            raise ValueError(f"DiT was built for {side}x{side} latents but got {tuple(x.shape[-2:])}: its positional "
                             f"embedding is fixed; use an image of {side * 8}x{side * 8} px")

    def embed(self, x, t, y):
        """Token embedding and conditioning vector: (N, C, H, W) -> (N, T, D), (N, D)."""
        x = self.x_embedder(x) + self.pos_embed.to(x.dtype)   # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (N, D)
        return x, c

    def forward(self, x, t, y, **kwargs):
        """
        x: (N, C, H, W) latents, t: (N,) diffusion timesteps (0..999), y: (N,) class labels.
        Returns (N, out_channels, H, W): eps, then (with learn_sigma) the variance interpolation.
        """
        self.check_size(x)
        x, c = self.embed(x, t, y.long())
        for block in self.blocks:
            x = block(x, c)                    # (N, T, D)
        x = self.final_layer(x, c)             # (N, T, patch_size ** 2 * out_channels)
        return self.unpatchify(x)              # (N, out_channels, H, W)

    @classmethod
    def from_state_dict(cls, sd, ops=TORCH_OPS, dtype=None, device=None, **overrides):
        """Builds the DiT that `sd` fits (config inferred) and loads it strictly."""
        config = infer_config(sd, **overrides)
        model = cls(config, ops=ops, dtype=dtype, device=device)
        load_strict(model, sd)
        return model


class PatchEmbed(nn.Module):
    """2-D image to patch embedding (timm's PatchEmbed key layout: `proj`)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, ops=TORCH_OPS, **factory):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = ops.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True, **factory)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)   # (N, T, D)


#################################################################################
#                         Checkpoint inspection                                 #
#################################################################################

# The tensors a config is read from, with their number of dimensions.
REQUIRED_KEYS = {"x_embedder.proj.weight": 4, "t_embedder.mlp.0.weight": 2, "y_embedder.embedding_table.weight": 2,
                 "pos_embed": 3, "final_layer.linear.weight": 2, "blocks.0.attn.qkv.weight": 2,
                 "blocks.0.mlp.fc1.weight": 2}
PAPER_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}       # width -> heads (Table 1 of Peebles & Xie)


def unwrap_state_dict(sd):
    """Returns the plain state dict of a DiT file: official files are plain; train.py ones hold it under "ema"."""
    for key in ("ema", "model", "state_dict"):
        if key in sd and isinstance(sd[key], dict) and "pos_embed" not in sd:
            return sd[key]
    return sd


def infer_config(sd, num_heads=None, class_dropout_prob=0.1, **overrides):
    """Infers a DiTConfig from DiT state-dict shapes. Heads cannot be read from DiT weights (DyDiT's head
    router has one output per head but the first): they follow the paper's configs (width 1152/1024/768/384
    -> 16/16/12/6 heads, else width // 64) unless given. The label table has a null row (for guidance) iff
    class_dropout_prob > 0."""
    missing = [k for k in REQUIRED_KEYS if k not in sd]
    if missing:
        found = ", ".join(sorted(sd)[:5]) or "nothing"
        raise CheckpointError(
            f"not a DiT checkpoint: keys {missing[:4]} are missing (found {found}, ...). Expected the original "
            f"facebookresearch/DiT layout (x_embedder.proj.weight, blocks.N.attn.qkv.weight, ...); "
            f"PixArt checkpoints load with ComfyUI's 'Load Diffusion Model' node instead")
    for key, ndim in REQUIRED_KEYS.items():
        shape = tuple(sd[key].shape)
        if len(shape) != ndim or 0 in shape:
            raise CheckpointError(f"not a DiT checkpoint: {key} has shape {shape}, expected a non-empty {ndim}-D "
                                  f"tensor as in the facebookresearch/DiT layout")
    proj = sd["x_embedder.proj.weight"]                       # (D, C, p, p)
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    if proj.shape[3] != patch:
        raise CheckpointError(f"x_embedder.proj.weight has shape {tuple(proj.shape)}: patches must be square")
    tokens = sd["pos_embed"].shape[1]
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise CheckpointError(f"pos_embed has {tokens} tokens, which is not a square grid")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    out = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    mlp_hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    router = sd.get("blocks.0.attn_rate.router.weight")       # DyDiT: one logit per head but the first
    if num_heads is None and router is not None and router.ndim == 2:
        num_heads = router.shape[0] + 1
    if num_heads is None:
        num_heads = PAPER_HEADS.get(hidden, max(1, hidden // 64))
    if hidden % num_heads:
        raise CheckpointError(f"width {hidden} is not divisible by {num_heads} heads; pass num_heads explicitly")
    if out not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"final layer gives {out} channels for {in_channels} input channels; "
                              f"expected {in_channels} (eps) or {2 * in_channels} (eps + learned sigma)")
    fields = dict(input_size=side * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
                  depth=depth, num_heads=num_heads, mlp_ratio=mlp_hidden / hidden,
                  num_classes=rows - (class_dropout_prob > 0), class_dropout_prob=class_dropout_prob,
                  learn_sigma=out == 2 * in_channels)
    fields.update(overrides)
    return DiTConfig(**fields)


def _listed(keys, limit=3):
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(config, sd, cls=None):
    """Raises CheckpointError unless `sd` has exactly the keys and shapes of a `cls` (DiT unless given) with
    `config`; read off a model on the meta device, so nothing is allocated."""
    cls = cls or DiT
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    problems = [f"{label}: {_listed(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        c = config
        raise CheckpointError(f"tensors do not fit the {cls.__name__} they imply (depth {c.depth}, width "
                              f"{c.hidden_size}, patch {c.patch_size}, {c.num_classes} classes): "
                              f"{'; '.join(problems)}. The file is incomplete or from another model: use an "
                              f"official facebookresearch/DiT (or DyDiT) checkpoint or one saved by this pack")


def load_strict(model, sd):
    """load_state_dict(strict=True), after a key and shape check whose error says what does not fit."""
    check_state_dict(model.config, sd, model.family)
    model.load_state_dict(sd, strict=True)


#################################################################################
#                   Sine/Cosine Positional Embedding Functions                  #
#################################################################################
# https://github.com/facebookresearch/mae/blob/main/util/pos_embed.py

def get_2d_sincos_pos_embed(embed_dim, grid_size):
    """(grid_size**2, embed_dim) fixed 2-D sin-cos embedding."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)                         # (H*W, D)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.
    omega = 1. / 10000 ** omega  # (D/2,)
    pos = pos.reshape(-1)  # (M,)
    out = np.einsum("m,d->md", pos, omega)  # (M, D/2), outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


#################################################################################
#                                   DiT Configs                                  #
#################################################################################
# The paper's configs (Table 1 of Peebles & Xie), plus the embedded demo model shipped in weights/.

SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}
DIT_CONFIGS = {
    f"DiT-{size}/{patch}": dict(depth=d, hidden_size=h, num_heads=n, patch_size=patch)
    for size, (d, h, n) in SIZES.items() for patch in (2, 4, 8)
}
DIT_CONFIGS["DiT-Demo/2"] = dict(depth=6, hidden_size=256, num_heads=4, patch_size=2, input_size=16,
                                 num_classes=10)


def config_for(name, image_size=256, **overrides):
    """DiTConfig for a named config at a given image size (latent = image / 8)."""
    if name not in DIT_CONFIGS:
        raise KeyError(f"unknown DiT config {name!r}; choose one of {sorted(DIT_CONFIGS)}")
    fields = {"input_size": image_size // 8, **DIT_CONFIGS[name], **overrides}
    return DiTConfig(**fields)
