"""Chains of lazy steps: forecasts from several computed outputs, measured chain costs that are the real
final-image error of an engine run, and a plan that is the best choice of computed steps for a budget."""

import itertools
import math

import pytest
import torch
from lazydit.lazy_core.engine import forecast
from lazydit.lazy_core.engine.cache import CacheOptions
from lazydit.lazy_core.engine.policies import Fora, LearnedGates, StaticMask, chain_costs, chain_plan, plan_share
from lazydit.lazy_core.engine.run import LazyRun
from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
from lazydit.lazy_core.models.dit import DiT, DiTConfig
from lazydit.lazy_core.training import sensitivity as S
from lazydit.lazy_core.training.denoisers import LabelDenoiser

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


@pytest.mark.parametrize("order", [1, 2, 3])
def test_extrapolation_is_exact_on_polynomials_of_its_order(order):
    """Newton/Lagrange weights reproduce any polynomial of the forecast's order from order + 1 outputs."""
    times = torch.tensor([[700.0, 750.0, 800.0, 900.0][:order + 1]])
    now = torch.tensor(620.0)
    coef = torch.randn(order + 1, dtype=torch.float64)

    def p(t):
        return sum(float(c) * (t / 1000) ** i for i, c in enumerate(coef))
    w = forecast.weights("extrapolate", order, times, now)
    outs = [torch.full((1, 1, 1), p(float(t))) for t in times[0]]
    got = forecast.combine(outs[0], outs[1:], w)
    assert float(got) == pytest.approx(p(620.0), rel=1e-4, abs=1e-5)


def test_taylor_matches_the_published_series_and_lowers_its_order():
    """TaylorSeer: f + x Δ + x² Δ² / 2 with backward differences at even spacing; order 1 is the line; a row
    with fewer outputs uses the ones it has; two outputs at one timestep repeat the last."""
    times = torch.tensor([[600.0, 700.0, 800.0], [600.0, 700.0, float("nan")], [600.0, float("nan"), float("nan")],
                          [600.0, 600.0, 700.0]])
    now = torch.tensor(550.0)                                   # x = half a spacing ahead
    w = forecast.weights("taylor", 2, times, now)
    x = 0.5
    assert w[0].tolist() == pytest.approx([1 + x + x * x / 2, -x - x * x, x * x / 2])
    assert w[1].tolist() == pytest.approx([1 + x, -x, 0.0])
    line = forecast.weights("extrapolate", 1, times[1:2, :2], now)
    assert w[1, :2].tolist() == pytest.approx(line[0].tolist())
    assert w[2].tolist() == [1.0, 0.0, 0.0] and w[3].tolist() == [1.0, 0.0, 0.0]


def test_plan_is_the_best_choice_for_a_hand_worked_case():
    """Chain costs (not additive) for 5 steps; the plan's decisions reach the brute-force optimum of
    lazy steps x λ - the chains' costs, and respect the longest chain."""
    inf = math.inf
    # cost[k, l - 1]: steps k .. k + l - 1 lazy. Chains at steps 3-4 are cheap, step 1 is dear.
    cost = torch.tensor([[inf, inf, inf], [5.0, 6.0, 9.0], [0.5, 2.5, 3.0], [0.2, 0.5, inf], [0.3, inf, inf]])
    lam = 1.0
    thr = chain_plan(cost, lam)

    def value(lazy):
        total, k = 0.0, 0
        while k < len(lazy):
            if lazy[k]:
                n = 1
                while k + n < len(lazy) and lazy[k + n]:
                    n += 1
                if k == 0 or n > cost.shape[1] or not math.isfinite(cost[k, n - 1]):
                    return -inf
                total += n * lam - float(cost[k, n - 1])
                k += n
            else:
                k += 1
        return total
    best = max(itertools.product([False, True], repeat=5), key=value)
    planned, r = [], 0
    for k in range(5):
        lazy = float(thr[k, r]) >= 0
        planned.append(lazy)
        r = r + 1 if lazy else 0
    assert value(tuple(planned)) == pytest.approx(value(best))
    # By hand: steps 3-4 as one chain, 2 - 0.5 = 1.5, beat steps 2 and 4 apart (0.5 + 0.7 = 1.2) and the chain
    # 2-4 (3 - 3.0 = 0), whose single steps would add up to only 1.0.
    assert tuple(planned) == tuple(best) == (False, False, False, True, True)
    assert value(best) == pytest.approx(1.5)


