"""Comparison inside ComfyUI (not a test): every method runs through the real KSampler on the built-in demo
model with the same labels, seeds and sampler, side by side in one run: exact; at FORA's lazy shares near
each --targets (50 %, 67 %, 75 % for intervals 2, 3, 4) the learned gates, the sensitivity schedule, random
decisions in chains, fewer sampler steps at equal attention/MLP MACs and at the gates' and schedule's wall time,
FORA (repeat and extrapolated) and TaylorSeer (orders 1 and 2); Δ-DiT, and ComfyUI's own EasyCache and
LazyCache. Quality against the exact output (PSNR/SSIM) and against Fashion-MNIST (FID in the classifier's
feature space, class accuracy); wall-clock speed-up; the attention + MLP MACs each method computed, as a
share of the exact run's. With --dydit also the DyDiT demo model (fine-tuned from the same DiT at lambda =
0.5) sampled dynamically and as its complete model, and the step count with DyDiT's measured MACs.

    .venv/bin/python scripts/bench_comfy.py --steps 20 --per-class 30
    .venv/bin/python scripts/bench_comfy.py --steps 20 --per-class 30 --dydit --targets 0.5 --easycache
"""

import argparse
import dataclasses
import math
import os
import time

import torch
from comfy_headless import ROOT, Comfy

WEIGHTS = os.path.join(ROOT, "weights")


