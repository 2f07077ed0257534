"""lazy_core engine tests: proxies, cache, policies and gates on tiny DiTs, without ComfyUI."""

import pytest
import torch
from lazydit.lazy_core.engine.cache import CacheOptions, RunState
from lazydit.lazy_core.engine.gates import GateBank, GateFileError, GateInfo, from_reference
from lazydit.lazy_core.engine.policies import DeltaDiT, Fora, ForcedRatio, LearnedGates, NeverLazy, Policy, StepRange
from lazydit.lazy_core.engine.proxies import BlockProxy, ModuleProxy, attach, module_macs
from lazydit.lazy_core.engine.run import LazyRun
from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
from lazydit.lazy_core.models.dit import DiT, DiTConfig

STEPS = 10


def tiny_dit(seed=0, depth=3):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(input_size=8, depth=depth, hidden_size=32, num_heads=2, num_classes=10))
    model.initialize_weights(seed)
    with torch.no_grad():   # adaLN-Zero starts as the identity; perturb so every block matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def random_gates(depth=3, width=32, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    info = GateInfo("dit", depth, width, space_timesteps(STEPS))
    return GateBank(info, scale * torch.randn(depth, 2, STEPS, width, generator=g))


def sample(model, y, seed=0, cfg=3.0):
    noise = torch.randn(len(y), 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return GaussianDiffusion().ddim_sample(model, noise, y, STEPS, cfg_scale=cfg, null_label=10)


def lazy_sample(model, policy, y, options=CacheOptions(), **kw):
    with LazyRun(model, policy, options) as run:
        out = sample(run, y, **kw)
    return out, run.report


Y = torch.tensor([1, 4, 7])


@pytest.mark.parametrize("policy", [NeverLazy(), LearnedGates(random_gates(), 0.0)], ids=["never", "threshold0"])
def test_exact_when_nothing_is_lazy(policy):
    """With no module lazy, lazy sampling is bit-identical to the plain model."""
    model = tiny_dit()
    ref = sample(model, Y)
    out, report = lazy_sample(model, policy, Y)
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max()}"
    assert report["ratio"] == 0.0


def test_attach_detach_restores_the_same_modules():
    """attach() swaps proxies in for attn and mlp without registering them; detach() restores the very same
    modules. Block proxies only appear for block-range policies."""
    model = tiny_dit()
    blocks, keys = model.blocks, set(model.state_dict())
    originals = [(b.attn, b.mlp) for b in blocks]
    handle = attach(model, RunState(NeverLazy()))
    assert all(isinstance(b.attn, ModuleProxy) and isinstance(b.mlp, ModuleProxy) for b in model.blocks)
    assert model.blocks is blocks and not any(isinstance(b, BlockProxy) for b in model.blocks)
    gated = {k for k in keys if k.startswith("blocks.") and (".attn." in k or ".mlp." in k)}
    assert set(model.state_dict()) == keys - gated, "proxies must not register the modules they hold"
    with pytest.raises(RuntimeError, match="already attached"):
        attach(model, RunState(NeverLazy()))
    handle.detach()
    assert [(b.attn, b.mlp) for b in model.blocks] == originals
    assert set(model.state_dict()) == keys
    handle = attach(model, RunState(DeltaDiT(2, 1, 500, 2)))
    assert all(isinstance(b, BlockProxy) for b in model.blocks)
    handle.detach()
    assert list(model.blocks) == [b for b in blocks] and not isinstance(model.blocks[0], BlockProxy)


def test_learned_gates_make_rows_lazy_and_change_output():
    """Random gates at threshold 0.5 make some but not all modules lazy, and the output moves but stays finite."""
    model = tiny_dit()
    ref = sample(model, Y)
    out, report = lazy_sample(model, LearnedGates(random_gates(), 0.5), Y)
    assert 0.05 < report["ratio"] < 0.5, report["text"]
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)


def test_rows_decide_independently():
    """A row's output does not depend on the other rows of the batch (per-row decisions and caches)."""
    model, gates = tiny_dit(), random_gates()
    a, _ = lazy_sample(model, LearnedGates(gates, 0.5), torch.tensor([1, 4, 7]))
    b, _ = lazy_sample(model, LearnedGates(gates, 0.5), torch.tensor([1, 9, 2]))
    # Row 0 (and its uncond row) saw identical inputs; batch-size effects in matmul stay below 1e-5.
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    assert not torch.allclose(a[1], b[1], atol=1e-3), "rows 1 should differ: they have other labels"


