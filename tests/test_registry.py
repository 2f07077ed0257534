"""What the Comfy Registry publishes: .comfyignore keeps the tests, scripts and docs out and the pack's own files
in; every UI workflow has its same-name .jpg thumbnail made from real output; requires-comfyui starts at the
oldest ComfyUI the suite runs on."""

import fnmatch
import glob
import json
import os
import re
import subprocess

from PIL import Image, ImageStat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ignored(path, patterns):
    """Whether a .gitignore-style folder or file pattern list drops `path` (relative, with / separators)."""
    parts = path.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            folder = pattern.rstrip("/")
            if any(fnmatch.fnmatch(p, folder) for p in parts[:-1]):
                return True
        elif fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(parts[-1], pattern):
            return True
    return False


def test_comfyignore_keeps_tests_scripts_and_docs_out():
    """Every tracked file under tests/, scripts/, docs/ and .ci/ is left out; __init__.py, nodes/, lazy_core/,
    weights/, example_workflows/, README, LICENSE and pyproject.toml all ship."""
    with open(os.path.join(ROOT, ".comfyignore")) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for path in tracked:
        top = path.split("/")[0]
        drop = top in ("tests", "scripts", "docs", ".ci")
        assert ignored(path, patterns) == drop, (path, drop)
    shipped = [p for p in tracked if not ignored(p, patterns)]
    for must in ("__init__.py", "pyproject.toml", "README.md", "LICENSE", "nodes/__init__.py",
                 "weights/manifest.json", "example_workflows/lazydit_demo_fashion.json"):
        assert must in shipped, must


def test_every_ui_workflow_has_a_real_thumbnail():
    """A same-name JPEG beside each UI workflow, at least 256 px wide, with real content (not one flat colour)."""
    for path in sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json"))):
        data = json.load(open(path))
        if not isinstance(data.get("nodes"), list):
            continue
        thumb = path[:-len(".json")] + ".jpg"
        assert os.path.exists(thumb), f"{os.path.basename(thumb)} is missing (scripts/thumbnails.py makes it)"
        with Image.open(thumb) as img:
            assert img.format == "JPEG" and img.width >= 256, (thumb, img.format, img.size)
            assert max(ImageStat.Stat(img.convert("L")).stddev) > 5, f"{thumb} is one flat colour"


def test_requires_comfyui_starts_at_the_oldest_tested_release(runtime):
    """requires-comfyui is ">=0.3.75", the default tier of scripts/setup.sh, and the ComfyUI this suite runs on
    satisfies it."""
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    spec = re.search(r'^requires-comfyui\s*=\s*"([^"]+)"', text, re.M).group(1)
    assert spec == ">=0.3.75", spec
    assert 'tier="0.3.75"' in open(os.path.join(ROOT, "scripts", "setup.sh")).read()
    assert runtime.comfy_tree.version_tuple(runtime.COMFY) >= (0, 3, 75), runtime.comfy_tree.version(runtime.COMFY)
