"""The harness around the real ComfyUI: PromptExecutor's cache_args read from the installed execution.py, and
the start-up filter that silences the audio nodes' missing torchaudio and nothing else."""

import logging
import os

import pytest
import quiet_optional

# The shape of a newer execution.py (as in ComfyUI 0.8): the executor also reads "ram_inactive" when it runs.
NEWER_EXECUTION = '''
class CacheSet:
    def __init__(self, cache_type=None, cache_args={}):
        self.ram = cache_args.get("ram", 16.0)
        self.lru = cache_args.get("lru", 0)


class PromptExecutor:
    def __init__(self, server, cache_type=False, cache_args=None):
        self.cache_args = cache_args
        self.caches = CacheSet(cache_type, cache_args)

    def execute(self):
        return self.cache_args["ram_inactive"], self.cache_args["ram"]
'''


# The keys each tested release's execution.py reads (0.33.0 added "ram_inactive" with its RAM_PRESSURE cache).
CACHE_KEYS = {"0.3.75": {"lru", "ram"}, "0.33.0": {"lru", "ram", "ram_inactive"}}


def test_cache_args_read_from_the_installed_execution_py(runtime):
    """The installed execution.py's keys are those of its release (exactly "lru" and "ram" on 0.3.75, plus
    "ram_inactive" on 0.33.0; at least "lru" and "ram" on another tree), each 0 (no output cache)."""
    with open(os.path.join(runtime.COMFY, "execution.py")) as f:
        args = runtime.cache_args(f.read())
    version = runtime.comfy_tree.version(runtime.COMFY)
    assert set(args.values()) == {0}, args
    if version in CACHE_KEYS:
        assert set(args) == CACHE_KEYS[version], (version, args)
    else:
        assert {"lru", "ram"} <= set(args), (version, args)


def test_cache_args_follow_a_newer_execution_py(runtime):
    """A newer executor that also reads "ram_inactive" gets it; the old fixed pair raises the KeyError seen on
    newer ComfyUI; a source that reads no key is refused with a message."""
    scope = {}
    exec(compile(NEWER_EXECUTION, "newer_execution.py", "exec"), scope)
    args = runtime.cache_args(NEWER_EXECUTION)
    assert args == {"lru": 0, "ram": 0, "ram_inactive": 0}
    assert scope["PromptExecutor"](None, cache_args=args).execute() == (0, 0)
    with pytest.raises(KeyError, match="ram_inactive"):
        scope["PromptExecutor"](None, cache_args={"lru": 0, "ram": 0}).execute()
    with pytest.raises(RuntimeError, match="reads no cache_args keys"):
        runtime.cache_args("class PromptExecutor:\n    pass\n")


def traceback_text(path, module):
    """What ComfyUI's load_custom_node logs (traceback.format_exc) for a file whose import is missing `module`."""
    return ("Traceback (most recent call last):\n"
            '  File "/opt/ComfyUI/nodes.py", line 2146, in load_custom_node\n'
            "    module_spec.loader.exec_module(module)\n"
            f'  File "{path}", line 4, in <module>\n'
            f"    import {module}\n"
            f"ModuleNotFoundError: No module named '{module}'\n")


def passed(records, quiet):
    """The messages that get through the filter, in order."""
    logger = logging.getLogger(f"quiet_optional_test_{id(quiet)}")
    logger.propagate = False
    logger.addFilter(quiet)
    kept = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())
    logger.addHandler(handler)
    for text in records:
        logger.warning(text)
    return kept


def startup(extras_failures):
    """ComfyUI 0.3.75's start-up records (nodes.py) for comfy_extras files failing with the given errors."""
    records = ["torchaudio missing, ACE model will be broken"]
    for file, module in extras_failures:
        path = f"/opt/ComfyUI/comfy_extras/{file}"
        records += [traceback_text(path, module),
                    f"Cannot import {path} module for custom nodes: No module named '{module}'"]
    records.append(quiet_optional.SUMMARY + ". This may be because they are missing some dependencies.\n")
    records += [f"IMPORT FAILED: {file}" for file, _ in extras_failures]
    records += ["\nThis issue might be caused by new missing dependencies added the last time you updated ComfyUI.",
                "Please do a: pip install -r requirements.txt", ""]
    return records


def test_audio_noise_is_silenced_and_nothing_else():
    """The audio nodes' records go; a failed import of this pack (its traceback and message) still shows, and
    so does everything logged after the summary block."""
    pack = "/base/custom_nodes/ComfyUI-LazyDiT"
    through_extras = traceback_text(f"{pack}/__init__.py", "comfy_extras.nodes_audio").replace(
        "ModuleNotFoundError: No module named 'comfy_extras.nodes_audio'",
        '  File "/opt/ComfyUI/comfy_extras/nodes_audio.py", line 4, in <module>\n    import torchaudio\n'
        "ModuleNotFoundError: No module named 'torchaudio'")
    pack_records = [traceback_text(f"{pack}/__init__.py", "torchaudio"), through_extras,
                    f"Cannot import {pack} module for custom nodes: No module named 'torchaudio'"]
    records = startup([("nodes_audio.py", "torchaudio"), ("nodes_audio_encoder.py", "torchaudio")])
    assert passed(records + pack_records + ["Starting server"], quiet_optional.MissingOptional()) == [
        *pack_records, "Starting server"]


def test_glsl_node_without_comfy_angle_is_silenced():
    """ComfyUI 0.33.0 with torchaudio installed but not comfy-angle: the GLSL node's failure and the summary that
    lists only it go, and so does the banner about the missing templates package; a failure of another core
    file still shows with its summary."""
    quiet = quiet_optional.MissingOptional(["OpenGL", "comfy_angle"], templates_missing=True)
    records = startup([("nodes_glsl.py", "comfy_angle")])[1:]      # no "torchaudio missing" with torchaudio in
    banner = "********** ERROR ***********\n\ncomfyui-workflow-templates is not installed.\n\nPlease install"
    assert passed([*records, banner, "Starting server"], quiet) == ["Starting server"]
    other = startup([("nodes_glsl.py", "comfy_angle"), ("nodes_canny.py", "kornia_missing_here")])[1:]
    kept = passed(other, quiet_optional.MissingOptional(["comfy_angle"]))
    assert "IMPORT FAILED: nodes_canny.py" in kept and any("kornia_missing_here" in t for t in kept), kept
    assert not any("comfy_angle" in t for t in kept), kept


def test_other_extras_failures_keep_the_summary():
    """When another comfy_extras file fails too, its traceback and the whole summary block stay visible."""
    records = startup([("nodes_audio.py", "torchaudio"), ("nodes_canny.py", "kornia_missing_here")])
    kept = passed(records, quiet_optional.MissingOptional())
    assert any("kornia_missing_here" in t and t.startswith("Traceback") for t in kept), kept
    assert "IMPORT FAILED: nodes_canny.py" in kept and any(t.startswith(quiet_optional.SUMMARY) for t in kept), kept
    assert not any("torchaudio" in t for t in kept if not t.startswith("IMPORT FAILED")), kept
