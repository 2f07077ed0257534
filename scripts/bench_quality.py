"""Quality benchmark on the embedded demo model (not a test; minutes on a CPU).

  --manifest  class accuracy and FID (Fashion-MNIST classifier features vs the test split) of the exact
              model at 50 and 20 DDIM steps for each guidance scale: the figures in weights/manifest.json.
  --compare   every policy at the same lazy share, side by side in one run, for each N in --steps, at FORA's
              shares near --targets (50 %, 67 %, 75 %: intervals 2, 3, 4): the shipped learned gates and the
              training-free sensitivity schedule (both planning chains of lazy steps), the paper's local
              recipe (at 50 % and below), a static mask of the learned gates' own majority decisions, random
              decisions in chains, FORA (repeat and extrapolated), TaylorSeer of each --taylor-orders, and
              DDIM with fewer steps at equal attention/MLP MACs and at the learned gates' and the schedule's wall time.
              PSNR/SSIM against the exact N-step output (mean over images, and its spread over the noise
              seeds), FID and accuracy over all images, GMACs, wall time, and the learned gates' input
              dependence (share of decisions that differ from the majority decision across images).
  --dydit     with --compare: also the DyDiT demo model (fine-tuned at lambda = 0.5) sampled dynamically and
              as its complete (dense) model, DDIM with fewer steps at DyDiT's measured MACs, and Δ-DiT;
              with --manifest: the DyDiT model's figures (dynamic, 1000 samples) instead of the DiT's.
  --dydit-schedule  with --compare: a sensitivity schedule measured on the DyDiT demo model (as the Sensitivity
              Schedule node measures: DDIM 20, chains of 4, 16 images), the DyDiT sampled dynamically with it
              at --targets' first share, side by side at equal attention/MLP MACs with the dense DiT and its
              shipped schedule, DyDiT alone (its 20 steps, and fewer steps at equal MACs) and the dense DiT
              with fewer steps. PSNR against the exact DiT run and against DyDiT's complete model.
  --levels    with --compare: the sensitivity schedule at module level (attention and MLP outputs cached, the
              norms and adds recomputed) against block level (each block's residual cached: the path of
              Flux, SD3, Wan, ...), with the shipped schedule and with one measured at block level as the
              Sensitivity Schedule node measures a block family (chains of 4, 16 images, seed 1000), at
              --targets, with fewer steps at equal MACs.

    .venv/bin/python scripts/bench_quality.py --compare --per-class 10 --seeds 0 1 2
    .venv/bin/python scripts/bench_quality.py --compare --levels --steps 20 --targets 0.3 0.5 0.67
    .venv/bin/python scripts/bench_quality.py --compare --dydit --short --steps 20 --targets 0.5
    .venv/bin/python scripts/bench_quality.py --compare --dydit-schedule --per-class 10 --seeds 0 --threads 1
"""

import argparse
import dataclasses
import json
import math
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


def laziness_for(gates, ratio, steps=None):
    """The slider value whose calibrated lazy ratio is `ratio` (at `steps`, where the file calibrated it)."""
    top = gates.expected_ratio(gates.threshold_for(1.0, steps), steps)
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
    from lazydit.lazy_core.models.checkpoint import load_model

    model = load_model(os.path.join(WEIGHTS, "dit_demo_fashion.safetensors"))
    dydit = load_model(os.path.join(WEIGHTS, DYDIT)).eval() if args.dydit or args.dydit_schedule else None
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
    if args.compare and args.levels:
        compare_levels(args, model, classifier)
    elif args.compare and args.dydit_schedule:
        compare_dydit_schedule(args, model, dydit, classifier)
    elif args.compare:
        compare(args, model, dydit, classifier)


def share_steps(n, share):
    """(lazy steps, FORA interval) for about `share` of an n-step run lazy: the share of FORA's interval
    N = 1 / (1 - share), which computes ceil(n / N) steps, so every method is compared at FORA's MACs."""
    interval = max(2, round(1 / (1 - share)))
    return n - math.ceil(n / interval), interval


