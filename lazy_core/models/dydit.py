"""DyDiT (Zhao et al., ICLR 2025, "Dynamic Diffusion Transformer"): DiT whose blocks use, per timestep, only
some attention heads and MLP channel groups (timestep-wise dynamic width, TDW), and let each token skip the
MLP (spatial-wise dynamic token, SDT).

The blocks are DiT's (`dit.py`), with three routers added under the official checkpoint's names:
`attn_rate.router` and `mlp_rate.router` read the timestep embedding and give one logit per head / channel
group but the first, which always computes; `token_selection.mlp_head` gives one logit per token. A unit is
on where its logit is above the threshold's logit (sigmoid > 0.5 in the paper).

Three ways to run the same weights (`route=`):
  "dense"   every head, channel and token (the paper's "complete model");
  "masked"  the official equations: heads and channel groups multiplied by their 0/1 masks, token MLP outputs
            by the token mask. Training uses it with Gumbel noise and straight-through hard masks.
  "sliced"  inference for real speed: because TDW depends on t only, each block's active heads and groups are
            read once per call (one host read for all blocks) and the qkv/proj and fc1/fc2 weights are sliced
            to them (a small cache per block, so consecutive steps with the same widths reuse the slices);
            the MLP runs on the gathered active tokens only and scatters back.

Under a lazy cache (the engine's module proxies) the modules keep their per-row shapes: attention maps
(rows, T, D) to (rows, T, D) at the step's heads, and the MLP takes the whole modulated (rows, T, D) with
the token router's (rows, T) mask and returns (rows, T, D), zero where a token skipped it. So a module's
output can be cached and reused at a later step like a dense DiT's, and each module counts what it really
computed (`Tally`), so a lazy module counts none.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dit import TORCH_OPS, Attention, DiT, DiTBlock, Mlp, modulate

ROUTES = ("sliced", "masked", "dense")
ROUTER_KEYS = ("attn_rate.router.weight", "mlp_rate.router.weight", "token_selection.mlp_head.0.weight")
# What the ComfyUI cache nodes answer for a DyDiT model: only a schedule measured on the DyDiT fits it.
LAZY_REFUSAL = ("this is a DyDiT model: it already skips heads, MLP channels and tokens at every step, so "
                "FORA, TaylorSeer, Δ-DiT and trained gates do not combine with it. Give Apply Lazy Gates a "
                "LazyDiT Sensitivity Schedule measured on this DyDiT model, sample it alone, or load the dense "
                "DiT for the other caches")
DENSE_GATES_REFUSAL = ("these gates were made for the dense DiT, and this is a DyDiT model: its heads, MLP "
                       "channels and tokens change with every step, so the dense model's gates do not combine "
                       "with it. Connect a LazyDiT Sensitivity Schedule measured on this DyDiT model, or load "
                       "the dense DiT for these gates")
SLICE_CACHE = 2          # sliced weight sets kept per module: adjacent steps mostly share their widths


def is_dydit(sd):
    """Whether a state dict has DyDiT's routers (the official layout)."""
    return any(k.endswith(ROUTER_KEYS[0]) for k in sd)


def hard_gate(logits, threshold=0.5, tau=5.0, noise=False):
    """0/1 decisions from logits. With noise (training) the paper's Gumbel-sigmoid: sigmoid((logit + g1 - g2)
    / tau) thresholded, with the soft value's gradient passed straight through."""
    if not noise:
        return (logits > math.log(threshold / (1 - threshold))).to(logits.dtype)
    g = -torch.empty_like(logits).exponential_().log() + torch.empty_like(logits).exponential_().log()
    soft = torch.sigmoid((logits + g) / tau)
    return (soft > threshold).to(logits.dtype) - soft.detach() + soft


class WidthRouter(nn.Module):
    """TDW: timestep embedding -> one logit per head (or channel group) but the first, which always computes."""

    def __init__(self, hidden_size, groups, ops=TORCH_OPS, **factory):
        super().__init__()
        self.router = ops.Linear(hidden_size, groups - 1, **factory)

    def forward(self, t_emb):
        return self.router(t_emb)                                     # (N, groups - 1)


