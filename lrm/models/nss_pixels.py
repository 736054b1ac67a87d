"""NSS-pixel backbones: NIQE itself on grey frames decoded from the latents by one linear conv, or by the codec.

NIQE is a fixed computation on the grey pixels of a frame (lrm.rewards.quality): MSCN
coefficients, their AGGD fits per 96-px patch, a Gaussian over patches, its distance to a pristine
one. What a latent surrogate has to learn is only the decoder. This backbone decodes each latent
cell's 3 x 3 neighbourhood to its 8 x 8 grey pixels with one linear conv, and computes NIQE's
patch moments on them exactly, then NIQE's features (lrm.models.aggd) and distance:

    frames (M, c, h, w)
        -> Conv 3x3 pad 1 (c -> 64) (+ FiLM) -> PixelShuffle(8), clamp to 0-255,
           round to 8-bit levels (straight-through gradient)                         (M, 1, 8h, 8w)
        -> at full scale and at half scale (bicubic with antialiasing, as NIQE's PIL resize):
           the 20 patch moments of the MSCN coefficients and their 4 paired products
           (lrm.models.mscn_gaussian.nss_patch_moments, stabiliser 1 as NIQE's)      (M, P, 40)
        -> NIQE's features and distance, from its pristine model (NIQEDistance)      (M,), (M, 36)
    features (M, 37): [d, mu]

`fit_decoder` sets the conv by ridge least squares to a codec's decoded grey pixels (lrm.fitting
does so before a fit, on 256 training rows): for a linear codec such as dct it is then its exact
decoder (up to clamping and 8-bit rounding), and the surrogate starts as NIQE of the decoded
frames; fitted on NIQE's labels from there at lr 1e-4, it keeps that ranking and calibrates the
head (README, "NIQE itself on a linear decode"). For a learned decoder (taef2) it is the best
linear one of this size. The cost is NIQE's own: pixel-level statistics, a fit step of 0.034 s
per 384-px frame on one CPU thread, 14 times `image-cnn-stats` (benchmarks/surrogate_cost.py);
no VAE decoder is run.

`CodecNIQEBackbone` (preset image-nss-codec) computes the same on the codec's own decode instead:
for a learned decoder, which no linear conv matches, the surrogate then starts as NIQE of the
decoded frames, at the cost of running the frozen decoder per frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrm.models.aggd import NIQE_FEATURES, niqe_patch_features
from lrm.models.mscn_gaussian import NIQE_PATCH_PIXELS, PIXELS_PER_CELL, nss_patch_moments
from lrm.models.patch_gaussian import NIQE_PATCH_CELLS, check_two_patches, gaussian_distance

DECODER_RIDGE = 1e-6  # relative to the mean diagonal of the least-squares Gram matrix
# NIQE inverts the pooled covariance exactly (pinv); the pristine correlation has eigenvalues down to
# 6e-5 besides the zero ones of its duplicated features, so the ridges must stay far below that (1e-3
# changes NIQE by a third), and the distance is computed in float64.
PRISTINE_RIDGE = 1e-6  # added to the pristine correlation before its Cholesky factor
DISTANCE_EPS = 1e-6  # ridge of the pooled covariance


def pristine_reference() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NIQE's pristine model as (mean (36,), std (36,), Cholesky factor (36, 36) of its correlation)."""
    from lrm.rewards.quality import niqe_model

    mu, cov = niqe_model()
    sd = np.sqrt(np.diag(cov))
    correlation = cov / np.outer(sd, sd) + PRISTINE_RIDGE * np.eye(len(sd))
    return (torch.tensor(mu, dtype=torch.float32), torch.tensor(sd, dtype=torch.float32),
            torch.tensor(np.linalg.cholesky(correlation), dtype=torch.float32))


