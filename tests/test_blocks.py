"""Block-level laziness in the engine (CacheOptions(level="block")): a block computes or returns its input
plus its forecast residual, cached per stream and row like a module's output."""

import pytest
import torch

from lazy_core.engine.cache import CacheOptions
from lazy_core.engine.policies import Fora, ForcedRatio, NeverLazy
from lazy_core.engine.run import LazyRun
from lazy_core.models.dit import DiT, DiTConfig


def tiny_dit(seed=0, depth=3):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(input_size=8, depth=depth, hidden_size=32, num_heads=2, num_classes=10))
    model.initialize_weights(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


def inputs(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.arange(n) % 10


def reference_fora(model, xs, ts, y, interval, reuse):
    """Block-level FORA written out by hand: every block's residual computed on every interval-th call and
    reused (repeat) or continued along the line through the last two (extrapolate) in between."""
    kept, outs = {}, []
    for k, (x, t) in enumerate(zip(xs, ts)):
        h, c = model.embed(x, torch.full((len(x),), t), y)
        for i, blk in enumerate(model.blocks):
            if k % interval == 0:
                r = blk(h, c) - h
                old = kept.get(i, [])
                kept[i] = [(t, r)] + old[:1]
            else:
                (t1, r1), *rest = kept[i]
                r = r1 if reuse == "repeat" or not rest else r1 + (t - t1) / (t1 - rest[0][0]) * (r1 - rest[0][1])
            h = h + r if k % interval else blk(h, c)
        outs.append(model.unpatchify(model.final_layer(h, c)))
    return outs


def run_calls(model, policy, options, xs, ts, y, streams=None):
    with LazyRun(model, policy, options, streams=streams) as lazy:
        outs = [lazy(x, torch.full((len(x),), t), y) for x, t in zip(xs, ts)]
    return outs, lazy.report


def test_nothing_lazy_at_block_level_is_bit_identical():
    model = tiny_dit()
    x, y = inputs()
    ts = [900.0, 700.0, 500.0]
    exact = [model(x + k, torch.full((4,), t), y) for k, t in enumerate(ts)]
    for policy in (NeverLazy(), Fora(1)):
        outs, report = run_calls(model, policy, CacheOptions(level="block"), [x + k for k in range(3)], ts, y)
        assert all(torch.equal(a, b) for a, b in zip(outs, exact))
        assert report["ratio"] == 0


@pytest.mark.parametrize("reuse", ["repeat", "extrapolate"])
def test_block_level_fora_matches_the_hand_written_residual_cache(reuse):
    model = tiny_dit()
    x, y = inputs()
    xs = [x * (1 - 0.1 * k) for k in range(6)]
    ts = [950.0, 800.0, 650.0, 500.0, 350.0, 200.0]
    outs, report = run_calls(model, Fora(2), CacheOptions(level="block", reuse=reuse), xs, ts, y)
    ref = reference_fora(model, xs, ts, y, 2, reuse)
    exact = [model(a, torch.full((4,), t), y) for a, t in zip(xs, ts)]
    for k, (a, b, e) in enumerate(zip(outs, ref, exact)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert (k % 2 == 0) == torch.equal(a, e)          # computed steps are the exact model's
    assert report["ratio"] == pytest.approx(0.5)


def test_block_level_saves_the_blocks_macs_in_proportion():
    model = tiny_dit(depth=4)
    x, y = inputs()
    xs, ts = [x] * 8, [900.0 - 100 * k for k in range(8)]
    _, report = run_calls(model, ForcedRatio(0.25, 4), CacheOptions(level="block"), xs, ts, y)
    assert report["ratio"] == pytest.approx(0.25)
    assert report["macs_share"] == pytest.approx(0.25)
    assert report["macs_saved"] > 0


def test_a_stream_joining_computes_while_the_others_stay_lazy():
    """Rows of a stream new to the layout compute (no residual yet); the old stream's rows are lazy, and
    each matches what it gets in a run of its own."""
    model = tiny_dit()
    x, y = inputs(2)
    ts = [900.0, 700.0]
    opts = CacheOptions(level="block")
    with LazyRun(model, Fora(2), opts) as lazy:
        lazy(x, torch.full((2,), ts[0]), y, stream="a")
        mixed = torch.cat([x, x + 1])
        lazy.state.begin_call(["a", "b"], ["a", "b"], 2, mixed, ts[1])
        try:
            out = lazy.forward(mixed, torch.full((4,), ts[1]), torch.cat([y, y]))
        finally:
            lazy.state.end_call()
    alone, _ = run_calls(model, Fora(2), opts, [x, x], ts, y)
    torch.testing.assert_close(out[:2], alone[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2:], model(x + 1, torch.full((2,), ts[1]), y), rtol=1e-5, atol=1e-5)
    assert not torch.equal(out[:2], model(x, torch.full((2,), ts[1]), y))


def test_block_level_refuses_block_range_policies():
    from lazy_core.engine.policies import DeltaDiT
    model = tiny_dit()
    with pytest.raises(ValueError, match="Δ-DiT caches block ranges itself"):
        with LazyRun(model, DeltaDiT(3, 1, 500, 2), CacheOptions(level="block")):
            pass


def measure_chains(model, x, y, ts, step, on_step=None):
    """lazy_core.training.chains on a tiny DiT at block level, without guidance: one call per evaluation."""
    from lazy_core.engine.proxies import Attachment
    from lazy_core.training import chains

    holder = chains.Holder()
    holder.options = CacheOptions(level="block")

    def evaluate(xx, k):
        holder.begin_call(["positive"], ["positive"], len(xx), xx, None)
        try:
            return model(xx, torch.full((len(xx),), ts[k]), y)
        finally:
            holder.end_call()
    handle = Attachment(model, holder).attach()
    try:
        with torch.no_grad():
            return chains.measure_blocks(holder, evaluate, step, ts, x, model.config.depth, on_step=on_step)
    finally:
        handle.detach()


def test_measured_block_chain_cost_is_the_final_error_of_an_engine_run_lazy_on_that_chain():
    """A chain from step 1 (the forecast has step 0 only, as a run's would) costs what CacheOptions(level=
    "block") lazy on exactly those steps does to the final latent; residuals moved off the device after
    the first step (system RAM, when an accelerator's is short) measure the same."""
    from lazy_core.engine.policies import StaticMask
    from lazy_core.training.sensitivity import measure_calls

    model = tiny_dit(depth=2)
    x, y = inputs()
    ts = [950.0, 800.0, 650.0, 500.0, 350.0, 200.0, 50.0]

    def step(xx, k, out):
        return xx - 0.15 * out[:, :4]
    costs = measure_chains(model, x, y, ts, step)
    moved = measure_chains(model, x, y, ts, step, on_step=lambda k, nbytes: torch.device("cpu") if k == 0 else None)
    assert costs.calls == measure_calls(len(ts), 1, 4, modules=False, history="periodic")
    assert torch.equal(costs.chain, moved.chain)
    with torch.no_grad():
        exact = x
        for k, t in enumerate(ts):
            exact = step(exact, k, model(exact, torch.full((4,), t), y))
        for n in range(1, 5):
            mask = torch.zeros(len(ts), 2, 2, dtype=torch.bool)
            mask[1:1 + n] = True
            options = CacheOptions(level="block", reuse="extrapolate", max_lazy_steps=4)
            with LazyRun(model, StaticMask(mask), options) as run:
                z = x
                for k, t in enumerate(ts):
                    z = step(z, k, run(z, torch.full((4,), t), y))
            assert run.report["ratio"] == pytest.approx(n / len(ts))
            final_error = (z - exact).pow(2).flatten(1).sum(1)
            assert torch.allclose(costs.chain[1, n - 1], final_error, rtol=1e-4, atol=1e-9), n
            assert torch.allclose(costs.final, exact)
