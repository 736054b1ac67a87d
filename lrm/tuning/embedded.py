"""The embedded-default students: the embedded teachers distilled into few-step generators, cached so
`lrm tune REWARD` with no generator starts from the one that makes what REWARD scores.

    run = embedded_student()            # 4-step image student; distils it (~4 min on a 2-core CPU) if not cached
    run = embedded_student(student_steps=2)
    run = embedded_student(video=True)  # 4-step video student (8-frame clips), for video rewards

STUDENT_JOBS holds both distillations (one DistillJob per kind, the teachers filled in when they run):
- "image": the embedded image teacher with DOLLAR's VSD + CD on the teacher's own store;
- "video": the embedded video teacher with AVDM2's ADM (denoising GAN on the video teacher's features) + SDM-2D
  (frame-level VSD with the embedded image teacher as image teacher), the pair whose frames follow the caption in
  docs/distill.md (AVDM2 benchmark with the dct teachers, the embedded ones until 2026-12-05, 3 seeds: colour 0.977
  vs 0.557 for ADM alone, at a frame FD of 29.0 vs 24.1 and temporal flickering of 0.943 vs 0.954).

The run folder is `$LRM_CACHE/students/<name>` (default ~/.cache/lrm/students), with
<name> = "<kind>-<student_steps>step-<8 hex of the teacher runs' folder names and the distillation settings>":
each teacher's folder name carries the hash of its own settings (lrm.generators.embedded), so a retrained teacher
(or, for the video student, a retrained image teacher) with other settings gives a new student instead of a stale
one. A distillation that was interrupted resumes from its newest checkpoint (lrm.tuning.run.distill).

Cost on this project's 2-core CPU (measured with the dct teachers, 32 latent channels; pae's 16 change only the
DiT's patch embedding and output layer):
- image: one VSD + CD step of the dit-s1 teacher at batch 8 took 2.3 s (one torch thread, another job on the other
  core; probe: steps 2 -> 8 of `distill` timed in /tmp, 9.3 s for 4 steps after set-up), so 100 steps take ~4
  minutes. The one full run (`lrm tune jpeg-compressibility --concurrent --steps 20`, load average ~7 on the 2
  cores) distilled in 8 min 20 s wall (5.3 s per step under that load), then tuned at 0.75 s per step; 195 s of CPU time for both.
- video: one ADM + SDM-2D step of the dit-s1 video teacher (8 frames) at batch 8, the image teacher and its 2D fake
  score on every frame, took 4.7 s (4.6-4.7) in benchmarks/avdm2.py's three seeds (one torch thread), so 60
  steps take ~5 minutes. 60 steps are what docs/distill.md's AVDM2 benchmark measured the quality of (this is the
  same job as its seed-0 run).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from lrm.configs import DistillJob
from lrm.tuning.checkpoint import latest_checkpoint

STUDENT_JOBS: dict[str, DistillJob] = {
    # VSD + CD (DOLLAR), 100 steps of 8 (~4 min at 2.3 s/step); fixed-seed logs at 0, 50 and 100; checkpoints every 25
    "image": DistillJob(losses=("vsd", "cd"), steps=100, batch_size=8, eval_every=50, checkpoint_every=25),
    # ADM + SDM-2D (AVDM2) on 8-frame clips, the settings of docs/distill.md's AVDM2 comparison: 60 steps of 8
    # (~5 min at 4.7 s/step); fixed-seed logs at 0, 30 and 60; checkpoints every 15
    "video": DistillJob(video=True, losses=("adm", "sdm2d"), steps=60, batch_size=8, eval_every=30,
                        checkpoint_every=15),
}


def kind(video: bool) -> str:
    """The key of STUDENT_JOBS (and of lrm.generators.embedded.EMBEDDED) for a student of clips or of images."""
    return "video" if video else "image"


def _training_settings(job: DistillJob) -> dict:
    from lrm.tuning.run import TRAINING_FIELDS

    settings = json.loads(json.dumps(asdict(job)))
    return {k: settings[k] for k in TRAINING_FIELDS if k != "teacher"} | {"steps": job.steps}


def student_job(student_steps: int = 4, video: bool = False) -> DistillJob:
    """STUDENT_JOBS' job of that kind at `student_steps`, its teachers not filled in yet."""
    return replace(STUDENT_JOBS[kind(video)], student_steps=student_steps)


def embedded_student_dir(student_steps: int = 4, video: bool = False) -> Path:
    """$LRM_CACHE/students/<image|video>-<student_steps>step-<8 hex of the teacher runs' names and the settings>."""
    from lrm.cache import cache_root, settings_digest
    from lrm.generators.embedded import embedded_run_dir

    job = student_job(student_steps, video)
    if "sdm2d" in job.losses:  # the image teacher by its run name (a path would change with the cache's place)
        job = replace(job, image_teacher=embedded_run_dir(video=False).name)
    digest = settings_digest({"teacher_run": embedded_run_dir(video).name, "distill": _training_settings(job)})
    return cache_root() / "students" / f"{kind(video)}-{student_steps}step-{digest}"


def is_finished(run_dir: Path, steps: int) -> bool:
    """True when run_dir holds the exported student of a distillation that reached `steps`."""
    path = Path(run_dir) / "model" / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("extra", {}).get("step") == steps


def is_cached(student_steps: int = 4, video: bool = False) -> bool:
    """True when the embedded student of that kind and grid is distilled and exported."""
    return is_finished(embedded_student_dir(student_steps, video), STUDENT_JOBS[kind(video)].steps)


def embedded_student(student_steps: int = 4, video: bool = False, train_if_missing: bool = True,
                     progress: bool = False, device: str = "cpu") -> Path:
    """The run folder of the embedded-default student (a generator run: RUN/model) of images, or with video=True
    of clips, distilling the embedded teacher(s) (trained first when missing) or resuming the distillation when it
    is not finished; with train_if_missing=False a missing student is a FileNotFoundError naming how to make it."""
    from lrm.generators.embedded import embedded_teacher
    from lrm.tuning.run import STUDENT_STEPS, distill

    if student_steps not in STUDENT_STEPS:
        raise ValueError(f"--student-steps must be 1, 2 or 4 (DOLLAR's student grids), got {student_steps}")
    run = embedded_student_dir(student_steps, video)
    job = student_job(student_steps, video)
    if is_finished(run, job.steps):
        return run
    if not train_if_missing:
        example = "temporal-flickering" if video else "jpeg-compressibility"
        grid = "" if student_steps == STUDENT_JOBS[kind(video)].student_steps else f" --student-steps {student_steps}"
        raise FileNotFoundError(f"the embedded {student_steps}-step {kind(video)} student is not distilled yet "
                                f"({run}); run `lrm tune {example} --concurrent{grid}` once to distil it (a few "
                                "minutes on a 2-core CPU, after the embedded teachers it needs)")
    teacher = embedded_teacher(video=video, progress=progress, device=device)
    if "sdm2d" in job.losses:
        job = replace(job, image_teacher=str(embedded_teacher(video=False, progress=progress, device=device)))
    distill(replace(job, teacher=str(teacher), device=device, out=str(run)), run, progress=progress)
    latest = latest_checkpoint(run)
    for older in (run / "checkpoints").glob("step-*"):  # resumable while it runs; the newest suffices once done
        if older.is_dir() and older != latest:
            shutil.rmtree(older)
    return run