def compare(args, model, dydit, classifier):
    from lazydit.lazy_core.demo.evaluate import Evaluator
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.engine.policies import DeltaDiT, Fora, LearnedGates, RandomLazy, StaticMask, TaylorSeer

    learned = GateBank.load(os.path.join(WEIGHTS, args.gates))
    schedule = GateBank.load(os.path.join(WEIGHTS, args.schedule))
    local = GateBank.load(os.path.join(WEIGHTS, args.local)) if args.local else None
    ev = Evaluator(model, classifier, per_class=args.per_class, seeds=args.seeds)
    cfg = args.cfg[0]
    recipe = schedule.info.recipe
    longest = max(learned.longest_chain, schedule.longest_chain)
    # The decision policies run on the forecast their costs were measured with, chains as long as measured.
    # ... and, as Apply Lazy Gates runs them, with the trajectory correction (correct.py); the baselines run as
    # published, and again with the correction to show what it adds to each.
    reuse = CacheOptions(reuse=recipe.get("reuse", args.reuse), order=recipe.get("order", 1), max_lazy_steps=longest,
                         correct=True)
    print(f"demo model, {len(ev.labels)} samples (10 classes x {args.per_class} x seeds {args.seeds}), cfg {cfg}, "
          f"DDIM; learned {args.gates}, schedule {args.schedule}, local {args.local}; decisions on "
          f"{reuse.reuse} order {reuse.order}, chains up to {longest}")
    print(f"{'method':36s} {'lazy':>6s} {'GMACs':>7s} {'wall s':>7s} {'speed':>6s} {'PSNR ± seeds':>12s} "
          f"{'SSIM':>6s} {'FID':>7s} {'acc':>6s}")
    for n in args.steps:
        exact = ev.sample(n, cfg)
        print(fmt(f"DDIM {n} (exact)", ev.scores(exact, exact), exact.seconds), flush=True)

        def row(name, sampled):
            scores = ev.scores(sampled, exact)
            print(fmt(name, scores, exact.seconds), flush=True)
            return sampled, scores
        for target in args.targets:
            k, interval = share_steps(n, target)
            share = k / n
            print(f"-- {k}/{n} steps lazy ({share:.0%})", flush=True)
            results = {}
            lz = laziness_for(learned, share, n)
            gated = ev.sample(n, cfg, LearnedGates(learned, learned.threshold_for(lz, n), lz), reuse)
            if gated.lazy_ratio < share - 0.01 and lz < 1:
                # The per-image gates land below their calibrated share; one rescaled run meets FORA's MACs.
                print(f"learned gates {n} @ {lz:.2f}: {gated.lazy_ratio:.1%} lazy, below {share:.0%}; rescaled")
                lz = min(1.0, lz * share / gated.lazy_ratio)
                gated = ev.sample(n, cfg, LearnedGates(learned, learned.threshold_for(lz, n), lz), reuse)
            _, results["learned gates"] = row(f"learned gates {n} @ {lz:.2f}", gated)
            print(f"    input dependence of the learned gates: {input_dependence(gated.lazy_map):.1%} of "
                  f"decisions differ from the majority", flush=True)
            ls = laziness_for(schedule, share, n)
            _, results["schedule"] = row(f"sensitivity schedule {n} @ {ls:.2f}", ev.sample(n, cfg, LearnedGates(
                schedule, schedule.threshold_for(ls, n), ls), reuse))
            if local is not None and not args.short and share <= 0.5:
                ll = laziness_for(local, share, n)
                row(f"paper recipe gates {n} @ {ll:.2f}", ev.sample(n, cfg, LearnedGates(
                    local, local.threshold_for(ll, n), ll), reuse))
            if not args.short:
                row(f"static mask of learned {n}", ev.sample(n, cfg, StaticMask(majority(gated)), reuse))
            # Random decisions at the learned gates' measured share (the first step always computes).
            r = min(gated.lazy_ratio * n / (n - 1), 0.999 * longest / (longest + 1))
            row(f"random {n}", ev.sample(n, cfg, RandomLazy(r, seed=n, longest=longest), reuse))
            baselines = [(f"FORA N={interval}", Fora(interval), CacheOptions(max_lazy_steps=interval - 1)),
                         (f"FORA N={interval}, extrapolated", Fora(interval), CacheOptions(
                             reuse="extrapolate", max_lazy_steps=interval - 1))]
            baselines += [(f"TaylorSeer N={interval} O={order}", TaylorSeer(interval), CacheOptions(
                reuse="taylor", order=order, max_lazy_steps=interval - 1)) for order in args.taylor_orders]
            for name, policy, opts in baselines:
                _, results[name] = row(name, ev.sample(n, cfg, policy, opts))
            for name, policy, opts in baselines[1:]:
                row(f"{name} + correction", ev.sample(n, cfg, policy, dataclasses.replace(opts, correct=True)))
            fewer = n - k
            _, results["fewer"] = row(f"DDIM {fewer} (equal MACs)", ev.sample(fewer, cfg))
            # Equal wall time: the step count whose exact run takes as long as each shipped policy's.
            timed = {fewer: results["fewer"]}
            for who, whose in (("learned gates", "the learned gates'"), ("schedule", "the schedule's")):
                steps_eq = max(1, round(n * results[who]["seconds"] / exact.seconds))
                if steps_eq not in timed:
                    _, timed[steps_eq] = row(f"DDIM {steps_eq} ({whose} wall time)", ev.sample(steps_eq, cfg))
                results[f"fewer_time {who}"] = timed[steps_eq]
            best = max((v["psnr"], name) for name, v in results.items() if name.startswith(("FORA", "Taylor")))
            ours = max(results["learned gates"]["psnr"], results["schedule"]["psnr"])
            print(f"    best of FORA/TaylorSeer at this share: {best[1]} {best[0]:.2f} dB; ours {ours:.2f} dB "
                  f"({ours - best[0]:+.2f}); fewer steps at equal MACs {results['fewer']['psnr']:.2f} dB "
                  f"({ours - results['fewer']['psnr']:+.2f}); at the schedule's wall time "
                  f"{results['fewer_time schedule']['psnr']:.2f} dB "
                  f"({results['schedule']['psnr'] - results['fewer_time schedule']['psnr']:+.2f})", flush=True)
        if dydit is not None:
            depth = model.config.depth
            row(f"Δ-DiT {depth // 2}/{depth} blocks, N=2", ev.sample(n, cfg, DeltaDiT(depth, depth // 2, 500, 2)))
            dense, _ = row(f"DyDiT {n}, complete (dense)", ev.sample(n, cfg, dydit={"model": dydit, "route": "dense"}))
            dynamic, _ = row(f"DyDiT {n}, dynamic (lambda 0.5)", ev.sample(n, cfg, dydit={"model": dydit}))
            print(f"    DyDiT dynamic against its own complete model: PSNR "
                  f"{ev.scores(dynamic, dense)['psnr']:.2f} dB", flush=True)
            fewer = round(n * dynamic.macs / exact.macs)
            row(f"DDIM {fewer} (DyDiT's MACs)", ev.sample(fewer, cfg))


def dydit_schedule(dydit, out=None):
    """The Sensitivity Schedule node's measurement on the DyDiT model, sampled dynamically, calibrated
    from its plan (no sampling): the shipped DiT schedule's recipe (16 images, seed 1000, DDIM 20, CFG 4)."""
    from lazydit.lazy_core.training.calibrate import calibrate
    from lazydit.lazy_core.training.sensitivity import CHAIN, HISTORY, ORDER, measure, schedule_bank

    steps, images, cfg, seed = 20, 16, 4.0, 1000
    costs = measure(dydit, steps=steps, images=images, cfg_scale=cfg, seed=seed, order=ORDER, chain=CHAIN,
                    modules=False, history=HISTORY)
    bank = schedule_bank(dydit, costs, recipe={"measure_steps": steps, "images": images, "cfg_scale": cfg,
                                               "seed": seed, "measure_calls": costs.calls,
                                               "measure_seconds": round(costs.seconds, 1)})
    bank.info.calibration, per_steps = calibrate(dydit, bank, step_counts=(10, 20, 30, 50))
    bank.info.recipe["calibration_per_steps"] = per_steps
    if out:
        bank.save(out)
    return bank, costs


def compare_dydit_schedule(args, model, dydit, classifier):
    """DyDiT with a schedule measured on it, against the dense DiT with its own and both with fewer steps,
    at the MACs of DyDiT with the schedule."""
    from lazydit.lazy_core.demo.evaluate import Evaluator
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.engine.policies import LearnedGates

    n, cfg, target = 20, args.cfg[0], args.targets[0]
    dense_bank = GateBank.load(os.path.join(WEIGHTS, args.schedule))
    dy_bank, costs = dydit_schedule(dydit, args.save_schedule)
    print(f"DyDiT schedule measured: {costs.calls} guided calls of 16 images in {costs.seconds:.0f} s", flush=True)
    ev = Evaluator(model, classifier, per_class=args.per_class, seeds=args.seeds)

    def options(bank):
        r = bank.info.recipe
        return CacheOptions(reuse=r.get("reuse", "extrapolate"), order=r.get("order", 1),
                            max_lazy_steps=bank.longest_chain)

    def lazy(bank, share):
        lz = laziness_for(bank, share, n)
        return LearnedGates(bank, bank.threshold_for(lz, n), lz), lz

    print(f"demo models, {len(ev.labels)} samples (10 classes x {args.per_class} x seeds {args.seeds}), cfg {cfg}, "
          f"DDIM; PSNR against the exact DiT run (DiT) and against DyDiT's complete model (DyDiT)")
    print("| method | lazy | GMACs | MACs | wall s | PSNR DiT | PSNR DyDiT | SSIM DiT | FID | acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    exact = ev.sample(n, cfg)
    complete = ev.sample(n, cfg, dydit={"model": dydit, "route": "dense"})

    def row(name, sampled):
        s = ev.scores(sampled, exact)
        own = ev.scores(sampled, complete)["psnr"]
        p = "inf" if s["psnr"] == float("inf") else f"{s['psnr']:.2f}"
        q = "inf" if own == float("inf") else f"{own:.2f}"
        print(f"| {name} | {s['lazy_ratio']:.0%} | {s['gmacs']:.2f} | {sampled.macs / exact.macs:.1%} | "
              f"{s['seconds']:.1f} | {p} | {q} | {s['ssim']:.4f} | {s['fid']:.2f} | {s['accuracy']:.1%} |",
              flush=True)
        return s
    row(f"DiT, DDIM {n} (exact)", exact)
    row(f"DyDiT, DDIM {n}, complete (dense)", complete)
    dynamic = ev.sample(n, cfg, dydit={"model": dydit})
    row(f"DyDiT, DDIM {n}, dynamic", dynamic)
    policy, lz = lazy(dy_bank, target)
    both = ev.sample(n, cfg, policy, options(dy_bank), dydit={"model": dydit})
    ours = row(f"**DyDiT, DDIM {n}, dynamic + its schedule @ {lz:.2f}**", both)
    share = 1 - both.macs / exact.macs                       # the dense schedule's lazy share at equal MACs
    policy, lz = lazy(dense_bank, share)
    results = {"DiT + its schedule": row(f"DiT, DDIM {n} + its schedule @ {lz:.2f}",
                                         ev.sample(n, cfg, policy, options(dense_bank)))}
    fewer = max(1, round(n * both.macs / dynamic.macs))
    results["DyDiT fewer steps"] = row(f"DyDiT, DDIM {fewer}, dynamic (equal MACs)",
                                       ev.sample(fewer, cfg, dydit={"model": dydit}))
    fewer = max(1, round(n * both.macs / exact.macs))
    results["DiT fewer steps"] = row(f"DiT, DDIM {fewer} (equal MACs)", ev.sample(fewer, cfg))
    for name, s in results.items():
        print(f"    DyDiT + schedule against {name}: PSNR(DiT) {ours['psnr'] - s['psnr']:+.2f} dB, FID "
              f"{ours['fid'] - s['fid']:+.2f}, acc {ours['accuracy'] - s['accuracy']:+.1%}", flush=True)


def block_schedule(model, steps=20, images=16, cfg=4.0, seed=1000):
    """A schedule measured at block level on the demo DiT, as the Sensitivity Schedule node measures a block
    family (lazy_core.training.chains), on DDIM: every block lazy or computing, its residual forecast."""
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.proxies import Attachment
    from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
    from lazydit.lazy_core.training import chains
    from lazydit.lazy_core.training.calibrate import calibrate
    from lazydit.lazy_core.training.denoisers import LabelDenoiser
    from lazydit.lazy_core.training.sensitivity import schedule_bank

    den = LabelDenoiser(model)
    holder = chains.Holder()
    holder.options = CacheOptions(level="block")          # the Attachment swaps whole blocks in
    g = torch.Generator().manual_seed(seed)
    cond = den.draw(images, g)
    x = torch.randn(images, *den.latent, generator=g)
    ts = space_timesteps(steps)[::-1]
    acp = torch.as_tensor(GaussianDiffusion().alphas_cumprod, dtype=torch.float64)

    def forward(xx, tt, yy, stream=None):
        holder.begin_call(["positive", "negative"][:len(xx) // images], None, images, xx, None)
        try:
            return den.forward(xx, tt, yy)
        finally:
            holder.end_call()
    eps_fn = den.eps_fn(forward, cond, cfg)

    def evaluate(xx, k):
        return eps_fn(xx, torch.full((images,), ts[k], dtype=torch.long))

    def step(xx, k, eps):
        a = float(acp[ts[k]])
        a_next = float(acp[ts[k + 1]]) if k + 1 < steps else 1.0
        x0 = (xx - math.sqrt(1 - a) * eps) / math.sqrt(a)
        return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    handle = Attachment(model, holder).attach()
    try:
        with torch.no_grad():
            costs = chains.measure_blocks(holder, evaluate, step, ts, x, model.config.depth)
    finally:
        handle.detach()
    bank = schedule_bank(model, costs, recipe={"measure_steps": steps, "images": images, "cfg_scale": cfg,
                                               "seed": seed, "level": "block"})
    bank.info.calibration, per_steps = calibrate(model, bank, step_counts=(10, 20, 30, 50))
    bank.info.recipe["calibration_per_steps"] = per_steps
    return bank, costs


def compare_levels(args, model, classifier):
    """The schedule at module and at block level, side by side, with fewer steps at equal MACs."""
    from lazydit.lazy_core.demo.evaluate import Evaluator
    from lazydit.lazy_core.engine.cache import CacheOptions
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.lazy_core.engine.policies import LearnedGates

    shipped = GateBank.load(os.path.join(WEIGHTS, args.schedule))
    blocks, costs = block_schedule(model)
    print(f"block-level schedule measured: {costs.calls} guided calls of 16 images in {costs.seconds:.0f} s",
          flush=True)
    ev = Evaluator(model, classifier, per_class=args.per_class, seeds=args.seeds)
    cfg = args.cfg[0]
    print(f"demo model, {len(ev.labels)} samples (10 classes x {args.per_class} x seeds {args.seeds}), cfg {cfg}, DDIM")
    print("| method | lazy | GMACs | wall s | speed | PSNR | SSIM | FID | acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.steps:
        exact = ev.sample(n, cfg)

        def row(name, sampled):
            s = ev.scores(sampled, exact)
            p = "inf" if s["psnr"] == float("inf") else f"{s['psnr']:.2f} ±{s.get('psnr_sd', 0):.2f}"
            print(f"| {name} | {s['lazy_ratio']:.0%} | {s['gmacs']:.2f} | {s['seconds']:.1f} | "
                  f"{exact.seconds / s['seconds']:.2f}x | {p} | {s['ssim']:.4f} | {s['fid']:.2f} | "
                  f"{s['accuracy']:.1%} |", flush=True)
            return s
        row(f"DDIM {n} (exact)", exact)
        for target in args.targets:
            for name, bank, level in (("schedule, module level", shipped, "module"),
                                      ("schedule, block level", shipped, "block"),
                                      ("block-measured schedule, block level", blocks, "block")):
                r = bank.info.recipe
                options = CacheOptions(reuse=r.get("reuse", "extrapolate"), order=r.get("order", 1),
                                       max_lazy_steps=bank.longest_chain, level=level)
                lz = laziness_for(bank, target, n)
                s = row(f"{name} {n} @ {lz:.2f}", ev.sample(n, cfg, LearnedGates(bank, bank.threshold_for(lz, n), lz),
                                                             options))
            fewer = max(1, round(n * (1 - target)))
            row(f"DDIM {fewer} (equal MACs)", ev.sample(fewer, cfg))
            same = max(1, round(n * s["seconds"] / exact.seconds))      # the block-measured schedule's wall time
            if same != fewer:
                row(f"DDIM {same} (its wall time)", ev.sample(same, cfg))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="store_true")
    p.add_argument("--compare", action="store_true")
    p.add_argument("--dydit", action="store_true", help="add the DyDiT demo model (see above)")
    p.add_argument("--levels", action="store_true", help="module against block level (see above)")
    p.add_argument("--dydit-schedule", action="store_true", help="DyDiT with its own sensitivity schedule (see above)")
    p.add_argument("--save-schedule", default="", help="with --dydit-schedule: also save the DyDiT's schedule there")
    p.add_argument("--write", action="store_true", help="with --manifest: store the figures in the manifest")
    p.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    p.add_argument("--per-class", type=int, default=10, help="images per class and seed")
    p.add_argument("--gates", default="dit_demo_fashion_gates.safetensors", help="learned gates")
    p.add_argument("--schedule", default="dit_demo_fashion_schedule.safetensors", help="sensitivity schedule")
    p.add_argument("--local", default="dit_demo_fashion_gates_local.safetensors",
                   help="gates of the paper's local recipe ('' to leave out)")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.67, 0.75], help="lazy shares compared")
    p.add_argument("--taylor-orders", type=int, nargs="+", default=[1, 2], help="TaylorSeer orders compared")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds (--compare)")
    p.add_argument("--short", action="store_true", help="leave out the paper-recipe and static-mask rows")
    p.add_argument("--reuse", default="extrapolate", choices=("extrapolate", "repeat", "taylor"),
                   help="how the decision policies' lazy modules reuse outputs, where the gates do not say")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.manifest or args.compare):
        sys.exit("choose --manifest and/or --compare")
    main(args)
