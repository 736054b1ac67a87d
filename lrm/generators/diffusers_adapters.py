"""diffusers denoisers behind lrm's denoiser signature (docs/generators.md).

    from lrm.generators import load_diffusers
    denoiser, prompts = load_diffusers("/models/stable-diffusion-v1-5")   # or a hub id in the HF cache
    text = prompts.encode(["a red circle"])                             # TextEmbeddings (B, L, D) + mask
    out = denoiser(x_t, t, text.emb, text.mask)     # (B, T, c, h, w) in denoiser.prediction
    x0_hat, eps_hat = to_x0_eps(denoiser.prediction, out, x_t, *denoiser.schedule.alpha_sigma(t, x_t))

Families (FAMILIES), each an nn.Module holding the diffusers model as `.model` (so LoRA / peft and
optimisers see its parameters) and mapping lrm's (B, T, c, h, w) to the model's layout and back:
- "sd"   UNet2DConditionModel (SD 1.x / 2.x): eps or v; CLIP tokens (last hidden state).
- "sdxl" UNet2DConditionModel with addition_embed_type "text_time" (SDXL base): two CLIPs'
         penultimate tokens concatenated, the second CLIP's pooled projection, and the six time ids
         (original size, crop top-left, target size) computed from the latent size as the pipeline
         does by default: (H, W, 0, 0, H, W) with H = h * vae_scale_factor. The refiner's UNet (five
         time ids with an aesthetic score) is refused.
- "sd3"  SD3Transformer2DModel: flow; CLIP-L + CLIP-G tokens (zero-padded to T5's width) followed by
         T5 tokens, pooled = both CLIPs' pooled projections.
- "flux" FluxTransformer2DModel: flow; latents packed into 2x2 patches, img ids (row, col) and zero
         txt ids, timestep / 1000 as the pipeline passes it, the guidance embedding
         (`guidance_scale`, 3.5 as FluxPipeline) when the config has guidance_embeds; T5 tokens and the
         CLIP pooled output.
- "wan"  WanTransformer3DModel: video, flow; (B, C, T, H, W) layout; UMT5 tokens, zero-padded to the
         pipeline's max_sequence_length (512).
Image families denoise a clip (T > 1) frame by frame (frames folded into the batch), as lrm's image
DiT does. Inputs are cast to the model's dtype, outputs back to x_t's dtype.

Prediction and schedule come from the pipeline's scheduler_config.json (`prediction_from_scheduler`,
`schedule_config_from_scheduler`): prediction_type epsilon / v_prediction / sample -> "eps" / "v" /
"x0" on a VP schedule whose beta_schedule, beta_start and beta_end must be one of lrm's named
schedules; FlowMatchEulerDiscreteScheduler, or any scheduler with use_flow_sigmas or prediction_type
flow_prediction (Wan's UniPC), -> "flow" with `shift` (or `flow_shift`). With use_dynamic_shifting
(FLUX) the shift depends on the image: shift = exp(mu), mu linear in the number of packed latent
tokens (FluxPipeline's calculate_shift), computed for the adapter's `latent_size` (default: the
pipeline's 1024 px). A flow schedule samples on FluxPipeline's grid for FLUX (sigmas linspace(1, 1/n, n), shifted
once) and on FlowMatchEulerDiscreteScheduler's set_timesteps grid for the others (FlowSchedule.grid): SD3's own;
Wan's pipeline samples with UniPC on another spacing, which lrm's DDIM / Euler samplers do not reproduce.
EDM schedulers (sigma_data / sigma_min / sigma_max without beta_schedule: EDMEulerScheduler,
EDMDPMSolverMultistepScheduler, as Playground v2.5 ships) are refused: lrm has no EDM preconditioning.
The model's timesteps are lrm's: integers 0..T-1 on VP, sigma * T on flow.

Text conditioning, and why it stays a plain (B, L, D) tensor: SDXL, SD3 and FLUX also need a pooled
prompt vector. Rather than widening the forward signature, or hiding state in an attribute that a
prompt encoder sets (which goes wrong as soon as a batch is reshuffled), the pooled vector travels as
the first token of `text`, zero-padded to the token width D (`pack_pooled`); the adapter splits it
off again. So everything downstream (latent stores, CFG batching by concatenation, per-sample
indexing, DDP) handles these models' text exactly like any other text embedding, and the forward
signature is lrm's. The family's prompt encoder (`load_diffusers_prompt_encoder`) returns that layout,
computed with the pipeline's own text encoders and tokenizers exactly as its encode_prompt does
(cached per prompt by lrm.text's TextEncoder).

text_mask: positions where it is False are zeroed (Wan's pipeline zero-pads its tokens; the CLIP and
T5 pipelines feed full fixed-length sequences, all True). A row that is all False, or text=None, is
the unconditional branch of CFG, as for lrm's DiT: it is replaced by `null_text`, the pipeline's
negative-prompt conditioning (the encoding of "", or zeros for SDXL's force_zeros_for_empty_prompt),
which `load_diffusers` sets from the prompt encoder; without it, the unconditional branch is an
error that says how to set it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrm import weights
from lrm.diffusion.parameterisations import check_prediction
from lrm.diffusion.schedule import SCHEDULES
from lrm.diffusion.schedules import schedule_from_config
from lrm.text.base import TextEncoder

# ---------------------------------------------------------------- scheduler config -> prediction, schedule

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled-linear"}  # diffusers name -> lrm name
# FlowMatchEulerDiscreteScheduler's defaults for resolution-dependent shifting (FLUX's config sets them)
DYNAMIC_SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def scheduler_dict(scheduler) -> dict:
    """A scheduler's config as a dict with its _class_name: from scheduler_config.json (a dict) or a
    scheduler object (whose in-memory config lacks the class name that tells flow from VP)."""
    if hasattr(scheduler, "config") and hasattr(scheduler, "set_timesteps"):
        return {**scheduler.config, "_class_name": type(scheduler).__name__}
    cfg = dict(scheduler)
    if "_class_name" not in cfg and "beta_schedule" not in cfg:
        raise ValueError("scheduler config has neither _class_name nor beta_schedule, so flow and VP cannot be "
                         "told apart; pass the scheduler object or its scheduler_config.json")
    return cfg


def is_flow_scheduler(cfg: dict) -> bool:
    """Rectified flow: FlowMatch* schedulers, or flow sigmas / flow prediction in another solver (Wan's UniPC)."""
    return ("FlowMatch" in str(cfg.get("_class_name", "")) or bool(cfg.get("use_flow_sigmas"))
            or cfg.get("prediction_type") == "flow_prediction")


EDM_KEYS = ("sigma_data", "sigma_min", "sigma_max")  # what an EDM (Karras et al. 2022) scheduler's config sets


def refuse_edm(cfg: dict) -> None:
    """An EDM scheduler (EDMEulerScheduler, EDMDPMSolverMultistepScheduler: Playground v2.5) trains the model with
    EDM's preconditioning, which lrm does not have: refused. A config that carries beta_schedule is a VP scheduler's
    (e.g. EulerDiscreteScheduler, whose sigma_min / sigma_max are only its sampler's bounds) and passes."""
    name = str(cfg.get("_class_name") or "")
    if "beta_schedule" in cfg or is_flow_scheduler(cfg):
        return
    if name.startswith("EDM") or any(cfg.get(key) is not None for key in EDM_KEYS):
        raise ValueError(f"scheduler {name or '(no _class_name)'} is an EDM scheduler (sigma_data / sigma_min / "
                         "sigma_max, no beta_schedule), which lrm cannot run: lrm supports VP (DDPM betas) and "
                         "flow-matching schedulers")


def prediction_from_scheduler(scheduler) -> str:
    """The lrm prediction type of a model trained with this scheduler (object or config dict)."""
    cfg = scheduler_dict(scheduler)
    refuse_edm(cfg)
    if is_flow_scheduler(cfg):
        return "flow"
    name = cfg.get("prediction_type", "epsilon")
    if name not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type {name!r} is not supported; known: {sorted(PREDICTION_TYPES)}")
    return check_prediction(PREDICTION_TYPES[name])


def flow_shift(cfg: dict, image_tokens: int | None = None) -> float:
    """The timestep shift: `shift` (or `flow_shift`), or exp(mu) for use_dynamic_shifting, mu linear in
    image_tokens (the number of packed latent tokens) between base_/max_image_seq_len."""
    if not cfg.get("use_dynamic_shifting"):
        return float(cfg.get("shift", cfg.get("flow_shift", 1.0)))
    if cfg.get("time_shift_type", "exponential") != "exponential":
        raise ValueError(f"scheduler time_shift_type {cfg['time_shift_type']!r} is not supported; only 'exponential'")
    if image_tokens is None:
        raise ValueError("this scheduler shifts timesteps by image size (use_dynamic_shifting); give the latent size")
    p = {k: cfg.get(k) if cfg.get(k) is not None else v for k, v in DYNAMIC_SHIFT_DEFAULTS.items()}
    slope = (p["max_shift"] - p["base_shift"]) / (p["max_image_seq_len"] - p["base_image_seq_len"])
    mu = p["base_shift"] + slope * (image_tokens - p["base_image_seq_len"])
    return math.exp(mu)


def schedule_config_from_scheduler(scheduler, image_tokens: int | None = None, grid: str = "scheduler") -> dict:
    """lrm schedule config ({"type": "vp", ...} / {"type": "flow", ...}) of a diffusers scheduler (object or
    config dict); image_tokens: packed latent tokens, for resolution-dependent shifting; grid: a flow schedule's
    sampling grid (lrm.diffusion.schedules.FLOW_GRIDS: "scheduler" as the scheduler's set_timesteps, "flux" as
    FluxPipeline's), the pipeline's, which the scheduler config does not tell (FLUX.1-schnell's is SD3's)."""
    cfg = scheduler_dict(scheduler)
    refuse_edm(cfg)
    num_timesteps = int(cfg.get("num_train_timesteps", 1000))
    if is_flow_scheduler(cfg):
        return {"type": "flow", "shift": flow_shift(cfg, image_tokens), "num_timesteps": num_timesteps, "grid": grid}
    if cfg.get("trained_betas") is not None or cfg.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler uses trained_betas or rescale_betas_zero_snr; "
                         "lrm's VP schedules cannot represent them")
    diffusers_name = cfg.get("beta_schedule", "linear")
    name = BETA_SCHEDULES.get(diffusers_name)
    if name is None:
        raise ValueError(f"scheduler beta_schedule {diffusers_name!r} is not supported; "
                         f"known: {sorted(BETA_SCHEDULES)}")
    start, end, _ = SCHEDULES[name]
    got = (float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02)))
    if not (math.isclose(got[0], start, rel_tol=1e-6) and math.isclose(got[1], end, rel_tol=1e-6)):
        raise ValueError(f"scheduler {diffusers_name} betas {got[0]}..{got[1]} differ from lrm's {name!r} "
                         f"({start}..{end}); lrm cannot represent this schedule")
    return {"type": "vp", "betas": name, "num_timesteps": num_timesteps}


