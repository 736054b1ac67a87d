"""`lrm distill` as a library call: a teacher run -> a few-step student run (DOLLAR Alg. 1, AVDM2 Alg. 1).

    result = distill(DistillJob(losses=("vsd", "cd"), student_steps=4, steps=500), "runs/student")
    result.model_dir    # runs/student/model: `lrm sample runs/student` uses its few-step sampler

The teacher is a generator run (`lrm teacher train`) or, with none given, the cached embedded teacher (trained
first when absent). Training batches come from the teacher's own latent store (its RUN/config.json records
it): the batch of step s is a seeded permutation's slice (lrm.fitting.batch_positions), latents + text
embeddings, so a rerun of the same folder resumes from its newest checkpoint and equals an uninterrupted run.

Run folder: config.json (the resolved job; "student_steps" and "latent_shape" mark it a student run),
checkpoints/, metrics.jsonl and grids/ (lrm.tuning.distill_log), report.html, model/ (the exported student).

Every check on the job and on the runs it names (`resolve`) happens before any work: loading, training the
embedded teacher, writing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lrm.configs import DistillJob
from lrm.io import read_json
from lrm.names import unknown_name
from lrm.tuning.adm import ADM
from lrm.tuning.cd import CD, GRID_STEPS
from lrm.tuning.sdm2d import FRAMES as SDM2D_FRAMES, SDM2D
from lrm.tuning.trainer import check_autocast
from lrm.tuning.vsd import VSD

LOSSES = {"vsd": VSD, "cd": CD, "adm": ADM, "sdm2d": SDM2D}
STUDENT_STEPS = (1, 2, 4)  # DOLLAR's student grids (lrm.diffusion.samplers.STUDENT_TIMESTEPS)
# Job fields that change the trained weights: a rerun of a folder must keep them (steps may grow: resume).
TRAINING_FIELDS = ("teacher", "video", "losses", "student_steps", "batch_size", "cd_teacher_steps", "image_teacher",
                   "student_lr", "fake_lr", "seed", "lora_rank")
CACHE_BYTES = 2**31  # a teacher store smaller than this is read into memory once


@dataclass(frozen=True)
class DistillResult:
    run_dir: Path
    model_dir: Path  # the exported student (RUN/model)
    steps: int  # generator steps done
    report: Path  # RUN/report.html


# ---------------------------------------------------------------- checks before any work


def check_job(job: DistillJob) -> None:
    """One-line ValueError naming the bad option and the fix (no file is read)."""
    if not job.losses:
        raise ValueError(f"--losses is empty; name loss terms, e.g. vsd,cd (known: {', '.join(LOSSES)})")
    for name in job.losses:
        if name not in LOSSES:
            raise KeyError(unknown_name("loss", name, LOSSES, "Pass them comma-separated, e.g. --losses vsd,cd."))
    check_autocast(job.autocast)
    if len(set(job.losses)) != len(job.losses):
        raise ValueError(f"--losses names a term twice ({','.join(job.losses)}); name each once")
    if job.student_steps not in STUDENT_STEPS:
        raise ValueError(f"--student-steps must be 1, 2 or 4 (DOLLAR's student grids), got {job.student_steps}")
    if not isinstance(job.steps, int) or job.steps < 0:
        raise ValueError(f"--steps must be >= 0 (0 exports the untrained student), got {job.steps}")
    for name in ("batch_size", "checkpoint_every"):
        if getattr(job, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(job, name)}")
    if job.eval_prompts < 1:  # a DistillJob field with no CLI option, as eval_seeds and reference_count
        raise ValueError(f"eval_prompts must be >= 1, got {job.eval_prompts}")
    if job.eval_every < 0:
        raise ValueError(f"--eval-every must be >= 0 (0: no fixed-seed logs), got {job.eval_every}")
    if job.eval_seeds < 2:
        raise ValueError(f"eval_seeds must be >= 2 (Vendi compares a prompt's samples), got {job.eval_seeds}")
    if job.reference_count < 2:
        raise ValueError(f"reference_count must be >= 2 for the Frechet distance, got {job.reference_count}")
    if not 1 <= job.cd_teacher_steps < GRID_STEPS:
        raise ValueError(f"--cd-teacher-steps must be in 1..{GRID_STEPS - 1} (teacher DDIM steps per CD target), "
                         f"got {job.cd_teacher_steps}")
    if job.lora_rank is not None and (not isinstance(job.lora_rank, int) or job.lora_rank < 1):
        raise ValueError(f"--lora-rank must be a positive integer (or left out to train every weight), "
                         f"got {job.lora_rank!r}")
    for flag, value in (("--lr", job.student_lr), ("--fake-lr", job.fake_lr)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")
    if "sdm2d" in job.losses and job.image_teacher is None:
        raise ValueError("loss sdm2d needs an image teacher in the student's latent space: pass --image-teacher RUN "
                         "(sdm2d distils a video student's frames: --teacher is a video teacher)")
    if job.image_teacher is not None and "sdm2d" not in job.losses:
        raise ValueError("--image-teacher is read only by sdm2d; add sdm2d to --losses or drop --image-teacher")


def _open_teacher(path: str, flag: str):
    """The generator run at `path`, refused when it is a distilled student or a diffusers denoiser."""
    from lrm.generators.runs import DENOISER_FOLDERS, LRM, open_generator_run

    folder = Path(path)
    denoiser_configs = [folder / name / "config.json" for name in DENOISER_FOLDERS]
    if (folder / "model_index.json").is_file() or any(config.is_file() for config in denoiser_configs):
        raise ValueError(f"{flag} {path} is a diffusers pipeline folder; `lrm distill` takes runs of `lrm teacher "
                         "train`. Distil a diffusers denoiser through the library (docs/distill.md, \"diffusers "
                         "teachers\")")
    run = open_generator_run(path)
    if run.student_steps is not None:
        raise ValueError(f"{flag} {path} is a distilled {run.student_steps}-step student, not a teacher; pass the "
                         "teacher run it was distilled from (a run of `lrm teacher train`)")
    if run.kind != LRM:
        raise ValueError(f"{flag} {path} is a diffusers denoiser exported by lrm; `lrm distill` takes runs of `lrm "
                         "teacher train`. Distil a diffusers denoiser through the library (docs/distill.md)")
    return run


def resolve(job: DistillJob) -> dict:
    """Check the job and the runs it names; return the plan (JSON-able) that `distill` follows and
    `lrm distill --dry-run` prints. The embedded teacher is named, not trained."""
    from lrm.generators.embedded import EMBEDDED, embedded_run_dir

    check_job(job)
    if job.lora_rank is not None:
        from lrm.tuning.lora import require_peft

        require_peft()
    plan = {"job": asdict(job), "run": str(Path(job.run_dir()))}
    from lrm.config_diff import refuse_other_run_in

    refuse_other_run_in(job.run_dir(), "job")  # before the embedded teacher trains (minutes)
    if job.teacher is not None:
        teacher = _open_teacher(job.teacher, "--teacher")
        frames = teacher.config["dimensions"]["frames"]
        if job.video and frames == 1:
            raise ValueError(f"--video: teacher {job.teacher} is an image model; drop --video or pass a video teacher")
        recorded = teacher.setting("store")
        if recorded is None:
            raise ValueError(f"teacher {job.teacher} records no latent store (\"store\" in its config.json), so there "
                             "is no data to distil on; pass a run of `lrm teacher train`")
        store = teacher.store_path()  # also where a moved or copied folder tree (a copied cache) holds it
        if store is None:
            raise FileNotFoundError(f"the store of teacher {job.teacher} is gone ({recorded}); restore it or retrain "
                                    "the teacher")
        codec, text_id = teacher.config.get("codec_settings"), teacher.config.get("text_encoder_id")
        plan.update(teacher=str(teacher.run_dir), store=str(store))
    else:
        entry = EMBEDDED["video" if job.video else "image"]
        frames = entry.store.frames
        run = embedded_run_dir(job.video)
        trained = (run / "model" / "config.json").is_file()
        # the codec it records once trained (before that, its autoencoder may not be trained either: the embedded
        # image and video teachers share one codec by construction)
        codec = read_json(run / "model" / "config.json", "retrain it: `lrm teacher train`")["codec_settings"] \
            if trained else None
        text_id = entry.store.text
        plan.update(teacher=str(run), embedded=True, trained=trained)
    if "sdm2d" in job.losses:
        _check_image_teacher(job.image_teacher, frames, codec, text_id)
        plan["image_teacher"] = job.image_teacher
    return plan


def _check_image_teacher(path: str, frames: int, codec: dict | None, text_id: str | None) -> None:
    image = _open_teacher(path, "--image-teacher")
    if frames == 1:
        raise ValueError("sdm2d distils a video student with an image teacher, but the teacher is an image model; "
                         "use vsd for an image student, or pass a video --teacher")
    if image.config["dimensions"]["frames"] != 1:
        raise ValueError(f"--image-teacher {path} is a {image.config['dimensions']['frames']}-frame video model; "
                         "sdm2d needs an image teacher (1 frame)")
    other = image.config.get("codec_settings")
    if codec is not None and other is not None and dict(other) != dict(codec):
        raise ValueError(f"--image-teacher {path} works in codec {other.get('name')!r} ({other}), the video teacher "
                         f"in {codec.get('name')!r} ({codec}); sdm2d needs an image teacher of the same codec")
    other_text = image.config.get("text_encoder_id")
    if text_id is not None and other_text is not None and other_text != text_id:
        raise ValueError(f"--image-teacher {path} reads {other_text!r} text tokens, the video teacher {text_id!r}; "
                         "sdm2d needs an image teacher trained on the same text encoder")


# ---------------------------------------------------------------- building the run


def build_terms(job: DistillJob, latent_frames: int) -> list:
    """The loss terms of `job.losses`, in order, from LOSSES; CD with m = cd_teacher_steps, SDM-2D on at most
    the clip's frames."""
    options = {"cd": {"teacher_steps": job.cd_teacher_steps}, "sdm2d": {"frames": min(SDM2D_FRAMES, latent_frames)}}
    return [LOSSES[name](**options.get(name, {})) for name in job.losses]


