"""Bounded work: what a node may be asked to do at most, and a way to stop it.

ComfyUI's /interrupt only sets a flag; work stops where something checks it. Core samplers check it through
the progress hook once per step, which a node's own loops (gate training, the schedule's trajectories, the
sweep's columns) do not reach. `interruptible` checks it before every forward of the given modules, so a
node stops within one model call."""

import contextlib

import comfy.model_management as mm
import comfy.utils
import torch


@torch.compiler.disable
def _check_interrupt(module, args):
    mm.throw_exception_if_processing_interrupted()


@contextlib.contextmanager
def interruptible(diffusion_model):
    """Within the block, every transformer block of `diffusion_model` checks ComfyUI's interrupt flag before
    it runs (raising InterruptProcessingException if it is set): several checks per model call, however
    the model is called (lazy_core's samplers call DiT.forward directly). The hooks go on the way out."""
    blocks = getattr(diffusion_model, "blocks", None) or [diffusion_model]
    handles = [m.register_forward_pre_hook(_check_interrupt) for m in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class CallBar:
    """One progress bar over a node's phases (training, calibration, ...), counted in model calls.

    Each phase reports its own (done, total); the bar shows their sums, so its total is the calls the node
    makes, planned up front and corrected by each phase's own count once it starts."""

    def __init__(self, *planned):
        self.planned = list(planned)
        self.done = [0] * len(planned)
        self.bar = comfy.utils.ProgressBar(max(1, sum(planned)))

    def phase(self, k):
        def report(done, total):
            self.done[k], self.planned[k] = done, total
            self.bar.update_absolute(sum(self.done), sum(self.planned))
        return report

    @property
    def calls(self):
        return sum(self.done)
