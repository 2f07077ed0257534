"""Policies: each answers one question, "which rows compute this module at this step?".

A policy returns None (every row computes) or a bool mask (rows,) with True = compute: a host list or CPU
tensor costs nothing, a device tensor costs the engine one host read (so policies that read activations
batch what they need into one `call.host`). It never touches the model or the cache; the engine adds
the rules every policy shares (a row's first evaluation computes, at most `max_lazy_steps` lazy steps in
a row) and does the caching.
"""

import math

import numpy as np
import torch

from .gates import GateBank


def image_rows(call):
    """Rows per stream when every stream of the call has the same count (cond and uncond of the same
    images, as ComfyUI batches them), so row i of each stream is image i; else None."""
    n = call.segments[0][2] - call.segments[0][1]
    return n if all(stop - start == n for _, start, stop in call.segments) else None


def tie_rows(call, values):
    """One value per image: row i of every stream gets the mean over the streams' rows i. The guided output
    of an image needs both, so its cond and uncond rows decide together."""
    n = image_rows(call)
    if n is None or len(call.segments) < 2:
        return values
    return values.view(len(call.segments), n).mean(0).repeat(len(call.segments))


class Policy:
    """Base policy: never lazy."""

    name = "never"
    lazy_possible = False     # False: the engine neither evaluates decisions nor stores outputs
    ranges = False            # True: the policy caches block ranges (Call.block), so blocks get proxies too
    max_run = None            # most consecutive lazy steps the policy was made for (None: the engine's option)
    # False: compute_mask reads only z's rows and device, never its values, so the engine may decide before
    # the module's input is made and skip the norm that feeds a module no row computes (proxies.NormProxy).
    reads_input = True

    def plan(self, timesteps, max_run=1):
        """Per-run set-up from the run's schedule (diffusion timesteps in sampling order), when known, and
        the engine's limit of consecutive lazy steps."""

    def prepare(self, call):
        """Per-call set-up (timestep -> bucket, ...); may set call.note to explain an all-compute call."""

    def compute_mask(self, call, block, module, z):
        return None


class NeverLazy(Policy):
    """Always computes: the exact model, through the same proxies."""


def chain_costs(gates, timesteps, longest):
    """(S, longest) expected final-image costs of lazy chains on a run's schedule: [k, l - 1] for steps
    k .. k + l - 1 lazy (k >= 1), +inf where not allowed.

    The bank measured chains on one schedule (chain_t). A chain is carried to another schedule by the gap
    it leaves between the two computed steps around it, counted in steps of the measured schedule: on the
    measured schedule a chain of l steps leaves a gap of l + 1, so a gap g costs what the measured chain
    of g - 1 steps costs from the same place, interpolated over the start and, in log cost against log
    gap, over the length. Below the shortest measured gap the cost falls as that first segment's power
    law; above the longest it rises as the last one's, up to 1.5 times that gap (so a run of fewer steps
    than was measured can still be lazy on single steps), and past that it is not allowed."""
    ref = gates.chain_t.double()                                        # (M,) descending
    table = gates.chain.double()                                        # (M - 1, L): log costs
    m, lmax = len(ref), table.shape[1]

    def place(t):
        """Fractional index of timestep t in the measured schedule (its end, after the last step, is M)."""
        if t is None:
            return float(m)
        if t >= ref[0]:
            return 0.0
        j = int(torch.searchsorted(-ref, torch.tensor(-float(t), dtype=torch.float64), right=True)) - 1
        if j >= m - 1:                                                 # below the last step: towards the end
            return (m - 1) + min(1.0, (float(ref[-1]) - t) / max(float(ref[-1]), 1.0))
        return j + (float(ref[j]) - t) / float(ref[j] - ref[j + 1])

    log_gaps = torch.log(torch.arange(2, lmax + 2, dtype=torch.float64))

    def at_start(i, gap):
        """log cost from measured start step i (1-based) for a gap; inf past what was measured there."""
        row = table[i - 1]
        ok = torch.isfinite(row)
        n = int(ok.sum())
        lg = math.log(gap)
        if lg > float(log_gaps[n - 1]) + math.log(1.5):
            return math.inf
        if n == 1:
            return float(row[0]) + 2.0 * (lg - float(log_gaps[0]))    # one point: cost ~ gap^2 around it
        if lg > float(log_gaps[n - 1]):
            slope = float((row[n - 1] - row[n - 2]) / (log_gaps[n - 1] - log_gaps[n - 2]))
            return float(row[n - 1]) + max(slope, 2.0) * (lg - float(log_gaps[n - 1]))
        if lg <= float(log_gaps[0]):
            slope = float((row[1] - row[0]) / (log_gaps[1] - log_gaps[0]))
            return float(row[0]) + max(slope, 0.0) * (lg - float(log_gaps[0]))
        j = min(int(torch.searchsorted(log_gaps[:n], torch.tensor(lg, dtype=torch.float64))), n - 1)
        w = (lg - float(log_gaps[j - 1])) / float(log_gaps[j] - log_gaps[j - 1])
        return float(row[j - 1] + w * (row[j] - row[j - 1]))

    S = len(timesteps)
    where = [place(float(t)) for t in timesteps] + [place(None)]
    out = torch.full((S, longest), math.inf)
    for k in range(1, S):
        for length in range(1, min(longest, S - k) + 1):
            a, b = where[k - 1], where[k + length]
            start = min(max(a + 1, 1.0), m - 1.0)
            i0 = int(math.floor(start))
            i1 = min(i0 + 1, m - 1)
            w = start - i0
            lo, hi = at_start(i0, max(b - a, 1e-3)), at_start(i1, max(b - a, 1e-3))
            logc = lo if w == 0 or i1 == i0 else (math.inf if math.inf in (lo, hi) else lo + w * (hi - lo))
            out[k, length - 1] = math.exp(logc) if logc < math.inf else math.inf
    return out


