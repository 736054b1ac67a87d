"""Can a codec's latents be mirrored without re-encoding? (why `--augment hflip` is dct-only)

Horizontal-flip augmentation (`FitConfig.augment = "hflip"`) mirrors training latents in latent
space. That is only sound where the latents of a mirror image are a fixed function of the latents
of the image. For images x of the real benchmark data this measures, per codec, the error of
three candidates m against the truth encode(flip(x)), as a share of the truth's variance:

- `codec.mirror_latents` (the exact mirror, where the codec has one; dct);
- the plain spatial flip of the latents;
- the spatial flip with the best sign per channel (what dct's exact mirror is).

    python benchmarks/mirror_equivariance.py                      # dct and taef2, 64 images at 256 px
    python benchmarks/mirror_equivariance.py --codecs dct --images 16

Prints a table and writes JSON (default benchmarks/results/mirror_equivariance.json).
taef2 needs its weights: $LRM_WEIGHTS (default here: ../shared/data/weights/taesd when present).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mirror_equivariance.json"


def load_images(folder: Path, count: int):
    """(n, 1, 3, H, W) in [0, 1]: `count` evenly spaced PNGs of `folder`."""
    import torch
    from PIL import Image

    files = real_data.evenly_spaced_images(folder, count)
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # (n, H, W, 3)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)[:, None].float().div(255)


def relative_error(estimate, truth) -> float:
    """Mean squared error of `estimate` as a share of the variance of `truth`."""
    return float((estimate - truth).pow(2).mean() / truth.var())


def measure(codec_name: str, pixels) -> dict:
    import torch

    from lrm import codecs

    codec = codecs.load(codec_name).eval()
    with torch.no_grad():
        latents = codec.encode(pixels)  # (n, 1, c, h, w)
        truth = codec.encode(pixels.flip(-1))
    flipped = latents.flip(-1)
    per_channel = (flipped * truth).sum((0, 1, 3, 4))  # (c,): sign of the best +-1 map per channel
    signed = flipped * torch.where(per_channel < 0, -1.0, 1.0)[:, None, None]
    try:
        exact = relative_error(codec.mirror_latents(latents), truth)
    except ValueError:  # the codec has no exact mirror
        exact = None
    return {"codec": codec_name, "images": int(pixels.shape[0]), "side": int(pixels.shape[-1]),
            "mirror_latents": exact, "plain_flip": relative_error(flipped, truth),
            "flip_with_best_signs": relative_error(signed, truth)}


def markdown(rows: list[dict]) -> str:
    fmt = lambda v: "refused" if v is None else f"{v:.2e}" if v < 1e-3 else f"{v:.3f}"  # noqa: E731
    lines = ["| codec | images | mirror_latents | plain flip | flip, best sign per channel |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['images']} x {r['side']} px | {fmt(r['mirror_latents'])} | "
                     f"{fmt(r['plain_flip'])} | {fmt(r['flip_with_best_signs'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", nargs="+", default=["dct", "taef2"], help="lrm.codecs names (default: dct taef2)")
    parser.add_argument("--images", type=int, default=64, help="images of the full image set, evenly spaced")
    parser.add_argument("--cache", type=Path, default=real_data.DEFAULT_CACHE,
                        help="data cache (default: benchmarks/.cache)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args(argv)
    if "taef2" in args.codecs:
        real_data.use_shared_taesd_weights()
    pixels = load_images(real_data.materialise(args.cache, "images", "full"), args.images)
    rows = [measure(name, pixels) for name in args.codecs]
    table = markdown(rows)
    print(table)
    from lrm.io import atomic_write_json

    atomic_write_json(args.out, {"setup": {"command": "python benchmarks/mirror_equivariance.py "
                                           + " ".join(sys.argv[1:] if argv is None else argv),
                                           "machine": platform.machine(), "python": platform.python_version()},
                                 "results": rows, "table": table})
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