class NIQEDistance(nn.Module):
    """(M, P, 40) patch moments -> NIQE's distance (M,) and the patches' standardised feature mean (M, 36),
    starting from NIQE's pristine model (nu = 0, L L^T = its correlation; both learned)."""

    def __init__(self):
        super().__init__()
        mean, std, factor = pristine_reference()
        self.register_buffer("pristine_mean", mean)
        self.register_buffer("pristine_std", std)
        self.reference_mean = nn.Parameter(torch.zeros(NIQE_FEATURES))
        self.reference_factor = nn.Parameter(factor)

    def forward(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = (niqe_patch_features(moments.double()) - self.pristine_mean) / self.pristine_std  # (M, P, 36)
        distance, mean = gaussian_distance(features, self.reference_mean.double(), self.reference_factor.double(),
                                           DISTANCE_EPS)
        return distance.to(moments.dtype), mean.to(moments.dtype)


def grey_frames(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) float 0-255 grey, as NIQE sees a frame: rounded to 8
    bits (lrm.rewards.base.to_uint8_frames; the gradient passes straight through), then scikit-video's
    grey weights."""
    from lrm.rewards.quality import SKVIDEO_GRAY

    rgb = pixels.to(torch.promote_types(pixels.dtype, torch.float32)).clamp(0, 1) * 255  # float32 or float64
    rgb = rgb + (rgb.round() - rgb).detach()
    weights = torch.tensor(SKVIDEO_GRAY, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("nchw,c->nhw", rgb, weights).unsqueeze(1)


def niqe_of_grey(grey: torch.Tensor, distance: NIQEDistance) -> torch.Tensor:
    """(M, 1, H, W) 0-255 grey frames -> (M, 37): NIQE's distance and the patches' standardised feature mean.
    At full and half scale (bicubic with antialiasing, as NIQE's PIL resize): the 20 patch moments of the
    MSCN coefficients and their 4 paired products (stabiliser 1, as NIQE's), then NIQE's features and
    distance."""
    half = F.interpolate(grey, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)
    c = torch.ones(1, dtype=grey.dtype, device=grey.device)  # NIQE's MSCN stabiliser on 0-255 pixels
    moments = torch.cat([nss_patch_moments(grey, c, NIQE_PATCH_PIXELS),
                         nss_patch_moments(half, c, NIQE_PATCH_PIXELS // 2)], dim=2)  # (M, P, 40)
    d, mean = distance(moments)
    return torch.cat([d.unsqueeze(1), mean], dim=1)  # (M, 37)


def cell_neighbourhoods(x: torch.Tensor) -> torch.Tensor:
    """(M, c, h, w) -> (M*h*w, 9c + 1): every cell's 3 x 3 neighbourhood (zero padded), as a 3x3 conv's
    weight (c, 3, 3) flattens, and a 1 for the bias."""
    cells = F.unfold(x, 3, padding=1).transpose(1, 2).flatten(0, 1)  # (M*h*w, 9c)
    return torch.cat([cells, torch.ones(len(cells), 1, dtype=cells.dtype, device=cells.device)], dim=1)


class NSSPixelBackbone(nn.Module):
    """Frames (M, c, h, w) -> features (M, 37): NIQE's distance on linearly decoded grey pixels, and the
    patches' standardised feature mean."""

    def __init__(self, in_channels: int, cond_dim: int | None = None, factor: int = PIXELS_PER_CELL):
        super().__init__()
        self.decoder = nn.Conv2d(in_channels, factor**2, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * factor**2) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)  # starts as the identity: the fitted decoder unchanged
            nn.init.zeros_(self.film.bias)
        self.distance = NIQEDistance()
        self.factor = factor
        self.feature_dim = 1 + NIQE_FEATURES

    def grey(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(M, c, h, w) -> (M, 1, 8h, 8w) decoded grey pixels, 0-255 in 8-bit levels."""
        blocks = self.decoder(x)  # (M, 64, h, w)
        if self.film is not None and cond is not None:
            scale, shift = self.film(cond).chunk(2, dim=1)  # (M, 64) each
            blocks = blocks * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        grey = F.pixel_shuffle(blocks, self.factor).clamp(0, 255)
        return grey + (grey.round() - grey).detach()  # 8-bit levels, as NIQE's frames; gradient straight through

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_two_patches(x, NIQE_PATCH_CELLS)
        return niqe_of_grey(self.grey(x, cond), self.distance)

    @torch.no_grad()
    def fit_decoder(self, latents: torch.Tensor, grey: torch.Tensor) -> float:
        """Set the decoder conv by ridge least squares: latents (N, c, h, w) -> grey (N, 1, 8h, 8w) 0-255.
        Returns the mean absolute error of the fitted decoder on these frames, in grey levels."""
        x = cell_neighbourhoods(latents.double())  # (N*h*w, 9c + 1)
        y = F.pixel_unshuffle(grey.double(), self.factor).flatten(2).transpose(1, 2).flatten(0, 1)  # (N*h*w, 64)
        gram = x.T @ x
        ridge = DECODER_RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        solution = torch.linalg.solve(gram + ridge, x.T @ y)  # (9c + 1, 64)
        self.decoder.weight.copy_(solution[:-1].T.reshape(self.decoder.weight.shape))
        self.decoder.bias.copy_(solution[-1])
        return (x @ solution - y).abs().mean().item()


class CodecNIQEBackbone(nn.Module):
    """Frames (M, c, h, w) -> features (M, 37): NIQE's distance on the codec's own decode of the frames, and
    the patches' standardised feature mean.

        frames (M, c, h, w), in chunks of the codec's batch size
            -> codec.decode, rounded to 8 bits (straight-through), grey                 (m, 1, H, W)
            -> niqe_of_grey                                                             (m, 37)

    The codec is frozen and is not a submodule: its weights are neither trained nor saved with the
    surrogate (it is rebuilt from the recorded codec settings on loading). It follows the surrogate to
    other devices but keeps its own dtype (codecs cast their inputs to it; the grey frames are at
    least float32). The surrogate learns only NIQE's reference Gaussian and the head, so in any latent
    space it starts as NIQE of the decoded frames (lrm.decoder_init fits the head's line). The cost is
    the codec decoder's: for taef2, 1.34M parameters run per frame, and a gradient to the latents keeps
    the decoder's activations (benchmarks/surrogate_cost.py).
    """

    def __init__(self, codec):
        super().__init__()
        self._codec = (codec.requires_grad_(False).eval(),)  # in a tuple: not registered as a submodule
        self.distance = NIQEDistance()
        self.feature_dim = 1 + NIQE_FEATURES
        self.patch_cells = NIQE_PATCH_PIXELS // codec.spatial_factor

    @property
    def codec(self):
        return self._codec[0]

    def _apply(self, fn, recurse=True):
        moved = super()._apply(fn, recurse)
        self.codec.to(self.distance.reference_mean.device)  # devices follow the surrogate, dtypes do not
        return moved

    def grey(self, x: torch.Tensor) -> torch.Tensor:
        """(M, c, h, w) -> (M, 1, H, W) the codec's decoded frames in grey, 0-255 in 8-bit levels."""
        return grey_frames(self.codec.decode(x.unsqueeze(1))[:, 0])  # decode reads (B, T, c, h, w)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_two_patches(x, self.patch_cells)
        features = [niqe_of_grey(self.grey(chunk), self.distance) for chunk in x.split(self.codec.batch_size)]
        return torch.cat(features).to(x.dtype)  # (M, 37)
