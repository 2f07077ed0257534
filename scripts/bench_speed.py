"""Speed benchmark (not a test): overhead of the lazy engine and wall speed-up at forced lazy ratios, on
DiT-XL/2- and PixArt-Σ-shaped models with random weights (speed does not depend on the weights).

Every variant runs the same sequence of model calls (CFG: cond + uncond rows in one batch); variants are
interleaved per repeat and the median is taken, so all ratios are measured side by side in one run.
ideal speed-up = 1 / (1 - r * f), r = measured lazy ratio, f = share of a step's MACs in attention + MLP.

    .venv/bin/python scripts/bench_speed.py                       # CPU: DiT-XL/2 256 px + PixArt-Σ 512 px
    .venv/bin/python scripts/bench_speed.py --device cuda --pixart-depth 28 --pixart-px 1024 --dit-px 256,512
    .venv/bin/python scripts/bench_speed.py --dydit only          # DyDiT-XL/2 at lambda = 0.5 widths vs dense
"""

import argparse
import os
import statistics
import sys
import time

import checkout  # noqa: F401  (binds `lazydit` to this checkout)
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def comfy_path():
    """ComfyUI's PixArt code (the runtime scripts/setup.sh installs), imported without starting ComfyUI."""
    import comfy_tree
    sys.path.insert(0, comfy_tree.COMFY)
    from comfy.cli_args import args
    args.cpu = not torch.cuda.is_available()


def comfy_path_or_none():
    """comfy_path() with PixArt's block registered with the engine; False where ComfyUI does not import."""
    try:
        comfy_path()
        from comfy.ldm.pixart.pixartms import PixArtMSBlock
    except ImportError:
        return False
    from lazydit.lazy_core.engine.proxies import DIT_NORMS, register_block
    register_block(PixArtMSBlock, "pixart", norms=DIT_NORMS)
    return True


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run_calls(model, forward, policy, x, timesteps, RunState, plain=False, on_state=None):
    """Runs one call per timestep; returns the lazy ratio measured by the engine (0 for plain). `on_state` gets
    the run's RunState before it is finished (its counters)."""
    from lazydit.lazy_core.engine.cache import CacheOptions

    if plain:
        for t in timesteps:
            forward(x, t)
        return 0.0
    state = RunState(policy, CacheOptions(max_lazy_steps=8))     # forced shares above 1/2 are chains
    half = x.shape[0] // 2
    for t in timesteps:
        # The timestep arrives on the device, as in ComfyUI: reading it would be a host sync.
        state.begin_call(["cond", "uncond"], ["positive", "negative"], half, x, torch.full((1,), t, device=x.device))
        handle = state.attach(model)
        try:
            forward(x, t)
        finally:
            handle.detach()
            state.end_call()
    if on_state is not None:
        on_state(state)
    state.finish()
    return state.report()["ratio"]


