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


class TrainLazyGates(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_TrainGates",
            display_name="Train Lazy Gates",
            category=CATEGORY,
            description="Trains lazy gates for the connected DiT without any data set: the model samples its own "
                        "trajectories from the given labels (with guidance) at 10-50 steps, and the gates learn "
                        "to reuse what the full model would compute anyway. Saves to models/lazy_gates and "
                        "measures a calibration table (laziness -> lazy ratio). Minutes on a GPU; the small demo "
                        "model trains in a few minutes on a CPU.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT from Load DiT Checkpoint."),
                io.String.Input("labels", default="all", tooltip="Classes to learn from: 'all' or '1, 5, 9'."),
                io.Int.Input("iterations", default=300, min=10, max=20000, tooltip="Training iterations "
                             "(paper: 500)."),
                io.Int.Input("batch", default=32, min=2, max=1024, step=2, tooltip="Rows per iteration."),
                io.Float.Input("laziness_pressure", default=1e-4, min=0.0, max=0.1, step=1e-5, round=1e-7,
                               tooltip="ρ: higher trains lazier gates (paper range 1e-7 .. 1e-2)."),
                io.String.Input("step_counts", default="10,20,30,50",
                                tooltip="Step counts whose step sizes the gates learn."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.String.Input("filename_prefix", default="lazydit_gates"),
            ],
            outputs=[GATES.Output(display_name="gates"), io.String.Output(display_name="log")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, labels, iterations, batch, laziness_pressure, step_counts, seed, filename_prefix):
        dit = model.model.diffusion_model
        if not isinstance(dit, DiT):
            raise ValueError(f"Train Lazy Gates trains DiT models (Load DiT Checkpoint); this MODEL's diffusion "
                             f"model is {type(dit).__name__}. Train PixArt gates with the command-line trainer")
        classes = parse_labels(labels, dit.config.num_classes)
        args = parser().parse_args(["--model", "-", "--out", "-", "--iters", str(iterations), "--batch", str(batch),
                                    "--rho", str(laziness_pressure), "--step-counts", step_counts,
                                    "--seed", str(seed), "--pool", str(max(batch, 64))])
        mm.load_models_gpu([model])
        pbar = comfy.utils.ProgressBar(iterations)
        losses = []

        def on_iter(i, total, loss):
            losses.append(loss)
            pbar.update_absolute(i, total)
        with torch.inference_mode(False), torch.enable_grad():
            gates = train(dit, args, labels=classes, on_iter=on_iter)
        with torch.no_grad():
            gates.info.calibration, per_steps = calibrate(dit, gates)
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
