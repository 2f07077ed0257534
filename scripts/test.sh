#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the test suite in the real ComfyUI.
#
#   bash scripts/test.sh                        # ComfyUI 0.3.75 (.comfyui/ComfyUI, .venv)
#   bash scripts/test.sh --comfyui 0.33.0       # ComfyUI 0.33.0 from ../shared/comfyui/ (.comfyui-0.33, .venv-0.33);
#                                               # skipped with a line saying so where that folder is absent
#   bash scripts/test.sh --comfyui ~/ComfyUI --python ~/ComfyUI/venv/bin/python
#                                               # your own ComfyUI folder with its Python (nothing is set up;
#                                               # that Python needs pytest, and playwright for the browser tests)
# Other arguments go to pytest (e.g. `-m slow` for the full-size DiT-XL/2 test, `-k browser`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tier="0.3.75"
python=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --comfyui) tier="${2:?--comfyui needs 0.3.75, 0.33.0 or a ComfyUI folder}"; shift 2 ;;
        --comfyui=*) tier="${1#--comfyui=}"; shift ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --python=*) python="${1#--python=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
cd "$root"
case "$tier" in
    0.3.75)
        bash "$root/scripts/setup.sh"
        export LAZYDIT_COMFYUI="$root/.comfyui/ComfyUI"
        python="${python:-$root/.venv/bin/python}" ;;
    0.33.0)
        if [ ! -f "$root/../shared/comfyui/ComfyUI-0.33.0.tar.gz" ]; then
            echo "[test] ComfyUI 0.33.0 tier skipped: ../shared/comfyui/ComfyUI-0.33.0.tar.gz is absent beside this checkout"
            exit 0
        fi
        bash "$root/scripts/setup.sh" --comfyui 0.33.0
        export LAZYDIT_COMFYUI="$root/.comfyui-0.33/ComfyUI"
        python="${python:-$root/.venv-0.33/bin/python}" ;;
    *)
        if [ ! -f "$tier/main.py" ] || [ ! -f "$tier/execution.py" ]; then
            echo "[test] '$tier' is neither 0.3.75, 0.33.0 nor a ComfyUI folder (no main.py / execution.py)" >&2
            exit 2
        fi
        export LAZYDIT_COMFYUI="$(cd "$tier" && pwd)"
        python="${python:-$root/.venv/bin/python}" ;;
esac
echo "[test] ComfyUI $(sed -n 's/.*"\(.*\)".*/\1/p' "$LAZYDIT_COMFYUI/comfyui_version.py" 2>/dev/null) in $LAZYDIT_COMFYUI, $python"
exec "$python" -m pytest "${args[@]}"
