"""DiT's own sampling schedule as SIGMAS, so SamplerCustom can sample a DiT as facebookresearch/DiT does."""

import torch
from comfy_api.latest import io

from ..lazy_core.models.diffusion import space_timesteps
from .lazy_nodes import CATEGORY


def respaced_sigmas(model_sampling, steps):
    """The sigmas of DiT's respaced timesteps (diffusion/respace.py), from the noisiest, then 0. Taken
    from the model's own table, so ComfyUI maps each one back to exactly that timestep."""
    table = getattr(model_sampling, "sigmas", None)
    if table is None or table.ndim != 1:
        raise ValueError(f"DiT Schedule respaces a discrete (DDPM) schedule of timesteps; this model samples with "
                         f"{type(model_sampling).__name__}: use BasicScheduler instead")
    if not 2 <= steps <= len(table):
        raise ValueError(f"steps = {steps} is not in 2..{len(table)}; DiT's sample.py uses 250, DDIM runs often 50")
    timesteps = torch.tensor(space_timesteps(steps, len(table))[::-1])
    return torch.cat([table[timesteps].float().cpu(), torch.zeros(1)])


class DiTSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_DiTSchedule",
            display_name="LazyDiT DiT Schedule",
            category=CATEGORY,
            description="The timesteps facebookresearch/DiT samples at (its respace.py) as SIGMAS for "
                        "SamplerCustom. With the euler or ddim sampler this is DiT's DDIM; ComfyUI's "
                        "ddim_uniform scheduler steps at other timesteps. For DiT's guidance too, set the DiT "
                        "loader's cfg_mode to 'official DiT (3 channels)'.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT or PixArt model (a 1000-step discrete schedule)."),
                io.Int.Input("steps", default=50, min=2, max=1000,
                             tooltip="Sampling steps; DiT's sample.py uses 250, the LazyDiT paper 50 (DDIM)."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, model, steps):
        return io.NodeOutput(respaced_sigmas(model.get_model_object("model_sampling"), steps))


NODES = [DiTSchedule]