def chain_plan(cost, lam):
    """Thresholds of the optimal chain plan: (S, R + 1) log thresholds on an image's log-cost deviation, by
    step and by the row's lazy steps since it last computed (r = R: must compute). cost: chain_costs."""
    S, R = cost.shape
    F = torch.zeros(S + 1, R + 1, dtype=torch.float64)
    thr = torch.full((S, R + 1), -math.inf, dtype=torch.float64)
    c = cost.double()
    for k in range(S - 1, -1, -1):
        for r in range(R + 1):
            F[k, r] = F[k + 1, 0]
            if k == 0 or r == R or k - r < 1 or not math.isfinite(c[k - r, r]):
                continue
            inc = float(c[k - r, r] - (c[k - r, r - 1] if r else 0.0))
            lazy = lam - inc + float(F[k + 1, r + 1])
            F[k, r] = max(float(F[k, r]), lazy)
            limit = lam + float(F[k + 1, r + 1] - F[k + 1, 0])
            if limit > 0:
                thr[k, r] = math.inf if inc <= 0 else math.log(limit) - math.log(inc)
    return thr.float()


def plan_share(thr):
    """Share of the steps a chain plan makes lazy for an image at the schedule's costs (deviation 0)."""
    r, lazy = 0, 0
    for k in range(thr.shape[0]):
        if float(thr[k, r]) >= 0:
            lazy, r = lazy + 1, r + 1
        else:
            r = 0
    return lazy / thr.shape[0]


def plan_chains(thr):
    """[(start, length)] of the lazy chains a plan makes for an image at the schedule's costs, as
    plan_share walks it."""
    chains, r = [], 0
    for k in range(thr.shape[0]):
        if float(thr[k, r]) >= 0:
            r += 1
            continue
        if r:
            chains.append((k - r, r))
        r = 0
    if r:
        chains.append((thr.shape[0] - r, r))
    return chains


def predicted_error(gates, timesteps, laziness, max_run=4):
    """(lazy share, final-image squared error) that a chain schedule's plan is expected to reach on a run's
    schedule at the slider's `laziness`: the measured costs of the chains it makes, summed (chains far
    apart add their errors, as independent perturbations of the trajectory do)."""
    threshold = gates.threshold_for(laziness, steps=len(timesteps))
    costs = chain_costs(gates, timesteps, min(max_run, gates.longest_chain))
    chains = plan_chains(chain_plan(costs, math.exp(threshold)))
    lazy = sum(n for _, n in chains)
    return lazy / len(timesteps), sum(float(costs[i, n - 1]) for i, n in chains)


