"""DiT checkpoints on disk: read one with every check done (for the loader node and the command-line tools),
and the sha256 gate files record."""

import argparse
import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import fields

import safetensors
import safetensors.torch
import torch

from .dit import CheckpointError, DiT, DiTConfig, check_state_dict, infer_config, unwrap_state_dict
from .dydit import DyDiT, is_dydit


def _first_line(err):
    lines = str(err).splitlines()
    return lines[0][:200] if lines else "no detail"


def read_state_dict(path, name=None):
    """(tensor dict, metadata) of a .safetensors or weights-only torch file; errors name the file and the fix."""
    name = name or str(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): the download or copy failed; download it again")
    meta = {}
    try:
        if str(path).endswith(".safetensors"):
            with safetensors.safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            sd = safetensors.torch.load_file(str(path))
        else:
            # Official training checkpoints (DiT, DyDiT train.py) also hold their argparse options: a plain
            # attribute bag, allowed by name; anything else that is not a tensor stays refused.
            with torch.serialization.safe_globals([argparse.Namespace]):
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{name} was refused: it is a pickle that wants to run code or build non-tensor objects, which is "
            f"never executed here ({_first_line(err)}). Use the official DiT .pt or a .safetensors file") from err
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, zipfile.BadZipFile,
            safetensors.SafetensorError) as err:
        # torch's weights-only unpickler reports garbage input through several exception types.
        raise CheckpointError(f"{name} cannot be read ({type(err).__name__}: {_first_line(err)}); "
                              f"the file is truncated or corrupt: download it again") from err
    if not isinstance(sd, dict):
        raise CheckpointError(f"{name} holds a {type(sd).__name__}, not a state dict of tensors")
    sd = unwrap_state_dict(sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: entries {bad[:3]} are not tensors; expected a plain DiT state dict")
    return sd, meta


def config_from_metadata(text, sd):
    """The DiTConfig a file's metadata records, checked against its tensors: heads cannot be read from
    weights, so the metadata's count is used if it divides the width; every other field must agree."""
    try:
        stated = DiTConfig(**json.loads(text))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"the 'config' in its metadata is not a DiT config ({_first_line(err)}); "
                              f"remove that metadata entry or save the model again") from err
    width = infer_config(sd).hidden_size
    heads, dropout = stated.num_heads, stated.class_dropout_prob
    if type(heads) is not int or heads < 1 or width % heads:
        raise CheckpointError(f"its metadata config says num_heads {heads!r}, which does not divide the width "
                              f"{width}: set num_heads to a divisor of {width} or remove the 'config' entry")
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        raise CheckpointError(f"its metadata config says class_dropout_prob {dropout!r}; expected a number in "
                              f"[0, 1): fix or remove the 'config' entry")
    found = infer_config(sd, num_heads=heads, class_dropout_prob=dropout)
    wrong = [f"{f.name} {getattr(stated, f.name)!r} (tensors: {getattr(found, f.name)!r})" for f in fields(DiTConfig)
             if getattr(stated, f.name) != getattr(found, f.name)]
    if wrong:
        raise CheckpointError(f"its metadata config disagrees with its tensors: {', '.join(wrong[:4])}; the "
                              f"metadata is wrong: remove the 'config' entry or save the model again")
    return found


def check_finite(sd):
    """Raises unless every floating-point tensor is finite: one NaN weight makes every image NaN (black)."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{len(bad)} of {len(sd)} tensors hold NaN or inf ({', '.join(bad[:3])}{more}): the "
                              f"weights are damaged (a diverged training run or a broken conversion) and would "
                              f"draw black images; use another checkpoint")


@torch.no_grad()
def blank_weights(module):
    """Names of `module`'s weights that hold nothing a trained model holds: every value zero (or a denormal
    left in fresh memory) or not finite. A loader that only logs missing keys (core UNETLoader) leaves
    them so; weights not yet materialised (meta) are skipped."""
    names = []
    for name, p in module.named_parameters():
        if p.numel() == 0 or p.is_meta or not p.is_floating_point():
            continue
        try:
            top = p.detach().abs().amax().float()
        except (RuntimeError, TypeError, NotImplementedError):     # quantised storage: nothing to tell
            continue
        if not torch.isfinite(top) or float(top) < 1e-30:
            names.append(name)
    return names


def read_checkpoint(path, name=None):
    """(state dict, DiTConfig) of a DiT file, checked before any model is built: readable, tensors only, the
    keys and shapes of the config the tensors imply, a metadata config that agrees, and finite weights."""
    name = name or str(path)
    sd, meta = read_state_dict(path, name)
    try:
        config = config_from_metadata(meta["config"], sd) if "config" in meta else infer_config(sd)
        check_state_dict(config, sd, model_class(sd))
        check_finite(sd)
    except CheckpointError as err:
        raise CheckpointError(f"{name}: {err}") from err
    return sd, config


def model_class(sd):
    """DyDiT for state dicts with its routers (the official DyDiT layout), else DiT."""
    return DyDiT if is_dydit(sd) else DiT


def load_model(path):
    """A DiT or DyDiT from a checkpoint file (every check of read_checkpoint), in fp32 and eval mode."""
    sd, config = read_checkpoint(path)
    model = model_class(sd)(config)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval().requires_grad_(False)


def file_sha256(path):
    """sha256 of a file, the identity gate files record for the model they were made on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
