"""Patch-Gaussian backbone: a learned NIQE. Per-patch features, their Gaussian over the image's
patches, and its distance to a learned reference Gaussian.

NIQE (Mittal, Soundararajan & Bovik 2013; lrm.rewards.quality) is not an average of local
quality: it computes 36 natural-scene features on every 96-px patch, fits a Gaussian (mean mu,
covariance S) to them over the image's patches, and returns the Mahalanobis-like distance
sqrt((mu - nu)^T ((Sigma + S) / 2)^-1 (mu - nu)) to the Gaussian (nu, Sigma) of pristine
images. A pooled CNN must learn a matrix inverse of per-image statistics from a few thousand
labels; this backbone has that structure built in and learns only the per-patch features and
the reference:

    frames (M, c, h, w)
        -> len(widths) x (Conv 3x3 stride 1 pad 1 (+ FiLM) + SiLU)          (M, width, h, w)
        -> Conv 1x1 -> softplus: `moments` positive local maps               (M, K, h, w)
        -> mean per patch of `patch` x `patch` latent cells, then log        (M, P, K)
           (NIQE's shape fits are functions of ratios of patch moments: differences of logs)
        -> per-patch MLP K -> 64 -> F                                        (M, P, F)
        -> mean mu (M, F) and covariance S (M, F, F) over the P patches
        -> d = sqrt((mu - nu)^T ((L L^T + S) / 2 + eps I)^-1 (mu - nu))    (M,)
    features (M, 1 + F): [d, mu]

nu and the lower-triangular L are learned (L starts as the identity, nu at 0). The distance is
invariant (up to the small ridge) to any invertible linear map A of the patch features, taking
nu to A nu and L to A L, as NIQE's is; so the MLP need only span NIQE's features up to such a map.
Patches tile the frame from its top-left corner and a partial last row or column is dropped, as NIQE crops to multiples of 96 px; `patch` = 12 latent
cells is NIQE's 96 px at the 8x codecs (dct, taef2). Frames need at least two patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrm.models.fullres import full_resolution_stages

NIQE_PATCH_CELLS = 12  # NIQE's 96-px patch at 8x spatial downsampling
PATCH_MLP_WIDTH = 64
MOMENT_EPS = 1e-6  # floor under the patch moments before their log (softplus underflows to 0)
COVARIANCE_EPS = 1e-3  # ridge on (L L^T + S) / 2, which keeps the solve well conditioned


def check_two_patches(latents: torch.Tensor, patch: int = NIQE_PATCH_CELLS) -> None:
    """Refuse (..., h, w) latents with fewer than two whole patch x patch tiles: a covariance over
    patches needs two."""
    h, w = latents.shape[-2:]
    if (h // patch) * (w // patch) < 2:
        raise ValueError(
            f"a patch-Gaussian surrogate needs at least 2 patches of {patch}x{patch} latent cells per frame "
            f"(a covariance over patches), got latents of {h}x{w}; use larger frames "
            "(NIQE itself needs 192 px) or another preset"
        )


def patch_moments(maps: torch.Tensor, patch: int) -> torch.Tensor:
    """(M, K, h, w) positive maps -> (M, P, K) log of their mean over each patch x patch tile;
    P = (h // patch) * (w // patch), tiles from the top-left corner."""
    rows, cols = maps.shape[-2] // patch, maps.shape[-1] // patch
    tiles = F.avg_pool2d(maps[..., : rows * patch, : cols * patch], patch)  # (M, K, rows, cols)
    return torch.log(tiles.flatten(2).transpose(1, 2) + MOMENT_EPS)  # (M, P, K)


def gaussian_distance(features: torch.Tensor, reference_mean: torch.Tensor, reference_factor: torch.Tensor,
                      eps: float = COVARIANCE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """NIQE's distance of the patches' Gaussian to a reference one.

    features (M, P, F), reference mean (F,), lower-triangular factor (F, F) of the reference
    covariance, ridge eps -> distance (M,) and the patches' mean (M, F)."""
    mean = features.mean(dim=1)  # (M, F)
    centred = features - mean.unsqueeze(1)
    covariance = centred.transpose(1, 2) @ centred / (features.shape[1] - 1)  # (M, F, F)
    factor = torch.tril(reference_factor)
    eye = torch.eye(features.shape[-1], dtype=features.dtype, device=features.device)
    pooled = (factor @ factor.T + covariance) / 2 + eps * eye  # (M, F, F), positive definite
    diff = mean - reference_mean  # (M, F)
    squared = (diff * torch.linalg.solve(pooled, diff)).sum(dim=1)  # (M,)
    return torch.sqrt(squared + 1e-8), mean


class PatchGaussianDistance(nn.Module):
    """The shared end of the patch-Gaussian backbones: (M, P, K) patch moments -> features (M, 1 + F), a
    per-patch MLP K -> 64 -> F, then NIQE's distance of the patches' Gaussian to a learned reference (nu
    at 0, L at the identity) and the patches' mean. Subclasses compute the moments and call
    `add_distance` after building their own layers (so parameters keep their order and initial values)."""

    def add_distance(self, moments: int, patch_features: int) -> None:
        self.patch_mlp = nn.Sequential(
            nn.Linear(moments, PATCH_MLP_WIDTH), nn.SiLU(), nn.Linear(PATCH_MLP_WIDTH, patch_features)
        )
        self.reference_mean = nn.Parameter(torch.zeros(patch_features))
        self.reference_factor = nn.Parameter(torch.eye(patch_features))
        self.feature_dim = 1 + patch_features

    def distance_features(self, moments: torch.Tensor) -> torch.Tensor:
        distance, mean = gaussian_distance(self.patch_mlp(moments), self.reference_mean, self.reference_factor)
        return torch.cat([distance.unsqueeze(1), mean], dim=1)  # (M, 1 + F)


class PatchGaussianBackbone(PatchGaussianDistance):
    """Frames (M, c, h, w) -> features (M, 1 + F): the learned NIQE distance and the patches' mean."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (64, 64, 64), moments: int = 32,
                 patch_features: int = 16, patch: int = NIQE_PATCH_CELLS, cond_dim: int | None = None):
        super().__init__()
        self.stages = full_resolution_stages(in_channels, widths, cond_dim)
        self.moments = nn.Conv2d(widths[-1], moments, 1)
        self.add_distance(moments, patch_features)
        self.patch = patch

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_two_patches(x, self.patch)
        for stage in self.stages:
            x = stage(x, cond)
        maps = F.softplus(self.moments(x))  # (M, K, h, w)
        return self.distance_features(patch_moments(maps, self.patch))  # (M, 1 + F)
