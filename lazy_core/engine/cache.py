"""The per-run lazy engine: one cache, keyed by stream (a prompt's cond uuid), then row, block and module.

A `RunState` lives for exactly one sampling run. Each model call opens a `Call` that lays the batch out
as segments (stream, rows); block adapters hand every gated module to `Call.run`, which asks the policy
which rows compute, runs the module on those rows only (gather/scatter), fills the rest from the cache
and records what happened. Tensors live only here, never on the model.
"""

import time
from dataclasses import dataclass

import torch

from .gates import MODULES
from .policies import Policy
from .proxies import Attachment, module_macs
from .report import summarize

REUSE = ("extrapolate", "repeat")


@dataclass(frozen=True)
class CacheOptions:
    """How lazy outputs are kept and reused. dtype/device None = as computed. Memory: 2 x depth x rows x T x
    D for "repeat", twice that for "extrapolate" (the two last computed outputs).

    reuse "repeat": a lazy module returns its last computed output (the paper's LazyDiT, FORA).
    reuse "extrapolate": it returns the line through its last two computed outputs, evaluated at this
    step's timestep, o1 + (t - t1) / (t1 - t2) * (o1 - o2): first order in the step instead of zeroth
    (as in Taylor-expansion caches). With one computed output so far it repeats."""

    max_lazy_steps: int = 1          # consecutive lazy steps per row; 1 = what the paper's training supports
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    reuse: str = "repeat"

    def __post_init__(self):
        if self.reuse not in REUSE:
            raise ValueError(f"reuse {self.reuse!r} is not one of {REUSE}")


class StreamCache:
    """One stream's cached pre-gate module outputs and per-row bookkeeping."""

    def __init__(self, label, rows, signature):
        self.label = label                  # "positive", "negative", "batch", ...
        self.rows = rows
        self.signature = signature          # (rows, latent shape, dtype, device); a change resets
        self.outputs = {}                   # (block, module) -> (rows, T, D) last computed output
        self.older = {}                     # (block, module) -> (rows, T, D) the one before (extrapolate)
        self.times = {}                     # (block, module) -> (rows, 2) float64 timesteps of those two
        self.lazy_run = {}                  # (block, module) -> (rows,) int64 on the host
        self.steps = 0                      # evaluations of this stream so far
        self.timesteps = []                 # per evaluation
        self.notes = []                     # per evaluation: why everything computed, or ""
        self.lazy = []                      # per evaluation: {(block, module): lazy rows}
        self.tokens = 0


