"""Installed as users install it: the repository's files in custom_nodes/ComfyUI-LazyDiT (a hyphenated folder,
no set-up script, nothing in site-packages). The command lines run from that folder, and ComfyUI loads the
pack from it, starts without a traceback and runs the demo workflow."""

import json
import os
import subprocess
import sys

from lazydit.lazy_core.engine.gates import GateBank

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")


def site_entries_naming_the_pack():
    """Entries of the venv's site-packages that could make `lazydit` importable: a name with "lazydit" in it, or
    a .pth file that points at a checkout of this repository. Folders a .pth file adds (the 0.33.0 venv's layer
    over the base venv) are searched too."""
    code = ("import json, site, sysconfig; "
            "print(json.dumps(sorted({sysconfig.get_paths()['purelib'], *site.getsitepackages()})))")
    todo = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    seen, found = set(), []
    checkout = {os.path.realpath(ROOT), os.path.dirname(os.path.realpath(ROOT))}
    while todo:
        site_dir = os.path.realpath(todo.pop())
        if site_dir in seen or not os.path.isdir(site_dir):
            continue
        seen.add(site_dir)
        for name in os.listdir(site_dir):
            path = os.path.join(site_dir, name)
            if "lazydit" in name.lower():
                found.append(path)
            elif name.endswith(".pth") and os.path.isfile(path):
                text = open(path, errors="replace").read()
                lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
                folders = [line for line in lines if not line.startswith("import ")]
                if ("lazydit" in text.lower() or "lazy_core" in text
                        or any(os.path.realpath(os.path.join(site_dir, folder)) in checkout for folder in folders)):
                    found.append(path)
                todo.extend(os.path.join(site_dir, folder) for folder in folders)
    return found


def test_cli_runs_from_a_plain_clone(tmp_path, runtime):
    """With nothing of the pack in site-packages, `python -m lazy_core.training.sensitivity` run from the
    clone's folder measures the shipped demo model and writes a gate file that loads."""
    assert site_entries_naming_the_pack() == [], "the pack must not be installed in site-packages"
    blank = subprocess.run([sys.executable, "-c", "import lazydit"], cwd=tmp_path, capture_output=True, text=True)
    assert blank.returncode != 0 and "No module named 'lazydit'" in blank.stderr, blank.stderr[-2000:]

    pack = runtime.install_copy(str(tmp_path / "ComfyUI"))
    assert os.path.basename(pack) == "ComfyUI-LazyDiT" and not os.path.exists(os.path.join(pack, ".venv"))
    out = tmp_path / "schedule.safetensors"
    done = subprocess.run([sys.executable, "-m", "lazy_core.training.sensitivity",
                           "--model", "weights/dit_demo_fashion.safetensors", "--out", str(out), "--images", "2",
                           "--steps", "4", "--calibrate", "4", "--threads", "1", "--device", "cpu"],
                          cwd=pack, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    gates = GateBank.load(str(out))
    assert (gates.info.depth, gates.info.width) == (6, 256), (gates.info.depth, gates.info.width)
    assert gates.info.score == "log-cost" and len(gates.info.calibration) > 1, gates.info.calibration


def test_comfyui_loads_the_clone_and_starts_cleanly(server):
    """The server loads the pack from custom_nodes/ComfyUI-LazyDiT; its start-up log has no traceback and no
    failed import; the demo workflow queued over HTTP writes its images."""
    log = server.startup_log()
    pack = os.path.join(server.base, "custom_nodes", "ComfyUI-LazyDiT")
    lines = [line for line in log.splitlines() if line.rstrip().endswith(pack) or pack + " " in line]
    assert any("seconds:" in line and "IMPORT FAILED" not in line for line in lines), log[-3000:]
    for bad in ("Traceback", "IMPORT FAILED", "Cannot import"):
        assert bad not in log, f"'{bad}' in ComfyUI's start-up log:\n{log[-4000:]}"
    info = server.get("/object_info")
    modules = {v["python_module"] for k, v in info.items() if k.startswith("LazyDiT_")}
    assert modules == {"custom_nodes.ComfyUI-LazyDiT"}, modules

    prompt = json.load(open(WORKFLOW))
    prompt["7"]["inputs"]["steps"] = 3
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": "install"})
    assert status == 200, body
    done = server.wait(body["prompt_id"])
    assert done["status"]["status_str"] == "success", done["status"]
    images = done["outputs"]["10"]["images"]
    assert len(images) == 10 and all(
        os.path.exists(os.path.join(server.base, "output", i["subfolder"], i["filename"])) for i in images)
