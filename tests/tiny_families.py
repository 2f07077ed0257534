"""Tiny random-weight models of ComfyUI's diffusion-transformer families, built by ComfyUI's own classes.

Each family is made the way ComfyUI makes it from a checkpoint: its comfy.supported_models config, that
config's comfy.model_base model (and so the family's real diffusion_model class), and a
comfy.model_patcher.ModelPatcher, on the CPU in float32. Only the sizes are small (hidden width 32-64, two
heads or one, two double/joint and two single blocks, a few latent tokens, six text tokens), so building one
and a four-step guided sample take a fraction of a second.

    from tiny_families import FAMILIES, build, sample
    patcher, positive, negative, latent = build("flux")
    samples = sample(patcher, positive, negative, latent)

Use it once ComfyUI is importable (the `comfy` fixture of tests/conftest.py has run); the imports of ComfyUI
are inside the functions so that importing this module needs only torch. pytest runs with
--import-mode=importlib, which does not put tests/ on sys.path: a test adds its own folder first.
The same code serves every ComfyUI tree the tests run in: where the trees' model classes take different
arguments, the configs below hold the union and each class is given the keys it declares (_accepted).
"""

import dataclasses
import importlib
import inspect

import torch

FAMILIES = ("sd3", "flux", "chroma", "wan", "hunyuan_video", "qwen_image", "ltxv", "auraflow")

TOKENS = 6            # text tokens, equal for both prompts so ComfyUI batches cond and uncond in one call
TEXT = 32             # width of the text-encoder features (and of pooled vectors) fed to every family

