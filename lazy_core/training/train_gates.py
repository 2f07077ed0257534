"""Trains lazy gates on a frozen DiT or PixArt. Two objectives:

  sensitivity (default)  gates that see the final image: lazy costs measured along the model's own guided
                         DDIM trajectories (lazy_core.training.sensitivity), the gates fitted to predict each
                         image's cost from their input, and each run planned over its schedule. Trains
                         in minutes on a CPU for the demo model.
  local                  the paper's recipe (Shen et al. 2025, §3.3; method notes §1.5), below.

The local objective, one iteration, per row: a full step at t_a fills the cache with the model's pre-gate
module outputs; at the next timestep t_b of the same guided trajectory, the full model's output is the
target and the soft-lazy forward `score * F(z) + (1 - score) * cache` the prediction. Loss = MSE over all
output channels + rho * sum over blocks of the mean compute score (attn and MLP). Only the gates train
(zero-initialised, AdamW).

Beyond the paper, for ComfyUI users who change step counts and samplers: gates are indexed by timestep
buckets spread over 0..999, and every iteration draws its (t_a, t_b) pair from one of several step counts,
so each bucket is trained on the step sizes artists use. Two data sources:
  real   x_{t_a} = q_sample(x_0, t_a) from the data set, as in the paper (class-conditional DiT);
  self   data-free self-distillation: x_{t_a} from the model's own DDIM trajectories (with CFG) from labels
         or prompts, so any checkpoint trains (PixArt through the ComfyUI node, which has its prompts).

    python -m lazy_core.training.train_gates --model weights/dit_demo_fashion.safetensors \
        --out gates.safetensors
    torchrun --nproc_per_node 2 -m lazy_core.training.train_gates ...        # same global batch, split
"""

import argparse
import logging
import random
import time

import numpy as np
import torch
import torch.distributed as dist

from ..demo.fashion import names_for
from ..engine.forecast import FORECASTS
from ..engine.gates import GateBank, GateInfo
from ..engine.proxies import Attachment, describe
from ..models.checkpoint import file_sha256, load_model
from ..models.diffusion import GaussianDiffusion, parse_step_counts, space_timesteps
from ..models.dit import DiT
from ..models.labels import parse_labels
from . import launch
from .denoisers import Counted, LabelDenoiser, as_denoiser
from .sensitivity import CHAIN, HISTORY, LEVELS, ORDER, fit_gates, measure, measure_calls

log = logging.getLogger(__name__)


#################################################################################
#                      Calls: how the proxies run modules in training           #
#################################################################################

class TrainCall:
    """Base of the training calls: whole blocks always run; only module outputs differ."""

    def block(self, index, forward, x, *args, **kwargs):
        return forward(x, *args, **kwargs)


class RecordCall(TrainCall):
    """Full forward that keeps every module's pre-gate output (the cache a full step leaves behind)."""

    def __init__(self):
        self.cache = {}

    def run(self, block, module, fn, z):
        out = fn(z)
        self.cache[(block, module)] = out
        return out


class FullCall(TrainCall):
    """Plain forward (the target)."""

    def run(self, block, module, fn, z):
        return fn(z)


class SoftCall(TrainCall):
    """The training forward: score * F(z) + (1 - score) * cache, with a differentiable score per row."""

    def __init__(self, gates, buckets, cache):
        self.gates, self.buckets, self.cache = gates, buckets, cache
        self.scores = []                      # (rows,) per gated module

    def run(self, block, module, fn, z):
        s = soft_score(self.gates, block, module, self.buckets, z)         # (rows,)
        self.scores.append(s)
        s = s[:, None, None]
        return s * fn(z) + (1 - s) * self.cache[(block, module)]


def soft_score(gates, block, module, buckets, z):
    """Per-row compute probability with per-row buckets: sigmoid(<pool(z), w[bucket_row]>), differentiable."""
    w = gates.weight[block, module, buckets]                                # (rows, D)
    pooled = z.float().mean(dim=1) if gates.info.pooling == "mean" else z.float().sum(dim=1)
    return torch.sigmoid((pooled * w).sum(-1))


class _Holder:
    """The minimal run state the proxies read: the current call."""

    call = None
    blocks = ()


#################################################################################
#                                Data sources                                   #
#################################################################################

def schedule_pairs(step_counts):
    """Every (t_a, t_b) pair of consecutive evaluations in DiT-spaced schedules of the given step counts."""
    pairs = []
    for n in step_counts:
        ts = space_timesteps(n)[::-1]
        pairs += [(n, ts[i], ts[i + 1]) for i in range(len(ts) - 1)]
    return pairs


