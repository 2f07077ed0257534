"""Workflow JSON is a public interface: every example workflow runs, its UI and API forms agree, and the
node ids, input names and widget order recorded in tests/node_interface.json never change (inputs may only
be appended)."""

import glob
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_FILES = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))
INTERFACE = os.path.join(ROOT, "tests", "node_interface.json")


def workflow_format():
    spec = importlib.util.spec_from_file_location("workflow_format", os.path.join(ROOT, "scripts",
                                                                                   "workflow_format.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
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
