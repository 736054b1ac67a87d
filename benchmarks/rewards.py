"""Throughput of every weight-free reward in lrm.rewards.REWARDS on CPU.

For each registered reward whose entry lists no weights and whose required modules import, score
a batch of procedural clips (smooth gradients, moving shapes, mild grain) and report frames per
second, the best of a few timed calls after one warm-up call. Prints a table and writes JSON.

    python benchmarks/rewards.py                      # 4 clips x 8 frames at 256x256
    python benchmarks/rewards.py --names niqe brisque --out /tmp/quality.json
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lrm.io import atomic_write_json
from lrm.rewards import REWARDS

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rewards.json"
PROMPTS = ("a red ball on a lawn", "a blue car on a street", "a yellow kite in the sky", "a purple flower")


@dataclass
class Row:
    name: str  # registry name
    kind: str  # image | text-image | video | text-video
    differentiable: bool  # gradients reach the pixels
    status: str  # "ok", or why the reward was not measured
    frames_per_second: float = math.nan  # frames scored per second (clips x frames / best time)
    seconds_per_batch: float = math.nan  # best wall time of one call on the whole batch
    mean_score: float = math.nan  # mean score over the batch, a sanity check


def procedural_clips(clips: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """(clips, frames, 3, size, size) in [0, 1]: a coloured gradient, a disc and a square that
    move across the clip, and low-amplitude grain so no frame is perfectly flat."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.empty(clips, frames, 3, size, size)
    for c in range(clips):
        low, high = torch.rand(3, 1, 1, generator=g) * 0.5, torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
        disc_color, square_color = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
        for t in range(frames):
            phase = t / max(frames - 1, 1)
            frame = low + (high - low) * (0.6 * x + 0.4 * y)  # (3, size, size)
            cx, cy = 0.25 + 0.5 * phase, 0.5 + 0.2 * math.sin(2 * math.pi * phase + c)
            disc = ((x - cx) ** 2 + (y - cy) ** 2) < 0.02
            frame = torch.where(disc, disc_color, frame)
            lo = int(size * (0.6 - 0.3 * phase))
            frame[:, lo : lo + size // 5, size // 8 : size // 8 + size // 5] = square_color
            frame = frame + 0.02 * torch.randn(3, size, size, generator=g)
            out[c, t] = frame.clamp(0, 1)
    return out


def skip_reason(name: str) -> str | None:
    entry = REWARDS[name]
    if entry.weights:
        return "skipped: needs weights " + ", ".join(entry.weights)
    missing = [m for m in entry.requires if importlib.util.find_spec(m) is None]
    return "skipped: missing modules " + ", ".join(missing) if missing else None


def measure(name: str, pixels: torch.Tensor, repeats: int) -> Row:
    spec = REWARDS[name].spec
    row = Row(name, spec.kind, spec.differentiable, status="ok")
    reason = skip_reason(name)
    if reason:
        row.status = reason
        return row
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(pixels.shape[0])] if spec.needs_text else None
    try:
        reward = REWARDS[name].factory()
        reward(pixels[:1], prompts[:1] if prompts else None)  # warm-up: lazy setup, caches
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                scores = reward(pixels, prompts)
            times.append(time.perf_counter() - start)
    except Exception as error:  # a benchmark reports a failing reward and moves on
        row.status = f"error: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        return row
    row.seconds_per_batch = min(times)
    row.frames_per_second = pixels.shape[0] * pixels.shape[1] / row.seconds_per_batch
    row.mean_score = float(scores.float().nanmean())
    return row


def format_table(rows: list[Row]) -> str:
    lines = [f"{'reward':26s} {'kind':11s} {'diff':5s} {'frames/s':>9s} {'s/batch':>8s} {'mean':>10s}  status"]
    for r in rows:
        lines.append(
            f"{r.name:26s} {r.kind:11s} {str(r.differentiable):5s} {r.frames_per_second:9.1f} "
            f"{r.seconds_per_batch:8.3f} {r.mean_score:10.4g}  {r.status}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    parser.add_argument("--names", nargs="+", choices=sorted(REWARDS), help="rewards to measure (default: all)")
    parser.add_argument("--clips", type=int, default=4, help="clips per batch")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--size", type=int, default=256, help="frame height and width in pixels")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per reward; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable on shared machines)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # measure what runs offline; never download
    torch.set_num_threads(args.threads)
    pixels = procedural_clips(args.clips, args.frames, args.size)
    rows = [measure(name, pixels, args.repeats) for name in (args.names or sorted(REWARDS))]
    print(format_table(rows))
    atomic_write_json(
        args.out,
        {
            "setup": {
                "device": "cpu",
                "clips": args.clips,
                "frames": args.frames,
                "size": args.size,
                "repeats": args.repeats,
                "threads": args.threads,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "processor": platform.processor(),
            },
            "rewards": [{k: None if v != v else v for k, v in asdict(r).items()} for r in rows],  # NaN -> null
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
