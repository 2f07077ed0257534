"""Loaders: DiT checkpoints (official .pt or .safetensors) and the demo model's pixel VAE stand-in."""

import os

import folder_paths
from comfy_api.latest import io

from ..lazy_core.models import pixel_latent
from ..lazy_core.models.checkpoint import read_checkpoint
from . import dit_model
from .checks import Combo, check_inputs
from .lazy_nodes import CATEGORY

FOLDERS = ("checkpoints", "diffusion_models")
EXTENSIONS = (".pt", ".pth", ".safetensors")
WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DEMO = "dit_demo_fashion.safetensors (built in)"
DYDIT_DEMO = "dydit_demo_fashion.safetensors (built in)"
BUILT_IN = {DEMO: "dit_demo_fashion.safetensors", DYDIT_DEMO: "dydit_demo_fashion.safetensors"}
LATENTS = ("auto", "sd15", "pixel")


def checkpoint_files():
    names = {n for f in FOLDERS for n in folder_paths.get_filename_list(f) if n.endswith(EXTENSIONS)}
    return [DEMO, DYDIT_DEMO, *sorted(names)]


def resolve(name):
    if name in BUILT_IN:
        return os.path.join(WEIGHTS, BUILT_IN[name])
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
            display_name="LazyDiT Load DiT Checkpoint",
            category=CATEGORY,
            description="Loads a class-conditional DiT (facebookresearch/DiT layout: DiT-XL/2 256 or 512, any "
                        "size) from models/checkpoints or models/diffusion_models, or the built-in Fashion-MNIST "
                        "demo model. DyDiT checkpoints (official layout, with width and token routers) load as "
                        "DyDiT and sample dynamically. The configuration is read from the weights.",
            inputs=[
                Combo("ckpt_name", checkpoint_files(), tooltip="Official .pt or .safetensors."),
                Combo("latent", LATENTS, default="auto",
                      tooltip="Latent space: sd15 = the SD VAE the official DiT uses; pixel = the demo model's "
                              "VAE stand-in; auto = pixel for 10-class models, else sd15."),
                Combo("cfg_mode", dit_model.CFG_MODES, default=dit_model.CFG_MODES[0], optional=True,
                      tooltip="What guidance (cfg) acts on: all channels = all four eps channels (ComfyUI's "
                              "usual CFG); official DiT (3 channels) = the first three, as facebookresearch/DiT "
                              "samples (its forward_with_cfg)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, ckpt_name, latent, cfg_mode=dit_model.CFG_MODES[0]):
        check_inputs(cls, latent=latent, cfg_mode=cfg_mode)      # a missing file is resolve()'s error
        sd, config = read_checkpoint(resolve(ckpt_name), ckpt_name)
        model = dit_model.build(sd, latent, ckpt_name, config=config)
        if cfg_mode == dit_model.CFG_MODES[1]:
            model.set_model_sampler_post_cfg_function(dit_model.guide_three_channels)
        return io.NodeOutput(model)


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
            display_name="LazyDiT Load Demo VAE (pixel)",
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
