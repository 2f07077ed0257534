"""Sensitivity objective on tiny DiTs: measured costs are the real final-image errors, the plan puts laziness
where it is cheap, the fit learns what the input predicts, and cond/uncond rows decide together."""

import math

import pytest
import torch
from lazydit.lazy_core.engine.cache import CacheOptions, RunState
from lazydit.lazy_core.engine.gates import GateBank, GateInfo
from lazydit.lazy_core.engine.policies import LearnedGates, RandomLazy, StaticMask
from lazydit.lazy_core.engine.run import LazyRun
from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
from lazydit.lazy_core.models.dit import DiT, DiTConfig
from lazydit.lazy_core.training import sensitivity as S

STEPS = 8
CFG = 3.0


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(input_size=8, depth=2, hidden_size=32, num_heads=2, num_classes=10))
    model.initialize_weights(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model():
    return tiny_dit()


@pytest.fixture(scope="module")
def costs(model):
    return S.measure(model, steps=STEPS, images=6, cfg_scale=CFG, seed=3)


@pytest.fixture(scope="module")
def repeat_costs(model):
    return S.measure(model, steps=STEPS, images=6, cfg_scale=CFG, seed=3, reuse="repeat")


def replay(model, costs, policy, reuse=None):
    """Final latents of the measured images under `policy` (same labels and noise as `measure`)."""
    from lazydit.lazy_core.training.denoisers import LabelDenoiser
    den = LabelDenoiser(model)
    g = torch.Generator().manual_seed(3)
    cond = den.draw(6, g)
    noise = torch.randn(6, *den.latent, generator=g)
    d = GaussianDiffusion()
    if policy is None:
        return d.ddim_sample(model, noise, cond, STEPS, CFG, null_label=10)
    options = CacheOptions(reuse=reuse or costs.reuse)
    with LazyRun(model, policy, options, streams=("positive", "negative"),
                 timesteps=space_timesteps(STEPS)[::-1]) as run:
        out = d.ddim_sample(run, noise, cond, STEPS, CFG, null_label=10)
    return out, run.report


@pytest.mark.parametrize("reuse", ["extrapolate", "repeat"])
def test_step_cost_is_the_real_final_error(model, costs, repeat_costs, reuse):
    """The measured cost of a whole lazy step equals the final-image error of an engine run lazy at that
    step only, for both ways of reusing (within float32 rounding of two DDIM implementations)."""
    costs = costs if reuse == "extrapolate" else repeat_costs
    exact = replay(model, costs, None)
    for k in (1, 2, STEPS // 2, STEPS - 1):
        lazy = torch.zeros(STEPS, 2, 2, dtype=torch.bool)
        lazy[k] = True
        out, report = replay(model, costs, StaticMask(lazy))
        err = (out - exact).pow(2).flatten(1).sum(1)                       # (images,)
        assert torch.allclose(err, costs.step_cost[k], rtol=2e-2, atol=1e-9), \
            f"step {k}: run error {err.tolist()} vs measured {costs.step_cost[k].tolist()}"
        assert report["ratio"] == pytest.approx(1 / STEPS)


def test_extrapolation_needs_two_computed_outputs(costs, repeat_costs):
    """At step 1 only one output was computed, so both ways repeat it; from step 2 on they differ."""
    assert torch.equal(costs.step_cost[1], repeat_costs.step_cost[1])
    assert not torch.allclose(costs.step_cost[2], repeat_costs.step_cost[2])


def test_costs_are_finite_after_the_first_step(model, costs):
    """Step 0 cannot be lazy (inf); every later cost, gain and feature is finite and non-negative."""
    assert costs.cost.shape == (STEPS, 2, 2, 6) and costs.features.shape == (STEPS, 2, 2, 6, 32)
    assert torch.isinf(costs.cost[0]).all()
    assert torch.isfinite(costs.cost[1:]).all() and (costs.cost[1:] >= 0).all()
    assert torch.isfinite(costs.gain[1:]).all() and torch.isfinite(costs.features).all()


def test_plan_is_the_best_non_adjacent_set():
    """Worked by hand: costs [-, 1, 5, 2, 1] at price λ = 3 give weights [2, -2, 1, 2]; the best set of
    non-adjacent lazy steps is {1, 4} (weight 4), where greedy thresholding would take {1, 3} (weight 3)."""
    ts = [800, 600, 400, 200, 0]
    info = GateInfo("dit", 1, 4, sorted(ts), score="log-cost")
    prior = torch.tensor([1.0, 2.0, 5.0, 1.0, 1.0]).log()                # ascending timesteps 0..800
    prior = prior.view(1, 1, 5).expand(1, 2, 5).contiguous()
    bank = GateBank(info, bias=prior, prior=prior)
    policy = LearnedGates(bank, math.log(3.0))
    RunState(policy, timesteps=ts)
    limits = policy.schedule[1][:, 0, 0].exp()
    lazy = [k for k in range(1, 5) if float(bank.prior[0, 0, 4 - k].exp()) <= float(limits[k]) + 1e-6]
    assert lazy == [1, 4], f"lazy steps {lazy}, limits {limits.tolist()}"


def test_schedule_puts_laziness_where_it_is_cheap(model, costs):
    """At a third of the steps lazy, the planned schedule's final error is below that of every random
    non-adjacent set of the same size, and its lazy steps are the cheaper ones."""
    bank = S.schedule_bank(model, costs, buckets=STEPS, level="step")
    exact = replay(model, costs, None)
    mean_cost = costs.step_cost.mean(1)
    for lam in sorted(mean_cost[1:].tolist()):
        out, report = replay(model, costs, LearnedGates(bank, math.log(lam * 1.0001)))
        if report["ratio"] >= 0.25:
            break
    lazy_steps = (report["streams"][0]["ratio_map"][0, 0] > 0).nonzero().squeeze(1).tolist()
    planned = float((out - exact).pow(2).mean())
    chosen = mean_cost[lazy_steps].mean()
    others = [k for k in range(1, STEPS) if k not in lazy_steps]
    assert chosen < mean_cost[others].mean(), f"lazy at {lazy_steps}: mean cost {chosen} vs others"
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        pick = []
        for k in torch.randperm(STEPS - 1, generator=g).add(1).tolist():
            if len(pick) < len(lazy_steps) and all(abs(k - j) > 1 for j in pick):
                pick.append(k)
        mask = torch.zeros(STEPS, 2, 2, dtype=torch.bool)
        mask[pick] = True
        err = float((replay(model, costs, StaticMask(mask))[0] - exact).pow(2).mean())
        assert planned <= err * 1.0001, f"plan {lazy_steps} error {planned:.3g} > random {sorted(pick)} {err:.3g}"


def test_fit_learns_what_the_input_predicts(model, costs):
    """Where each image's log cost is a linear function of its gate input plus noise, the ridge fit beats
    the position-only schedule on held-out images; where it is pure noise, the input term is dropped."""
    g = torch.Generator().manual_seed(1)
    f = torch.randn(STEPS, 2, 2, 40, 32, generator=g)
    direction = torch.randn(32, generator=g)
    logc = (f @ direction) * 0.5 + 0.1 * torch.randn(STEPS, 2, 2, 40, generator=g) - 3
    for signal, expect_input in ((logc, True), (torch.randn(STEPS, 2, 2, 40, generator=g) - 3, False)):
        synth = S.Costs(costs.timesteps, signal.exp(), f, torch.ones(STEPS, 40))
        synth.cost[0] = float("inf")
        bank, fit = S.fit_gates(model, synth, buckets=STEPS, level="module")
        r2 = sum(fit["r2_holdout"]) / 4
        if expect_input:
            assert r2 > 0.8, f"held-out R^2 {fit['r2_holdout']}"
            cos = torch.nn.functional.cosine_similarity(bank.weight[0, 0, 0], direction, dim=0)
            assert cos > 0.9, f"learned direction cosine {cos:.3f}"
        else:
            assert bank.static, f"noise must not give input weights (R^2 {fit['r2_holdout']})"


def test_cond_and_uncond_rows_decide_together(model):
    """Learned log-cost gates give the cond and uncond row of each image the same decision."""
    info = GateInfo("dit", 2, 32, space_timesteps(STEPS), score="log-cost")
    g = torch.Generator().manual_seed(2)
    bank = GateBank(info, torch.randn(2, 2, STEPS, 32, generator=g), bias=torch.full((2, 2, STEPS), -1.0))
    y = torch.tensor([1, 2, 3, 4])
    noise = torch.randn(4, 4, 8, 8, generator=g)
    with LazyRun(model, LearnedGates(bank, -1.0), streams=("positive", "negative")) as run:
        GaussianDiffusion().ddim_sample(run, noise, y, STEPS, CFG, null_label=10)
    pos, neg = run.state.stats()
    assert pos["label"] == "positive" and neg["label"] == "negative"
    assert torch.equal(pos["lazy"], neg["lazy"]) and pos["lazy"].sum() > 0


def test_random_and_static_baselines():
    """RandomLazy meets its ratio over a long run; StaticMask is lazy exactly where its mask says."""
    model = tiny_dit(1)
    y = torch.arange(8)
    noise = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with LazyRun(model, RandomLazy(0.3, seed=1), streams=("positive", "negative")) as run:
        GaussianDiffusion().ddim_sample(run, noise, y, 40, CFG, null_label=10)
    assert run.report["ratio"] == pytest.approx(0.3, abs=0.04)
    mask = torch.zeros(STEPS, 2, 2, dtype=torch.bool)
    mask[3, 1, 0] = mask[5, 0, 1] = True
    with LazyRun(model, StaticMask(mask), streams=("positive", "negative")) as run:
        GaussianDiffusion().ddim_sample(run, noise, y, STEPS, CFG, null_label=10)
    lazy = run.state.stats()[0]["lazy"]                                     # (steps, depth, 2) lazy rows
    assert torch.equal(lazy > 0, mask) and int(lazy.max()) == 8


def test_slider_spans_the_calibrated_range_evenly():
    """threshold_for inverts the calibration table: laziness L asks for L times the largest lazy ratio."""
    info = GateInfo("dit", 1, 4, [0, 999], calibration=[[0.1, 0.1], [0.5, 0.3], [1.0, 0.5]])
    bank = GateBank(info)
    assert bank.threshold_for(0.5) == pytest.approx(0.1 + 0.4 * 0.15 / 0.2)
    assert bank.expected_ratio(bank.threshold_for(0.5)) == pytest.approx(0.25)
    assert bank.threshold_for(1.0) == 1.0 and bank.threshold_for(0.0) == 0.0
    cost = GateBank(GateInfo("dit", 1, 4, [0, 999], score="log-cost",
                             calibration=[[-9.0, 0.0], [-5.0, 0.2], [-1.0, 0.5]]))
    assert cost.threshold_for(0.2) == pytest.approx(-9.0 + 4.0 * 0.1 / 0.2)
    assert cost.threshold_for(1.0) == -1.0


def test_gate_file_keeps_bias_prior_and_score(tmp_path, model, costs):
    """A log-cost bank saves and loads its bias, prior, weights and score kind unchanged."""
    bank, _ = S.fit_gates(model, costs, buckets=STEPS)
    path = tmp_path / "g.safetensors"
    bank.save(path)
    back = GateBank.load(path)
    assert back.info.score == "log-cost"
    for name in ("weight", "bias", "prior"):
        assert torch.equal(getattr(back, name), getattr(bank, name)), name
