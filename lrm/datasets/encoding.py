"""Encode a source into a latent store: sources -> pixels -> latents (+ text embeddings, + labels
computed from the same pixels) -> shards committed through lrm.datasets.store.

Shard i holds units [i * shard_size, (i + 1) * shard_size) of the source, so any process can produce
any shard alone: under torchrun, rank r handles the shards with index % world_size == r, and rank 0
merges the commit records into the manifest after a barrier.

    store = encode(EncodeConfig("photos/", codec="taef2"), "stores/photos")
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lrm import distributed
from lrm.codecs.base import Codec
from lrm.configs import EncodeConfig  # noqa: F401 - lrm.datasets.encoding.EncodeConfig
from lrm.datasets import store as st
from lrm.datasets.label_names import check_distinct_columns
from lrm.datasets.labelling import (bad_records, batches, check_clip_frames, label_shards, load_labeler, progress_bar,
                                    score_batch, source_reader)
from lrm.datasets.sources import Source, make_source

def _fit_length(emb: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with zeros / truncate token axis to `length`: (B, L', D) -> (B, L, D), (B, L') -> (B, L)."""
    b, l, d = emb.shape
    if l >= length:
        return emb[:, :length], mask[:, :length].bool()
    pad = length - l
    return (torch.cat([emb, emb.new_zeros(b, pad, d)], 1),
            torch.cat([mask.bool(), mask.new_zeros(b, pad).bool()], 1))



def available_memory_bytes() -> int | None:
    """Memory the system can give this process now: /proc/meminfo's MemAvailable on Linux, the physical
    memory elsewhere; None where neither can be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def refuse_oversized_batch(frames: int, size: int, batch_size: int) -> None:
    """ValueError, before any work, when one batch's float32 pixels alone (a lower bound on what encoding it
    needs) would not fit in the memory available; e.g. --size 100000 would otherwise die out of memory."""
    need = batch_size * frames * 3 * size * size * 4  # bytes of (B, T, 3, S, S) float32
    free = available_memory_bytes()
    if free is not None and need > free:
        raise ValueError(f"--size {size}: one batch of {batch_size} clip(s) of {frames} frame(s) at {size}x{size} "
                         f"holds {need / 2**30:,.1f} GiB of pixels, more than the {free / 2**30:.1f} GiB of memory "
                         f"available; lower --size (or --frames, --batch-size)")


def check_source(config: EncodeConfig, preferred_size: int | None = None) -> None:
    """What encode(config) refuses before it encodes anything (an unknown codec; data that are no clips, an empty or
    missing folder), for a dry run; preferred_size: the reward's, as lrm fit passes it."""
    from lrm import codecs

    make_source(config, codecs.spatial_factor(config.codec), preferred_size)


def shard_units(index: int, shard_size: int, units: int) -> tuple[int, int]:
    return index * shard_size, min((index + 1) * shard_size, units)