@torch.no_grad()
def trajectory_pool(denoiser, diffusion, step_counts, rows, cfg_scale, seed, forward=None):
    """Self-distillation data: {n: (x per step (steps, rows, C, H, W), conditions)} from the model's own DDIM."""
    g = torch.Generator().manual_seed(seed)
    pool = {}
    for n in step_counts:
        cond = denoiser.draw(rows, g)
        x = torch.randn(rows, *denoiser.latent, generator=g).to(denoiser.device)
        states = []
        diffusion.ddim_loop(denoiser.eps_fn(forward or denoiser.forward, cond, cfg_scale), x, n,
                            on_state=lambda i, t, xt: states.append(xt.clone()))
        pool[n] = (torch.stack(states), cond)           # states[i] is the input of evaluation i
    return pool


#################################################################################
#                                   Training                                    #
#################################################################################

def gate_loss(model, gates, x_a, t_a, x_b_fn, t_b, cond, rho, forward=None):
    """(loss, mse, mean compute score) for one batch; x_b_fn(eps_a) gives x at t_b. `model` is a
    denoiser (or a DiT) and `cond` its condition for these rows. Three model calls (LOSS_CALLS)."""
    denoiser = as_denoiser(model)
    forward = forward or denoiser.forward
    holder = _Holder()
    handle = Attachment(denoiser.model, holder).attach()
    try:
        with torch.no_grad():
            holder.call = RecordCall()
            out_a = forward(x_a, t_a, cond).to(x_a.device)
            cache = holder.call.cache
            x_b = x_b_fn(out_a[:, :x_a.shape[1]].float())
            holder.call = FullCall()
            target = forward(x_b, t_b, cond)
        buckets = torch.tensor([gates.bucket(int(t)) for t in t_b])
        holder.call = SoftCall(gates, buckets, cache)
        pred = forward(x_b, t_b, cond)
        scores = torch.stack(holder.call.scores)            # (2 * depth, rows)
    finally:
        handle.detach()
    mse = ((pred - target) ** 2).mean()     # all output channels the model returns (method notes §1.5)
    # rho * (1/B) sum_l sum_b score, for attn and MLP (Eq. 5 in the code's score convention).
    compute = scores.sum(0).mean()
    return mse + rho * compute, mse.detach(), scores.detach().mean()


LOSS_CALLS = 3        # gate_loss: the full step at t_a, the target at t_b, the soft-lazy prediction


def ddim_to(diffusion, x_a, t_a, t_b, eps):
    """One deterministic DDIM step from t_a to t_b with the model's eps."""
    x0 = diffusion.predict_xstart(x_a, t_a, eps)
    acp_b = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float32)[t_b.cpu()].view(-1, 1, 1, 1)
    acp_b = acp_b.to(x_a.device)
    return acp_b.sqrt() * x0 + (1 - acp_b).sqrt() * eps




def train_calls(model, args, labels=None):
    """Model calls train() makes for `args`: the sensitivity objective's measurement, or the local
    objective's trajectory pool (source self) and LOSS_CALLS per iteration."""
    denoiser = LabelDenoiser(model, labels) if isinstance(model, DiT) else as_denoiser(model)
    if args.objective == "sensitivity":
        _, depth, _ = describe(denoiser.model)
        return (measure_calls(args.measure_steps, depth, args.chain, args.level == "module", HISTORY)
                * denoiser.calls_per_step(args.images, args.cfg_scale))
    pool = 0
    if args.source == "self":
        pool = sum(parse_step_counts(args.step_counts)) * denoiser.calls_per_step(args.pool, args.cfg_scale)
    return pool + LOSS_CALLS * args.iters


