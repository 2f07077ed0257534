"""Fixtures: the real ComfyUI 0.3.75 in-process (scripts/comfy_headless.py) in a temporary base directory.
Tests of lazy_core never request them, so they run without ComfyUI."""

import importlib.util
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load("checkout")  # binds `lazydit` to this checkout before any test module imports it
headless = _load("comfy_headless")


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI imported in-process on the CPU, every node (core + this pack) registered."""
    return headless.Comfy(str(tmp_path_factory.mktemp("comfy_base")))


@pytest.fixture()
def clean_output(comfy):
    shutil.rmtree(comfy.output, ignore_errors=True)
    os.makedirs(comfy.output)
    return comfy.output


@pytest.fixture(scope="session")
def runtime():
    """scripts/comfy_headless.py as a module (paths, base-directory layout)."""
    return headless