def encode(config: EncodeConfig, out: str | Path, codec: Codec | None = None, progress: bool = True) -> st.LatentStore:
    """Encode the source of `config` into the store at `out`, resuming a killed run.

    `codec`: an already built codec (e.g. with non-default options) instead of `config.codec`.
    Under torchrun (process group open, see lrm.distributed) each rank encodes its own shards.
    """
    out = Path(out)
    if config.shard_size < 1 or config.batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    from lrm import codecs

    # the source first: a bad one is refused before a codec is built (pae trains itself on first use: minutes)
    source = make_source(config, codec.spatial_factor if codec is not None else codecs.spatial_factor(config.codec))
    if config.text and getattr(source, "prompt_list", ...) is None:  # a media folder without a prompts file
        raise ValueError(f"--text {config.text} embeds each item's prompt, but the media of {config.data} have no "
                         "prompts: pass --prompts FILE (one prompt per media file, in sorted file order; for lrm "
                         f"fit, encode with `lrm encode {config.data} --text {config.text} --prompts FILE` and pass "
                         "--store)")
    if codec is None:
        options = {"progress": progress and distributed.rank() == 0} if config.codec == "pae" else {}
        codec = codecs.load(config.codec, **options)
    codec = codec.to(config.device).eval()
    refuse_oversized_batch(source.frames, source.size, min(config.batch_size, len(source)))
    if config.size is None and progress and distributed.rank() == 0:  # the log: which size, and why
        tqdm.write(f"{config.data}: frames of {source.frame_size.reason}", file=sys.stderr)
    text_encoder, text_header = None, None
    if config.text:
        from lrm import text as lrm_text

        text_encoder = lrm_text.load(config.text)
        if hasattr(text_encoder, "to"):
            text_encoder = text_encoder.to(config.device)
        with torch.no_grad():
            probe, _ = text_encoder.encode(["a"])  # (1, L', D)
        text_header = {"encoder": text_encoder.id, "length": config.text_length, "dim": int(probe.shape[-1])}
    check_distinct_columns(config.labels, "source")
    labelers = [load_labeler(text) for text in config.labels]
    for _, reward, _ in labelers:
        check_clip_frames(reward.spec, source.frames, out, reward)

    num_shards = math.ceil(len(source) / config.shard_size)
    header = _jsonable({"format_version": st.FORMAT_VERSION, "codec": codec.settings(),
                        "latent_shape": list(codec.latent_shape(source.frames, source.size, source.size)),
                        "text": text_header, "source": source.spec, "shard_size": config.shard_size,
                        "units": len(source), "num_shards": num_shards})
    rank, world = distributed.rank(), distributed.world_size()
    show = progress and rank == 0
    if rank == 0:
        drop_empty_store(out, header)
    distributed.barrier()
    # Every rank checks an existing store first (so all fail alike), rank 0 creates it, then all re-check.
    st.create_or_check(out, header, write=False)
    for name, _, info in labelers:
        st.check_label_info(out, name, info)
    if rank == 0:
        st.create_or_check(out, header, write=True)
        for name, _, info in labelers:
            st.write_label_info(out, name, info)
    distributed.barrier()
    st.create_or_check(out, header, write=False)

    mine = distributed.owned(range(num_shards), rank, world)
    st.clean_orphans(out, mine, manifest=rank == 0)
    expected = (source.frames, 3, source.size, source.size)
    for index in progress_bar(mine, f"encode {out.name}", show):
        if st.shard_record(out, index) is None:
            _encode_shard(out, index, source, config, codec, text_encoder, text_header, labelers, expected)
        if rank == 0:
            st.refresh_manifest(out)
    distributed.barrier()
    if labelers:  # shards committed by an earlier run before their labels were
        label_shards(out, source_reader(source), [(n, r) for n, r, _ in labelers], mine, config.batch_size,
                     config.device, show)
    distributed.barrier()
    if rank == 0:
        st.refresh_manifest(out)
    distributed.barrier()
    store = st.LatentStore.open(out)
    st.check_has_rows(store)  # every item unreadable: say which and why, here rather than at labelling
    return store


def drop_empty_store(out: Path, header: dict) -> bool:
    """Remove the store at `out` when it holds no row and was created with other settings than `header`: a run
    whose every item failed (e.g. --text without --prompts) left nothing to resume, and its settings refused the
    corrected command. A store with rows is left for create_or_check to compare. -> whether it was removed."""
    import shutil

    manifest_path = out / st.MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    rows = manifest.get("rows") if isinstance(manifest, dict) else None
    if rows != 0 or any(shard.get("rows") for shard in manifest.get("shards", [])):
        return False
    for record in (out / "shards").glob("shard-*.json"):  # committed after the manifest's last refresh
        try:
            if json.loads(record.read_text()).get("rows"):
                return False
        except (OSError, ValueError, AttributeError):
            return False
    try:
        st.check_header(manifest, header, out)
        return False  # the same settings: resume it as usual
    except st.StoreError:
        pass
    manifest_path.unlink()
    for folder in ("shards", "labels"):
        shutil.rmtree(out / folder, ignore_errors=True)
    return True


