"""Calibration: the lazy ratio gates actually reach at each threshold, measured by sampling.

The table (threshold -> ratio, averaged over step counts) is what the laziness slider shows; the per-step-
count rows, including step counts the gates were not trained for, show how far that average holds."""

import torch

from .diffusion import GaussianDiffusion
from .policies import LearnedGates
from .run import LazyRun

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@torch.no_grad()
def calibrate(model, gates, step_counts=(10, 20, 30, 50), thresholds=THRESHOLDS, rows=8, cfg_scale=4.0, seed=0):
    """Returns (table [[threshold, mean ratio]], per_steps {steps: [[threshold, ratio]]})."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c.num_classes, (rows,), generator=g)
    noise = torch.randn(rows, c.in_channels, c.input_size, c.input_size, generator=g)
    diffusion = GaussianDiffusion()
    per_steps = {}
    for n in step_counts:
        per_steps[n] = []
        for thr in thresholds:
            with LazyRun(model, LearnedGates(gates, thr)) as run:
                diffusion.ddim_sample(run, noise, y, n, cfg_scale, null_label=c.num_classes)
            per_steps[n].append([thr, round(run.report["ratio"], 4)])
    table = [[thr, round(sum(per_steps[n][i][1] for n in step_counts) / len(step_counts), 4)]
             for i, thr in enumerate(thresholds)]
    return table, per_steps
