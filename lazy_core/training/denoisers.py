"""Denoisers: what gate training and calibration need of a model, whatever conditions it.

A denoiser names the module whose `blocks` the proxies stand in for, runs the model's forward, draws
conditions and guides a sampler. Two kinds: class labels (DiT: cond and null rows share one call, as DiT's
forward_with_cfg does) and text contexts (PixArt: each prompt and the negative run as calls of their own,
since contexts of other token counts cannot share a batch; ComfyUI splits them the same way). lazy_core
imports nothing from a host, so a host hands in the forward of a context model.
"""

import torch

from ..models.diffusion import label_guidance
from ..models.dit import DiT


class LabelDenoiser:
    """A class-conditional DiT: a condition is a class label per row; the null class drives guidance."""

    def __init__(self, model: DiT, labels=None, forward=None):
        """forward(x, t, y): the model's output channels; default the family's forward (a DyDiT's dynamic
        one at its trained threshold)."""
        c = model.config
        self.model = model
        self._forward = forward or (lambda x, t, y: model.family.forward(model, x, t, y))
        self.latent = (c.in_channels, c.input_size, c.input_size)
        self.tokens = c.tokens
        self.null = c.num_classes
        self.labels = torch.arange(c.num_classes) if labels is None else torch.as_tensor(labels).long()
        self.device = model.x_embedder.proj.weight.device

    def forward(self, x, t, y, stream=None):
        """All output channels (eps and learned sigma) in float32 on the model's device."""
        w = self.model.x_embedder.proj.weight
        return self._forward(x.to(w.device, w.dtype), t.to(w.device), y.to(w.device)).float()

    def draw(self, rows, generator):
        """A condition for `rows` sampled rows: a label per row."""
        return self.labels[torch.randint(0, len(self.labels), (rows,), generator=generator)]

    def calls_per_step(self, rows, cfg_scale):
        """Model calls of one guided evaluation of `rows` images: cond and uncond go in one batch."""
        return 1

    def eps_fn(self, forward, cond, cfg_scale):
        return label_guidance(forward, cond.to(self.device), cfg_scale, self.null)

    def run_streams(self, cfg_scale):
        """How a LazyRun splits each call: [cond; uncond] as two streams, as ComfyUI batches them."""
        return None if cfg_scale == 1.0 else ("positive", "negative")

    def row_images(self, cond, cfg_scale):
        """Per model call of eps_fn, the image each row belongs to: one call of [cond; uncond]."""
        n = len(cond)
        return [torch.arange(n).repeat(1 if cfg_scale == 1.0 else 2)]

    def training_batch(self, conds, batch, null_prob, generator):
        """(pool rows, condition) of a training batch: rows of any label, each dropped to null with
        probability null_prob, so uncond rows get trained gates too."""
        idx = torch.randint(0, len(conds), (batch,), generator=generator)
        y = torch.where(torch.rand(batch, generator=generator) < null_prob, self.null, conds[idx])
        return idx, y


class ContextDenoiser:
    """A text-conditioned model (PixArt): a condition is a prompt index per row, into `contexts`."""

    def __init__(self, model, forward, contexts, negative, latent):
        """model: the module holding `blocks`; forward(x, t, context (rows, L, C)) -> output channels;
        contexts: prompt contexts (1, L_i, C); negative: the uncond context (1, L, C); latent: (C, H, W)."""
        if not contexts:
            raise ValueError("gate training on a text-conditioned model needs at least one prompt")
        self.model = model
        self._forward = forward
        self.contexts = list(contexts)
        self.negative = negative
        self.latent = tuple(latent)
        patch = model.x_embedder.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.tokens = (self.latent[1] // patch) * (self.latent[2] // patch)
        self.device = next(model.parameters()).device

    def forward(self, x, t, context, stream=None):
        return self._forward(x.to(self.device), t.to(self.device), context.to(self.device)).float()

    def draw(self, rows, generator):
        """A prompt index per row, every prompt as often as the rows allow (in a random order), so each one
        is measured and a guided evaluation's calls are known before it runs (calls_per_step)."""
        return (torch.arange(rows) % len(self.contexts))[torch.randperm(rows, generator=generator)]

    def calls_per_step(self, rows, cfg_scale):
        """Model calls of one guided evaluation of `rows` drawn images: one per prompt drawn (each has its
        own token count), one for the negative."""
        return min(rows, len(self.contexts)) + (cfg_scale != 1.0)

    def eps_fn(self, forward, cond, cfg_scale):
        """Guided eps: one call per prompt present, one for the negative (each its own stream)."""
        def eps_fn(x, t):
            channels = x.shape[1]
            eps_c = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            for p in cond.unique().tolist():
                rows = (cond == p).nonzero().squeeze(1).to(x.device)
                ctx = self.contexts[p].expand(len(rows), -1, -1)
                eps_c[rows] = forward(x[rows], t[rows], ctx, stream=f"prompt {p}")[:, :channels].to(x.device)
            if cfg_scale == 1.0:
                return eps_c
            eps_u = forward(x, t, self.negative.expand(len(x), -1, -1), stream="negative")[:, :channels].to(x.device)
            return eps_u + cfg_scale * (eps_c - eps_u)
        return eps_fn

    def run_streams(self, cfg_scale):
        """Calls name their own streams (a prompt's, the negative's)."""
        return None

    def row_images(self, cond, cfg_scale):
        """Per model call of eps_fn, the image each row belongs to: a call per prompt, then the negative."""
        calls = [(cond == p).nonzero().squeeze(1) for p in cond.unique().tolist()]
        return calls + ([] if cfg_scale == 1.0 else [torch.arange(len(cond))])

    def training_batch(self, conds, batch, null_prob, generator):
        """(pool rows, context) of a training batch: one context for all rows (its token count is the
        batch's), the negative with probability null_prob, else one prompt with rows of its trajectories."""
        if float(torch.rand(1, generator=generator)) < null_prob:
            idx = torch.randint(0, len(conds), (batch,), generator=generator)
            return idx, self.negative.expand(batch, -1, -1)
        p = int(conds[torch.randint(0, len(conds), (1,), generator=generator)])
        own = (conds == p).nonzero().squeeze(1)
        idx = own[torch.randint(0, len(own), (batch,), generator=generator)]
        return idx, self.contexts[p].expand(batch, -1, -1)


class Counted:
    """`forward` that counts its calls and reports each to on_progress(done, total): a progress bar over
    model calls, whichever loop makes them."""

    def __init__(self, forward, total, on_progress=None):
        self.forward, self.total, self.on_progress = forward, total, on_progress
        self.done = 0

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
        return out


def as_denoiser(model):
    """A denoiser for `model`: itself if it is one, a LabelDenoiser for a DiT; else a clear error."""
    if hasattr(model, "training_batch"):
        return model
    if isinstance(model, DiT):
        return LabelDenoiser(model)
    raise TypeError(f"gate training needs a DiT or a ContextDenoiser around a text-conditioned model; got "
                    f"{type(model).__name__}")
