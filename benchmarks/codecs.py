"""Codec throughput and fidelity: encode / decode frames per second and round-trip PSNR.

Runs every available codec on real photos (DreamBooth from ../shared/data, else scikit-image's
samples) at several sizes on CPU, prints a table and writes JSON. TAEF2 runs when its weights are
found ($LRM_WEIGHTS, ~/.cache/lrm, or ../shared/data/weights/taesd); a diffusers autoencoder
runs only when a real local model is given with --diffusers (a random tiny one says nothing).

    python benchmarks/codecs.py
    python benchmarks/codecs.py --sizes 256 --limit 158 --diffusers /models/sd-vae-ft-mse
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import real_data
from photos import load_photos, psnr

import lrm.codecs
from lrm import weights
from lrm.io import atomic_write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "codecs.json"


def available_codecs(diffusers: str | None) -> list[str]:
    names = ["dct"]
    if weights.find("taef2_encoder") and weights.find("taef2_decoder"):
        names.append("taef2")
    else:
        print(f"taef2 skipped: weights not found in {', '.join(map(str, weights.search_dirs()))}")
    if diffusers:
        names.append(f"diffusers:{diffusers}")
    return names


def timed(fn, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(x)
    return out, time.perf_counter() - start


def measure(codec: lrm.codecs.Codec, pixels: torch.Tensor) -> dict:
    """Encode/decode all photos once after a one-batch warm-up; frames/s and PSNR."""
    with torch.no_grad():
        codec.decode(codec.encode(pixels[: codec.batch_size]))  # warm-up (allocations, lazy init)
        latents, t_enc = timed(codec.encode, pixels)
        decoded, t_dec = timed(codec.decode, latents)
    scores = psnr(pixels, decoded)
    frames = pixels.shape[0] * pixels.shape[1]
    return {"frames": frames, "encode_fps": frames / t_enc, "decode_fps": frames / t_dec,
            "psnr_mean": scores.mean().item(), "psnr_min": scores.min().item(), "psnr_max": scores.max().item(),
            "latent_shape": list(latents.shape[1:]), "latent_std": latents.float().std().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="square photo sides in pixels")
    parser.add_argument("--limit", type=int, default=32, help="photos per size (DreamBooth has 158)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per codec chunk")
    parser.add_argument("--diffusers", metavar="PATH", help="a real local diffusers autoencoder to include")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    real_data.use_shared_taesd_weights()

    rows = []
    for name in available_codecs(args.diffusers):
        codec = lrm.codecs.load(name, batch_size=args.batch_size)
        for size in args.sizes:
            pixels, source = load_photos(size, args.limit)
            row = {"codec": name, "codec_id": codec.codec_id, "size": size, "photos": source, **measure(codec, pixels)}
            rows.append(row)
            print(f"{name:>8} {size:>4}px  encode {row['encode_fps']:8.1f} fps  decode {row['decode_fps']:8.1f} fps  "
                  f"PSNR {row['psnr_mean']:.2f} dB", flush=True)

    header = "| codec | size | encode frames/s | decode frames/s | PSNR mean (min-max) dB | latent (c, h, w) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['size']} | {r['encode_fps']:.1f} | {r['decode_fps']:.1f} | "
                     f"{r['psnr_mean']:.2f} ({r['psnr_min']:.1f}-{r['psnr_max']:.1f}) | {tuple(r['latent_shape'][1:])} |")
    print("\n".join(lines))
    atomic_write_json(args.out, {
        "benchmark": "codecs", "device": "cpu", "threads": args.threads, "batch_size": args.batch_size,
        "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
        "torch": torch.__version__, "results": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
