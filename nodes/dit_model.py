"""DiT as a ComfyUI model: config class, BaseModel with an integer class-label condition, and the loader."""

import logging

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ..lazy_core.models.dit import DiT, DiTConfig, infer_config, load_strict
from ..lazy_core.models.dydit import DyDiT, is_dydit

log = logging.getLogger(__name__)


class PixelLatent(comfy.latent_formats.LatentFormat):
    """The demo model's latent: already in [-1, 1] (the pixel VAE stand-in), so no scaling."""

    scale_factor = 1.0
    latent_channels = 4


LATENT_FORMATS = {"sd15": comfy.latent_formats.SD15, "pixel": PixelLatent}
CFG_MODES = ("all channels", "official DiT (3 channels)")


def guide_three_channels(args):
    """Post-CFG function: facebookresearch/DiT's forward_with_cfg guides eps channels 0-2 only, and channel
    3 keeps the cond prediction. The result is linear in eps, so the denoised form gives the same."""
    return torch.cat([args["denoised"][:, :3], args["cond_denoised"][:, 3:]], dim=1)


class ComfyDiT(DiT):
    """DiT with ComfyUI's call signature: runs the DIFFUSION_MODEL wrappers (so core EasyCache works) and
    returns the eps channels only (ComfyUI's EPS sampling has no use for the learned sigma)."""

    def __init__(self, image_model=None, dtype=None, device=None, operations=None, **config):
        super().__init__(DiTConfig(**config), ops=operations, dtype=dtype, device=device)
        self.dtype = dtype

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        options = transformer_options if transformer_options is not None else {}
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, options),
        ).execute(x, timesteps, context, y, control, options, **kwargs)

    def _forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        if y is None:
            raise ValueError("DiT needs a class label: connect a DiT Class Label node to the positive input and "
                             "a DiT Null Label node to the negative input")
        return self.denoise(x, timesteps, y, transformer_options)[:, :self.in_channels]

    def denoise(self, x, t, y, options):
        return DiT.forward(self, x, t, y)


class DySession:
    """How a DyDiT MODEL samples (route, token skipping, threshold) and what its runs did: the OUTER_SAMPLE
    wrapper collects each run's calls; shared by reference between clones like LazySession."""

    def __init__(self, route="sliced", tokens=True, threshold=0.5):
        self.route, self.tokens, self.threshold = route, tokens, threshold
        self.calls = None
        self.report = None

    def __deepcopy__(self, memo):
        return self


DY_KEY = "lazydit_dydit"


class ComfyDyDiT(ComfyDiT, DyDiT):
    """DyDiT under ComfyUI: routed as the MODEL's DySession says (the official dynamic inference if none)."""

    def __init__(self, image_model=None, dydit=True, **kwargs):
        super().__init__(image_model, **kwargs)

    def denoise(self, x, t, y, options):
        session = options.get(DY_KEY) or DySession()
        return DyDiT.forward(self, x, t, y, route=session.route, tokens=session.tokens,
                             threshold=session.threshold, stats=session.calls)


class DiTModel(comfy.model_base.BaseModel):
    """BaseModel whose class label travels as a long tensor (`y`), never through the float context."""

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
        unet = ComfyDyDiT if model_config.unet_config.get("dydit") else ComfyDiT
        super().__init__(model_config, model_type, device=device, unet_model=unet)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        label = kwargs.get("class_label")
        if label is not None:
            # An integer condition keeps its dtype through _apply_model; bf16 context would turn 999 into 1000.
            out["y"] = comfy.conds.CONDRegular(torch.as_tensor(label, dtype=torch.long).reshape(-1))
        return out


class DiTSupported(comfy.supported_models_base.BASE):
    """Sampling settings of DiT: linear betas 1e-4..0.02 over 1000 steps (ComfyUI calls it sqrt_linear)."""

    unet_config = {"image_model": "lazydit_dit"}
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": 1e-4, "linear_end": 0.02, "timesteps": 1000}
    latent_format = comfy.latent_formats.SD15
    memory_usage_factor = 0.5
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def __init__(self, unet_config, latent_format):
        self.latent_format = latent_format
        super().__init__(unet_config)

    def get_model(self, state_dict, prefix="", device=None):
        return DiTModel(self, device=device)


def build(sd, latent="auto", name="checkpoint", config=None):
    """A ModelPatcher for a DiT state dict (official layout), loaded strictly. The config is inferred from the
    shapes unless given (heads follow the paper's table, else width // 64)."""
    config = config or infer_config(sd)
    if latent == "auto":
        latent = "pixel" if config.num_classes == 10 else "sd15"
    dynamic = is_dydit(sd)
    unet_config = {"image_model": "lazydit_dit", **config.to_dict(), **({"dydit": True} if dynamic else {})}
    model_config = DiTSupported(unet_config, LATENT_FORMATS[latent])
    load_device = mm.get_torch_device()
    params = sum(v.numel() for v in sd.values())
    weight_dtype = next(iter(sd.values())).dtype
    unet_dtype = mm.unet_dtype(model_params=params, supported_dtypes=model_config.supported_inference_dtypes,
                               weight_dtype=weight_dtype)
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = model_config.get_model(sd)
    model = model.to(mm.unet_offload_device())
    load_strict(model.diffusion_model, sd)
    log.info("%s: %s depth %d, width %d, %d tokens, %d classes, latent %s", name, "DyDiT" if dynamic else "DiT",
             config.depth, config.hidden_size, config.tokens, config.num_classes, latent)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    if dynamic:
        patcher = with_dy_session(patcher, DySession())
    return patcher


def dy_session_of(model):
    return model.model_options.get("transformer_options", {}).get(DY_KEY)


def _collect(session, executor, *args, **kwargs):
    """One sampling run of a DyDiT: its calls' widths become the session's report, whatever happens."""
    calls, session.calls = session.calls, []
    try:
        return executor(*args, **kwargs)
    finally:
        run, session.calls = session.calls, calls
        if run:
            session.report = run


def with_dy_session(model, session):
    """A clone of a DyDiT MODEL that samples as `session` says and records each run for the report."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})[DY_KEY] = session
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, DY_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, DY_KEY,
                           lambda executor, *a, **k: _collect(session, executor, *a, **k))
    return m
