"""Weight-free image rewards: JPEG (in)compressibility, sharpness, colorfulness.

- jpeg-incompressibility / jpeg-compressibility: DDPO (Black et al. 2023, kvablack/ddpo-pytorch
  `rewards.py`): the size in kB (bytes / 1000) of the frame saved as JPEG at quality 95 with PIL;
  compressibility wraps incompressibility and negates it. Not differentiable (PIL round trip).
- sharpness: variance of the Laplacian of the grayscale frame (Pech-Pacheco et al. 2000), on the
  0-255 scale, the same number as `cv2.Laplacian(gray, cv2.CV_64F).var()`; written in torch.
- colorfulness: Hasler & Suesstrunk 2003, M = sigma_rgyb + 0.3 mu_rgyb on the 0-255 scale;
  written in torch.

Every reward here is a FrameReward: videos score as the mean over (sampled) frames.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from PIL import Image

from lrm.rewards.base import FrameReward, check_min_side, to_uint8_frames
from lrm.rewards.registry import spec_of

# ITU-R BT.601 luma weights, the ones cv2.cvtColor(RGB2GRAY) and PIL's "L" mode use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma_255(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, H, W) BT.601 luma on the 0-255 scale."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=frames.dtype, device=frames.device)
    return torch.einsum("nchw,c->nhw", frames, weights) * 255


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with value 0 and gradient 0 at x = 0 (plain sqrt has an infinite gradient there)."""
    return torch.where(x > 0, x.clamp_min(1e-12).sqrt(), torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# JPEG size (DDPO)
# ---------------------------------------------------------------------------------------------


class JpegIncompressibility(FrameReward):
    """Size in kB of each frame encoded as JPEG at quality 95 (DDPO's `jpeg_incompressibility`)."""

    quality = 95  # DDPO's JPEG quality

    spec = spec_of("jpeg-incompressibility")

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        sizes = []
        for frame in to_uint8_frames(frames):  # (H, W, 3) uint8
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000)
        return torch.tensor(sizes, dtype=torch.float32, device=frames.device)


class JpegCompressibility(FrameReward):
    """Negated JPEG size (DDPO's `jpeg_compressibility`, which wraps `jpeg_incompressibility`)."""

    spec = spec_of("jpeg-compressibility")

    def __init__(self, frames: int | None = None):
        super().__init__(frames)
        self.incompressibility = JpegIncompressibility(frames)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return -self.incompressibility.score_frames(frames, prompts)


# ---------------------------------------------------------------------------------------------
# Sharpness: variance of the Laplacian
# ---------------------------------------------------------------------------------------------


class Sharpness(FrameReward):
    """Variance of the 4-neighbour Laplacian of the 0-255 luma frame.

    Same kernel and border (reflect-101) as `cv2.Laplacian(gray, cv2.CV_64F)` with ksize=1, and
    the population variance of numpy's `.var()`. Computed on the float frame (no 8-bit rounding),
    so gradients reach the pixels.
    """

    spec = spec_of("sharpness")

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        check_min_side(frames, 2, self.spec.name)  # the reflect padding needs 2 pixels a side
        gray = luma_255(at_least_float32(frames)).unsqueeze(1)  # (N, 1, H, W); half precision overflows to inf
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=gray.dtype, device=gray.device)
        padded = F.pad(gray, (1, 1, 1, 1), mode="reflect")  # torch "reflect" is OpenCV's BORDER_REFLECT_101
        laplacian = F.conv2d(padded, kernel.view(1, 1, 3, 3))  # (N, 1, H, W)
        return laplacian.flatten(1).var(dim=1, unbiased=False)


# ---------------------------------------------------------------------------------------------
# Colorfulness (Hasler & Suesstrunk 2003)
# ---------------------------------------------------------------------------------------------


def at_least_float32(frames: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 frames in float32 (squared 0-255 values overflow half precision); float64 stays."""
    return frames.to(torch.promote_types(frames.dtype, torch.float32))


class Colorfulness(FrameReward):
    """Hasler & Suesstrunk's M: rg = R - G, yb = (R + G) / 2 - B on the 0-255 scale,
    M = sqrt(var(rg) + var(yb)) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2). A gray frame scores 0."""

    spec = spec_of("colorfulness")

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        r, g, b = (at_least_float32(frames) * 255).flatten(2).unbind(dim=1)  # each (N, H*W)
        rg = r - g
        yb = (r + g) / 2 - b
        sigma = safe_sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
        mu = safe_sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
        return sigma + 0.3 * mu
