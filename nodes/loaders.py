"""Loaders: DiT checkpoints (official .pt or .safetensors) and the demo model's pixel VAE stand-in."""

import os

import folder_paths
from comfy_api.latest import io

from ..lazy_core.models import pixel_latent
from ..lazy_core.models.checkpoint import read_checkpoint
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
        sd, config = read_checkpoint(resolve(ckpt_name), ckpt_name)
        return io.NodeOutput(dit_model.build(sd, latent, ckpt_name, config=config))


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
