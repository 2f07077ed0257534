"""Lazy gates (LazyDiT, Shen et al. 2025, §3.3): one linear map D -> 1 per block x module x timestep bucket.

score = sigmoid(<pool_tokens(Z), w> + bias), where Z is the adaLN-modulated input of the module. A module
computes iff score >= threshold (the reference code's convention: high score = compute). The paper pools by
summing over tokens, which ties the weights to one resolution; "mean" is this project's resolution-robust
variant. The paper's gates have no bias; a bias (format version 2) carries a per-bucket prior, and a bank
whose weights are all zero is a schedule: its decisions depend on the timestep only. Every file records its
pooling, the timesteps its buckets were trained at, the architecture it fits and a calibration table.
"""

import argparse
import json
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save, save_file

from ..models.diffusion import space_timesteps

MODULES = ("attn", "mlp")
ATTN, MLP = 0, 1
POOLINGS = ("mean", "sum")
SCORES = ("probability", "log-cost")
GRANULARITIES = ("module", "step")
FORMAT = "lazydit-gates"
VERSION = 2


class GateFileError(ValueError):
    """A gate file that cannot be used; the message names the file, the problem and the fix."""


@dataclass
class GateInfo:
    """What a gate file was made for."""

    architecture: str                  # "dit" or "pixart"
    depth: int
    width: int
    timesteps: list                    # bucket centres, diffusion timesteps 0..999, ascending
    pooling: str = "mean"
    tokens: int = 0                    # token count trained at (what sum pooling is tied to); 0 = unknown
    calibration: list = field(default_factory=list)   # [[threshold, measured lazy ratio], ...]
    recipe: dict = field(default_factory=dict)
    source_model: str = ""             # sha256 of the model the gates were trained on, if known
    # What a logit means. "probability": the paper's compute-probability, compute iff sigmoid >= threshold.
    # "log-cost": the log of what being lazy there costs the final image; a run spends its lazy budget
    # where that cost is lowest (policies.LearnedGates plans it), and calibration rows are [log λ, ratio].
    score: str = "probability"
    # "module": every gate decides for its own module (the paper). "step": the step's first gate (block 0,
    # attention) decides for every module of its image at that step, for costs measured per whole step.
    granularity: str = "module"

    def to_metadata(self):
        meta = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in vars(self).items()}
        return {"format": FORMAT, "version": str(VERSION), **meta}

    @classmethod
    def from_metadata(cls, meta, name="gate file"):
        if meta.get("format") != FORMAT:
            raise GateFileError(f"{name} is not a LazyDiT gate file (metadata format={meta.get('format')!r}); "
                                "convert reference checkpoints with `python -m lazy_core.engine.gates convert`")
        version = meta.get("version")
        if not str(version).isdecimal() or int(version) < 1:
            raise GateFileError(f"{name}: metadata version {_short(version)} is not a gate format version "
                                f"(1..{VERSION}); the file is damaged: train or download the gates again")
        if int(version) > VERSION:
            raise GateFileError(f"{name} has gate format version {version}, newer than this pack "
                                f"understands ({VERSION}); update the node pack")
        try:
            info = cls(architecture=meta["architecture"], depth=int(meta["depth"]), width=int(meta["width"]),
                       timesteps=json.loads(meta["timesteps"]), pooling=meta.get("pooling", "mean"),
                       tokens=int(meta.get("tokens", 0)), calibration=json.loads(meta.get("calibration", "[]")),
                       recipe=json.loads(meta.get("recipe", "{}")), source_model=meta.get("source_model", ""),
                       score=meta.get("score", "probability"), granularity=meta.get("granularity", "module"))
        except (KeyError, ValueError) as err:
            raise GateFileError(f"{name}: metadata is incomplete or corrupt ({_short(err)})") from err
        problem = info._problem()
        if problem:
            raise GateFileError(f"{name}: metadata {problem}; the file is damaged or not made by this pack: "
                                f"train or download the gates again")
        return info

    def _problem(self):
        """What makes this metadata unusable, or None: every later use (bucket lookup, the slider's table)
        relies on these."""
        ts, table = self.timesteps, self.calibration
        if self.depth < 1 or self.width < 1 or self.tokens < 0:
            return f"depth {self.depth} / width {self.width} / tokens {self.tokens} must be positive"
        if not isinstance(ts, list) or not ts:
            return f"timesteps {_short(ts)} must be a non-empty list of bucket timesteps"
        if not all(_finite(t) and 0 <= t <= 999 for t in ts) or any(b <= a for a, b in zip(ts, ts[1:])):
            return f"timesteps {_short(ts)} must be finite, in 0..999 and ascending"
        if not isinstance(table, list) or not all(
                isinstance(row, list) and len(row) == 2 and all(map(_finite, row)) and 0 <= row[1] <= 1
                for row in table):
            return f"calibration {_short(table)} must be a list of finite [threshold, lazy ratio in 0..1] pairs"
        if not isinstance(self.recipe, dict):
            return f"recipe {_short(self.recipe)} must be a JSON object"
        return None


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(value, limit=80):
    """repr of a value from a file, cut so that an error message stays short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class GateBank(nn.Module):
    """All gates of one model: weight (depth, 2 modules, buckets, D), bias (depth, 2, buckets) and which
    buckets were trained."""

    def __init__(self, info: GateInfo, weight=None, trained=None, bias=None, prior=None, chain=None, chain_t=None,
                 forecast=None):
        super().__init__()
        if info.pooling not in POOLINGS:
            raise GateFileError(f"unknown pooling {info.pooling!r}; expected one of {POOLINGS}")
        if info.score not in SCORES:
            raise GateFileError(f"unknown gate score {info.score!r}; expected one of {SCORES}: update the node pack")
        if info.granularity not in GRANULARITIES:
            raise GateFileError(f"unknown gate granularity {info.granularity!r}; expected one of {GRANULARITIES}: "
                                f"update the node pack")
        shape = (info.depth, len(MODULES), len(info.timesteps), info.width)
        self.info = info
        # Zero init: every score starts at sigmoid(0) = 0.5 (the reference code's initialisation).
        self.weight = nn.Parameter(torch.zeros(shape) if weight is None else weight.float().clone())
        if tuple(self.weight.shape) != shape:
            raise GateFileError(f"gate weight has shape {tuple(self.weight.shape)}, metadata says {shape}")
        self.bias = nn.Parameter(torch.zeros(shape[:3]) if bias is None else bias.float().clone(),
                                 requires_grad=False)
        if tuple(self.bias.shape) != shape[:3]:
            raise GateFileError(f"gate bias has shape {tuple(self.bias.shape)}, metadata says {shape[:3]}")
        # Log-cost gates: the expected logit per bucket over images (what a run plans with); else the bias.
        prior = self.bias.detach() if prior is None else prior.float()
        if tuple(prior.shape) != shape[:3]:
            raise GateFileError(f"gate prior has shape {tuple(prior.shape)}, metadata says {shape[:3]}")
        self.register_buffer("prior", prior.clone(), persistent=False)
        trained = torch.ones(shape[:3], dtype=torch.bool) if trained is None else trained.bool()
        if tuple(trained.shape) != shape[:3]:
            raise GateFileError(f"gate `trained` mask has shape {tuple(trained.shape)}, metadata says {shape[:3]}")
        # A NaN or inf gate decides nothing: NaN fails every comparison, so the module would look lazy.
        for label, tensor in (("weight", self.weight), ("bias", self.bias), ("prior", prior)):
            if not bool(torch.isfinite(tensor).all()):
                raise GateFileError(f"gate {label} holds NaN or inf values: the gates are damaged (a diverged "
                                    f"training run?); train or download them again")
        self.register_buffer("trained", trained, persistent=False)
        # Chains (optional): chain[i - 1, l - 1] = the expected log cost of the final image when the steps
        # i .. i + l - 1 of the measured schedule chain_t (timesteps, sampling order) are all lazy; +inf
        # where the chain would run past the end. policies.chain_costs carries it to any schedule.
        self.chain = self.chain_t = None
        if chain is not None or chain_t is not None:
            if chain is None or chain_t is None:
                raise GateFileError("a gate file with chains needs both `chain` and `chain_t`")
            chain, chain_t = chain.float().clone(), chain_t.float().clone()
            if chain.dim() != 2 or chain_t.dim() != 1 or chain.shape[0] != len(chain_t) - 1 or not chain.shape[1]:
                raise GateFileError(f"gate chain table has shape {tuple(chain.shape)} for a schedule of "
                                    f"{len(chain_t)} steps; expected ({len(chain_t) - 1}, longest chain)")
            if torch.isnan(chain).any() or (chain == -float("inf")).any() or not torch.isfinite(chain[:, 0]).all():
                raise GateFileError("gate chain table holds NaN or -inf values: the gates are damaged; measure "
                                    "them again")
            if not torch.isfinite(chain_t).all() or (chain_t.diff() >= 0).any() or chain_t.min() < 0 \
                    or chain_t.max() > 999:
                raise GateFileError("gate chain_t must be finite timesteps in 0..999 in sampling (descending) order")
            self.chain, self.chain_t = chain, chain_t
        # A learned forecaster (optional): [block, module, position - 1] = (a, b), training/forecaster.py.
        self.forecast = None
        if forecast is not None:
            forecast = forecast.float().clone()
            if forecast.dim() != 4 or tuple(forecast.shape[:2]) != (info.depth, len(MODULES)) \
                    or forecast.shape[3] != 2 or not forecast.shape[2]:
                raise GateFileError(f"gate forecast coefficients have shape {tuple(forecast.shape)}; expected "
                                    f"({info.depth}, {len(MODULES)}, positions, 2)")
            if not torch.isfinite(forecast).all():
                raise GateFileError("gate forecast coefficients hold NaN or inf values: fit them again")
            self.forecast = forecast
        self._timesteps = torch.tensor(info.timesteps, dtype=torch.float32)
        gaps = self._timesteps.diff()
        # A timestep farther than half the widest bucket gap from every bucket has no gate: compute.
        self.radius = max(1.0, float(gaps.max()) / 2) if len(gaps) else 1.0

    def bucket(self, timestep):
        """Index of the nearest trained bucket for a diffusion timestep, or None if none is near."""
        dist = (self._timesteps - float(timestep)).abs()
        i = int(dist.argmin())
        return i if float(dist[i]) <= self.radius else None

    @property
    def static(self):
        """True when no gate reads its input: decisions depend on the timestep bucket only (one host sync;
        a policy reads it once per run)."""
        return not bool(self.weight.detach().any())

    def logit(self, block, module, bucket, z, static=False):
        """Gate logit per row: <pool(z), w> + bias for z (rows, T, D) -> (rows,) float32. static=True skips
        the input term of a bank known to have none."""
        b = self.bias[block, module, bucket].to(device=z.device, dtype=torch.float32)
        if static:
            return b.expand(z.shape[0])
        w = self.weight[block, module, bucket].to(device=z.device, dtype=torch.float32)   # (D,)
        pooled = z.float().mean(dim=1) if self.info.pooling == "mean" else z.float().sum(dim=1)  # (rows, D)
        return pooled @ w + b

    def check_fits(self, architecture, depth, width, name="these gates"):
        """Raises GateFileError unless the gates were made for this architecture, depth and width."""
        i = self.info
        if (i.architecture, i.depth, i.width) != (architecture, depth, width):
            raise GateFileError(
                f"{name} fit {i.architecture} with depth {i.depth} / width {i.width}, but the model is "
                f"{architecture} with depth {depth} / width {width}: load gates trained for this model, "
                f"or train new ones with the LazyDiT gate trainer")

    def _table(self, steps=None):
        """The calibration table; with `steps`, the one measured at the nearest step count, where the file has
        them (chains make the most laziness depend on the step count: a 10-step run has no room for them)."""
        table = self.info.calibration
        per_steps = self.info.recipe.get("calibration_per_steps") or {}
        if steps is not None and per_steps:
            nearest = min(per_steps, key=lambda n: abs(int(n) - steps))
            table = per_steps[nearest]
        table = sorted(table)
        if table and table[0][0] > 0 and self.info.score == "probability":
            table.insert(0, [0.0, 0.0])          # threshold 0: every score passes, nothing is lazy
        return table

    def expected_ratio(self, threshold, steps=None):
        """Lazy ratio the calibration table predicts at a threshold (linear interpolation), or None."""
        table = self._table(steps)
        if not table:
            return None
        if threshold <= table[0][0]:
            return table[0][1]
        for (t0, r0), (t1, r1) in zip(table, table[1:]):
            if threshold <= t1:
                return r0 + (r1 - r0) * (threshold - t0) / max(t1 - t0, 1e-12)
        return table[-1][1]

    def threshold_for(self, laziness, steps=None):
        """The decision threshold (log λ for log-cost gates) at which the slider's laziness L in [0, 1] is
        met: the calibrated lazy ratio is L times the most these gates allow (the table's last row), so
        the slider spans 0 to the maximum evenly, at `steps` steps where the file calibrated per step
        count. Without a table the threshold is the laziness itself."""
        laziness = min(max(float(laziness), 0.0), 1.0)
        table = self._table(steps)
        if not table:
            return laziness
        if laziness >= 1.0:
            return float(table[-1][0])
        target = laziness * table[-1][1]
        best = table[-1][0]
        for (t0, r0), (t1, r1) in zip(table, table[1:]):
            if r1 >= target:
                best = t0 if r1 <= r0 else t0 + (t1 - t0) * (target - r0) / (r1 - r0)
                break
        return float(min(max(best, 0.0), 1.0)) if self.info.score == "probability" else float(best)

    def _tensors(self):
        out = {"weight": self.weight.detach().float().contiguous(), "bias": self.bias.detach().float().contiguous(),
               "prior": self.prior.float().contiguous(), "trained": self.trained.to(torch.uint8).contiguous()}
        if self.chain is not None:
            out.update(chain=self.chain.contiguous(), chain_t=self.chain_t.contiguous())
        if self.forecast is not None:
            out["forecast"] = self.forecast.contiguous()
        return out

    @property
    def longest_chain(self):
        """Most consecutive lazy steps the measured chain costs cover (1 without a chain table)."""
        return 1 if self.chain is None else self.chain.shape[1]

    def save(self, path):
        save_file(self._tensors(), path, metadata=self.info.to_metadata())

    def to_bytes(self):
        """The gate file's content, for a caller that creates the file itself (never overwriting one)."""
        return save(self._tensors(), metadata=self.info.to_metadata())

    @classmethod
    def load(cls, path, name=None):
        """Loads a gate file strictly; any problem is a GateFileError naming the file."""
        name = name or str(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise GateFileError(f"{name} cannot be read as safetensors ({err}); the file is truncated, corrupt "
                                f"or not a gate file: download or train it again") from err
        info = GateInfo.from_metadata(meta, name)
        missing = {"weight", "trained"} - set(tensors)
        if missing:
            raise GateFileError(f"{name} lacks tensors {sorted(missing)}: not a complete LazyDiT gate file")
        try:
            # Version 1 files have neither bias nor prior.
            return cls(info, tensors["weight"], tensors["trained"], tensors.get("bias"), tensors.get("prior"),
                       tensors.get("chain"), tensors.get("chain_t"), tensors.get("forecast"))
        except GateFileError as err:
            raise GateFileError(f"{name}: {err}") from err


#################################################################################
#               Import of the reference implementation's checkpoints            #
#################################################################################

REFERENCE_KEY = re.compile(r"block_(\d+)_(attn|mlp)_lazy_learning_weight_(\d+)$")


def from_reference(state, num_steps=None, tokens=0, architecture="dit"):
    """GateBank from shawnricecake/lazydit weights {"block_{l}_{attn|mlp}_lazy_learning_weight_{i}": (1, D)}.

    Index i is the respaced step index of a `num_steps` DDIM schedule (0 = the last, cleanest step), so
    bucket i sits at DiT's respaced timestep i. The reference sums over tokens (pooling "sum"). Its
    training leaves odd indices at exactly zero (never trained, §1.6 of the method notes): such buckets
    are marked untrained, so they always compute."""
    state = state.get("model", state)
    found = {}
    for key, value in state.items():
        m = REFERENCE_KEY.search(key)
        if m:
            found[(int(m[1]), MODULES.index(m[2]), int(m[3]))] = value.reshape(-1)
    if not found:
        raise GateFileError("no keys of the form block_{l}_{attn|mlp}_lazy_learning_weight_{i} found")
    depth = 1 + max(k[0] for k in found)
    steps = num_steps or 1 + max(k[2] for k in found)
    width = next(iter(found.values())).numel()
    weight = torch.zeros(depth, len(MODULES), steps, width)
    for (block, module, i), w in found.items():
        weight[block, module, i] = w.float()
    trained = weight.abs().sum(-1) > 0
    info = GateInfo(architecture=architecture, depth=depth, width=width, timesteps=space_timesteps(steps),
                    pooling="sum", tokens=tokens, recipe={"source": "shawnricecake/lazydit checkpoint"})
    return GateBank(info, weight, trained)


def load_reference_checkpoint(path):
    """torch.load of a reference checkpoint without code execution (its "args" is an argparse.Namespace)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lazy_core.engine.gates",
                                description="Convert shawnricecake/lazydit gate checkpoints to LazyDiT gate files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--steps", type=int, default=None, help="step count the gates were trained for (default: inferred)")
    c.add_argument("--tokens", type=int, default=256, help="token count trained at (256 = DiT-XL/2 at 256 px)")
    args = p.parse_args(argv)
    bank = from_reference(load_reference_checkpoint(args.src), args.steps, args.tokens)
    bank.save(args.dst)
    print(f"wrote {args.dst}: depth {bank.info.depth}, width {bank.info.width}, {len(bank.info.timesteps)} buckets")


if __name__ == "__main__":
    main()
