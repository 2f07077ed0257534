#!/usr/bin/env bash
# The README's demo command: set up (idempotent), then run the demo workflow headless in the real ComfyUI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
