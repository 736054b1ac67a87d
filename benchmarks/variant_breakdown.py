"""Where a surrogate's ranking errors lie on the perturbed-photo sets: across contents or across perturbations.

benchmarks/real_data.py writes every photo view in 11 variants ("<view>__<variant>.png": clean,
blur, JPEG, noise, saturation). A label varies both with the content (which view) and with the
perturbation (which variant of a view). For fits run by benchmarks/fidelity.py this re-scores
their training rows (every variant of a seeded sample of views, about `--rows` rows) and their
validation rows, and splits the ranking into:

    within view      mean over views of the Spearman across that view's variants: does the
                     surrogate rank the perturbations of one image?
    within variant   mean over variants of the Spearman across views: does it rank contents
                     under one perturbation?

next to the overall Spearman. A surrogate that ranks the training rows within a view poorly (and
no better than the validation rows) cannot fit the perturbation effects (a model limit, not a data
limit); one that ranks training rows far better than validation rows has memorised its training
images.
`--final` scores the model of the run's last checkpoint (the last step) instead of the
best-validation model in RUN/model.

    python benchmarks/variant_breakdown.py \\
        benchmarks/.cache/runs/images-large-384-dct/niqe--image-patch-gaussian-log-stats--auto--hflip--decoded
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "variant_breakdown.json"


def view_and_variant(sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Store row sources ".../<view>__<variant>.png" -> view names (n,) and variant names (n,)."""
    stems = [Path(s).stem.rsplit("__", 1) for s in sources]
    bad = [s for s, parts in zip(sources, stems) if len(parts) != 2]
    if bad:
        raise ValueError(f"{bad[0]}: not a benchmarks/real_data.py image name '<view>__<variant>.png'")
    return np.array([p[0] for p in stems]), np.array([p[1] for p in stems])


def spearman(pred: np.ndarray, true: np.ndarray) -> float | None:
    """Spearman of pred and true; None for fewer than 3 rows or a constant side."""
    if len(true) < 3 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return None
    return float(spearmanr(pred, true)[0])


def mean_spearman_within(pred: np.ndarray, true: np.ndarray, keys: np.ndarray) -> float | None:
    """Mean over the distinct keys of the Spearman between pred and true among the rows with that key
    (keys where it is None are left out; None when all are)."""
    values = [spearman(pred[keys == key], true[keys == key]) for key in np.unique(keys)]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def sample_views(rows: np.ndarray, views: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """The rows (sorted) of a seeded sample of the views of `rows` (views: one name per store row) holding
    about `count` rows: whole views, so that each keeps all its variants."""
    names = np.random.default_rng(seed).permutation(np.unique(views[rows]))
    per_view = len(rows) / len(names)
    kept = names[: max(1, round(count / per_view))]
    return np.sort(rows[np.isin(views[rows], kept)])


def breakdown(pred: np.ndarray, true: np.ndarray, views: np.ndarray, variants: np.ndarray) -> dict:
    """Overall, within-view and within-variant Spearman of rows with these view and variant names."""
    return {"rows": int(len(true)), "spearman": spearman(pred, true),
            "within_view": mean_spearman_within(pred, true, views),
            "within_variant": mean_spearman_within(pred, true, variants),
            "by_variant": {v: spearman(pred[variants == v], true[variants == v]) for v in np.unique(variants)}}


def run_model(run: Path, final: bool):
    """The run's best-validation model, or with `final` the model of its newest checkpoint."""
    from lrm.fitting import latest_checkpoint, load_checkpoint
    from lrm.models import LatentRewardModel

    model = LatentRewardModel.from_pretrained(run / "model")
    if final:
        found = latest_checkpoint(run / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{run / 'checkpoints'}: no checkpoint; drop --final to score RUN/model")
        model.load_state_dict(load_checkpoint(*found)[0])
    return model.eval()


def run_breakdown(run: Path, rows: int, final: bool) -> dict:
    from lrm.datasets.store import LatentStore
    from lrm.fitting import FitConfig, predict, split_rows

    config = json.loads((run / "config.json").read_text())
    store = LatentStore.open(config["store"])
    labels = store.label(config["label"])
    train, val, _ = split_rows(store, labels, FitConfig(**config["fit"]))
    views, variants = view_and_variant([r["source"] for r in store.rows()])  # (n,) each, every store row
    train = sample_views(train, views, rows)
    model = run_model(run, final)
    out = {"run": str(run), "preset": config["fit"]["preset"], "label": config["label"],
           "model": "last checkpoint" if final else "best validation"}
    for split, picked in (("train", train), ("val", val)):
        pred = predict(model, store, picked, batch_size=128)
        out[split] = breakdown(pred, labels[picked], views[picked], variants[picked])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="fit run folders (benchmarks/.cache/runs/STORE/NAME)")
    parser.add_argument("--rows", type=int, default=1500,
                        help="about this many training rows scored: all variants of a seeded sample of views (default 1500)")
    parser.add_argument("--final", action="store_true", help="score the last checkpoint, not the best-validation model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT.name})")
    args = parser.parse_args(argv)
    import torch
    from tqdm import tqdm

    from lrm.io import atomic_write_json

    torch.set_num_threads(1)
    results = [run_breakdown(run, args.rows, args.final) for run in tqdm(args.runs, desc="runs", unit="run")]
    head = ["run", "model", "split", "rows", "Spearman", "within view", "within variant"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for split in ("train", "val"):
            s = r[split]
            cells = [Path(r["run"]).name, r["model"], split, str(s["rows"])]
            cells += ["–" if s[k] is None else f"{s[k]:.3f}" for k in ("spearman", "within_view", "within_variant")]
            lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    atomic_write_json(args.out, {"command": "python benchmarks/variant_breakdown.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "results": results, "table": table})


if __name__ == "__main__":
    main()
