"""DyDiT inside the real ComfyUI: the shipped demo DyDiT samples recognisable classes through core KSampler
from its example workflow, at well under the dense MACs; a Sensitivity Schedule measured on a DyDiT makes it
lazy, and the other lazy caches refuse it clearly."""

import json
import os
import re

import numpy as np
import pytest
import torch
from lazydit.lazy_core.engine.proxies import UnsupportedModelError
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "lazydit_dydit_fashion.json")
DYDIT = "dydit_demo_fashion.safetensors (built in)"


def grey32(path):
    """A saved 128 x 128 demo image as the classifier's (1, 32, 32) input in [0, 1]."""
    img = Image.open(path).convert("L").resize((32, 32), Image.BOX)
    return torch.from_numpy(np.asarray(img, np.float32) / 255).unsqueeze(0)


@pytest.fixture(scope="module")
def run(comfy):
    outputs = comfy.run(json.load(open(WORKFLOW)))
    return outputs


def images(comfy, outputs, node):
    return torch.stack([grey32(os.path.join(comfy.output, i["subfolder"], i["filename"]))
                        for i in outputs[node]["images"]])


def test_demo_dydit_samples_recognisable_classes_at_under_60_percent_of_the_macs(comfy, run):
    from lazydit.lazy_core.demo.classifier import FashionClassifier, evaluate

    classifier = FashionClassifier.load(os.path.join(ROOT, "weights", "fashion_classifier.safetensors"))
    labels = torch.arange(10)
    dynamic, dense = images(comfy, run, "9"), images(comfy, run, "17")
    acc_dynamic, _ = evaluate(classifier, dynamic, labels)
    acc_dense, _ = evaluate(classifier, dense, labels)
    assert acc_dynamic >= 0.7 and acc_dense >= 0.7, (acc_dynamic, acc_dense)
    assert (dynamic - dense).abs().mean() > 1e-3          # the dynamic branch really ran differently
    text = run["12"]["text"][0]
    ratio = float(re.search(r"attention \+ MLP at ([\d.]+)% of the dense MACs", text).group(1)) / 100
    assert ratio <= 0.6, text                              # lambda = 0.5: at least 40 % fewer MACs
    assert re.search(r"^DyDiT: 20 steps", text)
    info = run["13"]["text"][0]
    assert "dynamic width at threshold 0.50" in info


def test_report_heatmap_is_drawn(comfy, run):
    report = run["11"]["images"][0]
    img = np.asarray(Image.open(os.path.join(comfy.output, report["subfolder"], report["filename"])))
    assert img.shape[0] > 200 and img.shape[1] >= 360
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 8     # more than background and text


def test_lazy_gates_refuse_a_dydit_model(comfy):
    from comfy_headless import WorkflowError

    prompt = json.load(open(WORKFLOW))
    prompt["20"] = {"class_type": "LazyDiT_LoadGates", "inputs": {"gate_name": "dit_demo_fashion_gates.safetensors "
                                                                               "(built in)"}}
    prompt["21"] = {"class_type": "LazyDiT_ApplyGates", "inputs": {"model": ["1", 0], "gates": ["20", 0],
                                                                   "laziness": 0.5, "max_lazy_steps": 1,
                                                                   "cache_device": "auto", "cache_dtype": "auto"}}
    prompt["6"]["inputs"]["model"] = ["21", 0]
    with pytest.raises(WorkflowError, match="DyDiT model.*do not combine"):
        comfy.run(prompt)


def test_fora_refuses_a_dydit_model(comfy):
    from lazydit.nodes.loaders import LoadDiT
    from lazydit.nodes.sibling_nodes import ForaNode

    model = LoadDiT.execute(DYDIT, "auto").args[0]
    with pytest.raises(UnsupportedModelError, match="DyDiT"):
        ForaNode.execute(model, 2)


SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=2, num_classes=10,
             learn_sigma=True)


@pytest.fixture(scope="module")
def small_dydit(comfy):
    """A random DyDiT (16 tokens) whose routers make real decisions, where Load DiT Checkpoint finds it."""
    from lazydit.lazy_core.models.dit import DiTConfig
    from lazydit.lazy_core.models.dydit import DyDiT
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in DyDiT(DiTConfig(**SMALL)).state_dict().items()}
    for k in sd:
        if k.endswith(("rate.router.bias", "mlp_head.2.bias")):
            sd[k] = torch.zeros_like(sd[k])
        elif k.endswith(("rate.router.weight", "mlp_head.2.weight")):
            sd[k] = torch.randn(sd[k].shape, generator=g)
    save_file(sd, os.path.join(comfy.base, "models", "diffusion_models", "dydit_small.safetensors"))
    return DiTConfig(**SMALL)