def test_batched_equals_one_row_at_a_time():
    """Gather/scatter of the computing rows gives what each row gives alone."""
    model, gates = tiny_dit(), random_gates()
    batched, report = lazy_sample(model, LearnedGates(gates, 0.5), Y)
    assert 0 < report["ratio"] < 0.5
    for i in range(len(Y)):
        noise = torch.randn(len(Y), 4, 8, 8, generator=torch.Generator().manual_seed(0))[i:i + 1]
        with LazyRun(model, LearnedGates(gates, 0.5)) as run:
            alone = GaussianDiffusion().ddim_sample(run, noise, Y[i:i + 1], STEPS, cfg_scale=3.0, null_label=10)
        # Matmuls of other batch sizes round differently (~1e-4 here); a different lazy decision would
        # move the sample by orders of magnitude more.
        torch.testing.assert_close(batched[i:i + 1], alone, atol=5e-4, rtol=1e-4)


class AlwaysLazy(Policy):
    """Wants every row lazy at every step (the engine's rules still apply)."""

    lazy_possible = True

    def compute_mask(self, call, block, module, z):
        return torch.zeros(call.rows, dtype=torch.bool)


@pytest.mark.parametrize("max_lazy, expected", [(1, 5), (2, 6), (3, 7)])
def test_max_consecutive_lazy_steps(max_lazy, expected):
    """First evaluation computes; then at most max_lazy lazy steps in a row (10 steps: C L C L ... = 5 lazy)."""
    _, report = lazy_sample(tiny_dit(), AlwaysLazy(), Y, CacheOptions(max_lazy_steps=max_lazy))
    lazy = report["streams"][0]["lazy"]                         # (steps, depth, 2) lazy rows
    per_module = lazy[:, 0, 0] / (2 * len(Y))                   # every row of block 0 attn, per step
    assert int(per_module.sum()) == expected, per_module.tolist()
    assert per_module[0] == 0, "the first step must compute"


def test_fora_refreshes_every_n_steps():
    """FORA with interval 3 computes steps 0, 3, 6, 9 and is lazy on the other six."""
    _, report = lazy_sample(tiny_dit(), Fora(3), Y, CacheOptions(max_lazy_steps=2))
    per_step = report["streams"][0]["lazy"].sum(dim=(1, 2))
    rows = 2 * len(Y)
    assert per_step.tolist() == [0 if s % 3 == 0 else rows * 3 * 2 for s in range(STEPS)]


class Halves(Policy):
    """Even rows compute on even steps, odd rows on odd ones: no module is lazy for every row."""

    lazy_possible, reads_input = True, False

    def compute_mask(self, call, block, module, z):
        return [(i + int(call.steps[i])) % 2 == 0 for i in range(call.rows)]


def reading(policy):
    """The policy as one that reads its modules' inputs: the same decisions, made after every norm ran."""
    policy.reads_input = True
    return policy


@pytest.mark.parametrize("make, norms", [(lambda: Fora(3), 4 * 3), (Halves, STEPS * 3)], ids=["fora3", "halves"])
@pytest.mark.parametrize("reuse", ["repeat", "extrapolate"])
def test_a_module_no_row_computes_skips_its_norm(make, norms, reuse):
    """A policy that reads no activations decides before the module's input is made: the norm feeding a
    module that no row computes does not run (FORA 3 over 10 steps: only on its 4 computed steps), where
    some rows compute it runs, and the samples are bit-identical to the same decisions made after the norms
    ran."""
    model, options = tiny_dit(), CacheOptions(max_lazy_steps=2, reuse=reuse)
    ran = []
    hooks = [m.register_forward_hook(lambda mod, args, out: ran.append(out.shape[1]))
             for b in model.blocks for m in (b.norm1, b.norm2)]
    out, report = lazy_sample(model, make(), Y, options)
    fast = len(ran)
    ref, ref_report = lazy_sample(model, reading(make()), Y, options)
    for h in hooks:
        h.remove()
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max()}"
    assert report["ratio"] == ref_report["ratio"] > 0.3
    assert fast == 2 * norms and len(ran) - fast == 2 * STEPS * 3, (fast, len(ran) - fast)
    assert set(ran) == {16}, "every norm that runs normalizes all tokens"