# ---------------------------------------------------------------- text layout


def pack_pooled(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D), pooled (B, P) with P <= D -> (B, 1 + L, D): the pooled vector, zero-padded to D,
    as the first token (the layout of text for the pooled families; see the module doc)."""
    if pooled.shape[-1] > tokens.shape[-1]:
        raise ValueError(f"pooled width {pooled.shape[-1]} exceeds the token width {tokens.shape[-1]}")
    return torch.cat([F.pad(pooled, (0, tokens.shape[-1] - pooled.shape[-1]))[:, None], tokens], dim=1)


def unpack_pooled(text: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1 + L, D) -> tokens (B, L, D), pooled (B, pooled_dim); the inverse of pack_pooled."""
    return text[:, 1:], text[:, 0, :pooled_dim]


# ---------------------------------------------------------------- adapters


class DiffusersDenoiser(nn.Module):
    """Base adapter: checks, text handling (mask, null rows) and dtype; families implement `_denoise`."""

    family: str
    model_class: str  # the diffusers class it wraps

    def __init__(self, model: nn.Module, scheduler, null_text: torch.Tensor | None = None):
        """model: the diffusers denoiser; scheduler: its pipeline's scheduler object, or the dict of its
        scheduler_config.json; null_text: (1, L, D) unconditional text (see the module doc)."""
        super().__init__()
        if type(model).__name__ != self.model_class:
            raise TypeError(f"{type(self).__name__} wraps a {self.model_class}, got {type(model).__name__}")
        self.model = model
        self.scheduler_config = scheduler_dict(scheduler)
        self.prediction = prediction_from_scheduler(self.scheduler_config)  # what the model outputs
        self.schedule_config = schedule_config_from_scheduler(self.scheduler_config, self._image_tokens(),
                                                              self.flow_grid)
        self.schedule = schedule_from_config(self.schedule_config)
        self.null_text = null_text  # (1, L, D): the negative-prompt conditioning of CFG's unconditional branch
        # what sampling needs beyond the weights (as lrm's DiT records them): the latent space (Codec.settings())
        # and the lrm.text id of the prompt encoder whose tokens it reads; load_diffusers sets the text id
        self.codec_settings: dict | None = None
        self.text_encoder_id: str | None = None

    # what the model reads from `text`
    @property
    def text_dim(self) -> int:
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        """c of the latents (B, T, c, h, w) it denoises."""
        return int(self.model.config.in_channels)

    def options(self) -> dict:
        """What an exported student records to be rebuilt the same (lrm.json "options"), as JSON: "dtype", its
        weights' dtype (load_diffusers_denoiser loads them in it), and the family's constructor extras."""
        return {"dtype": str(self.model.dtype).removeprefix("torch.")}  # diffusers' ModelMixin.dtype

    pooled_dim = 0  # width of the pooled vector carried as text's first token (0: none)
    flow_grid = "scheduler"  # a flow schedule's sampling grid: the pipeline's (lrm.diffusion.schedules.FLOW_GRIDS)

    def _image_tokens(self) -> int | None:
        """Packed latent tokens for resolution-dependent shifting (FLUX); None elsewhere."""
        return None

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, T, c, h, w) and text (B, L, D) in the model's dtype, t (B,) -> (B, T, c, h, w)."""
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, T, c, h, w), t (B,) in the schedule's timesteps, text (B, L, D) | None, text_mask (B, L)
        bool | None -> (B, T, c, h, w) in `self.prediction`."""
        who = f"{type(self).__name__}"
        if x_t.ndim != 5:
            raise ValueError(f"{who}: x_t must be (B, T, c, h, w), got shape {tuple(x_t.shape)}")
        param = next(self.model.parameters())
        if x_t.device != param.device:
            raise ValueError(f"{who}: inputs are on {x_t.device} but the model is on {param.device}; "
                             f"move it with denoiser.to({str(x_t.device)!r})")
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"{who}: t must have shape ({b},), got {tuple(t.shape)}")
        context = self._text(b, text, text_mask).to(device=x_t.device, dtype=param.dtype)
        out = self._denoise(x_t.to(param.dtype), t, context)
        return out.to(x_t.dtype)

    def _text(self, b: int, text: torch.Tensor | None, text_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D) the model reads: masked positions zeroed, unconditional rows replaced by null_text."""
        who = f"{type(self).__name__}"
        if text is None:
            if text_mask is not None:
                raise ValueError(f"{who}: text_mask given without text; "
                                 "pass both, or neither for the unconditional branch")
            return self._null(who).expand(b, -1, -1)
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != self.text_dim:
            raise ValueError(f"{who}: text must be (B={b}, L, D={self.text_dim}) from this model's prompt encoder "
                             f"(load_diffusers_prompt_encoder), got shape {tuple(text.shape)}")
        if text_mask is None:
            return text
        if tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"{who}: text_mask must have shape {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
        mask = text_mask.to(device=text.device, dtype=torch.bool)
        text = text * mask[..., None]
        unconditional = ~mask.any(dim=1)  # (B,)
        if not unconditional.any():
            return text
        null = self._null(who).to(text)
        length = max(text.shape[1], null.shape[1])  # pad both with zero tokens to one length
        text, null = (F.pad(x, (0, 0, 0, length - x.shape[1])) for x in (text, null))
        return torch.where(unconditional[:, None, None], null, text)

    def _null(self, who: str) -> torch.Tensor:
        if self.null_text is None:
            raise ValueError(f"{who}: the unconditional branch (text=None or an all-False mask row) needs null_text; "
                             "set denoiser.null_text = prompt_encoder.unconditional() (load_diffusers does this)")
        return self.null_text


