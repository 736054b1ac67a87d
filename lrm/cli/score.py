"""`lrm rewards` (what is available here) and `lrm score` (pixel rewards of media files)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import textwrap
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lrm.cli.options import check_device, parse_options, with_metric_options

console = Console(stderr=True, emoji=False)  # `m.py:x` is a metric, not the :x: emoji


def register(app: typer.Typer) -> None:
    app.command("rewards")(list_rewards)
    app.command("score")(score)


def list_rewards(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every reward adapter: kind, differentiable, and whether it can run here.

    A reward is ready when its Python dependencies import and its weight files are found
    ($LRM_WEIGHTS, ~/.cache/lrm or the Hugging Face cache). Nothing is downloaded.
    """
    from lrm.rewards import REWARDS, availability

    rows = []
    for name, entry in sorted(REWARDS.items()):
        avail = availability(name)
        missing = [f"pip: {m}" for m in avail.missing_modules] + [f"weights: {w}" for w in avail.missing_weights]
        rows.append({"name": name, "kind": entry.spec.kind, "differentiable": entry.spec.differentiable,
                     "higher_is_better": entry.spec.higher_is_better, "units": entry.spec.units,
                     "ready": avail.ready, "missing": missing, "description": entry.spec.description,
                     "options": entry.options})
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(rewards_text(rows, shutil.get_terminal_size().columns))


def rewards_text(rows: list[dict], width: int) -> str:
    """`lrm rewards` as plain text: one line per reward (52 columns), then what the rewards that are not
    ready still need, wrapped to `width`; the same in a terminal, a pipe or a log file."""
    name_width = max(len(r["name"]) for r in rows)
    line = f"{{:<{name_width}}}  {{:<10}}  {{:<4}}  {{:<6}}  {{}}".format
    lines = [f"{len(rows)} rewards (units, descriptions and options: lrm rewards --json)", "",
             line("name", "kind", "grad", "better", "ready here")]
    for r in rows:
        lines.append(line(r["name"], r["kind"], "yes" if r["differentiable"] else "no",
                          "higher" if r["higher_is_better"] else "lower", "yes" if r["ready"] else "no"))
    not_ready = [r for r in rows if not r["ready"]]
    if not_ready:
        wrap = dict(width=max(width, 40) - 1, break_on_hyphens=False)
        lines += ["", *textwrap.wrap("Not ready here, and what they miss (weight files are looked for in "
                                     "$LRM_WEIGHTS, ~/.cache/lrm and the Hugging Face cache):", **wrap)]
        for r in not_ready:
            kinds = {}  # "pip" / "weights" -> names, from ["weights: a", "weights: b"]
            for item in r["missing"]:
                kind, _, what = item.partition(": ")
                kinds.setdefault(kind, []).append(what)
            needs = "; ".join(f"{kind} {', '.join(names)}" for kind, names in kinds.items())
            lines += textwrap.wrap(f"{r['name']}: {needs}", initial_indent="  ", subsequent_indent="    ", **wrap)
    return "\n".join(lines)


