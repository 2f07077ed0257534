"""What a lazy module costs the final image, measured on the model's own sampling trajectories.

The paper's gate loss is local: the MSE of each module's output at each step, every step weighted alike.
But an error early in sampling moves the final image far more than the same error late (on the demo
model about 200x more from the first DDIM-20 steps to the last), so a local loss spends laziness where it
hurts most. Here the cost of making module m of block b lazy at step k, for image i, is measured as

    cost_i(k, b, m) = gain_i(k) * |Δeps_i(k, b, m)|^2

Δeps is the change of the guided eps when that one module (in the cond and uncond rows of the image
together) reuses its output from step k-1, and gain_i(k) the final image's squared change per unit of
squared eps change at step k, measured by running the rest of the trajectory from a perturbed step whose
perturbation is a lazy one (all modules reused at k). First order: costs of several lazy modules add.

Two policies come from the costs, both as "log-cost" gate banks for the same LearnedGates policy, which
plans each run's lazy budget over its schedule (see policies.LearnedGates):
  schedule_bank   training-free: the expected log cost per (bucket, block, module), no input dependence;
  fit_gates       learned: the same prior plus a linear map of the module's pooled input (ridge regression
                  of each image's log cost), so an image is lazy where it is cheap for that image.
"""

import math
import time
from dataclasses import dataclass

import torch

from ..engine import forecast
from ..engine.correct import Correction
from ..engine.gates import MODULES, GateBank, GateInfo
from ..engine.proxies import Attachment, describe
from ..models.diffusion import GaussianDiffusion, space_timesteps
from .denoisers import Counted, LabelDenoiser, as_denoiser

EPS = 1e-20
CHAIN = 4            # longest chain of lazy steps measured: 80 % lazy at 20 steps, where reuse saturates
ORDER = 1            # the forecast measured and shipped (the line): order 2 drifts more along a chain
HISTORY = "periodic"  # chains measured with the history a chain plan leaves (see measure)


@dataclass
class Costs:
    """Measured lazy costs along one step count's exact trajectories."""

    timesteps: list               # sampling order (descending), length = steps
    cost: torch.Tensor            # (steps, depth, 2, images) final-image squared error; step 0: inf (or None)
    features: torch.Tensor        # (steps, depth, 2, images, D) pooled module input, mean over the image's rows
    gain: torch.Tensor            # (steps, images) final-image change per unit eps change
    step_cost: torch.Tensor = None   # (steps, images) final-image squared error of the whole step lazy
    coherent: torch.Tensor = None    # (steps, images) |sum of module Δeps|^2 / sum of |Δeps|^2
    seconds: float = 0.0
    reuse: str = "extrapolate"       # how a lazy module reused its outputs (engine.CacheOptions.reuse, order)
    order: int = 1
    chain: torch.Tensor = None       # (steps, longest, images): [i, l - 1] steps i .. i + l - 1 lazy; inf: n/a
    calls: int = 0                   # guided evaluations made
    history: str = "exact"           # the computed outputs a chain's forecast started from (see measure)
    model_calls: int = 0             # calls of the model (a guided evaluation makes one or more)
    final: torch.Tensor = None       # (images, ...) the exact trajectories' final latents, on the CPU


class _Holder:
    """The run state the proxies read: the current call."""

    call = None
    blocks = ()


class _Calls:
    """Per model call within one guided eps evaluation: record outputs and pooled inputs, or stand in for
    the lazy modules with the forecast the engine would make from the outputs of earlier steps."""

    def __init__(self, row_images, images, pooling, history=None, lazy=(), w=None):
        self.row_images = row_images           # per call: (rows,) image index of each row
        self.images = images
        self.pooling = pooling
        self.history = history                 # per step, newest first: per call {(block, module): (rows, T, D)}
        self.w = w                             # (1, K) forecast weights of those steps (forecast.weights)
        self.lazy = set(lazy)
        self.index = -1
        self.outputs = []                      # per call: {(block, module): (rows, T, D)}
        self.features = {}                     # (block, module) -> (images, D) summed pooled inputs
        self.counts = torch.zeros(images)

    def next_call(self):
        self.index += 1
        self.outputs.append({})
        self.counts += torch.bincount(self.row_images[self.index], minlength=self.images).float()

    def block(self, index, forward, x, *args, **kwargs):
        return forward(x, *args, **kwargs)

    def run(self, block, module, fn, z):
        key = (block, module)
        if self.history is None:                               # record: exact step
            rows = self.row_images[self.index].to(z.device)
            pooled = z.float().mean(1) if self.pooling == "mean" else z.float().sum(1)   # (rows, D)
            acc = self.features.setdefault(key, torch.zeros(self.images, z.shape[-1], device=z.device))
            acc.index_add_(0, rows, pooled)
        if key in self.lazy:
            outs = [h[self.index][key] for h in self.history]
            w = self.w.to(z.device).expand(z.shape[0], -1)
            return forecast.combine(outs[0], outs[1:], w[:, :len(outs)])
        out = fn(z)
        if self.history is None:
            self.outputs[self.index][key] = out
        return out

    def pooled(self):
        """{(block, module): (images, D)} mean pooled input over each image's rows."""
        return {k: (v / self.counts.to(v.device)[:, None]).cpu() for k, v in self.features.items()}


