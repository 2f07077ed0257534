"""The per-run lazy engine: one cache, keyed by stream (a prompt's cond uuid), then row, block and module.

A `RunState` lives for exactly one sampling run. Each model call opens a `Call` over the batch's layout:
its streams in order, each owning a run of rows. The cache of a layout is one `Slab`: per gated module, a
tensor over all of the layout's rows, read and written in place, so a call never concatenates per-stream
caches (a new layout, e.g. a prompt that joins mid-run, is assembled once). Module proxies hand every gated
module to `Call.run`, which asks the policy which rows compute, runs the module on those rows only, fills
the rest from the cache and records what happened.

Host syncs: decisions reach the host as lists, so the bookkeeping (which rows must compute, lazy runs,
counts) is plain Python and costs the device nothing. A policy whose decision reads the model's
activations (learned gates) pays one device-to-host read for it, once per call for per-step gates; policies
that depend on the step index only (FORA, static masks) pay none. Timesteps stay on the device and are read
once, when the report is made.
"""

import math
import time
from dataclasses import dataclass, field

import torch

from . import forecast
from .correct import Correction
from .gates import ATTN, MLP, MODULES
from .policies import Policy
from .proxies import Attachment, module_macs
from .report import summarize

REUSE = ("extrapolate", "repeat")     # what a node offers; "taylor" comes with its own node and order
GATE_REUSE = REUSE + ("learned",)     # with gates: also the forecaster fitted into their file
LEVELS = ("module", "block")
MAX_ORDER = 3
NO_CACHE = 1 << 30          # a row's lazy run before its first computed output: larger than any limit


@dataclass(frozen=True)
class CacheOptions:
    """How lazy outputs are kept and reused. dtype/device None = as computed. Memory: 2 x depth x rows x T x
    D x K, K = the outputs the forecaster keeps (1 for "repeat", order + 1 otherwise).

    reuse "repeat": a lazy module returns its last computed output (the paper's LazyDiT, FORA).
    reuse "extrapolate": the polynomial of `order` through its last order + 1 computed outputs, evaluated
    at this step's timestep; order 1 is the line o1 + (t - t1) / (t1 - t2) * (o1 - o2).
    reuse "taylor": TaylorSeer's finite-difference Taylor series of `order` (see forecast.py).
    With fewer computed outputs so far, a row uses the ones it has.

    level "module": attention and MLP of each block decide on their own (module proxies). level "block":
    a whole block computes or returns its inputs plus its forecast residual (output - input), one cache
    entry per block over all of its output streams (Call.run_block); both modules count lazy together.

    correct: after a chain of lazy steps, the next full step of a first-order sampler (Euler, DDIM) moves x
    by less than its d, by what the chain's forecasts are estimated to have displaced it (correct.py); the
    caller must give the run's sigmas, and runs of other samplers ignore it."""

    max_lazy_steps: int = 1          # consecutive lazy steps per row; 1 = what the paper's training supports
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    reuse: str = "repeat"
    order: int = 1
    level: str = "module"
    correct: bool = False            # fold a chain's forecast error back at the next full step (correct.py)
    coefficients: torch.Tensor | None = field(default=None, compare=False)   # reuse "learned": GateBank.forecast

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"cache level {self.level!r} is not one of {LEVELS}")
        if self.reuse not in forecast.FORECASTS:
            raise ValueError(f"reuse {self.reuse!r} is not one of {forecast.FORECASTS}")
        if not 1 <= self.order <= MAX_ORDER:
            raise ValueError(f"forecast order {self.order} is not in 1..{MAX_ORDER}")
        if self.max_lazy_steps < 1:
            raise ValueError(f"max_lazy_steps {self.max_lazy_steps} must be at least 1")
        if self.reuse == "learned" and (self.coefficients is None or self.coefficients.dim() != 4
                                        or self.coefficients.shape[1::2] != (2, 2)):
            raise ValueError("reuse 'learned' needs the gate file's fitted forecaster coefficients (depth, 2, "
                             "positions, 2): fit them with python -m lazy_core.training.forecaster")

    @property
    def history(self):
        """Computed outputs kept per row and module."""
        return forecast.history(self.reuse, self.order)