def score(
    reward: Annotated[str, typer.Argument(help="Reward name (see `lrm rewards`) or your metric as file.py:fn / pkg.module:fn.")],
    paths: Annotated[list[Path], typer.Argument(help="Images, videos, GIFs or folders of them.")],
    prompt: Annotated[Optional[str], typer.Option(help="One prompt for every file (text rewards).")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file (.txt/.csv/.jsonl/.tsv), one per media file in sorted order.")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Sample K frames uniformly per video (default: the reward's preferred count, else all; VBench's adapters: all, they pick their own).")] = None,
    stride: Annotated[int, typer.Option(min=1, help="Take every N-th frame before sampling.")] = 1,
    size: Annotated[Optional[int], typer.Option(min=1, help="Resize the short side to S and centre-crop to S x S (default: the reward's preferred size, else native; VBench's adapters: native, they resize as VBench does).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write scores to a .csv or .json file.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Reward option KEY=VALUE, repeatable (e.g. -o model=ViT-B-32).")] = None,
    kind: Annotated[Optional[str], typer.Option(help="For your own metric: image | text-image | video | text-video.")] = None,
    input: Annotated[Optional[str], typer.Option(help="For your own metric: 'tensor' (torch pixels) or 'uint8' (numpy frames).")] = None,
    device: Annotated[str, typer.Option(help="Torch device for the reward, e.g. cpu or cuda.", callback=check_device)] = "cpu",
) -> None:
    """Score media files with a pixel reward.

    Unreadable files are reported by name, skipped and counted; the command exits non-zero
    when nothing could be scored.

    Examples:
      lrm score jpeg-compressibility photos/
      lrm score prompt-color img.png --prompt "a red car"
      lrm score my_metric.py:score clips/ --kind video --input uint8
    """
    from lrm.rewards import load

    if out is not None and out.suffix not in (".csv", ".json"):
        raise typer.BadParameter(f"--out must end in .csv or .json, got {out}")
    rew = load(reward, **with_metric_options(parse_options(option), [reward], kind, input))  # a bad name: no torch
    spec = rew.spec

    import torch
    from tqdm import tqdm

    from lrm.datasets.media import MediaError, read_clip

    files, skipped = media_or_exit(paths)
    file_prompts = prompts_per_file(files, prompt, prompts)
    if spec.needs_text and file_prompts[0] is None:
        raise typer.BadParameter(f"{spec.name} is a {spec.kind} reward: pass --prompt TEXT or --prompts FILE")

    k, s, pick = read_settings(rew, frames, size, stride)
    rows, reads = [], []  # reads: (fps, frame count, frame indices) of each scored file, for frame_rate_notes
    for path, text in tqdm(list(zip(files, file_prompts)), desc=f"score {spec.name}", unit="file"):
        try:
            clip = read_clip(path, frames=k, stride=stride, size=s, pick=pick)
            pixels = clip.pixels.unsqueeze(0).to(device)  # (1, T, 3, H, W)
            with torch.no_grad():
                value = rew(pixels, [text] if spec.needs_text else None).item()
        except Exception as exc:  # noqa: BLE001 - one file's failure (a reward's own library too) is skipped, counted
            skipped.append((path, _reason(exc)))
            continue
        if not math.isfinite(value):  # a failed score is a skipped item, never a value in the output
            why = getattr(rew, "nan_means", None) if math.isnan(value) else None
            skipped.append((path, f"{spec.name} gave {value}, not a score" + (f": {why}" if why else "")))
            continue
        rows.append({"path": str(path), "score": value, "frames": pixels.shape[1], "prompt": text or ""})
        reads.append((clip.fps, clip.num_frames, clip.frame_indices))

    report_skipped(skipped)
    emit_scores(rows, out)
    console.print(escape(f"{spec.name}: scored {len(rows)} file(s), skipped {len(skipped)}"
                         f"{f', wrote {out}' if out else ''}"))
    for note in frame_rate_notes(rew, reads, "file(s)", "leave out --frames and --stride"):
        console.print(escape(note))
    if not rows:
        raise typer.Exit(1)


def prompts_per_file(files: list[Path], prompt: str | None, prompts: Path | None) -> list[str | None]:
    """One prompt per media file: --prompt for all, or the lines of a --prompts file in the files' order."""
    from lrm.datasets.media import read_prompts

    if prompt is not None and prompts is not None:
        raise typer.BadParameter("give either --prompt or --prompts, not both")
    if prompt is not None and not prompt.strip():
        raise typer.BadParameter("--prompt is empty; give the text the media were made for")
    if prompts is None:
        return [prompt] * len(files)
    file_prompts = read_prompts(prompts)
    if len(file_prompts) != len(files):
        raise typer.BadParameter(f"{prompts} holds {len(file_prompts)} prompts for {len(files)} media files; "
                                 "give one per file")
    return file_prompts


