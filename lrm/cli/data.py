"""`lrm encode` (build a latent store), `lrm label` (add reward columns), `lrm store info | drop-label`.

`lrm encode` and `lrm label` run under torchrun as well: `torchrun --nproc_per_node 2 -m lrm.cli.app
encode ...` splits the shards across processes: gloo for `--device cpu` (also on a GPU machine, so
CPU rewards can label with one process per core), nccl for `--device cuda` (one GPU per process).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lrm.cli.errors import exit_with_message
from lrm.cli.options import check_device, parse_options, standalone_app, with_metric_options
from lrm.configs import EncodeConfig

console = Console(stderr=True, emoji=False)  # `m.py:x` is a metric, not the :x: emoji
ENCODE = {f.name: f.default for f in dataclasses.fields(EncodeConfig)}  # one source of truth: EncodeConfig


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
    app.command("label")(label)
    store_app = typer.Typer(help="Inspect latent stores and remove label columns.", no_args_is_help=True)
    store_app.command("info")(info)
    store_app.command("drop-label")(drop_label)
    app.add_typer(store_app, name="store")


def _fail(exc: Exception) -> None:
    exit_with_message(exc)  # the same one line as the lrm command's other errors (lrm.cli.errors)


def encode(
    data: Annotated[str, typer.Argument(help="procedural:N (procedural:N:simple for the simple world), or a folder (or file) of images / videos.")],
    out: Annotated[Path, typer.Option("--out", help="Store folder (created, or resumed when it exists).")],
    codec: Annotated[str, typer.Option(
        help="Latent space: dct (built in), taef2, pae (lrm's autoencoder of the procedural world), "
             "diffusers:<path>.")] = ENCODE["codec"],
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip (default 8; 1 for a folder of images).")] = ENCODE["frames"],
    size: Annotated[Optional[int], typer.Option(min=1, help=(
        "Square side after short-side resize and centre crop (default: 128 for procedural clips, a media "
        "folder's own short side up to 512)."))] = ENCODE["size"],
    text: Annotated[Optional[str], typer.Option(help="Text encoder (lrm.text) for prompt token embeddings.")] = ENCODE["text"],
    text_length: Annotated[int, typer.Option(min=1, help="Tokens kept per prompt (padded / truncated).")] = ENCODE["text_length"],
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file for a media folder: one per file, sorted file order.")] = ENCODE["prompts"],
    shard_size: Annotated[int, typer.Option(min=1, help="Source items per shard (unit of commit and resume).")] = ENCODE["shard_size"],
    seed: Annotated[int, typer.Option(help="Seed of procedural clips.")] = ENCODE["seed"],
    label: Annotated[Optional[list[str]], typer.Option("--label", help="Reward to label with while encoding (repeatable; NAME=REWARD renames).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per codec / reward call.")] = ENCODE["batch_size"],
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.", callback=check_device)] = ENCODE["device"],
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Encode clips into a latent store: latents, prompts, optional text embeddings, provenance.

    Re-running the same command resumes a killed run without redoing finished shards.

    Examples:
      lrm encode procedural:1024 --out stores/proc --label jpeg-compressibility
      lrm encode photos/ --frames 1 --size 256 --codec taef2 --out stores/photos
    """
    from lrm import distributed
    from lrm.datasets.encoding import encode as run_encode

    config = EncodeConfig(data=data, codec=codec, frames=frames, size=size, text=text, text_length=text_length,
                          prompts=str(prompts) if prompts else None, shard_size=shard_size, seed=seed,
                          labels=tuple(label or ()), batch_size=batch_size, device=device)
    opened = distributed.init_from_env(device)
    try:
        store = run_encode(config, out, progress=not quiet)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    finally:
        if opened:
            distributed.shutdown()
    if distributed.rank() == 0:
        m = store.manifest
        console.print(escape(f"{out}: {len(store)} rows, latents {store.latent_shape} ({store.codec_id}), "
                             f"{m['skipped']['count']} items skipped"))
        print_skipped(console, m, out)
        report_labels(m, list(m["labels"]), out)


SKIPPED_SHOWN = 10  # skipped items (and failed rows) a summary names; manifest.json lists them all


def print_skipped(to: Console, manifest: dict, store: Path) -> None:
    """Name the first skipped source items with their reasons, and count the rest."""
    skipped = manifest["skipped"]
    for item in skipped["items"][:SKIPPED_SHOWN]:
        to.print(f"[yellow]skipped[/] {escape(str(item['source']))}: {escape(str(item['reason']))}", soft_wrap=True)
    if skipped["count"] > SKIPPED_SHOWN:
        to.print(escape(f"... and {skipped['count'] - SKIPPED_SHOWN} more (see {store}/manifest.json)"))


