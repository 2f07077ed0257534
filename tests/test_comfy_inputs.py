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
    for node in ("2", "11", "12", "13", "14"):          # gates, report and the previews of their text
        del wf[node]
    return wf


def load(name=DEMO, latent="auto", cfg_mode="all channels"):
    from lazydit.nodes.loaders import LoadDiT
    return LoadDiT.execute(name, latent, cfg_mode).args[0]


SWEEP_WORKFLOW = json.load(open(os.path.join(ROOT, "example_workflows", "api", "lazydit_sweep_fashion.json")))
DYDIT_WORKFLOW = json.load(open(os.path.join(ROOT, "example_workflows", "api", "lazydit_dydit_fashion.json")))
LONG_VALUES = "9," * 5000


def sweep_workflow():
    return copy.deepcopy(SWEEP_WORKFLOW)


def dydit_workflow():
    """The DyDiT demo without its dense branch (which would still run on its own)."""
    wf = copy.deepcopy(DYDIT_WORKFLOW)
    for node in ("14", "15", "16", "17"):
        del wf[node]
    return wf


def laziness_workflow():
    """The demo workflow with a Laziness node (30) driving Apply Lazy Gates."""
    wf = demo_workflow()
    wf["30"] = {"class_type": "LazyDiT_Laziness", "inputs": {"laziness": 0.5}}
    wf["3"]["inputs"]["laziness"] = ["30", 0]
    return wf


def trainer_workflow(class_type):
    inputs = {"model": ["1", 0], "labels": "all", "seed": 0}
    inputs.update({"iterations": 10, "batch": 4, "laziness_pressure": 1e-4, "step_counts": "10",
                   "filename_prefix": "g"} if class_type == "LazyDiT_TrainGates" else
                  {"images": 4, "cfg": 4.0, "filename_prefix": "s"})
    return {"1": DEMO_WORKFLOW["1"], "2": {"class_type": class_type, "inputs": inputs}}


def sibling(class_type):
    inputs = dict(cached_share=0.5, boundary_percent=0.5, interval=2) if class_type == "LazyDiT_DeltaDiT" else \
        dict(interval=2, reuse="repeat")
    return lambda: sibling_workflow(class_type, **inputs)


