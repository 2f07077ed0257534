"""Policies: each answers one question, "which rows compute this module at this step?".

A policy returns None (every row computes) or a bool mask (rows,) with True = compute. It never touches
the model or the cache; the engine adds the rules every policy shares (a row's first evaluation computes,
at most `max_lazy_steps` lazy steps in a row) and does the caching.
"""


from .gates import GateBank


class Policy:
    """Base policy: never lazy."""

    name = "never"
    lazy_possible = False     # False: the engine neither evaluates decisions nor stores outputs

    def prepare(self, call):
        """Per-call set-up (timestep -> bucket, ...); may set call.note to explain an all-compute call."""

    def compute_mask(self, call, block, module, z):
        return None


class NeverLazy(Policy):
    """Always computes: the exact model, through the same adapters."""


class LearnedGates(Policy):
    """LazyDiT: a row computes a module iff its gate's score >= threshold (Shen et al. 2025, §3.3)."""

    name = "lazydit"
    lazy_possible = True

    def __init__(self, gates: GateBank, threshold: float):
        self.gates = gates
        self.threshold = float(threshold)

    def prepare(self, call):
        call.bucket = self.gates.bucket(call.timestep)
        if call.bucket is None:
            call.note = f"no trained gate near t={call.timestep:.0f}"

    def compute_mask(self, call, block, module, z):
        if call.bucket is None or not bool(self.gates.trained[block, module, call.bucket]):
            return None
        return self.gates.score(block, module, call.bucket, z) >= self.threshold


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
        lazy = True
        for s, _, _ in call.segments:
            last_span, since = self._since.get(s, (None, 0))
            if last_span != span or since + 1 >= self.interval:
                lazy = False
        for s, _, _ in call.segments:
            last_span, since = self._since.get(s, (None, 0))
            self._since[s] = (span, since + 1 if lazy else 0)
        call.range_plan = (*span, lazy)