def sample(model):
    import nodes as comfy_nodes
    from lazydit.nodes.labels import conditioning

    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    return comfy_nodes.common_ksampler(model, 0, 10, 4.0, "euler", "normal", conditioning([1, 7]),
                                       conditioning([10]), latent)[0]["samples"]


def test_a_schedule_measured_on_a_dydit_makes_it_lazy_and_only_that(comfy, small_dydit):
    """The Sensitivity Schedule node measures a DyDiT as it samples (dynamically); Apply Lazy Gates takes
    that schedule: at laziness 1 the run is as lazy as its table says and DyDiT's own MACs count only the
    steps that ran, at 0 it is DyDiT alone to the bit. The dense DiT's schedule and the Train node are
    refused on it, naming the fix."""
    from lazydit.lazy_core.models.dydit import summarize
    from lazydit.nodes.dit_model import dy_session_of
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates, LazyReport, LoadLazyGates
    from lazydit.nodes.loaders import LoadDiT
    from lazydit.nodes.train_node import SensitivitySchedule, TrainLazyGates

    model = LoadDiT.execute("dydit_small.safetensors", "auto").args[0]
    schedule, info = SensitivitySchedule.execute(model, "all", 2, 4.0, 0, "dy").args
    # Other tests list models/lazy_gates in error messages of bounded length: leave nothing there.
    os.remove(os.path.join(comfy.base, info.split()[1].rstrip(";")))
    bank = schedule.model
    assert bank.info.architecture == "dydit" and bank.static and bank.info.granularity == "step", info
    alone = sample(model)
    alone_macs = summarize(small_dydit, dy_session_of(model).report)["macs"]
    patched, expected = ApplyLazyGates.execute(model, schedule, 1.0, 4, "auto", "auto").args
    lazy = sample(patched)
    ratio = session_of(patched).report["ratio"]
    assert ratio == pytest.approx(bank.expected_ratio(bank.threshold_for(1.0, steps=10), steps=10), abs=0.01)
    assert ratio >= 0.5 and not torch.equal(lazy, alone), expected
    assert summarize(small_dydit, dy_session_of(patched).report)["macs"] < (1 - 0.8 * ratio) * alone_macs
    text = LazyReport.execute(patched, {"samples": lazy}).args[1]
    assert re.search(r"\nDyDiT: 10 steps, attention \+ MLP at [\d.]+% of the dense MACs.*lazy steps count none", text)
    exact = ApplyLazyGates.execute(model, schedule, 0.0, 4, "auto", "auto").args[0]
    assert torch.equal(sample(exact), alone)
    dense = LoadLazyGates.execute("dit_demo_fashion_schedule.safetensors (built in)").args[0]
    with pytest.raises(UnsupportedModelError, match="made for the dense DiT, and this is a DyDiT model.*Sensitivity "
                                                    "Schedule measured on this DyDiT"):
        ApplyLazyGates.execute(model, dense, 0.5, 4, "auto", "auto")
    with pytest.raises(UnsupportedModelError, match="DyDiT model.*trained gates do not combine"):
        TrainLazyGates.execute(model, "all", 10, 2, 1e-4, "10", 0, "never_written")


def test_width_node_refuses_a_dense_model_and_names_the_fix(comfy):
    from comfy_headless import WorkflowError

    prompt = json.load(open(WORKFLOW))
    prompt["1"]["inputs"]["ckpt_name"] = "dit_demo_fashion.safetensors (built in)"
    with pytest.raises(WorkflowError, match="needs a DyDiT model.*load a DyDiT checkpoint"):
        comfy.run(prompt)


def test_width_node_refuses_a_bad_threshold(comfy):
    from comfy_headless import WorkflowError

    prompt = json.load(open(WORKFLOW))
    prompt["2"]["inputs"]["threshold"] = 1.5
    for node in ("14", "15", "16", "17"):                 # the dense branch would still run on its own
        del prompt[node]
    with pytest.raises(WorkflowError, match="Value 1.5 bigger than max of 0.95.*threshold"):
        comfy.run(prompt)
