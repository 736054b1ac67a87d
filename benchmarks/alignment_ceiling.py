"""The ceiling of prompt alignment (lrm.evaluation.alignment): what the procedural frames themselves score.

A generator's colour / shape / motion alignment is read from its pixels by the same measure that reads
these frames, so real procedural clips with their own captions are the most a generator can reach; the
same clips with shuffled captions (each clip another's caption) and played backwards are what a
generator that ignored the prompt, or moved its objects the wrong way, would get. For each world and
clip length, `--count` clips of procedural seed 5 at 64 px are read once (read_frames); motion is
scored over the clips whose caption names a moving object, and "still read as moving" is the share of
objects a caption calls "standing still" whose centroid path passes the MIN_SPEED test (a false motion).

    OMP_NUM_THREADS=1 python benchmarks/alignment_ceiling.py --out benchmarks/results/alignment_ceiling.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from lrm.datasets.procedural import SHAPES, ProceduralClips, world_config
from lrm.io import atomic_write_json

measure = importlib.import_module("lrm.evaluation.alignment")  # the module (lrm.evaluation.alignment is its function)
STILL = re.compile(r"\b(\w+) (?:" + "|".join(SHAPES) + r") standing still\b")
SEED = 5


def score(world: str, frames: int, count: int) -> dict:
    """Colour, shape and motion alignment of `count` clips of `world` with their own captions, with shuffled
    captions and (motion) played backwards, and the share of still objects read as moving."""
    clips = ProceduralClips(world_config(world, seed=SEED, frames=frames, size=64), count=count)
    pixels, captions = torch.stack([c.pixels for c in clips]), [c.caption for c in clips]
    shuffled = captions[:]
    random.Random(0).shuffle(shuffled)
    own, other = measure.alignment(pixels, captions), measure.alignment(pixels, shuffled)
    _, names = measure.read_frames(pixels.flatten(0, 1))
    names = names.reshape(count, frames, *names.shape[1:])  # (N, T, h, w)
    still = [measure.moving_direction(clip, match.group(1)) is not None
             for clip, caption in zip(names, captions) for match in [STILL.search(caption)] if match]
    return {"world": world, "frames": frames, "clips": count,
            "moving_clips": sum(bool(measure.caption_motions(c)) for c in captions),
            "color": own.color, "shape": own.shape, "motion": own.motion,
            "color_shuffled": other.color, "shape_shuffled": other.shape, "motion_shuffled": other.motion,
            "motion_backwards": measure.motion_alignment(names[:, ::-1], captions) if frames > 1 else None,
            "still_objects": len(still), "still_read_as_moving": float(np.mean(still)) if still else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["simple", "full"])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 3, 4, 8])
    parser.add_argument("--count", type=int, default=150, help="clips per world and length")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the rows")
    args = parser.parse_args()

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("| world | frames | colour (shuffled) | shape (shuffled) | motion: own / shuffled / backwards (moving clips) "
          "| still read as moving |\n|---|---|---|---|---|---|")
    rows = []
    for world in args.worlds:
        for frames in args.frames:
            r = score(world, frames, args.count)
            rows.append(r)
            motion = "-" if r["motion"] is None else (f"{fmt(r['motion'])} / {fmt(r['motion_shuffled'])} / "
                                                      f"{fmt(r['motion_backwards'])} ({r['moving_clips']})")
            print(f"| {world} | {frames} | {fmt(r['color'])} ({fmt(r['color_shuffled'])}) | {fmt(r['shape'])} "
                  f"({fmt(r['shape_shuffled'])}) | {motion} | {fmt(r['still_read_as_moving'])} |", flush=True)
    if args.out is not None:
        atomic_write_json(args.out, {"seed": SEED, "size": 64, "min_speed": measure.MIN_SPEED, "rows": rows},
                          strict=True)


if __name__ == "__main__":
    main()
