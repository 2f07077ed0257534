"""Lazy sampling outside ComfyUI (training, benchmarks, the CLI): one run, a row per sample."""

import torch

from .cache import CacheOptions, RunState


class LazyRun:
    """Context manager: `model` runs lazily under `policy` until exit, which restores it and frees the cache.

        with LazyRun(model, policy) as lazy:
            x = diffusion.ddim_sample(lazy, noise, y, steps=50, ...)
        print(lazy.report["text"])

    forward(x, t, cond) is what a call runs (default: the model family's forward over all channels, DiT's
    or DyDiT's dynamic one). A call's `stream`
    names whose rows these are; samplers that run cond and uncond rows in separate calls pass distinct
    streams, so each keeps its own cache, as the ComfyUI hook keys them by cond uuid.
    """

    def __init__(self, model, policy, options=CacheOptions(), forward=None, streams=None, timesteps=None,
                 sigmas=None):
        """streams: names that split every call's rows evenly (e.g. ("positive", "negative") for a
        [cond; uncond] batch), laid out as ComfyUI lays out a batched cond and uncond. timesteps: the
        run's schedule, for policies that plan (log-cost gates). sigmas: its sigmas for options.correct
        (a DDIM run: diffusion.ddim_sigmas), whose correction then applies to the first x.shape[1] output
        channels, the eps of a DiT's [eps; variance] output."""
        self.model = model
        self.timesteps = timesteps
        self.sigmas = sigmas
        self.streams = streams
        self.policy = policy
        self.options = options
        # The base forward (all channels), also for host subclasses whose own forward serves the host: the
        # model family's (a DyDiT samples dynamically, as on its own).
        self.forward = forward or (lambda x, t, y: model.family.forward(model, x, t, y))
        self.state = None
        self.report = None

    def __enter__(self):
        self.state = RunState(self.policy, self.options, self.timesteps, self.sigmas)
        self._handle = self.state.attach(self.model)
        return self

    def __call__(self, x, t, cond, stream="batch"):
        keys = list(self.streams) if self.streams else [stream]
        self.state.begin_call(keys, keys, x.shape[0] // len(keys), x, t)
        try:
            out = self.forward(x, t, cond)
            fixed = self.state.correct(out[:, :x.shape[1]].float())
            if fixed is not None:
                out = torch.cat([fixed.to(out.dtype), out[:, x.shape[1]:]], 1)
            return out
        finally:
            self.state.end_call()

    def __exit__(self, *exc):
        self._handle.detach()
        self.state.finish()
        self.report = self.state.report()
        return False
