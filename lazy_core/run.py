"""Lazy sampling outside ComfyUI (training, benchmarks, the CLI): one run, one stream, a row per sample."""

from .dit import DiT
from .engine import CacheOptions, RunState


class LazyRun:
    """Context manager: `model` runs lazily under `policy` until exit, which restores it and frees the cache.

        with LazyRun(model, policy) as lazy:
            x = diffusion.ddim_sample(lazy, noise, y, steps=50, ...)
        print(lazy.report["text"])
    """

    def __init__(self, model, policy, options=CacheOptions()):
        self.model = model
        self.policy = policy
        self.options = options
        self.state = None
        self.report = None

    def __enter__(self):
        self.state = RunState(self.policy, self.options)
        self._handle = self.state.attach(self.model)
        return self

    def __call__(self, x, t, y):
        self.state.begin_call(["batch"], ["batch"], x.shape[0], x, float(t[0]))
        try:
            # The base forward (all channels) also for host subclasses whose own forward serves the host.
            return DiT.forward(self.model, x, t, y) if isinstance(self.model, DiT) else self.model(x, t, y)
        finally:
            self.state.end_call()

    def __exit__(self, *exc):
        self._handle.detach()
        self.state.finish()
        self.report = self.state.report()
        return False
