"""Start pixel-decoding surrogates from the codec's decoder (lrm.models.nss_pixels).

A surrogate that computes NIQE on decoded grey pixels starts, before any gradient step, as NIQE of
the codec's decoded frames:
- NSSPixelBackbone (image-nss-pixels) decodes with one linear conv, which is set to the codec's
  decoder by ridge least squares on a sample of training rows (their decoded frames, rounded to 8
  bits and greyed as NIQE sees them). In dct the fitted decoder is exact up to clamping and 8-bit
  rounding.
- CodecNIQEBackbone (image-nss-codec) runs the codec's own decoder, so there is nothing to fit.
Then the linear head is set to the least-squares line from the backbone's distance to the
standardised labels of the same rows, every other input at 0.
"""

from __future__ import annotations

import numpy as np
import torch

from lrm.models import LatentRewardModel
from lrm.models.nss_pixels import CodecNIQEBackbone, NSSPixelBackbone

SAMPLE_ROWS = 256  # training rows the decoder and the head's line are fitted on
CHUNK = 16  # rows decoded at a time


def starts_from_decoder(model: LatentRewardModel) -> bool:
    """True for surrogates that `initialise_from_decoder` starts."""
    return isinstance(model.backbone, (NSSPixelBackbone, CodecNIQEBackbone))


def initialise_from_decoder(model: LatentRewardModel, store, train_rows: np.ndarray, labels: np.ndarray,
                            seed: int) -> dict:
    """On up to SAMPLE_ROWS training rows: fit an NSSPixelBackbone's conv to the codec's decoded grey frames,
    then the head's line. Returns {"decoder_rows"} and, for a fitted conv, "decoder_mae" (grey levels),
    also kept in model.info.extra."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(train_rows, size=min(SAMPLE_ROWS, len(train_rows)), replace=False))
    device = next(model.parameters()).device
    latents = torch.cat([store.latents(sample[i:i + CHUNK]).flatten(0, 1).float()  # (b*T, c, h, w)
                         for i in range(0, len(sample), CHUNK)]).to(device)
    fitted = {"decoder_rows": int(len(sample))}
    if isinstance(model.backbone, NSSPixelBackbone):
        fitted["decoder_mae"] = model.backbone.fit_decoder(latents, decoded_grey(store.codec_settings, latents))
    with torch.no_grad():
        distance = torch.cat([model.backbone(latents[i:i + CHUNK])[:, 0] for i in range(0, len(latents), CHUNK)])
        distance = distance.reshape(len(sample), -1).mean(dim=1).double()  # per row: mean over frames
        target = model.standardise(torch.as_tensor(labels[sample], dtype=torch.float64, device=device))
        design = torch.stack([distance, torch.ones_like(distance)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, target.unsqueeze(1)).solution[:, 0]
        model.head.weight.zero_()
        model.head.weight[0, 0] = slope
        model.head.bias.fill_(float(intercept))
    model.info.extra.update(fitted)
    return fitted


def decoded_grey(codec_settings: dict, frames: torch.Tensor) -> torch.Tensor:
    """Latent frames (N, c, h, w) -> (N, 1, H, W) the codec's decode of them, in grey as NIQE sees them
    (0-255, 8-bit levels), on the frames' device."""
    from lrm import codecs
    from lrm.models.nss_pixels import grey_frames

    codec = codecs.from_settings(codec_settings).to(frames.device).eval()
    with torch.no_grad():
        return torch.cat([grey_frames(codec.decode(chunk.unsqueeze(1))[:, 0]) for chunk in frames.split(CHUNK)])
