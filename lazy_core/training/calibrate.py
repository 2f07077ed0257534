"""Calibration: the lazy share gates reach at each threshold, from their plan or by sampling.

The table (threshold -> ratio, averaged over step counts) is what the laziness slider shows; the per-step-
count rows, including step counts the gates were not trained for, show how far that average holds.

What it costs (calibration_calls): a chain schedule's table follows from its plan, and learned chain gates'
from the trajectories they were just fitted on, so neither makes a model call. Other gates (and learned
chain gates read back from a file) are sampled: one run per threshold and step count over 8 images, i.e.
thresholds x sum(step counts) guided evaluations (64 x 80 = 5120 for a chain file at 10,20,50).

    python -m lazy_core.training.calibrate --model weights/dit_demo_fashion.safetensors \
        --gates my_gates.safetensors
re-measures a gate file's table in place (for instance at the step counts you use) and logs its calls and time;
with --check it adds a schedule's predicted-PSNR check instead (check_schedule).
"""

import argparse
import logging
import math
import time

import torch

from ..engine.cache import CacheOptions
from ..engine.policies import LearnedGates, chain_costs, chain_plan, plan_share
from ..engine.run import LazyRun
from ..models.diffusion import GaussianDiffusion, parse_step_counts, space_timesteps
from .denoisers import Counted, as_denoiser

log = logging.getLogger(__name__)

# The threshold's whole range: 0 itself is exact by definition; 1.0 is "lazy wherever the engine allows".
# Denser at the ends, where the slider's 0.1 and 0.9 land.
THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)


@torch.no_grad()
def calibrate(model, gates, step_counts=(10, 20, 50), thresholds=THRESHOLDS, rows=8, cfg_scale=4.0, seed=0,
              on_progress=None, schedule=None):
    """Returns (table [[threshold, mean ratio]], per_steps {steps: [[threshold, ratio]]}).

    model: a DiT, or a denoiser (lazy_core.training.denoisers) for other models. A schedule (gates that read no
    input) decides the same for every image, so one image measures it exactly; where the table follows from
    the plan (from_plan), nothing is sampled. Model calls: calibration_calls(...) with the same arguments;
    on_progress(done, total) reports each one."""
    thresholds = grid_for(gates, thresholds)
    if from_plan(gates):
        return plan_table(gates, step_counts, thresholds, getattr(gates, "measured", None), schedule)
    den = as_denoiser(model)
    rows = 1 if gates.static else rows
    forward = Counted(den.forward, calibration_calls(den, gates, step_counts, thresholds, rows, cfg_scale),
                      on_progress)
    recipe = gates.info.recipe                                        # the forecast the costs were measured with
    options = CacheOptions(reuse=recipe.get("reuse", "repeat"), order=recipe.get("order", 1),
                           max_lazy_steps=gates.longest_chain)
    g = torch.Generator().manual_seed(seed)
    cond = den.draw(rows, g)
    noise = torch.randn(rows, *den.latent, generator=g).to(den.device)
    diffusion = GaussianDiffusion()
    per_steps = {}
    for n in step_counts:
        per_steps[n] = []
        for thr in thresholds:
            with LazyRun(den.model, LearnedGates(gates, thr), options, forward=forward,
                         streams=den.run_streams(cfg_scale), timesteps=space_timesteps(n)[::-1]) as run:
                diffusion.ddim_loop(den.eps_fn(run, cond, cfg_scale), noise, n)
            per_steps[n].append([thr, round(run.report["ratio"], 4)])
    table = [[thr, round(sum(per_steps[n][i][1] for n in step_counts) / len(step_counts), 4)]
             for i, thr in enumerate(thresholds)]
    return table, per_steps


CHECK_VALUES = (0.25, 0.5, 0.75, 1.0)      # laziness values a schedule's predicted PSNR is checked at


def psnr_offsets(gates, values, errors, timesteps, numel, peak2):
    """[[laziness, dB]]: the PSNR of measured final errors (per value: (images,) squared errors; their mean
    log, as the prediction's) minus the summed-cost PSNR at each value. Values with nothing lazy are left out."""
    from ..engine.policies import summed_psnr
    rows = []
    for v, err in zip(values, errors):
        share, summed = summed_psnr(gates, timesteps, v, numel, peak2, gates.longest_chain)
        if share == 0 or not math.isfinite(summed):
            continue
        measured = 10 * math.log10(peak2 * numel) - 10 * float(err.clamp_min(1e-30).log10().mean())
        rows.append([v, round(measured - summed, 3)])
    return rows


