"""Fine-tunes a dense DiT into a DyDiT (Zhao et al., ICLR 2025) with the official recipe, scaled down.

The official stage 1 (DyDiT/train.py): routers added to the dense checkpoint, started all-on; each step runs
the dynamic model (Gumbel-sigmoid hard masks, straight-through) and the complete (dense) model on the same
batch, with loss = diffusion loss (dynamic) + diffusion loss (complete) + 2 (FLOPs ratio - target)^2, the
target falling linearly from 1 to lambda over a warm-up (held at 1 for the first steps), timesteps drawn
stratified over the four quarters of [0, 1000), AdamW without weight decay, EMA weights. The official code
does not distil from the dense model; the complete-model loss keeps the shared weights good at full width.

Scaled to a 2-core CPU and a few hundred steps: batch 32, a warm-up of a third of the run, a higher learning
rate for the new routers than for the pretrained weights (they must move from their all-on start within the
run), an EMA that warms up, gradient clipping at 1 as the demo model was trained. Stage 2 (fine-tuning
without the complete model) is left out.

    python -m lazy_core.training.train_dydit --model weights/dit_demo_fashion.safetensors \\
        --out weights/dydit_demo_fashion.safetensors --target 0.5
"""

import argparse
import copy
import json
import logging
import time

import numpy as np
import torch
from safetensors.torch import save_file

from ..models.checkpoint import file_sha256, read_checkpoint
from ..models.diffusion import GaussianDiffusion
from ..models.dydit import DyDiT, flops_ratio

log = logging.getLogger(__name__)


def target_at(step, args):
    """The official FLOPs target schedule: 1 for the first steps, then linear to lambda over the warm-up."""
    if step < args.hold:
        return 1.0
    return max(args.target, 1.0 - (1.0 - args.target) * step / args.warmup)


def stratified_t(batch, generator, num_timesteps=1000):
    """One timestep per image, images spread evenly over the four quarters of [0, 1000) (official --t_sample)."""
    quarter = num_timesteps // 4
    low = (torch.arange(batch) % 4) * quarter
    return low + torch.randint(0, quarter, (batch,), generator=generator)


def is_router(name):
    return any(k in name for k in ("attn_rate", "mlp_rate", "token_selection"))


@torch.no_grad()
def update_ema(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def build(model_path, seed):
    """A DyDiT with the dense checkpoint's weights and fresh all-on routers."""
    sd, config = read_checkpoint(model_path)
    model = DyDiT(config)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if unexpected or any(not is_router(k) for k in missing):
        raise ValueError(f"{model_path} is not a dense DiT of this layout (unexpected {unexpected[:3]}, "
                         f"missing {[k for k in missing if not is_router(k)][:3]})")
    model.initialize_routers(seed)
    return model


def train(args):
    from ..demo.train_demo import fashion_latents

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    model = build(args.model, args.seed)
    config = model.config
    ema = copy.deepcopy(model).requires_grad_(False)
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not is_router(n)],
               "lr": args.lr},
              {"params": [p for n, p in model.named_parameters() if is_router(n)], "lr": args.router_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0)
    diffusion = GaussianDiffusion()
    latents, labels = fashion_latents("train")
    model.train()
    history, t0 = [], time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=generator)
        x, y = latents[idx], labels[idx]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=generator) < 0.5, x, x.flip(-1))
        t = stratified_t(len(x), generator)
        noise = torch.randn(x.shape, generator=generator)
        target = target_at(step, args)
        masks = []
        dynamic = diffusion.training_losses(
            lambda a, b, c: model(a, b, c, route="masked", noise=True, masks=masks), x, t, y, noise)["loss"].mean()
        complete = diffusion.training_losses(
            lambda a, b, c: model(a, b, c, route="dense"), x, t, y, noise)["loss"].mean()
        ratio = flops_ratio(config, *masks[0]).mean()
        loss = dynamic + complete + args.flops_weight * (ratio - target) ** 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, min(args.ema, (1 + step) / (10 + step)))
        history.append((dynamic.item(), complete.item(), ratio.item()))
        if (step + 1) % args.log_every == 0:
            d, c, r = np.mean(history[-args.log_every:], axis=0)
            log.info("step %d  dynamic %.4f  complete %.4f  FLOPs ratio %.3f (target %.3f)  %.1f s",
                     step + 1, d, c, r, target, time.time() - t0)
    seconds = time.time() - t0
    return ema.eval(), seconds, history


def save(model, path, args, seconds, history, extra=None):
    """fp16 EMA weights in the official DyDiT key layout, with the config and the recipe as metadata."""
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    last = np.mean(history[-args.log_every:], axis=0)
    recipe = {"objective": "DyDiT stage 1: dynamic + complete diffusion loss + 2 (FLOPs ratio - target)^2",
              "target": args.target, "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "router_lr": args.router_lr, "warmup": args.warmup, "hold": args.hold, "ema": args.ema,
              "seed": args.seed, "timesteps": "stratified over the four quarters", "train_seconds": round(seconds, 1),
              "final_train_flops_ratio": round(float(last[2]), 4), "base_model_sha256": file_sha256(args.model),
              **(extra or {})}
    meta = {"config": json.dumps(model.config.to_dict()), "dydit_recipe": json.dumps(recipe)}
    save_file(sd, path, metadata=meta)
    return recipe


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lazy_core.training.train_dydit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="dense DiT checkpoint (.safetensors or official .pt)")
    p.add_argument("--out", required=True, help="DyDiT .safetensors to write")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs target lambda (share of the dense FLOPs)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4, help="pretrained weights (official: 1e-4 over 30k steps)")
    p.add_argument("--router-lr", type=float, default=5e-3, help="the new routers")
    p.add_argument("--warmup", type=int, default=400, help="steps over which the target falls to lambda")
    p.add_argument("--hold", type=int, default=30, help="first steps at target 1 (official: 100 of 1000)")
    p.add_argument("--flops-weight", type=float, default=2.0, help="official token_loss_ratio")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    args = p.parse_args(argv)
    if not 0 < args.target <= 1:
        p.error(f"--target {args.target}: lambda is a share of the dense FLOPs, in (0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model, seconds, history = train(args)
    recipe = save(model, args.out, args, seconds, history)
    log.info("wrote %s (%.0f s): %s", args.out, seconds, json.dumps(recipe))


if __name__ == "__main__":
    main()
