"""The trajectory correction (lazy_core/engine/correct.py): the hand-worked formula, no change without lazy
steps, a real gain on the demo model's DDIM runs, and in ComfyUI: on for KSampler's Euler, off elsewhere."""

import math
import os

import pytest
import torch
from lazydit.lazy_core.demo.metrics import psnr
from lazydit.lazy_core.engine.cache import CacheOptions
from lazydit.lazy_core.engine.correct import Correction
from lazydit.lazy_core.engine.policies import Fora
from lazydit.lazy_core.engine.run import LazyRun
from lazydit.lazy_core.models.checkpoint import load_model
from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


class Stream:
    def __init__(self):
        self.steps = 0


def test_correction_is_the_hand_worked_one_and_only_after_a_chain():
    sigmas, times = [4.0, 3.0, 2.0, 1.0, 0.0], [900.0, 600.0, 300.0, 100.0]
    fix = Correction(sigmas, times)
    s = Stream()
    segments = [(s, 0, 2)]
    d = [torch.full((2, 3), v) for v in (1.0, 5.0, 2.0, 7.0)]
    assert fix(segments, [True, True], d[0]) is None               # step 0: both rows compute
    s.steps = 1
    assert fix(segments, [False, True], d[1]) is None              # row 0 lazy, row 1 computes: nothing to fold
    s.steps = 2
    out = fix(segments, [True, True], d[2])                        # row 0 ends a chain of one lazy step
    line = 1.0 + (600 - 900) / (300 - 900) * (2.0 - 1.0)           # 1.5: d at step 1 from steps 0 and 2
    delta = (2.0 - 3.0) * (5.0 - line)                             # how far the lazy step moved x
    want = 2.0 - delta / ((2 - 0) * (1.0 - 2.0))
    assert torch.allclose(out[0], torch.full((3,), want)) and want != 2.0
    assert torch.equal(out[1], d[2][1])                            # row 1 never was lazy
    s.steps = 3
    assert fix(segments, [True, True], d[3]) is None               # right after a full step: nothing to fold


@pytest.fixture(scope="module")
def demo_runs():
    """The demo model's exact DDIM 20 images, and FORA N=3 (line forecast) without and with the correction."""
    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    g = torch.Generator().manual_seed(5)
    y = torch.arange(10)
    noise = torch.randn(10, 4, 16, 16, generator=g)
    diffusion = GaussianDiffusion()
    steps = 20
    exact = diffusion.ddim_sample(model, noise, y, steps, 4.0, null_label=10)
    out = {}
    for correct in (False, True):
        options = CacheOptions(reuse="extrapolate", max_lazy_steps=2, correct=correct)
        with LazyRun(model, Fora(3), options, streams=("positive", "negative"), timesteps=space_timesteps(steps)[::-1],
                     sigmas=diffusion.ddim_sigmas(steps)) as run:
            out[correct] = diffusion.ddim_sample(run, noise, y, steps, 4.0, null_label=10)
        assert run.report["ratio"] == pytest.approx(13 / 20)
    return exact, out


def test_correction_gains_on_the_demo_model(demo_runs):
    """Measured: 32.7 dB without, 35.5 dB with the correction (20 images); here 10 images, at least 1.5 dB."""
    exact, out = demo_runs
    plain, fixed = (psnr(out[c].clamp(-1, 1), exact.clamp(-1, 1), data_range=2.0) for c in (False, True))
    print(f"FORA N=3 line, DDIM 20: {plain:.2f} dB without, {fixed:.2f} dB with the correction")
    assert fixed > plain + 1.5 and math.isfinite(fixed)


def test_ddim_sigmas_end_at_zero_and_fall():
    sig = GaussianDiffusion().ddim_sigmas(20)
    assert len(sig) == 21 and sig[-1] == 0.0 and all(a > b for a, b in zip(sig, sig[1:]))


@pytest.mark.usefixtures("comfy")
def test_comfy_euler_corrects_and_other_samplers_do_not():
    """Apply Lazy Gates corrects KSampler's euler runs (closer to the exact image than the same gates without
    the correction) and leaves a second-order sampler's run exactly as without it."""
    import dataclasses

    import nodes as comfy_nodes
    from lazydit.nodes.labels import ClassLabel, NullLabel
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates, LoadLazyGates
    from lazydit.nodes.loaders import LoadDiT

    model = LoadDiT.execute("dit_demo_fashion.safetensors (built in)", "auto").args[0]
    gates = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args[0]
    pos = ClassLabel.execute(model, "0-9").args[0]
    neg = NullLabel.execute(model).args[0]
    latent = {"samples": torch.zeros(10, 4, 16, 16)}

    def run(m, sampler):
        (s,) = comfy_nodes.common_ksampler(m, 3, 20, 4.0, sampler, "normal", pos, neg, latent)
        return s["samples"]
    lazy = ApplyLazyGates.execute(model, gates, 0.8, 4, "auto", "auto").args[0]
    session = session_of(lazy)
    assert session.options.correct
    results = {}
    for sampler in ("euler", "dpmpp_2m"):
        exact = run(model, sampler)
        fixed = run(lazy, sampler)
        assert session.report["ratio"] > 0.5
        session.options = dataclasses.replace(session.options, correct=False)
        try:
            uncorrected = run(lazy, sampler)
        finally:
            session.options = dataclasses.replace(session.options, correct=True)
        results[sampler] = (psnr(fixed, exact, data_range=2.0), psnr(uncorrected, exact, data_range=2.0),
                            torch.equal(fixed, uncorrected))
    print(results)
    euler, other = results["euler"], results["dpmpp_2m"]
    assert euler[0] > euler[1] + 1.0 and not euler[2]
    assert other[2]


@pytest.mark.usefixtures("comfy")
def test_apply_refuses_a_learned_forecaster_the_gates_lack_and_runs_one_they_carry(tmp_path):
    """reuse 'learned' with gates that carry no fitted forecaster is refused before any sampling, naming the
    fitting command; the same gates with coefficients run."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import nodes as comfy_nodes
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.nodes.labels import ClassLabel, NullLabel
    from lazydit.nodes.lazy_nodes import ApplyLazyGates, LoadLazyGates
    from lazydit.nodes.loaders import LoadDiT

    model = LoadDiT.execute("dit_demo_fashion.safetensors (built in)", "auto").args[0]
    gates = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args[0]
    with pytest.raises(ValueError, match="lazy_core.training.forecaster"):
        ApplyLazyGates.execute(model, gates, 0.5, 4, "auto", "auto", "learned")
    bank = GateBank.load(os.path.join(WEIGHTS, "dit_demo_fashion_gates.safetensors"))
    bank.forecast = torch.tensor([1.0, 0.0]).expand(bank.info.depth, 2, 4, 2).clone()
    fitted = comfy.model_patcher.ModelPatcher(bank, load_device=mm.get_torch_device(),
                                              offload_device=mm.unet_offload_device())
    pos, neg = ClassLabel.execute(model, "Bag").args[0], NullLabel.execute(model).args[0]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    runs = [ApplyLazyGates.execute(model, g, 0.8, 4, "auto", "auto", r).args[0]
            for g, r in ((fitted, "learned"), (gates, "extrapolate"))]
    learned, line = (comfy_nodes.common_ksampler(m, 1, 20, 4.0, "euler", "normal", pos, neg, latent)[0]["samples"]
                     for m in runs)
    assert torch.allclose(learned, line, atol=1e-4)             # (1, 0) at every position is the line
