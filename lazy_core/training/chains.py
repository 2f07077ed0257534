"""Chain costs on a host's own sampler, a whole block at a time, in memory bounded by a window of steps.

sensitivity.measure runs the pack's DDIM loop on a DiT or PixArt and keeps every step's module outputs. A
host (ComfyUI, for Flux, SD3, Wan, ...) hands in its own guided evaluation and sampler step instead, and
the blocks call run_block on the holder's current call, as they would on the engine's. A lazy block
returns its inputs plus the forecast of its residual (output - input) from earlier computed steps, as
CacheOptions(level="block") does.

The cost of a chain (steps i .. i + n - 1 lazy, every block) is its final image's squared error against
the exact run: the exact trajectory to i, the chain, the exact rest. Its forecast reads the computed steps
a plan of such chains leaves (the periodic history: i - 1, i - 1 - (n + 1), ...), so K kept outputs reach
back at most (K - 1)(chain + 1) + 1 steps. The chains from step i run right after the exact step i, and
residuals older than that window are dropped: memory is window x (one step's residuals of every block).
"""

import time

import torch

from ..engine import forecast
from ..engine.cache import pack, residual_form, unpack
from .sensitivity import CHAIN, EPS, ORDER, Costs, measure_calls


class Holder:
    """The run state the block patches and the host's call wrapper read while measuring: the current call,
    opened per model call by begin_call (the engine's RunState signature) on the evaluation's Calls."""

    def __init__(self):
        self.call = None
        self.blocks = ()
        self.evaluation = None          # the Calls of the guided evaluation in progress
        self.calls = 0                  # model calls made
        self.correction = None          # the measuring loop's steps are its own: no trajectory correction

    def begin_call(self, uuids, labels, per, x, timestep):
        self.calls += 1
        self.evaluation.open(list(uuids), per)
        self.call = self.evaluation

    def end_call(self):
        self.call = None


class Calls:
    """One guided evaluation's block answers, per model call: compute (recording each block's residual per
    cond uuid), or, when lazy, stand in for every block with the forecast from `history`."""

    def __init__(self, record=False, history=None, w=None, store=None):
        self.record = record
        self.store = store              # where recorded residuals are kept (None: where they were computed)
        self.history = history          # newest first: [{(uuid, block): (form, (per, 1, N))}, ...]
        self.w = w                      # (1, K) forecast weights of those steps
        self.outputs = {}
        self.rows = 0

    def open(self, uuids, per):
        self.uuids, self.per, self.rows = uuids, per, len(uuids) * per

    def run_block(self, block, inputs, fn, module=None):
        keys = [(u, block) for u in self.uuids]
        if self.history is not None and all(k in self.history[0] for k in keys):
            return self._forecast(keys, inputs)
        out = fn(None)
        if self.record:
            form = residual_form(inputs, out, self.rows)
            if form:
                res = pack(inputs, out, form)
                for j, k in enumerate(keys):
                    part = res[j * self.per:(j + 1) * self.per]
                    self.outputs[k] = (form, part if self.store is None else part.to(self.store))
        return out

    def _forecast(self, keys, inputs):
        form = self.history[0][keys[0]][0]
        parts = []
        for k in keys:
            outs = [h[k][1].to(inputs[form[0][0]].device) for h in self.history if k in h]
            parts.append(forecast.combine(outs[0], outs[1:], self.w[:, :len(outs)].expand(self.per, -1)))
        return unpack(inputs, torch.cat(parts) if len(parts) > 1 else parts[0], form)


def window(chain, kept):
    """Steps of residuals a chain's forecast can still read: (K - 1)(chain + 1) + 1."""
    return (kept - 1) * (chain + 1) + 1


@torch.no_grad()
def measure_blocks(holder, evaluate, step, timesteps, x, depth, chain=CHAIN, reuse="extrapolate", order=ORDER,
                   on_step=None, on_progress=None):
    """Costs of every chain of up to `chain` lazy steps (all blocks) along the exact trajectory from `x`.

    holder: the Holder the blocks read; evaluate(x, k) -> the guided prediction at step k (the host's
    model call(s), answered by holder.evaluation); step(x, k, pred) -> the latent at step k + 1;
    timesteps: the schedule (0..999, sampling order); depth: the model's blocks. on_step(k, nbytes) after
    each exact step, with the bytes of residuals kept then (a host checks them against its free memory),
    may return a device to keep them on from then on (the CPU's RAM, when the accelerator's is short);
    on_progress(done, total) before each evaluation (a host may raise there to stop). Guided evaluations:
    measure_calls(steps, 1, chain, modules=False, history="periodic")."""
    t0, calls0 = time.perf_counter(), holder.calls
    steps, images = len(timesteps), x.shape[0]
    kept = forecast.history(reuse, order)
    span = window(chain, kept)
    count = [0]
    total = measure_calls(steps, 1, chain, modules=False, history="periodic")

    def run(calls, xx, k):
        if on_progress is not None:
            on_progress(count[0], total)
        holder.evaluation = calls
        count[0] += 1
        try:
            return evaluate(xx, k)
        finally:
            holder.evaluation = None

    def norm2(v):
        return v.float().pow(2).flatten(1).sum(1).cpu()

    def lazy(outputs, i, k, n):
        back = [j for j in range(i - 1, -1, -(n + 1))][:kept]
        times = torch.tensor([[float(timesteps[j]) for j in back]])
        w = forecast.weights(reuse, order, times, torch.tensor(float(timesteps[k])))
        return Calls(history=[outputs[j] for j in back], w=w)

    outputs, finals = {}, {}
    gain = torch.zeros(steps, images)
    store = None
    for k in range(steps):
        rec = Calls(record=True, store=store)
        pred = run(rec, x, k)
        outputs[k] = rec.outputs
        for n in range(1, min(chain, steps - k) + 1) if k else ():       # step 0 always computes
            xx = x
            for j in range(k, k + n):
                p = run(lazy(outputs, k, j, n), xx, j)
                if j == k and n == 1:
                    gain[k] = norm2(p - pred)                # |Δpred|^2 for now; the gain below
                xx = step(xx, j, p)
            for j in range(k + n, steps):
                xx = step(xx, j, run(Calls(), xx, j))
            finals[k, n] = xx.float().cpu()
        for j in [j for j in outputs if j <= k - span]:
            del outputs[j]
        if on_step is not None:
            moved = on_step(k, sum(v.numel() * v.element_size() for o in outputs.values() for _, v in o.values()))
            if moved is not None:
                store = moved
                outputs = {j: {key: (f, v.to(store)) for key, (f, v) in o.items()} for j, o in outputs.items()}
        x = step(x, k, pred)
    final = x.float().cpu()
    costs = torch.full((steps, chain, images), float("inf"))
    for (i, n), f in finals.items():
        costs[i, n - 1] = norm2(f - final)
    gain[1:] = costs[1:, 0] / gain[1:].clamp_min(EPS)
    if on_progress is not None:
        on_progress(count[0], total)
    if count[0] != total:
        raise RuntimeError(f"made {count[0]} guided evaluations, expected {total}")
    return Costs(list(timesteps), None, torch.zeros(steps, depth, 2, images, 0), gain, costs[:, 0].clone(),
                 torch.ones(steps, images), time.perf_counter() - t0, reuse, order, costs, count[0], "periodic",
                 holder.calls - calls0, final)
