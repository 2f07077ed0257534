"""Gate training from the graph: data-free self-distillation on the loaded DiT, saved to models/lazy_gates."""

import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..lazy_core.calibrate import calibrate
from ..lazy_core.denoisers import ContextDenoiser, LabelDenoiser
from ..lazy_core.diffusion import parse_step_counts
from ..lazy_core.dit import DiT
from ..lazy_core.train_gates import parser, train
from .lazy_nodes import CATEGORY, GATES

log = logging.getLogger(__name__)


def parse_labels(text, num_classes):
    """"all" or a comma-separated list of class indices -> list[int]; raises naming the bad entry."""
    if text.strip().lower() in ("", "all"):
        return list(range(num_classes))
    labels = []
    for part in text.split(","):
        part = part.strip().split(":")[0]
        if not part.isdigit() or not 0 <= int(part) < num_classes:
            raise ValueError(f"label {part!r} is not a class index in 0..{num_classes - 1}; write e.g. '1, 5, 9' "
                             f"or 'all'")
        labels.append(int(part))
    return labels


def make_denoiser(model, labels, positive, negative, latent):
    """The model as lazy_core training sees it: class labels for a DiT, prompt contexts for PixArt."""
    base = model.model
    net = base.diffusion_model
    if isinstance(net, DiT):
        return LabelDenoiser(net, parse_labels(labels, net.config.num_classes))
    missing = [n for n, v in (("positive", positive), ("negative", negative), ("latent", latent)) if v is None]
    if missing:
        raise ValueError(f"Train Lazy Gates on {type(net).__name__} (a text-conditioned model) learns from prompts: "
                         f"connect {', '.join(missing)} (positive = the prompts, negative = the uncond prompt, "
                         f"latent = an empty latent of the size to train at)")
    dtype = base.manual_cast_dtype or base.get_dtype()

    def forward(x, t, context):
        return net(x.to(dtype), t.float(), context.to(dtype))
    contexts = [c[0][i:i + 1] for c in positive for i in range(c[0].shape[0])]
    return ContextDenoiser(net, forward, contexts, negative[0][0][:1], latent["samples"].shape[1:])


class TrainLazyGates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_TrainGates",
            display_name="Train Lazy Gates",
            category=CATEGORY,
            description="Trains lazy gates for the connected model without any data set: the model samples its "
                        "own trajectories (with guidance) at 10-50 steps, from class labels (DiT) or from the "
                        "prompts in `positive` with `negative` as the uncond prompt (PixArt: connect both and a "
                        "latent of the size to train at), and the gates learn to reuse what the full model "
                        "would compute anyway. Saves to models/lazy_gates and measures a calibration table "
                        "(laziness -> lazy ratio). Minutes on a GPU; the small demo model trains in a few "
                        "minutes on a CPU.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT (Load DiT Checkpoint) or a PixArt model."),
                io.String.Input("labels", default="all", tooltip="DiT: classes to learn from, 'all' or '1, 5, 9'."),
                io.Int.Input("iterations", default=300, min=10, max=20000, tooltip="Training iterations "
                             "(paper: 500)."),
                io.Int.Input("batch", default=32, min=2, max=1024, step=2, tooltip="Rows per iteration."),
                io.Float.Input("laziness_pressure", default=1e-4, min=0.0, max=0.1, step=1e-5, round=1e-7,
                               tooltip="ρ: higher trains lazier gates (paper range 1e-7 .. 1e-2)."),
                io.String.Input("step_counts", default="10,20,30,50",
                                tooltip="Step counts whose step sizes the gates learn."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.String.Input("filename_prefix", default="lazydit_gates"),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="PixArt: the prompts to learn from (several via Conditioning "
                                              "Combine). Not used for DiT, which learns from `labels`."),
                io.Conditioning.Input("negative", optional=True, tooltip="PixArt: the uncond prompt."),
                io.Latent.Input("latent", optional=True, tooltip="PixArt: an empty latent of the size to train "
                                                                 "at (gates are trained per token count)."),
            ],
            outputs=[GATES.Output(display_name="gates"), io.String.Output(display_name="log")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, labels, iterations, batch, laziness_pressure, step_counts, seed, filename_prefix,
                positive=None, negative=None, latent=None):
        counts = parse_step_counts(step_counts)    # a bad entry fails before any work is done
        mm.load_models_gpu([model])                # first: the denoiser works where the model now is
        denoiser = make_denoiser(model, labels, positive, negative, latent)
        args = parser().parse_args(["--model", "-", "--out", "-", "--iters", str(iterations), "--batch", str(batch),
                                    "--rho", str(laziness_pressure), "--step-counts", step_counts,
                                    "--seed", str(seed), "--pool", str(max(batch, 64))])
        pbar = comfy.utils.ProgressBar(iterations)
        losses = []

        def on_iter(i, total, loss):
            losses.append(loss)
            pbar.update_absolute(i, total)
        with torch.inference_mode(False), torch.enable_grad():
            gates = train(denoiser, args, on_iter=on_iter)
        with torch.no_grad():
            gates.info.calibration, per_steps = calibrate(denoiser, gates, step_counts=counts)
        gates.info.recipe["calibration_per_steps"] = per_steps
        out_dir = folder_paths.get_folder_paths("lazy_gates")[0]
        os.makedirs(out_dir, exist_ok=True)
        n = len([f for f in os.listdir(out_dir) if f.startswith(filename_prefix)])
        path = os.path.join(out_dir, f"{filename_prefix}_{n:05d}.safetensors")
        gates.save(path)
        patcher = comfy.model_patcher.ModelPatcher(gates, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        text = (f"saved {os.path.basename(path)}; loss {losses[0]:.5f} -> {losses[-1]:.5f} over {iterations} "
                f"iterations; calibration (laziness -> lazy ratio): "
                + ", ".join(f"{t:.2f}->{r:.0%}" for t, r in gates.info.calibration))
        log.info(text)
        return io.NodeOutput(patcher, text)


NODES = [TrainLazyGates]
