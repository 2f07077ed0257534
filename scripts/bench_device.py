"""Device benchmark (not a test), one table: scripts/bench_device.sh runs it on one GPU in one call.

Sections, each a block of rows of the same table:
  speed    bench_speed.py's cases (DiT-XL/2 256 and 512 px, PixArt-Σ 1024 px, random weights) in fp16 and bf16
           at 2 and 8 rows: unpatched, laziness 0, learned-gate decisions at r = 0, forced 25 / 50 / 67 % and
           the MAC-ideal speed-up; a share the engine's ForcedRatio policy refuses prints "n/a".
  syncs    host syncs per model call of each variant (aten ops that read the device, plus the engine's counted
           reads), the plain model's own subtracted.
  memory   peak memory the cache adds over the plain model, against its analytic bound
           2 x depth x rows x tokens x width x bytes (reuse "repeat").
  compile  the demo workflow through ComfyUI with core TorchCompileModel placed before and after Apply Lazy Gates.
  comfyui  the demo workflow through ComfyUI on this device, exact against lazy: mean pixel difference.
Times: CUDA events after a warm-up (the CPU's clock in --dry-run); the median of interleaved repeats.
--dry-run: the same code paths at tiny sizes on the CPU, in fp32 (the CPU's half-precision kernels are slow).
"""

import argparse
import copy
import json
import os
import signal
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_speed  # noqa: E402  (binds `lazydit` to this checkout)

FORCED = (0.25, 0.5, 0.67)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ROWS = []


def row(section, model, dtype, rows, variant, ratio=None, ms=None, speed=None, ideal=None, note=""):
    """One line of the table; None prints as "n/a"."""
    ROWS.append((section, model, dtype, rows, variant, ratio, ms, speed, ideal, note))


def show(value, fmt):
    return "n/a" if value is None else format(value, fmt)


def print_table():
    head = ("section", "model", "dtype", "rows", "variant", "lazy r", "ms/call", "speed-up", "ideal", "note")
    print(f"{head[0]:8s} {head[1]:30s} {head[2]:5s} {head[3]:>4s} {head[4]:28s} {head[5]:>7s} {head[6]:>9s} "
          f"{head[7]:>8s} {head[8]:>6s}  {head[9]}")
    for s, m, d, r, v, ratio, ms, speed, ideal, note in ROWS:
        print(f"{s:8s} {m:30s} {d:5s} {str(r):>4s} {v:28s} {show(ratio, '.3f'):>7s} {show(ms, '.3f'):>9s} "
              f"{show(speed, '.3f'):>8s} {show(ideal, '.3f'):>6s}  {note}")