def summed_psnr(gates, timesteps, laziness, numel, peak2, max_run=4):
    """(lazy share, PSNR in dB) of predicted_error for a latent of `numel` values per image whose range is
    sqrt(peak2); inf where nothing is lazy."""
    share, err = predicted_error(gates, timesteps, laziness, max_run)
    return share, (10 * math.log10(peak2 * numel / err) if err > 0 else math.inf)


def predicted_psnr(gates, timesteps, laziness, numel, peak2, max_run=4):
    """(lazy share, PSNR in dB) to expect at `laziness`: summed_psnr, corrected by what the schedule's own
    trajectories measured against it ("psnr_check" in its recipe: [[laziness, dB measured - summed]], read
    by linear interpolation). Summed chain costs miss how the plan's computed steps sit around a chain
    (the chains were measured with an assumed history) and how errors of separate chains cancel: on the
    demo they were 3 dB pessimistic at 50 %. None for gates without chains, whose decisions read each image."""
    if gates.chain is None or not gates.static:
        return None
    share, psnr = summed_psnr(gates, timesteps, laziness, numel, peak2, max_run)
    check = sorted(gates.info.recipe.get("psnr_check") or [])
    if check and math.isfinite(psnr):            # laziness 0 needs no correction: nothing is lazy
        psnr += float(np.interp(laziness, [0.0] + [c[0] for c in check], [0.0] + [c[1] for c in check]))
    return share, psnr


