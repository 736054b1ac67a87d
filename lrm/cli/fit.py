"""`lrm fit` (encode -> label -> fit -> report), `lrm report` (evaluate on another store) and
`lrm predict` (score media through codec + surrogate, the fast path)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lrm.cli.options import check_device, parse_options, with_metric_options
from lrm.configs import FitJob
from lrm.names import not_one_of

DEFAULTS = {f.name: f.default for f in dataclasses.fields(FitJob)}  # one source of truth: FitJob

console = Console(stderr=True, emoji=False)  # `m.py:x` is a metric, not the :x: emoji


def check_lr(value: float) -> float:
    """--lr above 0 (torch's "Invalid learning rate: -1.0" named no option, and 0 trained nothing); inf and nan
    are refused by every option (lrm.cli.app.refuse_non_finite)."""
    if value <= 0:
        raise typer.BadParameter(f"{value} is not a learning rate; pass a number above 0, e.g. --lr {DEFAULTS['lr']}")
    return value


def register(app: typer.Typer) -> None:
    app.command("fit")(fit)
    app.command("report")(report)
    app.command("predict")(predict)


def fit(
    reward: Annotated[str, typer.Argument(help="Reward to imitate: a name from `lrm rewards`, or file.py:fn / pkg.module:fn.")],
    data: Annotated[Optional[str], typer.Option(help="Media folder or procedural:N (default: procedural clips).")] = None,
    store: Annotated[Optional[Path], typer.Option(help="Reuse this latent store instead of encoding (labelled if needed).")] = None,
    codec: Annotated[str, typer.Option(help="Latent space of a new store: dct, taef2, pae or diffusers:<path>.")] = DEFAULTS["codec"],
    model: Annotated[Optional[str], typer.Option(help="Surrogate preset (lrm.models.PRESETS). Default, the recommended one per reward kind: image-cnn-stats (image), text-image-xattn (text-image), video-pair-stats (video), text-video-3d-xattn (text-video).")] = DEFAULTS["preset"],
    steps: Annotated[int, typer.Option(min=1, help=(
        f"Most optimizer steps: a linear warm-up of the learning rate (--warmup-steps), then cosine decay; "
        f"validated every {DEFAULTS['eval_every']} steps on the held-out rows, the fit keeps the checkpoint with the "
        f"best held-out Spearman and stops early when --patience validations bring no better one."
        ))] = DEFAULTS["steps"],
    warmup_steps: Annotated[int, typer.Option(min=0, help="Steps of linear learning-rate warm-up (0: none).")] = DEFAULTS["warmup_steps"],
    patience: Annotated[int, typer.Option(min=0, help=(
        "Validations in a row without a better held-out Spearman before the fit stops early (0: never stops "
        "early; it still keeps the best checkpoint)."))] = DEFAULTS["patience"],
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<label>).")] = None,
    count: Annotated[int, typer.Option(min=1, help="Procedural clips when no --data is given.")] = DEFAULTS["count"],
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip (default 1 for image rewards, 8 for video rewards).")] = None,
    size: Annotated[Optional[int], typer.Option(min=1, help=(
        "Square clip side in pixels of a new store (default: 128 for procedural clips; for a media folder the "
        "reward's preferred size, else the media's short side up to 512). --dry-run says which and why."))] = DEFAULTS["size"],
    text: Annotated[Optional[str], typer.Option(help="Text encoder of a new store (default minilm-l6-v2 for text rewards).")] = None,
    label: Annotated[Optional[str], typer.Option(help="Label column name (default: the reward name, + @decoded for decoded labels).")] = None,
    label_pixels: Annotated[str, typer.Option(
        help="source: the reward of the media itself; decoded: the reward of what the latents decode to, which is "
             "what a tuned generator is scored on and what a lossy codec cannot hide from the surrogate.")] = DEFAULTS["label_pixels"],
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = DEFAULTS["batch_size"],
    lr: Annotated[float, typer.Option(callback=check_lr, help="Peak AdamW learning rate (> 0).")] = DEFAULTS["lr"],
    loss: Annotated[str, typer.Option(help="mse (DOLLAR Eq. 10) or ranking (Bradley-Terry).")] = DEFAULTS["loss"],
    label_transform: Annotated[str, typer.Option(
        help="none, log (fit log(label - shift), for right-skewed rewards such as sharpness or dynamic-degree) "
             "or auto: log when that at least halves the training labels' skewness.")] = DEFAULTS["label_transform"],
    noise_aware: Annotated[bool, typer.Option("--noise-aware", help="Fit on noised latents x_t with the timestep as input.")] = DEFAULTS["noise_aware"],
    gradient_weight: Annotated[float, typer.Option(
        min=0.0, help="Also match the reward's gradient with respect to the latents (through the decoder), with "
                      "this weight on 1 - cosine: for LRM fine-tuning, which follows the surrogate's gradient. A "
                      "differentiable reward with --label-pixels decoded; 0: off.")] = DEFAULTS["gradient_weight"],
    augment: Annotated[str, typer.Option(
        help="none, or hflip: mirror half the training latents left-right (exact, in latent space; dct codec "
             "only). Only for rewards a mirror leaves unchanged.")] = DEFAULTS["augment"],
    seed: Annotated[int, typer.Option(help="Seed of data, split and training.")] = DEFAULTS["seed"],
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Reward option KEY=VALUE, repeatable.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="For your own metric: image | text-image | video | text-video.")] = None,
    input: Annotated[Optional[str], typer.Option(help="For your own metric: tensor or uint8.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = DEFAULTS["device"],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved job and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Fit a latent surrogate to a reward and write its fidelity report.

    Encodes the data (or reuses --store), labels it with the reward, fits the surrogate and
    writes RUN/report.html, RUN/metrics.json and RUN/model/. Re-running resumes every stage.

    Examples:
      lrm fit jpeg-compressibility    # embedded default, a minute or two on CPU
      lrm fit temporal-flickering --data clips/ --codec taef2
      lrm fit my_metric.py:score --kind image --input uint8
      lrm fit prompt-color --label-pixels decoded --gradient-weight 1
    """
    import json

    from lrm.pipeline import run_fit

    if data is not None and store is not None:
        raise typer.BadParameter("give either --data or --store, not both")
    if store is not None:
        new_store_flags = [f"--{k}" for k, v in (("codec", codec), ("count", count), ("size", size)) if v != DEFAULTS[k]]
        new_store_flags += [f"--{k}" for k, v in (("frames", frames), ("text", text)) if v is not None]
        if new_store_flags:
            raise typer.BadParameter(f"{', '.join(new_store_flags)} describe a new store; --store {store} has its "
                                     f"own settings (see `lrm store info {store}`)")
    from lrm.fitting import AUGMENTS, LOSSES
    from lrm.labels import LABEL_TRANSFORM_CHOICES

    if loss not in LOSSES:
        raise typer.BadParameter(not_one_of("--loss", loss, LOSSES))
    if label_transform not in LABEL_TRANSFORM_CHOICES:
        raise typer.BadParameter(not_one_of("--label-transform", label_transform, LABEL_TRANSFORM_CHOICES))
    from lrm.datasets.label_names import LABEL_PIXELS

    if label_pixels not in LABEL_PIXELS:
        raise typer.BadParameter(not_one_of("--label-pixels", label_pixels, LABEL_PIXELS))
    if augment not in AUGMENTS:
        raise typer.BadParameter(not_one_of("--augment", augment, AUGMENTS))
    from lrm.models import check_preset

    if model is not None:
        try:
            check_preset(model)  # an unknown name gets the closest one, a removed one its replacement
        except KeyError as error:
            raise typer.BadParameter(error.args[0], param_hint="--model") from None
    options = with_metric_options(parse_options(option), [reward], kind, input)
    job = FitJob(reward=reward, data=data, store=str(store) if store else None, out=str(out) if out else None,
                 label=label, label_pixels=label_pixels, codec=codec, count=count, frames=frames, size=size,
                 text=text, preset=model,
                 steps=steps, warmup_steps=warmup_steps, patience=patience, batch_size=batch_size, lr=lr, loss=loss,
                 label_transform=label_transform,
                 noise_aware=noise_aware, gradient_weight=gradient_weight, augment=augment, seed=seed,
                 reward_options=options or None, device=device)
    if dry_run:
        from lrm.pipeline import resolved_job

        typer.echo(json.dumps(resolved_job(job), indent=2))
        return
    outcome = run_fit(job, progress=not quiet)
    if outcome.fidelity is None:  # another process of a torchrun launch: the first one reports
        return
    m = outcome.fidelity.surrogate
    ridge = outcome.fidelity.baselines["ridge"]
    console.print(f"held-out Spearman {m['spearman']:.3f}, R² {m['r2']:.3f} "
                  f"(ridge baseline {ridge['spearman']:.3f}, {ridge['r2']:.3f}) on {m['n']} samples")
    console.print("(the held-out rows also picked the best checkpoint and when to stop, so these numbers are "
                  "slightly optimistic; `lrm report RUN --store OTHER` judges it on rows nothing was chosen on)")
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text())
    if metrics.get("nan_labels"):
        rows = metrics["nan_labels"] + metrics["n_train"] + metrics["n_val"]
        console.print(f"[yellow]note:[/] {metrics['nan_labels']} of the store's {rows} rows have no finite label (the "
                      "reward failed on them) and were left out of training and validation")
    if gradient_weight > 0:
        cosine = metrics.get("gradient_cosine")
        if cosine is not None:
            console.print(f"held-out gradient cosine {cosine:.3f} (the surrogate's latent gradient against the "
                          "reward's)")
    console.print(f"[bold]{escape(outcome.fidelity.verdict)}[/]")
    for flag in outcome.fidelity.other_warnings():
        console.print(f"[yellow]warning:[/] {escape(flag)}")
    console.print(f"report: {outcome.report}\nsurrogate: {outcome.run_dir / 'model'}")


