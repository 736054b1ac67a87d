"""`lrm teacher train`: train lrm's latent DiT teacher on a latent store, a media folder or the embedded default."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.cli.options import check_device, standalone_app
from lrm.generators.embedded import EMBEDDED
from lrm.configs import EncodeConfig, TeacherConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TeacherConfig)}  # one source of truth: TeacherConfig
IMAGE, VIDEO = EMBEDDED["image"], EMBEDDED["video"]


def register(app: typer.Typer) -> None:
    teacher_app = typer.Typer(help="Train lrm's own latent DiT teacher (the generator tuning starts from).",
                              no_args_is_help=True)
    teacher_app.command("train")(train)
    app.add_typer(teacher_app, name="teacher")


def resolve(video: bool, store: Path | None, data: str | None, prompts: Path | None, codec: str, size: int | None,
            steps: int | None, preset: str | None, batch_size: int | None, init: Path | None, out: Path | None,
            device: str) -> dict:
    """What `lrm teacher train` will do: the run folder, where its store comes from, the teacher settings."""
    from lrm.generators.embedded import embedded_config, embedded_run_dir, embedded_store_dir
    from lrm.generators.training import check_config, check_init

    if store is not None and data is not None:
        raise ValueError("give either --store or --data, not both")
    if (prompts is not None or size is not None or codec != EncodeConfig.codec) and data is None:
        raise ValueError("--prompts, --size and --codec describe a store encoded from --data; pass --data FOLDER")
    if init is not None and not init.is_dir():
        raise FileNotFoundError(f"--init {init}: no such folder; pass a teacher run (or its model folder)")
    kind = "video" if video else "image"
    entry = EMBEDDED[kind]
    overrides = {k: v for k, v in (("steps", steps), ("preset", preset), ("batch_size", batch_size),
                                   ("init", None if init is None else str(init))) if v is not None}
    # the embedded video teacher starts from the embedded image teacher; a teacher of the user's data from scratch
    base = embedded_config(video) if store is None and data is None else entry.teacher
    if base.init is not None and init is None and preset not in (None, base.preset):
        raise ValueError(f"the embedded video teacher starts from the embedded image teacher ({base.preset}); with "
                         f"--preset {preset} pass --init RUN of a {preset} image teacher, or train from scratch "
                         "with --data procedural:1024:simple")
    config = dataclasses.replace(base, device=device, **overrides)
    check_config(config)
    if init is not None:
        check_init(init, config.preset)
    plan = {"kind": kind, "teacher": dataclasses.asdict(config)}
    if store is not None:
        from lrm.datasets.store import LatentStore
        from lrm.generators.training import check_store

        check_store(LatentStore.open(store), video=video)
        plan.update(store=str(store), run=str(out or Path("runs") / f"teacher-{store.name}"))
    elif data is not None:
        encode = EncodeConfig(data, codec=codec, frames=entry.store.frames, size=size or entry.store.size,
                              text=entry.store.text, text_length=entry.store.text_length,
                              prompts=str(prompts) if prompts else None, device=device)
        from lrm.datasets.encoding import check_source

        check_source(encode)  # what encoding would refuse: no clips, no such codec
        run = out or Path("runs") / f"teacher-{Path(data.rstrip('/')).name.replace(':', '-')}"
        plan.update(encode=dataclasses.asdict(encode), store=str(run / "store"), run=str(run))
    else:
        cached = not overrides and out is None  # the embedded teacher itself, which the tuning commands reuse
        plan.update(embedded=True, store=str(embedded_store_dir(video)),
                    run=str(embedded_run_dir(video) if cached else out or Path("runs") / f"teacher-{kind}"))
    from lrm.config_diff import refuse_other_run_in

    refuse_other_run_in(plan["run"], "teacher")  # before any encoding or training
    return plan


def train(
    video: Annotated[bool, typer.Option("--video", help="A video teacher (8-frame clips) instead of an image one.")] = False,
    store: Annotated[Optional[Path], typer.Option(help="Latent store with text embeddings to train on.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Media folder (or procedural:N[:simple]) to encode into RUN/store first.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="With --data: prompts file, one line per media file in sorted order.")] = None,
    codec: Annotated[str, typer.Option(
        help="With --data: latent space (dct, taef2, pae: lrm's autoencoder of the procedural world, "
             "diffusers:<path>).")] = EncodeConfig.codec,
    size: Annotated[Optional[int], typer.Option(min=1, help=f"With --data: square side in pixels (default {IMAGE.store.size}).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        help=f"Optimizer steps (default {IMAGE.teacher.steps} for images, {VIDEO.teacher.steps} for --video).")] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"DiT size: dit-xs, dit-s, dit-s1, dit-m, dit-m1, dit-b (default {IMAGE.teacher.preset}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help=f"Global batch (default {IMAGE.teacher.batch_size} for images, {VIDEO.teacher.batch_size} for --video).")] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Teacher run to start from; an image teacher starts a video one. Default: the embedded image teacher "
             "for the embedded --video teacher, none (from scratch) with --store or --data.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder (default: the embedded teacher's cache folder, else runs/teacher-<data>).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = DEFAULTS["device"],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved run and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train lrm's latent DiT teacher (conjugate-v, DOLLAR Eq. 13) with CFG dropout, EMA and checkpoints.

    Without --store or --data it trains the embedded default on procedural captioned images (or clips
    with --video, starting from the embedded image teacher) in the latent space of lrm's own autoencoder
    (pae, trained first on the procedural world): ~13 minutes on a 2-core CPU for images, ~5 more for --video,
    cached so that later commands reuse it. Writes
    RUN/model (the EMA teacher), RUN/report.html, RUN/metrics.jsonl and RUN/checkpoints; re-running
    resumes. Under torchrun it trains with DDP.

    Examples:
      lrm teacher train                       # the embedded image teacher
      lrm teacher train --video
      lrm teacher train --store my_store --steps 20000 --preset dit-m
      lrm teacher train --video --store clips --init runs/teacher-img
    """
    try:
        plan = resolve(video, store, data, prompts, codec, size, steps, preset, batch_size, init, out, device)
        if dry_run:
            typer.echo(json.dumps(plan, indent=2))
            return
        run = _run(plan, video, progress=not quiet)
    except USER_ERRORS as error:
        exit_with_message(error)
    typer.echo(f"teacher: {run / 'model'}\nreport: {run / 'report.html'}")


def _run(plan: dict, video: bool, progress: bool) -> Path:
    from lrm.datasets.store import LatentStore
    from lrm.generators.embedded import embedded_config, embedded_run_dir, embedded_store, embedded_teacher
    from lrm.generators.training import check_store, train_teacher

    config = TeacherConfig(**plan["teacher"])
    run = Path(plan["run"])
    if plan.get("embedded") and run == embedded_run_dir(video):
        return embedded_teacher(video, progress=progress, device=config.device)
    if config.init is not None and config.init == embedded_config(video).init:  # trained first if missing
        embedded_teacher(video=False, progress=progress, device=config.device)
    if plan.get("embedded"):
        store = embedded_store(video, progress, config.device)
    elif "encode" in plan:
        from lrm.datasets.encoding import EncodeConfig, encode

        store = encode(EncodeConfig(**plan["encode"]), plan["store"], progress=progress)
    else:
        store = LatentStore.open(plan["store"])
    check_store(store, video=video)
    train_teacher(store, config, run, resume=True, progress=progress)
    return run



if __name__ == "__main__":
    standalone_app(register)()