class TokenRouter(nn.Module):
    """SDT: one logit per token, from the residual stream after attention."""

    def __init__(self, hidden_size, ops=TORCH_OPS, **factory):
        super().__init__()
        self.mlp_head = nn.Sequential(ops.Linear(hidden_size, hidden_size // 16, **factory), nn.ReLU(),
                                      ops.Linear(hidden_size // 16, 1, **factory))

    def forward(self, x):
        return self.mlp_head(x).squeeze(-1)                           # (N, T)


def with_first(mask):
    """Prepends the always-on first head / group to a router's (N, groups - 1) mask."""
    return torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)


class SliceCache:
    """Weights sliced to a set of active units, keyed by the set and by the source weights' identity and
    version, so a patched, moved or re-cast weight is never served stale."""

    def __init__(self):
        self.entries = OrderedDict()

    def get(self, units, make, *sources):
        # Inference tensors have no version counter; hosts that patch weights (LoRA) swap in new tensors.
        key = (units, *((w.data_ptr(), 0 if w.is_inference() else w._version, w.device, w.dtype) for w in sources))
        hit = self.entries.get(key)
        if hit is None:
            hit = self.entries[key] = make()
            while len(self.entries) > SLICE_CACHE:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
        return hit


def _weights(linear, x):
    """A linear layer's weight and bias in x's dtype and device (hosts may store them cast or offloaded)."""
    bias = linear.bias.to(x) if linear.bias is not None else None
    return linear.weight.to(x), bias


class DyAttention(Attention):
    """DiT attention whose heads can be masked (official equations) or sliced away (inference)."""

    def __init__(self, dim, num_heads, ops=TORCH_OPS, **factory):
        super().__init__(dim, num_heads, ops=ops, **factory)
        self.slices = SliceCache()

    def forward(self, x, heads=None, tally=None):
        if heads is None:
            return super().forward(x)
        if tally is not None:
            tally.attention += x.shape[0]
        if isinstance(heads, torch.Tensor):
            return self.masked(x, heads)
        return self.sliced(x, heads)

    def masked(self, x, mask):
        """mask: (B, H) 0/1 per head, applied to each head's output before the output projection."""
        B, N, C = x.shape
        H = self.num_heads
        qkv = self.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(*qkv.unbind(0))          # (B, H, N, C/H)
        out = out * mask.to(out.dtype)[:, :, None, None]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def sliced(self, x, heads):
        """heads: tuple of active head indices; only they are projected, attended and read back."""
        B, N, C = x.shape
        hd = C // self.num_heads

        def make():
            w_qkv, b_qkv = _weights(self.qkv, x)
            w_proj, b_proj = _weights(self.proj, x)
            cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads]).to(x.device)
            rows = torch.cat([cols + i * C for i in range(3)])
            return (w_qkv.index_select(0, rows), None if b_qkv is None else b_qkv.index_select(0, rows),
                    w_proj.index_select(1, cols), b_proj)

        w_qkv, b_qkv, w_proj, b_proj = self.slices.get(heads, make, self.qkv.weight, self.proj.weight)
        qkv = F.linear(x, w_qkv, b_qkv).reshape(B, N, 3, len(heads), hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(*qkv.unbind(0))          # (B, H', N, hd)
        return F.linear(out.transpose(1, 2).reshape(B, N, len(heads) * hd), w_proj, b_proj)


class DyMlp(Mlp):
    """DiT MLP whose hidden channels, in as many groups as the block has heads, can be masked or sliced."""

    def __init__(self, dim, hidden, ops=TORCH_OPS, **factory):
        super().__init__(dim, hidden, ops=ops, **factory)
        self.slices = SliceCache()

    def forward(self, x, groups=None, count=None, keep=None, tally=None):
        """keep: (B, T) bool, the tokens that run (SDT), x then (B, T, C); None: every token."""
        if groups is None:
            return super().forward(x)
        if tally is not None:
            tally.mlp += x.shape[0]
            if keep is None:
                tally.tokens += x.shape[0] * x.shape[1]
        if isinstance(groups, torch.Tensor):
            return self.masked(x, groups)
        if keep is None:
            return self.sliced(x, groups, count)
        return self.tokens(x, groups, count, keep, tally)

    def tokens(self, x, groups, count, keep, tally):
        """The sliced MLP on the kept tokens only, scattered back into zeros: (B, T, C)."""
        B, T, C = x.shape
        idx = keep.flatten().nonzero().squeeze(1)          # the one host sync of SDT: the gather needs its size
        if tally is not None:
            tally.tokens += idx.numel()
        out = self.sliced(x.reshape(B * T, C).index_select(0, idx), groups, count)
        return out.new_zeros(B * T, out.shape[-1]).index_copy_(0, idx, out).reshape(B, T, -1)

    def masked(self, x, mask):
        """mask: (B, G) 0/1 per channel group, applied to fc1's output before the activation (GELU(0) = 0)."""
        h = self.fc1(x)
        size = h.shape[-1] // mask.shape[1]
        h = h * mask.to(h.dtype).repeat_interleave(size, dim=1)[:, None, :]
        return self.fc2(F.gelu(h, approximate="tanh"))

    def sliced(self, x, groups, count):
        """groups: tuple of active group indices out of `count`."""
        def make():
            w1, b1 = _weights(self.fc1, x)
            w2, b2 = _weights(self.fc2, x)
            size = w1.shape[0] // count
            idx = torch.cat([torch.arange(g * size, (g + 1) * size) for g in groups]).to(x.device)
            return w1.index_select(0, idx), None if b1 is None else b1.index_select(0, idx), w2.index_select(1, idx), b2

        w1, b1, w2, b2 = self.slices.get(groups, make, self.fc1.weight, self.fc2.weight)
        return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


@dataclass
class Tally:
    """What one block's modules computed in one call: rows through attention, rows through the MLP and
    tokens through the MLP (over all rows). The modules count themselves, so where a lazy cache stands
    in for a module, nothing is counted."""

    attention: int = 0
    mlp: int = 0
    tokens: int = 0


@dataclass
class BlockRoute:
    """What one block does in one call. Masked: (B, H) and (B, G) mask tensors. Sliced: tuples of active
    heads and groups. `tokens`: whether SDT is on; `threshold` its decision point; `noise` Gumbel (training);
    `tally` receives what the modules computed."""

    heads: object = None
    groups: object = None
    tokens: bool = True
    threshold: float = 0.5
    noise: bool = False
    tally: Tally = None


class DyDiTBlock(DiTBlock):
    """A DiT block with DyDiT's routers; with no route it is exactly DiT's block."""

    attention, feed_forward = DyAttention, DyMlp

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, ops=TORCH_OPS, **factory):
        super().__init__(hidden_size, num_heads, mlp_ratio=mlp_ratio, ops=ops, **factory)
        self.attn_rate = WidthRouter(hidden_size, num_heads, ops=ops, **factory)
        self.mlp_rate = WidthRouter(hidden_size, num_heads, ops=ops, **factory)
        self.token_selection = TokenRouter(hidden_size, ops=ops, **factory)
        self.num_heads = num_heads

    def forward(self, x, c, route=None, record=None):
        if route is None:
            return super().forward(x, c)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), route.heads,
                                                  route.tally)
        if isinstance(route.groups, torch.Tensor):
            return self._masked_mlp(x, route, shift_mlp, scale_mlp, gate_mlp, record)
        return self._sliced_mlp(x, route, shift_mlp, scale_mlp, gate_mlp, record)

    def _masked_mlp(self, x, route, shift, scale, gate, record):
        out = gate.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift, scale), route.groups, tally=route.tally)
        if not route.tokens:
            return x + out
        keep = hard_gate(self.token_selection(x), route.threshold, noise=route.noise)     # (B, T)
        if record is not None:
            record.append(keep)
        return x + keep.unsqueeze(-1) * out

    def _sliced_mlp(self, x, route, shift, scale, gate, record):
        # The MLP sees every token's modulated input and the token mask, and returns zeros where a token
        # skipped it: per-row shapes, so that a lazy cache can keep and reuse its output.
        keep = None
        if route.tokens:
            keep = self.token_selection(x) > math.log(route.threshold / (1 - route.threshold))     # (B, T)
        out = self.mlp(modulate(self.norm2(x), shift, scale), route.groups, self.num_heads, keep, route.tally)
        return x + gate.unsqueeze(1) * out


