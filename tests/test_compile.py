"""torch.compile (core TorchCompileModel, inductor) in either order with Apply Lazy Gates: the demo workflow
runs, stays lazy, matches the uncompiled images, and a second run compiles nothing new."""

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")


def demo(order, prefix):
    """The demo workflow at 2 images and 8 steps, with TorchCompileModel before or after Apply Lazy Gates."""
    p = copy.deepcopy(json.load(open(DEMO)))
    p["6"]["inputs"]["batch_size"] = 2
    p["7"]["inputs"]["steps"] = 8
    p["10"]["inputs"]["filename_prefix"] = prefix
    if order == "compile, then lazy":
        p["20"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["1", 0], "backend": "inductor"}}
        p["3"]["inputs"]["model"] = ["20", 0]
    elif order == "lazy, then compile":
        p["20"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["3", 0], "backend": "inductor"}}
        p["7"]["inputs"]["model"] = ["20", 0]
    return p


def images(comfy, outputs):
    return [np.asarray(Image.open(os.path.join(comfy.output, i["subfolder"], i["filename"])), dtype=float)
            for i in outputs["10"]["images"]]


@pytest.mark.parametrize("order", ["compile, then lazy", "lazy, then compile"], ids=["compile_first", "lazy_first"])
def test_torch_compile_in_either_order(comfy, clean_output, order):
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()                     # each order compiles from scratch
    plain = images(comfy, comfy.run(demo("none", "plain")))
    exact = demo("none", "exact")
    exact["3"]["inputs"]["laziness"] = 0.0
    exact = images(comfy, comfy.run(exact))
    counters.clear()
    first = comfy.run(demo(order, "compiled"))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "nothing was compiled"
    assert graphs <= 12, f"{graphs} graphs: a recompile storm"
    assert not any("recompile" in k.lower() for k in counters["graph_break"]), dict(counters["graph_break"])
    counters.clear()
    second = comfy.run(demo(order, "again"))
    assert counters["stats"]["unique_graphs"] == 0, "the second run must reuse the compiled graphs"
    for out in (first, second):
        got = images(comfy, out)
        diff = max(np.abs(a - b).max() for a, b in zip(got, plain))
        assert diff <= 2, f"compiled images differ from the uncompiled lazy ones by {diff}/255"
        assert max(np.abs(a - b).max() for a, b in zip(got, exact)) > 2 * diff, "the compiled run was not lazy"
