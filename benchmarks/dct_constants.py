"""Choose the DCT codec's coefficient split and measure its per-channel standardisation constants.

For every split (Y, Cb, Cr) of `--channels` coefficients in the searched range, round-trips real
photos at 256 px through the raw (unstandardised) block-DCT codec and reports the mean PSNR; then
prints CHANNEL_MEAN / CHANNEL_STD for the chosen split, ready to paste into lrm/codecs/dct.py,
and writes the PSNRs and constants as JSON (--out).

    python benchmarks/dct_constants.py                 # search splits, measure the best one
    python benchmarks/dct_constants.py --split 26 3 3  # measure one split
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from photos import load_photos, psnr

from lrm.codecs.dct import DCTCodec


def mean_psnr(pixels: torch.Tensor, split: tuple[int, int, int]) -> float:
    codec = DCTCodec(split=split, mean=None, std=None)
    with torch.no_grad():
        return psnr(pixels, codec.decode(codec.encode(pixels))).mean().item()


def candidate_splits(channels: int, min_luma: int) -> list[tuple[int, int, int]]:
    return [(y, cb, channels - y - cb) for y in range(min_luma, channels - 1) for cb in range(1, channels - y)]


def channel_constants(pixels: torch.Tensor, split: tuple[int, int, int]) -> tuple[list[float], list[float]]:
    """Mean (DC channels only; AC coefficients are symmetric about zero) and std of each raw channel."""
    codec = DCTCodec(split=split, mean=None, std=None)
    with torch.no_grad():
        coef = codec.encode(pixels).double()  # (N, 1, c, h, w)
    per_channel = coef.transpose(0, 2).flatten(1)  # (c, N * h * w)
    dc = {0, split[0], split[0] + split[1]}
    mean = [float(f"{m:.4g}") if i in dc else 0.0 for i, m in enumerate(per_channel.mean(1).tolist())]
    std = [float(f"{s:.4g}") for s in per_channel.std(1).tolist()]
    return mean, std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="photo side in pixels")
    parser.add_argument("--channels", type=int, default=32, help="total kept coefficients per block")
    parser.add_argument("--min-luma", type=int, default=12, help="smallest luma count searched")
    parser.add_argument("--split", type=int, nargs=3, metavar=("Y", "CB", "CR"), help="measure this split only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dct_constants.json"), help="JSON results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pixels, source = load_photos(args.size)
    print(f"photos: {source} at {args.size} px")
    ranked = []
    if args.split:
        best = tuple(args.split)
    else:
        scores = {s: mean_psnr(pixels, s) for s in candidate_splits(args.channels, args.min_luma)}
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        for split, score in ranked[:10]:
            print(f"  split Y/Cb/Cr {split}: mean PSNR {score:.3f} dB")
        best = ranked[0][0]
    mean, std = channel_constants(pixels, best)
    best_psnr = mean_psnr(pixels, best)
    print(f"split {best}: mean PSNR {best_psnr:.3f} dB")
    print("CHANNEL_MEAN =", json.dumps(mean))
    print("CHANNEL_STD =", json.dumps(std))
    report = {"photos": source, "count": int(pixels.shape[0]), "size": args.size, "split": list(best),
              "mean_psnr_db": round(best_psnr, 3), "channel_mean": mean, "channel_std": std,
              "searched": [{"split": list(s), "mean_psnr_db": round(p, 3)} for s, p in ranked]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