@pytest.fixture(scope="module")
def model():
    return tiny_dit()


@pytest.fixture(scope="module")
def chain_costs_measured(model):
    return S.measure(model, steps=STEPS, images=3, cfg_scale=CFG, seed=3, chain=3, modules=False, order=2)


def measured_trajectories(model):
    """(conditions, noise, diffusion, exact finals) of the 3 trajectories measure(seed=3) draws."""
    den = LabelDenoiser(model)
    g = torch.Generator().manual_seed(3)
    cond = den.draw(3, g)
    noise = torch.randn(3, *den.latent, generator=g)
    d = GaussianDiffusion()
    return cond, noise, d, d.ddim_sample(model, noise, cond, STEPS, CFG, null_label=10)


def test_measured_chain_cost_is_the_final_error_of_an_engine_run(model, chain_costs_measured):
    """A chain of 1..3 lazy steps measured by `measure` equals the final-image error of a LazyRun that is
    lazy on exactly those steps, with the same forecast (order 2 here)."""
    costs = chain_costs_measured
    cond, noise, d, exact = measured_trajectories(model)
    for start, n in ((2, 3), (4, 2), (STEPS - 1, 1), (3, 1)):
        lazy = torch.zeros(STEPS, 2, 2, dtype=torch.bool)
        lazy[start:start + n] = True
        options = CacheOptions(reuse="extrapolate", order=2, max_lazy_steps=3)
        with LazyRun(model, StaticMask(lazy), options, streams=("positive", "negative"),
                     timesteps=space_timesteps(STEPS)[::-1]) as run:
            out = d.ddim_sample(run, noise, cond, STEPS, CFG, null_label=10)
        err = (out - exact).pow(2).flatten(1).sum(1)
        assert torch.allclose(err, costs.chain[start, n - 1], rtol=2e-2, atol=1e-9), (start, n, err, costs.chain)
        assert run.report["ratio"] == pytest.approx(n / STEPS)
    assert costs.calls == S.measure_calls(STEPS, 2, 3, modules=False)
    assert torch.isinf(costs.chain[STEPS - 1, 1:]).all() and torch.isfinite(costs.chain[1:STEPS - 2]).all()


def test_measured_chain_cost_with_the_correction_is_that_of_a_corrected_engine_run(model):
    """Measured with correct=True (the step after the chain corrected), a chain's cost equals the final-image
    error of a LazyRun lazy on that chain with CacheOptions(correct=True) and the run's DDIM sigmas, and it
    differs from the cost without the correction."""
    costs = S.measure(model, steps=STEPS, images=3, cfg_scale=CFG, seed=3, chain=3, modules=False, correct=True)
    plain = S.measure(model, steps=STEPS, images=3, cfg_scale=CFG, seed=3, chain=2, modules=False)
    cond, noise, d, exact = measured_trajectories(model)
    for start, n in ((2, 3), (4, 2), (3, 1)):
        lazy = torch.zeros(STEPS, 2, 2, dtype=torch.bool)
        lazy[start:start + n] = True
        options = CacheOptions(reuse="extrapolate", max_lazy_steps=3, correct=True)
        with LazyRun(model, StaticMask(lazy), options, streams=("positive", "negative"),
                     timesteps=space_timesteps(STEPS)[::-1], sigmas=d.ddim_sigmas(STEPS)) as run:
            out = d.ddim_sample(run, noise, cond, STEPS, CFG, null_label=10)
        err = (out - exact).pow(2).flatten(1).sum(1)
        assert torch.allclose(err, costs.chain[start, n - 1], rtol=2e-2, atol=1e-9), (start, n, err, costs.chain)
    assert not torch.allclose(costs.chain[1:STEPS - 2, :2], plain.chain[1:STEPS - 2], rtol=1e-3)


