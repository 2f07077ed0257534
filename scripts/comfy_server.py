"""ComfyUI's own HTTP server and front end (the real main.py of the tree scripts/comfy_tree.py names), started
with the audio-node noise of a torchaudio-less venv silenced (scripts/quiet_optional.py). Arguments go to
main.py unchanged:

    .venv/bin/python scripts/comfy_server.py --cpu --listen 127.0.0.1 --port 8188 --base-directory BASE
"""

import os
import runpy
import sys

import comfy_tree
import quiet_optional

COMFY = comfy_tree.COMFY            # .comfyui/ComfyUI (0.3.75), or the tree $LAZYDIT_COMFYUI names


def main():
    quiet_optional.install()
    main_py = os.path.join(COMFY, "main.py")
    os.chdir(COMFY)
    sys.path[0] = COMFY                # as `python main.py` would have it: ComfyUI's folder first
    sys.argv = [main_py, *sys.argv[1:]]
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
