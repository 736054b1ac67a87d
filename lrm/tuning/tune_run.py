"""A reward-tuning run folder (lrm.tuning.tune with run_dir): its settings, checkpoints and exact resume.

    RUN/config.json               the run's settings: {"tune": TuneConfig fields, **the caller's (reward, start run,
                                  store, prompts)}; a rerun must keep all of them except `steps` (which may grow)
    RUN/checkpoints/step-N/       at every evaluation (eval_every steps) and at the end, written atomically:
        <role>.safetensors ...    the Distiller's checkpoint (every role, optimisers, RNG streams, step)
        tune.json                 the evaluation records, step logs and hook counters so far
        config.json, model.safetensors   the student as a denoiser: load_denoiser(RUN/checkpoints/step-N) and
                                  open_generator_run read it (the over-optimisation study's "each saved checkpoint")
    Only the newest checkpoint keeps the trainer's state (resume needs no other); the older ones keep the student
    and tune.json (a checkpoint of the embedded student with VSD + CD roles holds ~80 MB, its student ~10 MB).

Rerunning the same command on the same folder loads the newest checkpoint and continues; the result equals an
uninterrupted run's, records included (tests/test_tune_run.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from torch import nn

from lrm.io import read_json
from lrm.tuning.checkpoint import checkpoint_fix, latest_checkpoint, read_trainer_state
from lrm.tuning.monitor import TuningRecord
from lrm.tuning.trainer import Distiller, StepLog

CONFIG = "config.json"
STATE = "tune.json"  # the tuning state a checkpoint adds to the Distiller's
GROWABLE = ("steps",)  # settings a rerun may change: more steps continue the run
EXECUTION = ("autocast",)  # how the steps run, which a rerun may change too (like the device)
# hook counters kept across a resume
COUNTERS = ("fidelities", "gradient_cosines", "true_mean", "real_rows", "samples", "rewards", "reward_history")


def _json(obj):
    return json.loads(json.dumps(obj, default=float))


def check_settings(run_dir: Path, settings: dict, defaults: dict, write: bool = True, world_size: int = 1) -> None:
    """Write RUN/config.json, or, when the folder already holds a run, refuse other settings with one line naming
    each that differs, fewer steps than its newest checkpoint holds, and another number of torchrun processes
    (`world_size`) than wrote it. settings["tune"]: the TuneConfig fields; defaults: TuneConfig()'s, which fill
    fields an older run did not record. write=False checks only (torchrun ranks other than 0)."""
    from lrm.config_diff import differences, read_run_config, refuse_other_run
    from lrm.io import atomic_write_json

    settings = _json(settings)
    path = run_dir / CONFIG
    if path.is_file():
        saved = read_run_config(path)
        refuse_other_run(run_dir, saved, "tune")
        done = checkpoint_steps(run_dir)
        steps = settings["tune"]["steps"]
        if done and done[-1] > steps:  # resuming would train nothing and hand back the longer-trained student
            raise ValueError(f"tune run {run_dir} has already trained {done[-1]} steps, more than --steps {steps}; "
                             f"pass --steps {done[-1]} or more to reuse or continue it, or another --out")
        newest = latest_checkpoint(run_dir)
        trainer = newest / "trainer.json" if newest is not None else None
        if trainer is not None and trainer.is_file():
            written_by = read_trainer_state(newest).get("world_size", 1)
            if written_by != world_size:  # each process's RNG streams are in the checkpoint
                raise ValueError(f"tune run {run_dir} was written by {written_by} processes, this run has "
                                 f"{world_size}; resume with the same torchrun --nproc_per_node, or pass another --out")

        def fixed(record: dict) -> dict:
            tune = {**_json(defaults), **record.get("tune", {})}
            return {**record, "tune": {k: v for k, v in tune.items() if k not in GROWABLE + EXECUTION}}

        # a setting lrm records since the run was made (e.g. start_weights) is not held against it
        diff = differences(fixed(saved), fixed({k: v for k, v in settings.items() if k in saved or k == "tune"}))
        if diff:
            raise ValueError(f"cannot resume tune run {run_dir}: it was started with other settings "
                             f"({'; '.join(diff)}). Fix: re-run with the same settings, or pass a new --out")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings)


def save(run_dir: Path, distiller: Distiller, records: list[TuningRecord], logs: list[StepLog], term, true_reward,
         student_extra: dict) -> Path | None:
    """Checkpoint the run at distiller.step: the Distiller's checkpoint plus tune.json and the student as a
    denoiser (when it is lrm's DiT, the only kind save_denoiser writes)."""
    from lrm.generators.io import save_denoiser
    from lrm.tuning.roles import STUDENT

    state = {"records": [asdict(r) for r in records], "logs": [asdict(log) for log in logs],
             "nonfinite_rewards": true_reward.nonfinite,
             "counters": {name: getattr(term, name) for name in COUNTERS if hasattr(term, name)}}
    student: nn.Module = distiller.roles.module(STUDENT)

    def extra(folder: Path) -> None:
        (folder / STATE).write_text(json.dumps(_json(state), indent=1))
        if hasattr(student, "dimensions"):
            save_denoiser(student, folder, extra={**student_extra, "step": distiller.step})

    folder = distiller.save(run_dir, extra)
    if folder is not None and (folder / "config.json").is_file():
        for older in (run_dir / "checkpoints").glob("step-*"):
            if older.is_dir() and older != folder:
                slim(older)
    return folder


def slim(folder: Path) -> None:
    """Keep only the student (as a denoiser) and tune.json of an older checkpoint."""
    keep = {"config.json", "model.safetensors", STATE}
    if not {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}:
        return  # no denoiser copy of the student: keep the checkpoint whole
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink()


def resume(run_dir: Path, distiller: Distiller, term, true_reward) -> tuple[list[TuningRecord], list[StepLog]] | None:
    """Load the run's newest checkpoint into the distiller's roles, the hook's counters and the true reward's
    non-finite count; returns (records, logs) so far, or None when the run has no checkpoint yet."""
    if not distiller.resume(run_dir):
        return None
    folder = latest_checkpoint(run_dir)
    path = folder / STATE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no {STATE}: it was not written by `lrm tune`; pass a new "
                                "--out")
    state = read_json(path, checkpoint_fix(folder))
    true_reward.nonfinite = state["nonfinite_rewards"]
    for name, value in state["counters"].items():
        setattr(term, name, value)
    records = [TuningRecord(**r) for r in state["records"]]
    logs = [StepLog(**log) for log in state["logs"]]
    return records, logs


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the run's saved checkpoints, ascending (each holds a loadable student)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def best_evaluation(records: list[TuningRecord], sign: float,
                    run_dir: Path) -> tuple[TuningRecord, Path | None] | None:
    """The evaluation with the best gold reward (sign: +1 higher is better, -1 lower) and the checkpoint folder of
    its student (None when none was kept at that step); None when no gold was finite. A run that over-optimises
    has its best before its end: its student is then that checkpoint, not RUN/model."""
    finite = [r for r in records if math.isfinite(r.gold)]
    if not finite:
        return None
    best = max(finite, key=lambda r: (sign * r.gold, -r.step))  # the earliest of equals
    folder = Path(run_dir) / "checkpoints" / f"step-{best.step:08d}"
    return best, (folder if best.step in checkpoint_steps(run_dir) else None)
