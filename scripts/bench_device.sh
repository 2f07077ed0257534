#!/usr/bin/env bash
# The device benchmark in one command: one GPU, one call of at most 8 minutes, one table (scripts/bench_device.py
# says what is in it). It runs on the machine's own Python, not on the pinned venv:
#
#   bash scripts/bench_device.sh             # on a GPU machine (CUDA events, fp16 and bf16, the full sizes)
#   bash scripts/bench_device.sh --dry-run   # the same code paths at tiny sizes on this CPU (a test runs it)
#   bash scripts/bench_device.sh --prepare   # here, before a GPU machine that cannot reach the package registry:
#                                            # stages .device/ (git-ignored; carry it along)
#
# A GPU machine with no registry has torch but not all of ComfyUI's dependencies nor a ComfyUI tree. --prepare
# downloads, for CPython 3.12 on x86-64, the wheels of what ComfyUI imports at start-up and such images lack
# (av, torchsde, trampoline) into .device/wheels, and copies the ComfyUI tree into .device/ComfyUI; the run then
# installs those wheels into a temporary folder (pip --no-index) and uses that tree. Without .device/ the model
# rows still run (PixArt needs ComfyUI's model code: "n/a" without it), and the ComfyUI rows say "n/a" with why.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
stage="$root/.device"
if [ "${1:-}" = "--prepare" ]; then
    tree="${LAZYDIT_COMFYUI:-$root/.comfyui/ComfyUI}"
    [ -f "$tree/main.py" ] || { echo "[bench_device] no ComfyUI tree at $tree; run scripts/setup.sh first" >&2; exit 2; }
    rm -rf "$stage" && mkdir -p "$stage/wheels"
    "${PIP:-$root/.venv/bin/pip}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$stage/wheels" av torchsde==0.2.6 trampoline==0.1.2
    # The tree without what an in-process run on the GPU never reads (tests, the API nodes, the front end's docs).
    tar -C "$(dirname "$tree")" --exclude=.git --exclude='tests*' --exclude=comfy_api_nodes --exclude=__pycache__ \
        -cf - "$(basename "$tree")" | tar -C "$stage" -xf -
    [ "$(basename "$tree")" = ComfyUI ] || mv "$stage/$(basename "$tree")" "$stage/ComfyUI"
    echo "[bench_device] staged $(du -sh "$stage" | cut -f1) in .device/ (wheels: $(ls "$stage/wheels" | tr '\n' ' '))"
    exit 0
fi
# Which Python: $PYTHON, else the pinned venv where it works (this machine), else the machine's python3.
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if "$root/.venv/bin/python" -c 'import torch' 2>/dev/null; then py="$root/.venv/bin/python"; else py=python3; fi
fi
if [ -d "$stage/wheels" ] && ls "$stage"/wheels/*.whl >/dev/null 2>&1; then
    site="$(mktemp -d)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$stage"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${LAZYDIT_COMFYUI:-}" ] && [ -f "$stage/ComfyUI/main.py" ]; then export LAZYDIT_COMFYUI="$stage/ComfyUI"; fi
export PYTHONUNBUFFERED=1
limit=480                                 # 8 minutes: the whole benchmark fits one device call
case " $* " in *" --dry-run "*) limit=600 ;; esac   # tiny sizes, but a shared CPU can be slow
exec timeout "$limit" "$py" "$root/scripts/bench_device.py" "$@"
