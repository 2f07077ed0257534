"""The shipped weights: their sha256 matches the manifest, they load strictly, and they do what it says."""

import hashlib
import json
import os

import pytest
import torch

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
MANIFEST = json.load(open(os.path.join(WEIGHTS, "manifest.json")))
SHIPPED = ["dit_demo_fashion.safetensors", "fashion_classifier.safetensors", "dit_demo_fashion_gates.safetensors"]


@pytest.mark.parametrize("name", SHIPPED)
def test_sha256_matches_manifest(name):
    """Every shipped file is listed with the sha256 of its bytes."""
    h = hashlib.sha256(open(os.path.join(WEIGHTS, name), "rb").read()).hexdigest()
    assert MANIFEST[name]["sha256"] == h, f"{name}: manifest {MANIFEST[name]['sha256']}, file {h}"


def test_demo_model_loads_and_matches_its_config():
    """The demo model loads strictly into DiT-Demo/2 with 64 image tokens."""
    from lazydit.lazy_core.train_gates import load_model

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    assert model.config.tokens >= 64 and model.config.num_classes == 10
    assert MANIFEST["dit_demo_fashion.safetensors"]["config"] == model.config.to_dict()


def test_classifier_accuracy_on_test_split():
    """The shipped classifier reaches its manifest accuracy (>= 90 %) on the Fashion-MNIST test split."""
    from lazydit.lazy_core import fashion
    from lazydit.lazy_core.classifier import FashionClassifier, evaluate

    images, labels = fashion.load("test")
    acc, _ = evaluate(FashionClassifier.load(os.path.join(WEIGHTS, "fashion_classifier.safetensors")),
                      torch.from_numpy(fashion.to_grey32(images)), torch.from_numpy(labels))
    assert acc >= 0.90
    assert acc == pytest.approx(MANIFEST["fashion_classifier.safetensors"]["test_accuracy"], abs=1e-3)


def test_shipped_gates_reach_their_calibrated_ratio():
    """Sampling with the shipped gates at the trained point reproduces the calibration table's lazy ratio."""
    from lazydit.lazy_core.calibrate import calibrate
    from lazydit.lazy_core.gates import GateBank
    from lazydit.lazy_core.train_gates import load_model

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    gates = GateBank.load(os.path.join(WEIGHTS, "dit_demo_fashion_gates.safetensors"))
    gates.check_fits("dit", model.config.depth, model.config.hidden_size)
    expected = dict(map(tuple, gates.info.calibration))[0.5]
    per_steps = gates.info.recipe["calibration_per_steps"]["20"]
    table, _ = calibrate(model, gates, step_counts=(20,), thresholds=(0.5,))
    assert table[0][1] == pytest.approx(dict(map(tuple, per_steps))[0.5], abs=1e-6), "not reproducible"
    assert 0.2 <= expected <= 0.5
