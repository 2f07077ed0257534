"""Class-label conditioning for DiT: the label travels as an integer condition, one row per label."""

import torch
from comfy_api.latest import io

from ..lazy_core.demo.fashion import CLASSES as FASHION
from .lazy_nodes import CATEGORY


def num_classes(model):
    config = getattr(model.model.diffusion_model, "config", None)
    if config is None or not hasattr(config, "num_classes"):
        raise ValueError("class labels condition DiT models (Load DiT Checkpoint); this MODEL is not a DiT")
    return config.num_classes


def parse(text, n):
    """'1, 5, 9', '0-9', class names of the demo set -> list of indices in 0..n-1; errors name the entry."""
    names = {c.lower(): i for i, c in enumerate(FASHION)} if n == len(FASHION) else {}
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low = part.lower()
        if low in names:
            out.append(names[low])
        elif "-" in part and all(s.strip().isdigit() for s in part.split("-", 1)):
            a, b = (int(s) for s in part.split("-", 1))
            out.extend(range(a, b + 1))
        elif part.split(":")[0].strip().isdigit():
            out.append(int(part.split(":")[0]))
        else:
            hint = f" or a name ({', '.join(FASHION)})" if names else ""
            raise ValueError(f"class label {part!r} is not an index in 0..{n - 1}{hint}")
    bad = [i for i in out if not 0 <= i < n]
    if bad or not out:
        raise ValueError(f"class labels must be indices in 0..{n - 1}; got {bad or 'none'}")
    return out


def conditioning(labels):
    # The placeholder context is never read by DiT; the label rides in `class_label` (an integer tensor).
    return [[torch.zeros(1, 1, 1), {"class_label": torch.tensor(labels, dtype=torch.long)}]]


class ClassLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_ClassLabel",
            display_name="DiT Class Label",
            category=CATEGORY,
            description="The class(es) a DiT should draw, for the positive input. Several labels ('0-9' or "
                        "'1, 207, 360') give one image per label: set the latent batch size to their count. "
                        "ImageNet DiTs take indices 0-999 (e.g. 207 = golden retriever); the demo model takes "
                        "0-9 or the Fashion-MNIST names (Sneaker, Bag, ...).",
            inputs=[io.Model.Input("model", tooltip="The DiT (tells how many classes it has)."),
                    io.String.Input("labels", default="207",
                                    tooltip="Class indices or demo class names, comma separated; a-b is a range.")],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, labels):
        return io.NodeOutput(conditioning(parse(labels, num_classes(model))))


class NullLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_NullLabel",
            display_name="DiT Null Label",
            category=CATEGORY,
            description="The 'no class' label DiT was trained with for classifier-free guidance: connect it to "
                        "the negative input.",
            inputs=[io.Model.Input("model", tooltip="The DiT.")],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model):
        return io.NodeOutput(conditioning([num_classes(model)]))


NODES = [ClassLabel, NullLabel]
