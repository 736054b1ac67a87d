"""How much of each reward survives a codec: Spearman(reward(x), reward(decode(encode(x)))).

A latent surrogate only sees what the codec kept. Scoring the decoded latents with the pixel reward
is a reference for what a surrogate in that latent space can reach: for a lossy linear codec
(dct keeps 32 of 192 DCT coefficients per 8x8 block) the decoded image is everything the latents
hold, so a reward that changes a lot between x and decode(encode(x)) (NIQE reads fine
high-frequency statistics) is hard for any surrogate. It is a reference, not a strict bound: a
learned decoder (taef2) invents detail, and a surrogate may predict the original's reward better
than the decoded image's.

Reads stores written by benchmarks/fidelity.py (their labels are the rewards of the original
media), decodes `--rows` rows drawn with a fixed seed, scores them and prints one table row per
(store, reward).

    python benchmarks/codec_ceiling.py benchmarks/.cache/stores/images-full-dct \
        benchmarks/.cache/stores/images-quick-taef2 --rows 400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "codec_ceiling.json"


def decoded_pixels(store, rows: np.ndarray, batch: int = 16) -> torch.Tensor:
    """(n, T, 3, H, W) in [0, 1]: store rows decoded by the codec they were encoded with."""
    codec = store.codec().eval()
    with torch.no_grad():
        return torch.cat([codec.decode(store.latents(rows[i:i + batch])).clamp(0, 1)
                          for i in range(0, len(rows), batch)])


def ceiling_rows(path: Path, rows: int, seed: int) -> list[dict]:
    """One result per label of the store at `path`."""
    from scipy.stats import spearmanr

    from lrm.datasets.store import LatentStore
    from lrm.rewards import load

    store = LatentStore.open(path)
    picked = np.sort(np.random.default_rng(seed).choice(len(store), min(rows, len(store)), replace=False))
    started = time.process_time()
    pixels = decoded_pixels(store, picked)
    decode_s = time.process_time() - started
    out = []
    for name in store.labels:
        reward = load(name)
        scores = torch.cat([reward(pixels[i:i + 16]) for i in range(0, len(pixels), 16)]).numpy()
        truth = store.label(name)[picked]
        keep = np.isfinite(truth) & np.isfinite(scores)
        out.append({"store": path.name, "codec": store.codec_id, "reward": name, "rows": int(keep.sum()),
                    "spearman": round(float(spearmanr(scores[keep], truth[keep])[0]), 4),
                    "decode_cpu_s": round(decode_s, 1)})
        print(f"{path.name:24s} {name:24s} rows {keep.sum():5d}  Spearman(decoded, original) "
              f"{out[-1]['spearman']:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", type=Path, help="latent store folders with reward labels")
    parser.add_argument("--rows", type=int, default=400, help="rows per store, drawn with --seed (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row sample (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    real_data.use_shared_taesd_weights()
    results = [r for path in args.stores for r in ceiling_rows(path, args.rows, args.seed)]
    from lrm.io import atomic_write_json

    command = "python benchmarks/codec_ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_json(args.out, {"command": command, "results": results})
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
