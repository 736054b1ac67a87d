"""CLIP-style image preprocessing in torch, so gradients reach the pixels.

The published rewards preprocess PIL images (torchvision Resize + CenterCrop + ToTensor +
Normalize); this module does the same arithmetic on float tensors: antialiased resize (close to
PIL's filter; exact against torchvision's tensor path), the same rounding of sizes and crop
offsets as torchvision, and normalisation with the model's mean/std. Nothing here leaves torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

RESIZE_MODES = ("shortest", "longest")
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class ImagePreprocess:
    size: int  # side of the square image the model reads, e.g. 224
    mean: tuple[float, float, float]  # per-channel mean subtracted after resizing (model's own)
    std: tuple[float, float, float]  # per-channel std divided by after subtracting the mean
    # "shortest": short side to size + centre crop (CLIP); "longest": long side to size + pad (HPSv2)
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"  # resampling filter, antialiased when shrinking like PIL
    fill: float = 0.0  # pad value in [0, 1] for resize_mode="longest" (HPSv2 pads black)

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 channel values, got mean={self.mean} std={self.std}")

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, 3, size, size) normalised."""
        if self.resize_mode == "shortest":
            square = center_crop(resize_shortest(frames, self.size, self.interpolation), self.size)
        else:
            square = resize_longest_pad(frames, self.size, self.interpolation, self.fill)
        return normalize(square, self.mean, self.std)


def resize(frames: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, height, width), antialiased; clamped to [0, 1] like an 8-bit PIL image."""
    if frames.shape[-2:] == (height, width):
        return frames
    out = F.interpolate(frames, size=(height, width), mode=interpolation, align_corners=False, antialias=True)
    return out.clamp(0, 1)  # bicubic overshoots; PIL saturates at 0 and 255


def resize_shortest(frames: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Short side to `size`, long side int(size * long / short), as torchvision Resize(int)."""
    h, w = frames.shape[-2:]
    if h <= w:
        return resize(frames, size, int(size * w / h), interpolation)
    return resize(frames, int(size * h / w), size, interpolation)


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window, offsets rounded as torchvision CenterCrop."""
    h, w = frames.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {size}; resize first")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return frames[..., top : top + size, left : left + size]


def resize_longest_pad(
    frames: torch.Tensor, size: int, interpolation: str = "bicubic", fill: float = 0.0
) -> torch.Tensor:
    """Long side to `size` keeping the aspect ratio, then pad to a centred square (open_clip ResizeMaxSize)."""
    h, w = frames.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    resized = resize(frames, new_h, new_w, interpolation)
    pad_h, pad_w = size - new_h, size - new_w
    # F.pad order: (left, right, top, bottom)
    return F.pad(resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)


def normalize(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel on dim -3."""
    mean_t = torch.as_tensor(mean, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames - mean_t) / std_t