class StreamCache:
    """One stream's identity and statistics; its cached outputs live in the Slab of its current layout."""

    def __init__(self, label, rows, signature):
        self.label = label                  # "positive", "negative", "batch", ...
        self.rows = rows
        self.signature = signature          # (rows, latent shape, dtype, device); a change resets
        self.slab = None                    # the Slab holding this stream's latest cache
        self.steps = 0                      # evaluations of this stream so far
        self.timesteps = []                 # per evaluation: 0-dim tensors, read when the report is made
        self.notes = []                     # per evaluation: why everything computed, or ""
        self.lazy = []                      # per evaluation: {(block, module): lazy rows}


class Slab:
    """The cache of one batch layout (its streams in call order): per gated module, tensors over all rows.

    out: (rows, T, D) last computed output; past: the ones before it, newest first (as many as the
    forecaster keeps, less one); times: (rows, K) their timesteps, newest first (NaN: none yet); runs: per
    row, lazy evaluations since it last computed (NO_CACHE before the first). ranges: block-range Δs
    (Δ-DiT), whole-call."""

    def __init__(self, streams):
        self.streams = tuple(streams)
        self.offsets = {}
        rows = 0
        for s in self.streams:
            self.offsets[s] = rows
            rows += s.rows
        self.rows = rows
        self.out, self.past, self.times, self.runs, self.ranges = {}, {}, {}, {}, {}
        self.forms = {}          # block level: block -> [(output name, input shape or None)] of its residual

    @classmethod
    def assemble(cls, streams):
        """The slab for a new layout, from the slabs its streams last lived in (rows never seen: no cache)."""
        new = cls(streams)
        keys = {k for s in streams if s.slab is not None for k in s.slab.out}
        for key in keys:
            held = [s.slab is not None and key in s.slab.out for s in streams]
            like = next(s.slab.out[key] for s, h in zip(streams, held) if h)
            depth = max(len(s.slab.past.get(key, ())) for s, h in zip(streams, held) if h)
            width = max((s.slab.times[key].shape[1] for s, h in zip(streams, held) if h and key in s.slab.times),
                        default=0)

            def rows_of(s, h, j):
                """Stream s's rows of output j (0 = newest); zeros where it has none (its times say NaN)."""
                if h:
                    tensors = [s.slab.out[key], *s.slab.past.get(key, ())]
                    a = s.slab.offsets[s]
                    return tensors[min(j, len(tensors) - 1)][a:a + s.rows]
                return torch.zeros((s.rows, *like.shape[1:]), dtype=like.dtype, device=like.device)

            new.out[key] = torch.cat([rows_of(s, h, 0) for s, h in zip(streams, held)])
            if depth:
                new.past[key] = [torch.cat([rows_of(s, h, j) for s, h in zip(streams, held)])
                                 for j in range(1, depth + 1)]
            if width:
                nan = torch.full((1, width), float("nan"), device=like.device)
                new.times[key] = torch.cat([s.slab.times[key][s.slab.offsets[s]:s.slab.offsets[s] + s.rows]
                                            if h and key in s.slab.times else nan.expand(s.rows, width)
                                            for s, h in zip(streams, held)])
            new.runs[key] = [r for s, h in zip(streams, held)
                             for r in (s.slab.runs[key][s.slab.offsets[s]:s.slab.offsets[s] + s.rows] if h
                                       else [NO_CACHE] * s.rows)]
        for s in streams:
            if s.slab is not None:
                new.forms.update(s.slab.forms)
            s.slab = new
        return new