HISTORIES = ("periodic", "exact")


def measure_calls(steps, depth, chain=1, modules=True, history="exact"):
    """Guided evaluations `measure` makes: the exact pass, each module lazy on its own (modules=True), and
    per start and length of a lazy chain its forecast evaluations (one more each for an exact history,
    whose chains share their beginnings; all of them for a periodic one) and the exact rest."""
    per = (lambda n: 1) if history == "exact" else (lambda n: n)
    chains = sum(per(n) + steps - (i + n) for i in range(1, steps) for n in range(1, min(chain, steps - i) + 1))
    return steps + (2 * depth * (steps - 1) if modules else 0) + chains


@torch.no_grad()
def measure(model, steps=20, images=16, cfg_scale=4.0, seed=0, pooling="mean", on_progress=None, reuse="extrapolate",
            order=1, chain=1, modules=True, history="exact", correct=False):
    """Costs of lazy steps for `images` trajectories of `steps` DDIM steps with guidance, where a lazy
    module stands in with the engine's forecast (engine.CacheOptions reuse and order):

      chain      the final-image error of every run of up to `chain` consecutive lazy steps (every module
                 lazy), each run measured on its own: the exact trajectory to its start, the chain, the
                 exact rest; chain 1 gives the cost of each step lazy alone (step_cost); chain 0 only
                 the exact pass (features and outputs, no costs).
      modules    also each module's first-order cost at each step (cost; module-level gates).
      history    which computed outputs a chain's forecast starts from. "exact": every step before the
                 chain computed (what a run lazy on that chain alone does). "periodic": the computed steps
                 spaced as in a run of such chains (i - 1, i - 1 - (l + 1), ...), what a forecast sees in
                 a run lazy most of the time; the outputs are the exact trajectory's.
      correct    the step after each chain applies the engine's trajectory correction (correct.py), as a
                 run with CacheOptions(correct=True) on a first-order sampler does; no extra model calls.

    model: a DiT or a denoiser. Guided evaluations: measure_calls(steps, depth, chain, modules, history),
    each over the guided batch of `images`, in den.calls_per_step(images, cfg_scale) model calls (a DiT: one,
    cond and uncond batched; PixArt: one per prompt and one for the negative). on_progress(done, total)
    reports each model call, from (0, total) on."""
    t0 = time.perf_counter()
    den = as_denoiser(model)
    _, depth, width = describe(den.model)
    keys = [(b, m) for b in range(depth) for m in range(len(MODULES))]
    diffusion = GaussianDiffusion()
    acp = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)
    ts = space_timesteps(steps)[::-1]
    g = torch.Generator().manual_seed(seed)
    cond = den.draw(images, g)
    x = torch.randn(images, *den.latent, generator=g).to(den.device)
    row_images = den.row_images(cond, cfg_scale)
    if history not in HISTORIES:
        raise ValueError(f"unknown history {history!r}; expected one of {HISTORIES}")
    per_step = den.calls_per_step(images, cfg_scale)
    if per_step != len(row_images):
        raise RuntimeError(f"{type(den).__name__} makes {len(row_images)} calls per guided evaluation, not {per_step}")
    total = measure_calls(steps, depth, chain, modules, history) * per_step
    evaluations = [0]
    if on_progress is not None:
        on_progress(0, total)
    counted = Counted(den.forward, total, on_progress)
    kept = forecast.history(reuse, order)

    holder = _Holder()
    handle = Attachment(den.model, holder).attach()

    def forward(xx, tt, cc, stream=None):
        holder.call.next_call()
        return counted(xx, tt, cc)

    def eps_with(calls, xx, k):
        holder.call = calls
        tt = torch.full((images,), ts[k], device=xx.device, dtype=torch.long)
        evaluations[0] += 1
        return den.eps_fn(forward, cond, cfg_scale)(xx, tt)

    def step(xx, k, eps):
        """One DDIM step (eta 0) from evaluation k."""
        a = float(acp[ts[k]])
        a_next = float(acp[ts[k + 1]]) if k + 1 < steps else 1.0
        x0 = (xx - math.sqrt(1 - a) * eps) / math.sqrt(a)
        return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps

    def norm2(v):
        return v.float().pow(2).flatten(1).sum(1).cpu()                     # (images,)

    fix = Correction(diffusion.ddim_sigmas(steps), [float(t) for t in ts]) if correct else None

    def corrected(eps, start, k, chain_eps):
        """eps at step k, the first computed one after the lazy steps start..k - 1 (their eps: chain_eps),
        corrected as the engine corrects it (the guided eps: the correction is linear in the rows)."""
        if fix is None:
            return eps
        kept = {start - 1: exact_eps[start - 1], k: eps, **{start + j: e for j, e in enumerate(chain_eps)}}
        return eps - fix.shift(kept, start - 1, k, slice(None)).to(eps.dtype)

    def lazy_calls(outputs, start, k, lazy, spacing=1):
        """Calls standing in for `lazy` at step k with the forecast from the steps computed before `start`:
        start - 1, start - 1 - spacing, ..."""
        steps_kept = [j for j in range(start - 1, -1, -spacing)][:kept]
        hist = [outputs[j] for j in steps_kept]
        times = torch.tensor([[float(ts[j]) for j in steps_kept]])
        w = forecast.weights(reuse, order, times, torch.tensor(float(ts[k])))
        return _Calls(row_images, images, pooling, hist, lazy, w)

    features = torch.zeros(steps, depth, len(MODULES), images, width)
    delta2 = torch.zeros(steps, depth, len(MODULES), images)
    coherent = torch.ones(steps, images)
    states, outputs, exact_eps = [], [], []
    try:
        # Pass 1: the exact trajectory; at each step, optionally, the eps change of each module lazy alone.
        for k in range(steps):
            rec = _Calls(row_images, images, pooling)
            eps = eps_with(rec, x, k)
            for (b, m), f in rec.pooled().items():
                features[k, b, m] = f
            if modules and k > 0:
                summed = torch.zeros_like(eps)
                for b, m in keys:
                    lazy = eps_with(lazy_calls(outputs, k, k, [(b, m)]), x, k)
                    delta2[k, b, m] = norm2(lazy - eps)
                    summed += lazy - eps
                coherent[k] = norm2(summed) / delta2[k].sum((0, 1)).clamp_min(EPS)
            states.append(x)
            exact_eps.append(eps)
            outputs.append(rec.outputs)
            x = step(x, k, eps)
        final = x
        # Pass 2: every chain of lazy steps from each start, the forecast carried along, then exact to the end.
        costs = torch.full((steps, chain, images), float("inf"))
        gain = torch.zeros(steps, images)
        for i in range(1, steps if chain else 1):
            xx = states[i]
            for n in range(1, min(chain, steps - i) + 1):
                k = i + n - 1
                if history == "periodic":              # each length has its own history: run its chain anew
                    xx, chain_eps = states[i], []
                    for j in range(i, k + 1):
                        lazy_eps = eps_with(lazy_calls(outputs, i, j, keys, n + 1), xx, j)
                        if j == i and n == 1:
                            d = lazy_eps - exact_eps[i]
                        chain_eps.append(lazy_eps)
                        xx = step(xx, j, lazy_eps)
                else:
                    if n == 1:
                        chain_eps = []
                    lazy_eps = eps_with(lazy_calls(outputs, i, k, keys), xx, k)
                    if n == 1:
                        d = lazy_eps - exact_eps[i]
                    chain_eps.append(lazy_eps)
                    xx = step(xx, k, lazy_eps)
                yy = xx
                for j in range(k + 1, steps):
                    eps = eps_with(_Calls(row_images, images, pooling), yy, j)
                    yy = step(yy, j, corrected(eps, i, j, chain_eps) if j == k + 1 else eps)
                costs[i, n - 1] = norm2(yy - final)
            gain[i] = costs[i, 0] / norm2(d).clamp_min(EPS)
        cost = None
        if modules:
            cost = torch.full((steps, depth, len(MODULES), images), float("inf"))
            cost[1:] = gain[1:, None, None, :] * delta2[1:]
    finally:
        handle.detach()
    step_cost = costs[:, 0].clone() if chain else None
    return Costs(list(ts), cost, features, gain, step_cost, coherent, time.perf_counter() - t0, reuse, order,
                 costs, evaluations[0], history, counted.done, final.float().cpu())