def _fold_frames(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
    """An image model on a clip: (B, T, c, h, w) -> (B*T, c, h, w), t and text repeated per frame."""
    frames = x.shape[1]
    return x.flatten(0, 1), t.repeat_interleave(frames), text.repeat_interleave(frames, dim=0)


class UNetDenoiser(DiffusersDenoiser):
    """SD 1.x / 2.x UNet2DConditionModel: eps or v, CLIP token embeddings."""

    family = "sd"
    model_class = "UNet2DConditionModel"

    @property
    def text_dim(self) -> int:
        return int(self.model.config.cross_attention_dim)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, added: dict | None = None) -> torch.Tensor:
        b, frames = x.shape[:2]
        x, t, tokens = _fold_frames(x, t, tokens)
        if added is not None:
            added = {k: v.repeat_interleave(frames, dim=0) for k, v in added.items()}
        out = self.model(x, t, encoder_hidden_states=tokens, added_cond_kwargs=added).sample  # (B*T, c, h, w)
        return out.unflatten(0, (b, frames))

    def _denoise(self, x, t, text):
        return self._unet(x, t, text)


class SDXLDenoiser(UNetDenoiser):
    """SDXL base UNet2DConditionModel: tokens of two CLIPs, pooled projection + six size/crop time ids."""

    family = "sdxl"
    TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)
    REFINER_TIME_IDS = 5  # the refiner's: original (h, w), crop top-left (y, x), aesthetic score

    def __init__(self, model: nn.Module, scheduler, null_text: torch.Tensor | None = None,
                 vae_scale_factor: int = 8):
        super().__init__(model, scheduler, null_text)
        cfg = model.config
        if cfg.addition_embed_type != "text_time":
            raise ValueError("SDXLDenoiser needs a UNet with addition_embed_type 'text_time', "
                             f"got {cfg.addition_embed_type!r}")
        self.vae_scale_factor = vae_scale_factor  # latent -> pixel size, for the size time ids
        width, time_dim = int(cfg.projection_class_embeddings_input_dim), int(cfg.addition_time_embed_dim)
        self.pooled_dim = width - self.TIME_IDS * time_dim
        # the refiner reads only the second CLIP, so its tokens and its pooled vector have one width:
        # 2560 = 1280 + 5 * 256 (the base: 2816 = 1280 + 6 * 256 with 2048-wide tokens)
        if width == self.text_dim + self.REFINER_TIME_IDS * time_dim:
            raise ValueError(f"SDXLDenoiser: this UNet is an SDXL refiner's (added embedding {width} = pooled "
                             f"{self.text_dim} + 5 time ids with the aesthetic score); the refiner is not supported, "
                             "only the SDXL base")
        if not 0 < self.pooled_dim <= self.text_dim:
            raise ValueError(f"SDXLDenoiser: pooled width {self.pooled_dim} from the UNet config is not in "
                             f"1..{self.text_dim}; is this an SDXL refiner (aesthetic score ids)? It is not supported")

    def options(self) -> dict:
        return {**super().options(), "vae_scale_factor": self.vae_scale_factor}

    def time_ids(self, b: int, h: int, w: int, device, dtype) -> torch.Tensor:
        """(B, 6): the pipeline's default size conditioning, original = target = pixel size, crop (0, 0)."""
        size = [h * self.vae_scale_factor, w * self.vae_scale_factor]
        return torch.tensor([size + [0, 0] + size], device=device, dtype=dtype).expand(b, -1)

    def _denoise(self, x, t, text):
        tokens, pooled = unpack_pooled(text, self.pooled_dim)
        added = {"text_embeds": pooled, "time_ids": self.time_ids(x.shape[0], *x.shape[-2:], x.device, x.dtype)}
        return self._unet(x, t, tokens, added)


