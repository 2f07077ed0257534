"""The shipped weights: their sha256 matches the manifest, they load strictly, and they do what it says."""

import hashlib
import json
import os

import pytest
import torch

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
MANIFEST = json.load(open(os.path.join(WEIGHTS, "manifest.json")))
GATES = ["dit_demo_fashion_gates.safetensors", "dit_demo_fashion_schedule.safetensors",
         "dit_demo_fashion_gates_local.safetensors"]
DYDIT = "dydit_demo_fashion.safetensors"
SHIPPED = ["dit_demo_fashion.safetensors", "fashion_classifier.safetensors", *GATES, DYDIT]


@pytest.mark.parametrize("name", SHIPPED)
def test_sha256_matches_manifest(name):
    """Every shipped file is listed with the sha256 of its bytes."""
    h = hashlib.sha256(open(os.path.join(WEIGHTS, name), "rb").read()).hexdigest()
    assert MANIFEST[name]["sha256"] == h, f"{name}: manifest {MANIFEST[name]['sha256']}, file {h}"


def test_demo_model_loads_and_matches_its_config():
    """The demo model loads strictly into DiT-Demo/2 with 64 image tokens."""
    from lazydit.lazy_core.models.checkpoint import load_model

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    assert model.config.tokens >= 64 and model.config.num_classes == 10
    assert MANIFEST["dit_demo_fashion.safetensors"]["config"] == model.config.to_dict()


def test_dydit_model_matches_its_manifest():
    """The DyDiT demo model loads strictly as a DyDiT of the demo model's shape, fine-tuned from the shipped
    demo model at the manifest's lambda, and its measured 1,000-sample quality is recorded."""
    from lazydit.lazy_core.models.checkpoint import load_model
    from lazydit.lazy_core.models.dydit import DyDiT

    model = load_model(os.path.join(WEIGHTS, DYDIT))
    entry = MANIFEST[DYDIT]
    assert isinstance(model, DyDiT)
    assert entry["config"] == model.config.to_dict() == MANIFEST["dit_demo_fashion.safetensors"]["config"]
    assert entry["recipe"]["base_model_sha256"] == MANIFEST["dit_demo_fashion.safetensors"]["sha256"]
    assert entry["recipe"]["target"] == 0.5 and abs(entry["recipe"]["final_train_flops_ratio"] - 0.5) < 0.05
    quality = entry["quality"]
    assert quality["samples"] == 1000
    for run in ("cfg4.0_ddim50", "cfg4.0_ddim20"):
        assert quality[run]["macs_share"] <= 0.6 and quality[run]["accuracy"] >= 0.7


def test_classifier_accuracy_on_test_split():
    """The shipped classifier reaches its manifest accuracy (>= 90 %) on the Fashion-MNIST test split."""
    from lazydit.lazy_core.demo import fashion
    from lazydit.lazy_core.demo.classifier import FashionClassifier, evaluate

    images, labels = fashion.load("test")
    acc, _ = evaluate(FashionClassifier.load(os.path.join(WEIGHTS, "fashion_classifier.safetensors")),
                      torch.from_numpy(fashion.to_grey32(images)), torch.from_numpy(labels))
    assert acc >= 0.90
    assert acc == pytest.approx(MANIFEST["fashion_classifier.safetensors"]["test_accuracy"], abs=1e-3)


@pytest.mark.parametrize("name", GATES)
def test_shipped_gates_reach_their_calibrated_ratio(name):
    """Sampling 8 images with each shipped gate file at its table's middle threshold (DDIM 20) reaches the
    table's lazy share: exactly for a schedule (its table follows from the plan), within 5 points for
    learned gates (the plan on their expected costs; images move it); the slider spans the range evenly,
    up to 80 % at 20 steps for the files with chains and 50 % for the paper's gates."""
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.engine.policies import LearnedGates
    from lazydit.lazy_core.engine.run import LazyRun
    from lazydit.lazy_core.models.checkpoint import load_model
    from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
    from lazydit.lazy_core.training.denoisers import LabelDenoiser

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    gates = GateBank.load(os.path.join(WEIGHTS, name))
    gates.check_fits("dit", model.config.depth, model.config.hidden_size)
    per_steps = gates.info.recipe["calibration_per_steps"]["20"]
    threshold, ratio = per_steps[len(per_steps) // 2]
    den = LabelDenoiser(model)
    g = torch.Generator().manual_seed(0)
    cond, noise = den.draw(8, g), torch.randn(8, *den.latent, generator=g)
    recipe = gates.info.recipe
    options = CacheOptions(reuse=recipe.get("reuse", "repeat"), order=recipe.get("order", 1),
                           max_lazy_steps=gates.longest_chain)
    with torch.no_grad(), LazyRun(model, LearnedGates(gates, threshold), options, streams=("positive", "negative"),
                                  timesteps=space_timesteps(20)[::-1]) as run:
        GaussianDiffusion().ddim_sample(run, noise, cond, 20, 4.0, null_label=10)
    tolerance = 1e-6 if gates.static and gates.chain is not None else 0.05
    assert run.report["ratio"] == pytest.approx(ratio, abs=tolerance), f"{name}: not reproducible"
    top = gates.expected_ratio(gates.threshold_for(1.0, 20), 20)
    low, high = (0.75, 0.8) if gates.chain is not None else (0.45, 0.5)
    assert low <= top <= high, f"{name}: most laziness {top}"
    assert gates.expected_ratio(gates.threshold_for(0.5, 20), 20) == pytest.approx(top / 2, abs=0.02)


def test_learned_gates_table_from_the_plan_matches_sampling():
    """Learned chain gates are calibrated without sampling: each image's decisions are predicted from the
    gates' input along its exact trajectory and planned (calibrate.plan_table). On the same 8 images the
    lazy share sampled with the gates at DDIM 10 and 20 agrees within 2 points at every threshold from
    nothing lazy to the most, though sampling moves the gates' input along the lazy trajectory."""
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.models.checkpoint import load_model
    from lazydit.lazy_core.training.calibrate import calibrate, from_plan, grid_for, plan_table
    from lazydit.lazy_core.training.denoisers import LabelDenoiser
    from lazydit.lazy_core.training.sensitivity import measure

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    gates = GateBank.load(os.path.join(WEIGHTS, "dit_demo_fashion_gates.safetensors"))
    assert not gates.static and gates.chain is not None and not from_plan(gates), "read back: sampled"
    # The thresholds where the share at 20 steps moves, from a few percent to the most.
    shares = dict((t, r) for t, r in gates.info.recipe["calibration_per_steps"]["20"])
    moving = [t for t in grid_for(gates) if 0.02 < shares.get(t, 0.5) or t > max(shares)]
    thresholds = moving[:: max(1, len(moving) // 6)]
    exact = measure(LabelDenoiser(model), 20, 8, 4.0, 0, chain=0, modules=False)     # calibrate's images
    assert exact.calls == 20
    _, predicted = plan_table(gates, (10, 20), thresholds, exact)
    _, sampled = calibrate(model, gates, step_counts=(10, 20), thresholds=thresholds, rows=8)
    for n in (10, 20):
        gaps = [abs(p - s) for (_, p), (_, s) in zip(predicted[n], sampled[n])]
        assert max(gaps) <= 0.02, f"DDIM {n}: predicted {predicted[n]} vs sampled {sampled[n]}"
    assert sampled[20][-1][1] > 0.6 and sampled[20][0][1] < 0.2, f"the thresholds span the slider: {sampled[20]}"
