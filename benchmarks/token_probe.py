"""Which latent tokens tell the object's shape and colour: a linear probe per latent space.

A teacher draws the named colour in dct and in taef2 alike but the named shape only in taef2 and in pae
(docs/teacher.md). This asks where each latent space keeps those two attributes. It encodes images of the
simple world (one object; procedural seed 2, a set no teacher trains on) and fits a logistic regression
(scikit-learn defaults: L2, C = 1; features standardised on the fitting rows) that reads the object's shape
(6 classes) or colour (11) from
  centre   the latent token (8 x 8 pixels) under the object's centre: C features
  object   one token of the object, drawn at random among those at least half covered by it: C features
  3x3      the 3 x 3 tokens around the centre token (zero-padded at the border): 9 C features
  5x5      the 5 x 5 tokens around it, 40 x 40 pixels, enough for the largest objects: 25 C features
fitted on the first --train images and scored on the rest (accuracy; chance 1/6 and 1/11).
A high centre- or object-token accuracy means a single token of the object carries the attribute, so a
denoiser can write it token by token; a low one means the attribute lives only in how neighbouring tokens
fit together. The row "hog" is a weight-free, nonlinear reference that is no latent space: each token's HOG
descriptor of the 24 x 24 pixels around it (lrm.codecs.hog, 9 orientations, 2 x 2 cells), the descriptors pae's
tokens are trained to predict.
Each codec row also records the mean round-trip PSNR of the probed images (psnr_db).
Writes benchmarks/results/token_probe.json and prints a table. taef2 needs its weights ($LRM_WEIGHTS); a
codec whose weights are missing is skipped with the reason; pae is trained on first use (~4 min, cached).

    PYTHONPATH=. python benchmarks/token_probe.py --codecs dct hog
    LRM_WEIGHTS=../shared/data/weights/taesd PYTHONPATH=. python benchmarks/token_probe.py
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.linear_model import LogisticRegression

from lrm.codecs import load
from lrm.codecs.hog import token_hog
from lrm.datasets.procedural import PALETTE, SHAPES, ProceduralClips, _coverage, world_config
from lrm.io import atomic_write_json
from lrm.weights import MissingWeightsError

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 2  # procedural seed of the probed images (the embedded teacher trains on seed 0, evaluates on seed 1)
SIZE = 64  # the embedded teacher's resolution: 8 x 8 tokens
TOKEN = 8  # pixels per token side (dct, taef2 and pae)


def object_tokens(shape: dict, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row, col) of the token under the object's centre, and of a random token at least half covered by it (the
    most covered one when none is)."""
    cover = _coverage(shape, np.asarray([shape["center"]], dtype=np.float32), SIZE, SIZE)[0]  # (H, W) in [0, 1]
    per_token = cover.reshape(SIZE // TOKEN, TOKEN, SIZE // TOKEN, TOKEN).mean((1, 3))  # (h, w)
    inside = np.argwhere(per_token >= 0.5)
    pick = inside[rng.integers(len(inside))] if len(inside) else np.unravel_index(per_token.argmax(), per_token.shape)
    centre = (int(shape["center"][1] // TOKEN), int(shape["center"][0] // TOKEN))
    return centre, (int(pick[0]), int(pick[1]))


def token_features(latents: torch.Tensor, tokens: np.ndarray, reach: int = 0) -> np.ndarray:
    """latents (N, C, h, w), tokens (N, 2) (row, col) -> (N, C (2 reach + 1)^2): each token and its neighbours up to
    `reach` tokens away (zero-padded at the border)."""
    z = np.pad(latents.float().numpy(), ((0, 0), (0, 0), (reach, reach), (reach, reach)))
    side = 2 * reach + 1
    return np.stack([z[i, :, r:r + side, c:c + side].reshape(-1) for i, (r, c) in enumerate(tokens)])


def probe_accuracy(features: np.ndarray, labels: np.ndarray, train: int) -> float:
    """Held-out accuracy of a logistic regression fitted on the first `train` rows (features standardised on them)."""
    mean, std = features[:train].mean(0), features[:train].std(0) + 1e-6
    scaled = (features - mean) / std
    model = LogisticRegression(max_iter=5000).fit(scaled[:train], labels[:train])
    return float(model.score(scaled[train:], labels[train:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", nargs="+", default=["dct", "taef2", "pae", "hog"],
                        help="latent spaces (lrm.codecs names), and hog for the pixel reference")
    parser.add_argument("--images", type=int, default=1536, help="images probed, fitting rows first")
    parser.add_argument("--train", type=int, default=1024, help="images the probes are fitted on; the rest score them")
    parser.add_argument("--out", type=Path, default=RESULTS / "token_probe.json")
    args = parser.parse_args()
    if not 0 < args.train < args.images:
        parser.error(f"--train must be between 1 and --images - 1, got {args.train} of {args.images}")

    clips = ProceduralClips(world_config("simple", seed=SEED, frames=1, size=SIZE), count=args.images)
    clips = [clips[i] for i in range(args.images)]
    pixels = torch.stack([torch.as_tensor(clip.pixels) for clip in clips])  # (N, 1, 3, H, W)
    objects = [clip.attributes["shapes"][0] for clip in clips]
    labels = {"shape": np.array([SHAPES.index(o["shape"]) for o in objects]),
              "colour": np.array([list(PALETTE).index(o["color"]) for o in objects])}
    rng = np.random.default_rng(SEED)
    centre, inside = (np.array(tokens) for tokens in zip(*(object_tokens(o, rng) for o in objects)))  # (N, 2) each

    rows, skipped = [], {}
    for name in args.codecs:
        if name == "hog":
            latents = token_hog(pixels[:, 0])  # (N, 36, H/8, W/8): descriptors in place of latents
        else:
            try:
                codec = load(name)
                with torch.no_grad():
                    latents = torch.cat([codec.encode(pixels[i:i + 64]) for i in range(0, args.images, 64)])[:, 0]
                    decoded = torch.cat([codec.decode(latents[i:i + 64, None]) for i in range(0, args.images, 64)])
                psnr = (-10 * torch.log10((decoded - pixels).pow(2).mean((1, 2, 3, 4)).clamp_min(1e-10))).mean()
            except MissingWeightsError as error:  # a learned codec without its weights
                skipped[name] = str(error).split(" Looked in")[0]  # "weight file '...' (...) not found."
                print(f"{name}: skipped ({skipped[name]})")
                continue
            except KeyError as error:  # no such codec
                parser.error(str(error.args[0]))
            if latents.shape[-1] * TOKEN != SIZE:
                parser.error(f"{name} has {latents.shape[-1]} tokens across {SIZE} px; the probe reads 8-px tokens")
        features = {"centre": token_features(latents, centre), "object": token_features(latents, inside),
                    "3x3": token_features(latents, centre, 1), "5x5": token_features(latents, centre, 2)}
        row = {"codec": name, "latent_shape": list(latents.shape[1:]),
               "psnr_db": None if name == "hog" else round(psnr.item(), 2)}  # round trip of the probed images
        for attribute, y in labels.items():
            for where, x in features.items():
                row[f"{attribute}_{where}"] = probe_accuracy(x, y, args.train)
        rows.append(row)
        print(row, flush=True)

    result = {"images": args.images, "train": args.train, "seed": SEED, "size": SIZE, "world": "simple",
              "probe": "sklearn LogisticRegression (L2, C=1, max_iter 5000) on features standardised on the fitting rows",
              "chance": {"shape": 1 / len(SHAPES), "colour": 1 / len(PALETTE)}, "rows": rows, "skipped": skipped,
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "sklearn": sklearn.__version__}}
    atomic_write_json(args.out, result, strict=True)
    wheres = ("centre", "object", "3x3", "5x5")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{'codec':6s} {'attribute':9s} " + " ".join(f"{w:>7s}" for w in wheres))
    for r in rows:
        for attribute in labels:
            print(f"{r['codec']:6s} {attribute:9s} " + " ".join(f"{fmt(r.get(f'{attribute}_{w}')):>7s}" for w in wheres))
    print(f"chance: shape {1 / len(SHAPES):.3f}, colour {1 / len(PALETTE):.3f}; round-trip PSNR: "
          + ", ".join(f"{r['codec']} {r['psnr_db']:.2f} dB" for r in rows if r["psnr_db"] is not None))


if __name__ == "__main__":
    main()