class SD3Denoiser(DiffusersDenoiser):
    """SD3Transformer2DModel: flow; CLIP + T5 tokens and pooled CLIP projections."""

    family = "sd3"
    model_class = "SD3Transformer2DModel"

    @property
    def text_dim(self) -> int:
        return int(self.model.config.joint_attention_dim)

    @property
    def pooled_dim(self) -> int:
        return int(self.model.config.pooled_projection_dim)

    def _denoise(self, x, t, text):
        b, frames = x.shape[:2]
        x, t, text = _fold_frames(x, t, text)
        tokens, pooled = unpack_pooled(text, self.pooled_dim)
        out = self.model(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t).sample
        return out.unflatten(0, (b, frames))


class FluxDenoiser(DiffusersDenoiser):
    """FluxTransformer2DModel: flow on 2x2-packed latents; T5 tokens, CLIP pooled, optional guidance embedding."""

    family = "flux"
    model_class = "FluxTransformer2DModel"
    flow_grid = "flux"  # FluxPipeline passes sigmas = linspace(1, 1/n, n), shifted once
    DEFAULT_LATENT_SIZE = (128, 128)  # FluxPipeline's default 1024 x 1024 px at the VAE's factor 8

    def __init__(self, model: nn.Module, scheduler, null_text: torch.Tensor | None = None,
                 latent_size: tuple[int, int] = DEFAULT_LATENT_SIZE, guidance_scale: float = 3.5):
        self.latent_size = tuple(latent_size)  # (h, w) the dynamic shift is computed for; set first: the base reads it
        super().__init__(model, scheduler, null_text)
        self.guidance_scale = guidance_scale  # embedded guidance of guidance-distilled models (FLUX.1-dev)

    @property
    def text_dim(self) -> int:
        return int(self.model.config.joint_attention_dim)

    @property
    def in_channels(self) -> int:
        return int(self.model.config.in_channels) // 4  # the transformer reads 2x2-packed latents

    def options(self) -> dict:
        return {**super().options(), "latent_size": list(self.latent_size),
                "guidance_scale": self.guidance_scale}

    @property
    def pooled_dim(self) -> int:
        return int(self.model.config.pooled_projection_dim)

    def _image_tokens(self) -> int:
        h, w = self.latent_size
        return (h // 2) * (w // 2)

    @staticmethod
    def pack(x: torch.Tensor) -> torch.Tensor:
        """(N, c, h, w) -> (N, h/2 * w/2, 4c): each 2x2 patch one token, channels (c, dy, dx)."""
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), 4 * c)

    @staticmethod
    def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(N, h/2 * w/2, 4c) -> (N, c, h, w); the inverse of pack."""
        n, _, channels = tokens.shape
        x = tokens.reshape(n, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, channels // 4, h, w)

    @staticmethod
    def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
        """(h/2 * w/2, 3) rotary position ids of the packed tokens: (0, row, col)."""
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
        return ids.to(device=device, dtype=dtype)

    def _denoise(self, x, t, text):
        b, frames, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"FluxDenoiser: latent height and width must be even (2x2 packing), got {(h, w)}")
        x, t, text = _fold_frames(x, t, text)
        tokens, pooled = unpack_pooled(text, self.pooled_dim)
        guidance = None
        if self.model.config.guidance_embeds:
            guidance = torch.full((x.shape[0],), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = self.model(
            hidden_states=self.pack(x),  # (N, h/2 * w/2, 4c)
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            timestep=t / 1000,  # FluxPipeline passes sigma; the transformer multiplies by 1000 again
            img_ids=self.image_ids(h, w, x.device, x.dtype),
            txt_ids=torch.zeros(tokens.shape[1], 3, device=x.device, dtype=x.dtype),
            guidance=guidance,
        ).sample
        return self.unpack(out, h, w).unflatten(0, (b, frames))


class WanDenoiser(DiffusersDenoiser):
    """WanTransformer3DModel: video flow model on (B, C, T, H, W); UMT5 tokens zero-padded to text_length."""

    family = "wan"
    model_class = "WanTransformer3DModel"

    def __init__(self, model: nn.Module, scheduler, null_text: torch.Tensor | None = None,
                 text_length: int = 512):
        super().__init__(model, scheduler, null_text)
        self.text_length = text_length  # WanPipeline's max_sequence_length: tokens are zero-padded to it

    def options(self) -> dict:
        return {**super().options(), "text_length": self.text_length}

    @property
    def text_dim(self) -> int:
        return int(self.model.config.text_dim)

    def _denoise(self, x, t, text):
        text = F.pad(text, (0, 0, 0, max(0, self.text_length - text.shape[1])))  # (B, text_length, D)
        out = self.model(hidden_states=x.transpose(1, 2), timestep=t, encoder_hidden_states=text).sample
        return out.transpose(1, 2)  # (B, C, T, H, W) -> (B, T, C, H, W)


FAMILIES: dict[str, type[DiffusersDenoiser]] = {
    "sd": UNetDenoiser,
    "sdxl": SDXLDenoiser,
    "sd3": SD3Denoiser,
    "flux": FluxDenoiser,
    "wan": WanDenoiser,
}


def family_of(model_config: dict) -> str:
    """The family of a denoiser from its config.json (_class_name; SDXL by its text_time embedding)."""
    name = model_config.get("_class_name")
    if name == "UNet2DConditionModel":
        return "sdxl" if model_config.get("addition_embed_type") == "text_time" else "sd"
    for family, cls in FAMILIES.items():
        if cls.model_class == name:
            return family
    known = sorted({cls.model_class for cls in FAMILIES.values()})
    raise ValueError(f"diffusers denoiser class {name!r} is not supported; supported: {', '.join(known)}")


# ---------------------------------------------------------------- files: local pipeline folder or HF cache


class PipelineFiles:
    """A diffusers pipeline: a local folder written by save_pretrained, or a hub id read from the HF cache
    (or downloaded where the hub is reachable, LRM_OFFLINE / HF_HUB_OFFLINE unset)."""

    def __init__(self, source: str):
        if not source:
            raise ValueError("diffusers denoiser needs a pipeline: a local folder or a hub id, "
                             "e.g. stable-diffusion-v1-5/stable-diffusion-v1-5")
        path = Path(source).expanduser()
        self.source = source
        self.local = path.is_dir()
        if not self.local and (source.startswith(("/", ".", "~")) or path.exists() or source.count("/") != 1):
            raise weights.MissingWeightsError(
                f"diffusers pipeline: no folder at {source!r}; pass a folder written by the pipeline's "
                "save_pretrained (with unet/ or transformer/, scheduler/, text_encoder/, tokenizer/) "
                "or an org/name hub id")
        self.root = str(path) if self.local else source
        self.local_only = self.local or weights.hub_offline()

    def where(self) -> str:
        return self.root if self.local else f"the Hugging Face cache for {self.source!r}" + (
            " (the hub is offline or unreachable)" if self.local_only else "")

    def has(self, file: str) -> bool:
        if self.local:
            return (Path(self.root) / file).is_file()
        try:
            self.file(file)
            return True
        except weights.MissingWeightsError:
            return False

    def file(self, file: str) -> Path:
        """Local path of one file of the pipeline; a one-line MissingWeightsError naming it when absent."""
        if self.local:
            path = Path(self.root) / file
            if not path.is_file():
                raise weights.MissingWeightsError(
                    f"diffusers pipeline {self.source!r}: {file} is missing in {self.root}; "
                    "save the whole pipeline with save_pretrained (or copy that file) into this folder")
            return path
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.source, file, local_files_only=self.local_only))
        except Exception as exc:  # EntryNotFound, LocalEntryNotFound, RepositoryNotFound, HTTP errors: all "absent"
            raise weights.MissingWeightsError(
                f"diffusers pipeline {self.source!r}: {file} not found in {self.where()} ({type(exc).__name__}); "
                "download the pipeline on a machine with network (huggingface-cli download) or pass a local folder"
            ) from exc

    def json(self, file: str) -> dict:
        return json.loads(self.file(file).read_text())

    def index(self) -> dict:
        """model_index.json (the pipeline's own config), {} where the folder has none."""
        return self.json("model_index.json") if self.has("model_index.json") else {}

    def denoiser_folder(self, subfolder: str | None) -> str:
        if subfolder is not None:
            self.file(f"{subfolder}/config.json")
            return subfolder
        for folder in ("unet", "transformer"):
            if self.has(f"{folder}/config.json"):
                return folder
        raise weights.MissingWeightsError(
            f"diffusers pipeline {self.source!r}: neither unet/config.json nor transformer/config.json "
            f"in {self.where()}; "
            "pass the pipeline's root folder (written by save_pretrained), or subfolder= naming the denoiser's folder")

    def load(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        """cls.from_pretrained on one component folder; missing files become a one-line fix."""
        key = "torch_dtype" if cls.__module__.startswith("diffusers") else "dtype"  # transformers 5 names it dtype
        kwargs = {key: dtype} if dtype is not None else {}
        try:
            return cls.from_pretrained(self.root, subfolder=subfolder, local_files_only=self.local_only, **kwargs)
        except OSError as exc:  # what diffusers and transformers raise for absent folders and files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise weights.MissingWeightsError(
                f"diffusers pipeline {self.source!r}: cannot load {cls.__name__} from {subfolder}/ in {self.where()} "
                f"({first}); save the component there with save_pretrained") from exc
        except ValueError as exc:
            if "low_cpu_mem_usage" in str(exc):  # diffusers needs accelerate for models that keep fp32 modules (Wan)
                raise ImportError(f"loading {cls.__name__} needs the accelerate package (diffusers keeps some of its "
                                  "modules in float32 through it): pip install accelerate") from exc
            raise


def scheduler_config(pipeline: PipelineFiles) -> dict:
    return pipeline.json("scheduler/scheduler_config.json")


def load_diffusers_denoiser(source: str, family: str | None = None, subfolder: str | None = None,
                            dtype: torch.dtype | None = None, **options) -> DiffusersDenoiser:
    """The denoiser of a diffusers pipeline (local folder or hub id in the HF cache) behind lrm's signature.

    family: one of FAMILIES, checked against the model's config (None: detected); subfolder: the
    denoiser's folder (default unet/ or transformer/; e.g. "transformer_2" for Wan 2.2's low-noise
    expert); options: the family's extras (FLUX latent_size, guidance_scale; SDXL vae_scale_factor;
    Wan text_length). The scheduler config comes from scheduler/scheduler_config.json. null_text is
    left unset: load_diffusers sets it from the prompt encoder.

    A student exported by lrm (lrm.generators.diffusers_export: the folder holds lrm.json) comes back as it was
    saved: in its recorded weights' dtype unless dtype is given (float32 where an older lrm.json records none),
    its recorded options are the defaults, a flow student samples on its recorded grid (the scheduler's where an
    older lrm.json records none), and its codec_settings and text_encoder_id are restored."""
    import diffusers

    pipeline = PipelineFiles(source)
    folder = pipeline.denoiser_folder(subfolder)
    detected = family_of(pipeline.json(f"{folder}/config.json"))
    if family is not None and family != detected:
        if family not in FAMILIES:
            raise ValueError(f"unknown diffusers family {family!r}; choose one of {', '.join(FAMILIES)}")
        raise ValueError(f"diffusers pipeline {source!r}: {folder}/ holds a {detected!r} denoiser, not {family!r}; "
                         f"pass family={detected!r} or leave it out")
    cls = FAMILIES[detected]
    sched = scheduler_config(pipeline)
    recorded = exported_record(pipeline)
    options = {**recorded.get("options", {}), **options}
    saved_dtype = options.pop("dtype", None)  # of the exported weights (DiffusersDenoiser.options)
    if dtype is None and saved_dtype is not None:
        dtype = getattr(torch, saved_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"diffusers pipeline {source!r}: lrm.json records dtype {saved_dtype!r}, not a torch "
                             "dtype; pass dtype= or correct it (e.g. \"bfloat16\")")
    model = pipeline.load(getattr(diffusers, cls.model_class), folder, dtype)
    if detected == "sdxl" and "vae_scale_factor" not in options and pipeline.has("vae/config.json"):
        options["vae_scale_factor"] = 2 ** (len(pipeline.json("vae/config.json")["block_out_channels"]) - 1)
    denoiser = cls(model, sched, **options)
    saved = recorded.get("schedule_config") or {}
    if saved.get("type") == "flow" == denoiser.schedule_config["type"]:
        # an exported student samples on the grid it was distilled on; one exported before lrm.json recorded the grid
        # was distilled on the scheduler's (FLUX's grid was the scheduler's then)
        denoiser.schedule_config = {**denoiser.schedule_config, "grid": saved.get("grid", "scheduler")}
        denoiser.schedule = schedule_from_config(denoiser.schedule_config)
    denoiser.codec_settings, denoiser.text_encoder_id = recorded.get("codec_settings"), recorded.get("text_encoder_id")
    return denoiser


def exported_record(pipeline: PipelineFiles) -> dict:
    """lrm.json of a folder lrm exported (lrm.generators.diffusers_export), {} for a diffusers pipeline."""
    from lrm.generators.diffusers_export import PROVENANCE

    return pipeline.json(PROVENANCE) if pipeline.local and pipeline.has(PROVENANCE) else {}


# ---------------------------------------------------------------- prompt encoders: the pipeline's own text encoders

# transformers classes a pipeline's text encoders may have (config.json "architectures")
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel", "UMT5EncoderModel")
# family -> the text encoder folders its pipeline reads, in order
TEXT_ENCODER_FOLDERS = {
    "sd": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sd3": ("text_encoder", "text_encoder_2", "text_encoder_3"),
    "flux": ("text_encoder", "text_encoder_2"),
    "wan": ("text_encoder",),
}
# family -> max_sequence_length of the pipeline's T5 tokens (SD3 256, FLUX.1-dev 512, Wan 512)
T5_LENGTHS = {"sd3": 256, "flux": 512, "wan": 512}


def _clip_length(tokenizer) -> int:
    """CLIP's context (77): the tokenizer's model_max_length, as the pipelines read it."""
    return int(tokenizer.model_max_length)


class DiffusersPromptEncoder(TextEncoder):
    """A pipeline's own text encoders and tokenizers: prompts -> the (B, L, D) text its denoiser reads
    (pooled vector first for sdxl / sd3 / flux), computed as the pipeline's encode_prompt does, cached
    per prompt. `unconditional()` gives the negative-prompt conditioning of CFG (null_text)."""

    def __init__(self, family: str, encoders: list[nn.Module], tokenizers: list, id: str,
                 max_sequence_length: int | None = None, force_zeros_for_empty_prompt: bool = False,
                 cache_size: int = 4096, batch_size: int = 16):
        super().__init__(cache_size=cache_size, batch_size=batch_size)
        if family not in TEXT_ENCODER_FOLDERS:
            raise ValueError(f"unknown diffusers family {family!r}; choose one of {', '.join(TEXT_ENCODER_FOLDERS)}")
        if len(encoders) != len(TEXT_ENCODER_FOLDERS[family]) or len(tokenizers) != len(encoders):
            raise ValueError(f"{family} needs {len(TEXT_ENCODER_FOLDERS[family])} text encoders and as many "
                             f"tokenizers, got {len(encoders)} and {len(tokenizers)}")
        self.family = family
        self.id = id
        self.encoders = [e.eval().requires_grad_(False) for e in encoders]
        self.tokenizers = tokenizers
        self.t5_length = max_sequence_length or T5_LENGTHS.get(family)  # T5 tokens per prompt
        self.force_zeros = force_zeros_for_empty_prompt  # SDXL: the negative prompt "" is all zeros
        self.max_length = self.t5_length if family in T5_LENGTHS else _clip_length(tokenizers[0])
        self.dim = self._dim()

    def _dim(self) -> int:
        last = self.encoders[-1].config
        if self.family == "sdxl":
            return sum(int(e.config.hidden_size) for e in self.encoders)
        return int(last.d_model if hasattr(last, "d_model") else last.hidden_size)

    def to(self, device: torch.device | str) -> DiffusersPromptEncoder:
        for encoder in self.encoders:
            encoder.to(device)
        self.clear_cache()
        return self

    # -- the pipelines' encoders, one per kind
    def _ids(self, tokenizer, prompts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                          add_special_tokens=True, return_tensors="pt")
        device = next(self.encoders[0].parameters()).device
        return batch.input_ids.to(device), batch.attention_mask.to(device)

    def _clip(self, index: int, prompts: list[str], penultimate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP encoder `index` -> tokens (b, 77, d) (last or penultimate hidden state), pooled (b, p):
        text_embeds of a projection model, else pooler_output."""
        encoder, tokenizer = self.encoders[index], self.tokenizers[index]
        ids, mask = self._ids(tokenizer, prompts, _clip_length(tokenizer))
        use_mask = getattr(encoder.config, "use_attention_mask", False)  # as StableDiffusionPipeline; usually unset
        out = encoder(ids, attention_mask=mask if use_mask else None, output_hidden_states=True)
        tokens = out.hidden_states[-2] if penultimate else out.last_hidden_state
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return tokens, pooled

    def _t5(self, index: int, prompts: list[str], with_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 / UMT5 encoder `index` -> tokens (b, t5_length, d), mask (b, t5_length) of real tokens;
        the attention mask is passed to the encoder only where the pipeline does (Wan)."""
        ids, mask = self._ids(self.tokenizers[index], prompts, self.t5_length)
        tokens = self.encoders[index](ids, attention_mask=mask if with_mask else None).last_hidden_state
        return tokens, mask.bool()

    def embed_tokens(self, prompts: list[str]) -> list[torch.Tensor]:
        f = self.family
        if f == "sd":  # StableDiffusionPipeline: last hidden state (with the final layer norm)
            tokens, _ = self._clip(0, prompts, penultimate=False)
            return list(tokens)
        if f == "sdxl":  # both CLIPs' penultimate tokens side by side; pooled from the second
            first, _ = self._clip(0, prompts, penultimate=True)
            second, pooled = self._clip(1, prompts, penultimate=True)
            return list(pack_pooled(torch.cat([first, second], dim=-1), pooled))
        if f == "sd3":  # [CLIP-L | CLIP-G] zero-padded to T5's width, then T5 tokens; pooled = [L | G]
            clip_l, pooled_l = self._clip(0, prompts, penultimate=True)
            clip_g, pooled_g = self._clip(1, prompts, penultimate=True)
            t5, _ = self._t5(2, prompts, with_mask=False)
            clip = F.pad(torch.cat([clip_l, clip_g], dim=-1), (0, t5.shape[-1] - clip_l.shape[-1] - clip_g.shape[-1]))
            return list(pack_pooled(torch.cat([clip, t5], dim=1), torch.cat([pooled_l, pooled_g], dim=-1)))
        if f == "flux":  # T5 tokens; pooled = CLIP's pooler_output
            _, pooled = self._clip(0, prompts, penultimate=False)
            t5, _ = self._t5(1, prompts, with_mask=False)
            return list(pack_pooled(t5, pooled))
        # wan: the pipeline's prompt_clean, UMT5 with its mask, real tokens only (the adapter zero-pads)
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens, mask = self._t5(0, [prompt_clean(p) for p in prompts], with_mask=True)
        return [row[: int(n)] for row, n in zip(tokens, mask.sum(dim=1))]

    def unconditional(self) -> torch.Tensor:
        """(1, L, D) null_text of CFG: the encoding of "" (the pipelines' default negative prompt), or
        zeros where the pipeline forces them (SDXL's force_zeros_for_empty_prompt)."""
        emb = self.encode([""]).emb
        return torch.zeros_like(emb) if self.force_zeros else emb


def prompt_encoder_id(source: str, family: str, max_sequence_length: int | None = None) -> str:
    """The lrm.text id that rebuilds this prompt encoder: "diffusers:<source>", with "@<T5 tokens>" when
    max_sequence_length is not the family's default (T5_LENGTHS)."""
    length = max_sequence_length if family in T5_LENGTHS else None
    suffix = f"@{length}" if length is not None and length != T5_LENGTHS[family] else ""
    local = Path(source).expanduser()
    if local.is_dir():  # a local pipeline by absolute path: a relative one would read as a hub id elsewhere
        source = str(local.resolve())
    return f"diffusers:{source}{suffix}"


def load_prompt_encoder_by_id(argument: str, **options) -> DiffusersPromptEncoder:
    """lrm.text.load("diffusers:<argument>"): argument is "<source>" or "<source>@<T5 tokens>" (prompt_encoder_id)."""
    source, at, length = argument.rpartition("@")
    if not (at and length.isdigit()):
        source, length = argument, None
    return load_diffusers_prompt_encoder(source, max_sequence_length=int(length) if length else None, **options)


def load_diffusers_prompt_encoder(source: str, family: str | None = None, dtype: torch.dtype | None = None,
                                  max_sequence_length: int | None = None, cache_size: int = 4096,
                                  batch_size: int = 16) -> DiffusersPromptEncoder:
    """The pipeline's text encoders + tokenizers (text_encoder[_2|_3]/, tokenizer[_2|_3]/) as one prompt
    encoder for the denoiser of `family` (None: detected from the pipeline's denoiser)."""
    import transformers
    from transformers import AutoTokenizer

    pipeline = PipelineFiles(source)
    if family is None:
        family = family_of(pipeline.json(f"{pipeline.denoiser_folder(None)}/config.json"))
    if family not in TEXT_ENCODER_FOLDERS:
        raise ValueError(f"unknown diffusers family {family!r}; choose one of {', '.join(TEXT_ENCODER_FOLDERS)}")
    encoders, tokenizers = [], []
    for folder in TEXT_ENCODER_FOLDERS[family]:
        architectures = pipeline.json(f"{folder}/config.json").get("architectures") or [None]
        if architectures[0] not in TEXT_ENCODER_CLASSES:
            raise ValueError(f"diffusers pipeline {source!r}: {folder}/ holds {architectures[0]!r}; "
                             f"supported text encoders: {', '.join(TEXT_ENCODER_CLASSES)}")
        encoders.append(pipeline.load(getattr(transformers, architectures[0]), folder, dtype))
        tokenizers.append(pipeline.load(AutoTokenizer, folder.replace("text_encoder", "tokenizer")))
    index = pipeline.index()
    return DiffusersPromptEncoder(
        family, encoders, tokenizers, id=prompt_encoder_id(source, family, max_sequence_length),
        max_sequence_length=max_sequence_length,
        force_zeros_for_empty_prompt=family == "sdxl" and index.get("force_zeros_for_empty_prompt", True),
        cache_size=cache_size, batch_size=batch_size)


def load_diffusers(source: str, family: str | None = None, dtype: torch.dtype | None = None,
                   max_sequence_length: int | None = None,
                   **options) -> tuple[DiffusersDenoiser, DiffusersPromptEncoder]:
    """(denoiser, prompt encoder) of one pipeline, the denoiser's null_text set from the encoder."""
    denoiser = load_diffusers_denoiser(source, family, dtype=dtype, **options)
    encoder = load_diffusers_prompt_encoder(source, denoiser.family, dtype, max_sequence_length)
    if isinstance(denoiser, WanDenoiser) and "text_length" not in options:
        denoiser.text_length = encoder.t5_length  # zero-pad to the length the encoder tokenises to
    denoiser.null_text = encoder.unconditional()
    denoiser.text_encoder_id = encoder.id
    return denoiser, encoder


__all__ = [
    "FAMILIES", "DiffusersDenoiser", "UNetDenoiser", "SDXLDenoiser", "SD3Denoiser", "FluxDenoiser", "WanDenoiser",
    "DiffusersPromptEncoder", "load_diffusers", "load_diffusers_denoiser", "load_diffusers_prompt_encoder",
    "prediction_from_scheduler", "schedule_config_from_scheduler", "pack_pooled", "unpack_pooled",
]