# case: (workflow, node, input, bad value, what ComfyUI's message says)
BAD_INPUTS = {
    "apply laziness nan": (demo_workflow, "3", "laziness", NAN, "Value nan smaller than min of 0.0"),
    "apply laziness inf": (demo_workflow, "3", "laziness", float("inf"), "Value inf bigger than max of 1.0"),
    "apply laziness above": (demo_workflow, "3", "laziness", 1.5, "Value 1.5 bigger than max of 1.0"),
    "apply max_lazy_steps": (demo_workflow, "3", "max_lazy_steps", 0, "Value 0 smaller than min of 1"),
    "apply cache_device": (demo_workflow, "3", "cache_device", "cuda:7", "'cuda:7' not in ['auto', 'cpu']"),
    "apply cache_dtype": (demo_workflow, "3", "cache_dtype", "float8", "'float8' not in ['auto', 'float16'"),
    "apply reuse": (demo_workflow, "3", "reuse", "copy", "'copy' not in ['extrapolate', 'repeat', 'learned']"),
    "apply start 5": (demo_workflow, "3", "start_percent", 5.0, "Value 5.0 bigger than max of 1.0"),
    "apply end -3": (demo_workflow, "3", "end_percent", -3.0, "Value -3.0 smaller than min of 0.0"),
    "apply start nan": (demo_workflow, "3", "start_percent", NAN, "Value nan smaller than min of 0.0"),
    "apply end nan": (demo_workflow, "3", "end_percent", NAN, "Value nan smaller than min of 0.0"),
    "laziness node nan": (laziness_workflow, "30", "laziness", NAN, "Value nan smaller than min of 0.0"),
    "sweep steps 0": (sweep_workflow, "7", "steps", 0, "Value 0 smaller than min of 1"),
    "sweep steps -3": (sweep_workflow, "7", "steps", -3, "Value -3 smaller than min of 1"),
    "sweep steps 1e6": (sweep_workflow, "7", "steps", 1000000, "Value 1000000 bigger than max of 1000"),
    "sweep cfg nan": (sweep_workflow, "7", "cfg", NAN, "Value nan smaller than min of 0.0"),
    "sweep cfg -5": (sweep_workflow, "7", "cfg", -5.0, "Value -5.0 smaller than min of 0.0"),
    "sweep cfg 1e6": (sweep_workflow, "7", "cfg", 1e6, "Value 1000000.0 bigger than max of 100.0"),
    "sweep sampler": (sweep_workflow, "7", "sampler_name", "bogus", "sampler_name: 'bogus' not in (list of"),
    "sweep scheduler": (sweep_workflow, "7", "scheduler", "bogus", "scheduler: 'bogus' not in"),
    "sweep seed 2**70": (sweep_workflow, "7", "seed", 2 ** 70, "bigger than max of 18446744073709551615"),
    "sweep start 5": (sweep_workflow, "7", "start_percent", 5.0, "Value 5.0 bigger than max of 1.0"),
    "sweep end -3": (sweep_workflow, "7", "end_percent", -3.0, "Value -3.0 smaller than min of 0.0"),
    "sweep start nan": (sweep_workflow, "7", "start_percent", NAN, "Value nan smaller than min of 0.0"),
    "sweep end nan": (sweep_workflow, "7", "end_percent", NAN, "Value nan smaller than min of 0.0"),
    "sweep long values": (sweep_workflow, "7", "laziness_values", LONG_VALUES, "laziness_values = '9,9,9,"),
    "sweep nan value": (sweep_workflow, "7", "laziness_values", "0.5, nan", "must hold 1 to 12 numbers in 0..1"),
    "delta share nan": (sibling("LazyDiT_DeltaDiT"), "3", "cached_share", NAN, "Value nan smaller than min of 0.05"),
    "delta boundary -inf": (sibling("LazyDiT_DeltaDiT"), "3", "boundary_percent", -float("inf"),
                            "Value -inf smaller than min of 0.0"),
    "delta interval": (sibling("LazyDiT_DeltaDiT"), "3", "interval", 0, "Value 0 smaller than min of 1"),
    "fora reuse": (sibling("LazyDiT_FORA"), "3", "reuse", "guess", "reuse: 'guess' not in ['extrapolate', 'repeat']"),
    "fora interval nan": (sibling("LazyDiT_FORA"), "3", "interval", NAN, "cannot convert float NaN to integer"),
    "train pressure nan": (lambda: trainer_workflow("LazyDiT_TrainGates"), "2", "laziness_pressure", NAN,
                           "Value nan smaller than min of 0.0"),
    "train objective": (lambda: trainer_workflow("LazyDiT_TrainGates"), "2", "objective", "fast",
                        "'fast' not in ['sensitivity', 'local (paper)']"),
    "train prefix": (lambda: trainer_workflow("LazyDiT_TrainGates"), "2", "filename_prefix", "../x",
                     "filename_prefix '../x' leaves or skips a folder"),
    "schedule cfg nan": (lambda: trainer_workflow("LazyDiT_SensitivitySchedule"), "2", "cfg", NAN,
                         "Value nan smaller than min of 1.0"),
    "schedule prefix": (lambda: trainer_workflow("LazyDiT_SensitivitySchedule"), "2", "filename_prefix", "/abs",
                        "filename_prefix '/abs' is an absolute path"),
    "dydit threshold nan": (dydit_workflow, "2", "threshold", NAN,
                            "Value nan smaller than min of 0.05"),
    "dydit mode": (dydit_workflow, "2", "mode", "fast", "'fast' not in ['dynamic', 'dense']"),
    "loader latent": (demo_workflow, "1", "latent", "vae", "'vae' not in ['auto', 'sd15', 'pixel']"),
    "loader cfg_mode": (demo_workflow, "1", "cfg_mode", "half", "'half' not in ['all channels', 'official DiT"),
    "loader ckpt_name": (demo_workflow, "1", "ckpt_name", "nothere.pt", "ckpt_name: 'nothere.pt' not in"),
    "gate_name": (demo_workflow, "2", "gate_name", "../../gates.safetensors", "'../../gates.safetensors' not in"),
}


