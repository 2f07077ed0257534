"""A PixArt-Σ-shaped checkpoint (width 1152, 16 heads, 2 blocks, random weights) in the official key layout,
loaded by core UNETLoader: what the Sensitivity Schedule costs on it, and the warning for a file that lacks
keys (core only logs them and samples with the weights left unset)."""

import os

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("comfy")

SIGMA = {"image_model": "pixart_sigma", "depth": 2, "hidden_size": 1152, "num_heads": 16, "patch_size": 2,
         "in_channels": 4, "model_max_length": 300, "micro_condition": False}
# The keys of the official PixArt-Σ release (PixArtMS), per block and outside the blocks.
BLOCK_KEYS = {f"{m}.{p}" for m in ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
                                   "cross_attn.proj", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")}
BLOCK_KEYS.add("scale_shift_table")
TOP_KEYS = {"x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias",
            "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias", "t_block.1.weight", "t_block.1.bias",
            "y_embedder.y_embedding", "y_embedder.y_proj.fc1.weight", "y_embedder.y_proj.fc1.bias",
            "y_embedder.y_proj.fc2.weight", "y_embedder.y_proj.fc2.bias", "final_layer.scale_shift_table",
            "final_layer.linear.weight", "final_layer.linear.bias"}
MISSING = "blocks.1.mlp.fc1.weight"
# PixArt's position embedding needs (height + width) / 2 >= 33 latent pixels; 64 x 2 is 32 tokens.
LATENT = {"samples": torch.zeros(1, 4, 64, 2)}


def conditioning(seed, tokens=8):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=g), {}]]          # T5-XXL width


@pytest.fixture(scope="module")
def sigma_files(comfy):
    """sigma.safetensors (complete) and sigma_damaged.safetensors (without MISSING), float16."""
    from comfy import supported_models

    config = supported_models.PixArtSigma(dict(SIGMA))
    config.set_inference_dtype(torch.float32, None)
    net = config.get_model({}, device=torch.device("meta")).diffusion_model
    keys = set(net.state_dict())
    assert keys == TOP_KEYS | {f"blocks.{i}.{k}" for i in range(2) for k in BLOCK_KEYS}, "not the official layout"
    g = torch.Generator().manual_seed(0)
    sd = {k: (0.02 * torch.randn(v.shape, generator=g)).half() for k, v in net.state_dict().items()}
    folder = os.path.join(comfy.base, "models", "diffusion_models")
    save_file(sd, os.path.join(folder, "sigma.safetensors"))
    del sd[MISSING]
    save_file(sd, os.path.join(folder, "sigma_damaged.safetensors"))
    return "sigma.safetensors", "sigma_damaged.safetensors"


def load(name):
    import nodes

    (model,) = nodes.UNETLoader().load_unet(name, "default")
    assert type(model.model.model_config).__name__ == "PixArtSigma"
    return model


def test_schedule_on_pixart_sigma_costs_what_it_measures(sigma_files, counted):
    """The Sensitivity Schedule on the PixArt-Σ shape makes exactly its measuring calls (a guided
    evaluation = the prompt's call and the negative's; the calibration follows from the plan), its
    progress bar's total is those calls from the first update on and it ends at 100 %, and the text says
    the count and the seconds."""
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.train_node import CHECK_CALLS, SCHEDULE_CALLS, SensitivitySchedule

    model = load(sigma_files[0])
    (gates, info), calls, updates = counted(model, lambda: SensitivitySchedule.execute(
        model, "all", 2, 4.0, 0, "sigma", conditioning(1), conditioning(2), LATENT).args)
    recipe = gates.model.info.recipe
    assert calls - recipe["check_calls"] == recipe["model_calls"] == 2 * recipe["measure_calls"] == 2 * SCHEDULE_CALLS
    assert recipe["check_calls"] == 2 * CHECK_CALLS                   # the prompt's call and the negative's
    assert updates[0] == (0, calls) and updates[-1] == (calls, calls) and all(t == calls for _, t in updates)
    assert f"in {recipe['model_calls']} model calls" in info and "calibrated from the plan, no model calls" in info
    assert f"checked on them in {recipe['check_calls']} model calls" in info
    bank = gates.model
    assert (bank.info.architecture, bank.info.depth, bank.info.width) == ("pixart", 2, 1152)
    _, expected = ApplyLazyGates.execute(model, gates, 1.0, 4, "auto", "auto").args
    assert "zero or not finite" not in expected and "replaces" not in expected, expected


def test_missing_keys_are_named_when_a_cache_is_applied(sigma_files, caplog):
    """Core UNETLoader only logs a missing key and samples with its weight as allocated; every LazyDiT node
    names it in the log and Apply Lazy Gates in its text too; a second LazyDiT patch on the same MODEL
    says it replaces the first. Weights that are all zero (a blanked file) are named as such."""
    import comfy.model_patcher
    from lazydit.lazy_core.engine.gates import GateBank, GateInfo
    from lazydit.nodes.lazy_hook import patch_notes
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.sibling_nodes import ForaNode

    gates = comfy.model_patcher.ModelPatcher(GateBank(GateInfo("pixart", 2, 1152, [0, 999])), torch.device("cpu"),
                                             torch.device("cpu"))
    damaged = load(sigma_files[1])
    with caplog.at_level("WARNING"):
        fora = ForaNode.execute(damaged, 2).args[0]
        _, expected = ApplyLazyGates.execute(fora, gates, 0.5, 4, "auto", "auto").args
    assert f"the checkpoint lacks 1 of this model's weights ({MISSING})" in expected, expected
    assert "replaces the MODEL's earlier LazyDiT patch (FORA, interval 2" in expected, expected
    assert MISSING in caplog.text and "replaces" in caplog.text
    assert caplog.text.count(MISSING) >= 2, "FORA's patch and Apply's both name it"

    intact = load(sigma_files[0])
    assert patch_notes(intact) == []
    net = intact.model.diffusion_model
    with torch.no_grad():
        net.blocks[0].attn.proj.weight.zero_()
    net.__dict__.pop("_lazydit_blank", None)
    assert patch_notes(intact) == ["1 weight tensors of this model are all zero or not finite "
                                   "(blocks.0.attn.proj.weight): a damaged checkpoint, whose images are wrong "
                                   "with or without a cache; check the file"]