def build_distiller(job: DistillJob, teacher, latent_shape, image_teacher=None):
    """Roles (DOLLAR Alg. 1 line 4; AVDM2's head and 2D roles when their terms are asked for), terms, trainer.
    The one role not copied from a teacher, ADM's discriminator head, draws its initial weights from job.seed."""
    import torch

    from lrm.tuning.adm import discriminator_for
    from lrm.tuning.roles import build_roles
    from lrm.tuning.trainer import DistillConfig, Distiller

    discriminator = None
    if "adm" in job.losses:
        with torch.random.fork_rng(devices=[]):  # the head is built on the CPU: only the CPU RNG is forked and seeded,
            torch.random.default_generator.manual_seed(job.seed)  # so a rerun builds the same head, the caller's RNGs
            # (CPU and accelerators) stay as they were; then it joins the teacher on its device
            discriminator = discriminator_for(teacher).to(next(teacher.parameters()).device)
    roles = build_roles(teacher, student_lr=job.student_lr, fake_lr=job.fake_lr, fake_score="vsd" in job.losses,
                        ema="cd" in job.losses, discriminator=discriminator,  # the EMA student: CD's target only
                        discriminator_lr=job.fake_lr, teacher_2d=image_teacher, fake_2d_lr=job.fake_lr,
                        lora_rank=job.lora_rank)
    config = DistillConfig(latent_shape=tuple(latent_shape), student_steps=job.student_steps, seed=job.seed,
                           autocast=job.autocast)
    return Distiller(roles, build_terms(job, latent_shape[0]), config)


