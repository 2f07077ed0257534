"""Host syncs of the engine, counted per model call on the demo model with the shipped gates.

A sync is any read of device data by the host: aten ops that force one (`_local_scalar_dense` behind
.item()/float()/bool(), `nonzero`, `is_nonzero`, `equal`) and copies from a device to the CPU, seen by a
torch dispatch mode, plus the engine's own counted reads (Call.host, which on a CPU-only machine do not
dispatch). The plain model's own syncs are measured the same way and subtracted."""

import os

import pytest
import torch
from lazydit.lazy_core.engine.cache import CacheOptions, RunState
from lazydit.lazy_core.engine.gates import GateBank
from lazydit.lazy_core.engine.policies import Fora, ForcedRatio, LearnedGates, RandomLazy
from lazydit.lazy_core.models.checkpoint import load_model
from lazydit.lazy_core.models.diffusion import space_timesteps
from torch.utils._python_dispatch import TorchDispatchMode

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
SYNC_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "item"}


class SyncCounter(TorchDispatchMode):
    """Counts aten ops that make the host wait for the device."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        out = func(*args, **kwargs)
        to_host = name in ("_to_copy", "copy_") and isinstance(out, torch.Tensor) and out.device.type == "cpu" \
            and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
        if name in SYNC_OPS or to_host:
            self.count += 1
            self.ops.append(name)
        return out


@pytest.fixture(scope="module")
def demo():
    return load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))


def count_per_call(model, policy, steps=10, reuse="extrapolate"):
    """(aten-level syncs, engine reads) per call over a guided run of `steps` calls (2 images, cond + uncond
    rows in one batch as ComfyUI lays them out)."""
    ts = space_timesteps(steps)[::-1]
    state = RunState(policy, CacheOptions(reuse=reuse), timesteps=ts) if policy is not None else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, model.in_channels, model.x_embedder.img_size, model.x_embedder.img_size, generator=g)
    y = torch.tensor([1, 7, 10, 10])
    counter = SyncCounter()
    with torch.inference_mode():
        for t in ts:
            tt = torch.full((4,), float(t))
            with counter:
                if state is not None:
                    state.begin_call(["pos", "neg"], ["positive", "negative"], 2, x, tt[:1])
                    handle = state.attach(model)
                try:
                    out = model(x, tt, y)
                finally:
                    if state is not None:
                        handle.detach()
                        state.end_call()
            x = x - 0.1 * out[:, :x.shape[1]]
    report = state.report() if state is not None else {"ratio": 0.0}
    return counter.count / steps, (state.syncs / steps if state else 0.0), report["ratio"], counter.ops


def gates(name):
    return GateBank.load(os.path.join(WEIGHTS, name))


def test_the_plain_model_does_not_sync(demo):
    """The baseline the engine is measured against: DiT's forward itself reads nothing back."""
    aten, _, _, ops = count_per_call(demo, None)
    assert aten == 0, ops


@pytest.mark.parametrize("name", ["dit_demo_fashion_gates.safetensors", "dit_demo_fashion_schedule.safetensors"])
def test_learned_gates_read_the_device_at_most_once_per_call(demo, name):
    """Per-step gates (the shipped learned gates and the schedule): one read per call (the decision, its
    bucket and the timestep together), and no other sync, while being lazy."""
    bank = gates(name)
    aten, reads, ratio, ops = count_per_call(demo, LearnedGates(bank, bank.threshold_for(0.9)))
    assert ratio > 0.2, "the run must actually be lazy"
    assert aten == 0, f"syncs outside Call.host: {ops}"
    assert reads <= 1.0, f"{reads} engine reads per call"
    assert reads >= 0.9 * (1 - 1 / 10), "every call after the first decides"


def test_module_gates_read_once_per_gated_module(demo):
    """Module-granularity gates (the paper's) need each module's decision before it runs: one read per
    gated module at most, and nothing else."""
    bank = gates("dit_demo_fashion_gates_local.safetensors")
    aten, reads, ratio, ops = count_per_call(demo, LearnedGates(bank, bank.threshold_for(0.9)))
    depth = len(demo.blocks)
    assert ratio > 0.1
    assert aten == 0, ops
    assert 1 <= reads <= 2 * depth


@pytest.mark.parametrize("policy", [Fora(2), ForcedRatio(0.5, 6), RandomLazy(0.3)], ids=["fora", "forced", "random"])
@pytest.mark.parametrize("reuse", ["repeat", "extrapolate"])
def test_step_pattern_policies_never_sync(demo, policy, reuse):
    """Policies that depend on the step index only cost the device nothing, extrapolation included."""
    aten, reads, ratio, ops = count_per_call(demo, policy, reuse=reuse)
    assert ratio > 0.1
    assert aten == 0 and reads == 0, ops
