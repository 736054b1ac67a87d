"""Tiny autoencoders of the TAESD family (madebyollin/taesd, MIT), rebuilt with the same layer order.

The published weights are fp16 state dicts of `nn.Sequential` encoders and decoders (keys such as
`0.weight`, `1.conv.0.weight`); the modules below reproduce those indices exactly so the files load
with strict=True. Design (taesd.py upstream): 3x3 convs, residual `Block`s
(conv-relu-conv-relu-conv + skip, relu), stride-2 convs down, nearest 2x upsampling up, and a
`tanh(x / 3) * 3` clamp in front of the decoder. TAEF2 (FLUX.2) adds a pooled 1x1 bottleneck with
GroupNorm in the three lowest-resolution blocks of the encoder and decoder ("midblock GN").

Conventions, from upstream code and its maintainer (taesd issues #3 and #35):
- pixels go in as [0, 1] and come out as approximately [0, 1] (clamped here);
- the encoder emits latents in the space the diffusion model itself sees, so no scaling factor
  applies (`scale = 1.0`, no shift). For FLUX.2 that is the VAE latent after the pipeline's
  batch-norm normalisation, laid out un-patchified as 32 x H/8 x W/8 (FLUX.2's transformer reads
  it 2x2-patchified as 128 channels). Upstream's diffusers wrapper for TAEF2 therefore sets the
  VAE batch norm to the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lrm import weights
from lrm.codecs.base import Codec


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3) in front of the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block; `pooled_norm` adds TAEF2's 1x1 bottleneck (x4 width, GroupNorm(4)) before it."""

    def __init__(self, n_in: int, n_out: int, pooled_norm: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooled_norm:
            wide = 4 * n_in
            self.pool = nn.Sequential(nn.Conv2d(n_in, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(),
                                      nn.Conv2d(wide, n_in, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def encoder(latent_channels: int, midblock_norm: bool) -> nn.Sequential:
    """(N, 3, H, W) in [0, 1] -> (N, latent_channels, H/8, W/8); 15 modules, indices as published."""
    def deep():
        return [Block(64, 64, midblock_norm) for _ in range(3)]
    return nn.Sequential(
        conv(3, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), *deep(),
        conv(64, latent_channels),
    )


def decoder(latent_channels: int, midblock_norm: bool) -> nn.Sequential:
    """(N, latent_channels, h, w) -> (N, 3, 8h, 8w) in about [0, 1]; 20 modules, indices as published."""
    def deep():
        return [Block(64, 64, midblock_norm) for _ in range(3)]
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(),
        *deep(), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), conv(64, 3),
    )


@dataclass(frozen=True)
class TinyAutoencoder:
    encoder_weights: str  # key in lrm.weights.WEIGHTS
    decoder_weights: str  # key in lrm.weights.WEIGHTS
    latent_channels: int  # channels of the target VAE's latents
    midblock_norm: bool  # TAEF2's pooled GroupNorm in the lowest-resolution blocks
    target: str  # the latent space it imitates, for messages and docs


# Members whose encoder and decoder weights are both published and registered in lrm.weights.
# (taesana on ../shared/data ships an encoder only, so it cannot round-trip and is left out.)
TINY_AUTOENCODERS: dict[str, TinyAutoencoder] = {
    "taef2": TinyAutoencoder("taef2_encoder", "taef2_decoder", 32, True, "FLUX.2 VAE"),
}


class TAESDCodec(Codec):
    """A TAESD-family tiny autoencoder as a codec: 8x spatial, per frame, latents used as emitted."""

    version = "1"
    spatial_factor = 8
    temporal_factor = 1
    scale = 1.0  # TAESD latents already live in the diffusion model's latent scale (see module doc)

    def __init__(self, name: str, batch_size: int = 16):
        super().__init__()
        if name not in TINY_AUTOENCODERS:
            raise KeyError(f"unknown tiny autoencoder {name!r}; known: {', '.join(sorted(TINY_AUTOENCODERS))}")
        spec = TINY_AUTOENCODERS[name]
        self.name = name
        self.channels = spec.latent_channels
        self.batch_size = batch_size
        self.encoder = encoder(spec.latent_channels, spec.midblock_norm)
        self.decoder = decoder(spec.latent_channels, spec.midblock_norm)
        self.encoder.load_state_dict(weights.load_registered(spec.encoder_weights), strict=True)
        self.decoder.load_state_dict(weights.load_registered(spec.decoder_weights), strict=True)
        self.requires_grad_(False)  # a frozen latent space; gradients still flow to the inputs

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = pixels.shape
        latents = self.encoder(self._as_weights(pixels).reshape(b * t, 3, h, w))  # (B*T, c, h/8, w/8)
        return latents.to(pixels.dtype).reshape(b, t, self.channels, h // 8, w // 8)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = latents.shape
        pixels = self.decoder(self._as_weights(latents).reshape(b * t, c, h, w)).clamp(0, 1)  # (B*T, 3, 8h, 8w)
        return pixels.to(latents.dtype).reshape(b, t, 3, 8 * h, 8 * w)

    def _as_weights(self, x: torch.Tensor) -> torch.Tensor:
        """x in the weights' dtype; a clear error when x and the weights sit on different devices."""
        weight = self.encoder[0].weight
        if x.device != weight.device:
            raise ValueError(f"{self.name}: inputs are on {x.device} but the codec is on {weight.device}; "
                             f"move the codec with codec.to({str(x.device)!r})")
        return x.to(weight.dtype)
