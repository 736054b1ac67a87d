"""`lrm sample` (decoded samples, a grid and the latents of a generator run) and `lrm evaluate` (sample
quality: true rewards, Vendi, Frechet distance, prompt alignment, in a report).

Importing this module imports no torch (so `lrm sample --help` answers at once): the library is imported
inside the commands, and the defaults are read from lrm.configs (EvaluationConfig, DEFAULT_*), which the
library reads too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.cli.options import check_device
from lrm.config_diff import refuse_run_folder
from lrm.configs import DEFAULT_BATCH_SIZE, DEFAULT_CFG, DEFAULT_PER_PROMPT, DEFAULT_STEPS, EvaluationConfig
from lrm.names import not_one_of

EVAL = {f.name: f.default for f in dataclasses.fields(EvaluationConfig)}  # one source of truth: EvaluationConfig

RUN_HELP = ("Generator run folder (the one `lrm teacher train` or `lrm distill` prints; holds model/), its model/ "
            "folder, or a diffusers student exported by lrm (unet/ or transformer/, scheduler/, lrm.json).")
STEPS_HELP = (f"Sampling steps (default {DEFAULT_STEPS} for a teacher: DOLLAR's DDIM grid 999..19; "
              "a student's own steps).")
CFG_HELP = (f"Classifier-free guidance scale, >= 0 (default {DEFAULT_CFG:g} for a teacher, 1 for a student; "
            "1: no guidance).")
SIZE_HELP = "Pixel size (square) to sample at (default: the latent shape the run records)."
FRAMES_HELP = "Frames per sample (default: the latent shape the run records)."


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
    app.command("evaluate")(evaluate)


def _prompts(prompt: Optional[list[str]], prompts: Optional[Path]) -> list[str]:
    """The distinct prompts of --prompt / --prompts, in order; bad or missing ones refused with the fix."""
    from lrm.datasets.media import MediaError, read_prompts

    if prompt and prompts is not None:
        raise typer.BadParameter("give --prompt or --prompts, not both")
    if prompts is not None:
        try:
            return list(dict.fromkeys(read_prompts(prompts)))
        except MediaError as exc:
            raise typer.BadParameter(f"{exc} (one prompt per line in a .txt, or a prompt column)",
                                     param_hint="--prompts") from exc
    texts = [p.strip() for p in prompt or []]
    if not texts:
        raise typer.BadParameter("pass --prompt TEXT (repeatable) or --prompts FILE")
    if not all(texts):
        raise typer.BadParameter("an empty --prompt; give the text to sample", param_hint="--prompt")
    return list(dict.fromkeys(texts))


def sample(
    run: Annotated[Path, typer.Argument(help=RUN_HELP)],
    prompt: Annotated[Optional[list[str]], typer.Option(help="A prompt to sample; repeatable.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file (.txt one per line, .csv/.tsv/.jsonl/.json).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help=STEPS_HELP)] = None,
    cfg: Annotated[Optional[float], typer.Option(min=0.0, help=CFG_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Sample k of every prompt uses seed + k.")] = 0,
    per_prompt: Annotated[int, typer.Option(min=1, help="Samples (seeds) per prompt: the grid's columns.")] = DEFAULT_PER_PROMPT,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/samples).")] = None,
    video_format: Annotated[str, typer.Option(help="File format of clips: gif or mp4 (images are PNG).")] = "gif",
    size: Annotated[Optional[int], typer.Option(min=1, help=SIZE_HELP)] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help=FRAMES_HELP)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per denoiser call.")] = DEFAULT_BATCH_SIZE,
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = EVAL["device"],
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Sample a generator run: decoded PNG / GIF / MP4 per sample, a captioned grid, latents and index.json.

    A sample's noise depends only on its seed, so reruns of the same command reproduce it
    exactly; the same prompt and seed in another prompt list can differ by ~1e-5 (prompts are
    embedded together, padded). A distilled student samples few-step, a teacher with DDIM.

    Examples:
      lrm sample RUN --prompt "a large red circle over a blue plain background"
      lrm sample RUN --prompts prompts.txt --per-prompt 8 --steps 25 --cfg 5
    """
    from lrm.generators.writing import VIDEO_FORMATS

    if video_format not in VIDEO_FORMATS:
        raise typer.BadParameter(not_one_of("--video-format", video_format, VIDEO_FORMATS))
    texts = _prompts(prompt, prompts)
    try:
        from lrm.generators.runs import open_generator_run, sample_run
        from lrm.generators.sampling import expand_requests
        from lrm.generators.writing import save_samples

        generator_run = open_generator_run(run)
        out_dir = out or generator_run.run_dir / "samples"
        refuse_run_folder(out_dir, "the samples")
        latent_shape = generator_run.latent_shape(size, frames)
        model = generator_run.load(map_location=device)
        requests = expand_requests(texts, per_prompt, seed)
        samples, settings = sample_run(generator_run, model, *requests, latent_shape, steps=steps, cfg=cfg,
                                       batch_size=batch_size, progress=not quiet)
        save_samples(samples, out_dir, {**settings, "seed": seed, "per_prompt": per_prompt}, video_format)
    except USER_ERRORS as error:
        exit_with_message(error)
    typer.echo(f"{len(samples.prompts)} samples ({settings['sampler']}, {settings['steps']} steps, cfg "
               f"{settings['cfg']:g}) in {out_dir}: grid.png, index.json, latents.safetensors, samples/", err=True)


