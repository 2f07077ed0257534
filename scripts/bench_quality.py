"""Quality benchmark on the embedded demo model (not a test; minutes on a CPU).

  --manifest  class accuracy and FID (Fashion-MNIST classifier features vs the test split) of the exact
              model at 50 and 20 DDIM steps for each guidance scale: the figures in weights/manifest.json.
  --compare   the paper's comparison at equal MACs, side by side in one run, for N = 50 and 20:
              LazyDiT N @ ~50 % vs DDIM N/2, LazyDiT N @ ~30 % vs DDIM 0.7 N, Δ-DiT sized to each
              LazyDiT row's measured lazy ratio, and FORA (interval 2);
              PSNR/SSIM against the exact N-step output, FID, accuracy, attention+MLP GMACs, wall time.

    .venv/bin/python scripts/bench_quality.py --compare
"""

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WEIGHTS = os.path.join(ROOT, "weights")


def threshold_for(gates, ratio):
    """The calibrated threshold whose measured lazy ratio is closest to `ratio`."""
    return min(gates.info.calibration, key=lambda row: abs(row[1] - ratio))[0]


def fmt(name, s, ref_seconds=None):
    speed = f"{ref_seconds / s['seconds']:5.2f}x" if ref_seconds else "     "
    p = f"{s['psnr']:6.2f}" if "psnr" in s and s["psnr"] != float("inf") else "   inf" if "psnr" in s else "     -"
    q = f"{s['ssim']:6.4f}" if "ssim" in s else "     -"
    return (f"{name:30s} {s['lazy_ratio']:6.1%} {s['gmacs']:8.3f} {s['seconds']:7.1f} {speed} {p} {q} "
            f"{s['fid']:7.3f} {s['accuracy']:6.1%}")


def main(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from lazydit.lazy_core.evaluate import Evaluator
    from lazydit.lazy_core.gates import GateBank
    from lazydit.lazy_core.policies import DeltaDiT, Fora, LearnedGates
    from lazydit.lazy_core.train_gates import load_model

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    classifier = os.path.join(WEIGHTS, "fashion_classifier.safetensors")
    if args.manifest:
        ev = Evaluator(model, classifier, per_class=args.per_class, seed=args.seed)
        results = {}
        for cfg in args.cfg:
            for steps in (50, 20):
                s = ev.scores(ev.sample(steps, cfg))
                results[f"cfg{cfg}_ddim{steps}"] = {k: round(v, 4) for k, v in s.items() if k != "lazy_ratio"}
                print(f"cfg {cfg} DDIM {steps}: accuracy {s['accuracy']:.1%}, FID {s['fid']:.3f}, "
                      f"{s['seconds']:.0f} s for {len(ev.labels)} samples", flush=True)
        print(json.dumps(results, indent=1))
        if args.write:
            path = os.path.join(WEIGHTS, "manifest.json")
            manifest = json.load(open(path)) if os.path.exists(path) else {}
            manifest.setdefault("dit_demo_fashion.safetensors", {})["quality"] = {
                "samples": len(ev.labels), "sampler": "DDIM (eta 0, DiT spacing)", **results}
            json.dump(manifest, open(path, "w"), indent=1)
    if args.compare:
        gates = GateBank.load(os.path.join(WEIGHTS, args.gates))
        ev = Evaluator(model, classifier, per_class=args.per_class, seed=args.seed)
        depth = model.config.depth
        print(f"demo model, {len(ev.labels)} samples (10 classes), cfg {args.cfg[0]}, DDIM; gates {args.gates}")
        print(f"{'method':30s} {'lazy':>6s} {'GMACs':>8s} {'wall s':>7s} {'speed':>6s} {'PSNR':>6s} "
              f"{'SSIM':>6s} {'FID':>7s} {'acc':>6s}")
        cfg = args.cfg[0]
        for n in (50, 20):
            exact = ev.sample(n, cfg)
            ref = ev.scores(exact, exact)
            print(fmt(f"DDIM {n} (exact)", ref, exact.seconds), flush=True)
            rows = []
            for target, fewer in ((0.5, n // 2), (0.3, round(0.7 * n))):
                thr = threshold_for(gates, target)
                lazy = ev.sample(n, cfg, LearnedGates(gates, thr))
                rows.append((f"LazyDiT {n} @ laziness {thr:.2f}", ev.scores(lazy, exact)))
                rows.append((f"DDIM {fewer}", ev.scores(ev.sample(fewer, cfg), exact)))
                # Δ-DiT at the same share of skipped module work: with N = 2 its range is reused on every
                # other step, so 2 * r * depth blocks match LazyDiT's measured lazy ratio r.
                blocks = max(1, min(depth, round(2 * lazy.lazy_ratio * depth)))
                delta = ev.sample(n, cfg, DeltaDiT(depth, blocks, 500, 2))
                rows.append((f"Δ-DiT {blocks}/{depth} blocks, N=2", ev.scores(delta, exact)))
            rows.append(("FORA interval 2", ev.scores(ev.sample(n, cfg, Fora(2)), exact)))
            for name, s in rows:
                print(fmt(name, s, exact.seconds), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="store_true")
    p.add_argument("--compare", action="store_true")
    p.add_argument("--write", action="store_true", help="with --manifest: store the figures in the manifest")
    p.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--gates", default="dit_demo_fashion_gates.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.manifest or args.compare):
        sys.exit("choose --manifest and/or --compare")
    main(args)
