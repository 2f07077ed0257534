"""What Apply Lazy Gates composes with, run through ComfyUI: core LoRA (LoraLoaderModelOnly, with a LoRA file
for the demo model made here) before and after it, LoRA and TorchCompileModel together; and what it refuses,
clearly and before any sampling: core EasyCache and LazyCache on the same MODEL."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

DEMO = "dit_demo_fashion.safetensors (built in)"
GATES = "dit_demo_fashion_gates.safetensors (built in)"
LORA = "lazydit_test_lora.safetensors"


@pytest.fixture(scope="module")
def lora(comfy):
    """A rank-4 LoRA on every attention and MLP linear of the demo model, in ComfyUI's generic key format
    (`diffusion_model.<module>.lora_up/lora_down.weight`), saved to models/loras."""
    from lazydit.nodes.loaders import LoadDiT

    net = LoadDiT.execute(DEMO, "auto").args[0].model.diffusion_model
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in net.named_modules():
        if name.startswith("blocks.") and name.rsplit(".", 1)[-1] in ("qkv", "proj", "fc1", "fc2"):
            out_f, in_f = module.weight.shape
            tensors[f"diffusion_model.{name}.lora_up.weight"] = 0.05 * torch.randn(out_f, 4, generator=g)
            tensors[f"diffusion_model.{name}.lora_down.weight"] = 0.05 * torch.randn(4, in_f, generator=g)
    assert len(tensors) == 2 * 4 * net.config.depth
    folder = os.path.join(comfy.base, "models", "loras")
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, LORA))
    return LORA


def workflow(chain, prefix, laziness=0.0):
    """Loader -> the `chain` of model nodes -> KSampler (2 images, 6 steps) -> SaveLatent. chain: names from
    'lora', 'lazy' (Apply Lazy Gates at `laziness`), 'compile', 'easycache', 'lazycache'."""
    nodes = {
        "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": LORA, "strength_model": 1.0}},
        "lazy": {"class_type": "LazyDiT_ApplyGates", "inputs": {"gates": ["2", 0], "laziness": laziness,
                                                                "max_lazy_steps": 1, "cache_device": "auto",
                                                                "cache_dtype": "auto"}},
        "compile": {"class_type": "TorchCompileModel", "inputs": {"backend": "inductor"}},
        "easycache": {"class_type": "EasyCache", "inputs": {"reuse_threshold": 0.2, "start_percent": 0.0,
                                                            "end_percent": 1.0, "verbose": False}},
        "lazycache": {"class_type": "LazyCache", "inputs": {"reuse_threshold": 0.2, "start_percent": 0.0,
                                                            "end_percent": 1.0, "verbose": False}},
    }
    prompt = {"1": {"class_type": "LazyDiT_DiTLoader", "inputs": {"ckpt_name": DEMO, "latent": "auto"}},
              "2": {"class_type": "LazyDiT_LoadGates", "inputs": {"gate_name": GATES}},
              "4": {"class_type": "LazyDiT_ClassLabel", "inputs": {"model": ["1", 0], "labels": "Sneaker, Bag"}},
              "5": {"class_type": "LazyDiT_NullLabel", "inputs": {"model": ["1", 0]}},
              "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 2}}}
    source = ["1", 0]
    for i, name in enumerate(chain):
        node = str(20 + i)
        prompt[node] = {**nodes[name], "inputs": {**nodes[name]["inputs"], "model": source}}
        source = [node, 0]
    prompt["7"] = {"class_type": "KSampler", "inputs": {"model": source, "positive": ["4", 0], "negative": ["5", 0],
                                                        "latent_image": ["6", 0], "seed": 3, "steps": 6, "cfg": 4.0,
                                                        "sampler_name": "euler", "scheduler": "normal",
                                                        "denoise": 1.0}}
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix}}
    return prompt


def sampled(comfy, chain, laziness=0.0):
    """The sampled latent of a workflow, as SaveLatent wrote it."""
    prefix = "_".join(chain) or "plain"
    out = comfy.run(workflow(chain, f"{prefix}_{laziness}", laziness))["9"]["latents"][0]
    return load_file(os.path.join(comfy.output, out["subfolder"], out["filename"]))["latent_tensor"]


def test_lora_before_or_after_apply(comfy, lora):
    """At laziness 0, LoRA then Apply and Apply then LoRA both give exactly the LoRA'd exact run; lazy, the LoRA
    still acts (the lazy run with it differs from the lazy run without) and the run is lazy."""
    plain = sampled(comfy, [])
    exact = sampled(comfy, ["lora"])
    assert not torch.equal(exact, plain), "the LoRA changes nothing"
    assert torch.equal(sampled(comfy, ["lora", "lazy"]), exact)
    assert torch.equal(sampled(comfy, ["lazy", "lora"]), exact)
    lazy_lora = sampled(comfy, ["lora", "lazy"], 0.9)
    assert not torch.equal(lazy_lora, exact), "laziness 0.9 was not lazy"
    assert not torch.equal(lazy_lora, sampled(comfy, ["lazy"], 0.9)), "the LoRA does not act on the lazy run"
    assert torch.equal(sampled(comfy, ["lazy", "lora"], 0.9), lazy_lora), "the order changes the lazy run"


def test_lora_lazy_and_torch_compile_together(comfy, lora):
    """LoRA, Apply Lazy Gates and TorchCompileModel in one chain: the compiled lazy run matches the eager one
    within float rounding, and stays lazy."""
    torch._dynamo.reset()
    eager = sampled(comfy, ["lora", "lazy"], 0.9)
    compiled = sampled(comfy, ["lora", "lazy", "compile"], 0.9)
    exact = sampled(comfy, ["lora"])
    diff = float((compiled - eager).abs().max())
    assert diff < 1e-3, f"compiled and eager lazy runs differ by {diff}"
    assert float((compiled - exact).abs().max()) > 10 * diff, "the compiled run was not lazy"


@pytest.mark.parametrize("cache", ["easycache", "lazycache"])
@pytest.mark.parametrize("order", ["cache first", "lazy first"])
def test_core_caches_are_refused_with_apply(comfy, clean_output, cache, order):
    """Core EasyCache / LazyCache on the same MODEL as Apply Lazy Gates, in either order, fail with a message
    that names the core cache and the fix, before the sampler calls the model (nothing is saved)."""
    from comfy_headless import WorkflowError

    chain = [cache, "lazy"] if order == "cache first" else ["lazy", cache]
    name = {"easycache": "EasyCache", "lazycache": "LazyCache"}[cache]
    with pytest.raises(WorkflowError, match=f"this MODEL carries core {name} as well as a LazyDiT patch.*Use one "
                                            f"of them: remove the {name} node"):
        comfy.run(workflow(chain, "refused", 0.5))
    assert not os.listdir(clean_output), "the sampler must not have run"


@pytest.mark.parametrize("gates", [True, False], ids=["gates", "fora"])
def test_sweep_refuses_a_core_cache_before_the_exact_column(comfy, gates):
    """A Sweep of a MODEL carrying core EasyCache (with gates, or of a FORA patch) is refused before its first
    model call, not after sampling the exact column."""
    import comfy_extras.nodes_easycache as easycache
    from lazydit.nodes.labels import ClassLabel, NullLabel
    from lazydit.nodes.lazy_nodes import LoadLazyGates
    from lazydit.nodes.loaders import LoadDemoVAE, LoadDiT
    from lazydit.nodes.sibling_nodes import ForaNode
    from lazydit.nodes.tuning import LazinessSweep

    model = LoadDiT.execute(DEMO, "auto").args[0]
    pos, neg = ClassLabel.execute(model, "Bag").args[0], NullLabel.execute(model).args[0]
    lazy_gates = LoadLazyGates.execute(GATES).args[0] if gates else None
    source = model if gates else ForaNode.execute(model, 2).args[0]
    cached = easycache.EasyCacheNode.execute(source, 0.2, 0.0, 1.0, False).args[0]
    calls = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="this MODEL carries core EasyCache as well as a LazyDiT patch"):
            LazinessSweep.execute(cached, pos, neg, {"samples": torch.zeros(1, 4, 16, 16)},
                                  LoadDemoVAE.execute().args[0], 0, 4, 4.0, "euler", "normal", "0.5", lazy_gates)
    finally:
        hook.remove()
    assert not calls, f"{len(calls)} model calls before refusing"