@torch.no_grad()
def check_psnr(model, gates, costs, cfg_scale, seed, values=CHECK_VALUES, on_progress=None):
    """Samples the schedule's own measured trajectories (the same conditions and noise as measure drew) with
    the gates at each laziness of `values`, DDIM at the measured step count, and returns (offsets,
    numel): psnr_offsets against the exact finals measure kept. Model calls: len(values) x steps x the
    denoiser's calls per step; on_progress(done, total) reports each."""
    den = as_denoiser(model)
    steps, images = len(costs.timesteps), costs.final.shape[0]
    forward = Counted(den.forward, len(values) * steps * den.calls_per_step(images, cfg_scale), on_progress)
    g = torch.Generator().manual_seed(seed)
    cond = den.draw(images, g)
    noise = torch.randn(images, *den.latent, generator=g).to(den.device)
    recipe = gates.info.recipe
    options = CacheOptions(reuse=recipe.get("reuse", "extrapolate"), order=recipe.get("order", 1),
                           max_lazy_steps=gates.longest_chain, correct=True)     # as Apply Lazy Gates runs it
    diffusion, errors = GaussianDiffusion(), []
    for v in values:
        with LazyRun(den.model, LearnedGates(gates, gates.threshold_for(v, steps), v), options, forward=forward,
                     streams=den.run_streams(cfg_scale), timesteps=space_timesteps(steps)[::-1],
                     sigmas=diffusion.ddim_sigmas(steps)) as run:
            z = diffusion.ddim_loop(den.eps_fn(run, cond, cfg_scale), noise, steps)
        errors.append((z.float().cpu() - costs.final).pow(2).flatten(1).sum(1))
    numel = costs.final[0].numel()
    return psnr_offsets(gates, values, errors, list(costs.timesteps), numel, recipe["peak2"]), numel


def from_plan(gates):
    """Whether the table follows from the plan without sampling: a chain schedule (its decisions read no
    input), or learned chain gates with the trajectories they were fitted on at hand (gates.measured)."""
    chains = gates.chain is not None and gates.info.granularity == "step"
    return chains and (gates.static or getattr(gates, "measured", None) is not None)


def grid_for(gates, thresholds=THRESHOLDS):
    """The thresholds a table is made at: log-cost banks get a grid over their own costs."""
    if gates.info.score == "log-cost" and thresholds is THRESHOLDS:
        return cost_grid(gates, 64 if gates.static or gates.chain is not None else 16)
    return thresholds


def calibration_calls(model, gates, step_counts, thresholds=THRESHOLDS, rows=8, cfg_scale=4.0):
    """Model calls calibrate() makes with these arguments: none where the table follows from the plan, else
    a sampled run per threshold and step count over `rows` images (one for a schedule)."""
    if from_plan(gates):
        return 0
    per_step = as_denoiser(model).calls_per_step(1 if gates.static else rows, cfg_scale)
    return len(grid_for(gates, thresholds)) * sum(step_counts) * per_step


@torch.no_grad()
def plan_table(gates, step_counts, thresholds, measured=None, schedule=None):
    """The same table without sampling: the lazy share of the plan at each threshold on each step count's
    DDIM schedule. A schedule (decisions that read no input) decides alike for every image, so its plan
    is the answer; learned gates decide per image, predicted here from the pooled inputs measured along
    the images' exact trajectories (sensitivity.Costs), interpolated to the schedule's timesteps.
    schedule(steps) -> the run's timesteps (sampling order); default DDIM's."""
    per_steps = {}
    for n in step_counts:
        ts = schedule(n) if schedule is not None else space_timesteps(n)[::-1]
        costs = chain_costs(gates, ts, gates.longest_chain)
        if measured is None:
            per_steps[n] = [[thr, round(plan_share(chain_plan(costs, math.exp(thr))), 4)]
                            for thr in thresholds]
            continue
        from .sensitivity import interp_steps
        buckets = [gates.bucket(t) for t in ts]
        feats = interp_steps(measured.features[:, 0, 0], measured.timesteps, ts)        # (n, images, D)
        prior = torch.tensor([float(gates.prior[0, 0, b]) if b is not None else float("inf") for b in buckets])
        logit = torch.stack([feats[k] @ gates.weight[0, 0, b].float() + float(gates.bias[0, 0, b])
                             if b is not None else torch.full((feats.shape[1],), float("inf"))
                             for k, b in enumerate(buckets)])                              # (n, images)
        rows = []
        for thr in thresholds:
            limits = prior[:, None] + chain_plan(costs, math.exp(thr))     # (n, R + 1)
            lazy = 0
            for i in range(logit.shape[1]):
                r = 0
                for k in range(n):
                    if float(logit[k, i]) <= float(limits[k, r]):
                        lazy, r = lazy + 1, r + 1
                    else:
                        r = 0
            rows.append([thr, round(lazy / (n * logit.shape[1]), 4)])
        per_steps[n] = rows
    table = [[thr, round(sum(per_steps[n][i][1] for n in step_counts) / len(step_counts), 4)]
             for i, thr in enumerate(thresholds)]
    return table, per_steps


