"""ComfyUI's own HTTP server and front end (the real main.py of the tree scripts/setup.sh installs), started
with the audio-node noise of a torchaudio-less venv silenced (scripts/quiet_audio.py). Arguments go to
main.py unchanged:

    .venv/bin/python scripts/comfy_server.py --cpu --listen 127.0.0.1 --port 8188 --base-directory BASE
"""

import os
import runpy
import sys

import quiet_audio

COMFY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".comfyui", "ComfyUI")


def main():
    quiet_audio.install()
    main_py = os.path.join(COMFY, "main.py")
    os.chdir(COMFY)
    sys.path[0] = COMFY                # as `python main.py` would have it: ComfyUI's folder first
    sys.argv = [main_py, *sys.argv[1:]]
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
