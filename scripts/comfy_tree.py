"""Which ComfyUI folder the harness runs: $LAZYDIT_COMFYUI if set (scripts/test.sh sets it for the 0.33.0 tier
and for a user's own ComfyUI), else the 0.3.75 tree scripts/setup.sh installs in .comfyui/ComfyUI."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, ".comfyui", "ComfyUI")
COMFY = os.path.abspath(os.environ.get("LAZYDIT_COMFYUI") or DEFAULT)


def version(comfy=COMFY):
    """The tree's version from its comfyui_version.py ("0.3.75"), or None where the file has none."""
    try:
        with open(os.path.join(comfy, "comfyui_version.py")) as f:
            found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def version_tuple(comfy=COMFY):
    """version() as integers for comparisons, (0,) where unknown."""
    parts = re.findall(r"\d+", version(comfy) or "")
    return tuple(int(p) for p in parts[:3]) or (0,)
