"""The harness around the real ComfyUI: PromptExecutor's cache_args read from the installed execution.py, and
the start-up filter that silences the audio nodes' missing torchaudio and nothing else."""

import logging
import os

import pytest
import quiet_audio

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


def test_cache_args_read_from_the_installed_execution_py(runtime):
    """ComfyUI 0.3.75's execution.py reads exactly "lru" and "ram"; both are 0 (no output cache)."""
    with open(os.path.join(runtime.COMFY, "execution.py")) as f:
        assert runtime.cache_args(f.read()) == {"lru": 0, "ram": 0}


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
    logger = logging.getLogger(f"quiet_audio_test_{id(quiet)}")
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
    records.append(quiet_audio.SUMMARY + ". This may be because they are missing some dependencies.\n")
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
    assert passed(records + pack_records + ["Starting server"], quiet_audio.MissingTorchaudio()) == [
        *pack_records, "Starting server"]


def test_other_extras_failures_keep_the_summary():
    """When another comfy_extras file fails too, its traceback and the whole summary block stay visible."""
    records = startup([("nodes_audio.py", "torchaudio"), ("nodes_canny.py", "kornia_missing_here")])
    kept = passed(records, quiet_audio.MissingTorchaudio())
    assert any("kornia_missing_here" in t and t.startswith("Traceback") for t in kept), kept
    assert "IMPORT FAILED: nodes_canny.py" in kept and any(t.startswith(quiet_audio.SUMMARY) for t in kept), kept
    assert not any("torchaudio" in t for t in kept if not t.startswith("IMPORT FAILED")), kept
