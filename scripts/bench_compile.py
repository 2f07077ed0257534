"""torch.compile benchmark (not a test): the demo workflow through core TorchCompileModel (inductor) placed
before or after Apply Lazy Gates, against the same workflows uncompiled, side by side in one process.

Each variant runs once to compile (its time is reported apart), then `--repeats` times; the median counts.

    .venv/bin/python scripts/bench_compile.py --images 10 --steps 20 --repeats 3
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
DEMO = os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")
VARIANTS = ["exact", "exact, compiled", "lazy", "compile, then lazy", "lazy, then compile"]


def workflow(variant, images, steps, laziness):
    p = copy.deepcopy(json.load(open(DEMO)))
    p["6"]["inputs"]["batch_size"] = images
    p["7"]["inputs"]["steps"] = steps
    p["3"]["inputs"]["laziness"] = 0.0 if variant.startswith("exact") else laziness
    p["10"]["inputs"]["filename_prefix"] = "bench_compile"
    del p["11"], p["12"]                             # the report: not what is timed
    compiled = {"class_type": "TorchCompileModel", "inputs": {"backend": "inductor"}}
    if variant == "exact, compiled":                 # the unpatched model, compiled
        p["20"] = dict(compiled, inputs={**compiled["inputs"], "model": ["1", 0]})
        p["7"]["inputs"]["model"] = ["20", 0]
    elif variant == "exact":
        p["7"]["inputs"]["model"] = ["1", 0]
    elif variant == "compile, then lazy":
        p["20"] = dict(compiled, inputs={**compiled["inputs"], "model": ["1", 0]})
        p["3"]["inputs"]["model"] = ["20", 0]
    elif variant == "lazy, then compile":
        p["20"] = dict(compiled, inputs={**compiled["inputs"], "model": ["3", 0]})
        p["7"]["inputs"]["model"] = ["20", 0]
    return p


def main(args):
    from comfy_headless import Comfy

    comfy = Comfy(os.path.join(ROOT, "out", "bench_compile_base"))
    first, times = {}, {v: [] for v in VARIANTS}
    for v in VARIANTS:
        t = time.perf_counter()
        comfy.run(workflow(v, args.images, args.steps, args.laziness))
        first[v] = time.perf_counter() - t
    for _ in range(args.repeats):
        for v in VARIANTS:
            t = time.perf_counter()
            comfy.run(workflow(v, args.images, args.steps, args.laziness))
            times[v].append(time.perf_counter() - t)
    base = statistics.median(times["exact"])
    print(f"demo workflow, {args.images} images, KSampler euler {args.steps} steps, laziness {args.laziness}; "
          f"median of {args.repeats} runs after a first (compiling) run")
    print(f"{'variant':22s} {'first run':>10s} {'run':>8s} {'speed-up':>9s}")
    for v in VARIANTS:
        t = statistics.median(times[v])
        print(f"{v:22s} {first[v]:9.1f}s {t:7.2f}s {base / t:8.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--laziness", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=3)
    main(p.parse_args())