class LearnedGates(Policy):
    """LazyDiT gates; the cond and uncond rows of an image decide together on their mean logit (tie_rows).

    Probability gates (the paper, §3.3): an image computes a module iff sigmoid(logit) >= threshold.
    Log-cost gates (lazy_core.training.sensitivity): the logit predicts what being lazy costs the final
    image, and `threshold` is log λ, the price of one module evaluation. Knowing the run's schedule, the
    policy spends laziness where it is worth most: with at most one lazy step in a row, the best lazy set
    for a module is a maximum-weight set of non-adjacent steps, weights λ - cost. Solved backwards over the
    schedule's expected costs (the prior), F[k] = max(F[k+1], λ - cost[k] + F[k+2]), and being lazy at k
    pays iff the image's own cost there is at most λ - (F[k+1] - F[k+2]): a per-step threshold, so every
    decision stays one comparison. A schedule (no input weights) thus gets the optimal static plan, and
    learned gates move it per image. Without a known schedule: lazy iff cost <= λ.

    Chains: a bank with measured chain costs (GateBank.chain) is planned over runs of lazy steps instead,
    whose cost is measured, not the sum of single steps (a forecast drifts as the chain grows). The state
    of a row is r, its lazy steps since it last computed, and F[k, r] the best value from step k on:
    F[k, r] = max(F[k+1, 0], λ - ΔC(k, r) + F[k+1, r+1]), ΔC the measured cost increment of making step k
    the (r+1)-th lazy step of its chain. Lazy pays iff the image's increment is at most λ + F[k+1, r+1] -
    F[k+1, 0]; an image's increment is the schedule's times exp(its logit - the prior), so the decision
    is again one comparison, with a threshold per step and run length (see chain_plan).

    Everything up to the decision runs on the model's device (nearest bucket, plan step, logit, threshold);
    the decision and the bucket reach the host in one read. Per-step gates decide once per call."""

    name = "lazydit"
    lazy_possible = True

    def __init__(self, gates: GateBank, threshold: float, laziness: float = None):
        """laziness: the slider's value; given, a run re-derives the threshold from the calibration at its
        own step count (GateBank.threshold_for), as chains make the most laziness depend on it."""
        self.gates = gates
        self.threshold = float(threshold)
        self.laziness = laziness
        self.trained = gates.trained.tolist()        # [depth][2][buckets], read on the host per module
        self.static = gates.static
        self.cost = gates.info.score == "log-cost"
        self.per_step = gates.info.granularity == "step"
        # Log-cost gates plan chains only as long as they measured (1 without a chain table); the paper's
        # probability gates leave it to max_lazy_steps.
        self.max_run = gates.longest_chain if self.cost else None
        self.reads_input = not self.static               # a schedule's decisions read no activations
        self.schedule = None                         # (timesteps (S,), log thresholds (S, depth, 2))
        self.chains = None                           # chain plans: (timesteps (S,), log thresholds (S, R + 1))
        self.share = None                            # the chain plan's lazy share at the schedule's costs
        self._on = {}                                # device -> the gate tensors there

    def plan(self, timesteps, max_run=1):
        self._on.clear()                             # device copies of an earlier run's plan
        self.schedule = self.chains = self.share = None
        if self.laziness is not None and len(timesteps):
            self.threshold = float(self.gates.threshold_for(self.laziness, steps=len(timesteps)))
        if not self.cost or not len(timesteps):
            return
        lam = math.exp(self.threshold)
        if self.gates.chain is not None and self.per_step:
            longest = min(max_run, self.gates.longest_chain)
            thr = chain_plan(chain_costs(self.gates, timesteps, longest), lam)
            self.share = plan_share(thr)             # what the plan makes lazy at the schedule's own costs
            prior = torch.tensor([float(self.gates.prior[0, 0, b]) if b is not None else float("inf")
                                  for b in (self.gates.bucket(t) for t in timesteps)])
            self.chains = (torch.tensor([float(t) for t in timesteps]), prior[:, None] + thr)
            return
        buckets = [self.gates.bucket(t) for t in timesteps]
        prior = self.gates.prior.float().cpu()                               # (depth, 2, buckets)
        cost = torch.stack([prior[:, :, b].exp() if b is not None else torch.full(prior.shape[:2], float("inf"))
                            for b in buckets])                               # (S, depth, 2)
        cost[0] = float("inf")                                               # a run's first step computes
        S = len(timesteps)
        F = torch.zeros(S + 2, *cost.shape[1:])
        for k in range(S - 1, -1, -1):
            F[k] = torch.maximum(F[k + 1], lam - cost[k] + F[k + 2])
        limit = lam - (F[1:S + 1] - F[2:S + 2])                             # (S, depth, 2)
        self.schedule = (torch.tensor([float(t) for t in timesteps]), limit.clamp_min(1e-30).log())

    def _tensors(self, device):
        """The bank's tensors on `device`, moved once per run."""
        on = self._on.get(device)
        if on is None:
            g = self.gates
            on = self._on[device] = {
                "centers": g._timesteps.to(device), "bias": g.bias.detach().float().to(device),
                "weight": None if self.static else g.weight.detach().float().to(device)}
            if self.schedule is not None:
                on["plan_t"], on["limits"] = (x.to(device) for x in self.schedule)
            if self.chains is not None:
                on["plan_t"], on["chain_limits"] = (x.to(device) for x in self.chains)
        return on

    def compute_mask(self, call, block, module, z):
        if call.bucket is None:
            if call.note:
                return None                          # no trained gate near this call's timestep
            mask = self._first(call, block, module, z)
        elif self.per_step:
            return call.step_mask if self.trained[block][module][call.bucket] else None
        elif not self.trained[block][module][call.bucket]:
            return None
        else:
            return call.host(self._decide(call, block, module, z, self._tensors(z.device)))
        if self.per_step:
            call.step_mask = mask                    # the step's first gate decides for its image
        return mask

    def _first(self, call, block, module, z):
        """The call's first decision, read together with its bucket and timestep in one host transfer."""
        on = self._tensors(z.device)
        t = call.t.to(device=z.device, dtype=torch.float32)
        dist = (on["centers"] - t).abs()
        call.gate_bucket = dist.argmin().view(1)
        if self.schedule is not None or self.chains is not None:
            call.gate_step = (on["plan_t"] - t).abs().argmin().view(1)
        compute = self._decide(call, block, module, z, on)
        *mask, bucket, gap, t = call.host(torch.cat([compute.float(), call.gate_bucket.float(),
                                                     dist.index_select(0, call.gate_bucket), t.view(1)]))
        call._host_t = t
        if gap > self.gates.radius:
            call.note = f"no trained gate near t={t:.0f}"
            return None
        call.bucket = int(bucket)
        return mask if self.trained[block][module][call.bucket] else None

    def _decide(self, call, block, module, z, on):
        """(rows,) bool on the device: True = compute."""
        bucket = call.gate_bucket
        logit = on["bias"][block, module].index_select(0, bucket).expand(z.shape[0])
        if not self.static:
            w = on["weight"][block, module].index_select(0, bucket).squeeze(0)               # (D,)
            pool = torch.mean if self.gates.info.pooling == "mean" else torch.sum
            logit = tie_rows(call, pool(z, dim=1, dtype=torch.float32) @ w + logit)     # no fp32 copy of z
        if not self.cost:
            return torch.sigmoid(logit) >= self.threshold
        if self.chains is not None:
            limits = on["chain_limits"]                                     # (S, R + 1)
            runs = [min(max(r, 0), limits.shape[1] - 1) for r in call.slab.runs.get((block, module), ())]
            if len(runs) != z.shape[0]:                                      # no cache yet: the row computes
                return torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
            row = limits.index_select(0, call.gate_step).squeeze(0)         # (R + 1,)
            return logit > row[torch.tensor(runs, device=z.device)]
        if self.schedule is None:
            return logit > self.threshold
        return logit > on["limits"][:, block, module].index_select(0, call.gate_step)