class Call:
    """One model call: the batch as segments of streams, this call's timestep, and the module runner."""

    def __init__(self, state, segments, timestep):
        self.state = state
        self.segments = segments            # [(StreamCache, start, stop)]
        self.timestep = float(timestep)
        self.rows = segments[-1][2]
        self.note = ""
        self.bucket = None
        # Per-row step index of its stream (host), for step-pattern policies.
        self.steps = torch.cat([torch.full((stop - start,), s.steps) for s, start, stop in segments])
        self.range_plan = None              # (start, stop, lazy) for block-range policies
        self.plan_step = None               # index into the run's schedule, for planning policies
        self.step_mask = None               # a per-step policy's decision for this call's rows
        state.policy.prepare(self)
        if self.range_plan is not None and self.range_plan[2]:
            key = ("range",) + tuple(self.range_plan[:2])
            if any(key not in s.outputs for s, _, _ in segments):
                self.range_plan = (*self.range_plan[:2], False)     # a stream without Δ: compute

    def block(self, index, forward, x, *args, **kwargs):
        """Output of block `index` = forward(x, ...), unless the policy caches a block range this step.

        Block-range caching (Δ-DiT): at a computing step the range's output-minus-input Δ is kept; at a
        lazy step the range's first block returns x + Δ and the others pass x through. Range decisions
        are per call (the policy is input-independent), and a call with a stream lacking Δ computes."""
        self.state.tokens = x.shape[1]            # for the MACs estimate, whichever path runs the modules
        plan = self.range_plan
        if plan is None or not plan[0] <= index < plan[1]:
            return forward(x, *args, **kwargs)
        start, stop, lazy = plan
        key = ("range", start, stop)
        if lazy:
            if index == start:
                delta = self._cached(key, x)
                self._count_range_lazy(start, stop)
                return x + delta
            return x
        if index == start:
            self._range_input = x
        out = forward(x, *args, **kwargs)
        if index == stop - 1:
            self._store(key, out - self._range_input, torch.ones(self.rows, dtype=torch.bool))
            self._range_input = None
        return out

    def _count_range_lazy(self, start, stop):
        for s, _, _ in self.segments:
            for block in range(start, stop):
                for module in range(len(MODULES)):
                    s.lazy[-1][(block, module)] = s.rows

    def run(self, block, module, fn, z):
        """Pre-gate output of `module` of `block` for every row: fn(z) where computed, the cache elsewhere.

        z: (rows, T, D) module input. Returns (rows, T, D)."""
        policy = self.state.policy
        if not policy.lazy_possible:
            return fn(z)
        key = (block, module)
        wanted = policy.compute_mask(self, block, module, z)
        if wanted is None:
            compute = torch.ones(self.rows, dtype=torch.bool)
        else:
            compute = self._forced(key) | wanted.cpu()                # the one host sync of a decision
        n = int(compute.sum())
        if n == self.rows:
            out = fn(z)                                                # (rows, T, D)
        elif n == 0:
            out = self._cached(key, z)
        else:
            idx = compute.nonzero().squeeze(1).to(z.device)
            out = self._cached(key, z).index_copy(0, idx, fn(z.index_select(0, idx)))   # (rows, T, D)
        self._store(key, out, compute)
        return out

    def _forced(self, key):
        """Rows that must compute whatever the policy says: no cache yet, or lazy too many steps in a row."""
        limit = self.state.options.max_lazy_steps
        parts = []
        for s, start, stop in self.segments:
            run = s.lazy_run.get(key)
            parts.append(torch.ones(stop - start, dtype=torch.bool) if run is None else run >= limit)
        return torch.cat(parts)

    def _cached(self, key, z):
        parts = []
        for s, start, stop in self.segments:
            out = s.outputs.get(key)
            if out is None:
                # A stream new in this call (a cond whose timestep range starts mid-run): its rows are forced
                # to compute, so this placeholder is overwritten before anyone reads it.
                parts.append(torch.zeros_like(z[start:stop]))
                continue
            if key in s.older:
                t1, t2 = s.times[key].unbind(1)                                  # (rows,) each
                slope = ((self.timestep - t1) / (t1 - t2)).nan_to_num(0.0, 0.0, 0.0)   # t2 NaN: repeat
                slope = slope.to(device=out.device, dtype=out.dtype).view(-1, 1, 1)
                out = out + slope * (out - s.older[key])                         # (rows, T, D)
            parts.append(out)
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.to(device=z.device, dtype=z.dtype)

    def _shift(self, s, key, rows, fresh):
        """Extrapolating cache: computed rows move their last output to `older` and keep `fresh`; lazy rows
        keep both (their slice of `fresh` is an extrapolation, not an output)."""
        old = s.outputs.get(key)
        times = s.times.get(key)
        now = torch.full((len(rows),), self.timestep, dtype=torch.float64)
        if old is None:
            s.outputs[key] = fresh
            s.times[key] = torch.stack([now, torch.full_like(now, float("nan"))], 1)
            return
        keep = rows.to(fresh.device).view(-1, 1, 1)
        older = s.older.get(key, old)
        s.older[key] = torch.where(keep, old, older)
        s.outputs[key] = fresh if bool(rows.all()) else torch.where(keep, fresh, old)
        s.times[key] = torch.where(rows[:, None], torch.stack([now, times[:, 0]], 1), times)

    def _store(self, key, out, compute):
        # `out` holds the cache for lazy rows and fresh values for the others, so a segment with any
        # computed row simply keeps its slice of `out` (a view: no copy unless dtype/device differ).
        opts = self.state.options
        for s, start, stop in self.segments:
            rows = compute[start:stop]
            if isinstance(key[0], str):               # a block-range Δ: no per-row bookkeeping
                s.outputs[key] = out[start:stop].detach()
                continue
            if bool(rows.any()):
                fresh = out[start:stop].detach()
                if opts.dtype is not None or opts.device is not None:
                    fresh = fresh.to(device=opts.device or fresh.device, dtype=opts.dtype or fresh.dtype)
                if opts.reuse == "extrapolate":
                    self._shift(s, key, rows, fresh)
                else:
                    s.outputs[key] = fresh
            previous = s.lazy_run.get(key, torch.zeros(stop - start, dtype=torch.long))
            s.lazy_run[key] = torch.where(rows, 0, previous + 1)
            s.lazy[-1][key] = int((~rows).sum())