def store_batches(store, batch_size: int, seed: int, device, with_prompts: bool = False, rank: int | None = None,
                  world: int | None = None):
    """batches(step) -> [Batch] of this rank's share of the store's rows for `step`: latents (B, T, c, h, w) and
    text embeddings (with_prompts: and the rows' captions, for rewards that read them), the same for the same
    step on every call (exact resume). batch_size is the global batch (capped at the store's rows); under
    torchrun rank r of `world` takes the r-th of `world` equal slices of it, so the ranks together read exactly
    the rows one process reads."""
    import numpy as np

    from lrm import distributed
    from lrm.fitting import RowSource, batch_positions
    from lrm.tuning.denoise import Batch

    rows = np.arange(len(store))
    size = min(batch_size, len(store))
    world = distributed.world_size() if world is None else world
    try:
        share = distributed.local_slice(size, rank, world)
    except ValueError:
        raise ValueError(f"--batch-size {batch_size} (the global batch, capped at the store's {len(store)} rows: "
                         f"{size}) does not split evenly over {world} processes; pass a multiple of {world}") from None
    text, _ = store.text_embeddings([0])
    per_row = 4 * (int(np.prod(store.latent_shape)) + text[0].numel())  # float32 latents + tokens
    source = RowSource(store, rows, with_text=True, cache=per_row * len(store) < CACHE_BYTES)
    captions = store.prompts if with_prompts else None
    if with_prompts and captions is None:
        raise ValueError(f"store {store.path} holds no captions, and the reward reads prompts; use a store encoded "
                         "with captions")

    def batches(step: int) -> list:
        chosen = rows[batch_positions(step, len(store), size, seed)[share]]
        x0, text, mask = source.get(chosen)
        prompts = [captions[i] for i in chosen] if captions is not None else None
        return [Batch(text.to(device), mask.to(device).bool(), x0.to(device), prompts)]

    return batches


