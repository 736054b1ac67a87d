"""Weight-free per-token shape descriptors: a HOG descriptor around the centre of every 8 x 8 pixel token.

    hog = token_hog(pixels)   # (N, 3, H, W) in [0, 1] -> (N, 36, H/8, W/8)

For the token at (i, j) (pixels 8i..8i+7, 8j..8j+7) the window is the 24 x 24 luminance pixels centred on the
token's centre, split into 2 x 2 cells of 12 x 12; each cell is a 9-bin histogram of unsigned gradient
orientations (0..180 degrees, linear interpolation between neighbouring bins) weighted by gradient magnitude,
averaged over the cell, and square-rooted (Hellinger compression). Images are edge-padded by 8 pixels so border
tokens have whole windows. A single descriptor tells which outline passes near the token: a linear probe reads a
simple-world object's shape from the descriptor of the token under its centre in 0.88 of held-out images
(benchmarks/token_probe.py), where one token of the dct codec tells it in 0.25. lrm.codecs.pae aligns its latent
tokens to these descriptors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BINS = 9  # unsigned orientations per cell
CELL = 12  # cell side in pixels; a token's window is 2 x 2 cells (24 x 24 pixels)
TOKEN = 8  # pixels per token side (the codecs' spatial factor)
PAD = 8  # edge padding: the window of token i spans pixels 8i - 8 .. 8i + 15
CHANNELS = 4 * BINS  # 2 x 2 cells x 9 bins
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def token_hog(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1], H and W multiples of 8 -> (N, 36, H/8, W/8): channel c * 9 + b is orientation bin b
    of cell c (row-major: top-left, top-right, bottom-left, bottom-right)."""
    n, _, h, w = pixels.shape
    if h % TOKEN or w % TOKEN:
        raise ValueError(f"token_hog: height and width must be multiples of {TOKEN}, got {(h, w)}")
    luma = torch.einsum("nchw,c->nhw", pixels.float(), pixels.new_tensor(LUMA).float())[:, None]  # (N, 1, H, W)
    luma = F.pad(luma, (PAD + 1,) * 4, mode="replicate")  # one more pixel for the central differences
    gx = (luma[..., 1:-1, 2:] - luma[..., 1:-1, :-2]) / 2  # (N, 1, H + 16, W + 16)
    gy = (luma[..., 2:, 1:-1] - luma[..., :-2, 1:-1]) / 2
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)
    position = torch.atan2(gy, gx).remainder(math.pi) / math.pi * BINS  # in [0, 9): bin centres at 0.5, 1.5, ...
    below = torch.floor(position - 0.5)
    upper_share = position - 0.5 - below  # linear interpolation between the two nearest bin centres
    bins = torch.arange(BINS, device=pixels.device).view(1, BINS, 1, 1)
    histogram = (magnitude * (1 - upper_share) * (bins == below.remainder(BINS))
                 + magnitude * upper_share * (bins == (below + 1).remainder(BINS)))  # (N, 9, H + 16, W + 16)
    cells = F.avg_pool2d(histogram, CELL, stride=TOKEN // 2)  # cell starting at pixel 4k of the padded image
    first = torch.arange(h // TOKEN, device=pixels.device) * 2  # token i's cells start at 8i and 8i + 12 (padded)
    first_w = torch.arange(w // TOKEN, device=pixels.device) * 2
    quadrants = [cells[:, :, first + dy][:, :, :, first_w + dx] for dy in (0, 3) for dx in (0, 3)]
    return torch.cat(quadrants, dim=1).sqrt()  # (N, 36, H/8, W/8)
