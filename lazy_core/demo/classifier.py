"""A small Fashion-MNIST CNN: the feature space for FID and the judge of class accuracy of samples.

    python -m lazy_core.demo.classifier --out weights/fashion_classifier.safetensors
"""

import argparse
import logging
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import fashion

log = logging.getLogger(__name__)


class FashionClassifier(nn.Module):
    """Three conv stages on a 32x32 grey image, a 128-d feature layer, 10 logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x):
        """(N, 1, 32, 32) in [0, 1] -> (N, 128) penultimate features."""
        x = F.max_pool2d(F.relu(self.conv1(x * 2 - 1)), 2)     # (N, 32, 16, 16)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)             # (N, 64, 8, 8)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)             # (N, 128, 4, 4)
        return F.relu(self.fc(x.flatten(1)))                   # (N, 128)

    def forward(self, x):
        return self.head(self.features(x))

    @classmethod
    def load(cls, path):
        model = cls()
        model.load_state_dict(load_file(str(path)), strict=True)
        return model.eval()


@torch.no_grad()
def evaluate(model, images, labels, batch=1000):
    """(accuracy, features) of a classifier on (N, 1, 32, 32) images."""
    feats, correct = [], 0
    for i in range(0, len(images), batch):
        f = model.features(images[i:i + batch])
        feats.append(f)
        correct += int((model.head(f).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images), torch.cat(feats)


def main(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x_train, y_train = fashion.load("train")
    x_test, y_test = fashion.load("test")
    x_train, x_test = torch.from_numpy(fashion.to_grey32(x_train)), torch.from_numpy(fashion.to_grey32(x_test))
    y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(x_train) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm) - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            x = x_train[idx]
            x = torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x, x.flip(-1))
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        acc, _ = evaluate(model, x_test, y_test)
        log.info("epoch %d: loss %.3f, test accuracy %.2f%% (%.0f s)", epoch + 1, loss.item(), 100 * acc,
                 time.time() - t0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out,
              metadata={"test_accuracy": f"{acc:.4f}", "epochs": str(args.epochs), "seed": str(args.seed)})
    log.info("saved %s", args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="weights/fashion_classifier.safetensors")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    main(p.parse_args())
