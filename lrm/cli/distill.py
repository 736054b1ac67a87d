"""`lrm distill`: distil a teacher run into a 1-, 2- or 4-step student run (lrm.tuning.run.distill).

Importing this module imports no torch (so `lrm distill --help` answers at once): the library is imported
inside the command; every default comes from lrm.configs.DistillJob.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.cli.options import check_device, standalone_app
from lrm.configs import DistillJob

DEFAULTS = {f.name: f.default for f in dataclasses.fields(DistillJob)}  # one source of truth: DistillJob


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)


def distill(
    teacher: Annotated[Optional[str], typer.Option(
        help="Teacher run (from `lrm teacher train`; holds model/). Default: the cached embedded teacher, "
             "trained first if absent.")] = None,
    video: Annotated[bool, typer.Option("--video", help="With no --teacher: the embedded video teacher.")] = False,
    losses: Annotated[str, typer.Option(
        help="Loss terms, comma-separated: vsd, cd (DOLLAR), adm, sdm2d (AVDM2 video).")
    ] = ",".join(DEFAULTS["losses"]),
    student_steps: Annotated[int, typer.Option(
        help="The student's sampling steps: 1, 2 or 4.")] = DEFAULTS["student_steps"],
    steps: Annotated[int, typer.Option(help="Generator steps; a rerun with more steps resumes.")] = DEFAULTS["steps"],
    batch_size: Annotated[int, typer.Option(help="Prompts and real latents per step.")] = DEFAULTS["batch_size"],
    cd_teacher_steps: Annotated[int, typer.Option(
        help="Teacher DDIM steps m per CD target (1: plain CD; DOLLAR's 5).")] = DEFAULTS["cd_teacher_steps"],
    image_teacher: Annotated[Optional[str], typer.Option(
        help="Image teacher run for sdm2d (same codec and text encoder as the video teacher).")] = None,
    lr: Annotated[float, typer.Option(help="Student learning rate (AdamW).")] = DEFAULTS["student_lr"],
    fake_lr: Annotated[float, typer.Option(
        help="Learning rate of the fake score, discriminator head and 2D fake score.")] = DEFAULTS["fake_lr"],
    seed: Annotated[int, typer.Option(help="Seed of the trainer's draws and the batch order.")] = DEFAULTS["seed"],
    lora_rank: Annotated[Optional[int], typer.Option(
        help="Train LoRA adapters of this rank (peft) on the attention projections of the student and fake "
             "scores, base weights frozen; default: every weight trains.")] = DEFAULTS["lora_rank"],
    eval_every: Annotated[int, typer.Option(
        help="Steps between fixed-seed logs: samples, FD, alignment, Vendi (0: none).")] = DEFAULTS["eval_every"],
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = DEFAULTS["checkpoint_every"],
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = DEFAULTS["device"],
    bf16: Annotated[bool, typer.Option(
        "--bf16", help="Mixed precision: the loss terms' forward passes under bf16 autocast (weights, optimisers "
                       "and samplers stay float32; fp16 is not offered: it overflows in distillation). For GPUs; "
                       "a rerun may change it.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder (default runs/student-<losses>-<N>step); rerunning it resumes.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved plan and exit.")] = False,
) -> None:
    """Distil a teacher into a few-step student (VSD, CD, ADM, SDM-2D); its run samples with `lrm sample`.

    Trains the student (initialised from the teacher) on the teacher's own latent store with the named
    loss terms (DOLLAR Alg. 1; AVDM2 Alg. 1 for video), checkpoints, logs samples and metrics at fixed
    seeds every --eval-every steps, and exports RUN/model, which `lrm sample RUN` and `lrm evaluate RUN`
    run with the student's few-step sampler. RUN/report.html shows the curves and grids over training.

    Examples:
      lrm distill --losses vsd,cd --student-steps 4 --out runs/student4
      lrm distill --teacher runs/vid --losses adm,sdm2d --image-teacher runs/img
      lrm distill --lora-rank 16 --out runs/student-lora
      torchrun --nproc_per_node 2 -m lrm.cli.app distill --batch-size 16
    """
    job = DistillJob(teacher=teacher, video=video, losses=tuple(n.strip() for n in losses.split(",") if n.strip()),
                     student_steps=student_steps, steps=steps, batch_size=batch_size, cd_teacher_steps=cd_teacher_steps,
                     image_teacher=image_teacher, student_lr=lr, fake_lr=fake_lr, seed=seed, lora_rank=lora_rank,
                     eval_every=eval_every, checkpoint_every=checkpoint_every, device=device,
                     autocast="bf16" if bf16 else None, out=str(out) if out else None)
    try:
        from lrm.tuning.run import distill as run_distill, resolve

        plan = resolve(job)
        if dry_run:
            typer.echo(json.dumps(plan, indent=2))
            return
        result = run_distill(job, progress=not quiet)
    except (*USER_ERRORS, ImportError) as error:  # ImportError: an optional package (peft) is missing
        exit_with_message(error)
    from lrm import distributed

    if distributed.is_main():  # under torchrun: one line, not one per process
        typer.echo(f"student: {result.model_dir} ({job.student_steps}-step, {result.steps} steps)\n"
                   f"report: {result.report}")


if __name__ == "__main__":
    standalone_app(register, no_args_is_help=False)()
