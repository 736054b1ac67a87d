"""Frame-index helpers shared by media reading and video rewards."""

from __future__ import annotations

import numpy as np


def uniform_indices(num_frames: int, k: int | None, stride: int = 1) -> np.ndarray:
    """Indices of `k` frames spread uniformly over `num_frames` (after taking every `stride`-th).

    k=None keeps every strided frame. Asking for more frames than exist keeps them all.
    Returns int64 indices into the original frame axis, sorted ascending.
    """
    if num_frames < 1:
        raise ValueError(f"cannot sample frames from a clip with {num_frames} frames")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    candidates = np.arange(0, num_frames, stride, dtype=np.int64)
    if k is None or k >= len(candidates):
        return candidates
    if k < 1:
        raise ValueError(f"number of frames must be >= 1, got {k}")
    # Centre of k equal segments: the sampling VBench and most video models use.
    positions = (np.arange(k) + 0.5) * len(candidates) / k
    return candidates[np.floor(positions).astype(np.int64)]
