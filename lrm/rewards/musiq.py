"""MUSIQ, the multi-scale image quality transformer that VBench uses for imaging quality.

Ke et al., "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021. A port of IQA-PyTorch's
re-implementation (pyiqa 0.1.16, `pyiqa/archs/musiq_arch.py` and
`pyiqa/data/multiscale_trans_util.py`), the one VBench scores with. Same module and parameter names
as pyiqa's `MUSIQ`, so its published checkpoints (musiq_spaq_ckpt-358bb6af.pth: a bare state dict,
keys possibly prefixed "module.") load with strict=True. The port exists because `pip install pyiqa`
brings bitsandbytes, datasets, a second OpenCV and developer tools along with it.

Forward pass (inference path of pyiqa's MUSIQ, everything differentiable in the pixels):

1. pixels in [0, 1] -> [-1, 1];
2. a multi-scale token set: the image resized (bicubic, aspect kept) so its longer side is each of
   `longer_side_lengths`, plus the native resolution; each cut into p x p patches after TF "SAME"
   zero padding; the resized scales padded with empty, masked-out patches to ceil(L / p)^2 tokens;
3. every patch through a ResNet root (weight-standardised 7x7/2 conv, GroupNorm, 3x3/2 max pool,
   one bottleneck) and a linear embedding;
4. hashed spatial positions (the patch grid mapped onto a G x G table by nearest resampling) and a
   scale embedding added, a class token prepended, a pre-norm transformer with masked attention;
5. a linear head on the class token: the mean opinion score (SPAQ: 0..100).

    model = load_musiq(weights.resolve("musiq_spaq"))
    mos = model(frames)          # (N, 3, H, W) in [0, 1] -> (N, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrm import weights


@dataclass(frozen=True)
class MUSIQConfig:
    patch_size: int = 32  # p: side of the square patches that become tokens
    hidden_size: int = 384  # transformer channels
    mlp_dim: int = 1152  # transformer MLP hidden channels
    num_heads: int = 6  # attention heads
    num_layers: int = 14  # transformer depth
    spatial_pos_grid_size: int = 10  # G: hashed spatial positions share a G x G embedding table
    longer_side_lengths: tuple[int, ...] = (224, 384)  # resized scales, by longer side; ids in sorted order
    max_seq_len_from_original_res: int = -1  # native-resolution tokens kept (padded or cut); -1: all
    root_channels: int = 64  # ResNet root width (pyiqa's resnet_token_dim); the bottleneck outputs 4x

    @property
    def num_scales(self) -> int:
        """Rows of the scale embedding: the resized scales, then the native resolution."""
        return len(self.longer_side_lengths) + 1


MUSIQ_PRESETS: dict[str, MUSIQConfig] = {
    "MUSIQ-SPAQ": MUSIQConfig(),  # pyiqa MUSIQ(pretrained="spaq"): num_class=1, regression head
}

MASKED_LOGIT = -1e3  # what pyiqa writes into masked attention logits (not -inf: fully masked rows stay finite)


# ---------------------------------------------------------------- multi-scale tokens


@dataclass(frozen=True)
class Tokens:
    """The multi-scale token set of a batch of equally sized images."""

    patches: torch.Tensor  # (N, L, 3, p, p) pixels in [-1, 1]; zero where masked out
    spatial: torch.Tensor  # (L,) long: hashed spatial position in [0, G^2)
    scale: torch.Tensor  # (L,) long: scale id in [0, num_scales)
    mask: torch.Tensor  # (L,) bool: True for real patches, False for padding


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding of (N, C, H, W): ceil(H / stride) outputs, extra pixel at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        total = (math.ceil(size / stride) - 1) * stride + kernel - size
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def resize_longer_side(images: torch.Tensor, longer: int) -> torch.Tensor:
    """(N, C, H, W) -> longer side `longer`, aspect kept (Python's round: half to even), bicubic, no antialias."""
    h, w = images.shape[-2:]
    ratio = longer / max(h, w)
    return F.interpolate(images, (round(h * ratio), round(w * ratio)), mode="bicubic", align_corners=False)


def grid_index(grid: int, count: int) -> torch.Tensor:
    """(count,) long: nearest-neighbour resampling of the positions 0..grid-1 onto `count` cells.

    torch's float32 'nearest' index, as pyiqa computes it; it differs from the exact
    floor(i * grid / count) for a few sizes (grid 14, count 46, for one)."""
    positions = torch.arange(grid, dtype=torch.float32).reshape(1, 1, grid)
    return F.interpolate(positions, size=count, mode="nearest").reshape(count).long()


def hashed_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """(count_h * count_w,) long: row-major patch grid hashed onto the G x G embedding table."""
    rows, cols = grid_index(grid, count_h), grid_index(grid, count_w)
    return (rows[:, None] * grid + cols[None, :]).reshape(-1)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, ceil(H/p) * ceil(W/p), C, p, p), row-major, after 'SAME' zero padding."""
    x = same_pad(images, patch, patch)
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c, patch, patch)


def pad_or_cut(tokens: Tokens, length: int) -> Tokens:
    """Exactly `length` tokens: cut the tail, or append empty ones (spatial 0, scale 0, masked out)."""
    extra = length - tokens.spatial.shape[0]
    if extra <= 0:
        return Tokens(tokens.patches[:, :length], tokens.spatial[:length], tokens.scale[:length], tokens.mask[:length])
    patches = F.pad(tokens.patches, (0, 0, 0, 0, 0, 0, 0, extra))  # zero patches after the last token
    zeros = torch.zeros(extra, dtype=torch.long)
    return Tokens(
        patches, torch.cat([tokens.spatial, zeros]), torch.cat([tokens.scale, zeros]),
        torch.cat([tokens.mask, zeros.bool()]),
    )


def scale_tokens(images: torch.Tensor, cfg: MUSIQConfig, scale_id: int, length: int) -> Tokens:
    """Patches of one scale with their positions; `length` < 0 keeps them all."""
    p = cfg.patch_size
    count_h, count_w = math.ceil(images.shape[-2] / p), math.ceil(images.shape[-1] / p)
    spatial = hashed_positions(cfg.spatial_pos_grid_size, count_h, count_w)  # (count_h * count_w,)
    tokens = Tokens(
        patchify(images, p), spatial, torch.full_like(spatial, scale_id), torch.ones_like(spatial, dtype=torch.bool)
    )
    return tokens if length < 0 else pad_or_cut(tokens, length)


def multiscale_tokens(images: torch.Tensor, cfg: MUSIQConfig) -> Tokens:
    """(N, 3, H, W) in [-1, 1] -> the resized scales (sorted by size), then the native resolution."""
    parts = []
    for scale_id, longer in enumerate(sorted(cfg.longer_side_lengths)):
        length = math.ceil(longer / cfg.patch_size) ** 2  # the most patches this scale can have
        parts.append(scale_tokens(resize_longer_side(images, longer), cfg, scale_id, length))
    parts.append(scale_tokens(images, cfg, len(cfg.longer_side_lengths), cfg.max_seq_len_from_original_res))
    return Tokens(
        torch.cat([t.patches for t in parts], dim=1), torch.cat([t.spatial for t in parts]),
        torch.cat([t.scale for t in parts]), torch.cat([t.mask for t in parts]),
    )


# ---------------------------------------------------------------- ResNet root (per patch)


class StdConv(nn.Conv2d):
    """Conv2d with weight standardisation (Qiao et al. 2019) and TF 'SAME' padding, bias-free."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class Bottleneck(nn.Module):
    """ResNet v2-style bottleneck without the stride: 1x1, 3x3, 1x1 (to 4x width) plus a 1x1 projection."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv1 = StdConv(channels, channels, 1)
        self.gn1 = nn.GroupNorm(32, channels, eps=1e-4)
        self.conv2 = StdConv(channels, channels, 3)
        self.gn2 = nn.GroupNorm(32, channels, eps=1e-4)
        self.conv3 = StdConv(channels, out_channels, 1)
        self.gn3 = nn.GroupNorm(32, out_channels, eps=1e-4)
        self.conv_proj = StdConv(channels, out_channels, 1)  # pyiqa's needs_projection: channels change
        self.gn_proj = nn.GroupNorm(32, out_channels, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + identity)


# ---------------------------------------------------------------- transformer encoder


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, L, D), mask (L,) bool -> (N, L, D); logits between a pair with a padded token are replaced."""
        n, length, dim = x.shape
        q, k, v = (
            proj(x).reshape(n, length, self.heads, -1).transpose(1, 2)  # (N, heads, L, D / heads)
            for proj in (self.query, self.key, self.value)
        )
        logits = (q @ k.transpose(-2, -1)) * (dim // self.heads) ** -0.5  # (N, heads, L, L)
        logits = logits.masked_fill(~(mask[:, None] & mask[None, :]), MASKED_LOGIT)
        x = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, dim)
        return self.out(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block; parameter names norm1, attention, norm2, mlp as in pyiqa."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class HashedPositionEmbedding(nn.Module):
    """Holds the G x G position table under pyiqa's name; TransformerEncoder.forward indexes it."""

    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.position_emb = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)  # (1, G^2, D)


