"""Loaders: DiT checkpoints (official .pt or .safetensors) and the demo model's pixel VAE stand-in."""

import json
import os
import pickle
import zipfile

import folder_paths
import safetensors.torch
import torch
from comfy_api.latest import io

from ..lazy_core.models import pixel_latent
from ..lazy_core.models.dit import CheckpointError, DiTConfig, unwrap_state_dict
from . import dit_model
from .lazy_nodes import CATEGORY

FOLDERS = ("checkpoints", "diffusion_models")
EXTENSIONS = (".pt", ".pth", ".safetensors")
WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DEMO = "dit_demo_fashion.safetensors (built in)"


def checkpoint_files():
    names = {n for f in FOLDERS for n in folder_paths.get_filename_list(f) if n.endswith(EXTENSIONS)}
    return [DEMO, *sorted(names)]


def resolve(name):
    if name == DEMO:
        return os.path.join(WEIGHTS, "dit_demo_fashion.safetensors")
    for folder in FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return path
    raise FileNotFoundError(f"checkpoint {name!r} is not in models/checkpoints or models/diffusion_models")


def read_config(path):
    """The DiTConfig a .safetensors file records in its metadata (files this pack writes), or None."""
    if not path.endswith(".safetensors"):
        return None
    with safetensors.safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return DiTConfig(**json.loads(meta["config"])) if "config" in meta else None


def read_state_dict(path, name):
    """A plain tensor dict from .safetensors or a weights-only torch file; errors name the file and the fix."""
    try:
        if path.endswith(".safetensors"):
            return safetensors.torch.load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{name} was refused: it is a pickle that wants to run code or build non-tensor objects, which is "
            f"never executed here ({str(err).splitlines()[0]}). Use the official DiT .pt or a .safetensors "
            f"file") from err
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, zipfile.BadZipFile,
            safetensors.SafetensorError) as err:
        # torch's weights-only unpickler reports garbage input through several exception types.
        raise CheckpointError(f"{name} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}); "
                              f"the file is truncated or corrupt: download it again") from err
    if not isinstance(sd, dict):
        raise CheckpointError(f"{name} holds a {type(sd).__name__}, not a state dict of tensors")
    sd = unwrap_state_dict(sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: entries {bad[:3]} are not tensors; expected a plain DiT state dict")
    return sd


class LoadDiT(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_DiTLoader",
            display_name="Load DiT Checkpoint",
            category=CATEGORY,
            description="Loads a class-conditional DiT (facebookresearch/DiT layout: DiT-XL/2 256 or 512, any "
                        "size) from models/checkpoints or models/diffusion_models, or the built-in Fashion-MNIST "
                        "demo model. The configuration is read from the weights.",
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_files(), tooltip="Official .pt or .safetensors."),
                io.Combo.Input("latent", options=["auto", "sd15", "pixel"], default="auto",
                               tooltip="Latent space: sd15 = the SD VAE the official DiT uses; pixel = the demo "
                                       "model's VAE stand-in; auto = pixel for 10-class models, else sd15."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, ckpt_name, latent):
        path = resolve(ckpt_name)
        sd = read_state_dict(path, ckpt_name)
        try:
            return io.NodeOutput(dit_model.build(sd, latent, ckpt_name, config=read_config(path)))
        except CheckpointError as err:
            raise CheckpointError(f"{ckpt_name}: {err}") from err


class PixelVAE:
    """The demo model's VAE stand-in, with what core VAEDecode / VAEEncode use."""

    downscale_ratio = pixel_latent.DOWNSCALE
    upscale_ratio = pixel_latent.DOWNSCALE
    latent_channels = 4

    def decode(self, samples):
        return pixel_latent.decode(samples)

    def encode(self, pixels):
        return pixel_latent.encode(pixels[..., :3])

    def spacial_compression_decode(self):
        return self.upscale_ratio

    def spacial_compression_encode(self):
        return self.downscale_ratio

    def temporal_compression_decode(self):
        return None


class LoadDemoVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_DemoVAELoader",
            display_name="Load Demo VAE (pixel)",
            category=CATEGORY,
            description="The demo model's VAE: a fixed, exactly invertible map between a 32x32 grey image (shown "
                        "at 128x128) and the 4-channel latent. Use with core VAE Decode / VAE Encode.",
            inputs=[],
            outputs=[io.Vae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls):
        return io.NodeOutput(PixelVAE())


NODES = [LoadDiT, LoadDemoVAE]
