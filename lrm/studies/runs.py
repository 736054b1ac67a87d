"""Read a tuning run folder (`lrm tune` / lrm.tuning.tune: OUT/records.json, OUT/before, OUT/after) for a study,
refusing, with one line naming the fix, a folder without records or one tuned toward another reward."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrm.studies.overopt import Curves

RECORDS = "records.json"  # what `lrm tune` writes beside the tuned student


@dataclass(frozen=True)
class TuningRun:
    path: Path
    reward: str  # the reward the run was tuned toward (its records.json "reward")
    method: str  # lrm, ddpo or direct
    # the direction the run was tuned in (records.json "higher_is_better", the loaded reward's, its options
    # included); for records without it, the registry spec's, True for a user's metric (path.py:fn)
    higher_is_better: bool
    curves: Curves
    surrogate_fidelity: float | None  # the concurrent surrogate's running fidelity at the end (lrm_ft), if any
    facts: dict  # records.json as read


def read_run(path: str | Path, reward: str | None = None) -> TuningRun:
    """The tuning run at `path`; with `reward`, refuse a run tuned toward another one."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass a tuning run written by `lrm tune` (its --out)")
    records = path / RECORDS
    step = None if records.is_file() else unfinished_tune_step(path)
    if step is not None:
        raise FileNotFoundError(f"{path} is an unfinished `lrm tune` run (newest checkpoint: step {step}); finish it "
                                f"by re-running its `lrm tune` command, or end it there with the same command and "
                                f"--steps {step}, then study it")
    if not records.is_file():
        raise FileNotFoundError(f"{path} holds no {RECORDS}, so it is not a tuning run; pass the --out folder of "
                                "`lrm tune`")
    try:
        facts = json.loads(records.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{records} is not valid JSON ({error.msg}); write it again with `lrm tune`") from None
    tuned = facts.get("reward") if isinstance(facts, dict) else None
    if not isinstance(tuned, str):
        raise ValueError(f"{records} names no reward; write it with `lrm tune`")
    if reward is not None and reward != tuned:
        raise ValueError(f"{path} was tuned toward {tuned!r}, not {reward!r}; study it as {tuned!r} or pass a run "
                         f"tuned toward {reward!r}")
    curves = Curves.from_records(facts)
    fidelity = facts.get("surrogate_fidelity")
    direction = facts.get("higher_is_better")
    direction = direction if isinstance(direction, bool) else higher_is_better(tuned)
    return TuningRun(path, tuned, str(facts.get("method", "")), direction, curves,
                     float(fidelity) if isinstance(fidelity, (int, float)) else None, facts)


def unfinished_tune_step(path: Path) -> int | None:
    """The newest checkpoint step of a `lrm tune` run stopped before it wrote records.json (its config.json holds the
    "tune" settings); None for any other folder."""
    try:
        settings = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    steps = [int(p.name.split("-")[1]) for p in (path / "checkpoints").glob("step-*") if p.is_dir()]
    return max(steps) if isinstance(settings, dict) and "tune" in settings and steps else None


def record_column(run: TuningRun, key: str) -> np.ndarray:
    """(E,) one key of the run's records in step order (the monitor's eps_distance, latent_l2, frechet, ...);
    NaN where a record lacks it."""
    records = sorted(run.facts["records"], key=lambda r: r["step"])
    values = [r.get(key) for r in records]
    return np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in values])


def sample_grids(run: TuningRun, peak_step: int) -> dict[str, Path]:
    """The grids of the run's fixed-seed samples at the start, the gold peak and the end ("start", "peak", "end"),
    those that exist: OUT/evals/step-N/grid.png (every evaluation, `lrm tune`), else OUT/before and OUT/after."""
    last = int(run.curves.steps[-1])
    found = {"start": [run.path / "evals" / "step-0", run.path / "before"],
             "peak": [run.path / "evals" / f"step-{peak_step}"],
             "end": [run.path / "evals" / f"step-{last}", run.path / "after"]}
    grids = {}
    for when, folders in found.items():
        path = next((f / "grid.png" for f in folders if (f / "grid.png").is_file()), None)
        if path is not None:
            grids[when] = path
    return grids


def higher_is_better(reward: str) -> bool:
    """The registry spec's direction (reading the registry imports no torch); a user's metric counts as higher
    is better, as lrm.rewards.custom's default. For a run, read_run prefers the direction its records.json holds
    (a metric loaded with -o higher_is_better=false); this is the fallback for records without it."""
    from lrm.rewards.registry import REWARDS

    return REWARDS[reward].spec.higher_is_better if reward in REWARDS else True