class ScaleEmbedding(nn.Module):
    """Holds the per-scale table under pyiqa's name; TransformerEncoder.forward indexes it."""

    def __init__(self, scales: int, dim: int):
        super().__init__()
        self.scale_emb = nn.Parameter(torch.randn(scales, dim) * 0.02)  # (S, D)


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: MUSIQConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.posembed_input = HashedPositionEmbedding(cfg.spatial_pos_grid_size, dim)
        self.scaleembed_input = ScaleEmbedding(cfg.num_scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": TransformerBlock(dim, cfg.mlp_dim, cfg.num_heads) for i in range(cfg.num_layers)}
        )

    def forward(self, x: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, L, D) patch embeddings, spatial/scale (L,) long, mask (L,) bool -> (N, 1 + L, D)."""
        x = x + self.posembed_input.position_emb[0, spatial] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1 + L, D)
        mask = torch.cat([mask.new_ones(1), mask])  # the class token is never masked
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


# ---------------------------------------------------------------- model


class MUSIQ(nn.Module):
    """pyiqa's MUSIQ with a regression head (num_class=1: SPAQ, KonIQ-10k, PaQ-2-PiQ checkpoints)."""

    def __init__(self, cfg: MUSIQConfig = MUSIQ_PRESETS["MUSIQ-SPAQ"]):
        super().__init__()
        self.cfg = cfg
        width = cfg.root_channels
        self.conv_root = StdConv(3, width, 7, 2)
        self.gn_root = nn.GroupNorm(32, width, eps=1e-6)
        self.block1 = Bottleneck(width, width * 4)
        token_side = cfg.patch_size // 4  # the root downsamples each patch by 4
        self.embedding = nn.Linear(width * 4 * token_side ** 2, cfg.hidden_size)
        self.transformer_encoder = TransformerEncoder(cfg)
        self.head = nn.Linear(cfg.hidden_size, 1)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, L, 3, p, p) -> (N, L, D): ResNet root per patch, flattened channels-last as in TF."""
        n, length = patches.shape[:2]
        x = F.relu(self.gn_root(self.conv_root(patches.flatten(0, 1))))  # (N*L, C, p/2, p/2)
        x = F.max_pool2d(same_pad(x, 3, 2), 3, 2)  # (N*L, C, p/4, p/4); zero padding is safe after ReLU
        x = self.block1(x).permute(0, 2, 3, 1)  # (N*L, p/4, p/4, 4C)
        return self.embedding(x.reshape(n, length, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [0, 1], any size -> (N, 1) mean opinion score (SPAQ: 0..100)."""
        tokens = multiscale_tokens((images - 0.5) * 2, self.cfg)  # pyiqa's normalisation to [-1, 1]
        device = images.device
        spatial, scale, mask = tokens.spatial.to(device), tokens.scale.to(device), tokens.mask.to(device)
        x = self.transformer_encoder(self.embed_patches(tokens.patches), spatial, scale, mask)  # (N, 1 + L, D)
        return self.head(x[:, 0])


def load_musiq(path: Path, cfg: MUSIQConfig = MUSIQ_PRESETS["MUSIQ-SPAQ"]) -> MUSIQ:
    """Build MUSIQ and load a pyiqa checkpoint: a bare state dict, "module." prefixes stripped as pyiqa does."""
    state = weights.read_checkpoint(path, "MUSIQ weights", "re-download musiq_spaq_ckpt-358bb6af.pth, or re-save "
                                    "its state dict alone with torch.save.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = MUSIQ(cfg)
    model.load_state_dict(state, strict=True)
    return model