def report(
    run: Annotated[Path, typer.Argument(help="Run directory of `lrm fit` (holds model/ and config.json), or of "
                                             "`lrm tune` (holds records.json).")],
    store: Annotated[Optional[Path], typer.Option(
        help="Score every row of this other latent store (labelled as the run's label was, if needed); "
             "without it, the run's own held-out rows.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the report (default: RUN itself without "
                                                     "--store, RUN/eval-<store name> with it).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Judge a fitted surrogate again (in distribution or on another store), or rewrite a tuning run's report.

    Without --store, re-scores the run's held-out rows and rewrites RUN/report.html (as `lrm fit`
    wrote it, with this version's verdict). With --store, scores every row of that store. Either
    way the constant and ridge baselines are fitted on the surrogate's own training rows, so all
    three are judged on the same rows. A tuning run (`lrm tune`'s --out) gets its report.html
    written again from its records.json and sample grids.

    Examples:
      lrm report runs/colorfulness
      lrm report runs/brisque --store stores/held-out-photos
      lrm report runs/student/tune-colorfulness-lrm
    """
    from lrm.report_run import report_run
    from lrm.studies.runs import RECORDS

    if (run / RECORDS).is_file():  # a tuning run (`lrm fit` writes no records.json)
        if store is not None or out is not None:
            raise ValueError(f"{run} is a tuning run (it holds {RECORDS}); --store and --out belong to "
                                     "runs of `lrm fit`: run `lrm report RUN` alone")
        from lrm.tuning.report import write_tune_report

        console.print(f"report: {write_tune_report(run)}")
        return

    outcome = report_run(run, store=store, out=out, progress=not quiet)
    m = outcome.fidelity.surrogate
    console.print(f"Spearman {m['spearman']:.3f}, R² {m['r2']:.3f} on {m['n']} samples")
    console.print(f"[bold]{escape(outcome.fidelity.verdict)}[/]")
    for flag in outcome.fidelity.other_warnings():
        console.print(f"[yellow]warning:[/] {escape(flag)}")
    console.print(escape(outcome.scope))
    console.print(f"report: {outcome.out_dir / 'report.html'}")


def predict(
    run: Annotated[Path, typer.Argument(help="Run directory of `lrm fit` (holds model/).")],
    paths: Annotated[list[Path], typer.Argument(help="Images, videos, GIFs or folders of them.")],
    prompt: Annotated[Optional[str], typer.Option(help="One prompt for every file (text surrogates).")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file (.txt/.csv/.jsonl/.tsv), one per media file in sorted order.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write scores to a .csv or .json file.")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames sampled uniformly per video (default: see below).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = DEFAULTS["device"],
) -> None:
    """Score media through codec + surrogate: the fast path, same output as `lrm score`.

    Clips are read at the size the surrogate was fitted on. A surrogate of an image reward
    averages its prediction over a video's frames, as `lrm score` averages the reward: by default
    over the frames `lrm score` would read (every frame). Other surrogates read the frame count
    they were fitted on.
    """
    import torch
    from tqdm import tqdm

    from lrm.cli.score import emit_scores, media_or_exit, prompts_per_file, report_skipped
    from lrm.codecs import from_settings
    from lrm.datasets.media import MediaError, read_clip
    from lrm.models import LatentRewardModel

    if out is not None and out.suffix not in (".csv", ".json"):
        raise typer.BadParameter(f"--out must end in .csv or .json, got {out}")
    model = LatentRewardModel.from_pretrained(run / "model", map_location=device)
    codec = from_settings(model.info.codec_settings).to(device)
    files, skipped = media_or_exit(paths)
    file_prompts = prompts_per_file(files, prompt, prompts)
    text_encoder = None
    if model.text_dim is not None:
        if file_prompts[0] is None:
            raise typer.BadParameter("this surrogate reads text: pass --prompt TEXT or --prompts FILE")
        from lrm.text import load as load_text

        text_encoder = load_text(model.info.text_encoder_id)
    elif file_prompts[0] is not None:  # it would be ignored: the prediction is the same without it
        raise typer.BadParameter("this surrogate reads no text (it imitates a reward of pixels alone): leave out "
                                 "--prompt / --prompts")
    size = model.info.extra.get("size")
    if frames is None:
        spec = model.info.reward_spec or {}
        averages_frames = model.per_frame and spec.get("kind") in ("image", "text-image")
        frames = spec.get("frames") if averages_frames else model.info.extra.get("frames")
    rows = []
    for path, text_prompt in tqdm(list(zip(files, file_prompts)), desc="predict", unit="file"):
        try:
            clip = read_clip(path, frames=frames, size=size)
            with torch.no_grad():
                latents = codec.encode(clip.pixels.unsqueeze(0).to(device))  # (1, T', c, h, w)
                text = mask = None
                if text_encoder is not None:
                    text, mask = text_encoder.encode([text_prompt])
                value = model(latents, text, mask).item()
        except (MediaError, ValueError, RuntimeError) as exc:  # unreadable, or e.g. a still image for a video surrogate
            skipped.append((path, exc.reason if isinstance(exc, MediaError) else str(exc)))
            continue
        if not math.isfinite(value):  # a failed prediction is a skipped item, never a value in the output
            skipped.append((path, f"the surrogate gave {value}, not a score"))
            continue
        rows.append({"path": str(path), "score": value, "frames": clip.pixels.shape[0],
                     "prompt": text_prompt if text_encoder is not None else ""})
    report_skipped(skipped)
    emit_scores(rows, out)
    console.print(f"predicted {len(rows)} file(s), skipped {len(skipped)}")
    if not rows:
        raise typer.Exit(1)
