"""DiT checkpoints on disk: load one for the command-line tools, and the sha256 gate files record."""

import hashlib
import json

from safetensors import safe_open
from safetensors.torch import load_file

from .dit import DiT, DiTConfig


def load_model(path):
    """A DiT from a `.safetensors` file, in fp32 and eval mode; its metadata config wins over inference."""
    sd = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    sd = {k: v.float() for k, v in sd.items()}
    if "config" in meta:
        model = DiT(DiTConfig(**json.loads(meta["config"])))
        model.load_state_dict(sd, strict=True)
    else:
        model = DiT.from_state_dict(sd)
    return model.eval().requires_grad_(False)


def file_sha256(path):
    """sha256 of a file, the identity gate files record for the model they were made on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