#################################################################################
#                         From costs to gate banks                              #
#################################################################################

LEVELS = ("step", "module")


def targets(costs: Costs, level="step"):
    """(steps-1, depth, 2, images) log costs, the gates' regression target. "step": every module of a step
    gets the measured cost of the whole step lazy, which on the demo model plans better than the sum of
    module costs (module errors at one step add up coherently, 2-4x their squares); "module": each
    module's own first-order cost."""
    if level not in LEVELS:
        raise ValueError(f"unknown cost level {level!r}; expected one of {LEVELS}")
    if level == "module":
        return costs.cost[1:].clamp_min(EPS).log()
    depth, modules = costs.features.shape[1:3]
    return costs.step_cost[1:, None, None, :].clamp_min(EPS).log().expand(-1, depth, modules, -1)


def interp_steps(values, timesteps, buckets):
    """Values measured at descending `timesteps` (leading dim), linearly interpolated in t at `buckets`."""
    t = torch.tensor(timesteps[::-1], dtype=torch.float32)             # ascending
    v = values.flip(0)
    out = []
    for c in buckets:
        i = int(torch.searchsorted(t, torch.tensor(float(c))).clamp(1, len(t) - 1))
        w = float(((c - t[i - 1]) / (t[i] - t[i - 1])).clamp(0, 1))
        out.append(v[i - 1] + w * (v[i] - v[i - 1]))
    return torch.stack(out)