def label(
    store: Annotated[Path, typer.Argument(help="Store folder made by `lrm encode`.")],
    rewards: Annotated[list[str], typer.Argument(help="Rewards (see `lrm rewards`), file.py:fn, or NAME=REWARD.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per reward call.")] = 16,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.", callback=check_device)] = "cpu",
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Reward option KEY=VALUE for every reward, repeatable.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="For your own metric: image | text-image | video | text-video.")] = None,
    input: Annotated[Optional[str], typer.Option(help="For your own metric: tensor or uint8.")] = None,
    media_root: Annotated[Optional[Path], typer.Option(help="Where the store's media files live now, if moved.")] = None,
    pixels: Annotated[str, typer.Option(
        "--pixels", "--label-pixels",
        help="source: score the media (re-read from the sources); decoded: score what the stored latents decode "
             "to, in a column named REWARD@decoded.")] = "source",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Add one label column per reward, computed on the source media or on the decoded latents. Resumable.

    Examples:
      lrm label stores/proc jpeg-compressibility sharpness
      lrm label stores/proc my=metrics.py:score --kind video
      lrm label stores/photos niqe --pixels decoded     # column niqe@decoded
    """
    from lrm import distributed
    from lrm.datasets.label_names import column_name, parse_label
    from lrm.datasets.labelling import add_labels

    options = with_metric_options(parse_options(option), [parse_label(r)[1] for r in rewards], kind, input)
    opened = distributed.init_from_env(device)
    try:
        result = add_labels(store, rewards, batch_size=batch_size, device=device, media_root=media_root,
                            options=options, progress=not quiet, pixels=pixels)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    finally:
        if opened:
            distributed.shutdown()
    if distributed.rank() == 0:
        report_labels(result.manifest, list(dict.fromkeys(column_name(text, pixels) for text in rewards)), store)
        for reference in dict.fromkeys(parse_label(text)[1] for text in rewards):
            for note in frame_rate_notes_of_store(result, reference, options, media_root):
                console.print(escape(note))


def frame_rate_notes_of_store(store, reference: str, options: dict, media_root: Path | None) -> list[str]:
    """`lrm score`'s frame-rate notes (lrm.cli.score.frame_rate_notes) for a reward whose fps option sets which
    frames it keeps (dynamic-degree), on the frames a media store holds per clip; [] for other rewards and for
    procedural stores, and when the media are gone or changed (the labels are written already: the notes are
    advice). Reads each file's frame rate and length (one decoded frame per file)."""
    import numpy as np

    from lrm.cli.score import frame_rate_notes
    from lrm.datasets.media import read_clip
    from lrm.datasets.sources import source_from_spec
    from lrm.rewards import REWARDS, load

    entry = REWARDS.get(reference)
    if entry is None or "fps" not in entry.options or store.manifest["source"]["kind"] != "media":
        return []
    try:
        source = source_from_spec(store.manifest["source"], media_root)
    except (OSError, ValueError):  # moved or changed media (StoreError is a ValueError): no frame rates to read
        return []
    reads = []
    for row in store.rows():
        try:
            clip = read_clip(source.describe(row["unit"]), pick=lambda n: np.zeros(1, dtype=np.int64))  # 1st frame
        except ValueError:  # MediaError: labelling named it already
            continue
        reads.append((clip.fps, clip.num_frames, row["frame_indices"]))
    return frame_rate_notes(load(reference, **options), reads, "clip(s)",
                            "a store keeps the frames it was encoded with; score the files themselves with `lrm score`")


def report_labels(manifest: dict, names: list[str], store: Path) -> None:
    """Print each column's count, mean and NaN, naming the rows it failed on; exit 2 when a column
    failed on every row (an all-NaN column is no label)."""
    from lrm.datasets.label_names import most_common_failure

    failed = []
    for name in names:
        entry = manifest["labels"][name]
        s = entry["stats"]
        console.print(escape(f"{name}: {s['count']} values, mean {_num(s['mean'])}, {s['nan']} NaN"))
        failure = most_common_failure(entry)
        if failure:
            console.print(escape(f"  {failure}"), highlight=False)
            print_bad_rows(console, entry, store)
        if s["count"] == 0 and s["nan"] > 0:
            failed.append(name)
    if failed:
        _fail(ValueError(f"label {', '.join(failed)} of {store} failed on every row (reason above); fix the cause "
                         "(e.g. larger frames, the right --kind/-o options), remove the column with "
                         f"`lrm store drop-label {store} {' '.join(failed)}` and label again"))


