"""The engine's layout: sub-packages with no import cycle, and nothing in lazy_core imports ComfyUI."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ROOT / "lazy_core"
PACKAGES = ("engine", "models", "training", "demo")


def package_imports():
    """{package: set of sibling packages it imports}, read from the source."""
    edges = {p: set() for p in PACKAGES}
    for pkg in PACKAGES:
        for path in (CORE / pkg).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                    edges[pkg].add(node.module.split(".")[0])
    return edges


def test_sub_packages_import_without_a_cycle():
    edges = package_imports()
    assert edges["models"] == set(), "models must stand alone"
    assert edges["engine"] <= {"models"}
    seen, order = set(), []

    def visit(pkg, path):
        assert pkg not in path, f"import cycle: {' -> '.join(path + [pkg])}"
        if pkg in seen:
            return
        for dep in edges[pkg]:
            visit(dep, path + [pkg])
        seen.add(pkg)
        order.append(pkg)

    for pkg in PACKAGES:
        visit(pkg, [])
    assert set(order) == set(PACKAGES)


def test_lazy_core_imports_with_comfy_blocked():
    """Every module of lazy_core imports as `lazy_core` from the pack folder (how its command lines run in a
    plain custom_nodes clone) in a process where any `comfy*` import fails."""
    modules = sorted(f"lazy_core.{p.parent.name}.{p.stem}" for p in CORE.glob("*/*.py")
                     if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('comfy', 'comfy_api', 'comfy_extras', 'folder_paths', 'nodes'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(len([m for m in sys.modules if m.startswith('lazy_core.')]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=CORE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= len(modules)