class RandomLazy(Policy):
    """Baseline: each image is lazy with probability p wherever the engine allows (cond and uncond rows
    together), in chains of at most `longest` steps (the engine's max_lazy_steps must allow them). Over a
    long run the lazy share is (p + ... + p^L) / (1 + p + ... + p^L), L = longest; p is solved for `ratio`."""

    name = "random"
    lazy_possible = True
    reads_input = False

    def __init__(self, ratio: float, seed: int = 0, longest: int = 1):
        top = longest / (longest + 1)
        if not 0 <= ratio < top:
            raise ValueError(f"random lazy ratio must be in [0, {top:.2f}) for chains of {longest}, got {ratio}")

        def share(p):
            powers = [p ** i for i in range(longest + 1)]
            return sum(powers[1:]) / sum(powers)
        lo, hi = 0.0, 1e6
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if share(mid) < ratio else (lo, mid)
        self.p = min(1.0, lo)
        self.max_run = longest
        self.generator = torch.Generator().manual_seed(seed)

    def compute_mask(self, call, block, module, z):
        n = image_rows(call)
        draw = torch.rand(call.rows if n is None else n, generator=self.generator) >= self.p
        return draw if n is None else draw.repeat(len(call.segments))


class StaticMask(Policy):
    """Baseline: the same lazy set for every image, lazy[step, block, module] by the stream's step index
    (e.g. the majority decision of learned gates at each step)."""

    name = "static"
    lazy_possible = True
    reads_input = False

    def __init__(self, lazy):
        self.lazy = torch.as_tensor(lazy, dtype=torch.bool).cpu()         # (steps, depth, 2)

    def compute_mask(self, call, block, module, z):
        steps = call.steps.clamp(max=len(self.lazy) - 1)
        lazy = self.lazy[steps, block, module] & (call.steps < len(self.lazy))
        return ~lazy


class Fora(Policy):
    """FORA (Selvaraju et al. 2024): every module computes on every N-th step of a stream, else is lazy."""

    name = "fora"
    lazy_possible = True
    reads_input = False

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError(f"FORA interval must be >= 1, got {interval}")
        self.interval = int(interval)

    def compute_mask(self, call, block, module, z):
        return call.steps % self.interval == 0          # (rows,) on the host


class TaylorSeer(Fora):
    """TaylorSeer (Liu et al., ICCV 2025): FORA's every-N-th-step pattern with a Taylor forecast in between;
    the forecast is the cache's (CacheOptions(reuse="taylor", order=O), max_lazy_steps >= N - 1)."""

    name = "taylorseer"