class Call:
    """One model call: the batch's layout, this call's timestep, and the module runner."""

    def __init__(self, state, segments, slab, t, host_t=None):
        self.state = state
        self.segments = segments            # [(StreamCache, start, stop)]
        self.slab = slab
        self.rows = slab.rows
        self.t = t                          # 0-dim float32 diffusion timestep on the model's device
        self._host_t = host_t               # the same as a float, when the caller had one
        self.note = ""
        self.bucket = None
        # Per-row step index of its stream (host), for step-pattern policies.
        self.steps = torch.cat([torch.full((stop - start,), s.steps) for s, start, stop in segments])
        self.range_plan = None              # (start, stop, lazy) for block-range policies
        self.gate_bucket = None             # learned gates: (1,) device index of the bucket, of the plan step
        self.gate_step = None
        self.step_mask = None               # a per-step policy's decision for this call's rows
        self.outside = False                # outside a StepRange policy's range: everything computes
        self._index = {}                    # (rows to compute, device) -> (index tensor, mask tensor)
        self._memo = {}                     # per-call results shared by modules with the same history
        self._ahead = {}                    # (block, module) -> the decision a norm proxy asked for (skips)
        state.policy.prepare(self)

    @property
    def timestep(self):
        """This call's timestep as a float. Reading it costs one host sync unless it came as a float."""
        if self._host_t is None:
            self._host_t = self.host(self.t)
        return self._host_t

    def host(self, tensor):
        """A device tensor's values as a list: the engine's one way to read the device (counted)."""
        self.state.syncs += 1
        return tensor.tolist()

    def block(self, index, forward, x, *args, **kwargs):
        """Output of block `index` = forward(x, ...), unless the policy caches a block range this step.

        Block-range caching (Δ-DiT): at a computing step the range's output-minus-input Δ is kept; at a
        lazy step the range's first block returns x + Δ and the others pass x through. Range decisions
        are per call (the policy is input-independent), and a call with a stream lacking Δ computes."""
        plan = self.range_plan
        if plan is None or not plan[0] <= index < plan[1]:
            return forward(x, *args, **kwargs)
        start, stop, lazy = plan
        if lazy:
            if index == start:
                self._count_range_lazy(start, stop)
                return x + self.slab.ranges[(start, stop)].to(device=x.device, dtype=x.dtype)
            return x
        if index == start:
            self._range_input = x
        out = forward(x, *args, **kwargs)
        if index == stop - 1:
            self.slab.ranges[(start, stop)] = (out - self._range_input).detach()
            self._range_input = None
        return out

    def _count_range_lazy(self, start, stop):
        for s, _, _ in self.segments:
            for block in range(start, stop):
                for module in range(len(MODULES)):
                    s.lazy[-1][(block, module)] = s.rows

    def run(self, block, module, fn, z):
        """Pre-gate output of `module` of `block` for every row: fn(z) where computed, the cache elsewhere.

        z: (rows, T, D) module input; fn(rows of z, their indices) runs the module on some rows. Returns
        (rows, T, D)."""
        policy = self.state.policy
        if not policy.lazy_possible:
            self.state.tokens = z.shape[1]                      # for the MACs estimate
            return fn(z)
        key = (block, module)
        slab = self.slab
        runs = slab.runs.get(key)
        compute = None                                          # None: every row computes
        if runs is not None:
            compute = self._ahead.pop(key) if key in self._ahead else self._decide(block, module, z, runs)
        if compute is None or any(compute):
            self.state.tokens = z.shape[1]                      # z is no one-token stand-in (skips)
        if compute is None:
            fresh = fn(z)                                       # (rows, T, D)
            self._keep_all(key, fresh)
            return fresh
        out = self._reuse(key, z)                               # (rows, T, D); may be the cache itself
        if any(compute):
            idx, _ = self._rows(compute, z.device)
            fresh = fn(z.index_select(0, idx), idx)             # (n, T, D)
            written = self._keep_rows(key, fresh, compute)
            if out is not written:
                out.index_copy_(0, idx, fresh)
        slab.runs[key] = [0 if c else r + 1 for c, r in zip(compute, runs)]
        self._count(key, compute)
        return out

    def skips(self, block, module, x):
        """Whether no row computes `module` of `block` this call, asked by the norm that feeds it (NormProxy)
        before the module's input is made: decided now, on a one-token view of x, and kept for run()."""
        policy = self.state.policy
        runs = self.slab.runs.get((block, module))
        if not policy.lazy_possible or policy.reads_input or runs is None:
            return False
        compute = self._ahead[(block, module)] = self._decide(block, module, x[:, :1], runs)
        return compute is not None and not any(compute)

    def _decide(self, block, module, z, runs):
        """Per row, whether it computes (the policy's wish, or its lazy run at the limit); None: all do."""
        wanted = self.state.policy.compute_mask(self, block, module, z)
        if wanted is None:
            return None
        if isinstance(wanted, torch.Tensor):
            wanted = self.host(wanted) if wanted.device.type != "cpu" else wanted.tolist()
        limit = self.state.limit
        compute = [bool(w) or r >= limit for w, r in zip(wanted, runs)]
        return None if all(compute) else compute

    def run_block(self, block, inputs, fn, module=None):
        """Block-level laziness: the outputs {name: tensor or None} of block `block` for every row.

        inputs: the block's stream inputs {name: (rows, ...)}; fn(idx) runs the block on the rows `idx`
        (None: all) and returns its outputs by name. A lazy row gets, for each output, its input plus the
        forecast of the block's residual (output - input), the residuals of all outputs kept as one cache
        entry. Computing rows get the block's own outputs, so with nothing lazy the result is bit-identical.
        A block whose outputs do not match its inputs in name and shape always computes. `module`: the
        block, whose linear layers are counted (hooks, first computed call only) for the MACs estimate."""
        policy = self.state.policy
        if not policy.lazy_possible:
            return fn(None)
        key = (block, ATTN)
        slab = self.slab
        form = slab.forms.get(block)
        runs = slab.runs.get(key)
        compute = None
        first = next(iter(inputs.values()))
        if runs is not None and form and all(k in inputs and tuple(inputs[k].shape[1:]) == s
                                             for k, s in form if s is not None):
            compute = self._decide(block, ATTN, first, runs)
        if compute is None:
            out = self._count_macs(block, module, inputs, fn) if block not in self.state.block_macs else fn(None)
            form = slab.forms[block] = residual_form(inputs, out, self.rows)
            if form:
                self._keep_all(key, pack(inputs, out, form))
            self._count_block(block, None)
            return out
        stand = self._reuse(key, first)                            # (rows, 1, N) forecast residuals
        fresh = None
        if any(compute):
            idx, _ = self._rows(compute, first.device)
            fresh = fn(idx)
            res = pack({k: v.index_select(0, idx) for k, v in inputs.items()}, fresh, form)
            written = self._keep_rows(key, res, compute)
            if stand is not written:
                stand.index_copy_(0, idx, res.to(stand.dtype))
        out = unpack(inputs, stand, form)
        if fresh is not None:
            for name, y in out.items():
                if y is not None:
                    y.index_copy_(0, idx.to(y.device), fresh[name])
        slab.runs[key] = [0 if c else r + 1 for c, r in zip(compute, runs)]
        self._count_block(block, compute)
        return out

    def _count_macs(self, block, module, inputs, fn):
        """fn(None), counting the multiply-accumulates per row of the block's linear layers on the way, plus
        its attention scores (2 T^2 D over the tokens of the streams it writes, joint attention)."""
        macs = [0]

        def hook(m, args, _):
            macs[0] += args[0].numel() // m.in_features * m.in_features * m.out_features
        handles = [m.register_forward_hook(hook) for m in (module.modules() if module is not None else ())
                   if isinstance(m, torch.nn.Linear)]
        try:
            out = fn(None)
        finally:
            for h in handles:
                h.remove()
        tokens = [inputs[k] for k, v in out.items() if v is not None and k in inputs and inputs[k].dim() == 3]
        scores = 2 * sum(x.shape[1] for x in tokens) ** 2 * tokens[0].shape[2] if tokens else 0
        self.state.block_macs[block] = macs[0] / self.rows + scores
        return out

    def _count_block(self, block, compute):
        for s, start, stop in self.segments:
            n = 0 if compute is None else compute[start:stop].count(False)
            s.lazy[-1][(block, ATTN)] = s.lazy[-1][(block, MLP)] = n

    def _rows(self, compute, device):
        """(indices, bool mask) of the computing rows on `device`: one small upload per pattern and call."""
        k = (tuple(compute), str(device))
        if k not in self._index:
            self._index[k] = (torch.tensor([i for i, c in enumerate(compute) if c], device=device),
                              torch.tensor(compute, dtype=torch.bool, device=device))
        return self._index[k]

    def _cache_form(self, fresh):
        opts = self.state.options
        fresh = fresh.detach()
        if opts.dtype is None and opts.device is None:
            return fresh
        return fresh.to(device=opts.device or fresh.device, dtype=opts.dtype or fresh.dtype)

    def _now(self, device):
        k = ("t", str(device))
        if k not in self._memo:
            self._memo[k] = self.t.to(device=device, dtype=torch.float32)
        return self._memo[k]

    def _keep_all(self, key, fresh):
        slab = self.slab
        c = self._cache_form(fresh)
        k = self.state.options.history
        if k > 1:
            last = slab.out.get(key)
            if last is not None:
                slab.past[key] = [last, *slab.past.get(key, ())][:k - 1]
            slab.times[key] = self._times_after(slab.times.get(key), None, c.device)
        slab.out[key] = c
        slab.runs[key] = [0] * slab.rows
        self._count(key, None)

    def _keep_rows(self, key, fresh, compute):
        """Writes computed rows into the cache in place; returns the tensor written (the cache's `out`)."""
        slab = self.slab
        c = self._cache_form(fresh)
        last = slab.out[key]
        idx, _ = self._rows(compute, last.device)
        k = self.state.options.history
        if k > 1:
            past = slab.past.setdefault(key, [])
            while len(past) < k - 1:                   # rows that never had that output: weight 0 (times NaN)
                past.append(last.clone())
            for j in range(len(past) - 1, 0, -1):      # the computing rows' outputs move one place older
                past[j].index_copy_(0, idx, past[j - 1].index_select(0, idx))
            past[0].index_copy_(0, idx, last.index_select(0, idx))
            slab.times[key] = self._times_after(slab.times.get(key), compute, last.device)
        last.index_copy_(0, idx, c)
        return last

    def _times_after(self, times, compute, device):
        """(rows, K) timesteps of the K last outputs after the rows in `compute` (None: all) computed now.
        Modules with the same history share one tensor, so each call computes it once."""
        k = ("times", id(times), None if compute is None else tuple(compute))
        hit = self._memo.get(k)
        if hit is None:
            now = self._now(device).expand(self.rows)[:, None]
            width = self.state.options.history
            if times is None:
                times = torch.full((self.rows, width), float("nan"), device=device)
            new = torch.cat([now, times[:, :width - 1]], 1)
            if compute is not None:
                new = torch.where(self._rows(compute, device)[1][:, None], new, times)
            hit = self._memo[k] = (times, new)          # keeps `times` alive so its id stays unique
        return hit[1]

    def _reuse(self, key, z):
        """The lazy stand-in for every row of `key`: the forecaster's weighted sum of its last outputs."""
        slab = self.slab
        last = slab.out[key]
        past = slab.past.get(key)
        opts = self.state.options
        if not past or opts.history == 1:
            out = last
        elif opts.reuse == "extrapolate" and opts.order == 1:
            out = torch.lerp(past[0], last, self._weight(slab.times[key], last.dtype))
        elif opts.reuse == "learned":
            out = forecast.combine(last, past, self._learned(key, slab))
        else:
            out = forecast.combine(last, past, self._weights(slab.times[key]))
        if out.dtype != z.dtype or out.device != z.device:
            out = out.to(device=z.device, dtype=z.dtype)
        return out

    def _weight(self, times, dtype):
        """lerp weight 1 + (t - t1) / (t1 - t2) per row, (rows, 1, 1); 1 (repeat) where t2 is unknown."""
        k = ("weight", id(times), dtype)
        hit = self._memo.get(k)
        if hit is None:
            t1, t2 = times.unbind(1)
            slope = ((self._now(times.device) - t1) / (t1 - t2)).nan_to_num(0.0, 0.0, 0.0)
            hit = self._memo[k] = (times, (1 + slope).to(dtype).view(-1, 1, 1))
        return hit[1]

    def _learned(self, key, slab):
        """(rows, 3) weights of the learned forecaster for `key`: each row's (a, b) at its position in its
        chain (its lazy steps so far + 1; past the fitted positions, the last one's)."""
        coef = self.state.options.coefficients
        block, module = key
        top = coef.shape[2] - 1
        pos = torch.tensor([min(r, top) for r in slab.runs[key]])
        times = slab.times[key]
        return forecast.learned(coef[block, module, pos].to(times.device), times, self._now(times.device))

    def _weights(self, times):
        """(rows, K) forecast weights for this call's timestep, shared by modules with the same history."""
        k = ("weights", id(times))
        hit = self._memo.get(k)
        if hit is None:
            opts = self.state.options
            hit = self._memo[k] = (times, forecast.weights(opts.reuse, opts.order, times, self._now(times.device)))
        return hit[1]

    def _count(self, key, compute):
        for s, start, stop in self.segments:
            s.lazy[-1][key] = 0 if compute is None else compute[start:stop].count(False)


