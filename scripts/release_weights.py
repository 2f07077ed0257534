"""Writes weights/manifest.json: sha256, config, recipe, data, licence and training figures of every shipped
file (quality figures are added by `scripts/bench_quality.py --manifest --write`).

    .venv/bin/python scripts/release_weights.py
"""

import json
import os

import checkout  # noqa: F401  (binds `lazydit` to this checkout)
from lazydit.lazy_core.models.checkpoint import file_sha256
from safetensors import safe_open

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DATA = {"name": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017)", "source": "Debian package dataset-fashion-mnist",
        "licence": "MIT (Zalando SE)", "split": "published train split (60,000) for training, test split "
                                              "(10,000) for evaluation"}


def metadata(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def gates_entry(what, command):
    def entry(m):
        recipe = json.loads(m["recipe"])
        recipe.pop("calibration_per_steps", None)
        return {"what": what, "architecture": m["architecture"], "depth": int(m["depth"]),
                "width": int(m["width"]), "pooling": m["pooling"], "score": m.get("score", "probability"),
                "granularity": m.get("granularity", "module"), "buckets": len(json.loads(m["timesteps"])),
                "calibration": json.loads(m["calibration"]), "recipe": recipe, "command": command,
                "licence": "MIT"}
    return entry


def main():
    path = os.path.join(WEIGHTS, "manifest.json")
    manifest = json.load(open(path)) if os.path.exists(path) else {}
    entries = {
        "dit_demo_fashion.safetensors": lambda m: {
            "what": "the embedded demo model: class-conditional DiT-Demo/2 (same code as DiT-XL/2), EMA weights, fp16",
            "config": json.loads(m["config"]),
            "image": "128x128 px in ComfyUI (latent 4x16x16 = 64 tokens at patch 2); the pixel VAE stand-in "
                     "maps it to a 32x32 grey image (Fashion-MNIST padded from 28x28)",
            "recipe": {"objective": "eps prediction + learned sigma (MSE + VB), linear betas 1e-4..0.02, "
                                    "1000 steps", "label_dropout": 0.1, "optimizer": "AdamW lr 1e-3, wd 0, "
                                    "200-step warm-up, grad clip 1", "batch": 64, "ema": "0.999 (warm-up)",
                       "augmentation": "horizontal flips", "steps": int(m["steps"]), "seed": 0,
                       "command": "python -m lazy_core.demo.train_demo --out runs/demo --steps "
                                  + m["steps"]},
            "train_seconds": int(m["train_seconds"]),
            "data": DATA, "licence": "MIT"},
        "fashion_classifier.safetensors": lambda m: {
            "what": "Fashion-MNIST CNN: class accuracy of samples, and the 128-d feature space for FID",
            "test_accuracy": float(m["test_accuracy"]), "epochs": int(m["epochs"]),
            "command": "python -m lazy_core.demo.classifier", "data": DATA, "licence": "MIT"},
        "dit_demo_fashion_gates.safetensors": gates_entry(
            "learned LazyDiT gates for the demo model: the sensitivity objective (costs measured on the "
            "model's own guided trajectories, the gates fitted to each image's cost)",
            "python -m lazy_core.training.train_gates --model weights/dit_demo_fashion.safetensors "
            "--out weights/dit_demo_fashion_gates.safetensors --images 16"),
        "dit_demo_fashion_schedule.safetensors": gates_entry(
            "training-free sensitivity schedule for the demo model (timestep-only decisions)",
            "python -m lazy_core.training.sensitivity --model weights/dit_demo_fashion.safetensors "
            "--out weights/dit_demo_fashion_schedule.safetensors --images 16 && python -m lazy_core.training.calibrate "
            "--model weights/dit_demo_fashion.safetensors --gates weights/dit_demo_fashion_schedule.safetensors "
            "--check"),
        "dit_demo_fashion_gates_local.safetensors": gates_entry(
            "LazyDiT gates for the demo model trained with the paper's local recipe (for comparison)",
            "python -m lazy_core.training.train_gates --model weights/dit_demo_fashion.safetensors --out "
            "weights/dit_demo_fashion_gates_local.safetensors --objective local --iters 400 --batch 32 "
            "--lr 1e-3 --rho 3e-5 --seed 0 --pool 64"),
        "dydit_demo_fashion.safetensors": lambda m: {
            "what": "DyDiT of the demo model (Zhao et al., ICLR 2025): the demo DiT fine-tuned with timestep-wise "
                    "dynamic width (head and MLP channel-group routers) and spatial token routers to a FLOPs "
                    "target of lambda = 0.5, official checkpoint layout, EMA weights, fp16",
            "config": json.loads(m["config"]),
            "recipe": {**json.loads(m["dydit_recipe"]),
                       "command": "python -m lazy_core.training.train_dydit --model weights/dit_demo_fashion"
                                  ".safetensors --out weights/dydit_demo_fashion.safetensors --target 0.5"},
            "train_seconds": int(float(json.loads(m["dydit_recipe"])["train_seconds"])),
            "data": DATA, "licence": "MIT"},
    }
    for name, describe in entries.items():
        file = os.path.join(WEIGHTS, name)
        if not os.path.exists(file):
            continue
        entry = manifest.get(name, {})
        entry.update(describe(metadata(file)))
        entry["sha256"] = file_sha256(file)
        entry["bytes"] = os.path.getsize(file)
        manifest[name] = entry
    json.dump(manifest, open(path, "w"), indent=1)
    print(f"wrote {path}: {', '.join(manifest)}")


if __name__ == "__main__":
    main()