def test_forced_ratio_is_measured_ratio():
    """ForcedRatio(0.5) makes every module lazy on odd steps: a measured lazy ratio of exactly 50 %."""
    _, report = lazy_sample(tiny_dit(depth=4), ForcedRatio(0.5, 4), Y)
    assert report["ratio"] == pytest.approx(0.5)
    _, report = lazy_sample(tiny_dit(depth=4), ForcedRatio(0.25, 4), Y)
    assert report["ratio"] == pytest.approx(0.25)


def test_shape_change_resets_the_stream():
    """A new batch size for the same stream starts from an empty cache: its first call computes every row."""
    model = tiny_dit()
    with LazyRun(model, AlwaysLazy()) as run:
        t = torch.full((3,), 500)
        run(torch.randn(3, 4, 8, 8), t, Y)
        run(torch.randn(3, 4, 8, 8), t, Y)        # lazy everywhere
        run(torch.randn(2, 4, 8, 8), t[:2], Y[:2])  # new shape: must compute
    lazy = run.report["streams"][0]["lazy"]
    assert run.report["streams"][0]["rows"] == 2
    assert lazy.sum() == 0, "the stream was reset, so its only recorded call computed everything"


def test_cache_storage_dtype():
    """A float16 cache stores float16 tensors and gives finite output within a small distance of the float32
    cache, but not the same output (the lazy rows were rounded)."""
    model, gates = tiny_dit(), random_gates()
    a, _ = lazy_sample(model, LearnedGates(gates, 0.5), Y)
    dtypes = set()
    with LazyRun(model, LearnedGates(gates, 0.5), CacheOptions(dtype=torch.float16)) as run:
        x = torch.randn(len(Y), 4, 8, 8, generator=torch.Generator().manual_seed(0))
        for step in range(6):
            x = run(x, torch.full((len(Y),), 900 - 150 * step), Y)[:, :4]
            slab = run.state.streams["batch"].slab
            dtypes |= {v.dtype for v in slab.out.values()}
    b, _ = lazy_sample(model, LearnedGates(gates, 0.5), Y, CacheOptions(dtype=torch.float16))
    assert dtypes == {torch.float16}, dtypes
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b, atol=1e-2, rtol=0)
    assert not torch.equal(a, b), "a float16 cache must round the lazy rows"


def test_cache_is_freed_at_the_end_of_a_run():
    """After the run, no stream holds a tensor."""
    model = tiny_dit()
    with LazyRun(model, AlwaysLazy()) as run:
        sample(run, Y)
        slab = run.state.streams["batch"].slab
        assert slab.out
    assert all(s.slab is None for s in run.state.streams.values())


def test_gate_file_round_trip(tmp_path):
    """Gates saved to safetensors load back with weights, trained mask and metadata."""
    gates = random_gates()
    gates.info.calibration = [[0.3, 0.1], [0.5, 0.3], [0.7, 0.45]]
    gates.trained[0, 1, 2] = False
    path = tmp_path / "g.safetensors"
    gates.save(path)
    back = GateBank.load(path)
    assert torch.equal(back.weight, gates.weight)
    assert torch.equal(back.trained, gates.trained)
    assert back.info == gates.info
    assert back.expected_ratio(0.6) == pytest.approx(0.375)
    assert back.expected_ratio(0.15) == pytest.approx(0.05), "below the table: from (0, 0), threshold 0 is exact"
    assert back.expected_ratio(0.9) == pytest.approx(0.45), "above the table: its last measured ratio"


