"""Bad inputs inside the real ComfyUI: each is refused with a short error that names the input, the value and
the fix, before any sampling; and DiT's own schedule and guidance through SamplerCustom."""

import copy
import json
import os

import pytest
import torch
from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
from lazydit.lazy_core.models.dit import DiT
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_WORKFLOW = json.load(open(os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")))
DEMO = "dit_demo_fashion.safetensors (built in)"
NAN = float("nan")


def demo_workflow(changes=(), steps=3):
    """The demo workflow (loader 1, gates 2, apply 3, labels 4, KSampler 7) with inputs replaced."""
    wf = copy.deepcopy(DEMO_WORKFLOW)
    wf["7"]["inputs"]["steps"] = steps
    for node, name, value in changes:
        wf[node]["inputs"][name] = value
    return wf


def sibling_workflow(class_type, **inputs):
    """Loader -> a sibling cache node -> KSampler -> SaveLatent."""
    wf = demo_workflow()
    wf["3"] = {"class_type": class_type, "inputs": {"model": ["1", 0], **inputs}}
    for node in ("2", "11", "12"):
        del wf[node]
    return wf


def load(name=DEMO, latent="auto", cfg_mode="all channels"):
    from lazydit.nodes.loaders import LoadDiT
    return LoadDiT.execute(name, latent, cfg_mode).args[0]


REFUSED = {
    "laziness nan": ([("3", "laziness", NAN)], "laziness = nan is not a number in 0.0..1.0"),
    "laziness inf": ([("3", "laziness", float("inf"))], "laziness = inf is not a number in 0.0..1.0"),
    "laziness above": ([("3", "laziness", 1.5)], "laziness = 1.5 is not a number in 0.0..1.0"),
    "cache_device": ([("3", "cache_device", "cuda:7")], "cache_device = 'cuda:7' is not one of 'auto', 'cpu'"),
    "cache_dtype": ([("3", "cache_dtype", "float8")], "cache_dtype = 'float8' is not one of 'auto', 'float16'"),
    "reuse": ([("3", "reuse", "copy")], "reuse = 'copy' is not one of 'extrapolate', 'repeat'"),
    "latent": ([("1", "latent", "vae")], "latent = 'vae' is not one of 'auto', 'sd15', 'pixel'"),
    "cfg_mode": ([("1", "cfg_mode", "half")], "cfg_mode = 'half' is not one of 'all channels', 'official DiT"),
    "ckpt_name": ([("1", "ckpt_name", "nothere.pt")], "ckpt_name = 'nothere.pt' is not one of"),
    "gate_name": ([("2", "gate_name", "../../gates.safetensors")], "gate_name = '../../gates.safetensors' is not"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_widget_values_are_refused_when_queued(comfy, case):
    """NaN, out-of-range and off-list values fail ComfyUI's validation (nothing runs), naming the input."""
    changes, message = REFUSED[case]
    with pytest.raises(RuntimeError, match="invalid workflow") as err:
        comfy.run(demo_workflow(changes))
    assert message in str(err.value), str(err.value)[-600:]


SIBLINGS = {
    "delta nan share": ("LazyDiT_DeltaDiT", dict(cached_share=NAN, boundary_percent=0.5, interval=2),
                        "cached_share = nan is not a number in 0.05..1.0"),
    "delta nan boundary": ("LazyDiT_DeltaDiT", dict(cached_share=0.5, boundary_percent=NAN, interval=2),
                           "boundary_percent = nan is not a number in 0.0..1.0"),
    "delta -inf boundary": ("LazyDiT_DeltaDiT", dict(cached_share=0.5, boundary_percent=-float("inf"),
                                                     interval=2), "boundary_percent = -inf"),
    "fora reuse": ("LazyDiT_FORA", dict(interval=2, reuse="guess"), "reuse = 'guess' is not one of"),
}


@pytest.mark.parametrize("case", SIBLINGS, ids=list(SIBLINGS))
def test_bad_sibling_inputs_are_refused_when_queued(comfy, case):
    """Δ-DiT's NaN/inf inputs and FORA's off-list reuse fail validation instead of a raw error in a sampler."""
    class_type, inputs, message = SIBLINGS[case]
    with pytest.raises(RuntimeError, match="invalid workflow") as err:
        comfy.run(sibling_workflow(class_type, **inputs))
    assert message in str(err.value), str(err.value)[-600:]


def test_linked_values_are_checked_in_execute(comfy):
    """Values that arrive through a link skip validate_inputs; execute checks them before patching."""
    from lazydit.nodes.lazy_nodes import ApplyLazyGates, Laziness, LoadLazyGates
    from lazydit.nodes.sibling_nodes import DeltaDiTNode
    from lazydit.nodes.train_node import SensitivitySchedule, TrainLazyGates

    model = load()
    gates = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args[0]
    with pytest.raises(ValueError, match="laziness = nan is not a number in 0.0..1.0"):
        ApplyLazyGates.execute(model, gates, NAN, 1, "auto", "auto")
    with pytest.raises(ValueError, match="cache_device = 'cuda:7' is not one of"):
        ApplyLazyGates.execute(model, gates, 0.5, 1, "cuda:7", "auto")
    with pytest.raises(ValueError, match="laziness = nan"):
        Laziness.execute(NAN)
    with pytest.raises(ValueError, match="cached_share = nan"):
        DeltaDiTNode.execute(model, NAN, 0.5, 2)
    with pytest.raises(ValueError, match="laziness_pressure = nan is not a number in 0.0..0.1"):
        TrainLazyGates.execute(model, "all", 10, 4, NAN, "10", 0, "g")
    with pytest.raises(ValueError, match="cfg = nan is not a number in 1.0..20.0"):
        SensitivitySchedule.execute(model, "all", 4, NAN, 0, "s")
    assert Laziness.validate_inputs(laziness=None) is True, "a linked value is left to execute"


def test_train_and_schedule_nodes_refuse_bad_widgets_when_queued(comfy):
    """The training nodes refuse a bad step count, NaN pressure or cfg and an unknown objective at queue time."""
    base = {"model": ["1", 0], "labels": "all", "seed": 0}
    train = {**base, "iterations": 10, "batch": 4, "laziness_pressure": 1e-4, "step_counts": "10",
             "filename_prefix": "g"}
    cases = [("LazyDiT_TrainGates", {**train, "step_counts": "10,x"}, "step count 'x' in '10,x' is not a whole"),
             ("LazyDiT_TrainGates", {**train, "laziness_pressure": NAN}, "laziness_pressure = nan"),
             ("LazyDiT_TrainGates", {**train, "objective": "fast"}, "objective = 'fast' is not one of"),
             ("LazyDiT_SensitivitySchedule", {**base, "images": 4, "cfg": NAN, "filename_prefix": "s"}, "cfg = nan")]
    for class_type, inputs, message in cases:
        wf = {"1": DEMO_WORKFLOW["1"], "2": {"class_type": class_type, "inputs": inputs}}
        with pytest.raises(RuntimeError, match="invalid workflow") as err:
            comfy.run(wf)
        assert message in str(err.value), str(err.value)[-600:]


@pytest.mark.parametrize("labels, message", [
    ("0-20000000", "labels: '0-20000000' is outside this model's 10 classes; write indices in 0..9"),
    ("²", "labels: entry '²' is not a class index, a range a-b, a class name (T-shirt/top"),
    ("Sneaker, 3-1", "labels: range '3-1' runs backwards"),
])
def test_bad_labels_fail_before_sampling(comfy, clean_output, labels, message):
    """A bad label text stops the prompt at the Class Label node with a short error; nothing is saved."""
    with pytest.raises(RuntimeError) as err:
        comfy.run(demo_workflow([("4", "labels", labels)]))
    assert message in str(err.value) and len(str(err.value)) < 1024, str(err.value)[:1024]
    assert not os.listdir(clean_output), "the sampler must not have run"


def test_train_node_reads_labels_as_class_label_does(comfy):
    """'0-1' and demo class names mean the same to the Train node as to DiT Class Label."""
    from lazydit.nodes.labels import ClassLabel
    from lazydit.nodes.train_node import make_denoiser

    model = load()
    den = make_denoiser(model, "0-1, Sneaker", None, None, None)
    cond = ClassLabel.execute(model, "0-1, Sneaker").args[0]
    assert den.labels.tolist() == [0, 1, 7] == cond[0][1]["class_label"].tolist()


def test_load_lazy_gates_node(comfy):
    """The node loads a built-in file with its info line, and refuses a NaN gate file by name."""
    from lazydit.lazy_core.engine.gates import GateBank, GateFileError
    from lazydit.nodes.lazy_nodes import LoadLazyGates

    patcher, info = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args
    assert isinstance(patcher.model, GateBank) and "dit, depth 6, width 256" in info
    nan = GateBank.load(os.path.join(ROOT, "weights", "dit_demo_fashion_gates.safetensors"))
    tensors = {"weight": torch.full_like(nan.weight, NAN), "bias": nan.bias.detach(), "prior": nan.prior,
               "trained": nan.trained.to(torch.uint8)}
    path = os.path.join(comfy.base, "models", "lazy_gates", "nan_gates.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=nan.info.to_metadata())
    with pytest.raises(GateFileError, match="nan_gates.safetensors: gate weight holds NaN or inf values"):
        LoadLazyGates.execute("nan_gates.safetensors")


def test_unsupported_model_is_named(comfy):
    """A model without transformer blocks (ComfyUI's own UNet) or with unknown blocks is refused by name."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from lazydit.lazy_core.engine.proxies import UnsupportedModelError, describe
    from lazydit.nodes.lazy_nodes import ApplyLazyGates, LoadLazyGates
    from lazydit.nodes.sibling_nodes import ForaNode

    unet = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1],
            "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
            "transformer_depth_middle": 1, "context_dim": 32, "num_heads": 2, "num_head_channels": -1,
            "use_spatial_transformer": True, "use_linear_in_transformer": False, "legacy": False,
            "adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False}
    mc = comfy.supported_models.SD15(unet)
    mc.set_inference_dtype(torch.float32, None)
    sd15 = comfy.model_patcher.ModelPatcher(mc.get_model({}, device=torch.device("cpu")),
                                            load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    gates = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args[0]
    with pytest.raises(UnsupportedModelError, match="UNetModel has no `blocks` list .* supports DiT and PixArt"):
        ApplyLazyGates.execute(sd15, gates, 0.5, 1, "auto", "auto")
    with pytest.raises(UnsupportedModelError, match="UNetModel has no `blocks`"):
        ForaNode.execute(sd15, 2)
    odd = torch.nn.Module()
    odd.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(UnsupportedModelError, match="Linear have no `attn` and `mlp` modules .*supported: DiTBlock"):
        describe(odd)


def test_loader_refuses_damaged_checkpoints(comfy):
    """Load DiT Checkpoint names a NaN-weight file and a metadata config whose heads do not divide the width."""
    from lazydit.lazy_core.models.dit import CheckpointError

    sd = {k: v.float().contiguous() for k, v in load().model.diffusion_model.state_dict().items()}
    folder = os.path.join(comfy.base, "models", "diffusion_models")
    nan = {**sd, "final_layer.linear.bias": torch.full_like(sd["final_layer.linear.bias"], NAN)}
    save_file(nan, os.path.join(folder, "nan_dit.safetensors"))
    config = {**load().model.diffusion_model.config.to_dict(), "num_heads": 7}
    save_file(sd, os.path.join(folder, "heads7.safetensors"), metadata={"config": json.dumps(config)})
    with pytest.raises(CheckpointError, match=r"nan_dit.safetensors: 1 of \d+ tensors hold NaN or inf "
                                              r"\(final_layer.linear.bias\).*black images"):
        load("nan_dit.safetensors")
    with pytest.raises(CheckpointError, match="heads7.safetensors: its metadata config says num_heads 7, which "
                                              "does not divide the width 256"):
        load("heads7.safetensors")


#################################################################################
#                      DiT's own schedule and guidance                          #
#################################################################################

def test_dit_schedule_yields_the_respaced_timesteps(comfy):
    """DiT Schedule's sigmas map back, through the model's own sampling, to exactly DiT's respaced
    timesteps (then 0); ComfyUI's ddim_uniform scheduler steps elsewhere."""
    import comfy.samplers
    from lazydit.nodes.schedule import DiTSchedule

    model = load()
    sampling = model.get_model_object("model_sampling")
    for steps in (2, 21, 35, 50, 250, 1000):
        sigmas = DiTSchedule.execute(model, steps).args[0]
        assert len(sigmas) == steps + 1 and float(sigmas[-1]) == 0.0
        assert sampling.timestep(sigmas[:-1]).tolist() == space_timesteps(steps)[::-1], steps
    uniform = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", 50)
    assert sampling.timestep(uniform[:-1]).tolist() != space_timesteps(50)[::-1]


@pytest.mark.parametrize("steps", [10, 21])
def test_sampler_custom_reproduces_dits_ddim(comfy, steps):
    """SamplerCustom (euler) with DiT Schedule and cfg_mode 'official DiT (3 channels)' gives what DiT's own
    DDIM with forward_with_cfg gives (lazy_core's sampler, guided_channels=3); all-channel guidance does not."""
    import comfy.sample
    import comfy.samplers
    from lazydit.nodes.labels import conditioning
    from lazydit.nodes.schedule import DiTSchedule

    official = load(cfg_mode="official DiT (3 channels)")
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    sigmas = DiTSchedule.execute(official, steps).args[0]

    def comfy_sample(model):
        return comfy.sample.sample_custom(model, noise, 4.0, comfy.samplers.sampler_object("euler"), sigmas,
                                          conditioning([3, 7]), conditioning([10]), torch.zeros_like(noise),
                                          disable_pbar=True, seed=0)
    net = official.model.diffusion_model
    ref = GaussianDiffusion().ddim_sample(lambda x, t, y: DiT.forward(net, x, t, y), noise, torch.tensor([3, 7]),
                                          steps, cfg_scale=4.0, null_label=10, guided_channels=3)
    err_official = float((comfy_sample(official) - ref).abs().max())
    err_all = float((comfy_sample(load()) - ref).abs().max())
    assert err_official < 1e-3, f"ComfyUI vs DiT's DDIM: max diff {err_official}"
    assert err_all > 20 * err_official, f"all-channel guidance should differ: {err_all} vs {err_official}"
