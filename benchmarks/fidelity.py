"""Fidelity of latent surrogates fitted on real data, for every weight-free reward (issue 4 benchmark).

For each codec (dct, taef2) and dataset (perturbed DreamBooth photos; 8-frame clips of real videos
with flicker / frozen / stutter / blur variants; see benchmarks/real_data.py) this encodes a latent
store once (lrm.datasets.encoding.encode; an existing store resumes), labels it with the applicable
rewards (add_labels: image rewards on the photos, video rewards on the clips), fits one surrogate
per reward and preset (lrm.fitting.fit_surrogate: MSE on the labels or, where that halves their
skewness, on log labels (label_transform "auto", the "labels" column), AdamW, warm-up + cosine,
group-aware train/validation split, no early stopping), and reports held-out Spearman and R²
against training steps and CPU time, next to the ridge baseline on pooled latent statistics fitted
on the same split and label scale (lrm.fidelity.fit_baselines).

Labels score the media themselves by default. `--label-pixels decoded` labels what the store's
latents decode to instead (columns "REWARD@decoded", lrm.datasets.labelling.add_labels): the reward a
generator's latents are judged by, a function of the latents however lossy the codec, so the fit
measures the surrogate alone rather than surrogate plus codec loss (benchmarks/codec_ceiling.py).

Goal (issue 4, after the paper's LRMs converging in 2,000-3,000 iterations): held-out Spearman
>= 0.95 for jpeg-incompressibility, sharpness, colorfulness and temporal-flickering, >= 0.9 for
brisque, niqe and dynamic-degree, within 3,000 steps. "Goal met" is judged at the last step, so
no number in the table is chosen on the validation split; the best-validation model the fit
returns is reported in the JSON only ("best"), with its full lrm.fidelity metrics and verdict.

Fits run in `--workers` processes of `--threads` torch threads each; CPU s is the process time
of the fit alone (encoding and labelling are timed per store in the JSON). With `--device cuda`
codecs encode and surrogates train on the GPU, and the table gives the fits' wall seconds.
Settings other than the defaults (`--lr`, `--batch-size`, split `--seed`, `--fit-seeds`,
`--train-groups`) are named in the model cell and in the run folder, so several such commands can
share one cache at once; settings fitted with more than one seed get a second table of mean / min /
max Spearman. `--train-groups 6 12` fits on 6 and on 12 of the training groups (subjects or source
videos; nested, against the same validation rows, chosen with the split seed or, once per seed,
with `--train-groups-seeds`), and a third table gives Spearman against the number of training
groups over fit seeds and group choices: whether more distinct content would help.

    python benchmarks/fidelity.py --quick                     # smoke run: small data, 300 steps
    python benchmarks/fidelity.py                             # everything, full data, 3,000 steps
    python benchmarks/fidelity.py --codecs dct --rewards sharpness colorfulness --out /tmp/f.json
    python benchmarks/fidelity.py --codecs dct --rewards brisque --fit-seeds 0 1 2   # spread of one fit
    python benchmarks/fidelity.py --codecs dct --rewards niqe --label-pixels decoded  # the decoded images' NIQE
    python benchmarks/fidelity.py --codecs dct --rewards niqe --train-groups 6 12   # data-scaling curve
    python benchmarks/fidelity.py --table benchmarks/results/fidelity*.json   # one table of earlier runs

taef2 needs its weights: $LRM_WEIGHTS (default here: ../shared/data/weights/taesd when present).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
from lrm.datasets.label_names import LABEL_PIXELS, label_column  # noqa: E402
from lrm.fitting import AUGMENTS  # noqa: E402
from lrm.labels import LABEL_TRANSFORM_CHOICES  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fidelity.json"
DEFAULT_LR = 1e-3  # peak AdamW learning rate of every fit unless --lr says otherwise
DEFAULT_BATCH = 32  # rows per optimizer step unless --batch-size says otherwise

# reward -> (dataset it is fitted on, held-out Spearman goal of issue 4)
GOALS: dict[str, tuple[str, float]] = {
    "jpeg-incompressibility": ("images", 0.95),
    "sharpness": ("images", 0.95),
    "colorfulness": ("images", 0.95),
    "brisque": ("images", 0.9),
    "niqe": ("images", 0.9),
    "temporal-flickering": ("videos", 0.95),
    "dynamic-degree": ("videos", 0.9),
}


DATASETS = ("images", "videos")  # frames and size of each come from the scale's recipe (real_data.SCALES)


@dataclass(frozen=True)
class FitJob:
    store: str  # latent store folder
    reward: str  # reward name
    label: str  # label column: the reward name, or "REWARD@decoded" for decoded labels
    preset: str  # surrogate preset
    label_transform: str  # FitConfig.label_transform: "auto", "none" or "log"
    augment: str  # FitConfig.augment: "none" or "hflip"
    codec: str  # codec name, for the result row
    dataset: str  # "images" or "videos"
    run_dir: str  # fit output folder (emptied first: every fit is timed from scratch)
    steps: int  # optimizer steps
    eval_every: int  # steps between validations
    batch_size: int  # rows per step
    lr: float  # peak learning rate
    seed: int  # group-split seed
    fit_seed: int  # model-init / batch-order seed
    train_groups: int | None  # FitConfig.train_groups: fit on this many training groups (None: all)
    train_groups_seed: int | None  # FitConfig.train_groups_seed: which groups (None: the split seed)
    device: str  # where the surrogate trains ("cpu", "cuda")


# ---------------------------------------------------------------- worker side


def init_worker(threads: int) -> None:
    """Pin the thread count of every worker (the machine is shared)."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def prepare_store(codec: str, dataset: str, scale: str, data: str, cache: str, rewards: tuple[str, ...],
                  device: str = "cpu", pixels: str = "source") -> dict:
    """Encode the store of media folder `data` on `device` (resumes) and add the missing labels, of the
    media or of the decoded latents (`pixels`), on the CPU (the weight-free rewards are CPU code); times
    each part."""
    from lrm.datasets.encoding import EncodeConfig, encode
    from lrm.datasets.labelling import add_labels
    from lrm.datasets.store import LatentStore

    path = Path(cache) / "stores" / f"{dataset}-{scale}-{codec}"
    recipe = real_data.dataset_config(dataset, scale)
    frames = 1 if dataset == "images" else recipe.frames
    cpu, wall = time.process_time(), time.perf_counter()
    encode(EncodeConfig(data=data, codec=codec, frames=frames, size=recipe.size, shard_size=256,
                        batch_size=16, device=device), path, progress=False)
    encode_s = (time.process_time() - cpu, time.perf_counter() - wall)
    store = LatentStore.open(path)
    columns = {r: label_column(r, pixels) for r in rewards}
    missing = [r for r, column in columns.items()
               if column not in store.labels or not store.manifest["labels"][column]["complete"]]
    cpu, wall = time.process_time(), time.perf_counter()
    if missing:
        store = add_labels(path, missing, progress=False, pixels=pixels)
    label_s = (time.process_time() - cpu, time.perf_counter() - wall)
    groups = store.groups
    return {"codec": codec, "dataset": dataset, "scale": scale, "store": str(path), "rows": len(store),
            "groups": int(len(np.unique(groups))), "latent_shape": list(store.latent_shape),
            "encode_cpu_s": round(encode_s[0], 1), "encode_wall_s": round(encode_s[1], 1),
            "label_cpu_s": round(label_s[0], 1), "label_wall_s": round(label_s[1], 1), "labelled_now": missing,
            "label_pixels": pixels, "labels": {columns[r]: store.label_stats(columns[r]) for r in rewards},
            "skipped": store.manifest["skipped"]["count"]}


