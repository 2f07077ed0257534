"""No prompt makes the pack write outside models/lazy_gates, or overwrite a file: the saving nodes' prefix is
checked when the prompt is queued and again before any work, and files are created exclusively."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER = json.load(open(os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")))["1"]

BAD_PREFIXES = {
    "traversal": ("../../../x", "leaves or skips a folder"),
    "traversal in a subfolder": ("mine/../../x", "leaves or skips a folder"),
    "absolute": ("/tmp/lazydit_abs", "is an absolute path"),
    "nul": ("a\x00b", "holds a control character"),
    "backslash": ("..\\..\\x", "holds a control character or one of \\"),
    "long": ("g" * 300, "is 300 characters long, more than 100"),
    "empty": ("", "filename_prefix is empty"),
}
NODES = {"LazyDiT_TrainGates": {"iterations": 10, "batch": 4, "laziness_pressure": 1e-4, "step_counts": "10"},
         "LazyDiT_SensitivitySchedule": {"images": 2, "cfg": 4.0}}


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("case", BAD_PREFIXES, ids=list(BAD_PREFIXES))
def test_bad_prefix_is_refused_when_queued(comfy, node, case):
    prefix, message = BAD_PREFIXES[case]
    parent = os.path.dirname(comfy.base)
    before = tree(parent)
    wf = {"1": LOADER, "2": {"class_type": node, "inputs": {"model": ["1", 0], "labels": "all",
                                                                         "seed": 0, "filename_prefix": prefix,
                                                                         **NODES[node]}}}
    with pytest.raises(RuntimeError, match="invalid workflow") as err:
        comfy.run(wf)
    assert message in str(err.value) and "filename_prefix" in str(err.value), str(err.value)[-600:]
    assert len(prefix) < 50 or prefix[:50] not in str(err.value), "a long prefix must not be echoed whole"
    assert tree(parent) == before
    assert not os.path.exists("/tmp/lazydit_abs_00000.safetensors")


def test_bad_prefix_is_refused_in_execute_before_any_work(comfy):
    """A prefix that arrives through a link skips validate_inputs; execute refuses it before training."""
    from lazydit.nodes.loaders import LoadDiT
    from lazydit.nodes.train_node import SensitivitySchedule, TrainLazyGates

    model = LoadDiT.execute("dit_demo_fashion.safetensors (built in)", "auto", "all channels").args[0]
    with pytest.raises(ValueError, match="filename_prefix '../x' leaves or skips a folder"):
        TrainLazyGates.execute(model, "all", 10, 4, 1e-4, "10", 0, "../x")
    with pytest.raises(ValueError, match="filename_prefix '/x' is an absolute path"):
        SensitivitySchedule.execute(model, "all", 2, 4.0, 0, "/x")


def test_files_are_never_overwritten(comfy, tmp_path):
    """The same prefix twice gives two files; a file a user put there, a higher number left by a deleted
    file, and a link planted at the next name are all left alone."""
    from lazydit.nodes.files import create_new

    folder = tmp_path / "lazy_gates"
    folder.mkdir()
    first = create_new(str(folder), "g", b"one")
    second = create_new(str(folder), "g", b"two")
    assert [os.path.basename(first), os.path.basename(second)] == ["g_00000.safetensors", "g_00001.safetensors"]
    assert open(first, "rb").read() == b"one" and open(second, "rb").read() == b"two"

    (folder / "g_00007.safetensors").write_bytes(b"user")
    assert os.path.basename(create_new(str(folder), "g", b"x")) == "g_00008.safetensors"
    assert (folder / "g_00007.safetensors").read_bytes() == b"user"

    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    (folder / "h_00000.safetensors").symlink_to(outside)         # a dangling-or-not link at the first name
    made = create_new(str(folder), "h", b"new")
    assert os.path.basename(made) == "h_00001.safetensors" and outside.read_bytes() == b"keep"

    sub = create_new(str(folder), "mine/g", b"sub")
    assert os.path.relpath(sub, folder) == os.path.join("mine", "g_00000.safetensors")


def test_symlinked_subfolder_cannot_lead_outside(comfy, tmp_path):
    from lazydit.nodes.files import create_new

    folder = tmp_path / "lazy_gates"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "out").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="resolves outside"):
        create_new(str(folder), "out/g", b"x")
    assert not os.listdir(elsewhere)
