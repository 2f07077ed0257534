"""DyDiT: the official checkpoint layout loads from its keys alone and gives the outputs of the official
equations; the sliced inference path equals the masked equations and computes what its MACs say."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from lazydit.lazy_core.models.checkpoint import load_model, read_checkpoint
from lazydit.lazy_core.models.dit import CheckpointError, DiT, DiTConfig
from lazydit.lazy_core.models.dydit import DyDiT, dense_macs, macs, summarize

CONFIG = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4,
                   num_classes=10, learn_sigma=True)


def official_state_dict(config, seed=0):
    """Random weights under the key names of the official DyDiT (DyDiT/models.py): DiT's keys, plus per
    block attn_rate.router, mlp_rate.router (heads - 1 outputs) and token_selection.mlp_head.{0,2}."""
    g = torch.Generator().manual_seed(seed)
    d, H, depth = config.hidden_size, config.num_heads, config.depth
    sd = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in DiT(config).state_dict().items()}
    for i in range(depth):
        for router in ("attn_rate", "mlp_rate"):
            sd[f"blocks.{i}.{router}.router.weight"] = torch.randn(H - 1, d, generator=g) * 0.3
            sd[f"blocks.{i}.{router}.router.bias"] = torch.randn(H - 1, generator=g)
        sd[f"blocks.{i}.token_selection.mlp_head.0.weight"] = torch.randn(d // 16, d, generator=g) * 0.3
        sd[f"blocks.{i}.token_selection.mlp_head.0.bias"] = torch.randn(d // 16, generator=g) * 0.1
        sd[f"blocks.{i}.token_selection.mlp_head.2.weight"] = torch.randn(1, d // 16, generator=g)
        sd[f"blocks.{i}.token_selection.mlp_head.2.bias"] = torch.zeros(1)
    return sd


def official_forward(sd, config, x, t, y):
    """The official DyDiT inference equations (eval mode: hard masks, sigmoid > 0.5, no noise), written out
    from the raw tensors: heads masked after attention, MLP channel groups after fc1, tokens' MLP output
    multiplied by the token mask. Returns (output, head masks, group masks, token masks)."""
    def lin(h, name):
        return F.linear(h, sd[f"{name}.weight"], sd.get(f"{name}.bias"))

    def ln(h):
        return F.layer_norm(h, h.shape[-1:], eps=1e-6)

    p, d, H = config.patch_size, config.hidden_size, config.num_heads
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    h = h + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = lin(F.silu(lin(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]
    B, N, _ = h.shape
    hd = d // H
    heads_all, groups_all, tokens_all = [], [], []
    for i in range(config.depth):
        b = f"blocks.{i}"
        mod = lin(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.unsqueeze(1) for m in mod)
        heads = torch.cat([torch.ones(B, 1), (torch.sigmoid(lin(t_emb, f"{b}.attn_rate.router")) > 0.5).float()], 1)
        a = ln(h) * (1 + scale1) + shift1
        qkv = lin(a, f"{b}.attn.qkv").reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v                # (B, H, N, hd)
        attn = attn.transpose(1, 2).reshape(B, N, d)
        attn = attn * heads.repeat_interleave(hd, dim=1).unsqueeze(1)
        h = h + gate1 * lin(attn, f"{b}.attn.proj")
        token = (torch.sigmoid(lin(F.relu(lin(h, f"{b}.token_selection.mlp_head.0")),
                                   f"{b}.token_selection.mlp_head.2")) > 0.5).float()   # (B, N, 1)
        groups = torch.cat([torch.ones(B, 1), (torch.sigmoid(lin(t_emb, f"{b}.mlp_rate.router")) > 0.5).float()], 1)
        m = lin(ln(h) * (1 + scale2) + shift2, f"{b}.mlp.fc1")
        m = m * groups.repeat_interleave(m.shape[-1] // H, dim=1).unsqueeze(1)
        m = lin(F.gelu(m, approximate="tanh"), f"{b}.mlp.fc2")
        h = h + token * (gate2 * m)
        heads_all.append(heads)
        groups_all.append(groups)
        tokens_all.append(token.squeeze(-1))
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(ln(h) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1), "final_layer.linear")
    side = config.input_size // p
    C = sd["final_layer.linear.weight"].shape[0] // (p * p)
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(B, side, side, p, p, C)).reshape(B, C, side * p, side * p)
    return out, torch.stack(heads_all, 1), torch.stack(groups_all, 1), torch.stack(tokens_all, 1)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A checkpoint as the official train.py saves it: model, ema, opt and its argparse options."""
    sd = official_state_dict(CONFIG)
    path = tmp_path_factory.mktemp("dydit") / "dydit_official.pt"
    torch.save({"model": sd, "ema": sd, "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "args": argparse.Namespace(model="DiT-S/2", token_ratio=0.5)}, path)
    return path, sd


def inputs(rows=4, seed=1, t=500):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, 8, 8, generator=g)
    return x, torch.full((rows,), float(t)), torch.arange(rows) % 10


def test_official_layout_loads_from_keys_and_matches_official_equations(official_file):
    path, sd = official_file
    model = load_model(path)
    assert isinstance(model, DyDiT) and model.config.depth == 3 and model.config.hidden_size == 64
    for t in (50, 500, 950):
        x, tt, y = inputs(t=t)
        want, heads, groups, tokens = official_forward(sd, CONFIG, x, tt, y)
        # The random routers must make real decisions, or the check proves nothing about masking.
        assert 0 < heads.mean() < 1 and 0 < groups.mean() < 1 and 0 < tokens.mean() < 1
        with torch.no_grad():
            for route in ("sliced", "masked"):
                got = model(x, tt, y, route=route)
                torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=f"route {route}, t {t}")