def cost_grid(gates, points=16):
    """log λ values for a log-cost bank's table: from below its cheapest expected cost (nothing lazy) to
    above its dearest (lazy wherever allowed), half spread evenly and half at the costs' quantiles."""
    logc = gates.prior.float().flatten()
    if gates.chain is not None:                # a long chain is worth its cost only at a higher price
        logc = torch.cat([logc, gates.chain[torch.isfinite(gates.chain)]])
    # Below the cheapest cost: a schedule with more steps than was measured has cheaper chains (shorter gaps).
    lo, hi = float(logc.min()) - 8, float(logc.max()) + 2
    q = torch.quantile(logc, torch.linspace(0, 1, points // 2))
    grid = {round(float(v), 4) for v in [*q.tolist(), *torch.linspace(lo, hi, points - points // 2).tolist()]}
    return sorted(grid)



def main(args):
    from ..engine.gates import GateBank
    from ..models.checkpoint import file_sha256, load_model
    from .launch import device_for

    torch.set_num_threads(args.threads)
    model = load_model(args.model).to(device_for(args.device))
    gates = GateBank.load(args.gates)
    gates.check_fits("dit", model.config.depth, model.config.hidden_size, name=args.gates)
    counts = parse_step_counts(args.step_counts)
    t0 = time.perf_counter()
    if args.check:
        check_schedule(model, gates)
        log.info("checked the predicted PSNR on the measured trajectories in %.0f s: %s", time.perf_counter() - t0,
                 gates.info.recipe["psnr_check"])
        gates.save(args.out or args.gates)
        log.info("wrote %s", args.out or args.gates)
        return
    gates.info.calibration, per_steps = calibrate(model, gates, step_counts=counts)
    log.info("calibrated in %d model calls, %.0f s (%s)", calibration_calls(model, gates, counts),
             time.perf_counter() - t0, "from the plan" if from_plan(gates) else "sampled")
    gates.info.recipe["calibration_per_steps"] = per_steps
    gates.info.source_model = file_sha256(args.model)
    trained = set(gates.info.recipe.get("step_counts", []))
    for n, table in per_steps.items():
        log.info("%d steps (%s): %s", n, "trained" if n in trained else "not trained",
                 ", ".join(f"{t:.2f}->{r:.1%}" for t, r in table))
    gates.save(args.out or args.gates)
    log.info("wrote %s", args.out or args.gates)


def check_schedule(model, gates):
    """Adds a schedule's predicted-PSNR check to its recipe: its measured trajectories' exact pass again
    (the recipe's images, seed, guidance and steps), then check_psnr. The demo's pixel latent spans [-1, 1]."""
    from .denoisers import LabelDenoiser
    from .sensitivity import measure
    r = gates.info.recipe
    cfg, seed = r.get("cfg_scale", 4.0), r.get("seed", 1000)
    costs = measure(LabelDenoiser(model), steps=r.get("measure_steps", 20), images=r.get("images", 16),
                    cfg_scale=cfg, seed=seed, chain=0, modules=False)
    r.setdefault("peak2", 4.0)
    r["latent_numel"] = costs.final[0].numel()
    r["psnr_check"], _ = check_psnr(model, gates, costs, cfg, seed)


def parser():
    p = argparse.ArgumentParser(prog="python -m lazy_core.training.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the DiT the gates belong to")
    p.add_argument("--gates", required=True, help="gate file; rewritten in place unless --out is given")
    p.add_argument("--out", default=None)
    p.add_argument("--step-counts", default="10,20,50")
    p.add_argument("--check", action="store_true", help="instead: add a schedule's predicted-PSNR check (the demo "
                                                        "model's pixel latent)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto: a GPU if there is one, else cpu")
    return p


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(parser().parse_args())
