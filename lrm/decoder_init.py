"""Start pixel-decoding surrogates from the codec's decoder (lrm.models.nss_pixels).

A surrogate whose backbone decodes grey pixels with one linear conv (NSSPixelBackbone) computes
the reward itself on them, so before any gradient step lrm.fitting sets that conv to the codec's
decoder by ridge least squares on a sample of training rows (their decoded frames, rounded to 8
bits and greyed as NIQE sees them), and the linear head to the least-squares line from the
backbone's distance to the standardised labels of the same rows, every other input at 0. In dct
the fitted decoder is exact up to clamping and 8-bit rounding; the surrogate then starts as
NIQE of the decoded frames.
"""

from __future__ import annotations

import numpy as np
import torch

from lrm.models import LatentRewardModel

SAMPLE_ROWS = 256  # training rows the decoder and the head's line are fitted on
CHUNK = 16  # rows decoded at a time


def initialise_from_decoder(model: LatentRewardModel, store, train_rows: np.ndarray, labels: np.ndarray,
                            seed: int) -> dict:
    """Fit `model.backbone.fit_decoder` to the codec's decoded grey frames of up to SAMPLE_ROWS training rows,
    then the head's line on them. Returns {"decoder_rows", "decoder_mae"} (grey levels), also kept in
    model.info.extra."""
    from lrm import codecs
    from lrm.models.nss_pixels import grey_frames

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(train_rows, size=min(SAMPLE_ROWS, len(train_rows)), replace=False))
    codec = codecs.from_settings(store.codec_settings).eval()
    device = next(model.parameters()).device
    latents, grey = [], []
    with torch.no_grad():
        for start in range(0, len(sample), CHUNK):
            chunk = store.latents(sample[start:start + CHUNK])  # (b, T, c, h, w)
            latents.append(chunk.flatten(0, 1).float())  # (b*T, c, h, w)
            grey.append(grey_frames(codec.decode(chunk).flatten(0, 1)))  # (b*T, 1, H, W)
    latents, grey = torch.cat(latents).to(device), torch.cat(grey).to(device)
    error = model.backbone.fit_decoder(latents, grey)
    with torch.no_grad():
        distance = torch.cat([model.backbone(latents[i:i + CHUNK])[:, 0] for i in range(0, len(latents), CHUNK)])
        distance = distance.reshape(len(sample), -1).mean(dim=1).double()  # per row: mean over frames
        target = model.standardise(torch.as_tensor(labels[sample], dtype=torch.float64, device=device))
        design = torch.stack([distance, torch.ones_like(distance)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, target.unsqueeze(1)).solution[:, 0]
        model.head.weight.zero_()
        model.head.weight[0, 0] = slope
        model.head.bias.fill_(float(intercept))
    fitted = {"decoder_rows": int(len(sample)), "decoder_mae": float(error)}
    model.info.extra.update(fitted)
    return fitted