# Per family: the comfy.supported_models class, the diffusion model's import path (its constructor decides
# which config keys this tree knows), the unet config (the keys model_detection would produce for a real
# checkpoint, at tiny sizes), the latent shape, and the conditioning extras beyond the text features.
# Rotary axes ([4, 6, 6]) must add up to the head width (hidden / heads = 16).
SPECS = {
    # MMDiT fixes width = 64 * depth and heads = depth; num_blocks sets the joint block count apart from it.
    # No num_patches: the position embedding is then computed (sin-cos), not a buffer left uninitialised.
    # The context embedder maps the text features to that width (64 for depth 1).
    "sd3": dict(
        config="SD3", net="comfy.ldm.modules.diffusionmodules.mmdit.MMDiT",
        unet={"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "num_blocks": 2,
              "adm_in_channels": TEXT, "pos_embed_scaling_factor": None, "qk_norm": "rms",
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": TEXT, "out_features": 64}}},
        latent=(1, 16, 8, 8), pooled=True),
    "flux": dict(
        config="Flux", net="comfy.ldm.flux.model.Flux", params="FluxParams",
        unet={"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": TEXT,
              "context_in_dim": TEXT, "hidden_size": 32, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2,
              "depth_single_blocks": 2, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2,
              "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": []},
        latent=(1, 16, 8, 8), pooled=True),
    # Chroma's channels count the patch (16 latent channels x 2 x 2); its Approximator's input is fixed at
    # 64 (16 timestep + 16 guidance + 32 index features) and its output is the hidden width.
    "chroma": dict(
        config="Chroma", net="comfy.ldm.chroma.model.Chroma", params="ChromaParams",
        unet={"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": TEXT,
              "hidden_size": 32, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
              "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64,
              "out_dim": 32, "hidden_dim": 32, "n_layers": 1, "txt_ids_dims": [], "vec_in_dim": None},
        latent=(1, 16, 8, 8), pooled=False),
    "wan": dict(
        config="WAN21_T2V", net="comfy.ldm.wan.model.WanModel",
        unet={"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": TOKENS,
              "in_dim": 16, "dim": 32, "ffn_dim": 64, "freq_dim": 32, "text_dim": TEXT, "out_dim": 16,
              "num_heads": 2, "num_layers": 2, "eps": 1e-6},
        latent=(1, 16, 2, 8, 8), pooled=False),
    "hunyuan_video": dict(
        config="HunyuanVideo", net="comfy.ldm.hunyuan_video.model.HunyuanVideo", params="HunyuanVideoParams",
        unet={"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": TEXT,
              "context_in_dim": TEXT, "hidden_size": 32, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2,
              "depth_single_blocks": 2, "axes_dim": [4, 6, 6], "theta": 256, "patch_size": [1, 2, 2],
              "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False,
              "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False},
        latent=(1, 16, 2, 8, 8), pooled=True),
    # Qwen-Image's latent is a one-frame video (its latent format has three dimensions).
    "qwen_image": dict(
        config="QwenImage", net="comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",
        unet={"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
              "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": TEXT,
              "pooled_projection_dim": TEXT, "axes_dims_rope": (4, 6, 6)},
        latent=(1, 16, 1, 8, 8), pooled=False),
    # LTXV patchifies 1 x 1 x 1, so its 128 latent channels are the token width in; its forward takes the
    # text attention mask as a required argument, which its text encoder always supplies.
    "ltxv": dict(
        config="LTXV", net="comfy.ldm.lightricks.model.LTXVModel",
        unet={"image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 32, "attention_head_dim": 16,
              "num_attention_heads": 2, "caption_channels": TEXT, "num_layers": 2},
        latent=(1, 128, 2, 4, 4), pooled=False, mask=True),
    # AuraFlow counts all layers in n_layers; the first n_double_layers are the joint ones. max_seq is the
    # learned position table (8 x 8 patches), cropped to the latent.
    "auraflow": dict(
        config="AuraFlow", net="comfy.ldm.aura.mmdit.MMDiT",
        unet={"in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 32, "n_layers": 4,
              "n_double_layers": 2, "n_heads": 2, "global_conddim": 32, "cond_seq_dim": TEXT, "max_seq": 64},
        latent=(1, 4, 8, 8), pooled=False),
}


def _accepted(spec):
    """The spec's unet config restricted to what this tree's model class takes: the fields of its params
    dataclass (Flux, Chroma, HunyuanVideo), else its constructor's named arguments (with **kwargs, all).
    Newer trees added required dataclass fields (txt_ids_dims, vec_in_dim, meanflow_sum) that older ones
    reject, so the spec carries them and this drops the ones a tree does not know."""
    module_name, class_name = spec["net"].rsplit(".", 1)
    module = importlib.import_module(module_name)
    unet = dict(spec["unet"])
    if "params" in spec:
        known = {f.name for f in dataclasses.fields(getattr(module, spec["params"]))}
        known.add("image_model")                     # taken by the constructor itself, not the dataclass
    else:
        parameters = inspect.signature(getattr(module, class_name).__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return unet
        known = set(parameters)
    return {k: v for k, v in unet.items() if k in known}


def _randomize(net, seed):
    """Overwrites every parameter and floating buffer with seeded noise.

    ComfyUI allocates weights without initialising them (checkpoints fill them) and the reference inits zero
    some output layers and gates; here linear and convolution weights get a 1/sqrt(fan-in) scale, which keeps
    activations of order one through the blocks, norm scales sit near one, and everything else (biases,
    modulation tables, position tables, register tokens) gets small noise. So no layer is zero and the
    output depends on every block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            is_norm = "norm" in type(module).__name__.lower()
            is_matrix = isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.Embedding))
            for name, tensor in list(module.named_parameters(recurse=False)) + \
                    list(module.named_buffers(recurse=False)):
                if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0:
                    continue
                noise = torch.randn(tensor.shape, generator=g, dtype=torch.float32)
                if is_matrix and name == "weight" and tensor.ndim >= 2:
                    value = noise / (tensor[0].numel() ** 0.5)
                elif is_norm and name in ("weight", "scale"):
                    value = 1.0 + 0.1 * noise
                else:
                    value = 0.1 * noise
                tensor.copy_(value.to(tensor.dtype))


def build(name, seed=0, unet=None, latent=None):
    """(patcher, positive, negative, latent) for a family of FAMILIES: a ModelPatcher on the CPU around the
    family's ComfyUI model with seeded random weights, two different prompts in CONDITIONING format
    ([[features, extras]]) and an empty latent {"samples": zeros} of the family's latent shape. `unet` and
    `latent` override the spec's sizes (scripts/bench_families.py builds larger ones)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    spec = dict(SPECS[name])
    spec["unet"] = {**spec["unet"], **(unet or {})}
    spec["latent"] = latent or spec["latent"]
    config = getattr(comfy.supported_models, spec["config"])(_accepted(spec))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("cpu"))
    _randomize(model.diffusion_model, seed)
    model.diffusion_model.eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    positive, negative = (_conditioning(spec, seed * 2 + k + 1) for k in (0, 1))
    return patcher, positive, negative, {"samples": torch.zeros(spec["latent"])}


def _conditioning(spec, seed):
    """One prompt as a text encoder node would hand it over: text features plus "pooled_output" (a vector
    for the families that embed one, None for the rest: the text nodes always set the key, and Flux-derived
    models read it) and, for LTXV, the integer attention mask of the tokens."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, TOKENS, TEXT, generator=g)
    extras = {"pooled_output": torch.randn(1, TEXT, generator=g) if spec["pooled"] else None}
    if spec.get("mask"):
        extras["attention_mask"] = torch.ones(1, TOKENS, dtype=torch.long)
    return [[features, extras]]


def sample(patcher, positive, negative, latent, steps=4, cfg=3.0, seed=0):
    """The latent tensor after `steps` of euler on the simple schedule with classifier-free guidance at
    `cfg`, through core ComfyUI's KSampler path (nodes.common_ksampler: noise from the seed, then
    comfy.sample.sample)."""
    import nodes

    (out,) = nodes.common_ksampler(patcher, seed, steps, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]
