"""What a surrogate costs per frame, next to the pixel path it replaces (decode + reward).

For each image preset (default: all that read no text), build it for a codec's latents of
`--size`-px frames, then time on a batch of procedural frames (benchmarks/rewards.py) encoded by
that codec:
- "forward": a prediction without gradients (scoring, validation);
- "fit step": forward and the gradient to the surrogate's weights, the latents fixed (a fitting
  step without the optimiser);
- "tuning step": forward and the gradient to the latents and the weights (what reward fine-tuning
  backpropagates through the surrogate).
Beside them, the pixel path for `--rewards` (lrm.pixel_path.PixelPathReward: the codec's decoder,
then the pixel reward): "forward" without gradients and, for differentiable rewards (NIQE is),
"tuning step" with the gradient to the latents. Seconds per frame are the best of `--repeats`
timed calls after one warm-up call, on `--threads` CPU threads. Prints a table, writes JSON.

    python benchmarks/surrogate_cost.py                                   # dct, 384 px, every image preset
    LRM_WEIGHTS=../shared/data/weights/taesd python benchmarks/surrogate_cost.py --codec taef2
    python benchmarks/surrogate_cost.py --presets image-cnn image-fullres-stats --out /tmp/cost.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rewards import procedural_clips  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
from lrm import codecs  # noqa: E402
from lrm.io import atomic_write_json  # noqa: E402
from lrm.models import PRESETS, build  # noqa: E402
from lrm.pixel_path import PixelPathReward  # noqa: E402
from lrm.rewards import REWARDS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_REWARDS = sorted(name for name, entry in REWARDS.items() if entry.spec.kind == "image")
IMAGE_PRESETS = [name for name, preset in PRESETS.items() if preset.kind == "image"]


@dataclass
class Row:
    what: str  # preset name, or "decode + REWARD" for the pixel path
    trainable_parameters: int | None  # the surrogate's trained weights (None: the pixel path)
    forward_s: float = math.nan  # seconds per frame, no gradient
    fit_step_s: float = math.nan  # seconds per frame, gradient to the weights
    tuning_step_s: float = math.nan  # seconds per frame, gradient to the latents and the weights
    status: str = "ok"


def best_time(call, repeats: int) -> float:
    """Best wall seconds of `repeats` calls of `call()`, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_preset(preset: str, latents: torch.Tensor, repeats: int) -> Row:
    """latents (N, 1, c, h, w): the surrogate's seconds per frame without and with gradients."""
    frames = latents.shape[0]
    try:
        model = build(preset, latents.shape[2])
        row = Row(preset, sum(p.numel() for p in model.parameters() if p.requires_grad))

        def forward():
            with torch.no_grad():
                model(latents)

        def step(to_latents: bool):
            x = latents.clone().requires_grad_(to_latents)
            model.zero_grad()
            model(x).sum().backward()

        row.forward_s = best_time(forward, repeats) / frames
        row.fit_step_s = best_time(lambda: step(False), repeats) / frames
        row.tuning_step_s = best_time(lambda: step(True), repeats) / frames
    except ValueError as error:  # e.g. frames too small for a preset
        return Row(preset, None, status=f"not measured: {error}")
    return row


def measure_pixel_path(reward: str, codec, latents: torch.Tensor, repeats: int) -> Row:
    """Seconds per frame of the codec's decoder followed by the pixel reward, without gradients and, for a
    differentiable reward, with the gradient to the latents (a direct pixel-gradient tuning step)."""
    path = PixelPathReward(codec, REWARDS[reward].factory())

    def forward():
        with torch.no_grad():
            path(latents)

    def tuning_step():
        x = latents.clone().requires_grad_(True)
        path(x).sum().backward()

    row = Row(f"decode + {reward}", None)
    try:
        row.forward_s = best_time(forward, repeats) / latents.shape[0]
        if path.differentiable:
            row.tuning_step_s = best_time(tuning_step, repeats) / latents.shape[0]
    except ValueError as error:  # e.g. frames too small for the reward (InputError)
        row.status = f"not measured: {error}"
    return row


def format_table(rows: list[Row]) -> str:
    lines = [f"{'surrogate / pixel path':34s} {'trained params':>14s} {'forward s/frame':>16s} "
             f"{'fit step s/frame':>17s} {'tuning step s/frame':>20s}  status"]
    for r in rows:
        params = "-" if r.trainable_parameters is None else f"{r.trainable_parameters:,}"
        lines.append(f"{r.what:34s} {params:>14s} {r.forward_s:16.4f} {r.fit_step_s:17.4f} "
                     f"{r.tuning_step_s:20.4f}  {r.status}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", default="dct", help="lrm.codecs name (default: dct; taef2 needs $LRM_WEIGHTS)")
    parser.add_argument("--presets", nargs="+", choices=IMAGE_PRESETS, default=IMAGE_PRESETS,
                        help="image presets to time (default: all that read no text)")
    parser.add_argument("--rewards", nargs="*", default=["niqe"], choices=IMAGE_REWARDS,
                        help="image rewards timed after the codec's decoder (default: niqe)")
    parser.add_argument("--frames", type=int, default=4, help="frames per batch")
    parser.add_argument("--size", type=int, default=384, help="frame side in pixels (NIQE needs 192+)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per measurement; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable on shared machines)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: benchmarks/results/surrogate_cost.json, "
                                                 "or surrogate_cost_taef2.json for taef2)")
    args = parser.parse_args()
    for name in ("frames", "size", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    tag = "" if args.codec == "dct" else "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", args.codec)  # diffusers:org/x -> safe
    out = args.out or RESULTS / f"surrogate_cost{tag}.json"

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    codec = codecs.load(args.codec).eval()
    with torch.no_grad():
        latents = codec.encode(procedural_clips(args.frames, 1, args.size))  # (N, 1, c, h, w)
    rows = [measure_preset(p, latents, args.repeats) for p in args.presets]
    rows += [measure_pixel_path(r, codec, latents, args.repeats) for r in args.rewards]
    print(format_table(rows))
    atomic_write_json(out, {
        "setup": {"codec": codec.codec_id, "frames": args.frames, "size": args.size, "latent_shape":
                  list(latents.shape[1:]), "repeats": args.repeats, "threads": args.threads, "device": "cpu",
                  "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()},
        "rows": [{k: None if isinstance(v, float) and v != v else v for k, v in asdict(r).items()} for r in rows],
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
