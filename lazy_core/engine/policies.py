"""Policies: each answers one question, "which rows compute this module at this step?".

A policy returns None (every row computes) or a bool mask (rows,) with True = compute: a host list or CPU
tensor costs nothing, a device tensor costs the engine one host read (so policies that read activations
batch what they need into one `call.host`). It never touches the model or the cache; the engine adds
the rules every policy shares (a row's first evaluation computes, at most `max_lazy_steps` lazy steps in
a row) and does the caching.
"""

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

    def plan(self, timesteps):
        """Per-run set-up from the run's schedule (diffusion timesteps in sampling order), when known."""

    def prepare(self, call):
        """Per-call set-up (timestep -> bucket, ...); may set call.note to explain an all-compute call."""

    def compute_mask(self, call, block, module, z):
        return None


class NeverLazy(Policy):
    """Always computes: the exact model, through the same proxies."""


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

    Everything up to the decision runs on the model's device (nearest bucket, plan step, logit, threshold);
    the decision and the bucket reach the host in one read. Per-step gates decide once per call."""

    name = "lazydit"
    lazy_possible = True

    def __init__(self, gates: GateBank, threshold: float):
        self.gates = gates
        self.threshold = float(threshold)
        self.trained = gates.trained.tolist()        # [depth][2][buckets], read on the host per module
        self.static = gates.static
        self.cost = gates.info.score == "log-cost"
        self.per_step = gates.info.granularity == "step"
        self.schedule = None                         # (timesteps (S,), log thresholds (S, depth, 2))
        self._on = {}                                # device -> the gate tensors there

    def plan(self, timesteps):
        self._on.clear()                             # device copies of an earlier run's plan
        self.schedule = None
        if not self.cost or not len(timesteps):
            return
        lam = float(torch.tensor(self.threshold).exp())
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
        if self.schedule is not None:
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
        if self.schedule is None:
            return logit > self.threshold
        return logit > on["limits"][:, block, module].index_select(0, call.gate_step)


class RandomLazy(Policy):
    """Baseline: each image is lazy with probability p wherever the engine allows (cond and uncond rows
    together). With max_lazy_steps 1, p = r / (1 - r) gives a lazy ratio r over a long run."""

    name = "random"
    lazy_possible = True

    def __init__(self, ratio: float, seed: int = 0):
        if not 0 <= ratio < 0.5:
            raise ValueError(f"random lazy ratio must be in [0, 0.5), got {ratio}")
        self.p = ratio / (1 - ratio)
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

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError(f"FORA interval must be >= 1, got {interval}")
        self.interval = int(interval)

    def compute_mask(self, call, block, module, z):
        return call.steps % self.interval == 0          # (rows,) on the host


class ForcedRatio(Policy):
    """A known lazy ratio for benchmarks on random weights (where learned gates mean nothing): on every
    odd step of a stream, both modules of an evenly spread subset of blocks are lazy, for every row.
    ratio r makes 2 * depth * r blocks lazy on half of the steps; r = 0.5 makes every block lazy there."""

    name = "forced"
    lazy_possible = True

    def __init__(self, ratio: float, depth: int):
        if not 0 <= ratio <= 0.5:
            raise ValueError(f"a forced ratio must be in [0, 0.5] (lazy steps alternate), got {ratio}")
        n = round(2 * depth * ratio)
        self.lazy_blocks = {int(j * depth / n) for j in range(n)} if n else set()

    def compute_mask(self, call, block, module, z):
        if block not in self.lazy_blocks:
            return None
        return call.steps % 2 == 0


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

    def inside(self, t):
        return self.low <= t <= self.high

    def plan(self, timesteps):
        self.inner.plan([t for t in timesteps if self.inside(t)])

    def prepare(self, call):
        call.outside = not self.inside(call.timestep)
        if not call.outside:
            self.inner.prepare(call)

    def compute_mask(self, call, block, module, z):
        return None if call.outside else self.inner.compute_mask(call, block, module, z)
