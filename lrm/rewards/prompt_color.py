"""prompt-color: does the salient object have the colour the prompt names? A weight-free take on
GenEval's colour check (Ghosh et al. 2023), which classifies a detected object's colour.

Per frame:
1. The prompt's colour is the first word of the palette (COLOR_PROTOTYPES, "grey" = "gray") that
   appears in it as a whole word ("a red car and a blue bird" -> red).
2. Frames are area-averaged to a short side of ANALYSIS_SIZE, then move to CIE Lab (sRGB, D65).
   The background is the per-channel median of a border ring (BORDER_FRACTION of the short
   side). A pixel's saliency is
   sigmoid((|lab - background| - SALIENCY_THRESHOLD) / SALIENCY_SOFTNESS), shifted and rescaled
   so that the background colour itself weighs exactly 0: pixels that differ from the border
   colour by more than ~12 Lab units form the object.
3. Each pixel's colour is soft: a softmax over -distance / TEMPERATURE to every prototype, summed
   over the prototypes of each colour name.
4. Score = saliency-weighted mean probability of the named colour, in [0, 1]; the weight sum
   gets MIN_OBJECT_AREA of the frame added, so a frame with no salient pixels (uniform) scores 0:
   no object of any colour.

Every step is torch, so gradients reach the pixels. A prompt that names no palette colour has no
answer: its score is NaN (batch labelling skips NaN labels; use `color_of_prompt` to filter
prompts first). Limitation: an object touching most of the border counts as background.
"""

from __future__ import annotations

import math
import re

import torch

from lrm.rewards.base import FrameReward
from lrm.rewards.image import safe_sqrt
from lrm.rewards.registry import spec_of

# sRGB (0-255) prototypes per colour name; several per name cover light/dark/saturated variants.
COLOR_PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (200, 30, 30), (140, 10, 20)),
    "orange": ((255, 140, 0), (240, 110, 30)),
    "yellow": ((255, 255, 0), (240, 210, 40)),
    "green": ((0, 255, 0), (40, 160, 50), (0, 100, 0), (120, 200, 100)),
    "blue": ((0, 0, 255), (30, 80, 200), (0, 0, 128), (80, 150, 230), (135, 200, 235)),
    "purple": ((128, 0, 128), (160, 50, 190), (90, 40, 130), (75, 0, 130)),
    "pink": ((255, 150, 190), (255, 20, 150), (240, 180, 200)),
    "brown": ((130, 80, 30), (90, 50, 20), (165, 110, 60)),
    "black": ((0, 0, 0), (30, 30, 30)),
    "white": ((255, 255, 255), (230, 230, 230)),
    "gray": ((128, 128, 128), (80, 80, 80), (180, 180, 180), (205, 205, 205)),
}
COLOR_ALIASES = {"grey": "gray"}
COLOR_NAMES = tuple(COLOR_PROTOTYPES)

ANALYSIS_SIZE = 64  # frames are area-averaged to this short side (pixels) before analysis
BORDER_FRACTION = 1 / 16  # width of the border ring that estimates the background colour
SALIENCY_THRESHOLD = 12.0  # Lab distance from the background where saliency reaches 0.5
SALIENCY_SOFTNESS = 3.0  # Lab units over which saliency goes from ~0.25 to ~0.75
MIN_OBJECT_AREA = 1e-3  # salient area (fraction of the frame) below which the score fades to 0
TEMPERATURE = 4.0  # Lab units; smaller makes the colour assignment harder

_COLOR_WORD = re.compile(r"\b(" + "|".join([*COLOR_NAMES, *COLOR_ALIASES]) + r")\b", re.IGNORECASE)


