"""The embedded-default student: the embedded image teacher distilled (VSD + CD on the teacher's own store) into a
few-step generator, cached so `lrm tune REWARD` with no generator starts from it.

    run = embedded_student()            # 4-step student; distils it (~4 min on a 2-core CPU) if not cached
    run = embedded_student(student_steps=2)

The run folder is `$LRM_CACHE/students/<name>` (default ~/.cache/lrm/students), with
<name> = "image-<student_steps>step-<8 hex of the teacher run's folder name and the distillation settings>":
the teacher's folder name carries the hash of its own settings (lrm.generators.embedded), so a retrained teacher
with other settings gives a new student instead of a stale one. A distillation that was interrupted resumes from
its newest checkpoint (lrm.tuning.run.distill).

STUDENT_JOB sizes the distillation to a few minutes: one VSD + CD step of the dit-s1 teacher at batch 8 took
2.3 s on this project's 2-core CPU (one torch thread, another training job on the other core; probe: steps 2 -> 8
of `distill` timed in /tmp, 9.3 s for 4 steps after set-up), so 100 steps take ~4 minutes. The one full run
(`lrm tune jpeg-compressibility --concurrent --steps 20`, load average ~7 on the 2 cores) distilled in 8 min 20 s
wall (5.3 s per step under that load), then tuned at 0.75 s per step; 195 s of CPU time for both.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from lrm.configs import DistillJob
from lrm.tuning.checkpoint import latest_checkpoint

# VSD + CD (DOLLAR), 100 steps of 8 (~4 min at 2.3 s/step); fixed-seed logs at 0, 50 and 100; checkpoints every 25
STUDENT_JOB = DistillJob(losses=("vsd", "cd"), steps=100, batch_size=8, eval_every=50, checkpoint_every=25)


def _training_settings(job: DistillJob) -> dict:
    from lrm.tuning.run import TRAINING_FIELDS

    settings = json.loads(json.dumps(asdict(job)))
    return {k: settings[k] for k in TRAINING_FIELDS if k != "teacher"} | {"steps": job.steps}


def embedded_student_dir(teacher_run: Path, student_steps: int = 4) -> Path:
    """$LRM_CACHE/students/image-<student_steps>step-<8 hex of the teacher run's name and the settings>."""
    from lrm.generators.embedded import _digest, cache_root

    job = replace(STUDENT_JOB, student_steps=student_steps)
    digest = _digest({"teacher_run": Path(teacher_run).name, "distill": _training_settings(job)})
    return cache_root() / "students" / f"image-{student_steps}step-{digest}"


def is_finished(run_dir: Path, steps: int) -> bool:
    """True when run_dir holds the exported student of a distillation that reached `steps`."""
    path = Path(run_dir) / "model" / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("extra", {}).get("step") == steps


def embedded_student(student_steps: int = 4, train_if_missing: bool = True, progress: bool = False,
                     device: str = "cpu") -> Path:
    """The run folder of the embedded-default student (a generator run: RUN/model), distilling the embedded
    teacher (trained first when missing) or resuming the distillation when it is not finished; with
    train_if_missing=False a missing student is a FileNotFoundError naming how to make it."""
    from lrm.generators.embedded import embedded_run_dir, embedded_teacher
    from lrm.tuning.run import STUDENT_STEPS, distill

    if student_steps not in STUDENT_STEPS:
        raise ValueError(f"--student-steps must be 1, 2 or 4 (DOLLAR's student grids), got {student_steps}")
    teacher = embedded_run_dir()
    run = embedded_student_dir(teacher, student_steps)
    if is_finished(run, STUDENT_JOB.steps):
        return run
    if not train_if_missing:
        raise FileNotFoundError(f"the embedded {student_steps}-step student is not distilled yet ({run}); run "
                                f"`lrm tune REWARD --concurrent` once to distil it (~4 minutes on a 2-core CPU)")
    teacher = embedded_teacher(progress=progress, device=device)
    job = replace(STUDENT_JOB, teacher=str(teacher), student_steps=student_steps, device=device, out=str(run))
    distill(job, run, progress=progress)
    latest = latest_checkpoint(run)
    for older in (run / "checkpoints").glob("step-*"):  # resumable while it runs; the newest suffices once done
        if older.is_dir() and older != latest:
            shutil.rmtree(older)
    return run