def _chains(costs):
    """(chain, chain_t) for a bank: the images' mean log cost of each measured chain, or (None, None)
    when only single steps were measured."""
    if costs.chain is None or costs.chain.shape[1] < 2:
        return None, None
    return costs.chain[1:].clamp_min(EPS).log().mean(-1), torch.tensor(costs.timesteps, dtype=torch.float32)


def _info(model, costs, buckets, pooling, recipe, level, layout=None):
    recipe = {**recipe, "reuse": costs.reuse, "order": costs.order, "history": costs.history}
    if layout is None:
        den = as_denoiser(model)
        layout = (*describe(den.model), den.tokens)
    arch, depth, width, tokens = layout
    grid = [round(i * 999 / (buckets - 1)) for i in range(buckets)]
    return GateInfo(arch, depth, width, grid, pooling=pooling, tokens=tokens, recipe=recipe, score="log-cost",
                    granularity=level)


def schedule_bank(model, costs: Costs, buckets=25, pooling="mean", recipe=None, level="step", layout=None):
    """Training-free gates: logit(bucket, block, module) = the images' mean log cost there. layout:
    (architecture, depth, width, tokens) of a model that is no denoiser (a host's block family)."""
    y = targets(costs, level).mean(-1)                                  # (steps-1, depth, 2)
    chain, chain_t = _chains(costs) if level == "step" else (None, None)
    info = _info(model, costs, buckets, pooling, {"objective": "sensitivity schedule", **(recipe or {})}, level,
                 layout)
    bias = interp_steps(y, costs.timesteps[1:], info.timesteps).permute(1, 2, 0)   # (depth, 2, buckets)
    weight = torch.zeros(info.depth, len(MODULES), buckets, info.width)
    return GateBank(info, weight, bias=bias, prior=bias, chain=chain, chain_t=chain_t)