def color_of_prompt(prompt: str) -> str | None:
    """The first palette colour named in `prompt` (aliases resolved), or None."""
    match = _COLOR_WORD.search(prompt)
    if match is None:
        return None
    word = match.group(1).lower()
    return COLOR_ALIASES.get(word, word)


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> CIE Lab (D65) with L in [0, 100]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    to_xyz = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        dtype=rgb.dtype,
        device=rgb.device,
    )
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,...jhw->...ihw", to_xyz, linear) / white[:, None, None]
    eps, kappa = 216 / 24389, 24389 / 27
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), (kappa * xyz + 16) / 116)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def prototype_lab(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 3) Lab prototypes and the (P, C) one-hot matrix of their colour names in COLOR_NAMES."""
    rgb = [rgb for name in COLOR_NAMES for rgb in COLOR_PROTOTYPES[name]]
    owner = [i for i, name in enumerate(COLOR_NAMES) for _ in COLOR_PROTOTYPES[name]]
    rgb = torch.tensor(rgb, dtype=dtype, device=device) / 255  # (P, 3)
    lab = srgb_to_lab(rgb.T[:, :, None]).squeeze(-1).T  # (P, 3)
    one_hot = torch.nn.functional.one_hot(torch.tensor(owner, device=device), len(COLOR_NAMES)).to(dtype)  # (P, C)
    return lab, one_hot


def color_probabilities(lab: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) Lab -> (N, H, W, C) soft assignment to the C = len(COLOR_NAMES) colours."""
    prototypes, one_hot = prototype_lab(lab.dtype, lab.device)  # (P, 3), (P, C)
    pixels = lab.permute(0, 2, 3, 1)  # (N, H, W, 3)
    squared = pixels.pow(2).sum(-1, keepdim=True) - 2 * pixels @ prototypes.T + prototypes.pow(2).sum(-1)  # (N, H, W, P)
    distance = squared.clamp_min(0).add(1e-6).sqrt()
    return torch.softmax(-distance / TEMPERATURE, dim=-1) @ one_hot  # (N, H, W, C)


def saliency(lab: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) Lab -> (N, H, W) soft mask in [0, 1) of pixels unlike the border's median colour."""
    h, w = lab.shape[-2:]
    ring = max(1, round(min(h, w) * BORDER_FRACTION))
    border = torch.ones(h, w, dtype=torch.bool, device=lab.device)
    border[ring : h - ring, ring : w - ring] = False
    background = lab[:, :, border].median(dim=2).values  # (N, 3)
    distance = safe_sqrt((lab - background[:, :, None, None]).pow(2).sum(dim=1))  # (N, H, W); 0 on the background
    floor = 1 / (1 + math.exp(SALIENCY_THRESHOLD / SALIENCY_SOFTNESS))  # sigmoid at distance 0
    return (torch.sigmoid((distance - SALIENCY_THRESHOLD) / SALIENCY_SOFTNESS) - floor).clamp_min(0) / (1 - floor)


def shrink(frames: torch.Tensor) -> torch.Tensor:
    """Area-average (N, 3, H, W) frames so the short side is at most ANALYSIS_SIZE (colour shares
    need no fine detail; this bounds the cost of the per-pixel prototype distances)."""
    h, w = frames.shape[-2:]
    scale = ANALYSIS_SIZE / min(h, w)
    if scale >= 1:
        return frames
    return torch.nn.functional.adaptive_avg_pool2d(frames, (max(1, round(h * scale)), max(1, round(w * scale))))


class PromptColor(FrameReward):
    """Fraction (0..1) of the salient object's pixels whose colour is the one the prompt names."""

    spec = spec_of("prompt-color")

    frame_chunk = 8  # frames scored at once: the (chunk, prototypes, H, W) distances bound memory
    nan_means = f"the prompt names none of {', '.join(COLOR_NAMES)}"

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        names = [color_of_prompt(p) for p in prompts]
        index = torch.tensor([COLOR_NAMES.index(c) if c else 0 for c in names], device=frames.device)
        scores = torch.cat(
            [
                self.named_color_share(chunk, chunk_index)
                for chunk, chunk_index in zip(frames.split(self.frame_chunk), index.split(self.frame_chunk))
            ]
        )
        unknown = torch.tensor([c is None for c in names], device=frames.device)
        return torch.where(unknown, torch.full_like(scores, float("nan")), scores)

    @staticmethod
    def named_color_share(frames: torch.Tensor, color_index: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) frames and (n,) indices into COLOR_NAMES -> (n,) salient share of that colour."""
        lab = srgb_to_lab(shrink(frames))  # (n, 3, h, w)
        weights = saliency(lab)  # (n, H, W)
        probabilities = color_probabilities(lab)  # (n, H, W, C)
        named = probabilities.gather(-1, color_index.view(-1, 1, 1, 1).expand(*probabilities.shape[:3], 1)).squeeze(-1)  # (n, H, W)
        area = weights.shape[1] * weights.shape[2]
        return (weights * named).flatten(1).sum(1) / (weights.flatten(1).sum(1) + MIN_OBJECT_AREA * area)
