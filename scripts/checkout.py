"""Makes this checkout importable as the package `lazydit`, for the scripts and tests that live in it.

The pack's folder can have any name (users clone it as custom_nodes/ComfyUI-LazyDiT), and its root must not
go on sys.path, where its nodes/ would shadow ComfyUI's nodes.py. So the name is bound in-process to this
folder, without running the pack's __init__ (which needs ComfyUI): nothing is installed anywhere.
"""

import importlib.machinery
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "lazydit"


def register():
    """Binds `lazydit` to this checkout; refuses if it is already bound to another folder."""
    module = sys.modules.get(NAME)
    if module is not None:
        paths = [os.path.realpath(p) for p in getattr(module, "__path__", [])]
        if paths != [os.path.realpath(ROOT)]:
            raise RuntimeError(f"'{NAME}' is already imported from {paths}, not from this checkout {ROOT}; "
                               f"remove the stale link or install from your site-packages")
        return module
    spec = importlib.machinery.ModuleSpec(NAME, None, is_package=True)
    spec.submodule_search_locations = [ROOT]
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    return module


register()
