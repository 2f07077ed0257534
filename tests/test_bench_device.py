"""scripts/bench_device.sh --dry-run: the device benchmark's code paths (every section of its one table) at tiny
sizes on the CPU, with the Python and ComfyUI this suite runs on."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_device_dry_run_prints_every_section():
    """Exit 0; one table with the speed rows of DiT and PixArt (unpatched, laziness 0, learned gates at r = 0,
    forced 25 / 50 / 67 % with the MAC-ideal), host syncs, cache memory against its bound, ComfyUI's demo
    workflow exact vs lazy; forced 67 % is measured or "n/a" where the engine's policy refuses it."""
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "bench_device.sh"), "--dry-run"],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("section "))
    table = [re.split(r"\s{2,}", line.strip()) for line in lines[start + 1:] if line.strip()]
    sections = {r[0].split()[0] for r in table}
    assert sections == {"speed", "syncs", "memory", "compile", "comfyui"}, sections
    speed = [line for line in lines if line.startswith("speed ")]
    for model in ("DiT-XL/2", "PixArt-Σ"):
        for variant in ("unpatched", "laziness 0 (never lazy)", "learned gates, r=0", "forced r=0.25",
                        "forced r=0.50", "forced r=0.67"):
            assert any(model in line and variant in line for line in speed), (model, variant, speed)
    half = next(line for line in speed if "DiT-XL/2" in line and "forced r=0.50" in line).split()
    assert float(half[-1]) > 1.5 and float(half[-4]) == 0.5, half           # ideal 1 / (1 - 0.5 f), r = 0.5
    chains = next(line for line in speed if "DiT-XL/2" in line and "forced r=0.67" in line)
    assert "share refused by ForcedRatio" in chains or re.search(r" 0\.6[0-9]{2} ", chains), chains
    syncs = [line for line in lines if line.startswith("syncs ")]
    assert syncs and all("0.00 syncs/call beyond" in line for line in syncs), syncs
    assert any("bound" in line for line in lines if line.startswith("memory "))
    demo = next(line for line in lines if line.startswith("comfyui "))
    assert re.search(r"mean pixel difference \d+\.\d+ / 255 over 2 images", demo), demo