def test_chain_plan_spends_the_budget_in_chains_within_the_limit(model, chain_costs_measured):
    """A schedule with chains reaches past half of the steps lazy, never more than the longest chain in a
    row (nor more than max_lazy_steps), and its plan share is what the run does."""
    bank = S.schedule_bank(model, chain_costs_measured, buckets=STEPS)
    assert bank.longest_chain == 3
    ts = space_timesteps(STEPS)[::-1]
    thr = chain_plan(chain_costs(bank, ts, 3), 1e9)                 # λ huge: as lazy as allowed
    assert plan_share(thr) == pytest.approx(6 / 8)                  # step 0 computes; 3 lazy, 1 computes, 3 lazy
    for limit in (3, 2):
        den = LabelDenoiser(model)
        g = torch.Generator().manual_seed(5)
        cond, noise = den.draw(2, g), torch.randn(2, *den.latent, generator=g)
        options = CacheOptions(reuse="extrapolate", max_lazy_steps=limit)
        with LazyRun(model, LearnedGates(bank, math.log(1e9)), options, streams=("positive", "negative"),
                     timesteps=ts) as run:
            GaussianDiffusion().ddim_sample(run, noise, cond, STEPS, CFG, null_label=10)
        lazy = run.report["streams"][0]["lazy"].sum((1, 2)) > 0
        longest = max(len(list(g)) for v, g in itertools.groupby(lazy.tolist()) if v)
        assert longest == limit
        share = plan_share(chain_plan(chain_costs(bank, ts, limit), 1e9))
        assert run.report["ratio"] == pytest.approx(share)


def test_chain_costs_carry_to_the_measured_schedule_exactly_and_to_others_smoothly(model, chain_costs_measured):
    """On the measured schedule the carried costs are the table; on a finer one they fall with the gap."""
    bank = S.schedule_bank(model, chain_costs_measured, buckets=STEPS)
    ts = space_timesteps(STEPS)[::-1]
    carried = chain_costs(bank, ts, 3)
    table = bank.chain.exp()
    finite = torch.isfinite(table)
    assert torch.allclose(carried[1:][finite], table[finite], rtol=1e-4)
    fine = chain_costs(bank, space_timesteps(2 * STEPS)[::-1], 3)
    assert torch.isfinite(fine[1:, 0]).all()
    assert fine[1:-1, 0].median() < carried[1:-1, 0].median()


def test_fora_chains_with_taylor_forecasts_run_in_the_engine(model):
    """TaylorSeer as FORA's pattern with a Taylor forecast: lazy between full steps, differs from repeat."""
    den = LabelDenoiser(model)
    g = torch.Generator().manual_seed(2)
    cond, noise = den.draw(2, g), torch.randn(2, *den.latent, generator=g)
    outs = {}
    for reuse, order in (("repeat", 1), ("taylor", 2), ("extrapolate", 1), ("taylor", 1)):
        with LazyRun(model, Fora(3), CacheOptions(reuse=reuse, order=order, max_lazy_steps=2),
                     streams=("positive", "negative")) as run:
            outs[reuse, order] = GaussianDiffusion().ddim_sample(run, noise, cond, 9, CFG, null_label=10)
        assert run.report["ratio"] == pytest.approx(6 / 9)
    assert torch.allclose(outs["taylor", 1], outs["extrapolate", 1], atol=1e-5)
    assert not torch.allclose(outs["taylor", 2], outs["repeat", 1], atol=1e-4)


def test_periodic_history_forecasts_from_the_steps_a_chain_plan_computes(model, chain_costs_measured):
    """history="periodic" starts a chain of l steps at i from the outputs of steps i - 1, i - 1 - (l + 1):
    the same as the exact history where only one output exists yet, different after; its call count is
    what measure_calls says, and an unknown history is refused."""
    periodic = S.measure(model, steps=STEPS, images=3, cfg_scale=CFG, seed=3, chain=3, modules=False, order=2,
                         history="periodic")
    exact = chain_costs_measured
    assert periodic.calls == S.measure_calls(STEPS, 2, 3, modules=False, history="periodic") > exact.calls
    assert torch.allclose(periodic.chain[1], exact.chain[1], rtol=1e-5)
    assert not torch.allclose(periodic.chain[4:STEPS - 1, 0], exact.chain[4:STEPS - 1, 0], rtol=1e-3)
    with pytest.raises(ValueError, match="unknown history 'x'"):
        S.measure(model, steps=STEPS, images=1, chain=1, modules=False, history="x")