def fit_gates(model, costs: Costs, buckets=25, pooling="mean", recipe=None, ridge=None, holdout=0.25, level="step"):
    """Learned gates: per block and module, logit = bias(bucket) + <w, pooled input>, fitted by ridge
    regression of each image's log cost on its pooled module input, with the step's mean
    removed from both (so the bias is the schedule's score and w carries only what the input adds).
    The ridge strength is chosen on held-out images unless given; returns (bank, fit report)."""
    y = targets(costs, level)                                           # (S, depth, 2, images)
    chain, chain_t = _chains(costs) if level == "step" else (None, None)
    f = costs.features[1:]                                              # (S, depth, 2, images, D)
    S, depth, M, n, D = f.shape
    info = _info(model, costs, buckets, pooling, {"objective": "sensitivity", **(recipe or {})}, level)
    f_mean, y_mean = f.mean(3), y.mean(3)                               # (S, depth, 2, D), (S, depth, 2)
    fc, yc = f - f_mean[:, :, :, None], y - y_mean[:, :, :, None]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    held, fit = order[:max(1, int(holdout * n))], order[max(1, int(holdout * n)):]
    weight = torch.zeros(depth, M, D)
    report = {"r2_holdout": [], "ridge": []}
    for b in range(depth):
        for m in range(M):
            X = fc[:, b, m].double()                                    # (S, n, D)
            Y = yc[:, b, m].double()                                    # (S, n)
            scale = X.flatten(0, 1).std(0).clamp_min(1e-8)              # (D,)
            Xs = X / scale

            def solve(rows, lam):
                A = Xs[:, rows].flatten(0, 1)
                rhs = A.T @ Y[:, rows].flatten()
                return torch.linalg.solve(A.T @ A + lam * len(A) * torch.eye(D, dtype=A.dtype), rhs)

            def r2(w, rows):
                pred = Xs[:, rows].flatten(0, 1) @ w
                resid = Y[:, rows].flatten() - pred
                return 1 - float(resid.pow(2).mean() / Y[:, rows].pow(2).mean().clamp_min(1e-12))

            if ridge is None:
                grid = [10.0 ** e for e in range(-3, 3)]
                best = max(grid, key=lambda lam: r2(solve(fit, lam), held))
            else:
                best = ridge
            score = r2(solve(fit, best), held)
            # Keep the input term only where it predicts held-out images better than the schedule alone.
            w = solve(torch.arange(n), best) / scale if score > 0 else torch.zeros(D, dtype=torch.float64)
            weight[b, m] = w.float()
            report["r2_holdout"].append(round(score, 4))
            report["ridge"].append(best)
    t = info.timesteps
    y_b = interp_steps(y_mean, costs.timesteps[1:], t)                # (buckets, depth, 2)
    f_b = interp_steps(f_mean, costs.timesteps[1:], t)                # (buckets, depth, 2, D)
    bias = y_b - (f_b * weight[None]).sum(-1)                          # (buckets, depth, 2)
    bank = GateBank(info, weight[:, :, None, :].expand(depth, M, buckets, D).contiguous(),
                    bias=bias.permute(1, 2, 0).contiguous(), prior=y_b.permute(1, 2, 0).contiguous(),
                    chain=chain, chain_t=chain_t)
    return bank, report


def main(argv=None):
    """CLI: the training-free sensitivity schedule of a DiT checkpoint, calibrated, as a gate file."""
    import argparse
    import logging

    from ..demo.fashion import names_for
    from ..models.checkpoint import file_sha256, load_model
    from ..models.diffusion import parse_step_counts
    from ..models.labels import parse_labels
    from . import launch
    from .calibrate import calibrate

    p = argparse.ArgumentParser(prog="python -m lazy_core.training.sensitivity", description=main.__doc__)
    p.add_argument("--model", required=True, help="DiT weights (.safetensors with a config, or official layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", default="all", help="classes to measure on: 'all', '0-9', '1, 207, 360' or names")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps of the measured trajectories")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=1000, help="held out from the benchmarks' seed 0")
    p.add_argument("--calibrate", default="10,20,30,50")
    p.add_argument("--chain", type=int, default=CHAIN, help="longest chain of lazy steps measured")
    p.add_argument("--reuse", choices=forecast.FORECASTS, default="extrapolate", help="the forecast measured")
    p.add_argument("--order", type=int, default=ORDER, help="the forecast's order")
    p.add_argument("--no-correct", dest="correct", action="store_false",
                   help="measure chains without the trajectory correction Apply Lazy Gates makes on euler/ddim")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto: a GPU if there is one, else cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    model = load_model(args.model).to(launch.device_for(args.device))
    n = model.config.num_classes
    denoiser = LabelDenoiser(model, parse_labels(args.labels, n, names_for(n)))
    costs = measure(denoiser, args.steps, args.images, args.cfg_scale, args.seed, reuse=args.reuse, order=args.order,
                    chain=args.chain, modules=False, history=HISTORY, correct=args.correct)
    bank = schedule_bank(model, costs, recipe={"measure_steps": args.steps, "images": args.images,
                                               "cfg_scale": args.cfg_scale, "seed": args.seed,
                                               "correct": args.correct,
                                               "measure_seconds": round(costs.seconds, 1),
                                               "measure_calls": costs.calls})
    bank.info.calibration, per_steps = calibrate(model, bank, step_counts=parse_step_counts(args.calibrate))
    bank.info.recipe["calibration_per_steps"] = per_steps
    bank.info.source_model = file_sha256(args.model)
    bank.save(args.out)
    logging.info("measured in %.0f s; wrote %s", costs.seconds, args.out)


if __name__ == "__main__":
    main()