def node_errors(comfy, prompt):
    """validate_prompt's errors by node id, as ComfyUI returns them to the UI (which marks each input red)."""
    import asyncio
    import uuid

    ok, _, _, errors = asyncio.run(comfy.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    return ok, errors


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_a_bad_input_is_refused_once_and_blamed_on_itself(comfy, case):
    """Every bad widget value of every node is refused when queued with exactly one error, attached to that
    input (extra_info.input_name, which the UI marks red), short, and naming the problem; the same workflow
    with the default value validates."""
    make, node, name, value, message = BAD_INPUTS[case]
    good = make()
    assert node_errors(comfy, good)[0], node_errors(comfy, good)[1]
    bad = make()
    bad[node]["inputs"][name] = value
    ok, errors = node_errors(comfy, bad)
    assert not ok and list(errors) == [node], errors
    (error,) = errors[node]["errors"]
    assert error["extra_info"]["input_name"] == name, error
    text = f"{error['message']}: {error['details']}"
    assert message in text and len(text) < 400, text


def test_combos_and_bounds_take_the_form_comfyui_checks(comfy):
    """The pack's combos are typed so that ComfyUI itself checks them: as an option list on 0.3.75 (which skips
    'COMBO'-typed V3 combos), as 'COMBO' from 0.8 on; NaN-refusing bounds serialise as plain numbers."""
    from lazydit.nodes.checks import CORE_CHECKS_V3_COMBOS, Bound
    from lazydit.nodes.lazy_nodes import ApplyLazyGates

    spec = ApplyLazyGates.INPUT_TYPES()["required"]
    kind = spec["cache_device"][0]
    assert kind == "COMBO" if CORE_CHECKS_V3_COMBOS else kind == ["auto", "cpu"], kind
    assert isinstance(spec["laziness"][1]["min"], Bound)
    assert json.loads(json.dumps(spec["laziness"][1]))["min"] == 0.0
    assert Bound(0.0) < 0.5 and not Bound(1.0) < 0.5 and NAN < Bound(0.0) and NAN > Bound(1.0)


@pytest.mark.parametrize("workflow, node", [(demo_workflow, "3"), (sweep_workflow, "7"),
                                            (sibling("LazyDiT_FORA"), "3")], ids=["apply", "sweep", "fora"])
def test_start_after_end_fails_before_sampling(comfy, clean_output, workflow, node):
    """start_percent 0.9 with end_percent 0.1 relates two inputs, which ComfyUI's validation cannot blame on
    one: the node refuses it when it runs, before any sampling, naming both and the fix."""
    from comfy_headless import WorkflowError

    wf = workflow()
    wf[node]["inputs"].update(start_percent=0.9, end_percent=0.1)
    assert node_errors(comfy, wf)[0]
    with pytest.raises(WorkflowError, match="start_percent 0.9 is after end_percent 0.1: set start_percent at or "
                                            "before end_percent"):
        comfy.run(wf)
    assert not os.listdir(clean_output), "nothing may have been sampled"


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


def test_train_refuses_bad_step_counts_before_training(comfy):
    """step_counts is the Train node's second free-text input; validation can blame only one (filename_prefix),
    so a bad step count is refused when the node runs, before any model call, naming the input."""
    from comfy_headless import WorkflowError

    wf = trainer_workflow("LazyDiT_TrainGates")
    wf["2"]["inputs"]["step_counts"] = "10,x"
    assert node_errors(comfy, wf)[0]
    with pytest.raises(WorkflowError, match="step count 'x' in '10,x' is not a whole"):
        comfy.run(wf)


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
    with pytest.raises(UnsupportedModelError, match="UNetModel has no `blocks`.*auraflow, chroma, flux.*this "
                                                    "UNetModel offers none"):
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