def test_learned_forecaster_recovers_planted_coefficients():
    """Outputs made by o1 + a (line - o1) + b (quad - line) with known (a, b) per position, plus noise: the
    least-squares fit gives (a, b) back; a position with no samples keeps the line."""
    from lazydit.lazy_core.training.forecaster import accumulate, solve

    g = torch.Generator().manual_seed(0)
    planted = torch.tensor([[0.7, 0.4], [1.2, -0.3], [0.2, 0.9]])
    gram = torch.zeros(4, 2, 2, dtype=torch.float64)
    rhs = torch.zeros(4, 2, dtype=torch.float64)
    for p, (a, b) in enumerate(planted.tolist()):
        for _ in range(5):
            o1, o2, o3 = (torch.randn(3, 6, 8, generator=g) for _ in range(3))
            times = torch.tensor([[500.0, 650.0, 800.0]]).expand(3, 3)
            now = torch.tensor(500.0 - 50.0 * (p + 1))
            w = forecast.learned(torch.tensor([[a, b]]).expand(3, 2), times, now)
            target = forecast.combine(o1, [o2, o3], w) + 1e-3 * torch.randn(3, 6, 8, generator=g)
            accumulate(gram[p], rhs[p], o1, o2, o3, times, now, target)
    coef = solve(gram, rhs)
    assert torch.allclose(coef[:3].float(), planted, atol=2e-3), coef
    assert coef[3].tolist() == [1.0, 0.0]


def test_learned_forecaster_spans_repeat_and_the_line_in_the_engine(model, tmp_path):
    """(a, b) = (1, 0) at every position is the line, (0, 0) repeats; fitted coefficients run, differ and
    survive the gate file; a learned forecaster without coefficients is refused."""
    from lazydit.lazy_core.engine.gates import GateBank, GateInfo
    from lazydit.lazy_core.training.forecaster import fit

    den = LabelDenoiser(model)
    g = torch.Generator().manual_seed(2)
    cond, noise = den.draw(2, g), torch.randn(2, *den.latent, generator=g)
    depth = len(model.blocks)

    def run(options):
        with LazyRun(model, Fora(3), options, streams=("positive", "negative")) as lazy:
            return GaussianDiffusion().ddim_sample(lazy, noise, cond, 9, CFG, null_label=10)
    line = run(CacheOptions(reuse="extrapolate", max_lazy_steps=2))
    repeat = run(CacheOptions(reuse="repeat", max_lazy_steps=2))
    ones = torch.tensor([1.0, 0.0]).expand(depth, 2, 3, 2)
    assert torch.allclose(run(CacheOptions(reuse="learned", coefficients=ones, max_lazy_steps=2)), line, atol=1e-5)
    assert torch.allclose(run(CacheOptions(reuse="learned", coefficients=torch.zeros(depth, 2, 3, 2),
                                           max_lazy_steps=2)), repeat, atol=1e-5)
    coef = fit(model, steps=9, images=2, cfg_scale=CFG, longest=3)
    assert coef.shape == (depth, 2, 3, 2) and torch.isfinite(coef).all() and not torch.allclose(coef, ones)
    fitted = run(CacheOptions(reuse="learned", coefficients=coef, max_lazy_steps=2))
    assert torch.isfinite(fitted).all() and not torch.allclose(fitted, line, atol=1e-4)
    GateBank(GateInfo("dit", depth, model.config.hidden_size, [0, 999]), forecast=coef).save(tmp_path / "g.safetensors")
    assert torch.equal(GateBank.load(tmp_path / "g.safetensors").forecast, coef)
    with pytest.raises(ValueError, match="forecast coefficients have shape"):
        GateBank(GateInfo("dit", depth, model.config.hidden_size, [0, 999]), forecast=coef[:, :1])
    with pytest.raises(ValueError, match="fitted forecaster coefficients"):
        CacheOptions(reuse="learned")