class ForcedRatio(Policy):
    """A known lazy ratio for benchmarks on random weights (where learned gates mean nothing), for every
    row. Up to 0.5: on every odd step of a stream, both modules of an evenly spread subset of blocks are
    lazy (ratio r makes 2 * depth * r blocks lazy on half of the steps). Above: every block is lazy except
    on every N-th step, N = round(1 / (1 - r)) (0.67: N = 3), which needs max_lazy_steps >= N - 1."""

    name = "forced"
    lazy_possible = True
    reads_input = False

    def __init__(self, ratio: float, depth: int):
        if not 0 <= ratio < 1:
            raise ValueError(f"a forced ratio must be in [0, 1), got {ratio}")
        self.period = 2 if ratio <= 0.5 else round(1 / (1 - ratio))
        n = round(2 * depth * ratio) if ratio <= 0.5 else depth
        self.lazy_blocks = {int(j * depth / n) for j in range(n)} if n else set()

    def compute_mask(self, call, block, module, z):
        if block not in self.lazy_blocks:
            return None
        return call.steps % self.period == 0


class DeltaDiT(Policy):
    """Δ-DiT (Chen et al. 2024): cache the output-minus-input Δ of a block range, reuse it between refreshes.

    While t > boundary (early, outline stage) the rear `cached_blocks` blocks are cached; while t <= boundary
    (late, detail stage) the front ones. The paper leaves the refresh rule open; here every stream computes
    fully on its first evaluation, on every `interval`-th evaluation after it, and on the first evaluation
    after the boundary is crossed (the cached range changes, so its Δ must be taken anew)."""

    name = "delta-dit"
    lazy_possible = False        # no per-module decisions: the engine's block-range path does the work
    ranges = True

    def __init__(self, depth: int, cached_blocks: int, boundary: float, interval: int):
        if not 1 <= cached_blocks <= depth:
            raise ValueError(f"cached_blocks must be in 1..{depth}, got {cached_blocks}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.depth, self.cached_blocks, self.boundary, self.interval = depth, cached_blocks, boundary, interval
        self._since = {}          # stream -> (range, evaluations since its last refresh)

    def prepare(self, call):
        early = call.timestep > self.boundary
        span = (self.depth - self.cached_blocks, self.depth) if early else (0, self.cached_blocks)
        lazy = span in call.slab.ranges              # a stream new to this layout has no Δ yet: compute
        for s, _, _ in call.segments:
            last_span, since = self._since.get(s, (None, 0))
            if last_span != span or since + 1 >= self.interval:
                lazy = False
        for s, _, _ in call.segments:
            last_span, since = self._since.get(s, (None, 0))
            self._since[s] = (span, since + 1 if lazy else 0)
        call.range_plan = (*span, lazy)


class StepRange(Policy):
    """Another policy, only while the call's timestep lies in [low, high]; outside, everything computes.

    Keeping the first and last part of sampling exact (start/end percent, as the core caches offer): the
    outline forms early and fine detail late. Outside the range the blocks run exactly as without the
    policy, so every output before the range is bit-identical to the exact run's. Costs one host read per
    call (the timestep), unless the policy already made it. A run's schedule reaches the inner policy
    restricted to the range, so a planning policy (log-cost gates) spends its laziness there."""

    def __init__(self, inner: Policy, low: float, high: float):
        self.inner, self.low, self.high = inner, float(low), float(high)
        self.name, self.lazy_possible, self.ranges = inner.name, inner.lazy_possible, inner.ranges
        self.max_run, self.reads_input = inner.max_run, inner.reads_input

    def inside(self, t):
        return self.low <= t <= self.high

    def plan(self, timesteps, max_run=1):
        self.inner.plan([t for t in timesteps if self.inside(t)], max_run)

    def prepare(self, call):
        call.outside = not self.inside(call.timestep)
        if not call.outside:
            self.inner.prepare(call)

    def compute_mask(self, call, block, module, z):
        return None if call.outside else self.inner.compute_mask(call, block, module, z)
