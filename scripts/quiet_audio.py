"""Silences ComfyUI's start-up noise about its audio nodes when torchaudio is missing, and nothing else.

ComfyUI's requirements list torchaudio, but the package registry has no torchaudio build for the pinned
torch 2.14.1 (its newest is 2.11.1, built against torch 2.11), so the audio nodes cannot load here. ComfyUI
then prints three "torchaudio missing" warnings, two tracebacks and an "IMPORT FAILED" block on every
start-up, which would hide a real failure. This filter drops exactly those records: a record is dropped
only if it names torchaudio as the missing module, or is the summary block of a start-up whose only
failed extras were the audio ones. Any other import failure, the pack's own included, still shows.
"""

import importlib.util
import logging

SUMMARY = "WARNING: some comfy_extras/ nodes did not import correctly"


class MissingTorchaudio(logging.Filter):
    """Drops ComfyUI's records about its audio nodes failing for lack of torchaudio."""

    def __init__(self):
        super().__init__()
        self.other_failures = 0       # comfy_extras files that failed for another reason: keep the summary
        self.in_summary = False       # inside the summary block that lists only the audio files

    def filter(self, record):
        text = record.getMessage()
        if self.in_summary:
            if text == "":            # the block's last line (nodes.init_extra_nodes)
                self.in_summary = False
            return False
        # A custom node's failure names its custom_nodes folder, even when it came through comfy_extras.
        audio = (text.rstrip().endswith("No module named 'torchaudio'") and "comfy_extras" in text
                 and "custom_nodes" not in text)
        if text.startswith("torchaudio missing,") or audio:
            return False
        if text.startswith("Cannot import") and "comfy_extras" in text:
            self.other_failures += 1
        if text.startswith(SUMMARY) and not self.other_failures:
            self.in_summary = True
            return False
        return True


def install():
    """Adds the filter to the root logger (ComfyUI logs through it) if torchaudio is really missing."""
    root = logging.getLogger()
    if importlib.util.find_spec("torchaudio") is not None:
        return None
    for f in root.filters:
        if isinstance(f, MissingTorchaudio):
            return f
    quiet = MissingTorchaudio()
    root.addFilter(quiet)
    return quiet