def residual_form(inputs, out, rows):
    """[(name, shape per row or None)] of a block's outputs when every tensor output has an input of its name
    and shape with `rows` rows (its residual can be cached); None otherwise."""
    form = []
    for name, y in out.items():
        if y is None:
            form.append((name, None))
            continue
        x = inputs.get(name)
        if not isinstance(y, torch.Tensor) or x is None or x.shape != y.shape or y.shape[0] != rows:
            return None
        form.append((name, tuple(y.shape[1:])))
    return form if any(s is not None for _, s in form) else None


def pack(inputs, out, form):
    """(rows, 1, N): the residuals output - input of every output in `form`, flattened side by side."""
    parts = [(out[k] - inputs[k]).flatten(1) for k, s in form if s is not None]
    return torch.cat(parts, 1).unsqueeze(1) if len(parts) > 1 else parts[0].unsqueeze(1)


def unpack(inputs, stand, form):
    """A lazy block's outputs: each input of `form` plus its part of the residuals `stand` (rows, 1, N)."""
    out, at = {}, 0
    for name, shape in form:
        if shape is None:
            out[name] = None
            continue
        n = math.prod(shape)
        x = inputs[name]
        out[name] = x + stand[:, 0, at:at + n].view(x.shape).to(x.dtype)
        at += n
    return out