class RunState:
    """Everything one sampling run keeps: the policy, the streams' caches and the run's statistics."""

    def __init__(self, policy: Policy, options: CacheOptions = CacheOptions(), timesteps=None):
        """timesteps: the run's schedule (diffusion timesteps in sampling order), if known in advance."""
        self.policy = policy
        if timesteps is not None:
            policy.plan(list(timesteps))
        self.options = options
        self.streams = {}               # stream key -> StreamCache
        self.call = None                # the Call in progress, read by the block adapters
        self.calls = 0
        self.blocks = []                # the model's original blocks, set by the adapters' Attachment
        self.tokens = 0                 # token count of the last module call, for the MACs estimate
        self._attachments = {}          # id(model) -> Attachment, built once per run
        self.started = time.perf_counter()
        self.seconds = 0.0

    def attach(self, model):
        """Swaps this run's adapters into `model.blocks` (built on first use); returns the Attachment."""
        handle = self._attachments.get(id(model))
        if handle is None or handle.model is not model:
            handle = self._attachments[id(model)] = Attachment(model, self)
        return handle.attach()

    def begin_call(self, keys, labels, rows_per_key, latent, timestep):
        """Opens a call over the batch: key i owns rows [i*rows_per_key, (i+1)*rows_per_key)."""
        signature = (rows_per_key, tuple(latent.shape[1:]), latent.dtype, latent.device)
        segments = []
        for i, (key, label) in enumerate(zip(keys, labels)):
            stream = self.streams.get(key)
            if stream is None or stream.signature != signature:
                stream = self.streams[key] = StreamCache(label, rows_per_key, signature)
            segments.append((stream, i * rows_per_key, (i + 1) * rows_per_key))
        self.call = Call(self, segments, timestep)
        for stream, _, _ in segments:
            stream.timesteps.append(self.call.timestep)
            stream.notes.append(self.call.note)
            stream.lazy.append({})
        self.calls += 1
        return self.call

    def end_call(self):
        for stream, _, _ in self.call.segments:
            stream.steps += 1
        self.call = None

    def finish(self):
        """Frees every cached tensor; statistics stay."""
        self.seconds = time.perf_counter() - self.started
        for stream in self.streams.values():
            stream.outputs.clear()
            stream.older.clear()
            stream.times.clear()
            stream.lazy_run.clear()
        self._attachments.clear()

    def report(self):
        """The run's statistics, summarized (see report.summarize)."""
        return summarize(self.stats(), module_macs(self.blocks, self.tokens), self.seconds)

    def stats(self):
        """Per-stream statistics as plain data: see report.summarize."""
        out = []
        for key, s in self.streams.items():
            lazy = torch.zeros(len(s.lazy), len(self.blocks), len(MODULES), dtype=torch.long)   # (steps, depth, 2)
            for step, counts in enumerate(s.lazy):
                for (block, module), n in counts.items():
                    lazy[step, block, module] = n
            out.append({"key": str(key), "label": s.label, "rows": s.rows, "timesteps": list(s.timesteps),
                        "notes": list(s.notes), "lazy": lazy})
        return out
