"""Quality benchmark on the embedded demo model (not a test; minutes on a CPU).

  --manifest  class accuracy and FID (Fashion-MNIST classifier features vs the test split) of the exact
              model at 50 and 20 DDIM steps for each guidance scale: the figures in weights/manifest.json.
  --compare   every policy at the same lazy ratio, side by side in one run, for each N in --steps, at about
              30 % and 45 % lazy: the shipped learned gates, the training-free sensitivity schedule, the
              paper's local recipe, a static mask of the learned gates' own majority decisions, random
              decisions, and DDIM with fewer steps at equal attention/MLP MACs; FORA-2 at 50 %.
              PSNR/SSIM against the exact N-step output (mean over images, and its spread over the noise
              seeds), FID and accuracy over all images, GMACs, wall time, and the learned gates' input
              dependence (share of decisions that differ from the majority decision across images).
  --dydit     with --compare: also the DyDiT demo model (fine-tuned at lambda = 0.5) sampled dynamically and
              as its complete (dense) model, DDIM with fewer steps at DyDiT's measured MACs, and Δ-DiT;
              with --manifest: the DyDiT model's figures (dynamic, 1000 samples) instead of the DiT's.

    .venv/bin/python scripts/bench_quality.py --compare --per-class 10 --seeds 0 1 2
    .venv/bin/python scripts/bench_quality.py --compare --dydit --short --steps 20 --targets 0.45
"""

import argparse
import json
import os
import sys

import checkout  # noqa: F401  (binds `lazydit` to this checkout)
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WEIGHTS = os.path.join(ROOT, "weights")
DYDIT = "dydit_demo_fashion.safetensors"


def fmt(name, s, ref_seconds=None):
    speed = f"{ref_seconds / s['seconds']:5.2f}x" if ref_seconds else "     "
    if "psnr" not in s:
        p = "     -      "
    elif s["psnr"] == float("inf"):
        p = "   inf      "
    else:
        p = f"{s['psnr']:6.2f}" + (f" ±{s['psnr_sd']:4.2f}" if "psnr_sd" in s else "      ")
    q = f"{s['ssim']:6.4f}" if "ssim" in s else "     -"
    return (f"{name:36s} {s['lazy_ratio']:6.1%} {s['gmacs']:7.2f} {s['seconds']:7.1f} {speed} {p} {q} "
            f"{s['fid']:7.2f} {s['accuracy']:6.1%}")


def laziness_for(gates, ratio):
    """The slider value whose calibrated lazy ratio is `ratio`."""
    top = max(r for _, r in gates.info.calibration)
    return min(1.0, ratio / top)


def majority(sampled):
    """The static mask of the same size as a run's decisions: the (step, block, module) cells lazy for the
    most images, as many as the run was lazy on average."""
    share = sampled.lazy_map.flatten()
    count = round(float(share.sum()))
    mask = torch.zeros_like(share, dtype=torch.bool)
    mask[share.argsort(descending=True)[:count]] = True
    return mask.view(sampled.lazy_map.shape)


def input_dependence(lazy_map):
    """Share of (step, block, module) decisions in which an image differs from the majority of images."""
    return float(torch.minimum(lazy_map, 1 - lazy_map).mean())


