"""Run statistics as data and text: lazy ratio per stream, block, module and step; modules and MACs saved."""

import torch

from .gates import MODULES


def summarize(streams, macs, seconds):
    """streams: RunState.stats(); macs: [(attn, mlp)] per block and row. Returns a dict with "text".

    Lazy ratio = lazy module evaluations / all gated module evaluations, over rows, blocks, modules and
    steps (the paper's Γ, §3.3). MACs saved counts only the skipped attention and MLP work."""
    per_module = torch.tensor(macs, dtype=torch.float64)                # (depth, 2)
    lines, out = [], {"streams": [], "seconds": seconds}
    total_lazy = total_evals = saved = total_macs = 0.0
    for s in streams:
        lazy = s["lazy"].double()                                       # (steps, depth, 2) lazy rows
        steps = lazy.shape[0]
        evals = steps * per_module.numel() * s["rows"]
        ratio = float(lazy.sum() / evals) if evals else 0.0
        stream_saved = float((lazy * per_module).sum())
        stream_macs = float(per_module.sum() * steps * s["rows"])
        ratio_map = (lazy / max(s["rows"], 1)).permute(1, 2, 0)          # (depth, 2, steps)
        notes = sorted({n for n in s["notes"] if n})
        out["streams"].append({**s, "ratio": ratio, "ratio_map": ratio_map, "macs_saved": stream_saved,
                               "notes": notes})
        per_mod = [float(lazy[:, :, m].sum() / (evals / 2)) if evals else 0.0 for m in range(len(MODULES))]
        lines.append(f"{s['label']} ({s['rows']} row{'s' * (s['rows'] != 1)}, {steps} steps): lazy "
                     f"{ratio:.1%} (attn {per_mod[0]:.1%}, mlp {per_mod[1]:.1%}), "
                     f"{int(lazy.sum())} of {int(evals)} module evaluations skipped")
        lines.extend(f"  note: {n}" for n in notes)
        total_lazy += float(lazy.sum())
        total_evals += evals
        saved += stream_saved
        total_macs += stream_macs
    out["ratio"] = total_lazy / total_evals if total_evals else 0.0
    out["macs_saved"] = saved
    out["macs_share"] = saved / total_macs if total_macs else 0.0
    head = (f"LazyDiT run: lazy {out['ratio']:.1%} of module evaluations, {saved / 1e9:.2f} GMACs of attention/MLP "
            f"saved ({out['macs_share']:.1%}), {seconds:.2f} s")
    out["text"] = "\n".join([head, *lines])
    return out