def print_bad_rows(to: Console, entry: dict, store: Path) -> None:
    """Name the first rows a reward failed on (NaN in the column) with their source and reason."""
    bad = entry["bad"]
    for item in bad["items"][:SKIPPED_SHOWN]:
        to.print(escape(f"  row {item['row']} ({item['source']}): {item['reason']}"), highlight=False, soft_wrap=True)
    if bad["count"] > SKIPPED_SHOWN:
        to.print(escape(f"  ... and {bad['count'] - SKIPPED_SHOWN} more (see {store}/manifest.json)"), highlight=False)


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def drop_label(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    names: Annotated[list[str], typer.Argument(help="Label columns to remove (see `lrm store info`).")],
) -> None:
    """Remove label columns, e.g. one computed with the wrong options, so `lrm label` can compute it again.

    Latents and other columns are untouched. Example:
      lrm store drop-label stores/photos niqe@decoded
    """
    from lrm.datasets.store import StoreError, drop_labels

    try:
        drop_labels(store, names)  # checks the store first; damage inside the dropped columns is what it repairs
    except (FileNotFoundError, KeyError, StoreError) as exc:
        _fail(exc)
    console.print(escape(f"{store}: removed label {', '.join(dict.fromkeys(names))}"))


def info(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
    val_fraction: Annotated[float, typer.Option(help="Validation fraction of the group split shown.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the group split shown.")] = 0,
) -> None:
    """Shapes, codec, text, source, labels with statistics, group split and skipped items of a store."""
    from lrm.datasets.store import LatentStore, StoreError

    try:
        s = LatentStore.open(store)
    except (FileNotFoundError, StoreError) as exc:
        _fail(exc)
    m = s.manifest
    train, val = s.split(val_fraction, seed)
    groups = len(set(s.groups.tolist()))
    summary = {
        "rows": len(s), "complete": s.complete, "shards": f"{len(m['shards'])}/{m['num_shards']}",
        "codec": s.codec_id, "codec_settings": s.codec_settings, "latent_shape": list(s.latent_shape),
        "text": m["text"], "source": m["source"]["description"], "groups": groups,
        "split": {"val_fraction": val_fraction, "seed": seed, "train": len(train), "val": len(val)},
        "skipped": m["skipped"]["count"],
        "labels": {k: {**v["stats"], "pixels": s.label_pixels(k), "bad": v["bad"]["count"],
                       "complete": v["complete"]}
                   for k, v in m["labels"].items()},
    }
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    out = Console(emoji=False)
    head = Table(title=f"latent store {store}", show_header=False)
    head.add_column("field")
    head.add_column("value")
    text = m["text"]
    for field, value in (
        ("rows", f"{len(s)}" + ("" if s.complete else f"  [yellow](incomplete: {summary['shards']} shards; "
                                                      "re-run the same lrm encode)[/]")),
        ("latents", f"{tuple(s.latent_shape)} float32 per row"),
        ("codec", f"{s.codec_id}  {s.codec_settings}"),
        ("text", f"{text['encoder']}: ({text['length']}, {text['dim']}) per row" if text else "none"),
        ("source", m["source"]["description"]),
        ("shards", f"{summary['shards']} of {m['shard_size']} items"),
        ("groups", f"{groups}; split val_fraction={val_fraction} seed={seed}: "
                   f"{len(train)} train / {len(val)} val rows"),
        ("skipped", f"{m['skipped']['count']} items"),
    ):
        head.add_row(field, value)
    out.print(head)
    if m["labels"]:
        table = Table(title="labels", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        table.add_column("label", no_wrap=True)
        for column in ("pixels", "count", "mean", "std", "min", "max", "NaN", "done"):
            table.add_column(column, overflow="fold")
        for name, entry in m["labels"].items():
            st = entry["stats"]
            shown = name if entry["reward"] == name else f"{name} ({entry['reward']})"
            table.add_row(shown, s.label_pixels(name), str(st["count"]), _num(st["mean"]), _num(st["std"]),
                          _num(st["min"]), _num(st["max"]), str(st["nan"]),
                          "yes" if entry["complete"] else f"{entry['shards']} shards")
        out.print(table)
    print_skipped(out, m, store)



if __name__ == "__main__":
    standalone_app(register)()
