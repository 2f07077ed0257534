"""A learned forecaster: per block, module and position in a chain, two coefficients fitted by least squares.

A lazy module's stand-in, from its last three computed outputs o1 (newest), o2, o3:

    o1 + a (line - o1) + b (quad - line)

with line and quad the polynomials of order 1 and 2 through them, evaluated at this step's timestep (forecast.py).
(a, b) = (1, 0) is the line, (0, 0) repeats o1, (1, 1) is the quadratic. The coefficients are fitted on the
model's own exact guided trajectories, with the history a run of chains leaves (computed steps every N
steps, N = 2 .. longest + 1, the "periodic" history of the chain costs): for a lazy step p steps after
a computed one, the exact output there is the target. The fit minimises the squared error of the module
outputs, which is not what the final image loses: measured on the demo model, see the README.

    python -m lazy_core.training.forecaster --model weights/dit_demo_fashion.safetensors \
        --gates weights/dit_demo_fashion_gates.safetensors
"""

import argparse
import logging
import time

import torch

from ..engine import forecast
from ..engine.gates import MODULES, GateBank
from ..engine.proxies import layout_for
from ..models.diffusion import GaussianDiffusion, space_timesteps
from .denoisers import as_denoiser

log = logging.getLogger(__name__)


def solve(gram, rhs, ridge=1e-6):
    """(..., 2) least-squares coefficients from accumulated normal equations gram (..., 2, 2), rhs (..., 2);
    (1, 0), the line, where a position saw no samples."""
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True).clamp(min=1e-30)[..., None]
    eye = torch.eye(2, dtype=gram.dtype)
    coef = torch.linalg.solve(gram + ridge * scale * eye, rhs[..., None])[..., 0]
    empty = gram.diagonal(dim1=-2, dim2=-1).sum(-1) == 0
    return torch.where(empty[..., None], torch.tensor([1.0, 0.0], dtype=gram.dtype), coef)


def accumulate(gram, rhs, o1, o2, o3, times, now, target):
    """Adds one sample of every row to the normal equations of one (block, module, position) in place.
    o1, o2, o3, target: (rows, T, D); times: (rows, 3) timesteps of o1..o3; now: this step's timestep."""
    w1 = forecast.weights("extrapolate", 1, times[:, :2], now)
    w2 = forecast.weights("extrapolate", 2, times, now)
    line = forecast.combine(o1, [o2], w1)
    quad = forecast.combine(o1, [o2, o3], w2)
    u, v, y = (line - o1).double(), (quad - line).double(), (target - o1).double()
    gram += torch.stack([torch.stack([(u * u).sum(), (u * v).sum()]), torch.stack([(v * u).sum(), (v * v).sum()])])
    rhs += torch.stack([(u * y).sum(), (v * y).sum()])


@torch.no_grad()
def fit(model, steps=20, images=8, cfg_scale=4.0, seed=1000, longest=4):
    """(depth, 2, longest, 2) float32 coefficients [block, module, position - 1] = (a, b), fitted on `images`
    exact DDIM trajectories of `steps` steps (guided at cfg_scale) of the model."""
    den = as_denoiser(model)
    blocks = list(den.model.blocks)
    depth = len(blocks)
    outputs, current = {}, [0]         # step -> {(block, module): (rows, T, D)}; the step in progress
    hooks = []
    for b, block in enumerate(blocks):
        lay = layout_for(block)
        for m, name in enumerate((lay.attn, lay.mlp)):
            def keep(_, __, out, key=(b, m)):
                outputs[current[0]][key] = out.detach().float().cpu()
            hooks.append(getattr(block, name).register_forward_hook(keep))
    gram = torch.zeros(depth, len(MODULES), longest, 2, 2, dtype=torch.float64)
    rhs = torch.zeros(depth, len(MODULES), longest, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    cond = den.draw(images, g)
    noise = torch.randn(images, *den.latent, generator=g).to(den.device)
    times = [float(t) for t in space_timesteps(steps)[::-1]]
    window = longest + 2 * (longest + 1)       # the oldest output a sample reads, in steps back
    eps_fn = den.eps_fn(den.forward, cond, cfg_scale)

    def step_fn(x, t):
        k = current[0]
        outputs[k] = {}
        eps = eps_fn(x, t)
        for n in range(2, longest + 2):                 # periodic history: computed every n steps
            for p in range(1, n):
                c = k - p
                if c - 2 * n < 0:
                    continue
                when = torch.tensor([[times[c], times[c - n], times[c - 2 * n]]])
                for key, target in outputs[k].items():
                    o1, o2, o3 = (outputs[s][key] for s in (c, c - n, c - 2 * n))
                    accumulate(gram[key][p - 1], rhs[key][p - 1], o1, o2, o3, when.expand(len(o1), 3),
                               torch.tensor(times[k]), target)
        for s in [s for s in outputs if s < k - window]:
            del outputs[s]
        current[0] += 1
        return eps
    try:
        GaussianDiffusion().ddim_loop(step_fn, noise, steps)
    finally:
        for h in hooks:
            h.remove()
    return solve(gram, rhs).float()


def main(args):
    from ..models.checkpoint import load_model
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    bank = GateBank.load(args.gates)
    t0 = time.perf_counter()
    coef = fit(model, steps=args.steps, images=args.images, seed=args.seed, longest=bank.longest_chain)
    bank.forecast = coef
    bank.info.recipe["forecast_fit"] = {"steps": args.steps, "images": args.images, "seed": args.seed,
                                        "cfg_scale": 4.0, "seconds": round(time.perf_counter() - t0, 1)}
    bank.save(args.out or args.gates)
    log.info("fitted %s coefficients in %.0f s: mean (a, b) %s", tuple(coef.shape),
             time.perf_counter() - t0, [round(float(v), 3) for v in coef.mean((0, 1, 2))])


def parser():
    p = argparse.ArgumentParser(prog="python -m lazy_core.training.forecaster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--gates", required=True, help="gate file; rewritten in place unless --out is given")
    p.add_argument("--out", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    return p


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(parser().parse_args())