def test_bad_gate_files(tmp_path):
    """Truncated, foreign and mismatched gate files raise GateFileError naming the problem."""
    path = tmp_path / "g.safetensors"
    random_gates().save(path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GateFileError, match="cut.safetensors.*truncated"):
        GateBank.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file
    save_file({"weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(GateFileError, match="not a LazyDiT gate file"):
        GateBank.load(tmp_path / "other.safetensors")
    with pytest.raises(GateFileError, match="depth 3 / width 32.*depth 28 / width 1152"):
        GateBank.load(path).check_fits("dit", 28, 1152)


def test_timesteps_far_from_every_bucket_compute():
    """Gates trained only for t <= 400 compute (and say so) at t = 900."""
    info = GateInfo("dit", 3, 32, [0, 100, 200, 300, 400])
    gates = GateBank(info)                     # zero weights: score 0.5 < 0.6, lazy wherever a bucket applies
    assert gates.bucket(420) == 4 and gates.bucket(900) is None
    model = tiny_dit()
    with LazyRun(model, LearnedGates(gates, 0.6)) as run:
        for t in (900, 880, 120, 100):
            run(torch.randn(3, 4, 8, 8), torch.full((3,), t), Y)
    s = run.report["streams"][0]
    assert s["lazy"].sum(dim=(1, 2)).tolist() == [0, 0, 3 * 3 * 2, 0]   # t=100 follows a lazy step
    assert s["notes"] == ["no trained gate near t=880"], "the first call computes anyway; the second says why"


def test_reference_checkpoint_import():
    """Reference keys block_{l}_{attn|mlp}_lazy_learning_weight_{i} become sum-pooled buckets at DiT timesteps."""
    state = {"model": {}}
    for layer in range(2):
        for kind in ("attn", "mlp"):
            for i in range(4):
                w = torch.full((1, 8), float(i + 1)) if i % 2 == 0 else torch.zeros(1, 8)
                state["model"][f"block_{layer}_{kind}_lazy_learning_weight_{i}"] = w
    bank = from_reference(state)
    assert bank.info.pooling == "sum" and bank.info.depth == 2 and bank.info.width == 8
    assert bank.info.timesteps == [0, 333, 666, 999]
    assert bank.trained[:, :, 0].all() and not bank.trained[:, :, 1].any()
    assert torch.equal(bank.weight[1, 1, 2], torch.full((8,), 3.0))


def test_delta_dit_exact_with_interval_one():
    """Δ-DiT refreshing every step never reuses Δ: bit-identical output."""
    model = tiny_dit(depth=4)
    ref = sample(model, Y)
    out, report = lazy_sample(model, DeltaDiT(4, 2, boundary=500, interval=1), Y)
    assert torch.equal(out, ref) and report["ratio"] == 0.0


def test_delta_dit_skip_pattern():
    """Interval 2: lazy on odd evaluations; rear blocks (2, 3) while t > boundary, front (0, 1) after;
    the first evaluation after the boundary computes (its range changed)."""
    model = tiny_dit(depth=4)
    out, report = lazy_sample(model, DeltaDiT(4, 2, boundary=500, interval=2), Y)
    assert torch.isfinite(out).all()
    lazy = report["streams"][0]["lazy"]                  # (steps, depth, 2)
    ts = report["streams"][0]["timesteps"]               # 999, 888, ..., 0
    rows = 2 * len(Y)
    expected = []
    since, span = None, None
    for t in ts:
        new_span = (2, 4) if t > 500 else (0, 2)
        lazy_now = span == new_span and since is not None and since + 1 < 2
        since = since + 1 if lazy_now else 0
        span = new_span
        expected.append([rows if lazy_now and span[0] <= b < span[1] else 0 for b in range(4)])
    assert lazy[:, :, 0].tolist() == expected
    assert torch.equal(lazy[:, :, 0], lazy[:, :, 1]), "a cached block skips attention and MLP together"
    attn, mlp = module_macs(model.blocks, model.x_embedder.num_patches)[0]     # equal for every block
    saved = sum(map(sum, expected)) * (attn + mlp)
    assert report["macs_saved"] == saved, f"MACs saved by cached ranges: expected {saved}, got {report['macs_saved']}"


def test_delta_dit_reuses_the_range_delta():
    """At a lazy step the range's output is its input plus the Δ taken at the last computing step."""
    model = tiny_dit(depth=4)
    with LazyRun(model, DeltaDiT(4, 2, boundary=-1, interval=2)) as run:   # always 'early': rear blocks
        x, t = torch.randn(3, 4, 8, 8), torch.full((3,), 700)
        run(x, t, Y)
        delta = run.state.streams["batch"].slab.ranges[(2, 4)].clone()
        seen = {}
        handle_blocks = run.state.blocks
        hook = handle_blocks[2].register_forward_pre_hook(lambda m, a: seen.setdefault("called", True))
        run(x, t, Y)
        hook.remove()
    assert "called" not in seen, "the cached range must not run"
    assert delta.shape == (3, 16, 32)


@pytest.mark.parametrize("reuse", ["repeat", "extrapolate"])
def test_a_stream_joining_mid_run_computes_while_others_are_lazy(reuse):
    """A stream first seen in a call where another stream is lazy (a cond with a timestep range that starts
    mid-run) computes its rows; the lazy stream's rows still come from its cache."""
    model = tiny_dit()
    state = RunState(Fora(2), CacheOptions(reuse=reuse))
    handle = state.attach(model)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    try:
        for step, keys in enumerate((["a"], ["a", "b"])):    # FORA-2: "a" is lazy at its second call
            t = torch.full((len(keys) * 2,), 900 - 100 * step)
            state.begin_call(keys, keys, 2, x.repeat(len(keys), 1, 1, 1), float(t[0]))
            out = model(x.repeat(len(keys), 1, 1, 1), t, y.repeat(len(keys)))
            state.end_call()
    finally:
        handle.detach()
    fresh = model(x, torch.full((2,), 800), y)
    assert torch.allclose(out[2:], fresh, atol=1e-5), "the new stream must compute"  # other batch shape
    assert not torch.allclose(out[:2], fresh, atol=1e-3), "the old stream must be lazy"
    assert state.stats()[0]["lazy"][1].sum() > 0 and state.stats()[1]["lazy"].sum() == 0


def test_a_stream_that_ran_alone_brings_its_newest_cache_back():
    """(A, B), then B alone, then (A, B) lazy: B's rows are its output from the call it ran alone, A's from
    the first call (a layout seen before is rebuilt when one of its streams has moved on)."""

    class LazyOnThirdCall(Policy):
        lazy_possible = True

        def __init__(self):
            self.calls = 0

        def prepare(self, call):
            self.calls += 1

        def compute_mask(self, call, block, module, z):
            return [self.calls != 3] * call.rows

    model = tiny_dit()
    state = RunState(LazyOnThirdCall())
    handle = state.attach(model)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)]
    outs = []
    try:
        for keys, x in ((["a", "b"], xs[0]), (["b"], xs[1][:1]), (["a", "b"], xs[2])):
            state.begin_call(keys, keys, 1, x, 500.0)
            outs.append(model(x, torch.full((len(x),), 500), torch.tensor([1] * len(x))))
            state.end_call()
    finally:
        handle.detach()
    lazy = outs[2]
    assert state.streams["b"].slab is state.streams["a"].slab, "the layout was rebuilt around both streams"
    ref = RunState(LazyOnThirdCall())
    handle = ref.attach(model)
    try:
        for keys, x in ((["b"], xs[0][1:]), (["b"], xs[1][:1]), (["b"], xs[2][1:])):
            ref.begin_call(keys, keys, 1, x, 500.0)
            expect_b = model(x, torch.full((1,), 500), torch.tensor([1]))
            ref.end_call()
    finally:
        handle.detach()
    # The same three calls for B alone: its lazy third call reads the cache of its second.
    torch.testing.assert_close(lazy[1:], expect_b, atol=1e-6, rtol=0)