def _check_resumable(run_dir: Path, resolved: dict) -> None:
    """A rerun of a run folder (resume) must keep the training fields and the teacher run (the embedded one
    changes folder when its settings change); read by every rank, nothing written."""
    from lrm.config_diff import differences, read_run_config, refuse_other_run

    def training(config: dict) -> dict:
        job = config.get("job", {})
        return {"job": {k: job.get(k) for k in TRAINING_FIELDS}, "teacher_run": config.get("teacher_run")}

    path = run_dir / "config.json"
    if path.is_file():
        saved = read_run_config(path)
        refuse_other_run(run_dir, saved, "job")
        diff = differences(training(saved), training(resolved))
        if diff:
            raise ValueError(f"cannot resume student run {run_dir}: it was started with other settings "
                             f"({'; '.join(diff)}). Fix: re-run with the same settings, or pass a new --out")


def _write_config(run_dir: Path, resolved: dict) -> None:
    """RUN/config.json, written by rank 0 once every rank has read the old one."""
    from lrm import distributed
    from lrm.io import atomic_write_json

    distributed.barrier()
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", resolved)
    distributed.barrier()


def distill(job: DistillJob, out_dir: str | Path | None = None, progress: bool = False) -> DistillResult:
    """Run `job` into out_dir (default job.run_dir()): resume it if it holds a checkpoint, train up to
    job.steps, log at fixed seeds every job.eval_every steps, export the student to out_dir/model.

    Under torchrun (gloo processes on the CPU, one process per GPU with nccl) the ranks split each step's
    global batch (store_batches), the trainer averages their gradients so every role stays the same on every
    rank, and rank 0 writes every file (config.json, metrics, grids, report, checkpoints, model/)."""
    from lrm import distributed

    job = replace(job, losses=tuple(job.losses), out=str(out_dir) if out_dir is not None else job.out)
    plan = resolve(job)
    created_group = distributed.init_from_env(job.device)
    try:
        return _distill(job, Path(plan["run"]), progress)
    finally:
        if created_group:
            distributed.shutdown()


def _distill(job: DistillJob, run_dir: Path, progress: bool) -> DistillResult:
    from lrm import distributed
    from lrm.datasets.store import LatentStore
    from lrm.generators.embedded import embedded_teacher
    from lrm.tuning.distill_log import Monitor

    device = distributed.process_device(job.device)
    teacher_path = job.teacher or embedded_teacher(job.video, progress=progress, device=job.device)
    teacher_run = _open_teacher(str(teacher_path), "--teacher")
    store = LatentStore.open(teacher_run.store_path() or teacher_run.setting("store"))
    teacher = teacher_run.load(map_location=device)
    latent_shape = tuple(store.latent_shape)
    if latent_shape[1] != teacher.in_channels:
        raise ValueError(f"store {store.path} holds {latent_shape[1]}-channel latents, teacher {teacher_path} takes "
                         f"{teacher.in_channels}; the teacher's config.json names another store")
    batches = store_batches(store, job.batch_size, job.seed, device)  # this rank's share of each step's batch
    image_teacher = None
    if job.image_teacher is not None:
        image_teacher = _open_teacher(job.image_teacher, "--image-teacher").load(map_location=device)
    distiller = build_distiller(job, teacher, latent_shape, image_teacher)

    resolved = {"job": {**asdict(job), "losses": list(job.losses)}, "teacher_run": str(teacher_run.run_dir),
                "store": str(store.path), "codec": store.codec_settings, "text_encoder_id": store.text_encoder_id,
                "student_steps": job.student_steps, "latent_shape": list(latent_shape),
                "roles": distiller.roles.names(), "weights": distiller.weights,
                "world_size": distributed.world_size()}
    _check_resumable(run_dir, resolved)
    distiller.resume(run_dir)  # refuses a checkpoint of another number of processes or other terms
    if distiller.step > job.steps:  # fit would do nothing and export the longer-trained student as this job's
        raise ValueError(f"student run {run_dir} has already trained {distiller.step} steps, more than --steps "
                         f"{job.steps}; pass --steps {distiller.step} or more to reuse or continue it, or another --out")
    _write_config(run_dir, resolved)  # only now: a refused rerun leaves the run folder as it was
    monitor = Monitor(run_dir, distiller, store, job, progress=progress) if distributed.is_main() else None
    if monitor is not None:
        monitor.start()
    distiller.fit(batches, job.steps, run_dir, job.checkpoint_every, on_step=monitor)
    if monitor is not None:
        monitor.finish()
    model_dir = distiller.export_student(run_dir)
    return DistillResult(run_dir, model_dir, distiller.step, run_dir / "report.html")
