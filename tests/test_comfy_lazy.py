"""LazyDiT inside the real ComfyUI: the hook, the cache's run lifecycle and the sampler matrix, on a small
random-weight PixArt-Σ (ComfyUI's own model code) and a small DiT (the pack's loader)."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("comfy")

SIDE = 48                   # latent side: PixArt's pos-embed needs >= 48 (384 px)
PIXART = {"image_model": "pixart_sigma", "depth": 3, "hidden_size": 64, "num_heads": 4, "patch_size": 2,
          "in_channels": 4, "caption_channels": 32, "model_max_length": 120, "micro_condition": False}


@pytest.fixture(scope="module")
def pixart():
    """A narrow PixArt-Σ built by ComfyUI's supported_models, random weights, in a ModelPatcher."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    mc = comfy.supported_models.PixArtSigma(dict(PIXART))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if "final_layer" in name else 0.1))
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def gates_for(arch, depth, width, buckets=20, seed=1, scale=4.0):
    """Random gates (score ~ half lazy at 0.5) wrapped the way Load Lazy Gates wraps them."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from lazydit.lazy_core.engine.gates import GateBank, GateInfo

    g = torch.Generator().manual_seed(seed)
    timesteps = [round(i * 999 / (buckets - 1)) for i in range(buckets)]
    bank = GateBank(GateInfo(arch, depth, width, timesteps), scale * torch.randn(depth, 2, buckets, width, generator=g))
    return comfy.model_patcher.ModelPatcher(bank, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def apply(model, gates, laziness=0.5, max_lazy_steps=1):
    from lazydit.nodes.lazy_nodes import ApplyLazyGates

    return ApplyLazyGates.execute(model, gates, laziness, max_lazy_steps, "auto", "auto").args[0]


def prompt(tokens, seed, rows=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(rows, tokens, PIXART["caption_channels"], generator=g), {}]]


def sample(model, positive, negative, steps=8, cfg=4.0, sampler="euler", scheduler="normal", rows=1, side=SIDE,
           seed=0, **kw):
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(rows, 4, side, side)}
    if kw:
        (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent,
                                             **kw)
    else:
        (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent)
    return out["samples"]


def report(model):
    from lazydit.nodes.lazy_hook import session_of

    return session_of(model).report


POS, NEG = prompt(6, 1), prompt(6, 2)          # equal token counts: one batched call per step


@pytest.mark.parametrize("negative_tokens", [6, 3], ids=["batched", "split"])
def test_laziness_zero_is_bit_identical(pixart, negative_tokens):
    """Laziness 0 reproduces the unpatched model exactly, with cond/uncond batched or in separate calls."""
    neg = prompt(negative_tokens, 2)
    ref = sample(pixart, POS, neg)
    out = sample(apply(pixart, gates_for("pixart", 3, 64), laziness=0.0), POS, neg)
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max()}"


def test_gates_at_zero_threshold_compute_everything_exactly(pixart):
    """Gates that always vote compute leave the output bit-identical (the stock forward runs under proxies)."""
    gates = gates_for("pixart", 3, 64, scale=0.0)     # score 0.5 everywhere
    ref = sample(pixart, POS, NEG)
    patched = apply(pixart, gates, laziness=0.5)      # 0.5 >= 0.5: compute
    assert torch.equal(sample(patched, POS, NEG), ref)
    assert report(patched)["ratio"] == 0.0


@pytest.mark.parametrize("negative_tokens", [6, 3], ids=["batched", "split"])
def test_lazy_run_reports_each_stream(pixart, negative_tokens):
    """At laziness 0.5 random gates make modules lazy in both streams; output stays finite and moves."""
    neg = prompt(negative_tokens, 2)
    ref = sample(pixart, POS, neg)
    patched = apply(pixart, gates_for("pixart", 3, 64))
    out = sample(patched, POS, neg)
    r = report(patched)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert sorted(s["label"] for s in r["streams"]) == ["negative", "positive"]
    assert all(len(s["timesteps"]) == 8 for s in r["streams"]), "one evaluation per step and stream"
    assert 0.05 < r["ratio"] <= 0.5, r["text"]
    for s in r["streams"]:
        assert s["lazy"][0].sum() == 0, "the first evaluation of every row computes"


def test_rows_are_independent(pixart):
    """A row's output does not change when another row's prompt does."""
    patched = apply(pixart, gates_for("pixart", 3, 64))
    a = prompt(6, 1, rows=2)
    b = [[a[0][0].clone(), {}]]
    b[0][0][1] = torch.randn(6, PIXART["caption_channels"], generator=torch.Generator().manual_seed(9))
    neg = prompt(6, 2, rows=2)
    out_a = sample(patched, a, neg, rows=2)
    ratio_a = report(patched)["ratio"]
    out_b = sample(patched, b, neg, rows=2)
    assert 0 < ratio_a
    torch.testing.assert_close(out_a[0], out_b[0], atol=1e-5, rtol=0)
    assert not torch.allclose(out_a[1], out_b[1], atol=1e-3)


def test_cache_freed_after_run_and_after_interrupt(pixart):
    """The run state is dropped after a run, and after a run that fails mid-way; the blocks are restored."""
    import comfy.sample
    import comfy.samplers
    from lazydit.nodes.lazy_hook import session_of

    patched = apply(pixart, gates_for("pixart", 3, 64))
    blocks = pixart.model.diffusion_model.blocks
    sample(patched, POS, NEG)
    assert session_of(patched).state is None

    class Stop(Exception):
        pass

    def stop_at_3(step, *args):
        if step == 3:
            raise Stop

    noise = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with pytest.raises(Stop):
        comfy.sample.sample(patched, noise, 8, 4.0, "euler", "normal", POS, NEG, torch.zeros_like(noise),
                            callback=stop_at_3, disable_pbar=True, seed=0)
    assert session_of(patched).state is None
    assert pixart.model.diffusion_model.blocks is blocks
    assert len(report(patched)["streams"][0]["timesteps"]) == 4, "the report covers the interrupted run"


def test_split_sampler_runs_are_separate(pixart):
    """KSamplerAdvanced 0-4 then 4-8 are two runs: the second starts from an empty cache."""
    import nodes as comfy_nodes

    patched = apply(pixart, gates_for("pixart", 3, 64))
    adv = comfy_nodes.KSamplerAdvanced()
    latent = {"samples": torch.zeros(1, 4, SIDE, SIDE)}
    (half,) = adv.sample(patched, "enable", 0, 8, 4.0, "euler", "normal", POS, NEG, latent, 0, 4, "enable")
    first = report(patched)
    (full,) = adv.sample(patched, "disable", 0, 8, 4.0, "euler", "normal", POS, NEG, half, 4, 8, "disable")
    second = report(patched)
    assert first is not second
    assert [len(s["timesteps"]) for s in second["streams"]] == [4, 4]
    assert all(s["lazy"][0].sum() == 0 for s in second["streams"]), "no cache crosses runs"
    assert torch.isfinite(full["samples"]).all()


def test_batch_and_resolution_changes_between_runs(pixart):
    """The same patched model samples at another batch size and resolution without stale state."""
    patched = apply(pixart, gates_for("pixart", 3, 64))
    sample(patched, POS, NEG)
    out = sample(patched, prompt(6, 1, rows=2), prompt(6, 2, rows=2), rows=2, side=56)
    assert out.shape == (2, 4, 56, 56) and torch.isfinite(out).all()
    assert {s["rows"] for s in report(patched)["streams"]} == {2}


def test_cfg_one_runs_only_the_positive_stream(pixart):
    """With cfg = 1 ComfyUI skips the negative prompt; only one stream is cached and reported."""
    patched = apply(pixart, gates_for("pixart", 3, 64))
    out = sample(patched, POS, NEG, cfg=1.0)
    assert torch.isfinite(out).all()
    assert [s["label"] for s in report(patched)["streams"]] == ["positive"]


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "ddim"])
def test_sampler_matrix(pixart, sampler):
    """Multi-evaluation and multistep samplers run; heun evaluates twice per step (each one a cache step)."""
    patched = apply(pixart, gates_for("pixart", 3, 64))
    scheduler = "ddim_uniform" if sampler == "ddim" else "normal"
    out = sample(patched, POS, NEG, steps=6, sampler=sampler, scheduler=scheduler)
    assert torch.isfinite(out).all()
    import comfy.samplers

    steps = len(comfy.samplers.calculate_sigmas(pixart.get_model_object("model_sampling"), scheduler, 6)) - 1
    evaluations = len(report(patched)["streams"][0]["timesteps"])
    assert evaluations == (2 * steps - 1 if sampler == "heun" else steps)    # heun's last step is euler


def test_clone_shares_gate_weights(pixart):
    """clone() of a patched model shares the gate module (no copy) and keeps tensors out of model_options."""
    gates = gates_for("pixart", 3, 64)
    patched = apply(pixart, gates)
    clone = patched.clone()
    assert clone.additional_models["lazydit_gates"][0].model is gates.model
    import functools

    found, seen = [], set()

    def walk(x, path):
        """Every tensor deepcopy would copy: through containers, functools.partial (where a policy's gate
        bank sits: partial(LearnedGates, bank, ...)), modules and plain objects; objects whose
        __deepcopy__ returns themselves are shared, not copied."""
        if id(x) in seen or isinstance(x, (str, bytes, int, float, bool, type(None), type)):
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            found.append(path)
        elif isinstance(x, torch.nn.Module):
            found.extend(f"{path}.{name}" for name, _ in [*x.named_parameters(), *x.named_buffers()])
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}[{k!r}]")
        elif isinstance(x, (list, tuple, set)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, functools.partial):
            for i, v in enumerate((x.func, *x.args, *x.keywords.values())):
                walk(v, f"{path}.partial[{i}]")
        elif hasattr(x, "__dict__") and getattr(type(x), "__deepcopy__", None) is None:
            walk(vars(x), f"{path}.{type(x).__name__}")
    walk(clone.model_options, "model_options")
    assert not found, f"model_options must stay tensor-free (ModelPatcher.clone deep-copies it): {found[:3]}"


def test_removing_the_node_leaves_no_trace(pixart):
    """After sampling a patched clone, the original MODEL samples exactly as before and carries no hook."""
    from lazydit.nodes.lazy_hook import KEY

    ref = sample(pixart, POS, NEG)
    sample(apply(pixart, gates_for("pixart", 3, 64)), POS, NEG)
    assert torch.equal(sample(pixart, POS, NEG), ref)
    assert all(KEY not in w for w in pixart.wrappers.values())
    assert pixart.get_attachment(KEY) is None


def test_mismatched_gates_are_refused(pixart):
    """Gates for another depth/width raise an error naming both shapes and the fix."""
    from lazydit.lazy_core.engine.gates import GateFileError

    with pytest.raises(GateFileError, match="depth 28 / width 1152.*depth 3 / width 64.*train new ones"):
        apply(pixart, gates_for("pixart", 28, 1152, buckets=2))
    with pytest.raises(GateFileError, match="fit dit"):
        apply(pixart, gates_for("dit", 3, 64))


def apply_delta(model, share=0.67, boundary=0.5, interval=2):
    from lazydit.nodes.sibling_nodes import DeltaDiTNode

    return DeltaDiTNode.execute(model, share, boundary, interval).args[0]


def apply_fora(model, interval=3):
    from lazydit.nodes.sibling_nodes import ForaNode

    return ForaNode.execute(model, interval).args[0]


SIBLINGS = {"delta-dit": apply_delta, "fora": apply_fora}


@pytest.mark.parametrize("name", SIBLINGS)
def test_siblings_exact_when_disabled(pixart, name):
    """Δ-DiT and FORA with interval 1 (refresh every step) are bit-identical to the unpatched model."""
    ref = sample(pixart, POS, NEG)
    out = sample(SIBLINGS[name](pixart, interval=1), POS, NEG)
    assert torch.equal(out, ref)


def test_fora_skip_pattern(pixart):
    """FORA interval 3: steps 0, 3, 6 compute every module; the others are lazy in every row and stream."""
    patched = apply_fora(pixart, 3)
    sample(patched, POS, prompt(3, 2))                      # split streams
    for s in report(patched)["streams"]:
        per_step = (s["lazy"].sum(dim=(1, 2)) / (s["rows"] * 3 * 2)).tolist()
        assert per_step == [0.0 if i % 3 == 0 else 1.0 for i in range(8)], per_step


def test_lazy_pixart_modules_skip_their_norms(pixart, monkeypatch):
    """On ComfyUI's PixArt block, FORA's lazy steps run neither norm1 nor norm2 (only the 3 computed steps
    of 8 do), and the samples are bit-identical to FORA deciding after the norms ran."""
    from lazydit.lazy_core.engine.policies import Fora

    ran = []
    blocks = pixart.model.diffusion_model.blocks
    hooks = [m.register_forward_hook(lambda mod, args, out: ran.append(1)) for b in blocks for m in (b.norm1, b.norm2)]
    try:
        out = sample(apply_fora(pixart, 3), POS, NEG)
        fast = len(ran)
        monkeypatch.setattr(Fora, "reads_input", True)
        ref = sample(apply_fora(pixart, 3), POS, NEG)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, ref)
    assert (fast, len(ran) - fast) == (3 * 3 * 2, 8 * 3 * 2)


def test_delta_dit_skip_pattern(pixart):
    """Δ-DiT, 2 of 3 blocks, boundary 50 %, interval 2: rear blocks lazy on odd steps of the first half,
    front blocks on odd steps of the second half, and the first step after the boundary computes."""
    patched = apply_delta(pixart, share=0.67, boundary=0.5, interval=2)
    sample(patched, POS, NEG)
    s = report(patched)["streams"][0]
    lazy_blocks = [[b for b in range(3) if s["lazy"][i, b, 0] > 0] for i in range(8)]
    # euler/normal, 8 steps: the boundary falls between evaluations 3 and 4.
    assert lazy_blocks == [[], [1, 2], [], [1, 2], [], [0, 1], [], [0, 1]], lazy_blocks
    assert torch.equal(s["lazy"][:, :, 0], s["lazy"][:, :, 1])


@pytest.mark.parametrize("name", SIBLINGS)
def test_siblings_isolate_prompts_and_runs(pixart, name):
    """Rows stay independent and every run starts from an empty cache."""
    patched = SIBLINGS[name](pixart)
    a = prompt(6, 1, rows=2)
    b = [[a[0][0].clone(), {}]]
    b[0][0][1] = torch.randn(6, PIXART["caption_channels"], generator=torch.Generator().manual_seed(9))
    neg = prompt(6, 2, rows=2)
    out_a = sample(patched, a, neg, rows=2)
    out_b = sample(patched, b, neg, rows=2)
    torch.testing.assert_close(out_a[0], out_b[0], atol=1e-5, rtol=0)
    assert all(s["lazy"][0].sum() == 0 for s in report(patched)["streams"])
    again = sample(patched, a, neg, rows=2)
    assert torch.equal(again, out_a), "same inputs, same run: same image"


@pytest.mark.parametrize("name", SIBLINGS)
@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_siblings_sampler_matrix(pixart, name, sampler):
    """Δ-DiT and FORA run under multi-evaluation and multistep samplers with a finite result."""
    out = sample(SIBLINGS[name](pixart), POS, NEG, steps=6, sampler=sampler)
    assert torch.isfinite(out).all()


def test_report_node_heatmap_and_text(pixart, tmp_path):
    """The report node returns a heat-map IMAGE with a panel per stream and a text summary of the run."""
    from lazydit.nodes.lazy_nodes import LazyReport

    patched = apply(pixart, gates_for("pixart", 3, 64))
    out = sample(patched, POS, NEG)
    image, text = LazyReport.execute(patched, {"samples": out}).args
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert "positive" in text and "negative" in text and "lazy" in text
    r = report(patched)
    assert f"{r['ratio']:.1%}" in text
    from PIL import Image
    Image.fromarray((image[0].numpy() * 255).astype("uint8")).save(tmp_path / "heatmap.png")
    with pytest.raises(ValueError, match="no LazyDiT patch"):
        LazyReport.execute(pixart, {"samples": out})



def test_gate_training_on_pixart_prompts(pixart, comfy):
    """Data-free training from prompts on PixArt (the Train node's denoiser): trained gates beat zero gates on
    a held-out batch, fit the model and make it lazy; a missing prompt input is named in the node's error."""
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.models.diffusion import GaussianDiffusion
    from lazydit.lazy_core.training import train_gates as tg
    from lazydit.lazy_core.training.calibrate import calibrate
    from lazydit.nodes.lazy_nodes import GATES  # noqa: F401  (registers the layout of ComfyUI's PixArt block)
    from lazydit.nodes.train_node import TrainLazyGates, make_denoiser

    latent = {"samples": torch.zeros(1, 4, SIDE, SIDE)}
    with pytest.raises(ValueError, match="connect negative"):
        TrainLazyGates.execute(pixart, "all", 10, 4, 1e-3, "8", 0, "pixart_gates", POS, None, latent)
    prompts = POS + prompt(3, 5)                       # two prompts of other token counts, as Combine makes
    den = make_denoiser(pixart, "all", prompts, NEG, latent)
    args = tg.parser().parse_args(["--model", "-", "--out", "-", "--iters", "30", "--batch", "4", "--pool", "8",
                                   "--step-counts", "8", "--buckets", "5", "--rho", "0", "--lr", "3e-2",
                                   "--objective", "local"])
    with torch.inference_mode(False), torch.enable_grad():
        bank = tg.train(den, args)
    assert (bank.info.architecture, bank.info.depth, bank.info.width) == ("pixart", 3, 64)
    assert bank.info.tokens == (SIDE // 2) ** 2, "the gate file records the token count trained at"

    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 4, SIDE, SIDE, generator=g)
    t_a, t_b = torch.full((4,), 571), torch.full((4,), 428)
    d = GaussianDiffusion()

    def held_out_mse(gates):
        with torch.no_grad():
            return float(tg.gate_loss(den, gates, x, t_a, lambda eps: tg.ddim_to(d, x, t_a, t_b, eps), t_b,
                                      prompts[1][0].expand(4, -1, -1), 0.0)[1])
    start, end = held_out_mse(GateBank(bank.info)), held_out_mse(bank)
    assert end < start, f"held-out distillation MSE {start:.3g} (zero gates) -> {end:.3g} (trained)"

    table, _ = calibrate(den, bank, step_counts=(8,), thresholds=(1.0,), rows=2)
    assert table[0][1] > 0, "laziness 1 makes trained gates lazy somewhere"

    # The sensitivity objective on the same prompts: one call per prompt and one for the negative.
    sens = tg.parser().parse_args(["--model", "-", "--out", "-", "--images", "4", "--measure-steps", "6",
                                   "--buckets", "5"])
    with torch.inference_mode(False), torch.enable_grad():
        costs_bank = tg.train(den, sens)
    assert costs_bank.info.score == "log-cost" and torch.isfinite(costs_bank.prior).all()
    top, _ = calibrate(den, costs_bank, step_counts=(6,), thresholds=(float(costs_bank.prior.max()) + 1,), rows=2)
    assert top[0][1] > 0.3, f"at a price above every cost the plan is lazy every other step: {top}"


def timestep_range(cond, start, end):
    import nodes as comfy_nodes

    return comfy_nodes.ConditioningSetTimestepRange().set_range(cond, start, end)[0]


@pytest.mark.parametrize("patch", ["fora", "gates"])
def test_a_prompt_joining_and_leaving_mid_run(pixart, patch):
    """Conditionings with a timestep range: prompt B joins at 50 % of the run while the others are lazy, and
    prompt C leaves at 50 %. B's first evaluation computes; A and the negative stay lazy across both layout
    changes (their cache is carried into the new batch layout); the run finishes with finite output."""
    patched = apply_fora(pixart, 2) if patch == "fora" else apply(pixart, gates_for("pixart", 3, 64), 1.0)
    a, b, c = prompt(6, 1), prompt(6, 3), prompt(6, 4)
    positive = a + timestep_range(b, 0.5, 1.0) + timestep_range(c, 0.0, 0.5)
    out = sample(patched, positive, NEG, steps=10)
    assert torch.isfinite(out).all()
    streams = report(patched)["streams"]
    assert len(streams) == 4, [s["label"] for s in streams]
    steps = sorted(s["lazy"].shape[0] for s in streams)
    assert steps[0] < 10 and steps[1] < 10 and steps[-1] == 10, steps       # B and C run part of the way
    for s in streams:
        assert s["lazy"][0].sum() == 0, "a stream's first evaluation computes"
    full = [s for s in streams if s["lazy"].shape[0] == 10]
    assert all(s["lazy"][6:].sum() > 0 for s in full), "lazy after the layout changed"


def ranged(name, model, start, end):
    """The node for `name` (gates / delta-dit / fora) with a start/end percent."""
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.sibling_nodes import DeltaDiTNode, ForaNode

    if name == "gates":
        return ApplyLazyGates.execute(model, gates_for("pixart", 3, 64), 1.0, 1, "auto", "auto", "repeat",
                                      start, end).args[0]
    if name == "delta-dit":
        return DeltaDiTNode.execute(model, 0.67, 0.5, 2, start, end).args[0]
    return ForaNode.execute(model, 2, "repeat", start, end).args[0]


def denoised_per_step(model, steps=8):
    """Every step's x0 prediction, through core's comfy.sample.sample (what KSampler calls)."""
    import comfy.sample

    seen = []
    latent = torch.zeros(1, 4, SIDE, SIDE)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(model, noise, steps, 4.0, "euler", "normal", POS, NEG, latent,
                              callback=lambda step, x0, x, total: seen.append(x0.clone()), disable_pbar=True, seed=0)
    return out, seen


@pytest.mark.parametrize("name", ["gates", "delta-dit", "fora"])
def test_step_range_keeps_the_rest_exact(pixart, name):
    """start/end percent 0.4-0.8 on Apply Lazy Gates, Δ-DiT and FORA: no module is lazy at a step outside the
    range and some are inside; every step before the range is bit-identical to the unpatched model's; a range
    past the last step (1-1) is the unpatched run."""
    from lazydit.nodes.lazy_hook import step_range

    ref, ref_steps = denoised_per_step(pixart)
    patched = ranged(name, pixart, 0.4, 0.8)
    out, steps = denoised_per_step(patched)
    low, high = step_range(pixart, 0.4, 0.8)
    s = report(patched)["streams"][0]
    lazy = s["lazy"].sum(dim=(1, 2)).tolist()
    inside = [low <= t <= high for t in s["timesteps"]]
    assert any(inside) and not all(inside), s["timesteps"]
    assert all(n == 0 for n, i in zip(lazy, inside) if not i), (s["timesteps"], lazy)
    assert sum(n for n, i in zip(lazy, inside) if i) > 0, lazy
    first = inside.index(True)
    assert all(torch.equal(a, b) for a, b in zip(steps[:first], ref_steps[:first])) and first > 0
    assert not torch.equal(out, ref)
    out, _ = denoised_per_step(ranged(name, pixart, 1.0, 1.0))
    assert torch.equal(out, ref)


def test_step_range_refuses_start_after_end(comfy):
    """start_percent after end_percent is refused before the node touches the model, naming both and the fix
    (tests/test_comfy_inputs.py runs it through ComfyUI)."""
    from lazydit.nodes.sibling_nodes import ForaNode

    with pytest.raises(ValueError, match="start_percent 0.7 is after end_percent 0.2: set start_percent at or "
                                         "before end_percent"):
        ForaNode.execute(None, 2, "repeat", 0.7, 0.2)
