"""How stable is each image reward under changes that should not matter? (a ceiling for surrogates)

Every image is scored as it is and after changes that keep its content and quality:
- mirror: the left-right flip (same 8-px block grid at these sizes);
- noise-k: every 8-bit RGB value moved by a random whole number of levels in [-k, k] (seeded per
  image; k = 1 unless `--noise` names others, e.g. `--noise 1 4 16` to see how close to the
  decoded pixels a surrogate's own decode must come);
- shift-1: the image moved one pixel right and down, its first row and column repeated.
The Spearman correlation between the rewards of the images and of the changed images is the
reward's own test-retest reliability under that change. A reward far below 1 depends on more than
content and quality: on which pixels fall into a fixed patch grid (mirror, shift), or on exact
pixel values in flat regions (noise). A surrogate reads content and quality from latents; one that
does not reproduce the decoder's pixels to within a grey level cannot be expected to follow a
reward that a one-level change reorders (a warning, not a proven bound).

Images: those of the real benchmark data (`--scales`, benchmarks/real_data.py: the labels of the
media) and the decoded rows of fidelity stores (`--stores`: the images `--label-pixels decoded`
labels are computed on).

    python benchmarks/reward_reliability.py                       # full (256 px) and large-384 (384 px)
    python benchmarks/reward_reliability.py --scales full --rewards niqe brisque --images 100
    python benchmarks/reward_reliability.py --scales --stores benchmarks/.cache/stores/images-full-384-taef2

Prints a table and writes JSON (default benchmarks/results/reward_reliability.json).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

IMAGE_REWARDS = ("jpeg-incompressibility", "sharpness", "colorfulness", "brisque", "niqe")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "reward_reliability.json"


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b)[0])


def change_names(noise_levels: list[int]) -> tuple[str, ...]:
    return ("mirror", *(f"noise-{k}" for k in noise_levels), "shift-1")


def changed(image: np.ndarray, change: str, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 image -> the same image after `change` ("mirror", "noise-k" or "shift-1")."""
    if change == "mirror":
        return np.ascontiguousarray(image[:, ::-1])
    if change.startswith("noise-"):
        k = int(change.removeprefix("noise-"))
        step = np.random.default_rng(seed).integers(-k, k + 1, size=image.shape)
        return np.clip(image.astype(np.int16) + step, 0, 255).astype(np.uint8)
    if change == "shift-1":
        return np.pad(image, ((1, 0), (1, 0), (0, 0)), mode="edge")[:-1, :-1]
    raise ValueError(f"unknown change {change!r}; known: mirror, noise-k, shift-1")


def folder_images(folder: Path, count: int) -> Iterator[np.ndarray]:
    """`count` evenly spaced images of a benchmarks/real_data.py folder, (H, W, 3) uint8."""
    from PIL import Image

    for path in real_data.evenly_spaced_images(folder, count):
        yield np.array(Image.open(path).convert("RGB"))  # a writable copy, for torch.from_numpy


def store_images(path: Path, count: int, seed: int, batch: int = 16) -> Iterator[np.ndarray]:
    """`count` rows of a fidelity store drawn with `seed`, decoded by their codec, as (H, W, 3) uint8
    as a reward sees them (lrm.rewards.base.to_uint8_frames); the first frame of each row."""
    from codec_ceiling import decoded_pixels
    from lrm.datasets.store import LatentStore
    from lrm.rewards.base import to_uint8_frames

    store = LatentStore.open(path)
    rows = np.sort(np.random.default_rng(seed).choice(len(store), min(count, len(store)), replace=False))
    for start in range(0, len(rows), batch):
        pixels = decoded_pixels(store, rows[start:start + batch])  # (b, T, 3, H, W)
        yield from to_uint8_frames(pixels[:, 0])  # (b, H, W, 3)


def measure(name: str, images: Iterator[np.ndarray], count: int, rewards: tuple[str, ...],
            changes: tuple[str, ...]) -> dict:
    """Rewards of the images and of their changed versions -> per reward, Spearman per change."""
    import torch
    from tqdm import tqdm

    from lrm.rewards import load

    scorers = {reward: load(reward) for reward in rewards}
    scores = {reward: {view: [] for view in ("original", *changes)} for reward in rewards}
    started = time.process_time()
    side = 0
    for index, image in enumerate(tqdm(images, desc=name, unit="image", total=count)):
        side = image.shape[1]
        for view in ("original", *changes):
            pixels = image if view == "original" else changed(image, view, seed=index)
            frames = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)[None, None]  # (1, 1, 3, H, W)
            for reward, scorer in scorers.items():
                scores[reward][view].append(float(scorer(frames)))
    return {"images_from": name, "side": side, "images": len(scores[rewards[0]]["original"]),
            "cpu_s": round(time.process_time() - started, 1),
            "rows": [{"reward": reward, **{change: spearman(s["original"], s[change]) for change in changes}}
                     for reward, s in scores.items()]}


def markdown(results: list[dict], changes: tuple[str, ...]) -> str:
    titles = {"mirror": "Spearman vs mirror image", "shift-1": "vs 1-px shift"}
    header = [titles.get(c, f"vs ±{c.removeprefix('noise-')} level noise") for c in changes]
    lines = ["| reward | images | side | n | " + " | ".join(header) + " |", "|---|---|---|---|" + "---|" * len(changes)]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {row['reward']} | {result['images_from']} | {result['side']} px | {result['images']} | "
                         + " | ".join(f"{row[change]:.3f}" for change in changes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="*", default=["full", "large-384"], choices=sorted(real_data.SCALES),
                        help="image sets of benchmarks/real_data.py (default: full large-384; none: --scales alone)")
    parser.add_argument("--stores", nargs="*", type=Path, default=[],
                        help="fidelity stores (benchmarks/fidelity.py) whose rows are decoded and scored")
    parser.add_argument("--rewards", nargs="+", default=list(IMAGE_REWARDS), choices=IMAGE_REWARDS)
    parser.add_argument("--images", type=int, default=220,
                        help="images per scale (evenly spaced) and per store (drawn with --seed); default 220")
    parser.add_argument("--seed", type=int, default=0, help="which store rows are drawn (default 0)")
    parser.add_argument("--noise", type=int, nargs="+", default=[1],
                        help="noise changes: RGB values moved by up to k levels, one change per k (default 1)")
    parser.add_argument("--cache", type=Path, default=real_data.DEFAULT_CACHE,
                        help="data cache (default: benchmarks/.cache)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args(argv)
    if args.images < 3:
        parser.error(f"--images must be at least 3 for a rank correlation, got {args.images}")
    if not args.scales and not args.stores:
        parser.error("nothing to measure: give --scales, --stores or both")
    from lrm.datasets.store import LatentStore

    for path in args.stores:
        try:
            LatentStore.open(path)
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"--stores: {error}")
    if min(args.noise) < 1:
        parser.error(f"--noise levels must be at least 1, got {args.noise}")
    rewards, changes = tuple(args.rewards), change_names(args.noise)
    results = [measure(scale, folder_images(real_data.materialise(args.cache, "images", scale), args.images),
                       args.images, rewards, changes)
               for scale in args.scales]
    results += [measure(f"{path.name} (decoded)", store_images(path, args.images, args.seed), args.images, rewards,
                        changes)
                for path in args.stores]
    table = markdown(results, changes)
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