def _read_units(source: Source, units: list[int], expected: tuple, needs_prompt: bool, index: int):
    """Clips and provenance rows of `units`; unreadable or misshapen items go to `skipped` instead."""
    clips, rows, skipped = [], [], []
    for unit in units:
        try:
            clip = source.read(unit)
            if clip.pixels.shape[0] < expected[0]:
                raise ValueError(f"{clip.pixels.shape[0]} frames, fewer than the {expected[0]} of each clip of this "
                                 f"store; encode into another store with --frames {clip.pixels.shape[0]} or fewer")
            if tuple(clip.pixels.shape) != expected:
                raise ValueError(f"pixels {tuple(clip.pixels.shape)}, the store holds {expected}; "
                                 "encode clips of another length into another store (--frames)")
            if not torch.isfinite(clip.pixels).all():
                raise ValueError("pixels contain NaN or Inf")
            prompt = source.prompt(unit, clip)
            if needs_prompt and prompt is None:
                raise ValueError("no prompt for this item, but the store holds text embeddings")
        except Exception as exc:
            skipped.append({"shard": index, "unit": unit, "source": source.describe(unit),
                            "reason": f"{type(exc).__name__}: {exc}"})
            continue
        clips.append(clip)
        rows.append({"unit": unit, "source": clip.source, "frame_indices": list(clip.frame_indices),
                     "group": source.group(unit, clip), "prompt": prompt})
    return clips, rows, skipped


def _encode_shard(out: Path, index: int, source: Source, config: EncodeConfig, codec: Codec, text_encoder,
                  text_header: dict | None, labelers: list, expected: tuple) -> None:
    """Read, encode and commit shard `index`; with labelers, commit its label shards from the same pixels."""
    start, stop = shard_units(index, config.shard_size, len(source))
    rows, skipped, latents, texts, masks = [], [], [], [], []
    values = {name: [] for name, _, _ in labelers}
    bad = {name: [] for name, _, _ in labelers}
    for units in batches(list(range(start, stop)), config.batch_size):
        clips, batch_rows, batch_skipped = _read_units(source, units, expected, text_encoder is not None, index)
        skipped.extend(batch_skipped)
        if not clips:
            continue
        for row in batch_rows:
            row["_pos"] = len(rows)  # position in the shard, for bad-item records
            rows.append(row)
        pixels = torch.stack([c.pixels for c in clips]).to(config.device)  # (b, T, 3, H, W)
        prompts = [r["prompt"] for r in batch_rows]
        with torch.no_grad():
            latents.append(codec.encode(pixels).float().cpu())  # (b, T', c, h, w)
            if text_encoder is not None:
                emb, mask = text_encoder.encode(prompts)  # (b, L', D), (b, L')
                emb, mask = _fit_length(emb.float().cpu(), mask.cpu(), config.text_length)
                texts.append(emb)
                masks.append(mask)
        for name, reward, _ in labelers:
            v, b = score_batch(reward, pixels, prompts, batch_rows)
            values[name].append(v)
            bad[name].extend(b)
    latent_shape = codec.latent_shape(expected[0], expected[2], expected[3])
    all_latents = torch.cat(latents) if latents else torch.zeros((0, *latent_shape))
    text = mask = None
    if text_header is not None:
        length, dim = text_header["length"], text_header["dim"]
        text = torch.cat(texts) if texts else torch.zeros((0, length, dim))
        mask = torch.cat(masks) if masks else torch.zeros((0, length), dtype=torch.bool)
    clean_rows = [{k: v for k, v in r.items() if k != "_pos"} for r in rows]
    st.commit_shard(out, index, (start, stop), all_latents, clean_rows, skipped, text, mask)
    for name, _, _ in labelers:
        v = np.concatenate(values[name]) if values[name] else np.zeros(0, np.float32)
        st.commit_label_shard(out, name, index, v, bad_records(bad[name], index))


def _jsonable(obj):
    """`obj` as it reads back from JSON (tuples become lists), so headers compare equal to manifests."""
    return json.loads(json.dumps(obj))

