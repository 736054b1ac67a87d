"""Label a store: recompute each row's pixels (the media re-read from its source reference, or the
stored latents decoded), score them with a reward, and commit one label column per reward, shard by
shard and resumably. Under torchrun each rank labels the shards with index % world_size == rank.
A reward that fails or returns NaN/Inf for an item stores NaN there and records the item.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from lrm import distributed
from lrm.codecs.base import Codec
from lrm.datasets import store as st
from lrm.datasets.label_names import LABEL_PIXELS, check_distinct_columns, column_name, parse_label
from lrm.datasets.sources import Source, source_from_spec
from lrm.names import not_one_of


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def progress_bar(iterable, desc: str, enabled: bool, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)


def bad_records(bad: list[dict], index: int) -> list[dict]:
    """Bad-item records of shard `index` as the manifest keeps them."""
    return [{"shard": index, **b} for b in bad]


# ---------------------------------------------------------------- rewards

def load_labeler(text: str, options: dict | None = None, pixels: str = "source"):
    """(label name, reward, label info for labels/<name>/label.json); options go to the reward factory.

    A "decoded" label is named "REWARD@decoded" unless "NAME=REWARD" names it."""
    from lrm.rewards import load
    from lrm.rewards.custom import metric_identity

    if pixels not in LABEL_PIXELS:
        raise ValueError(not_one_of("label pixels (--pixels)", pixels, LABEL_PIXELS))
    name, reference = column_name(text, pixels), parse_label(text)[1]
    reward = load(reference, **(options or {}))
    info = {"reward": reference, "options": options or {}, "spec": dataclasses.asdict(reward.spec), "pixels": pixels}
    metric = metric_identity(reference)  # a user metric's code: what its column is matched by
    return name, reward, {**info, "metric": metric} if metric else info


def check_clip_frames(spec, frames: int | None, store: str | Path, reward=None) -> None:
    """Refuse, before any labelling, a video reward on a store of single frames (`frames` per clip), or on clips
    shorter than the built `reward` needs (its `min_frames`: motion-smoothness 3, dynamic-degree's at its fps): it
    would fail on every row."""
    if spec.is_video and frames == 1:
        raise ValueError(f"{spec.name} scores clips ({spec.kind}), but {store} holds 1 frame per clip; encode a "
                         "store of clips (lrm encode ... --frames 8) and label that")
    needed = getattr(reward, "min_frames", None)
    if frames is not None and needed is not None and frames < needed:
        raise ValueError(f"{spec.name} needs clips of at least {needed} frames ({reward.needs_frames_because}), but "
                         f"{store} holds {frames} per clip; encode a store of longer clips (lrm encode ... --frames "
                         f"{needed}) and label that")


def score_batch(reward, pixels: torch.Tensor, prompts: list[str | None],
                rows: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Reward values (b,) with NaN for failures, plus a bad-item record for each NaN.

    A failing batch is retried item by item, so one bad clip does not take its neighbours down.
    """
    needs_text = reward.spec.needs_text
    if needs_text and any(p is None for p in prompts):
        missing = next(r for r, p in zip(rows, prompts) if p is None)
        raise ValueError(f"reward {reward.spec.name} needs prompts, but {missing['source']} has none; "
                         "encode with --prompts FILE or use procedural captions")
    try:
        with torch.no_grad():
            values = reward(pixels, prompts if needs_text else None).float().cpu().numpy()
        reasons = [None] * len(rows)
    except Exception:
        values, reasons = np.full(len(rows), np.nan, np.float32), []
        for i in range(len(rows)):
            try:
                with torch.no_grad():
                    one = reward(pixels[i:i + 1], prompts[i:i + 1] if needs_text else None)
                values[i] = float(one.float().cpu()[0])
                reasons.append(None)
            except Exception as exc:
                reasons.append(f"{type(exc).__name__}: {exc}")
    bad = []
    for i, row in enumerate(rows):
        if reasons[i] is None and not np.isfinite(values[i]):
            why = getattr(reward, "nan_means", None) if np.isnan(values[i]) else None
            reasons[i] = f"non-finite reward value {float(values[i])}" + (f" ({why})" if why else "")
        if reasons[i] is not None:
            values[i] = np.nan
            bad.append({"row_in_shard": row["_pos"], "unit": row["unit"], "source": row["source"],
                        "reason": reasons[i]})
    return values.astype(np.float32), bad


# ---------------------------------------------------------------- pixels

# A reader gives the pixels a label scores for a batch of one shard's rows:
# (shard index, rows) -> ((b, T, 3, H, W) pixels of the readable rows or None, those rows, bad-item records).
PixelReader = Callable[[int, list[dict]], tuple[torch.Tensor | None, list[dict], list[dict]]]


def source_reader(source: Source) -> PixelReader:
    """Pixels recomputed from each row's source reference; a row whose media fails is a bad item."""
    def read(index: int, batch: list[dict]):
        pixels, ok_rows, bad = [], [], []
        for row in batch:
            try:
                pixels.append(source.reread(row))
                ok_rows.append(row)
            except Exception as exc:
                bad.append({"row_in_shard": row["_pos"], "unit": row["unit"], "source": row["source"],
                            "reason": f"cannot recompute pixels: {type(exc).__name__}: {exc}"})
        return (torch.stack(pixels) if pixels else None), ok_rows, bad
    return read


def decoded_reader(root: Path, codec: Codec, device: str) -> PixelReader:
    """What the stored latents decode to, clamped to [0, 1]: the pixels a generator is scored on."""
    def read(index: int, batch: list[dict]):
        lo, hi = batch[0]["_pos"], batch[-1]["_pos"] + 1  # a batch is a run of consecutive rows
        latents = st.read_shard_latents(root, index, lo, hi)  # (b, T', c, h, w)
        with torch.no_grad():
            return codec.decode(latents.to(device)).clamp(0, 1), batch, []
    return read


# ---------------------------------------------------------------- columns

def label_shards(root: Path, read: PixelReader, labelers: list[tuple[str, object]], shards: list[int],
                 batch_size: int, device: str, show: bool, on_commit: Callable[[], None] | None = None) -> None:
    """Compute and commit every missing label shard among `shards` from the pixels `read` gives.

    Each batch is read (media re-read or latents decoded) once for all the rewards still missing there."""
    def missing(index: int) -> list[tuple[str, object]]:
        return [(name, reward) for name, reward in labelers if not st.label_committed(root, name, index)]

    todo = [i for i in shards if st.shard_record(root, i) is not None and missing(i)]
    names = ", ".join(name for name, _ in labelers)
    for index in progress_bar(todo, f"label {names}", show and bool(todo)):
        rows = [{**row, "_pos": i} for i, row in enumerate(st.read_shard_rows(root, index))]
        rewards = missing(index)
        values = {name: [] for name, _ in rewards}
        bad = {name: [] for name, _ in rewards}
        for batch in batches(rows, batch_size):
            pixels, ok_rows, unreadable = read(index, batch)
            positions = [r["_pos"] - batch[0]["_pos"] for r in ok_rows]
            for name, reward in rewards:
                v = np.full(len(batch), np.nan, np.float32)
                bad[name].extend(unreadable)
                if ok_rows:
                    scored, scored_bad = score_batch(reward, pixels.to(device), [r["prompt"] for r in ok_rows],
                                                     ok_rows)
                    v[positions] = scored
                    bad[name].extend(scored_bad)
                values[name].append(v)
        for name, _ in rewards:
            bad[name].sort(key=lambda b: b["row_in_shard"])
            v = np.concatenate(values[name]) if values[name] else np.zeros(0, np.float32)
            st.commit_label_shard(root, name, index, v, bad_records(bad[name], index))
        if on_commit is not None:
            on_commit()


def add_labels(path: str | Path, rewards: list[str], batch_size: int = 16, device: str = "cpu",
               media_root: str | Path | None = None, options: dict | None = None,
               progress: bool = True, pixels: str = "source") -> st.LatentStore:
    """Add one label column per reward ("REWARD" or "NAME=REWARD") to a complete store, resumably.

    pixels="source" scores the media itself, recomputed from each row's source reference.
    pixels="decoded" scores what the stored latents decode to with the store's codec: the reward a
    generator's latents are judged by, a function of the latents however lossy the codec is. Such a
    column is named "REWARD@decoded" unless "NAME=REWARD" names it.
    A reward that fails or returns NaN/Inf for an item stores NaN there and records the item in the
    manifest. `options` (KEY -> value) go to every reward's factory; `media_root` points at moved
    media files. Under torchrun each rank labels the shards with index % world_size == rank.
    """
    path = Path(path)
    store = st.LatentStore.open(path)
    if not store.complete:
        raise st.StoreError(f"{path} is not completely encoded ({len(store.manifest['shards'])} of "
                            f"{store.manifest['num_shards']} shards); finish it by re-running the same `lrm encode`")
    if not rewards:
        raise ValueError("name at least one reward to label with")
    check_distinct_columns(rewards, pixels)
    labelers = [load_labeler(text, options, pixels) for text in rewards]
    for _, reward, _ in labelers:
        check_clip_frames(reward.spec, store.manifest["source"].get("frames"), store.path, reward)
    if pixels == "decoded":
        read = decoded_reader(path, store.codec().to(device).eval(), device)
    else:
        read = source_reader(source_from_spec(store.manifest["source"], media_root))
    rank, world = distributed.rank(), distributed.world_size()
    for name, _, info in labelers:  # every process refuses a column computed otherwise, not the first one alone
        st.check_label_info(path, name, info)
    if rank == 0:
        for name, _, info in labelers:
            st.write_label_info(path, name, info)
    distributed.barrier()
    mine = distributed.owned(range(store.manifest["num_shards"]), rank, world)
    st.clean_orphans(path, mine, manifest=rank == 0)
    refresh = (lambda: st.refresh_manifest(path)) if rank == 0 else None
    label_shards(path, read, [(n, r) for n, r, _ in labelers], mine, batch_size, device,
                 progress and rank == 0, refresh)
    distributed.barrier()
    if rank == 0:
        st.refresh_manifest(path)
    distributed.barrier()
    return st.LatentStore.open(path)