def train(model, args, real_latents=None, rank=0, world=1, labels=None, on_iter=None, on_progress=None):
    """Trains and returns a GateBank for `model` (a DiT, or a denoiser), following `args` (see parser()).

    labels: the class labels a DiT self-distills from (default: all); on_iter(i, total, loss): each
    iteration of the local objective; on_progress(done, total): each model call, train_calls() in all."""
    denoiser = LabelDenoiser(model, labels) if isinstance(model, DiT) else as_denoiser(model)
    if args.objective == "sensitivity":
        return train_sensitivity(denoiser, args, on_progress)
    if args.source == "real" and not isinstance(denoiser, LabelDenoiser):
        raise ValueError("--source real trains class-conditional DiTs on Fashion-MNIST; use --source self "
                         "(data-free) for text-conditioned models")
    arch, depth, width = describe(denoiser.model)
    step_counts = parse_step_counts(args.step_counts)
    buckets = [round(i * 999 / (args.buckets - 1)) for i in range(args.buckets)]
    info = GateInfo(arch, depth, width, buckets, pooling=args.pooling, tokens=denoiser.tokens,
                    recipe={"source": args.source, "step_counts": step_counts, "iters": args.iters,
                            "batch": args.batch, "lr": args.lr, "rho": args.rho, "null_prob": args.null_prob,
                            "cfg_scale": args.cfg_scale, "seed": args.seed})
    device = denoiser.device
    gates = GateBank(info).to(device)
    opt = torch.optim.AdamW(gates.parameters(), lr=args.lr, weight_decay=0)
    diffusion = GaussianDiffusion()
    pairs = schedule_pairs(step_counts)
    forward = Counted(denoiser.forward, train_calls(denoiser, args), on_progress)
    pool = None
    if args.source == "self":
        pool = trajectory_pool(denoiser, diffusion, step_counts, args.pool, args.cfg_scale, args.seed, forward)
    rng = random.Random(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    local = args.batch // world
    t0 = time.time()
    for it in range(args.iters):
        # The same global batch on every rank (same seeds); each rank takes its slice.
        n, ta, tb = pairs[rng.randrange(len(pairs))]
        x_b = None
        if args.source == "self":
            states, conds = pool[n]
            k = space_timesteps(n)[::-1].index(ta)
            idx, cond = denoiser.training_batch(conds, args.batch, args.null_prob, g)
            x_a = states[k][idx.to(states.device)]
            # The guided trajectory's own next state (not a step with this row's unguided eps).
            x_b = states[k + 1][idx.to(states.device)]
        else:
            idx = torch.randint(0, len(real_latents[0]), (args.batch,), generator=g)
            x0, y = real_latents[0][idx], real_latents[1][idx]
            noise = torch.randn(x0.shape, generator=g)
            x_a = diffusion.q_sample(x0, torch.full((args.batch,), ta), noise).to(device)
            cond = torch.where(torch.rand(args.batch, generator=g) < args.null_prob, denoiser.null, y).to(device)
        sl = slice(rank * local, (rank + 1) * local)
        x_a, cond = x_a[sl], cond[sl]
        t_a, t_b = torch.full((local,), ta, device=device), torch.full((local,), tb, device=device)
        if x_b is None:
            step = lambda eps: ddim_to(diffusion, x_a, t_a, t_b, eps)      # noqa: E731
        else:
            x_b = x_b[sl]
            step = lambda eps: x_b                                          # noqa: E731
        loss, mse, score = gate_loss(denoiser, gates, x_a, t_a, step, t_b, cond, args.rho, forward)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            dist.all_reduce(gates.weight.grad)
            gates.weight.grad /= world
        opt.step()
        if rank == 0 and ((it + 1) % args.log_every == 0 or it == 0):
            log.info("iter %d/%d  loss %.5f  mse %.5f  compute score %.3f  (%.0f s)", it + 1, args.iters,
                     loss.item(), mse.item(), score.item(), time.time() - t0)
        if on_iter is not None:
            on_iter(it + 1, args.iters, loss.item())
    gates.info.recipe["train_seconds"] = round(time.time() - t0, 1)
    gates.info.recipe["world_size"] = world
    return gates.requires_grad_(False)


def train_sensitivity(denoiser, args, on_progress=None):
    """The sensitivity objective: measure costs on `args.images` trajectories, fit the gates."""
    t0 = time.time()
    costs = measure(denoiser, steps=args.measure_steps, images=args.images, cfg_scale=args.cfg_scale,
                    seed=args.seed, pooling=args.pooling, reuse=args.reuse, order=args.order, chain=args.chain,
                    modules=args.level == "module", history=HISTORY, on_progress=on_progress,
                    correct=getattr(args, "correct", True))
    recipe = {"measure_steps": args.measure_steps, "images": args.images, "cfg_scale": args.cfg_scale,
              "seed": args.seed, "correct": getattr(args, "correct", True)}
    gates, fit = fit_gates(denoiser, costs, buckets=args.buckets, pooling=args.pooling, recipe=recipe,
                           level=args.level)
    r2 = sum(fit["r2_holdout"]) / len(fit["r2_holdout"])
    gates.info.recipe.update(r2_holdout_mean=round(r2, 4), train_seconds=round(time.time() - t0, 1),
                             measure_calls=costs.calls, model_calls=costs.model_calls)
    gates.measured = costs            # not saved: lets calibrate predict per-image decisions without sampling
    log.info("sensitivity gates: %d trajectories of %d steps in %.0f s; held-out R^2 of the input term %.3f",
             args.images, args.measure_steps, costs.seconds, r2)
    return gates.requires_grad_(False)


def main(args):
    device, rank, world = launch.start(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must divide evenly over {world} processes")
    model = load_model(args.model).to(device)
    labels = parse_labels(args.labels, model.config.num_classes, names_for(model.config.num_classes))
    if args.objective == "sensitivity" and world > 1:
        raise SystemExit("--objective sensitivity runs on one process; use --objective local with torchrun")
    real = None
    if args.objective == "local" and args.source == "real":
        from ..demo.train_demo import fashion_latents
        real = fashion_latents("train")
    gates = train(model, args, real, rank, world, labels=labels)
    if rank == 0:
        if args.calibrate:
            from .calibrate import calibrate, calibration_calls
            counts = parse_step_counts(args.calibrate)
            t0 = time.time()
            calls = calibration_calls(model, gates, counts)
            gates.info.calibration, per_steps = calibrate(model, gates, step_counts=counts)
            log.info("trained in %d model calls, %.0f s; calibrated in %d model calls, %.0f s",
                     train_calls(model, args, labels), gates.info.recipe.get("train_seconds", 0), calls,
                     time.time() - t0)
            gates.info.recipe["calibration_per_steps"] = per_steps
            for n, table in per_steps.items():
                trained = "trained" if n in parse_step_counts(args.step_counts) else "not trained"
                log.info("%d steps (%s): %s", n, trained, ", ".join(f"{t:.2f}->{r:.1%}" for t, r in table))
        gates.info.source_model = file_sha256(args.model)
        gates.save(args.out)
        log.info("wrote %s", args.out)
    launch.stop(world)


def parser():
    p = argparse.ArgumentParser(prog="python -m lazy_core.training.train_gates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="DiT weights (.safetensors with a config, or official layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", default="all", help="classes to learn from: 'all', '0-9', '1, 207, 360' or names")
    p.add_argument("--objective", choices=("sensitivity", "local"), default="sensitivity",
                   help="sensitivity: gates that see the final image (default); local: the paper's recipe")
    p.add_argument("--images", type=int, default=40, help="sensitivity: trajectories measured")
    p.add_argument("--measure-steps", type=int, default=20, help="sensitivity: DDIM steps of the trajectories")
    p.add_argument("--level", choices=LEVELS, default="step", help="sensitivity: whole-step or module costs")
    p.add_argument("--chain", type=int, default=CHAIN, help="sensitivity: longest chain of lazy steps measured")
    p.add_argument("--reuse", choices=FORECASTS, default="extrapolate", help="sensitivity: the forecast measured")
    p.add_argument("--order", type=int, default=ORDER, help="sensitivity: the forecast's order")
    p.add_argument("--no-correct", dest="correct", action="store_false",
                   help="sensitivity: measure chains without the trajectory correction Apply makes on euler/ddim")
    p.add_argument("--source", choices=("self", "real"), default="self", help="local: data source")
    p.add_argument("--iters", type=int, default=500, help="paper: 500")
    p.add_argument("--batch", type=int, default=64, help="global batch (paper: 256)")
    p.add_argument("--lr", type=float, default=1e-2, help="reference argparse default 1e-2 (paper 1e-4)")
    p.add_argument("--rho", type=float, default=1e-4, help="laziness pressure, paper range 1e-7..1e-2")
    p.add_argument("--buckets", type=int, default=25, help="timestep buckets spread over 0..999")
    p.add_argument("--step-counts", default="10,20,30,50")
    p.add_argument("--pooling", choices=("mean", "sum"), default="mean")
    p.add_argument("--null-prob", type=float, default=0.5,
                   help="share of rows trained with the null label (inference runs cond and uncond equally)")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="guidance of the self-distillation trajectories")
    p.add_argument("--pool", type=int, default=256, help="trajectories per step count (source self)")
    p.add_argument("--calibrate", default="10,20,50",
                   help="step counts to measure the threshold -> lazy ratio table at ('' = skip)")
    p.add_argument("--seed", type=int, default=1000, help="held out from the benchmarks' seed 0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto: the GPU of this process (LOCAL_RANK) if any, else cpu")
    p.add_argument("--log-every", type=int, default=50)
    return p


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(parser().parse_args())
