"""Workflow JSON is a public interface: every example workflow runs, its UI and API forms agree, and the
node ids, input names and widget order recorded in tests/node_interface.json never change (inputs may only
be appended)."""

import glob
import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_FILES = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))
INTERFACE = os.path.join(ROOT, "tests", "node_interface.json")
# Workflows for the real model families: the files they name are the user's (not shipped), so they are checked
# against the node schemas instead of run.
REAL_MODELS = {"lazydit_dit_xl2_256.json", "lazydit_pixart_sigma.json", "lazydit_flux_dev.json",
               "lazydit_sd35_medium.json", "lazydit_wan21_t2v.json"}
MODEL_FILE = (".pt", ".pth", ".safetensors", ".ckpt")
RUNNABLE = [p for p in UI_FILES if os.path.basename(p) not in REAL_MODELS]


def workflow_format():
    spec = importlib.util.spec_from_file_location("workflow_format", os.path.join(ROOT, "scripts",
                                                                                   "workflow_format.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RUNNABLE, ids=os.path.basename)
def test_example_workflow_runs(comfy, clean_output, path):
    """The UI-format file converts to exactly its API form, which runs in ComfyUI and writes images."""
    fmt = workflow_format()
    ui = json.load(open(path))
    api = json.load(open(os.path.join(ROOT, "example_workflows", "api", os.path.basename(path))))
    assert fmt.ui_to_api(ui, comfy.nodes.NODE_CLASS_MAPPINGS) == api
    outputs = comfy.run(api)
    saved = [i for node in outputs.values() for i in node.get("images", [])]
    assert saved and all(os.path.exists(os.path.join(clean_output, i["subfolder"], i["filename"])) for i in saved)


def current_interface(mappings):
    fmt = workflow_format()
    return {name: [n for n, _, _ in fmt.input_spec(cls)] for name, cls in sorted(mappings.items())
            if name.startswith("LazyDiT_")}


def test_node_interface_is_stable(comfy):
    """Every recorded node still exists with the same inputs in the same order (new ones only at the end)."""
    recorded = json.load(open(INTERFACE))
    now = current_interface(comfy.nodes.NODE_CLASS_MAPPINGS)
    for node, inputs in recorded.items():
        assert node in now, f"node id {node} disappeared"
        assert now[node][: len(inputs)] == inputs, f"{node}: inputs were {inputs}, now {now[node]}"
    assert set(now) == set(recorded), f"new nodes must be recorded in {INTERFACE}: {set(now) - set(recorded)}"


@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_real_model_workflow_fits_the_node_schemas(comfy, name):
    """Every node exists, every input is declared and every required one given, links point at outputs of
    the input's type, numbers are in range and combos hold a listed value (model file names excepted)."""
    fmt = workflow_format()
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    api = json.load(open(os.path.join(ROOT, "example_workflows", "api", name)))
    assert fmt.ui_to_api(json.load(open(os.path.join(ROOT, "example_workflows", name))), mappings) == api
    for node_id, node in api.items():
        cls = mappings[node["class_type"]]
        spec = {n: (k, o) for n, k, o in fmt.input_spec(cls)}
        required = cls.INPUT_TYPES().get("required", {})
        assert set(node["inputs"]) <= set(spec), (node_id, set(node["inputs"]) - set(spec))
        assert set(required) <= set(node["inputs"]), (node_id, set(required) - set(node["inputs"]))
        for input_name, value in node["inputs"].items():
            kind, options = spec[input_name]
            where = f"{name} node {node_id} {input_name}"
            if isinstance(value, list):
                source = mappings[api[value[0]]["class_type"]]
                assert source.RETURN_TYPES[value[1]] in (kind, "*") or kind == "*", where
            elif kind == "COMBO":
                group = cls.INPUT_TYPES()["required" if input_name in required else "optional"]
                listed = options.get("options") or group[input_name][0]        # V3 combos list them in options
                assert value in listed or str(value).endswith(MODEL_FILE), f"{where}: {value!r}"
            elif kind in ("INT", "FLOAT"):
                assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), where