def main(args):
    torch.set_num_threads(args.threads)
    Comfy(os.path.join(ROOT, "out", "bench_base"))            # starts ComfyUI in-process, registers every node
    import comfy_extras.nodes_easycache as easycache
    import nodes as comfy_nodes
    from lazydit.lazy_core.demo.classifier import FashionClassifier, evaluate
    from lazydit.lazy_core.demo.evaluate import latents_to_grey
    from lazydit.lazy_core.demo.fashion import load, to_grey32
    from lazydit.lazy_core.demo.metrics import frechet_distance, gaussian_stats, psnr, ssim
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.policies import RandomLazy
    from lazydit.lazy_core.models.dydit import summarize
    from lazydit.nodes.dit_model import dy_session_of
    from lazydit.nodes.dydit_nodes import DyDiTWidth
    from lazydit.nodes.labels import conditioning
    from lazydit.nodes.lazy_hook import LazySession, install, session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates, LoadLazyGates
    from lazydit.nodes.loaders import DEMO, DYDIT_DEMO, LoadDiT
    from lazydit.nodes.sibling_nodes import DeltaDiTNode, ForaNode, TaylorSeerNode

    model = LoadDiT.execute(DEMO, "auto").args[0]
    dydit = LoadDiT.execute(DYDIT_DEMO, "auto").args[0] if args.dydit else None
    gates = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args[0]
    schedule = LoadLazyGates.execute("dit_demo_fashion_schedule.safetensors (built in)").args[0]
    classifier = FashionClassifier.load(os.path.join(WEIGHTS, "fashion_classifier.safetensors"))
    images, labels = load("test")
    _, test_feats = evaluate(classifier, torch.from_numpy(to_grey32(images)), torch.from_numpy(labels))
    test_stats = gaussian_stats(test_feats)
    y = torch.arange(10).repeat_interleave(args.per_class)

    def ec(cls, threshold):
        def make(m):
            return cls.execute(m, threshold, 0.15, 0.95, False).args[0]
        return make

    def apply(g, ratio):
        bank = g.model
        top = bank.expected_ratio(bank.threshold_for(1.0, args.steps), args.steps)
        lz = round(min(1.0, ratio / top), 2)
        return lz, lambda m: ApplyLazyGates.execute(m, g, lz, 4, "auto", "auto").args[0]

    def random(ratio, longest):
        p = min(0.999 * longest / (longest + 1), ratio * args.steps / (args.steps - 1))   # step 0 computes
        options = CacheOptions(reuse="extrapolate", max_lazy_steps=longest)
        return lambda m: install(m, LazySession(lambda: RandomLazy(p, seed=1, longest=longest), options, "random"))

    def corrected(make):
        def made(m):
            patched = make(m)
            session = session_of(patched)
            session.options = dataclasses.replace(session.options, correct=True)
            return patched
        return made

    methods = {"exact": (lambda m: m, args.steps)}
    for target in args.targets:
        interval = max(2, round(1 / (1 - target)))
        share = 1 - math.ceil(args.steps / interval) / args.steps          # FORA's share at this interval
        lz, make = apply(gates, share)
        methods[f"learned gates @ {lz}"] = (make, args.steps)
        lz, make = apply(schedule, share)
        methods[f"sensitivity schedule @ {lz}"] = (make, args.steps)
        methods[f"random {share:.0%}"] = (random(share, gates.model.longest_chain), args.steps)
        fewer = round(args.steps * (1 - share))
        methods[f"{fewer} steps"] = (lambda m: m, fewer)
        methods[f"FORA interval {interval}"] = (lambda m, n=interval: ForaNode.execute(m, n).args[0], args.steps)
        methods[f"FORA interval {interval}, extrapolated"] = (
            lambda m, n=interval: ForaNode.execute(m, n, "extrapolate").args[0], args.steps)
        for order in (1, 2):
            methods[f"TaylorSeer N={interval} O={order}"] = (
                lambda m, n=interval, o=order: TaylorSeerNode.execute(m, n, o).args[0], args.steps)
        # The same baselines with the trajectory correction Apply Lazy Gates runs with, to show what it adds.
        methods[f"FORA interval {interval}, extrapolated + correction"] = (
            corrected(lambda m, n=interval: ForaNode.execute(m, n, "extrapolate").args[0]), args.steps)
        methods[f"TaylorSeer N={interval} O=2 + correction"] = (
            corrected(lambda m, n=interval: TaylorSeerNode.execute(m, n, 2).args[0]), args.steps)
    methods["Δ-DiT 3/6 blocks, N=2"] = (lambda m: DeltaDiTNode.execute(m, 0.5, 0.5, 2).args[0], args.steps)
    # Several reuse thresholds, so a row near LazyDiT's measured speed-up can be read off.
    for threshold in args.easycache:
        methods[f"EasyCache {threshold}"] = (ec(easycache.EasyCacheNode, threshold), args.steps)
        methods[f"LazyCache {threshold}"] = (ec(easycache.LazyCacheNode, threshold), args.steps)
    if dydit is not None:
        def dy(mode):
            return lambda m: DyDiTWidth.execute(dydit, mode, True, 0.5).args[0]
        methods["DyDiT complete (dense)"] = (dy("dense"), args.steps)
        methods["DyDiT dynamic (lambda 0.5)"] = (dy("dynamic"), args.steps)
    results, ref = {}, None
    pending = list(methods.items())
    while pending:
        name, (make, steps) = pending.pop(0)
        patched = make(model)
        outs, seconds, ratios, macs = [], 0.0, [], []
        for i in range(0, len(y), args.batch):
            rows = y[i:i + args.batch]
            latent = {"samples": torch.zeros(len(rows), 4, 16, 16)}
            t = time.perf_counter()
            (out,) = comfy_nodes.common_ksampler(patched, args.seed + i, steps, args.cfg, args.sampler,
                                                 args.scheduler, conditioning(rows.tolist()), conditioning([10]),
                                                 latent)
            seconds += time.perf_counter() - t
            outs.append(latents_to_grey(out["samples"]))
            session = session_of(patched)
            if session is not None and session.report is not None:
                ratios.append(session.report["ratio"])
                macs.append(1 - session.report["macs_share"])
            dy_session = dy_session_of(patched)
            if dy_session is not None and dy_session.report:
                report = summarize(dydit.model.diffusion_model.config, dy_session.report)
                macs.append(report["ratio"] if dy_session.route != "dense" else 1.0)
        imgs = torch.cat(outs)
        acc, feats = evaluate(classifier, imgs, y)
        row = {"seconds": seconds, "fid": frechet_distance(gaussian_stats(feats), test_stats), "acc": acc,
               "lazy": sum(ratios) / len(ratios) if ratios else None,
               "macs": steps / args.steps * (sum(macs) / len(macs) if macs else 1.0)}
        if name.startswith(("EasyCache", "LazyCache")):
            row["macs"] = None                          # they skip whole steps; not counted here
        if name.startswith(("learned gates", "sensitivity schedule")):      # fewer steps at their wall time
            same_time = max(1, round(args.steps * seconds / results["exact"]["seconds"]))
            timed = f"{same_time} steps ({name.split(' @')[0]}'s wall time)"
            pending.insert(0, (timed, (lambda m: m, same_time)))
        if name == "DyDiT dynamic (lambda 0.5)":
            fewer = round(args.steps * row["macs"])
            pending.append((f"{fewer} steps (DyDiT's MACs)", (lambda m: m, fewer)))
        if ref is None:
            ref = (imgs, seconds)
        else:
            row["psnr"], row["ssim"] = psnr(imgs, ref[0]), ssim(imgs, ref[0])
        row["speed"] = ref[1] / seconds
        results[name] = row
        lazy = f"{row['lazy']:6.1%}" if row["lazy"] is not None else "     -"
        work = f"{row['macs']:6.1%}" if row["macs"] is not None else "     -"
        print(f"{name:30s} lazy {lazy}  MACs {work}  {seconds:6.1f} s  {row['speed']:5.2f}x  "
              f"PSNR {row.get('psnr', float('inf')):6.2f}  SSIM {row.get('ssim', 1.0):.4f}  "
              f"FID {row['fid']:7.3f}  acc {acc:.1%}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="normal")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.67, 0.75],
                   help="lazy shares compared (each at FORA's share of the nearest interval)")
    p.add_argument("--easycache", type=float, nargs="*", default=[0.2],
                   help="EasyCache/LazyCache reuse thresholds (their default is 0.2)")
    p.add_argument("--dydit", action="store_true", help="add the DyDiT demo model's rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    main(p.parse_args())
