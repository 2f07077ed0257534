"""Class-label conditioning for DiT: the label travels as an integer condition, one row per label."""

import torch
from comfy_api.latest import io

from ..lazy_core.demo.fashion import names_for
from ..lazy_core.models.labels import parse_labels
from .lazy_nodes import CATEGORY


def num_classes(model):
    config = getattr(model.model.diffusion_model, "config", None)
    if config is None or not hasattr(config, "num_classes"):
        raise ValueError("class labels condition DiT models (Load DiT Checkpoint); this MODEL is not a DiT")
    return config.num_classes


def conditioning(labels):
    # The placeholder context is never read by DiT; the label rides in `class_label` (an integer tensor).
    return [[torch.zeros(1, 1, 1), {"class_label": torch.tensor(labels, dtype=torch.long)}]]


class ClassLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_ClassLabel",
            display_name="LazyDiT DiT Class Label",
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
        n = num_classes(model)
        return io.NodeOutput(conditioning(parse_labels(labels, n, names_for(n))))


class NullLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LazyDiT_NullLabel",
            display_name="LazyDiT DiT Null Label",
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
