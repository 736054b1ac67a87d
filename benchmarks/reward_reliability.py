"""How stable is each image reward under a change that should not matter? (a ceiling for surrogates)

For images of the real benchmark data (benchmarks/real_data.py) this scores every image and its
mirror image (left-right flip: same content, same quality, same 8-px block grid at these sizes).
The Spearman correlation between the rewards of the images and of their mirror images is the
reward's own test-retest reliability. A reward far below 1 here depends on more than content and
quality, e.g. on which pixels fall into a fixed patch grid. A surrogate reading content and
quality from latents learns mainly the part that an image and its mirror image share, so a low
number warns that a high held-out Spearman is out of reach (a warning, not a proven bound).

    python benchmarks/reward_reliability.py                       # full (256 px) and large-384 (384 px)
    python benchmarks/reward_reliability.py --scales full --rewards niqe brisque --images 100

Prints a table and writes JSON (default benchmarks/results/reward_reliability.json).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

IMAGE_REWARDS = ("jpeg-incompressibility", "sharpness", "colorfulness", "brisque", "niqe")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "reward_reliability.json"


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b)[0])


def measure(folder: Path, rewards: tuple[str, ...], count: int) -> dict:
    """Rewards of `count` evenly spaced images of `folder` and of their mirror images -> per-reward Spearman."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from lrm.rewards import load

    files = real_data.evenly_spaced_images(folder, count)
    scorers = {name: load(name) for name in rewards}
    scores = {name: {"original": [], "mirror": []} for name in rewards}
    started = time.process_time()
    for path in tqdm(files, desc=folder.name, unit="image"):
        image = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)
        for view, pixels in (("original", image), ("mirror", image[:, ::-1])):
            frames = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div(255)[None, None]
            for name, reward in scorers.items():
                scores[name][view].append(float(reward(frames)))
    return {"folder": str(folder), "side": image.shape[1], "images": len(files),
            "cpu_s": round(time.process_time() - started, 1),
            "rows": [{"reward": name, "mirror": spearman(s["original"], s["mirror"])} for name, s in scores.items()]}


def markdown(results: list[dict]) -> str:
    lines = ["| reward | image side | images | Spearman vs mirror image |", "|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {row['reward']} | {result['side']} px | {result['images']} | "
                         f"{row['mirror']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["full", "large-384"], choices=sorted(real_data.SCALES),
                        help="image sets of benchmarks/real_data.py (default: full large-384)")
    parser.add_argument("--rewards", nargs="+", default=list(IMAGE_REWARDS), choices=IMAGE_REWARDS)
    parser.add_argument("--images", type=int, default=220, help="images per scale, evenly spaced (default 220)")
    parser.add_argument("--cache", type=Path, default=real_data.DEFAULT_CACHE,
                        help="data cache (default: benchmarks/.cache)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args(argv)
    if args.images < 3:
        parser.error(f"--images must be at least 3 for a rank correlation, got {args.images}")
    results = [measure(real_data.materialise(args.cache, "images", scale), tuple(args.rewards), args.images)
               for scale in args.scales]
    table = markdown(results)
    command = "python benchmarks/reward_reliability.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"setup": {"command": command,
                         "machine": platform.machine(), "python": platform.python_version()},
               "results": results, "table": table}
    from lrm.io import atomic_write_json

    atomic_write_json(args.out, payload)
    print(table)
    print(f"\nresults in {args.out}")


if __name__ == "__main__":
    main()
