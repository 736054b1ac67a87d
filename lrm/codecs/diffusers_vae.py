"""Any diffusers autoencoder as a codec: `lrm.codecs.load("diffusers:<path-or-hub-id>")`.

Image VAEs (AutoencoderKL, AutoencoderTiny, AutoencoderDC, ...) encode each frame on its own; video
VAEs (AutoencoderKLWan and other 3D-convolution VAEs) take the clip (B, 3, T, H, W) and compress
time causally: T' = 1 + (T - 1) / temporal_factor.

Latents come out the way the diffusion model sees them ("already scaled"), following
the diffusers pipelines:
- AutoencoderKL / AutoencoderTiny: z = (raw - shift_factor) * scaling_factor
  (SD: scale 0.18215; FLUX.1: shift 0.1159, scale 0.3611; Tiny: 1 and 0);
- latents_mean / latents_std in the config (Wan, some SDXL VAEs), or as the model's buffers (LTX-Video):
  z = (raw - mean) * scaling_factor / std, per channel;
- AutoencoderKLFlux2: the batch-norm statistics of the 2x2-patchified latent, applied per
  channel and sub-pixel position, so the layout stays 32 x H/8 x W/8.
The raw latent is the posterior mode (deterministic). decode inverts the scaling. Geometry
(channels, spatial and temporal factors) is measured once at load by encoding a blank probe.

Name forms: a local folder (`diffusers:/models/sd-vae`), a hub id (`diffusers:stabilityai/sd-vae-ft-mse`),
or a hub id with a subfolder (`diffusers:black-forest-labs/FLUX.1-dev/vae`). Hub models come from
the Hugging Face cache only when LRM_OFFLINE=1 or HF_HUB_OFFLINE=1, or when the hub cannot be
reached (lrm.weights.hub_offline).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from lrm import weights
from lrm.codecs.base import Codec

PREFIX = "diffusers:"
PROBE_SIZE = 64  # side of the blank probe image that measures the spatial factor (up to 64x)
VIDEO_PROBE_SIZE = 32  # side of the blank probe clip of video VAEs (spatial factors up to 32x)
PROBE_FRAMES = 9  # frames of the probe clip that measures a video VAE's temporal factor


def split_source(source: str) -> tuple[str, str | None]:
    """(path or hub id, subfolder): a local folder as given, else `org/repo[/subfolder...]`."""
    if not source:
        raise ValueError("diffusers codec needs a model: diffusers:<local folder or hub id>, e.g. "
                         "diffusers:stabilityai/sd-vae-ft-mse")
    if Path(source).expanduser().exists():
        return str(Path(source).expanduser()), None
    if source.startswith(("/", ".", "~")):
        raise weights.MissingWeightsError(f"diffusers codec: no folder at {source!r}; "
                                          "pass a folder written by save_pretrained (with config.json)")
    parts = source.split("/")
    if len(parts) > 2:
        return "/".join(parts[:2]), "/".join(parts[2:])
    return source, None


def load_model(source: str, dtype: torch.dtype | None) -> nn.Module:
    from diffusers import AutoModel

    path, subfolder = split_source(source)
    local_only = weights.hub_offline() or Path(path).exists()
    try:
        model = AutoModel.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        where = "the Hugging Face cache; the hub is offline or unreachable" if local_only and not Path(path).exists() else path
        raise weights.MissingWeightsError(
            f"diffusers codec: cannot load an autoencoder from {source!r} ({where}): {exc}\n"
            "Fix: pass a folder written by save_pretrained (with config.json), or a hub id of an "
            "autoencoder (add /vae for a pipeline repository) with network access or a warm HF cache."
        ) from exc
    if not (hasattr(model, "encode") and hasattr(model, "decode")):
        raise ValueError(f"diffusers codec: {source!r} is a {type(model).__name__}, not an autoencoder")
    return model


def is_video_vae(model: nn.Module) -> bool:
    """Video VAEs convolve over time in their encoder (Conv3d); image VAEs do not."""
    return any(isinstance(m, nn.Conv3d) for m in model.encoder.modules())


def latent_stats(model: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """(mean (c, p, p), std (c, p, p), scaling factor, patch p) with z = (raw - mean) * scaling / std."""
    config = model.config
    scaling = float(config.get("scaling_factor", None) or 1.0)
    bn = getattr(model, "bn", None)
    if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:  # FLUX.2: stats of the 2x2-patchified latent
        p = int(config["patch_size"][0])
        mean = bn.running_mean.detach().double().reshape(channels, p, p)
        std = (bn.running_var.detach().double() + config["batch_norm_eps"]).sqrt().reshape(channels, p, p)
        return mean, std, scaling, p
    if config.get("latents_mean") is not None:
        mean = torch.tensor(config["latents_mean"], dtype=torch.float64).reshape(channels, 1, 1)
        std = torch.tensor(config["latents_std"], dtype=torch.float64).reshape(channels, 1, 1)
        return mean, std, scaling, 1
    buffers = dict(model.named_buffers(recurse=False))  # not getattr: diffusers warns on config names read so
    if "latents_mean" in buffers and "latents_std" in buffers:  # LTX-Video keeps them as buffers, not in its config
        mean, std = (buffers[k].detach().double().reshape(channels, 1, 1) for k in ("latents_mean", "latents_std"))
        return mean, std, scaling, 1
    shift = float(config.get("shift_factor", None) or 0.0)
    return torch.full((channels, 1, 1), shift, dtype=torch.float64), torch.ones(channels, 1, 1, dtype=torch.float64), scaling, 1


class DiffusersCodec(Codec):
    """A diffusers autoencoder with its latent normalisation applied (see module doc)."""

    version = "1"

    def __init__(self, source: str, batch_size: int = 4, dtype: torch.dtype | None = None):
        super().__init__()
        self.name = PREFIX + source
        self.batch_size = batch_size
        self.model = load_model(source, dtype).eval().requires_grad_(False)  # frozen; gradients reach inputs
        self.video = is_video_vae(self.model)
        self.channels, self.spatial_factor, self.temporal_factor = self._probe()
        mean, std, self.scale, self.patch = latent_stats(self.model, self.channels)
        self.register_buffer("latent_mean", mean, persistent=False)  # (c, p, p)
        self.register_buffer("latent_std", std, persistent=False)  # (c, p, p)

    def settings(self) -> dict:
        extra = {"model_class": type(self.model).__name__}
        if self.latent_mean.abs().sum() or (self.latent_std != 1).any():
            extra["latent_mean"] = [round(v, 6) for v in self.latent_mean.flatten().tolist()]
            extra["latent_std"] = [round(v, 6) for v in self.latent_std.flatten().tolist()]
        return {**super().settings(), **extra}

    # ---- model calls on (N, 3, [T,] H, W) in [-1, 1] -------------------------------------------

    def _raw_encode(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(x)
        if hasattr(out, "latent_dist"):  # AutoencoderKL and its video variants
            return out.latent_dist.mode()
        return out.latents if hasattr(out, "latents") else out.latent  # AutoencoderTiny; AutoencoderDC

    def _probe(self) -> tuple[int, int, int]:
        """(channels, spatial factor, temporal factor) from one blank probe through the encoder."""
        param = next(self.model.parameters())
        size = VIDEO_PROBE_SIZE if self.video else PROBE_SIZE
        shape = (1, 3, PROBE_FRAMES, size, size) if self.video else (1, 3, size, size)
        with torch.no_grad():
            raw = self._raw_encode(torch.zeros(shape, dtype=param.dtype, device=param.device))
        temporal = (PROBE_FRAMES - 1) // (raw.shape[2] - 1) if self.video else 1
        return raw.shape[1], size // raw.shape[-1], temporal

    # ---- normalisation, in the un-patchified layout (N, c, h, w) --------------------------------

    def _stats_map(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std / scale tiled to latents' (h, w), on its device and dtype."""
        h, w = latents.shape[-2:]
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"{self.name}: latent height and width must be multiples of {p}, got {(h, w)}; "
                             f"use pixel sizes that are multiples of {p * self.spatial_factor}")
        mean = self.latent_mean.repeat(1, h // p, w // p)
        std = self.latent_std.repeat(1, h // p, w // p) / self.scale
        return mean.to(latents), std.to(latents)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = pixels.shape
        x = self._as_model(pixels) * 2 - 1
        if self.video:
            raw = self._raw_encode(x.transpose(1, 2)).transpose(1, 2)  # (B, T', c, h, w)
        else:
            raw = self._raw_encode(x.reshape(b * t, 3, h, w))  # (B*T, c, h, w)
        mean, std = self._stats_map(raw)
        latents = ((raw - mean) / std).to(pixels.dtype)
        return latents.reshape(b, -1, *latents.shape[-3:])

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = latents.shape
        z = self._as_model(latents)
        mean, std = self._stats_map(z)
        raw = z * std + mean
        if self.video:
            x = self.model.decode(raw.transpose(1, 2)).sample.transpose(1, 2)  # (B, T, 3, H, W)
        else:  # SVD's AutoencoderKLTemporalDecoder decodes each clip's frames together: it takes their count
            frames = {"num_frames": t} if "num_frames" in inspect.signature(self.model.decode).parameters else {}
            x = self.model.decode(raw.reshape(b * t, c, h, w), **frames).sample  # (B*T, 3, H, W)
        pixels = ((x + 1) / 2).clamp(0, 1).to(latents.dtype)
        return pixels.reshape(b, -1, *pixels.shape[-3:])

    def _as_model(self, x: torch.Tensor) -> torch.Tensor:
        """x in the model's dtype; a clear error when x and the model sit on different devices."""
        param = next(self.model.parameters())
        if x.device != param.device:
            raise ValueError(f"{self.name}: inputs are on {x.device} but the codec is on {param.device}; "
                             f"move the codec with codec.to({str(x.device)!r})")
        return x.to(param.dtype)
