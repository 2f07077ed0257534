#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the test suite in the real ComfyUI.
# Extra arguments go to pytest (e.g. `-m slow` for the full-size DiT-XL/2 test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
