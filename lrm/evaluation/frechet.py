"""Frechet distance between two feature sets (as in FID, Heusel et al. 2017), each modelled as a Gaussian:

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

Tr((S_1 S_2)^{1/2}) = Tr((A S_2 A)^{1/2}) with A = S_1^{1/2} (the two matrices are similar), and
A S_2 A is symmetric positive semi-definite, so both roots come from symmetric eigendecompositions in
float64, with eigenvalues at round-off level (below d * machine epsilon * the largest) set to 0: no complex parts,
no iterative sqrtm, and a covariance of fewer samples than dimensions (singular) does not bias the distance low
(the FD of a set to itself is 0, not -6.75 for 16 samples of 96 features scaled by 1e3).

Default features (`latent_frechet_distance`): lrm.fidelity.pooled_latent_features, per latent channel
mean, std and mean |spatial gradient| (+ mean |frame difference| for clips): 96 numbers per dct
image (128 per clip). They measure per-channel colour, contrast and detail statistics in the codec's
own latent space; no Inception network is involved, so it is not FID and its values are not comparable
to FID's. Low-dimensional features keep the covariances well estimated from a few hundred samples,
which flattened latents (8192 numbers per 16 x 16 x 32 latent) would not be.
"""

from __future__ import annotations

import numpy as np
import torch


def _array(features, who: str) -> np.ndarray:
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"frechet_distance: {who} features must have shape (n, d) with n >= 2, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"frechet_distance: {who} features contain NaN or Inf")
    return x


def _above_round_off(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those at round-off level (negative, or below d * eps * the largest) as 0."""
    floor = len(values) * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 0.0)
    return np.where(values > floor, values, 0.0)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues at round-off level: 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_above_round_off(values))) @ vectors.T


def gaussian_frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """FD between N(mu1, cov1) and N(mu2, cov2): means (d,), covariances (d, d)."""
    root1 = psd_sqrt(cov1)
    cross = np.linalg.eigvalsh(root1 @ cov2 @ root1)  # eigenvalues of A S_2 A, A = S_1^{1/2}
    trace_root = np.sqrt(_above_round_off(cross)).sum()  # Tr((S_1 S_2)^{1/2})
    return max(0.0, float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_root))


def frechet_distance(generated, reference) -> float:
    """FD between the Gaussians fitted (sample mean, unbiased covariance) to two (n, d) feature sets."""
    a, b = _array(generated, "generated"), _array(reference, "reference")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: generated features have {a.shape[1]} dimensions, reference {b.shape[1]}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def latent_frechet_distance(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """FD of pooled latent statistics (lrm.fidelity.pooled_latent_features) of two (n, T, c, h, w) latent sets."""
    from lrm.fidelity import pooled_latent_features

    for who, latents in (("generated", generated), ("reference", reference)):
        if latents.ndim != 5:
            raise ValueError(f"latent_frechet_distance: {who} latents must have shape (n, T, c, h, w), "
                             f"got {tuple(latents.shape)}")
    return frechet_distance(pooled_latent_features(generated), pooled_latent_features(reference))