class RunState:
    """Everything one sampling run keeps: the policy, the streams' caches and the run's statistics."""

    def __init__(self, policy: Policy, options: CacheOptions = CacheOptions(), timesteps=None, sigmas=None):
        """timesteps: the run's schedule (diffusion timesteps in sampling order), if known in advance.
        sigmas: its sigmas (one more than the steps, the last 0), from a first-order sampler: with
        options.correct, the trajectory correction (correct.py) runs on them."""
        self.policy = policy
        if timesteps is not None:
            policy.plan(list(timesteps), options.max_lazy_steps)
        self.options = options
        self.correction = None
        if options.correct and policy.lazy_possible and not policy.ranges and timesteps is not None \
                and sigmas is not None:              # range caching (Δ-DiT) keeps no per-row runs to read
            self.correction = Correction(sigmas, timesteps)
        # Consecutive lazy steps allowed: the option, or less where the policy was made for less.
        self.limit = min(options.max_lazy_steps, policy.max_run or options.max_lazy_steps)
        self.streams = {}               # stream key -> StreamCache
        self.call = None                # the Call in progress, read by the proxies
        self.calls = 0
        self.syncs = 0                  # device-to-host reads the engine made (Call.host)
        self.blocks = []                # the model's original blocks, set by the Attachment
        self.tokens = 0                 # token count of the last module call, for the MACs estimate
        self.block_macs = {}            # block level: block -> MACs per row, counted at its first computation
        self._attachments = {}          # id(model) -> Attachment, built once per run
        self.started = time.perf_counter()
        self.seconds = 0.0

    def attach(self, model):
        """Swaps this run's proxies into the model's blocks (built on first use); returns the Attachment."""
        handle = self._attachments.get(id(model))
        if handle is None or handle.model is not model:
            handle = self._attachments[id(model)] = Attachment(model, self)
        return handle.attach()

    def begin_call(self, keys, labels, rows_per_key, latent, timestep):
        """Opens a call over the batch: key i owns rows [i*rows_per_key, (i+1)*rows_per_key). timestep: a
        float, or a tensor whose first element is this call's diffusion timestep (kept on its device)."""
        signature = (rows_per_key, tuple(latent.shape[1:]), latent.dtype, latent.device)
        segments, streams = [], []
        for i, (key, label) in enumerate(zip(keys, labels)):
            stream = self.streams.get(key)
            if stream is None or stream.signature != signature:
                stream = self.streams[key] = StreamCache(label, rows_per_key, signature)
            streams.append(stream)
            segments.append((stream, i * rows_per_key, (i + 1) * rows_per_key))
        slab = streams[0].slab
        # A stream that ran elsewhere since (a layout it left and rejoined) has newer rows in its own slab.
        if slab is None or slab.streams != tuple(streams) or any(s.slab is not slab for s in streams):
            slab = Slab.assemble(streams)
        if isinstance(timestep, torch.Tensor):
            t, host = timestep.detach().reshape(-1)[0].float(), None
        else:
            t, host = torch.tensor(float(timestep), device=latent.device), float(timestep)
        self.call = Call(self, segments, slab, t, host)
        for stream in streams:
            stream.timesteps.append(t)
            stream.lazy.append({})
        self.calls += 1
        return self.call

    def correct(self, d):
        """This call's Euler derivatives d = (x - denoised) / sigma (rows, ...), corrected after a chain of
        lazy steps; None where the run makes no correction or this call needs none."""
        if self.correction is None:
            return None
        call = self.call
        # A row computed every module this call where each of its lazy runs is back at 0.
        runs = list(call.slab.runs.values())
        full = [all(r[i] == 0 for r in runs) for i in range(call.rows)]
        return self.correction(call.segments, full, d)

    def end_call(self):
        for stream, _, _ in self.call.segments:
            stream.steps += 1
            stream.notes.append(self.call.note)
        self.call = None

    def finish(self):
        """Frees every cached tensor; statistics stay."""
        self.seconds = time.perf_counter() - self.started
        for stream in self.streams.values():
            stream.slab = None
        if self.correction is not None:
            self.correction.streams.clear()
        self._attachments.clear()

    def report(self):
        """The run's statistics, summarized (see report.summarize)."""
        if self.block_macs or self.options.level == "block":    # both modules count lazy together: half each
            macs = [(self.block_macs.get(b, 0.0) / 2,) * 2 for b in range(len(self.blocks))]
        else:
            macs = module_macs(self.blocks, self.tokens)
        return summarize(self.stats(), macs, self.seconds)

    def stats(self):
        """Per-stream statistics as plain data: see report.summarize."""
        out = []
        for key, s in self.streams.items():
            lazy = torch.zeros(len(s.lazy), len(self.blocks), len(MODULES), dtype=torch.long)   # (steps, depth, 2)
            for step, counts in enumerate(s.lazy):
                for (block, module), n in counts.items():
                    lazy[step, block, module] = n
            timesteps = torch.stack(s.timesteps).cpu().tolist() if s.timesteps else []
            out.append({"key": str(key), "label": s.label, "rows": s.rows, "timesteps": timesteps,
                        "notes": list(s.notes), "lazy": lazy})
        return out