class Timer:
    """Wall time of a callable: CUDA events on a GPU (after a synchronize), the CPU's clock elsewhere."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if not self.cuda:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000


def forced(ratio, depth, ForcedRatio):
    """ForcedRatio at `ratio`, or None where the policy refuses that share."""
    try:
        return ForcedRatio(ratio, depth)
    except ValueError:
        return None


def variants_for(model, depth):
    from lazydit.lazy_core.engine.policies import ForcedRatio, NeverLazy
    out = {"unpatched": (None, True), "laziness 0 (never lazy)": (NeverLazy(), False),
           "learned gates, r=0": (bench_speed.gates_never_lazy(model), False)}
    for r in FORCED:
        out[f"forced r={r:.2f}"] = (forced(r, depth, ForcedRatio), False)
    return out


def count_syncs(model, forward, policy, x, ts, plain):
    """(syncs per call, engine reads per call) of one run of the variant."""
    from lazydit.lazy_core.engine.cache import RunState
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0
        on = True                     # off once the calls are done: the run's summary reads are not per call

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not self.on:
                return out
            name = func.overloadpacket.__name__
            to_host = name in ("_to_copy", "copy_") and isinstance(out, torch.Tensor) and out.device.type == "cpu" \
                and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
            if name in ("_local_scalar_dense", "nonzero", "is_nonzero", "equal", "item") or to_host:
                self.count += 1
            return out

    counter, reads = Counter(), []

    def calls_done(state):
        counter.on = False
        reads.append(state.syncs / len(ts))
    with counter:
        bench_speed.run_calls(model, forward, policy, x, ts, RunState, plain, on_state=calls_done)
    return counter.count / len(ts), (reads[0] if reads else 0.0)


def speed_section(args, device):
    from lazydit.lazy_core.engine.cache import RunState
    from lazydit.lazy_core.engine.proxies import module_macs
    timer = Timer(device)
    ts = [round(999 - i * 999 / max(args.steps - 1, 1)) for i in range(args.steps)]
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for rows in args.rows:
            cases = [bench_speed.dit_case(px, args.dit_depth, device, dtype, rows) for px in args.dit_px]
            if args.pixart_px:
                try:
                    cases.append(bench_speed.pixart_case(args.pixart_px, args.pixart_depth, device, dtype, rows))
                except ImportError as err:
                    row("speed", f"PixArt-Σ {args.pixart_px}px", dtype_name, rows, "all", note=f"no ComfyUI: {err}")
            for name, model, forward, x, tokens, other in cases:
                macs = module_macs(model.blocks, tokens)
                gated = sum(a + m for a, m in macs)
                f = gated / (gated + other)
                depth = len(model.blocks)
                variants = variants_for(model, depth)
                with torch.inference_mode():
                    for _, (policy, plain) in variants.items():          # warm-up: one run of each
                        if policy is not None or plain:
                            bench_speed.run_calls(model, forward, policy, x, ts[:2], RunState, plain)
                    print(f"[bench_device] {name} {dtype_name} rows {rows}: warm", file=sys.stderr)
                    times, ratios = {k: [] for k in variants}, {}
                    for _ in range(args.repeats):
                        for k, (policy, plain) in variants.items():
                            if policy is None and not plain:
                                continue
                            times[k].append(timer(lambda: ratios.__setitem__(k, bench_speed.run_calls(
                                model, forward, policy, x, ts, RunState, plain))) / len(ts))
                    base = statistics.median(times["unpatched"])
                    plain_syncs, _ = count_syncs(model, forward, None, x, ts[:3], True)
                    for k, (policy, plain) in variants.items():
                        if policy is None and not plain:
                            row("speed", name, dtype_name, rows, k, note="share refused by ForcedRatio")
                            continue
                        t = statistics.median(times[k])
                        r = ratios[k]
                        row("speed", name, dtype_name, rows, k, r, t * 1000, base / t, 1 / (1 - r * f),
                            f"f = {f:.3f}" if plain else "")
                    for k, (policy, plain) in variants.items():
                        if plain or policy is None:
                            continue
                        syncs, reads = count_syncs(model, forward, policy, x, ts, False)
                        row("syncs", name, dtype_name, rows, k,
                            note=f"{syncs - plain_syncs:.2f} syncs/call beyond the plain model's "
                                 f"{plain_syncs:.2f} ({reads:.2f} engine reads)")
                    memory_rows(name, dtype_name, rows, model, forward, x, ts, depth, tokens, variants, device)
            cases.clear()                                             # free this size's models
            if device.type == "cuda":
                torch.cuda.empty_cache()


def memory_rows(name, dtype_name, rows, model, forward, x, ts, depth, tokens, variants, device):
    """Peak memory the cache adds over the plain model's run, against 2 x depth x rows x T x D x bytes."""
    from lazydit.lazy_core.engine.cache import RunState
    width = model.blocks[0].norm1.normalized_shape[0] if hasattr(model.blocks[0], "norm1") else None
    bound = 2 * depth * x.shape[0] * tokens * (width or 0) * x.element_size()
    policy = variants["forced r=0.50"][0]
    if device.type != "cuda":
        row("memory", name, dtype_name, rows, "forced r=0.50",
            note=f"peak n/a on the CPU; bound {bound / 2**20:.1f} MiB")
        return
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    bench_speed.run_calls(model, forward, None, x, ts, RunState, True)
    plain = torch.cuda.max_memory_allocated() - start
    torch.cuda.reset_peak_memory_stats()
    bench_speed.run_calls(model, forward, policy, x, ts, RunState, False)
    lazy = torch.cuda.max_memory_allocated() - start
    added = lazy - plain
    row("memory", name, dtype_name, rows, "forced r=0.50",
        note=f"cache peak {added / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB "
             f"({added / bound:.0%} of it)" if bound else "width unknown")


def timed_workflow(bench_compile, variant, images, steps, laziness):
    """bench_compile's workflow for the variant, without the nodes that read the report it drops."""
    prompt = bench_compile.workflow(variant, images, steps, laziness)
    while True:
        dangling = [k for k, node in prompt.items() if any(
            isinstance(v, list) and len(v) == 2 and str(v[0]) not in prompt for v in node["inputs"].values())]
        if not dangling:
            return prompt
        for k in dangling:
            del prompt[k]