def media_or_exit(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """gather_media(paths): the media files and the skipped ones; when there is no media file,
    report what was skipped and raise FileNotFoundError (exit code 2)."""
    from lrm.datasets.media import gather_media

    files, skipped = gather_media(paths)
    if not files:
        report_skipped(skipped)
        raise FileNotFoundError(f"no images or videos found in {', '.join(map(str, paths))}"
                                f"{' (reasons above)' if skipped else ''}; pass images, videos or GIFs, or folders "
                                "holding them")
    return files, skipped


def report_skipped(skipped: list[tuple[Path, str]]) -> None:
    for path, reason in skipped:
        console.print(f"[yellow]skipped[/] {escape(f'{path}: {reason}')}")


def emit_scores(rows: list[dict], out: Path | None) -> None:
    """Print a CSV to stdout, or write .csv / .json atomically."""
    from lrm.io import atomic_write_json, atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "score", "frames", "prompt"], lineterminator="\n")  # not CRLF
    writer.writeheader()
    writer.writerows(rows)
    if out is None:
        typer.echo(buf.getvalue(), nl=False)
    elif out.suffix == ".json":
        atomic_write_json(out, rows)
    else:
        atomic_write_text(out, buf.getvalue())


def _reason(exc: Exception) -> str:
    """Why a file was skipped, in one line: lrm's own errors as they read, others with their type (cv2.error...)."""
    from lrm.datasets.media import MediaError

    if isinstance(exc, MediaError):
        return exc.reason
    return str(exc) if isinstance(exc, (ValueError, RuntimeError)) else f"{type(exc).__name__}: {exc}"


def read_settings(rew, frames: int | None, size: int | None, stride: int = 1):
    """(frames, size, pick) `lrm score` reads each file with: as asked, else the reward's preferred ones
    (spec.frames, spec.size); a reward that reads the whole media (VBench's adapters resize the file's own frames)
    gets them at the file's own size, every frame, or those its `source_frames` picks (viclip-score: VBench's 8)
    unless --frames or --stride say otherwise."""
    if getattr(rew, "reads_whole_media", False):
        asked = frames is not None or stride != 1
        return frames, size, None if asked else getattr(rew, "source_frames", None)
    return (frames if frames is not None else rew.spec.frames), (size if size is not None else rew.spec.size), None


def frame_rate_notes(rew, reads: list[tuple[float | None, int, tuple[int, ...]]], items: str,
                     fix_sampled: str) -> list[str]:
    """Notes for a reward that keeps every `rew.stride`-th frame it is given, its stride set by its fps option
    (dynamic-degree), where VBench keeps every max(1, round(fps / 8))-th frame of the whole file; shared by
    `lrm score` and `lrm label`. `reads`: (the file's frame rate or None, its frame count, the indices of the frames
    the reward was given) per item; `items` names them ("file(s)"); `fix_sampled` says how to give it every frame.
    Items of unknown frame rate, and those on which the reward keeps VBench's frames, give no note."""
    if not hasattr(rew, "target_fps"):
        return []

    def interval(rate: float) -> int:  # every interval-th frame is kept at this frame rate (VBench's rule)
        return max(1, round(rate / rew.target_fps))

    other_rates, sampled = {}, 0  # other_rates: rate of the frames read -> items, where -o fps=rate gives VBench's
    for fps, num_frames, indices in reads:
        indices = [int(i) for i in indices]
        if fps is None:
            continue
        vbench = list(range(0, num_frames, interval(fps)))
        if indices[:: rew.stride] == vbench:
            continue
        step = indices[1] - indices[0] if len(indices) > 1 else 1
        rate = fps / max(step, 1)  # of the frames read, when they are every step-th frame of the file
        if step >= 1 and indices == list(range(0, num_frames, step)) and indices[:: interval(rate)] == vbench:
            other_rates[rate] = other_rates.get(rate, 0) + 1
        else:  # a sample, or a stride no fps option undoes
            sampled += 1
    notes = [f"note: {rew.spec.name} assumed {rew.fps:g} fps, but {count} {items} were read at {rate:g} fps; "
             f"pass -o fps={rate:g} to score them as VBench does" for rate, count in sorted(other_rates.items())]
    if sampled:
        notes.append(f"note: {rew.spec.name} was given other frames than VBench keeps (every round(fps / 8)-th "
                     f"frame of the whole file) for {sampled} {items}, and no fps option gives VBench's; these "
                     f"values are not VBench's ({fix_sampled})")
    return notes