def test_official_layout_mismatches_are_named(tmp_path, official_file):
    _, sd = official_file
    broken = {k: v for k, v in sd.items() if k != "blocks.1.mlp_rate.router.bias"}
    torch.save({"ema": broken}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"DyDiT.*missing: blocks\.1\.mlp_rate\.router\.bias"):
        read_checkpoint(tmp_path / "missing.pt")
    wrong = dict(sd, **{"blocks.0.mlp_rate.router.weight": torch.zeros(5, 64)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"wrong shape: blocks\.0\.mlp_rate\.router\.weight \(5, 64\)"):
        read_checkpoint(tmp_path / "wrong.pt")


def test_other_pickled_objects_stay_refused(tmp_path, official_file):
    """Allowing the official files' argparse options lets no other object through."""
    _, sd = official_file
    torch.save({"ema": sd, "args": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(tmp_path / "module.pt")


def test_per_row_timesteps_fall_back_to_the_masked_equations(official_file):
    path, sd = official_file
    model = load_model(path)
    x, _, y = inputs()
    t = torch.tensor([20.0, 400.0, 400.0, 990.0])
    stats = []
    with torch.no_grad():
        got = model(x, t, y, route="sliced", stats=stats)
    torch.testing.assert_close(got, official_forward(sd, CONFIG, x, t, y)[0], atol=2e-5, rtol=1e-4)
    assert stats[0].timestep is None


def test_sliced_widths_and_macs_follow_the_routers(official_file):
    """The sliced path's record is the official masks' counts, and its MACs are what those widths cost."""
    path, sd = official_file
    model = load_model(path)
    x, t, y = inputs()
    _, heads, groups, tokens = official_forward(sd, CONFIG, x, t, y)
    stats = []
    with torch.no_grad():
        model(x, t, y, route="sliced", stats=stats)
    call = stats[0]
    assert call.heads == [int(h) for h in heads[0].sum(1)] and call.groups == [int(g) for g in groups[0].sum(1)]
    assert call.tokens == pytest.approx([float(v) for v in tokens.mean(dim=(0, 2))])
    report = summarize(CONFIG, stats)
    want = sum(macs(CONFIG, h, g, s) for h, g, s in zip(call.heads, call.groups, call.tokens)) * 4
    assert report["macs"] == pytest.approx(want) and report["ratio"] < 1
    assert report["shares"].shape == (3, 3, 1)


def test_dense_macs_equal_the_engines_count():
    from lazydit.lazy_core.engine.proxies import module_macs

    assert dense_macs(CONFIG) == sum(module_macs(DiT(CONFIG).blocks[:1], CONFIG.tokens)[0])


def test_sliced_weights_are_cached_per_width_and_refreshed_when_weights_change(official_file):
    path, _ = official_file
    model = load_model(path)
    x, t, y = inputs()
    with torch.no_grad():
        first = model(x, t, y)
        attn = model.blocks[0].attn
        cached = dict(attn.slices.entries)
        assert len(cached) == 1
        model(x, t, y)
        assert attn.slices.entries.keys() == cached.keys()          # same widths: the same slices
        model.blocks[0].attn.qkv.weight.mul_(2)                    # e.g. a weight patch in place
        second = model(x, t, y)
    assert len(attn.slices.entries) == 2 and not torch.allclose(first, second)


def test_training_route_masks_carry_gradients_to_every_router(official_file):
    path, _ = official_file
    model = load_model(path).train().requires_grad_(True)
    x, t, y = inputs()
    masks = []
    out = model(x, t, y, route="masked", noise=True, masks=masks)
    from lazydit.lazy_core.models.dydit import flops_ratio
    ratio = flops_ratio(CONFIG, *masks[0])
    assert ratio.shape == (4,) and bool(((ratio > 0) & (ratio <= 1)).all())
    (out.square().mean() + ratio.mean()).backward()
    for i, block in enumerate(model.blocks):
        for router in (block.attn_rate.router, block.mlp_rate.router, block.token_selection.mlp_head[2]):
            assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0, f"block {i}"


def test_dydit_is_its_own_architecture_for_the_lazy_caches(official_file):
    """The engine stands in for DyDiT's attention and MLP as for DiT's, under its own architecture name, so
    gates fitted on the dense DiT are refused on it by name."""
    from lazydit.lazy_core.engine.gates import GateBank, GateFileError, GateInfo
    from lazydit.lazy_core.engine.proxies import describe

    model = load_model(official_file[0])
    assert describe(model) == ("dydit", 3, 64)
    dense = GateBank(GateInfo("dit", 3, 64, [0, 999]))
    with pytest.raises(GateFileError, match="fit dit with depth 3 / width 64, but the model is dydit"):
        dense.check_fits(*describe(model))


#################################################################################
#                   A sensitivity schedule measured on DyDiT                    #
#################################################################################

STEPS = 8


@pytest.fixture(scope="module")
def dy_schedule(official_file):
    """A whole-step schedule with chains measured on the DyDiT sampled dynamically, as the Sensitivity
    Schedule node measures (smaller: 8 steps, chains of 2, 2 images), calibrated from its plan."""
    from lazydit.lazy_core.training.calibrate import calibrate
    from lazydit.lazy_core.training.sensitivity import measure, schedule_bank

    model = load_model(official_file[0]).eval()
    costs = measure(model, steps=STEPS, images=2, chain=2, modules=False, history="periodic")
    bank = schedule_bank(model, costs)
    bank.info.calibration, per_steps = calibrate(model, bank, step_counts=(STEPS,))
    bank.info.recipe["calibration_per_steps"] = per_steps
    return model, bank


def dy_sample(model, policy=None, options=None, threshold=None):
    """Four images of DDIM 8 with CFG 4, dynamically; with a policy through a LazyRun. Returns (latents,
    the DyDiT's call records, the run's report or None)."""
    from lazydit.lazy_core.engine.run import LazyRun
    from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps

    g = torch.Generator().manual_seed(3)
    noise, y = torch.randn(4, 4, 8, 8, generator=g), torch.arange(4)
    calls = []

    def forward(x, t, yy):
        return model(x, t, yy, stats=calls)
    with torch.no_grad():
        if policy is None:
            return GaussianDiffusion().ddim_sample(forward, noise, y, STEPS, 4.0, null_label=10), calls, None
        kw = {} if options is None else {"options": options}
        with LazyRun(model, policy, forward=forward, streams=("positive", "negative"),
                     timesteps=space_timesteps(STEPS)[::-1], **kw) as run:
            z = GaussianDiffusion().ddim_sample(run, noise, y, STEPS, 4.0, null_label=10)
    return z, calls, run.report


def schedule_options(bank):
    from lazydit.lazy_core.engine.cache import CacheOptions

    return CacheOptions(reuse=bank.info.recipe["reuse"], order=bank.info.recipe["order"],
                        max_lazy_steps=bank.longest_chain)


def test_schedule_on_dydit_with_nothing_lazy_is_bit_identical_to_dydit_alone(dy_schedule):
    from lazydit.lazy_core.engine.policies import LearnedGates, NeverLazy

    model, bank = dy_schedule
    alone, calls, _ = dy_sample(model)
    for policy in (NeverLazy(), LearnedGates(bank, -1e9)):        # through the proxies, nothing lazy
        z, lazy_calls, report = dy_sample(model, policy, schedule_options(bank))
        assert torch.equal(z, alone) and report["ratio"] == 0
        assert summarize(CONFIG, lazy_calls)["macs"] == summarize(CONFIG, calls)["macs"]


def test_schedule_on_dydit_is_lazy_at_its_planned_share_and_counts_only_what_ran(dy_schedule):
    """The run is lazy on whole steps at the calibrated share; a lazy step's calls count no attention and
    no MLP MACs (the routers still run), a computed step's count DyDiT's own widths."""
    from lazydit.lazy_core.engine.policies import LearnedGates

    model, bank = dy_schedule
    assert bank.info.architecture == "dydit" and bank.longest_chain == 2
    threshold = bank.threshold_for(0.8, STEPS)
    alone, _, _ = dy_sample(model)
    z, calls, report = dy_sample(model, LearnedGates(bank, threshold, 0.8), schedule_options(bank))
    assert 0 < report["ratio"] < 1
    assert report["ratio"] == pytest.approx(bank.expected_ratio(threshold, STEPS), abs=1e-6)
    assert not torch.equal(z, alone) and torch.isfinite(z).all()
    lazy = report["streams"][0]["lazy"]                                  # (steps, depth, 2) lazy rows
    assert len(calls) == STEPS
    routers = macs(CONFIG, 0, 0, 0.0)                                    # no head, no group, no token
    want = 0.0
    for step, call in enumerate(calls):
        whole = bool(lazy[step].all())
        assert whole or not lazy[step].any(), "a schedule is lazy on whole steps"
        assert call.attention == [0.0 if whole else 1.0] * CONFIG.depth
        if whole:
            assert call.tokens == [0.0] * CONFIG.depth
            want += routers * CONFIG.depth * call.rows
        else:
            want += sum(macs(CONFIG, h, g, s) for h, g, s in zip(call.heads, call.groups, call.tokens)) * call.rows
    assert summarize(CONFIG, calls)["macs"] == pytest.approx(want)


def test_rows_computing_alone_get_their_own_widths_and_token_masks(official_file):
    """When only some rows compute, the per-row arguments of DyDiT's modules (token masks; head and group
    masks when rows' timesteps differ) follow them: those rows come out as if the whole batch computed."""
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.policies import Policy
    from lazydit.lazy_core.engine.run import LazyRun

    class EvenRows(Policy):
        lazy_possible = True

        def compute_mask(self, call, block, module, z):
            return [i % 2 == 0 for i in range(call.rows)]

    model = load_model(official_file[0]).eval()
    x, _, y = inputs()
    for t2 in (torch.full((4,), 400.0), torch.tensor([400.0, 400.0, 420.0, 430.0])):    # sliced, masked
        with torch.no_grad():
            want = model(x * 0.9, t2, y)
            with LazyRun(model, EvenRows(), CacheOptions(reuse="repeat"), forward=model) as run:
                run(x, torch.full((4,), 500.0), y)                  # first call: every row computes
                got = run(x * 0.9, t2, y)
        assert run.report["ratio"] == pytest.approx(0.25)           # odd rows lazy on the second call
        torch.testing.assert_close(got[::2], want[::2], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got[1::2], want[1::2], atol=1e-3)