def evaluate(
    run: Annotated[Path, typer.Argument(help=RUN_HELP)],
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file (default: procedural captions).")] = None,
    procedural: Annotated[Optional[int], typer.Option(min=1, help=f"Procedural captions to sample, distinct and none among the model's training or `lrm tune` captions (default {EVAL['procedural']}).")] = None,
    samples_per_prompt: Annotated[int, typer.Option(min=1, help="Samples (seeds) per prompt; Vendi needs >= 2.")] = EVAL["samples_per_prompt"],
    reference: Annotated[Optional[Path], typer.Option(help="Latent store of reference latents for the Frechet distance "
                                                           "(default: procedural clips in the run's codec).")] = None,
    reference_count: Annotated[int, typer.Option(min=2, help="Reference latents used.")] = EVAL["reference_count"],
    rewards: Annotated[str, typer.Option(help="True rewards of the decoded samples, comma-separated.")] = ",".join(EVAL["rewards"]),
    steps: Annotated[Optional[int], typer.Option(min=1, help=STEPS_HELP)] = None,
    cfg: Annotated[Optional[float], typer.Option(min=0.0, help=CFG_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Sample k of every prompt uses seed + k.")] = EVAL["seed"],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/eval).")] = None,
    size: Annotated[Optional[int], typer.Option(min=1, help=SIZE_HELP)] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help=FRAMES_HELP)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per denoiser call.")] = EVAL["batch_size"],
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = EVAL["device"],
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Evaluate a generator run's samples: true rewards, Vendi diversity, Frechet distance, prompt alignment.

    Samples every prompt at fixed seeds and writes OUT/metrics.json and a self-contained
    OUT/report.html with the sample grid. The Frechet distance compares pooled latent statistics
    (per-channel mean, std, detail) with the reference, not Inception features.

    Examples:
      lrm evaluate RUN                # 8 procedural captions x 4 seeds
      lrm evaluate RUN --prompts prompts.txt --rewards jpeg-compressibility,niqe
    """
    if prompts is not None and procedural is not None:
        raise typer.BadParameter("give --prompts or --procedural, not both")
    if prompts is not None:
        _prompts(None, prompts)  # an unreadable or empty file is refused here, before loading anything
    names = tuple(r.strip() for r in rewards.split(",") if r.strip())
    if not names:
        raise typer.BadParameter("name at least one reward, e.g. --rewards prompt-color", param_hint="--rewards")
    config_options = {"procedural": procedural} if procedural is not None else {}
    try:
        from lrm.evaluation.report import evaluate_run
        from lrm.generators.runs import open_generator_run

        config = EvaluationConfig(prompts_file=str(prompts) if prompts else None, samples_per_prompt=samples_per_prompt,
                                  seed=seed, steps=steps, cfg=cfg, rewards=names,
                                  reference=str(reference) if reference else None, reference_count=reference_count,
                                  size=size, frames=frames, batch_size=batch_size, device=device, **config_options)
        generator_run = open_generator_run(run)
        out_dir = out or generator_run.run_dir / "eval"
        refuse_run_folder(out_dir, "the evaluation")
        metrics = evaluate_run(run, config, out_dir, progress=not quiet)
    except USER_ERRORS as error:
        exit_with_message(error)
    for name, r in metrics["rewards"].items():
        typer.echo(f"{name}: {r['mean']:.4g} (std {r['std']:.3g}, {r['scored']} scored)", err=True)
    if metrics["diversity"]:
        typer.echo(f"Vendi per prompt: {metrics['diversity']['mean']:.3f}", err=True)
    if metrics["frechet"]["value"] is not None:
        typer.echo(f"Frechet distance (pooled latent statistics): {metrics['frechet']['value']:.4g}", err=True)
    if metrics["frechet"].get("per_frame") is not None:
        typer.echo(f"Frechet distance per frame: {metrics['frechet']['per_frame']:.4g}", err=True)
    aligned = metrics["alignment"]
    if aligned:
        motion = "" if aligned.get("motion") is None else f", motion {aligned['motion']:.3f}"
        typer.echo(f"alignment: colour {aligned['color']:.3f}, shape {aligned['shape']:.3f}{motion}", err=True)
    typer.echo(f"report: {out_dir / 'report.html'}", err=True)
