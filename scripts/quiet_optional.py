"""Silences ComfyUI's start-up noise about optional core nodes whose dependency is not installed, and nothing else.

ComfyUI's requirements list packages the test venvs leave out: torchaudio (the package registry has no build
for the pinned torch 2.14.1; the 0.3.75 venv goes without it, the 0.33.0 venv gets 2.11.0 --no-deps), and, in
newer releases, comfy-angle + PyOpenGL for the GLSL shader node and comfyui-workflow-templates for core's
template browser. ComfyUI then prints warnings, tracebacks, an "IMPORT FAILED" block or an error banner on every
start-up, which would hide a real failure. This filter drops exactly those records, for the modules that are
really missing: a record is dropped only if it names one of them as the missing module of a comfy_extras
file, or is the summary block of a start-up whose only failed extras were those, or is the banner about the
missing templates package. Any other import failure, the pack's own included, still shows.
"""

import importlib.util
import logging

SUMMARY = "WARNING: some comfy_extras/ nodes did not import correctly"
# Optional modules of core nodes -> what goes missing without them.
OPTIONAL = {
    "torchaudio": "the audio nodes",
    "comfy_angle": "the GLSL shader node (comfy_extras/nodes_glsl.py)",
    "OpenGL": "the GLSL shader node (comfy_extras/nodes_glsl.py)",
}
TEMPLATES = "comfyui-workflow-templates is not installed."


def missing_modules():
    """The OPTIONAL modules this Python cannot import."""
    return {name for name in OPTIONAL if importlib.util.find_spec(name) is None}


class MissingOptional(logging.Filter):
    """Drops ComfyUI's records about optional core nodes failing for lack of one of `missing`."""

    def __init__(self, missing=("torchaudio",), templates_missing=False):
        super().__init__()
        self.missing = tuple(missing)
        self.templates_missing = templates_missing
        self.other_failures = 0       # comfy_extras files that failed for another reason: keep the summary
        self.in_summary = False       # inside the summary block that lists only the optional files

    def filter(self, record):
        text = record.getMessage()
        if self.in_summary:
            if text == "":            # the block's last line (nodes.init_extra_nodes)
                self.in_summary = False
            return False
        # A custom node's failure names its custom_nodes folder, even when it came through comfy_extras.
        core = "comfy_extras" in text and "custom_nodes" not in text
        if core and any(text.rstrip().endswith(f"No module named '{name}'") for name in self.missing):
            return False
        if "torchaudio" in self.missing and text.startswith("torchaudio missing,"):
            return False
        if self.templates_missing and TEMPLATES in text and "custom_nodes" not in text:
            return False
        if text.startswith("Cannot import") and "comfy_extras" in text:
            self.other_failures += 1
        if text.startswith(SUMMARY) and not self.other_failures:
            self.in_summary = True
            return False
        return True


def install():
    """Adds the filter to the root logger (ComfyUI logs through it) if an optional module is really missing."""
    root = logging.getLogger()
    missing = missing_modules()
    templates_missing = importlib.util.find_spec("comfyui_workflow_templates") is None
    if not missing and not templates_missing:
        return None
    for f in root.filters:
        if isinstance(f, MissingOptional):
            return f
    quiet = MissingOptional(sorted(missing), templates_missing)
    root.addFilter(quiet)
    return quiet
