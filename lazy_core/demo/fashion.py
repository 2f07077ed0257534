"""Fashion-MNIST (Zalando, MIT licence) from Debian's dataset-fashion-mnist package, read with numpy."""

import gzip
import os

import numpy as np

DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
SPLITS = {"train": "train", "test": "t10k"}


def names_for(num_classes):
    """The class names labels may use for a model: the demo set's for a 10-class model, else none."""
    return CLASSES if num_classes == len(CLASSES) else ()


def load(split="train", data_dir=DATA_DIR):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the published train (60k) or test (10k) split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    prefix = os.path.join(data_dir, SPLITS[split])
    try:
        with gzip.open(f"{prefix}-images-idx3-ubyte.gz", "rb") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(f"{prefix}-labels-idx1-ubyte.gz", "rb") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {data_dir}: install Debian's dataset-fashion-mnist package "
            f"(scripts/setup.sh does) or set FASHION_MNIST_DIR") from err
    return images, labels


def to_grey32(images):
    """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32) in [0, 1], padded with background."""
    x = images.astype(np.float32) / 255.0
    return np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None]