@dataclass
class Widths:
    """Each block's active heads and channel groups at one call (host tuples), and its timestep."""

    heads: list
    groups: list
    timestep: float


class DyDiT(DiT):
    """DiT with DyDiT's routers; the official checkpoint's keys load strictly."""

    block = DyDiTBlock

    @property
    def family(self):
        return DyDiT

    def initialize_routers(self, seed=None):
        """The official start: every head, group and token on (router biases 15, token bias 35), so that
        fine-tuning begins at the dense model."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for block in self.blocks:
            for router in (block.attn_rate.router, block.mlp_rate.router, *block.token_selection.mlp_head[::2]):
                bound = math.sqrt(6 / (router.in_features + router.out_features))
                with torch.no_grad():
                    router.weight.copy_(torch.rand(router.weight.shape, generator=generator) * 2 * bound - bound)
                    router.bias.zero_()
            nn.init.constant_(block.attn_rate.router.bias, 15.0)
            nn.init.constant_(block.mlp_rate.router.bias, 15.0)
            nn.init.constant_(block.token_selection.mlp_head[2].bias, 35.0)

    def width_masks(self, t_emb, threshold=0.5, noise=False):
        """[(heads (N, H), groups (N, G))] per block, 0/1 with the first head and group always on."""
        return [(with_first(hard_gate(b.attn_rate(t_emb), threshold, noise=noise)),
                 with_first(hard_gate(b.mlp_rate(t_emb), threshold, noise=noise))) for b in self.blocks]

    def plan(self, t_emb, t, threshold=0.5):
        """Widths of one call whose rows share a timestep, read to the host in one transfer; None if the rows'
        timesteps differ (then the masked equations run per row)."""
        cut = math.log(threshold / (1 - threshold))
        logits = torch.stack([torch.stack([b.attn_rate(t_emb[:1])[0], b.mlp_rate(t_emb[:1])[0]]) for b in self.blocks])
        spread = (t.max() - t.min()).reshape(1).to(logits.dtype)
        host = torch.cat([(logits > cut).flatten().to(logits.dtype), spread, t[:1].to(logits.dtype)]).tolist()
        if host[-2] != 0:
            return None
        depth, _, n = logits.shape
        on = [[[0] + [i + 1 for i in range(n) if host[(b * 2 + k) * n + i]] for k in range(2)] for b in range(depth)]
        return Widths([tuple(h) for h, _ in on], [tuple(g) for _, g in on], host[-1])

    def forward(self, x, t, y, route="sliced", tokens=True, threshold=0.5, stats=None, noise=False, masks=None):
        """DiT's forward with DyDiT routing (see the module docstring for `route`). `stats`, a list, receives
        one Call record per call; `masks`, a list, receives the masked route's (heads, groups, token) masks
        for the FLOPs loss."""
        if route not in ROUTES:
            raise ValueError(f"unknown DyDiT route {route!r}; choose one of {ROUTES}")
        if route == "dense":
            return super().forward(x, t, y)
        self.check_size(x)
        tokens_in = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        t_emb = self.t_embedder(t)
        c = t_emb + self.y_embedder(y.long(), self.training)
        widths = self.plan(t_emb, t, threshold) if route == "sliced" else None
        width_masks, kept = None, []
        if widths is None:
            width_masks = self.width_masks(t_emb, threshold, noise)
            routes = [BlockRoute(h, g, tokens, threshold, noise, Tally()) for h, g in width_masks]
        else:
            routes = [BlockRoute(h, g, tokens, threshold, tally=Tally()) for h, g in zip(widths.heads, widths.groups)]
        h = tokens_in
        for block, r in zip(self.blocks, routes):
            h = block(h, c, r, kept)
        if masks is not None and widths is None:
            masks.append((torch.stack([m for m, _ in width_masks], 1), torch.stack([g for _, g in width_masks], 1),
                          torch.stack(kept, 1) if tokens else None))
        if stats is not None:
            stats.append(self._record(widths, width_masks, kept, [r.tally for r in routes], x.shape[0], tokens))
        out = self.final_layer(h, c)
        return self.unpatchify(out)

    def _record(self, widths, width_masks, kept, tallies, rows, tokens):
        T = self.x_embedder.num_patches
        if widths is not None:
            heads, groups = [len(h) for h in widths.heads], [len(g) for g in widths.groups]
            timestep = widths.timestep
            share = [t.tokens / (rows * T) for t in tallies]
        else:                           # per-row widths: mean over rows (rare: rows at different timesteps)
            heads = [float(m.sum(1).mean()) for m, _ in width_masks]
            groups = [float(g.sum(1).mean()) for _, g in width_masks]
            timestep = None
            ran = [t.mlp / rows for t in tallies]
            share = ran if not tokens else [float(k.mean()) * r for k, r in zip(kept, ran)]
        return Call(timestep, rows, heads, groups, share, [t.attention / rows for t in tallies])


@dataclass
class Call:
    """One DyDiT call's widths: per block, active heads and MLP groups (of `num_heads`), the share of
    tokens that ran the MLP and the share of rows that ran attention (under a lazy cache, the rest reused
    an earlier output; None: every row)."""

    timestep: object
    rows: int
    heads: list
    groups: list
    tokens: list
    attention: list = None


def macs(config, heads, groups, tokens, routed=True, attention=1.0):
    """Attention + MLP multiply-accumulates per image of one block, at `heads` active heads, `groups` active
    MLP channel groups (of config.num_heads), a `tokens` share of tokens through the MLP and an `attention`
    share of rows through attention, the routers included if `routed`; dense (every unit on, not routed)
    it is module_macs' count."""
    T, d = config.tokens, config.hidden_size
    hd, H = d // config.num_heads, config.num_heads
    mlp_hidden = int(d * config.mlp_ratio)
    attn = T * d * 3 * heads * hd + 2 * T * T * heads * hd + T * heads * hd * d
    mlp = 2 * (tokens * T) * d * (groups * mlp_hidden // H)
    routers = T * (d * (d // 16) + d // 16) + 2 * d * (H - 1) if routed else 0
    return attn * attention + mlp + routers


def dense_macs(config):
    return macs(config, config.num_heads, config.num_heads, 1.0, routed=False)


def flops_ratio(config, heads_mask, groups_mask, token_mask):
    """The training FLOPs ratio (official loss): per image, attention MACs scale with the active head share,
    MLP MACs with the channel share times the token share; over the dense total. Masks (N, depth, H),
    (N, depth, G), (N, depth, T) or None (every token)."""
    T, d = config.tokens, config.hidden_size
    attn = T * d * (4 * d + 2 * T)
    mlp = 2 * T * d * int(d * config.mlp_ratio)
    token_share = token_mask.mean(2) if token_mask is not None else 1.0
    per_block = heads_mask.mean(2) * attn + groups_mask.mean(2) * token_share * mlp
    return per_block.sum(1) / (heads_mask.shape[1] * (attn + mlp))        # (N,)


def summarize(config, calls):
    """A sampling run's widths from its Call records: calls at the same timestep (a batch split into cond
    and uncond chunks) make one step. Returns shares (heads, MLP channels, MLP tokens) per block and step as
    a (3, depth, steps) tensor, the attention + MLP MACs computed and dense, and a text summary."""
    steps, keys = [], []
    for call in calls:
        if steps and call.timestep is not None and keys[-1] == call.timestep:
            steps[-1].append(call)
        else:
            steps.append([call])
            keys.append(call.timestep)
    H, depth = config.num_heads, config.depth
    shares = torch.zeros(3, depth, len(steps))
    computed = dense = 0.0
    for s, group in enumerate(steps):
        rows = sum(c.rows for c in group)
        for c in group:
            attention = c.attention or [1.0] * depth
            for b in range(depth):
                shares[:, b, s] += torch.tensor([c.heads[b] * attention[b] / H, c.groups[b] / H,
                                                 c.tokens[b]]) * c.rows / rows
                computed += macs(config, c.heads[b], c.groups[b], c.tokens[b], attention=attention[b]) * c.rows
            dense += dense_macs(config) * depth * c.rows
    ratio = computed / dense if dense else 1.0
    mean = shares.mean(dim=(1, 2)).tolist() if len(steps) else [1.0, 1.0, 1.0]
    lines = [f"DyDiT: {len(steps)} steps, attention + MLP at {ratio:.1%} of the dense MACs "
             f"({computed / 1e9:.2f} of {dense / 1e9:.2f} GMACs); heads {mean[0]:.0%}, MLP channels {mean[1]:.0%}, "
             f"MLP tokens {mean[2]:.0%} on average"]
    for b in range(depth):
        h, g, t = shares[:, b].mean(1).tolist() if len(steps) else (1.0, 1.0, 1.0)
        lines.append(f"block {b}: heads {h:.0%}, channels {g:.0%}, tokens {t:.0%}")
    return {"shares": shares, "macs": computed, "dense_macs": dense, "ratio": ratio,
            "timesteps": keys, "text": "\n".join(lines)}


def width_table(model, timesteps, threshold=0.5):
    """Active heads and MLP channel groups per block at each timestep (TDW depends on t alone): what a
    schedule will use before it runs, for the node's info. Returns [(timestep, [heads], [groups])]."""
    out = []
    with torch.no_grad():
        for t in timesteps:
            tt = torch.tensor([float(t)], device=model.pos_embed.device)
            w = model.plan(model.t_embedder(tt), tt, threshold)
            out.append((t, [len(h) for h in w.heads], [len(g) for g in w.groups]))
    return out
