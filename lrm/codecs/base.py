"""The codec interface: pixels (B, T, 3, H, W) in [0, 1] <-> latents (B, T', c, h, w).

A codec owns its latent scale (latents come out already scaled) and states its geometry so
that stores and checkpoints can record it and refuse a mismatch.
"""

from __future__ import annotations

import torch
from torch import nn


def no_mirror(name: str) -> str:
    """The refusal of horizontal-flip augmentation in codec `name`, which has no exact latent mirror."""
    return (f"codec {name!r} has no exact latent-space mirror (its encoder is not equivariant to flips), so "
            "horizontal-flip augmentation is unavailable for it; fit without augmentation")


class Codec(nn.Module):
    """Subclasses set the attributes below and implement `_encode` / `_decode` on one chunk."""

    name: str  # registry name, e.g. "dct"
    version: str = "1"  # bump when the latent layout changes: stores refuse other versions
    channels: int  # c
    spatial_factor: int  # H / h
    temporal_factor: int = 1  # frames per latent frame after the first (1: per-frame codec)
    scale: float = 1.0  # multiplier already applied to the latents
    batch_size: int = 8  # clips per chunk in encode/decode

    def settings(self) -> dict:
        """Everything needed to rebuild this codec and to tell two latent spaces apart."""
        return {"name": self.name, "version": self.version, "channels": self.channels,
                "spatial_factor": self.spatial_factor, "temporal_factor": self.temporal_factor,
                "scale": self.scale}

    @property
    def codec_id(self) -> str:
        return f"{self.name}-v{self.version}"

    def latent_frames(self, frames: int) -> int:
        """T' for T input frames (causal video VAEs: 1 + (T - 1) / temporal_factor)."""
        if self.temporal_factor == 1:
            return frames
        return 1 + (frames - 1) // self.temporal_factor

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T', c, h, w) for clips of `frames` frames at height x width."""
        return (self.latent_frames(frames), self.channels,
                height // self.spatial_factor, width // self.spatial_factor)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T', c, h, w), in chunks of `batch_size` clips."""
        if pixels.ndim != 5 or pixels.shape[2] != 3:
            raise ValueError(f"{self.name}: encode expects pixels (B, T, 3, H, W), got {tuple(pixels.shape)}")
        f = self.spatial_factor
        if pixels.shape[-1] % f or pixels.shape[-2] % f:
            raise ValueError(
                f"{self.name}: height and width must be multiples of {f}, got {tuple(pixels.shape[-2:])}; "
                f"resize or crop to a multiple of {f}"
            )
        frames = pixels.shape[1]
        if self.temporal_factor > 1 and (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"{self.name}: a causal video codec with temporal factor {self.temporal_factor} needs "
                f"1 + k * {self.temporal_factor} frames, got {frames}; sample "
                f"{1 + (frames - 1) // self.temporal_factor * self.temporal_factor} frames instead"
            )
        return torch.cat([self._encode(c) for c in pixels.split(self.batch_size)])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T', c, h, w) -> (B, T, 3, H, W) in [0, 1], in chunks of `batch_size` clips."""
        if latents.ndim != 5 or latents.shape[2] != self.channels:
            raise ValueError(
                f"{self.name}: decode expects latents (B, T', {self.channels}, h, w), got {tuple(latents.shape)}"
            )
        return torch.cat([self._decode(c) for c in latents.split(self.batch_size)])

    def mirror_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T', c, h, w) -> the latents of the left-right mirrored frames, computed from `latents`
        alone (the horizontal-flip augmentation of `FitConfig.augment`). Only codecs whose latent
        space allows an exact mirror implement it; the others refuse."""
        raise ValueError(no_mirror(self.name))

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