def pooled_features(store, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Ridge-baseline features (n, F) of store rows, read chunk by chunk."""
    from lrm.fidelity import features_of

    return features_of(store.latents(rows[i:i + chunk]) for i in range(0, len(rows), chunk))


def run_fit(job: FitJob) -> dict:
    """One timed fit, its learning curve at every validation, the ridge baseline on the same split."""
    from lrm.datasets.store import LatentStore
    from lrm.fidelity import assess, fidelity_metrics, fit_baselines
    from lrm.fitting import FitConfig, fit_surrogate, predict

    store = LatentStore.open(job.store)
    config = FitConfig(preset=job.preset, label_transform=job.label_transform, augment=job.augment,
                       steps=job.steps, batch_size=job.batch_size, lr=job.lr,
                       eval_every=job.eval_every, patience=0, checkpoint_every=job.steps, keep_checkpoints=1,
                       log_every=50, seed=job.fit_seed, split_seed=job.seed, train_groups=job.train_groups,
                       train_groups_seed=job.train_groups_seed, device=job.device)
    shutil.rmtree(job.run_dir, ignore_errors=True)
    cpu, wall = time.process_time(), time.perf_counter()
    result = fit_surrogate(store, job.label, config, job.run_dir)
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall

    labels = store.label(job.label)
    train, val = result.train_indices, result.val_indices
    y_train, y_val = labels[train], labels[val]
    variance = float(np.var(y_val))
    curve = [{"step": h["step"], "spearman": h["spearman"], "pearson": h["pearson"],
              "r2": 1 - h["mse"] / variance if variance > 0 else None, "elapsed_s": h["elapsed_s"]}
             for h in result.history if h["split"] == "val"]
    total_elapsed = curve[-1]["elapsed_s"] or 1e-9
    for point in curve:  # CPU time at each validation, assuming CPU accrues in proportion to wall time
        point["cpu_s_est"] = round(cpu_s * point["elapsed_s"] / total_elapsed, 1)

    groups = store.groups
    best = fidelity_metrics(predict(result.model, store, val), y_val, groups[val])
    baselines = fit_baselines(pooled_features(store, train), y_train, pooled_features(store, val), y_val,
                              result.label_transform)  # ridge fits the same (log) labels as the surrogate
    report = assess(best, baselines)
    goal = GOALS[job.reward][1]
    final = curve[-1]
    reached = next((p for p in curve if p["spearman"] is not None and p["spearman"] >= goal), None)
    keep = ("n", "spearman", "pearson", "kendall", "r2", "rmse", "pairwise_accuracy", "calibration_error")
    return {
        "reward": job.reward, "label": job.label, "label_pixels": store.label_pixels(job.label),
        "codec": job.codec, "dataset": job.dataset, "preset": job.preset,
        "label_transform": result.label_transform,  # what "auto" chose
        "augment": job.augment, "split_seed": job.seed, "fit_seed": job.fit_seed, "lr": job.lr,
        "batch_size": job.batch_size, "train_groups": job.train_groups, "train_groups_seed": job.train_groups_seed,
        "train_group_count": int(len(np.unique(groups[train]))),
        "store": job.store, "n_train": int(len(train)), "n_val": int(len(val)), "nan_labels": result.nan_labels,
        "val_groups": sorted(set(groups[val].tolist())), "steps": result.steps,
        "params": sum(p.numel() for p in result.model.parameters()),
        "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1),
        "final": {"step": final["step"], "spearman": final["spearman"], "r2": final["r2"]},
        "curve": curve,
        "goal": goal, "goal_met": final["spearman"] is not None and final["spearman"] >= goal,
        "goal_first_reached": None if reached is None else
        {"step": reached["step"], "cpu_s_est": reached["cpu_s_est"], "wall_s": reached["elapsed_s"]},
        "best": {"step": result.best_step, **{k: best[k] for k in keep}, "verdict": report.verdict,
                 "flags": report.flags, "per_group": best["per_group"]},
        "ridge": {k: baselines["ridge"][k] for k in keep},
        "constant_r2": baselines["constant"]["r2"],
        "beats_ridge": bool(final["spearman"] is not None and final["spearman"] > baselines["ridge"]["spearman"]
                            and final["r2"] > baselines["ridge"]["r2"]),
    }


# ---------------------------------------------------------------- report


def spearman_at(row: dict, step: int) -> float | None:
    point = next((p for p in row["curve"] if p["step"] == step), None)
    return None if point is None else point["spearman"]


def milestones(steps: int) -> list[int]:
    return [s for s in (500, 1000) if s < steps] + [steps]


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], steps: int, device: str = "cpu", ceiling: dict | None = None) -> str:
    """The results as a markdown table; fit time is CPU seconds on the CPU, wall seconds on a GPU.
    `ceiling` ((store folder name, reward) -> Spearman of the decoded media, benchmarks/codec_ceiling.py)
    adds a "decoded Spearman" column."""
    marks = milestones(steps)
    time_key, time_head = ("cpu_s", "CPU s") if device == "cpu" else ("wall_s", f"{device} wall s")
    head = (["reward", "codec", "data", "model", "labels", "n train/val"] + [f"Spearman@{m}" for m in marks]
            + [f"R²@{steps}", "ridge Spearman", "ridge R²"] + (["decoded Spearman"] if ceiling else [])
            + [time_head, "goal", "met"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {name: i for i, name in enumerate(GOALS)}
    def sort_key(r: dict) -> tuple:  # a data-scaling series in the order of its group counts
        groups = r.get("train_groups")
        return (order[r["reward"]], r["codec"], data_scale(r), model_name(r, with_train_groups=False),
                math.inf if groups is None else groups, model_name(r))

    for r in sorted(rows, key=sort_key):
        first = r["goal_first_reached"]
        met = ("yes" if r["goal_met"] else "no") + (f" (step {first['step']})" if first else "")
        labels = r.get("label_transform", "none")
        cells = ([r["reward"], r["codec"], data_scale(r), model_name(r), labels, f"{r['n_train']}/{r['n_val']}"]
                 + [fmt(spearman_at(r, m)) for m in marks]
                 + [fmt(r["final"]["r2"]), fmt(r["ridge"]["spearman"]), fmt(r["ridge"]["r2"])]
                 + ([fmt(ceiling_of(r, ceiling))] if ceiling else [])
                 + [f"{r[time_key]:.0f}", f"≥ {r['goal']}", met])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceiling_of(row: dict, ceiling: dict) -> float | None:
    """Spearman(reward of the decoded media, reward of the media) of the row's store, a reference for labels
    of the media; labels of the decoded latents are a function of the latents (reference 1)."""
    if row.get("label_pixels", "source") == "decoded":
        return 1.0
    return ceiling.get((Path(row["store"]).name, row["reward"]))


def spearman_spread(fits: list[dict]) -> list[str]:
    """Mean, min and max of the fits' final held-out Spearman, formatted for a table ("–" when none has one)."""
    spearman = [r["final"]["spearman"] for r in fits if r["final"]["spearman"] is not None] or [float("nan")]
    return [fmt(float(np.mean(spearman))), fmt(min(spearman)), fmt(max(spearman))]


def seed_summary(rows: list[dict]) -> str | None:
    """Final held-out Spearman over the fit seeds of each setting (model, learning rate, batch, split) fitted
    with more than one seed, as a markdown table; None when there is no such setting. Fits on fewer training
    groups are left to scaling_summary."""
    settings: dict[tuple, list[dict]] = {}
    for r in (r for r in rows if r.get("train_groups") is None):
        settings.setdefault((r["reward"], r["codec"], data_scale(r), model_name(r, with_fit_seed=False)), []).append(r)
    settings = {key: fits for key, fits in settings.items() if len(fits) > 1}
    if not settings:
        return None
    head = ["reward", "codec", "data", "model", "fits", "Spearman mean", "min", "max", "goal", "fits meeting it"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {name: i for i, name in enumerate(GOALS)}
    for key in sorted(settings, key=lambda k: (order[k[0]], k[1], k[2], settings[k][0].get("split_seed", 0), k[3])):
        fits = settings[key]
        cells = [*key, str(len(fits)), *spearman_spread(fits), f"≥ {fits[0]['goal']}", f"{sum(r['goal_met'] for r in fits)} of {len(fits)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_summary(rows: list[dict], store_groups: dict[str, int]) -> str | None:
    """Final held-out Spearman against the number of training groups, as a markdown table, for every setting
    with a `--train-groups` fit (None when there is none); its fits on all groups join the series at their
    count (rows from before "train_group_count" existed: the store's groups, `store_groups` (store folder
    -> groups), less the validation ones). Mean / min / max over fit seeds and group choices."""
    def groups_of(row: dict) -> int | None:
        if "train_group_count" in row:
            return row["train_group_count"]
        if row.get("train_groups") is not None:
            return row["train_groups"]
        total = store_groups.get(row["store"])
        return None if total is None else total - len(row["val_groups"])

    settings: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        key = (r["reward"], r["codec"], data_scale(r), model_name(r, with_fit_seed=False, with_train_groups=False),
               r.get("label_transform", "none"))  # "auto" decides on each subset's labels
        settings.setdefault(key, {}).setdefault(groups_of(r), []).append(r)
    settings = {key: by_count for key, by_count in settings.items()
                if any(r.get("train_groups") is not None for fits in by_count.values() for r in fits)}
    if not settings:
        return None
    head = ["reward", "codec", "data", "model", "labels", "train groups", "n train", "fits", "Spearman mean", "min",
            "max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {name: i for i, name in enumerate(GOALS)}
    for key in sorted(settings, key=lambda k: (order[k[0]], k[1], k[2], k[3])):
        for count in sorted(settings[key], key=lambda c: math.inf if c is None else c):
            fits = settings[key][count]
            cells = [*key, "?" if count is None else str(count), f"{np.mean([r['n_train'] for r in fits]):.0f}",
                     str(len(fits)), *spearman_spread(fits)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_name(row: dict, with_fit_seed: bool = True, with_train_groups: bool = True) -> str:
    """The preset, with " + hflip" when the fit mirrored its training latents, "decoded labels" when the labels
    score the decoded latents, and the learning rate, batch size, split seed, training groups and fit seed
    where they differ from the defaults (fit seed: from the split seed)."""
    name = row["preset"] + (" + hflip" if row.get("augment", "none") == "hflip" else "")
    notes = ["decoded labels"] if row.get("label_pixels", "source") == "decoded" else []
    if row.get("lr", DEFAULT_LR) != DEFAULT_LR:
        notes.append(f"lr {row['lr']:g}")
    if row.get("batch_size", DEFAULT_BATCH) != DEFAULT_BATCH:
        notes.append(f"batch {row['batch_size']}")
    if row.get("split_seed", 0) != 0:
        notes.append(f"split {row['split_seed']}")
    if with_train_groups and row.get("train_groups") is not None:
        notes.append(f"{row['train_groups']} train groups")
    if with_fit_seed and row.get("train_groups_seed") is not None:
        notes.append(f"groups seed {row['train_groups_seed']}")
    if with_fit_seed and row.get("fit_seed", row.get("split_seed")) != row.get("split_seed"):
        notes.append(f"fit seed {row['fit_seed']}")
    return name + (f" ({', '.join(notes)})" if notes else "")


def data_scale(row: dict) -> str:
    """The real_data scale of a result row's store, named "<dataset>-<scale>-<codec>" by prepare_store."""
    name = Path(row["store"]).name
    return name[len(row["dataset"]) + 1: -len(row["codec"]) - 1]


def accelerator_name(device: str) -> str | None:
    """The GPU's name when `device` is a CUDA device, for the setup record."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def write_json(path: Path, payload: dict) -> None:
    from lrm.io import atomic_write_json

    atomic_write_json(path, payload)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rewards", nargs="+", choices=list(GOALS), default=list(GOALS), help="rewards to fit")
    parser.add_argument("--codecs", nargs="+", default=["dct", "taef2"], help="lrm.codecs names (default: dct taef2)")
    parser.add_argument("--scale", action="append", default=[], metavar="CODEC=SCALE",
                        help=f"data scale for a codec, one of {sorted(real_data.SCALES)} (default: full); e.g. "
                             "--scale taef2=small, since taef2 encodes ~0.65 CPU s per 256-px image")
    parser.add_argument("--image-presets", nargs="+", default=["image-cnn"], help="presets for image rewards")
    parser.add_argument("--video-presets", nargs="+", default=["video-3d", "video-frame-avg"],
                        help="presets for video rewards (the frame-averaged 2D CNN cannot see motion)")
    parser.add_argument("--video-presets-for", action="append", default=[], metavar="CODEC=PRESET[,PRESET]",
                        help="override --video-presets for one codec, e.g. taef2=video-3d")
    parser.add_argument("--label-transform", action="append", default=[], metavar="REWARD=none|log|auto",
                        help="labels a reward is fitted on (default auto: log labels when that halves their skewness)")
    parser.add_argument("--label-pixels", choices=LABEL_PIXELS, default="source",
                        help="what the labels score: source (the media, default) or decoded (what the latents "
                             "decode to; columns REWARD@decoded)")
    parser.add_argument("--augment", choices=AUGMENTS, default="none",
                        help="training augmentation of every fit: none (default) or hflip (exact latent mirror, "
                             "dct only; every reward here is mirror-invariant up to its own noise)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per fit (default 3000)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validations (default 100)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"rows per step (default {DEFAULT_BATCH}; the paper's LRM steps used ~8-16 samples)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"peak AdamW learning rate (default {DEFAULT_LR:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the group split (and of the fits by default)")
    parser.add_argument("--fit-seeds", nargs="+", type=int, metavar="SEED",
                        help="fit every surrogate once per seed (model init and batch order; same split), "
                             "to see the spread of one fit (default: --seed)")
    parser.add_argument("--train-groups", nargs="+", type=int, metavar="N",
                        help="fit on only N of the training groups (nested subsets, same validation rows), once "
                             "per N: a data-scaling curve (default: all groups)")
    parser.add_argument("--train-groups-seeds", nargs="+", type=int, metavar="SEED",
                        help="with --train-groups: fit once per seed of which groups are kept, to see the spread "
                             "over the choice of subjects (default: the split seed)")
    parser.add_argument("--workers", type=int, default=2, help="fits run in parallel (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--device", default="cpu",
                        help="where codecs encode and surrogates train: cpu (default) or cuda; labels are always CPU")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: quick data scale for every codec, 300 steps, validation every 50")
    parser.add_argument("--cache", type=Path, default=real_data.DEFAULT_CACHE,
                        help="data, stores and runs (default: benchmarks/.cache)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: benchmarks/results/fidelity.json)")
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSON",
                        help="fit nothing: print one table of the results in these JSON files (earlier runs)")
    parser.add_argument("--ceiling", nargs="+", type=Path, default=[], metavar="JSON",
                        help="with --table: add the decoded-media Spearman from benchmarks/codec_ceiling.py results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every = 300, 50
        args.scale = [f"{c}=quick" for c in args.codecs]
    args.scales = dict(s.split("=", 1) for s in args.scale)
    bad = {c: s for c, s in args.scales.items() if s not in real_data.SCALES or c not in args.codecs}
    if bad:
        parser.error(f"--scale {bad}: give CODEC=SCALE with CODEC in --codecs and SCALE in {sorted(real_data.SCALES)}")
    args.label_transforms = dict(s.split("=", 1) for s in args.label_transform)
    bad = {r: t for r, t in args.label_transforms.items() if r not in GOALS or t not in LABEL_TRANSFORM_CHOICES}
    if bad:
        parser.error(f"--label-transform {bad}: give REWARD=none|log|auto with REWARD in {list(GOALS)}")
    args.fit_seeds = args.fit_seeds or [args.seed]
    if args.train_groups and min(args.train_groups) < 1:
        parser.error(f"--train-groups {args.train_groups}: every N must be >= 1")
    args.train_groups = sorted(set(args.train_groups)) if args.train_groups else [None]
    if args.train_groups_seeds and args.train_groups == [None]:
        parser.error("--train-groups-seeds needs --train-groups")
    args.train_groups_seeds = sorted(set(args.train_groups_seeds)) if args.train_groups_seeds else [None]
    args.video_presets_by_codec = {c: p.split(",") for c, p in (s.split("=", 1) for s in args.video_presets_for)}
    return args


def print_table(paths: list[Path], ceiling_paths: list[Path]) -> None:
    """One markdown table of the rows of several result files (all fitted for the same number of steps),
    with the decoded-media Spearman of benchmarks/codec_ceiling.py result files when given, then the
    summaries over fit seeds and over training groups where there are such fits."""
    payloads = [json.loads(Path(p).read_text()) for p in paths]
    steps = {d["setup"]["steps"] for d in payloads}
    devices = {d["setup"].get("device", "cpu") for d in payloads}
    if len(steps) != 1 or len(devices) != 1:
        raise SystemExit(f"--table: the files differ in steps {sorted(steps)} or device {sorted(devices)}")
    for path, d in zip(paths, payloads):
        print(f"{path}: {d['setup']['command']}")
    print()
    ceiling = {(r["store"], r["reward"]): r["spearman"]
               for path in ceiling_paths for r in json.loads(Path(path).read_text())["results"]}
    rows = [r for d in payloads for r in d["results"]]
    store_groups = {s["store"]: s["groups"] for d in payloads for s in d["stores"]}
    print(all_tables(rows, steps.pop(), devices.pop(), store_groups, ceiling))


def all_tables(rows: list[dict], steps: int, device: str, store_groups: dict[str, int],
               ceiling: dict | None = None) -> str:
    """The main table, then the summaries over fit seeds and over training groups where there are such fits."""
    table = markdown_table(rows, steps, device, ceiling)
    summary = seed_summary(rows)
    if summary:
        table += "\n\nOver fit seeds:\n\n" + summary
    scaling = scaling_summary(rows, store_groups)
    if scaling:
        table += "\n\nOver training groups:\n\n" + scaling
    return table


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table:
        return print_table(args.table, args.ceiling)
    if "taef2" in args.codecs:
        real_data.use_shared_taesd_weights()
    started_cpu, started = time.process_time(), time.perf_counter()
    datasets = {d: [r for r in args.rewards if GOALS[r][0] == d] for d in DATASETS}
    datasets = {d: rs for d, rs in datasets.items() if rs}
    payload = {"setup": {"command": "python benchmarks/fidelity.py " + " ".join(sys.argv[1:] if argv is None else argv),
                         "steps": args.steps, "eval_every": args.eval_every, "batch_size": args.batch_size,
                         "lr": args.lr, "augment": args.augment, "label_pixels": args.label_pixels, "seed": args.seed,
                         "fit_seeds": args.fit_seeds, "train_groups": args.train_groups,
                         "train_groups_seeds": args.train_groups_seeds,
                         "workers": args.workers, "threads": args.threads, "device": args.device,
                         "accelerator": accelerator_name(args.device),
                         "scales": {c: args.scales.get(c, "full") for c in args.codecs},
                         "datasets": {f"{d}-{s}": asdict(real_data.dataset_config(d, s)) for d in datasets
                                      for s in {args.scales.get(c, "full") for c in args.codecs}},
                         "goals": {r: GOALS[r][1] for r in args.rewards},
                         "label_transforms": {r: args.label_transforms.get(r, "auto") for r in args.rewards},
                         "machine": platform.machine(),
                         "cpus": os.cpu_count(), "python": platform.python_version()},
               "stores": [], "results": [], "failures": []}

    def presets_for(codec: str, dataset: str) -> list[str]:
        if dataset == "images":
            return args.image_presets
        return args.video_presets_by_codec.get(codec, args.video_presets)

    pending = {}
    folders = {}  # (dataset, scale) -> media folder, materialised here so that no two workers write one
    for dataset in datasets:
        for scale in sorted({args.scales.get(c, "full") for c in args.codecs}):
            folders[dataset, scale] = str(real_data.materialise(args.cache, dataset, scale))
    pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=init_worker,
                               initargs=(args.threads,))
    # Video stores first: their fits are the longest, so they should start early.
    for dataset in sorted(datasets, key=lambda d: d != "videos"):
        for codec in args.codecs:
            scale = args.scales.get(codec, "full")
            future = pool.submit(prepare_store, codec, dataset, scale, folders[dataset, scale], str(args.cache),
                                 tuple(datasets[dataset]), args.device, args.label_pixels)
            pending[future] = ("store", codec, dataset)
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            kind, codec, dataset = pending.pop(future)[:3]
            try:
                value = future.result()
            except Exception as exc:  # one failing store or fit must not take the others down
                payload["failures"].append({"kind": kind, "codec": codec, "dataset": dataset,
                                            "error": f"{type(exc).__name__}: {exc}"})
                print(f"FAILED {kind} {codec} {dataset}: {type(exc).__name__}: {exc}", flush=True)
                continue
            if kind == "store":
                payload["stores"].append(value)
                print(f"store {value['store']}: {value['rows']} rows, {value['groups']} groups, encode "
                      f"{value['encode_cpu_s']} CPU s, label {value['label_cpu_s']} CPU s", flush=True)
                for reward in datasets[dataset]:
                    for preset, fit_seed, train_groups, groups_seed in itertools.product(
                            presets_for(codec, dataset), args.fit_seeds, args.train_groups, args.train_groups_seeds):
                        transform = args.label_transforms.get(reward, "auto")
                        name = f"{reward}--{preset}--{transform}"
                        name += "" if args.augment == "none" else f"--{args.augment}"
                        name += "" if args.label_pixels == "source" else f"--{args.label_pixels}"
                        name += "" if args.seed == 0 else f"--split-{args.seed}"
                        name += "" if fit_seed == args.seed else f"--fit-seed-{fit_seed}"
                        name += "" if args.lr == DEFAULT_LR else f"--lr-{args.lr:g}"
                        name += "" if args.batch_size == DEFAULT_BATCH else f"--batch-{args.batch_size}"
                        name += "" if train_groups is None else f"--train-groups-{train_groups}"
                        name += "" if groups_seed is None else f"--groups-seed-{groups_seed}"
                        run_dir = args.cache / "runs" / Path(value["store"]).name / name
                        job = FitJob(value["store"], reward, label_column(reward, args.label_pixels), preset,
                                     transform, args.augment, codec, dataset,
                                     str(run_dir), args.steps, args.eval_every, args.batch_size, args.lr, args.seed,
                                     fit_seed, train_groups, groups_seed, args.device)
                        pending[pool.submit(run_fit, job)] = ("fit", codec, dataset)
            else:
                payload["results"].append(value)
                print(f"fit {value['reward']} {value['codec']} {value['preset']}: Spearman "
                      f"{fmt(value['final']['spearman'])} R² {fmt(value['final']['r2'])} (ridge "
                      f"{fmt(value['ridge']['spearman'])}), {value['cpu_s']:.0f} CPU s", flush=True)
            payload["setup"]["wall_s"] = round(time.perf_counter() - started, 1)
            write_json(args.out, payload)
    pool.shutdown()
    payload["setup"]["wall_s"] = round(time.perf_counter() - started, 1)
    payload["setup"]["main_cpu_s"] = round(time.process_time() - started_cpu, 1)
    payload["table"] = all_tables(payload["results"], args.steps, args.device,
                                  {s["store"]: s["groups"] for s in payload["stores"]})
    write_json(args.out, payload)
    print()
    print(payload["table"])
    print(f"\nwall time {payload['setup']['wall_s'] / 60:.1f} min; results in {args.out}")
    if payload["failures"]:
        print(f"{len(payload['failures'])} failure(s): see 'failures' in the JSON")


if __name__ == "__main__":
    main()