def main(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from lazydit.lazy_core.demo.evaluate import Evaluator
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.engine.policies import DeltaDiT, Fora, LearnedGates, RandomLazy, StaticMask
    from lazydit.lazy_core.models.checkpoint import load_model

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    dydit = load_model(os.path.join(WEIGHTS, DYDIT)).eval() if args.dydit else None
    classifier = os.path.join(WEIGHTS, "fashion_classifier.safetensors")
    if args.manifest:
        ev = Evaluator(model, classifier, per_class=args.per_class, seed=args.seed)
        name = DYDIT if args.dydit else "dit_demo_fashion.safetensors"
        results = {}
        for cfg in args.cfg:
            for steps in (50, 20):
                sampled = ev.sample(steps, cfg, dydit={"model": dydit} if args.dydit else None)
                s = ev.scores(sampled)
                if args.dydit:
                    s["macs_share"] = sampled.macs / ev.full_macs(steps, cfg)
                results[f"cfg{cfg}_ddim{steps}"] = {k: round(v, 4) for k, v in s.items() if k != "lazy_ratio"}
                print(f"{name} cfg {cfg} DDIM {steps}: accuracy {s['accuracy']:.1%}, FID {s['fid']:.3f}, "
                      f"{s['seconds']:.0f} s for {len(ev.labels)} samples", flush=True)
        print(json.dumps(results, indent=1))
        if args.write:
            path = os.path.join(WEIGHTS, "manifest.json")
            manifest = json.load(open(path)) if os.path.exists(path) else {}
            sampler = "DDIM (eta 0, DiT spacing)" + (", dynamic (sliced widths, token skipping)" if args.dydit else "")
            manifest.setdefault(name, {})["quality"] = {"samples": len(ev.labels), "sampler": sampler, **results}
            json.dump(manifest, open(path, "w"), indent=1)
    if args.compare:
        learned = GateBank.load(os.path.join(WEIGHTS, args.gates))
        schedule = GateBank.load(os.path.join(WEIGHTS, args.schedule))
        local = GateBank.load(os.path.join(WEIGHTS, args.local)) if args.local else None
        ev = Evaluator(model, classifier, per_class=args.per_class, seeds=args.seeds)
        cfg = args.cfg[0]
        # Every decision policy runs on the same extrapolating cache, so rows compare decisions; FORA runs
        # both as published (repeat) and on that cache.
        reuse = CacheOptions(reuse=args.reuse)
        print(f"demo model, {len(ev.labels)} samples (10 classes x {args.per_class} x seeds {args.seeds}), cfg {cfg}, "
              f"DDIM; learned {args.gates}, schedule {args.schedule}, local {args.local}")
        print(f"{'method':36s} {'lazy':>6s} {'GMACs':>7s} {'wall s':>7s} {'speed':>6s} {'PSNR ± seeds':>12s} "
              f"{'SSIM':>6s} {'FID':>7s} {'acc':>6s}")
        for n in args.steps:
            exact = ev.sample(n, cfg)
            print(fmt(f"DDIM {n} (exact)", ev.scores(exact, exact), exact.seconds), flush=True)

            def row(name, sampled):
                print(fmt(name, ev.scores(sampled, exact), exact.seconds), flush=True)
                return sampled
            for target in args.targets:
                lz = laziness_for(learned, target)
                gated = row(f"learned gates {n} @ {lz:.2f}", ev.sample(n, cfg, LearnedGates(
                    learned, learned.threshold_for(lz)), reuse))
                print(f"    input dependence of the learned gates: {input_dependence(gated.lazy_map):.1%} of "
                      f"decisions differ from the majority", flush=True)
                ls = laziness_for(schedule, target)
                sched = row(f"sensitivity schedule {n} @ {ls:.2f}", ev.sample(n, cfg, LearnedGates(
                    schedule, schedule.threshold_for(ls)), reuse))
                if local is not None and not args.short:
                    ll = laziness_for(local, target)
                    row(f"paper recipe gates {n} @ {ll:.2f}", ev.sample(n, cfg, LearnedGates(
                        local, local.threshold_for(ll)), reuse))
                if not args.short:
                    row(f"static mask of learned {n}", ev.sample(n, cfg, StaticMask(majority(gated)), reuse))
                # Random decisions at the measured ratio; the first step always computes, so aim a bit higher.
                r = max(gated.lazy_ratio, sched.lazy_ratio)
                row(f"random {n}", ev.sample(n, cfg, RandomLazy(min(0.49, r * n / (n - 1)), seed=n), reuse))
                fewer = round(n * (1 - sched.lazy_ratio))
                row(f"DDIM {fewer}", ev.sample(fewer, cfg))
            row("FORA interval 2", ev.sample(n, cfg, Fora(2)))
            row("FORA interval 2, extrapolated", ev.sample(n, cfg, Fora(2), reuse))
            if dydit is not None:
                depth = model.config.depth
                row(f"Δ-DiT {depth // 2}/{depth} blocks, N=2", ev.sample(n, cfg, DeltaDiT(depth, depth // 2, 500, 2)))
                dense = row(f"DyDiT {n}, complete (dense)", ev.sample(n, cfg, dydit={"model": dydit, "route": "dense"}))
                dynamic = row(f"DyDiT {n}, dynamic (lambda 0.5)", ev.sample(n, cfg, dydit={"model": dydit}))
                print(f"    DyDiT dynamic against its own complete model: PSNR "
                      f"{ev.scores(dynamic, dense)['psnr']:.2f} dB", flush=True)
                fewer = round(n * dynamic.macs / exact.macs)
                row(f"DDIM {fewer} (DyDiT's MACs)", ev.sample(fewer, cfg))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="store_true")
    p.add_argument("--compare", action="store_true")
    p.add_argument("--dydit", action="store_true", help="add the DyDiT demo model (see above)")
    p.add_argument("--write", action="store_true", help="with --manifest: store the figures in the manifest")
    p.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    p.add_argument("--per-class", type=int, default=10, help="images per class and seed")
    p.add_argument("--gates", default="dit_demo_fashion_gates.safetensors", help="learned gates")
    p.add_argument("--schedule", default="dit_demo_fashion_schedule.safetensors", help="sensitivity schedule")
    p.add_argument("--local", default="dit_demo_fashion_gates_local.safetensors",
                   help="gates of the paper's local recipe ('' to leave out)")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.45], help="lazy ratios compared")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds (--compare)")
    p.add_argument("--short", action="store_true", help="leave out the paper-recipe and static-mask rows")
    p.add_argument("--reuse", default="extrapolate", choices=("extrapolate", "repeat"),
                   help="how the decision policies' lazy modules reuse outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.manifest or args.compare):
        sys.exit("choose --manifest and/or --compare")
    main(args)