def dit_case(px, depth, device, dtype, rows=4):
    from lazydit.lazy_core.models.dit import DiT, DiTConfig
    c = DiTConfig(input_size=px // 8, depth=depth)
    with torch.device(device):
        model = DiT(c).to(dtype).eval()
    x = torch.randn(rows, 4, px // 8, px // 8, device=device, dtype=dtype)   # rows / 2 images x (cond, uncond)
    y = torch.tensor([1, 2] * (rows // 4) + [1] * (rows // 2 % 2) + [1000] * (rows // 2), device=device)

    def forward(x_, t):
        return model(x_, torch.full((x_.shape[0],), t, device=device), y)
    tokens, d = c.tokens, c.hidden_size
    # Per-row MACs outside the gated modules: patch embed, final layer, adaLN per block, t embedder.
    other = tokens * 16 * d + tokens * d * 32 + depth * 6 * d * d + 2 * d * d + 256 * d + d * d
    return f"DiT-XL/2 {px}px (depth {depth})", model, forward, x, tokens, other


def pixart_case(px, depth, device, dtype, rows=2):
    import comfy.ops
    from comfy.ldm.pixart.pixartms import PixArtMS
    with torch.device(device):
        model = PixArtMS(depth=depth, hidden_size=1152, num_heads=16, patch_size=2, in_channels=4,
                         caption_channels=4096, model_max_length=300, micro_condition=False,
                         operations=comfy.ops.disable_weight_init, dtype=dtype).eval()
        for p in model.parameters():
            p.data.normal_(0, 0.02)
    side = px // 8
    x = torch.randn(rows, 4, side, side, device=device, dtype=dtype)          # rows / 2 images x (cond, uncond)
    ctx = torch.randn(rows, 120, 4096, device=device, dtype=dtype)

    def forward(x_, t):
        return model(x_, torch.full((x_.shape[0],), float(t), device=device), ctx)
    tokens = (side // 2) ** 2
    d, L = 1152, 120
    cross = tokens * 2 * d * d + L * 2 * d * d + 2 * tokens * L * d           # q, proj, kv, attention
    # Cross-attention per block, caption projection, patch embed, final layer, adaLN-single, t embedder.
    other = depth * cross + L * (4096 * d + d * d) + tokens * 16 * d + tokens * d * 32 + 6 * d * d + 256 * d + d * d
    return f"PixArt-Σ {px}px (depth {depth})", model, forward, x, tokens, other


def gates_never_lazy(model):
    """Per-step log-cost gates with input weights, at a price no module is worth: every decision runs
    (pooling, projection, the call's one host read) and the cache is kept, yet nothing is lazy."""
    from lazydit.lazy_core.engine.gates import GateBank, GateInfo
    from lazydit.lazy_core.engine.policies import LearnedGates
    from lazydit.lazy_core.engine.proxies import describe
    arch, depth, width = describe(model)
    info = GateInfo(arch, depth, width, list(range(0, 1000, 50)), score="log-cost", granularity="step")
    bank = GateBank(info, weight=torch.randn(depth, 2, 20, width, device=next(model.parameters()).device) * 1e-3)
    return LearnedGates(bank, threshold=-1e9)


def norms_run(policy):
    """The policy as if it read the modules' inputs: the norms feeding lazy modules run (what they cost)."""
    policy.reads_input = True
    return policy


def main(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    comfy_path()
    from comfy.ldm.pixart.pixartms import PixArtMSBlock
    from lazydit.lazy_core.engine.cache import RunState
    from lazydit.lazy_core.engine.policies import ForcedRatio, NeverLazy
    from lazydit.lazy_core.engine.proxies import DIT_NORMS, module_macs, register_block
    register_block(PixArtMSBlock, "pixart", norms=DIT_NORMS)

    if args.dydit:
        with torch.inference_mode():
            dydit_bench(args, device, dtype)
        if args.dydit == "only":
            return
    cases = [dit_case(int(px), args.dit_depth, device, dtype) for px in args.dit_px.split(",") if px]
    if args.pixart_px:
        cases.append(pixart_case(args.pixart_px, args.pixart_depth, device, dtype))
    print(f"device {device}, {args.dtype}, {args.threads} threads, {args.steps} calls per variant, "
          f"median of {args.repeats} interleaved repeats")
    header = (f"{'model':28s} {'variant':26s} {'lazy r':>7s} {'s/call':>8s} {'speed-up':>9s} {'ideal':>7s} "
              f"{'of ideal':>9s}")
    print(header)
    with torch.inference_mode():
        for name, model, forward, x, tokens, other in cases:
            macs = module_macs(model.blocks, tokens)
            gated = sum(a + m for a, m in macs)
            f = gated / (gated + other)
            depth = len(model.blocks)
            variants = {
                "unpatched": (None, True),
                "laziness 0 (never lazy)": (NeverLazy(), False),
                "learned gates, r=0": (gates_never_lazy(model), False),
                "forced r=0.25": (ForcedRatio(0.25, depth), False),
                "forced r=0.50": (ForcedRatio(0.5, depth), False),
                "forced r=0.67": (ForcedRatio(0.67, depth), False),
                "forced r=0.67 (norms run)": (norms_run(ForcedRatio(0.67, depth)), False),
            }
            if args.only:
                variants = {k: v for k, v in variants.items() if k == "unpatched" or k in args.only.split(",")}
            ts = [round(999 - i * 999 / max(args.steps - 1, 1)) for i in range(args.steps)]
            forward(x, 999)                                            # warm-up
            times = {k: [] for k in variants}
            ratios = {}
            for _ in range(args.repeats):
                for k, (policy, plain) in variants.items():
                    times[k].append(timed(lambda: ratios.__setitem__(k, run_calls(
                        model, forward, policy, x, ts, RunState, plain)), device) / args.steps)
            base = statistics.median(times["unpatched"])
            for k in variants:
                t = statistics.median(times[k])
                r = ratios[k]
                speed = base / t
                ideal = 1 / (1 - r * f)
                print(f"{name:28s} {k:26s} {r:7.3f} {t:8.3f} {speed:9.3f} {ideal:7.3f} {speed / ideal:9.1%}")
            print(f"{name:28s} f = {f:.3f} (attention + MLP share of step MACs)")


def dydit_widths(model, heads, groups, step):
    """Routers set so that every block uses `heads` heads and `groups` MLP groups at this step: the set
    rotates by one unit per step (the same count, other units), so that consecutive steps need new slices."""
    H = model.config.num_heads
    for i, block in enumerate(model.blocks):
        for router, count in ((block.attn_rate.router, heads), (block.mlp_rate.router, groups)):
            on = {(i + step + k) % (H - 1) for k in range(count - 1)}
            router.weight.zero_()
            router.bias.copy_(torch.tensor([20.0 if u in on else -20.0 for u in range(H - 1)]))


def dydit_tokens(model, forward, x, keep, rounds=3):
    """Token routers' biases shifted until each block keeps about `keep` of the tokens on this input."""
    logits = {}
    hooks = [b.token_selection.register_forward_hook(lambda m, a, out, i=i: logits.__setitem__(i, out))
             for i, b in enumerate(model.blocks)]
    for _ in range(rounds):
        forward(x, 500)
        for i, block in enumerate(model.blocks):
            block.token_selection.mlp_head[2].bias -= torch.quantile(logits[i].float().flatten(), 1 - keep).to(
                block.token_selection.mlp_head[2].bias.dtype)
    for h in hooks:
        h.remove()


def dydit_bench(args, device, dtype):
    """DyDiT at the DiT-XL/2 shape with random weights and widths of the official lambda = 0.5 budget (the
    released checkpoint's own widths cannot be downloaded here): sliced inference against the dense model,
    against the MAC-ideal speed-up."""
    from lazydit.lazy_core.models.dit import DiTConfig
    from lazydit.lazy_core.models.dydit import DyDiT, dense_macs, summarize
    px = int(args.dit_px.split(",")[0])
    c = DiTConfig(input_size=px // 8, depth=args.dit_depth)
    with torch.device(device):
        model = DyDiT(c).to(dtype).eval()
    x = torch.randn(4, 4, px // 8, px // 8, device=device, dtype=dtype)       # 2 images x (cond, uncond)
    y = torch.tensor([1, 2, 1000, 1000], device=device)
    ts = [round(999 - i * 999 / max(args.steps - 1, 1)) for i in range(args.steps)]
    tokens, d, depth = c.tokens, c.hidden_size, c.depth
    other = tokens * 16 * d + tokens * d * 32 + depth * 6 * d * d + 2 * d * d + 256 * d + d * d

    def run(route, rotate, stats=None):
        for i, t in enumerate(ts):
            if route != "dense":
                dydit_widths(model, args.dydit_heads, args.dydit_groups, i if rotate else 0)
            model(x, torch.full((x.shape[0],), float(t), device=device), y, route=route, stats=stats)

    dydit_widths(model, args.dydit_heads, args.dydit_groups, 0)
    dydit_tokens(model, lambda x_, t: model(x_, torch.full((x_.shape[0],), float(t), device=device), y), x,
                 args.dydit_tokens)
    variants = {"dense (complete model)": ("dense", False), "dynamic, same widths each step": ("sliced", False),
                "dynamic, new widths each step": ("sliced", True)}
    run("dense", False)                                                        # warm-up
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, (route, rotate) in variants.items():
            times[k].append(timed(lambda: run(route, rotate), device) / args.steps)
    stats = []
    run("sliced", True, stats)
    report = summarize(c, stats)
    dense_total = (dense_macs(c) * depth + other) * x.shape[0]
    dyn_total = report["macs"] / args.steps + other * x.shape[0]
    mac_ratio = dyn_total / dense_total
    heads, groups, kept = report["shares"].mean(dim=(1, 2)).tolist()
    print(f"DyDiT-XL/2 {px}px (depth {depth}): heads {heads:.0%}, MLP channels {groups:.0%}, MLP tokens {kept:.0%}; "
          f"attention + MLP at {report['ratio']:.1%} of the dense MACs, whole step at {mac_ratio:.1%} "
          f"(official lambda = 0.5: 57.88 / 118.69 GFLOPs = 48.8 %)")
    base = statistics.median(times["dense (complete model)"])
    print(f"{'variant':34s} {'s/call':>8s} {'speed-up':>9s} {'ideal':>7s} {'of ideal':>9s} {'time cut / MAC cut':>19s}")
    for k in variants:
        t = statistics.median(times[k])
        speed = base / t
        macs = 1.0 if variants[k][0] == "dense" else mac_ratio
        cut = (1 - t / base) / (1 - macs) if macs < 1 else float("nan")
        print(f"{k:34s} {t:8.3f} {speed:9.3f} {1 / macs:7.3f} {speed * macs:9.1%} {cut:19.1%}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dit-px", default="256", help="comma-separated DiT-XL/2 resolutions")
    p.add_argument("--dit-depth", type=int, default=28)
    p.add_argument("--pixart-px", type=int, default=512)
    p.add_argument("--pixart-depth", type=int, default=8)
    p.add_argument("--only", default="", help="comma-separated variants to run beside 'unpatched'")
    p.add_argument("--dydit", nargs="?", const="also", default="", choices=("", "also", "only"),
                   help="also (or only) DyDiT at the DiT-XL/2 shape, sliced against dense")
    p.add_argument("--dydit-heads", type=int, default=10, help="active heads of 16 per block")
    p.add_argument("--dydit-groups", type=int, default=8, help="active MLP channel groups of 16 per block")
    p.add_argument("--dydit-tokens", type=float, default=0.8, help="share of tokens through the MLP")
    main(p.parse_args())