class Recorder:
    """A model callable that keeps every call's (timestep, output)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, y):
        out = self.fn(x, t, y)
        self.calls.append((float(t.reshape(-1)[0]), out.clone()))
        return out


@pytest.mark.parametrize("inner", [lambda: Fora(2), lambda: DeltaDiT(3, 2, 500, 2),
                                   lambda: LearnedGates(random_gates(), 0.5)], ids=["fora", "delta-dit", "gates"])
def test_step_range_computes_outside_and_is_bit_identical_before_it(inner):
    """StepRange over timesteps [300, 700]: every call before the range returns exactly the exact model's
    output, no module is lazy outside the range and some are inside; an empty range is the exact run."""
    model = tiny_dit()
    exact = Recorder(model)
    ref = sample(exact, Y)
    with LazyRun(model, StepRange(inner(), 300, 700)) as run:
        ranged = Recorder(run)
        out = sample(ranged, Y)
    assert not torch.equal(out, ref)
    timesteps = run.report["streams"][0]["timesteps"]
    lazy = run.report["streams"][0]["lazy"].sum(dim=(1, 2))                       # per evaluation
    inside = [300 <= t <= 700 for t in timesteps]
    assert all(n == 0 for n, i in zip(lazy.tolist(), inside) if not i), (timesteps, lazy)
    assert sum(n for n, i in zip(lazy.tolist(), inside) if i) > 0
    before = [k for k, (t, _) in enumerate(exact.calls) if t > 700]
    assert before and all(torch.equal(exact.calls[k][1], ranged.calls[k][1]) for k in before)
    with LazyRun(model, StepRange(inner(), 2000, 3000)) as run:
        assert torch.equal(sample(run, Y), ref)
    assert run.report["ratio"] == 0.0