def comfy_sections(args, device):
    """The demo workflow through ComfyUI on this device: core TorchCompileModel in both orders, then exact
    against lazy. Skipped with a row saying why where ComfyUI does not import."""
    try:
        import bench_compile
        from comfy_headless import Comfy
        comfy = Comfy(os.path.join(ROOT, "out", "bench_device_base"), cpu=device.type != "cuda")
    except Exception as err:                      # ComfyUI or one of its own dependencies missing on this machine
        for section in ("compile", "comfyui"):
            row(section, "demo workflow", "-", "-", "all", note=f"n/a: ComfyUI did not start here ({err!r})"[:160])
        return
    import numpy as np
    from PIL import Image

    images, steps = args.comfy_images, args.comfy_steps
    variants = bench_compile.VARIANTS if args.compile else ["exact", "lazy"]
    first, times = {}, {v: [] for v in variants}
    for v in variants:
        t = time.perf_counter()
        comfy.run(timed_workflow(bench_compile, v, images, steps, args.laziness))
        first[v] = time.perf_counter() - t
    for _ in range(args.comfy_repeats):
        for v in variants:
            t = time.perf_counter()
            comfy.run(timed_workflow(bench_compile, v, images, steps, args.laziness))
            times[v].append(time.perf_counter() - t)
    times = {v: times[v] or [first[v]] for v in variants}    # no repeats (--dry-run): the first run's time
    base = statistics.median(times["exact"])
    for v in variants:
        t = statistics.median(times[v])
        row("compile", "demo workflow (ComfyUI)", "fp32" if device.type != "cuda" else "auto", images, v,
            ms=t * 1000, speed=base / t, note=f"first run {first[v]:.1f} s" + (
                "" if args.compile else "; compile rows skipped (--dry-run)"))

    demo = json.load(open(os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")))
    demo["7"]["inputs"]["steps"] = steps
    demo["6"]["inputs"]["batch_size"] = images
    exact = copy.deepcopy(demo)
    exact["3"]["inputs"]["laziness"] = 0.0
    exact["10"]["inputs"]["filename_prefix"] = "bench_device_exact"
    demo["10"]["inputs"]["filename_prefix"] = "bench_device_lazy"

    def pictures(outputs):
        return [np.asarray(Image.open(os.path.join(comfy.output, i["subfolder"], i["filename"])).convert("RGB"),
                           dtype=float) for i in outputs["10"]["images"]]
    lazy_imgs, exact_imgs = pictures(comfy.run(demo)), pictures(comfy.run(exact))
    diff = float(np.mean([np.abs(a - b).mean() for a, b in zip(lazy_imgs, exact_imgs)]))
    row("comfyui", "demo workflow (ComfyUI)", "auto", len(lazy_imgs),
        f"laziness {demo['3']['inputs']['laziness']} vs 0",
        note=f"mean pixel difference {diff:.2f} / 255 over {len(lazy_imgs)} images, {steps} steps, on {device.type}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, the same code paths")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    a = p.parse_args()
    device = torch.device(a.device or ("cpu" if a.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_device: no CUDA device here; use --dry-run for the CPU check")
    if a.dry_run:
        args = argparse.Namespace(dtypes=["fp32"], rows=[2], dit_px=[32], dit_depth=2, pixart_px=272,
                                  pixart_depth=1, steps=6, repeats=1, compile=False, comfy_images=2,
                                  comfy_steps=2, comfy_repeats=0, laziness=0.9)
        torch.set_num_threads(1)            # tiny sizes: one thread, not oversubscribing a shared CPU
    else:
        args = argparse.Namespace(dtypes=["fp16", "bf16"], rows=[2, 8], dit_px=[256, 512], dit_depth=28,
                                  pixart_px=1024, pixart_depth=28, steps=10, repeats=3, compile=True,
                                  comfy_images=10, comfy_steps=20, comfy_repeats=3, laziness=0.9)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    def stopped(signum, frame):                 # bench_device.sh's time limit: print what was measured so far
        print(f"bench_device stopped by its time limit after {time.perf_counter() - t0:.0f} s; rows so far:")
        print_table()
        sys.exit(124)
    signal.signal(signal.SIGTERM, stopped)
    comfy_sections(args, device)            # first: ComfyUI must parse its own arguments before comfy is imported
    print(f"[bench_device] ComfyUI sections done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    bench_speed.comfy_path_or_none()
    speed_section(args, device)
    order = ["speed", "syncs", "memory", "compile", "comfyui"]
    ROWS.sort(key=lambda r: order.index(r[0]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench_device on {name}, torch {torch.__version__}{' (dry run)' if a.dry_run else ''}, "
          f"{args.steps} calls per variant, median of {args.repeats}; {time.perf_counter() - t0:.0f} s")
    print_table()


if __name__ == "__main__":
    main()
