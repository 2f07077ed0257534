"""Trains the embedded demo model: a small class-conditional DiT on Fashion-MNIST, with DiT's recipe.

Recipe (Peebles & Xie, train.py): eps prediction with learned sigma (MSE + VB), linear betas over 1000
steps, 10 % label dropout to the null class, AdamW with no weight decay, EMA of the weights. Differences
for a 2-core CPU: a small config (DiT-Demo/2: depth 6, width 256, 64 tokens), a larger learning rate with
warm-up, and an EMA decay that warms up, because the run is thousands of steps rather than 400k.

    python -m lazy_core.demo.train_demo --out runs/demo --steps 6000
Resumable: run the same command again and it continues from runs/demo/last.pt.
"""

import argparse
import copy
import json
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..models.diffusion import GaussianDiffusion
from ..models.dit import DiT, config_for
from . import fashion

log = logging.getLogger(__name__)


def fashion_latents(split="train"):
    """Fashion-MNIST as demo latents: (N, 4, 16, 16) in [-1, 1] and labels (N,)."""
    images, labels = fashion.load(split)
    grey = torch.from_numpy(fashion.to_grey32(images))          # (N, 1, 32, 32)
    return F.pixel_unshuffle(grey * 2 - 1, 2), torch.from_numpy(labels)  # (N, 4, 16, 16)


@torch.no_grad()
def update_ema(ema_model, model, decay):
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.mul_(decay).add_(p.detach(), alpha=1 - decay)


def main(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "last.pt")

    # Data: the published 60k training split.
    latents, labels = fashion_latents("train")

    # Model, EMA, optimiser.
    config = config_for("DiT-Demo/2", image_size=128)
    model = DiT(config)
    model.initialize_weights(seed=args.seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0)
    diffusion = GaussianDiffusion()
    step, seconds, generator = 0, 0.0, torch.Generator().manual_seed(args.seed)
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
        step, seconds = state["step"], state["seconds"]
        log.info("resumed at step %d", step)
    log.info("DiT-Demo/2: %.2f M parameters, %d tokens", sum(p.numel() for p in model.parameters()) / 1e6,
             config.tokens)

    def save():
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "generator": generator.get_state(), "step": step, "seconds": seconds}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    # Loop.
    model.train()
    running, t0 = [], time.time()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    while step < args.steps:
        idx = torch.randint(0, len(latents), (args.batch,), generator=generator)
        x, y = latents[idx], labels[idx]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=generator) < 0.5, x, x.flip(-1)) if args.flip else x
        t = torch.randint(0, diffusion.num_timesteps, (len(x),), generator=generator)
        noise = torch.randn(x.shape, generator=generator)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        with autocast:
            loss = diffusion.training_losses(model, x, t, y, noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        update_ema(ema, model, min(args.ema, (1 + step) / (10 + step)))
        running.append(loss.item())
        if step % args.log_every == 0:
            now = time.time()
            seconds += now - t0
            log.info("step %d  loss %.4f  %.1f img/s", step, float(np.mean(running)),
                     args.log_every * args.batch / (now - t0))
            running, t0 = [], now
        if step % args.save_every == 0 or step == args.steps:
            save()

    sd = {k: v.half().contiguous() for k, v in ema.state_dict().items()}
    meta = {"config": json.dumps(config.to_dict()), "steps": str(step), "train_seconds": f"{seconds:.0f}"}
    save_file(sd, os.path.join(args.out, "dit_demo_fashion.safetensors"), metadata=meta)
    log.info("done: %d steps, %.0f s of training", step, seconds)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (Fashion-MNIST items are left-right symmetric enough)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=250)
    main(p.parse_args())
