"""Which shapes does an image teacher draw, and at which noise level does it decide them?

On the held-out prompts of benchmarks/teacher.py (the first --prompts distinct captions of its held-out store that
are not among the teacher's training captions, each object "<size> <colour> <shape>"):

  Table 1, confusion  --seeds samples per prompt (50-step DDIM at CFG --cfg from x_T of seeds 0, 1, ..., exactly
              benchmarks/teacher.py's samples), decoded, and the
              shape lrm.evaluation.alignment reads from the region of the object's colour, counted against the
              shape the caption names (samples whose object colour is not the named one are left out); the same
              for the real held-out images of those prompts (decoded latents), the ceiling.
  Table 2, from real  the real held-out latents of those prompts noised to t (x_t = alpha_t x0 + sigma_t eps, eps
              seeded per --seeds), then denoised by the teacher with the same sampler from t on (the 50-step
              grid's steps at or below t; SDEdit), for each t in --starts: colour and shape alignment. Where the
              shape alignment falls from the real images' towards the teacher's own is the noise level at which the
              teacher's denoiser stops keeping the shape that x_t still holds, and decides it itself.

Writes JSON (--out, atomically) and prints both tables.

    LRM_CACHE=/tmp/lrm-bench OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/shape_binding.py \\
        --run $LRM_CACHE/teachers/image-dit-s1-64px-<hash>-dct \\
        --held-out $LRM_CACHE/teachers/eval-image-dit-s1-64px-<hash>-512-dct \\
        --out benchmarks/results/shape_binding.json      # the dct teacher (benchmarks/teacher.py --codec dct)
    LRM_CACHE=/tmp/lrm-bench LRM_WEIGHTS=<taef2 weights> OMP_NUM_THREADS=1 PYTHONPATH=. python \\
        benchmarks/shape_binding.py --run $LRM_CACHE/teachers/image-dit-s1-64px-<hash>-taef2 \\
        --held-out $LRM_CACHE/teachers/eval-image-dit-s1-64px-<hash>-512-taef2 \\
        --out benchmarks/results/shape_binding_taef2.json               # benchmarks/teacher.py --codec taef2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lrm.codecs import from_settings
from lrm.datasets.procedural import SHAPES
from lrm.datasets.store import LatentStore
from lrm.diffusion import samplers
from lrm.evaluation import alignment
from lrm.evaluation.alignment import caption_objects, read_frames
from lrm.evaluation.report import first_unseen
from lrm.generators import load_denoiser
from lrm.generators.training import guided, sample_latents
from lrm.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLING_STEPS = 50  # the teacher's grid 999 ... 19


def confusion(pixels: torch.Tensor, captions: list[str]) -> dict[str, dict[str, int]]:
    """pixels (N, 1, 3, H, W), captions (N,) -> {named shape: {read shape: count}} over the samples whose object
    colour is the named one ("none": no region of that colour)."""
    readings, _ = read_frames(pixels[:, 0])
    table = {named: {read: 0 for read in (*SHAPES, "none")} for named in SHAPES}
    for reading, caption in zip(readings, captions):
        named = caption_objects(caption)
        if reading.color in named:
            table[named[reading.color]][reading.shape or "none"] += 1
    return table


def denoise_from(model, x0: torch.Tensor, text, mask, start: int, cfg: float, seed: int) -> torch.Tensor:
    """x0 (N, T, c, h, w) noised to the grid's first timestep at or below `start`, then denoised down the grid."""
    schedule = model.schedule
    grid = schedule.timesteps(SAMPLING_STEPS)
    grid = grid[grid <= start]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    alpha, sigma = schedule.alpha_sigma(torch.full((x0.shape[0],), int(grid[0])), x0)
    with torch.no_grad():
        return samplers.sample(guided(model, text, mask, cfg), alpha * x0 + sigma * eps, grid, schedule,
                               model.prediction)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="image teacher run folder (default: the embedded one)")
    parser.add_argument("--held-out", default=None,
                        help="held-out store (default: benchmarks/teacher.py's eval-<run name>-512 beside the run)")
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts (benchmarks/teacher.py's)")
    parser.add_argument("--seeds", type=int, default=4, help="samples per prompt")
    parser.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance")
    parser.add_argument("--starts", type=int, nargs="+", default=[99, 199, 299, 399, 499, 599, 799, 999],
                        help="timesteps the real latents are noised to before the teacher denoises them")
    parser.add_argument("--out", type=Path, default=RESULTS / "shape_binding.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    from lrm.generators.embedded import embedded_run_dir

    run = Path(args.run) if args.run else embedded_run_dir(video=False)
    held_path = Path(args.held_out) if args.held_out else run.parent / f"eval-{run.name}-512"
    if not (held_path / "manifest.json").is_file():
        parser.error(f"no held-out store at {held_path}: run benchmarks/teacher.py for this teacher first, or pass "
                     "--held-out")
    held = LatentStore.open(held_path)
    config = json.loads((run / "config.json").read_text())
    training_prompts = set(LatentStore.open(config["store"]).prompts)
    if config["codec"] != held.codec_settings:
        parser.error(f"{held_path} holds {held.codec_settings['name']} latents but the teacher was trained on "
                     f"{config['codec']['name']} ones; pass the held-out store of its codec")
    rows = np.array([row for row, _ in first_unseen(held.prompts[:256], training_prompts, args.prompts)])
    prompts = [held.prompts[i] for i in rows]
    text, mask = held.text_embeddings(rows)
    mask = mask.bool()
    x0 = held.latents(rows).float()  # (P, 1, c, h, w)
    codec = from_settings(held.codec_settings)
    model = load_denoiser(run / "model").eval()
    started = time.perf_counter()

    real = codec.decode(x0).clamp(0, 1)
    real_aligned = alignment(real, prompts)
    captions = [p for p in prompts for _ in range(args.seeds)]
    samples = torch.stack([sample_latents(model, text, mask, tuple(held.latent_shape), args.cfg, SAMPLING_STEPS, seed)
                           for seed in range(args.seeds)], 1).flatten(0, 1)  # prompt-major, as benchmarks/teacher.py
    pixels = codec.decode(samples).clamp(0, 1)
    sampled = alignment(pixels, captions)
    result = {"run": str(run), "held_out": str(held_path), "codec": held.codec_settings["name"],
              "prompts": len(prompts), "seeds": args.seeds, "cfg": args.cfg,
              "sampler": f"DDIM eta 0, the {SAMPLING_STEPS}-step grid (999..19)",
              "real": {"color": real_aligned.color, "shape": real_aligned.shape,
                       "confusion": confusion(real, prompts)},
              "samples": {"color": sampled.color, "shape": sampled.shape, "confusion": confusion(pixels, captions)},
              "from_real": []}
    for start in args.starts:
        denoised = torch.stack([denoise_from(model, x0, text, mask, start, args.cfg, seed)
                                for seed in range(args.seeds)], 1).flatten(0, 1)
        aligned = alignment(codec.decode(denoised).clamp(0, 1), captions)
        result["from_real"].append({"start": start, "color": aligned.color, "shape": aligned.shape})
        print(f"from real at t <= {start}: colour {aligned.color:.3f} shape {aligned.shape:.3f}", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads()}
    atomic_write_json(args.out, result, strict=True)

    for name in ("real", "samples"):
        print(f"\n{name}: colour {result[name]['color']:.3f} shape {result[name]['shape']:.3f}; named (rows) vs "
              "read (columns)")
        print(f"{'':>10s} " + " ".join(f"{s[:7]:>7s}" for s in (*SHAPES, "none")))
        for named, reads in result[name]["confusion"].items():
            print(f"{named:>10s} " + " ".join(f"{v:>7d}" for v in reads.values()))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
