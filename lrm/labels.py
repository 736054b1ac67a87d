"""Label transforms: the scale a surrogate is fitted on, and back.

    "none": the network fits standardised y.
    "log":  it fits standardised log(y - shift), shift = min - LOG_SHIFT_FRACTION * (max - min) of the
            training labels, so every training label maps to a finite value; predictions come back as
            exp(.) + shift. For right-skewed rewards (sharpness, dynamic degree) an MSE on raw labels is
            ruled by a few extreme samples.
    "auto": log when it at least halves the |skewness| of the training labels, else none.

lrm.fitting fits with them, LatentRewardModel maps its outputs back with them, and lrm.fidelity
gives the ridge baseline the same transform, so that the comparison stays fair.
"""

from __future__ import annotations

import numpy as np

LABEL_TRANSFORMS = ("none", "log")  # what a fitted surrogate can carry
LABEL_TRANSFORM_CHOICES = (*LABEL_TRANSFORMS, "auto")  # what a fit accepts; "auto" resolves to one of the above
LOG_SHIFT_FRACTION = 1e-3  # log transform: shift = min - this * (max - min) of the training labels


def log_shift(train_labels: np.ndarray) -> float:
    """Shift of the log transform: LOG_SHIFT_FRACTION of the label range below the smallest label."""
    return float(train_labels.min() - LOG_SHIFT_FRACTION * (train_labels.max() - train_labels.min()))


def choose_label_transform(train_labels: np.ndarray) -> str:
    """"log" when log(y - shift) has at most half the |skewness| of y, else "none".

    On the real-data benchmark (docs/fidelity.md) log labels lift the strongly
    right-skewed rewards (sharpness, dynamic degree) and change little on mildly skewed ones
    (colourfulness, JPEG size), which the margin keeps raw."""
    from scipy.stats import skew

    values = np.asarray(train_labels, np.float64)
    if not values.max() > values.min():
        return "none"
    return "log" if abs(skew(np.log(values - log_shift(values)))) <= 0.5 * abs(skew(values)) else "none"


def label_statistics(train_labels: np.ndarray, transform: str) -> tuple[str, float, float, float]:
    """(transform, mean, std, shift) of the training labels: "auto" resolved, then mean and std of
    y ("none", shift 0) or of log(y - shift) ("log")."""
    values = np.asarray(train_labels, np.float64)
    if transform == "auto":
        transform = choose_label_transform(values)
    shift = log_shift(values) if transform == "log" else 0.0
    if values.max() > values.min():  # constant labels stay as they are (std 0: nothing to fit)
        values = forward(values, transform, shift)
    return transform, float(values.mean()), float(values.std()), shift


def forward(y: np.ndarray, transform: str, shift: float) -> np.ndarray:
    """Labels -> the scale fitted on (before standardisation)."""
    return np.log(np.asarray(y, np.float64) - shift) if transform == "log" else np.asarray(y, np.float64)


def inverse(u: np.ndarray, transform: str, shift: float) -> np.ndarray:
    """The fitted scale -> labels (reward units)."""
    return np.exp(u) + shift if transform == "log" else u
