"""DiT inside the real ComfyUI: the loader (official .pt and .safetensors), class labels, core sampling
nodes, equality with lazy_core, bad files, and the full-size DiT-XL/2 shape."""

import os
import pickle

import pytest
import torch
from lazydit.lazy_core.models.dit import DiT, DiTConfig
from safetensors.torch import save_file

SMALL = DiTConfig(input_size=16, depth=2, hidden_size=128, num_heads=2, num_classes=1000)   # heads = width / 64


def random_dit(config, seed=0):
    torch.manual_seed(seed)
    model = DiT(config)
    model.initialize_weights(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def small_ckpt(comfy):
    """A random DiT in the official key layout, as a plain .pt state dict and as .safetensors."""
    model = random_dit(SMALL)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(comfy.base, "models", "checkpoints", "dit_small.pt"))
    save_file(sd, os.path.join(comfy.base, "models", "diffusion_models", "dit_small.safetensors"))
    return model


def load(comfy, name, latent="auto"):
    from lazydit.nodes.loaders import LoadDiT
    return LoadDiT.execute(name, latent).args[0]


def workflow(ckpt, label="207", steps=3, cfg=4.0, size=128, batch=1, save="SaveLatent"):
    out = {"filename_prefix": "t"}
    out["samples" if save == "SaveLatent" else "images"] = ["5", 0] if save == "SaveLatent" else ["7", 0]
    wf = {
        "1": {"class_type": "LazyDiT_DiTLoader", "inputs": {"ckpt_name": ckpt, "latent": "auto"}},
        "2": {"class_type": "LazyDiT_ClassLabel", "inputs": {"model": ["1", 0], "labels": label}},
        "3": {"class_type": "LazyDiT_NullLabel", "inputs": {"model": ["1", 0]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 3, "steps": steps, "cfg": cfg,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": save, "inputs": out},
    }
    if save != "SaveLatent":
        wf["6"] = {"class_type": "LazyDiT_DemoVAELoader", "inputs": {}}
        wf["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}}
    return wf


@pytest.mark.parametrize("name", ["dit_small.pt", "dit_small.safetensors"])
def test_checkpoint_samples_through_core_nodes(comfy, small_ckpt, clean_output, name):
    """An official-layout DiT runs Loader -> labels -> EmptyLatentImage -> KSampler (CFG) -> SaveLatent."""
    outputs = comfy.run(workflow(name))
    files = outputs["8"]["latents"]
    assert files and os.path.exists(os.path.join(clean_output, files[0]["filename"]))


def test_comfy_matches_lazy_core(comfy, small_ckpt):
    """ComfyUI's apply_model gives lazy_core's eps for the same weights, input, timestep and label."""
    patcher = load(comfy, "dit_small.safetensors")
    base = patcher.model
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((2,), 3.0)
    y = torch.tensor([3, 999])
    out = base.apply_model(x, sigma, c_crossattn=torch.zeros(2, 1, 1), y=y)      # denoised
    t = base.model_sampling.timestep(sigma).float()
    xc = base.model_sampling.calculate_input(sigma, x)
    eps = DiT.forward(small_ckpt, xc, t, y)[:, :4]
    torch.testing.assert_close(out, x - eps * 3.0, atol=1e-6, rtol=1e-6)


def test_label_stays_an_integer_under_bf16(comfy, small_ckpt):
    """The class label reaches the model as a long tensor, so 999 stays 999 whatever the model dtype."""
    import comfy.model_base  # noqa: F401

    patcher = load(comfy, "dit_small.safetensors")
    seen = {}
    dm = patcher.model.diffusion_model
    dm.to(torch.bfloat16)
    dm.dtype = torch.bfloat16                    # what ComfyUI reads as the model dtype

    def record(module, args):
        seen["y"] = args[0].clone()
    hook = dm.y_embedder.register_forward_pre_hook(record)
    try:
        x = torch.randn(1, 4, 16, 16)
        conds = patcher.model.extra_conds(class_label=torch.tensor([999]), cross_attn=torch.zeros(1, 1, 1),
                                          noise=x)
        y = conds["y"].process_cond(batch_size=1).cond
        out = patcher.model.apply_model(x, torch.full((1,), 2.0), c_crossattn=torch.zeros(1, 1, 1), y=y)
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    assert seen["y"].dtype == torch.long and seen["y"].tolist() == [999]


def test_demo_model_draws_through_the_demo_vae(comfy, clean_output):
    """The built-in demo model samples a 10-class batch at 128 px and core VAEDecode/SaveImage write PNGs."""
    from PIL import Image

    outputs = comfy.run(workflow("dit_demo_fashion.safetensors (built in)", label="0-9", steps=4, batch=10,
                                 save="SaveImage"))
    images = outputs["8"]["images"]
    assert len(images) == 10
    img = Image.open(os.path.join(clean_output, images[0]["filename"]))
    assert img.size == (128, 128)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('LAZYDIT_MARKER', '/tmp/lazydit_pwned')}",))



def test_train_gates_node_saves_calibrated_gates(comfy, small_ckpt):
    """The Train node trains on the DiT's own trajectories, saves a gate file that fits the model with a
    calibration table at the step counts trained, and refuses a label outside the model's classes."""
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.nodes.train_node import TrainLazyGates

    model = load(comfy, "dit_small.safetensors")
    with pytest.raises(ValueError, match="'1000' is outside this model's 1000 classes"):
        TrainLazyGates.execute(model, "1, 1000", 10, 4, 1e-3, "6", 0, "dit_gates")
    with pytest.raises(ValueError, match="step count 'x' in '6,x' is not a whole number in 2..1000"):
        TrainLazyGates.execute(model, "1", 10, 4, 1e-3, "6,x", 0, "dit_gates")
    gates, text = TrainLazyGates.execute(model, "1, 207, 360", 12, 4, 1e-3, "6,9", 0, "dit_gates",
                                         objective="local (paper)").args
    name = text.split()[1].rstrip(";")
    assert name.startswith(os.path.join("models", "lazy_gates", "dit_gates_")), text
    saved = GateBank.load(os.path.join(comfy.base, name))
    saved.check_fits("dit", SMALL.depth, SMALL.hidden_size)
    assert torch.equal(saved.weight, gates.model.weight) and saved.weight.abs().sum() > 0
    assert sorted(int(n) for n in saved.info.recipe["calibration_per_steps"]) == [6, 9]
    ratios = [r for _, r in saved.info.calibration]
    assert ratios == sorted(ratios), f"lazy ratio must not fall as laziness rises: {saved.info.calibration}"


def test_sensitivity_objective_and_schedule_nodes(comfy, small_ckpt):
    """The Train node's default (sensitivity) objective and the training-free Sensitivity Schedule node
    measure the DiT, save log-cost gate files with a calibration table, and sampling with them through
    KSampler at laziness 1 is as lazy as the table says; a bad objective is refused."""
    import nodes as comfy_nodes
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.nodes.labels import conditioning
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.train_node import SensitivitySchedule, TrainLazyGates

    model = load(comfy, "dit_small.safetensors")
    with pytest.raises(ValueError, match="objective = 'fast' is not one of 'sensitivity', 'local \\(paper\\)'"):
        TrainLazyGates.execute(model, "1", 12, 4, 1e-3, "6", 0, "dit_gates", objective="fast")
    learned, text = TrainLazyGates.execute(model, "1, 207", 12, 6, 1e-3, "10", 0, "dit_sens").args
    assert "trajectories measured" in text and "laziness -> lazy share" in text
    schedule, info = SensitivitySchedule.execute(model, "1, 207", 4, 4.0, 0, "dit_schedule").args
    assert info.startswith(f"saved {os.path.join('models', 'lazy_gates', 'dit_schedule_00000.safetensors')};")
    saved = GateBank.load(os.path.join(comfy.base, "models", "lazy_gates", "dit_schedule_00000.safetensors"))
    assert saved.info.score == "log-cost" and saved.static and saved.info.granularity == "step"
    assert torch.equal(saved.prior, schedule.model.prior)
    for gates in (learned, schedule):
        patched, expected = ApplyLazyGates.execute(model, gates, 1.0, 4, "auto", "auto").args
        comfy_nodes.common_ksampler(patched, 0, 10, 4.0, "euler", "normal", conditioning([1, 207]),
                                    conditioning([1000]), {"samples": torch.zeros(2, 4, 16, 16)})
        ratio = session_of(patched).report["ratio"]
        bank = gates.model
        top = bank.expected_ratio(bank.threshold_for(1.0, steps=10), steps=10)       # calibrated at 10 steps
        assert ratio == pytest.approx(top, abs=0.1), f"{expected}: measured {ratio:.2f}"
        assert ratio > 0.3


def test_runs_plan_over_the_samplers_schedule(comfy, small_ckpt):
    """KSampler hands its schedule to the plan: a schedule's lazy steps in ComfyUI (euler, normal, 20 steps)
    are exactly those that lazy_core plans for the same timesteps."""
    import comfy.samplers
    import nodes as comfy_nodes
    from lazydit.lazy_core.engine.cache import CacheOptions, RunState
    from lazydit.lazy_core.engine.policies import LearnedGates
    from lazydit.nodes.labels import conditioning
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.train_node import SensitivitySchedule

    model = load(comfy, "dit_small.safetensors")
    schedule = SensitivitySchedule.execute(model, "1", 3, 4.0, 1, "dit_plan").args[0]
    bank = schedule.model
    patched = ApplyLazyGates.execute(model, schedule, 0.6, 4, "auto", "auto").args[0]
    comfy_nodes.common_ksampler(patched, 0, 20, 4.0, "euler", "normal", conditioning([1]), conditioning([1000]),
                                {"samples": torch.zeros(1, 4, 16, 16)})
    lazy_steps = session_of(patched).report["streams"][0]["lazy"].sum((1, 2)) > 0          # (steps,)
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", 20)
    timesteps = [float(t) for t in sampling.timestep(sigmas[:-1]).float()]
    policy = LearnedGates(bank, bank.threshold_for(0.6), 0.6)
    RunState(policy, CacheOptions(max_lazy_steps=4), timesteps)
    limits = policy.chains[1]                                                          # (steps, chain + 1)
    planned, run = [], 0
    for k, t in enumerate(timesteps):
        lazy = k > 0 and float(bank.prior[0, 0, bank.bucket(t)]) <= float(limits[k, run])
        planned.append(lazy)
        run = run + 1 if lazy else 0
    assert lazy_steps.tolist() == planned, f"ComfyUI {lazy_steps.tolist()} vs plan {planned}"
    assert any(planned) and any(a and b for a, b in zip(planned, planned[1:])), "no chain planned"


def test_schedule_node_progress_covers_every_model_call(comfy, small_ckpt, counted):
    """The Sensitivity Schedule's progress bar counts every model call it makes (measuring; the calibration
    follows from the plan and makes none), its total is the calls made from its first update on, it ends
    at 100 %, and the node's text and recipe say the count."""
    from lazydit.nodes.train_node import CHECK_CALLS, SCHEDULE_CALLS, SensitivitySchedule

    model = load(comfy, "dit_small.safetensors")
    (gates, info), calls, updates = counted(model, lambda: SensitivitySchedule.execute(model, "1", 2, 4.0, 0,
                                                                                       "dit_count").args)
    recipe = gates.model.info.recipe
    assert calls - CHECK_CALLS == SCHEDULE_CALLS == recipe["measure_calls"]    # a DiT: one call per step
    assert recipe["check_calls"] == CHECK_CALLS and len(recipe["psnr_check"]) == 4
    assert updates[-1] == (calls, calls) and all(t == calls for _, t in updates)
    assert f"in {SCHEDULE_CALLS} model calls" in info and "calibrated from the plan, no model calls" in info
    assert f"checked on them in {CHECK_CALLS} model calls" in info and "predicted PSNR at 20 steps" in info


@pytest.mark.parametrize("objective", ["sensitivity", "local (paper)"])
def test_train_node_progress_covers_every_model_call(comfy, small_ckpt, objective, counted):
    """Train Lazy Gates' bar runs over training and calibration alike: its total is the calls made and it
    ends at 100 %. The sensitivity objective calibrates from the plan (no calls beyond measuring); the
    paper's gates read their input, so they are calibrated by sampling, counted in the text."""
    from lazydit.lazy_core.training.calibrate import THRESHOLDS
    from lazydit.lazy_core.training.train_gates import LOSS_CALLS
    from lazydit.nodes.train_node import SCHEDULE_CALLS, TrainLazyGates

    model = load(comfy, "dit_small.safetensors")
    (_, text), calls, updates = counted(model, lambda: TrainLazyGates.execute(
        model, "1", 10, 2, 1e-3, "4", 0, "dit_count", objective=objective).args)
    assert updates[-1] == (calls, calls) and updates[-1][1] == max(t for _, t in updates)
    if objective == "sensitivity":
        assert calls == SCHEDULE_CALLS
        assert f"{calls} model calls in" in text and "calibrated from the plan, no model calls" in text
    else:
        trained, sampled = 4 + LOSS_CALLS * 10, len(THRESHOLDS) * 4        # trajectories + iterations; the table
        assert calls == trained + sampled
        assert all(t == calls for v, t in updates if v > trained), "the calibration's calls counted exactly"
        assert f"{trained} model calls in" in text and f"calibrated {sampled} model calls" in text


def test_bad_files_give_clear_errors(comfy, small_ckpt, tmp_path, monkeypatch):
    """Truncated, foreign, code-carrying and unknown files are refused with errors naming file and problem."""
    from lazydit.lazy_core.models.dit import CheckpointError

    ckpts = os.path.join(comfy.base, "models", "checkpoints")
    data = open(os.path.join(ckpts, "dit_small.pt"), "rb").read()
    open(os.path.join(ckpts, "cut.pt"), "wb").write(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt cannot be read.*truncated or corrupt"):
        load(comfy, "cut.pt")
    save_file({"model.weight": torch.zeros(2)}, os.path.join(ckpts, "other.safetensors"))
    with pytest.raises(CheckpointError, match="other.safetensors.*not a DiT checkpoint"):
        load(comfy, "other.safetensors")
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LAZYDIT_MARKER", str(marker))
    with open(os.path.join(ckpts, "evil.pt"), "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pt was refused.*never executed"):
        load(comfy, "evil.pt")
    assert not marker.exists(), "the pickle's code ran"
    sd = {k: v for k, v in small_ckpt.state_dict().items()}
    sd["x_embedder.proj.weight"] = torch.zeros(128, 4, 3, 2)        # a non-square patch: no DiT config fits
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(ckpts, "odd.safetensors"))
    with pytest.raises(CheckpointError, match="odd.safetensors"):
        load(comfy, "odd.safetensors")


def test_server_keeps_running_after_a_bad_file(comfy, small_ckpt, clean_output):
    """A workflow with a corrupt checkpoint fails with the file named; the next workflow still runs."""
    ckpts = os.path.join(comfy.base, "models", "checkpoints")
    open(os.path.join(ckpts, "broken.safetensors"), "wb").write(b"not a safetensors file at all")
    with pytest.raises(RuntimeError, match="broken.safetensors cannot be read"):  # WorkflowError
        comfy.run(workflow("broken.safetensors"))
    assert comfy.run(workflow("dit_small.pt"))["8"]["latents"]


@pytest.mark.slow
def test_full_size_dit_xl2_loads_and_steps(comfy):
    """A 675 M-parameter DiT-XL/2 (256 px, random weights) loads through the loader and samples one step at
    batch 2 with CFG."""
    import nodes as comfy_nodes
    from lazydit.lazy_core.models.dit import config_for
    config = config_for("DiT-XL/2", image_size=256)
    with torch.device("meta"):
        shapes = DiT(config).state_dict()
    sd = {k: torch.randn(v.shape) * 0.02 for k, v in shapes.items()}
    save_file(sd, os.path.join(comfy.base, "models", "diffusion_models", "dit_xl2_random.safetensors"))
    del sd
    patcher = load(comfy, "dit_xl2_random.safetensors")
    dm = patcher.model.diffusion_model
    assert sum(p.numel() for p in dm.parameters()) > 670e6 and len(dm.blocks) == 28
    from lazydit.nodes.labels import conditioning
    (out,) = comfy_nodes.common_ksampler(patcher, 0, 1, 4.0, "euler", "normal", conditioning([207, 360]),
                                         conditioning([1000]), {"samples": torch.zeros(2, 4, 32, 32)})
    assert out["samples"].shape == (2, 4, 32, 32) and torch.isfinite(out["samples"]).all()
