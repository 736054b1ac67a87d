"""Vendi diversity (Friedman & Dieng 2023) per prompt, as DOLLAR measures it (supplementary Eq. 27).

Vendi of n samples with features f_1..f_n: the exponential of the Shannon entropy of the eigenvalues
of K / n, where K_ij = cos(f_i, f_j) (unit-normalised features, so K_ii = 1 and the eigenvalues of
K / n sum to 1). It ranges from 1 (identical samples) to n (orthogonal ones): an effective number
of distinct samples.

DOLLAR Eq. 27: for each prompt, Vendi over that prompt's n samples at each of K keyframes, averaged
over the keyframes (K = 1 for images); the mean and std of that over prompts are reported.
Features: raw pixel vectors (the paper's first option; `pixel_features`) or any embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def vendi_score(features: np.ndarray | torch.Tensor) -> float:
    """(n, d) features -> Vendi score in [1, n] with the cosine-similarity kernel."""
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"vendi_score: features must have shape (n, d) with n >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vendi_score: features contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError("vendi_score: a feature vector is all zeros, so its cosine similarity is undefined")
    x = x / norms
    # eigenvalues of K / n = X X^T / n equal the non-zero ones of X^T X / n: use the smaller Gram matrix
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x  # (min(n, d), min(n, d))
    eigenvalues = np.linalg.eigvalsh(gram / x.shape[0])
    p = eigenvalues[eigenvalues > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def pixel_features(pixels: torch.Tensor, keyframes: int | None = None) -> torch.Tensor:
    """(n, T, 3, H, W) pixels -> (n, K, 3 H W) raw pixel vectors at K uniformly spaced frames
    (keyframes=None: every frame)."""
    from lrm.frames import uniform_indices

    if pixels.ndim != 5:
        raise ValueError(f"pixel_features: pixels must have shape (n, T, 3, H, W), got {tuple(pixels.shape)}")
    index = torch.from_numpy(uniform_indices(pixels.shape[1], keyframes))  # (K,)
    return pixels[:, index].flatten(2).float()


def prompt_diversity(features: np.ndarray | torch.Tensor) -> float:
    """(n, K, d) features of one prompt's n samples at K keyframes -> mean over keyframes of their Vendi."""
    if features.ndim != 3:
        raise ValueError(f"prompt_diversity: features must have shape (n, K, d), got {tuple(features.shape)}")
    return float(np.mean([vendi_score(features[:, k]) for k in range(features.shape[1])]))


@dataclass(frozen=True)
class Diversity:
    mean: float  # Eq. 27's diversity: the mean over prompts of each prompt's Vendi score
    std: float  # spread over prompts (population std)
    per_prompt: dict[str, float]  # prompt -> its Vendi score (averaged over keyframes)
    samples_per_prompt: int  # fewest samples any prompt had (Vendi is at most this)


def pixel_diversity(pixels: torch.Tensor, prompts: Sequence[str]) -> Diversity | None:
    """Diversity of (N, T, 3, H, W) pixels' raw pixel vectors; None when a sample is all black (its zero vector has
    no cosine similarity): a generator collapsed to black is recorded so, instead of stopping the evaluation."""
    features = pixel_features(pixels)  # (N, K, 3 H W)
    if not bool((features.abs().amax(dim=-1) > 0).all()):
        return None
    return diversity(features, prompts)


def diversity(features: np.ndarray | torch.Tensor, prompts: Sequence[str]) -> Diversity:
    """Features (N, d) or (N, K, d) of N samples and the prompt (N,) of each -> Diversity (DOLLAR Eq. 27)."""
    if features.ndim == 2:
        features = features[:, None]
    if len(prompts) != features.shape[0]:
        raise ValueError(f"diversity: {features.shape[0]} samples but {len(prompts)} prompts")
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    if min(len(rows) for rows in groups.values()) < 2:
        lone = next(p for p, rows in groups.items() if len(rows) < 2)
        raise ValueError(f"diversity: prompt {lone!r} has one sample; Vendi needs at least 2 samples per prompt")
    per_prompt = {p: prompt_diversity(features[rows]) for p, rows in groups.items()}
    values = np.array(list(per_prompt.values()))
    return Diversity(float(values.mean()), float(values.std()), per_prompt, min(len(r) for r in groups.values()))
