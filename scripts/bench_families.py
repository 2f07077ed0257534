"""Block-level laziness on ComfyUI's own Flux and Wan classes at a size a CPU can sample (not a test):
random weights, core KSampler euler on the simple schedule, side by side in one run: the exact run, FORA
N = 2, 3, 4 (the line), and a Sensitivity Schedule measured on the model (its time, and Apply Lazy Gates
with it at laziness 0.5 and 1). Wall time, speed-up, lazy share, the share of the blocks' MACs saved, and
PSNR of the final latent against the exact one (latent range).

    .venv/bin/python scripts/bench_families.py --steps 20
    .venv/bin/python scripts/bench_families.py --family flux --no-schedule
"""

import argparse
import math
import os
import sys
import time

import torch
from comfy_headless import ROOT, Comfy

sys.path.insert(0, os.path.join(ROOT, "tests"))

# Larger than the tests' tiny configurations: 12 blocks of width 384 over 256-320 image tokens.
SIZES = {
    "flux": ({"hidden_size": 384, "num_heads": 6, "axes_dim": [16, 24, 24], "depth": 4, "depth_single_blocks": 8},
             (1, 16, 32, 32)),
    "wan": ({"dim": 384, "ffn_dim": 1536, "num_heads": 6, "num_layers": 12, "freq_dim": 256}, (1, 16, 5, 16, 16)),
}


def psnr(a, b):
    mse = float((a.double() - b.double()).pow(2).mean())
    peak = float(b.max() - b.min())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def main(args):
    torch.set_num_threads(args.threads)
    Comfy(os.path.join(ROOT, "out", "bench_base"))
    import tiny_families
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.sibling_nodes import ForaNode
    from lazydit.nodes.train_node import SensitivitySchedule

    print("| family | method | lazy | MACs saved | wall s | speed | PSNR (latent) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.family:
        unet, latent = SIZES[name]
        patcher, pos, neg, lat = tiny_families.build(name, unet=unet, latent=latent)

        def run(model):
            t0 = time.perf_counter()
            out = tiny_families.sample(model, pos, neg, lat, steps=args.steps, cfg=args.cfg)
            return out, time.perf_counter() - t0
        run(patcher)                                       # warm-up
        exact, base = run(patcher)
        print(f"| {name} | exact, {args.steps} steps | 0% | 0% | {base:.1f} | 1.00x | inf |", flush=True)

        def row(label, model):
            out, seconds = run(model)
            r = session_of(model).report
            print(f"| {name} | {label} | {r['ratio']:.0%} | {r['macs_share']:.0%} | {seconds:.1f} | "
                  f"{base / seconds:.2f}x | {psnr(out, exact):.2f} |", flush=True)
        for n in (2, 3, 4):
            row(f"FORA N={n}, line", ForaNode.execute(patcher, n, "extrapolate").result[0])
        if not args.no_schedule:
            t0 = time.perf_counter()
            gates, text = SensitivitySchedule.execute(patcher, "all", args.images, max(args.cfg, 1.0), 0,
                                                      f"bench_{name}", pos, neg, lat).result
            print(f"| {name} | schedule measured: {args.images} images, {time.perf_counter() - t0:.0f} s | | | | | |",
                  flush=True)
            for lz in (0.5, 1.0):
                row(f"schedule @ {lz}", ApplyLazyGates.execute(patcher, gates, lz, 4, "auto", "auto").result[0])
            print(f"    {text}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--images", type=int, default=2, help="trajectories the schedule measures")
    p.add_argument("--no-schedule", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    main(p.parse_args())
