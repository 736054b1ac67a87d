"""Build and extend latent stores: `encode` (sources -> pixels -> latents + text -> store) and
`add_labels` (store -> recomputed pixels -> reward -> one label column per reward).

A *source* is a deterministic sequence of units (procedural clip indices, or media files in
sorted order); each unit gives one clip. Shard i holds units [i * shard_size, (i + 1) * shard_size),
so any process can produce any shard alone: under torchrun, rank r handles the shards with
index % world_size == r, and rank 0 merges the commit records into the manifest after a barrier.
Pixels are never stored: they are recomputed from the source reference kept in each row
(procedural: seed, config and index; files: path, frame indices, resize/crop size).

Groups of media files (the key that keeps related rows on one side of a split):
  1. a file named "<prefix>__<rest>" (DreamBooth's "subject__index") -> "<folder>/<prefix>";
  2. else a file inside a sub-folder of the data folder -> that sub-folder (e.g. one video's clips);
  3. else the file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from lrm import distributed
from lrm.codecs.base import Codec
from lrm.datasets import store as st
from lrm.datasets.clip import Clip

PROCEDURAL_PREFIX = "procedural:"
LABEL_PIXELS = ("source", "decoded")  # what a label scores: the media itself, or what the latents decode to
DECODED_SUFFIX = "@decoded"  # default name of a decoded label column: "niqe@decoded"


@dataclass(frozen=True)
class EncodeConfig:
    data: str  # "procedural:N" (N seeded clips) or a folder / file of images and videos
    codec: str = "dct"  # lrm.codecs registry name (or "diffusers:<path>")
    frames: int | None = None  # frames per clip; None: 8 for procedural clips and videos, 1 for images
    size: int = 128  # square side in pixels after short-side resize and centre crop (as `lrm fit`'s default)
    text: str | None = None  # lrm.text encoder name for token embeddings; None stores no text
    text_length: int = 77  # tokens kept per prompt (padded or truncated), fixed for the store
    prompts: str | None = None  # prompts file for a media folder: one prompt per file, in sorted file order
    shard_size: int = 256  # units per shard: the unit of atomic commit, resume and rank sharding
    seed: int = 0  # seed of procedural clips
    labels: tuple[str, ...] = ()  # rewards computed at encode time (same as `lrm label` afterwards)
    batch_size: int = 16  # clips per codec / text / reward call
    device: str = "cpu"  # where the codec, text encoder and rewards run


# ---------------------------------------------------------------- sources

class Source:
    """A deterministic sequence of units, each read as one Clip, and re-readable from a row."""

    spec: dict  # JSON description kept in the manifest; `source_from_spec` rebuilds the source
    frames: int  # T of every clip
    size: int  # H = W of every clip

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, unit: int) -> Clip:
        raise NotImplementedError

    def prompt(self, unit: int, clip: Clip) -> str | None:
        return clip.caption

    def group(self, unit: int, clip: Clip) -> str:
        return clip.group

    def describe(self, unit: int) -> str:
        """Names unit `unit` in skipped-item logs."""
        raise NotImplementedError

    def reread(self, row: dict) -> torch.Tensor:
        """The pixels (T, 3, H, W) of a stored row, recomputed from its reference."""
        raise NotImplementedError


class ProceduralSource(Source):
    def __init__(self, count: int, seed: int, frames: int, size: int):
        from lrm.datasets.procedural import ProceduralConfig

        if count < 1:
            raise ValueError(f"procedural:N needs N >= 1, got {count}")
        self.count, self.frames, self.size = count, frames, size
        self.config = ProceduralConfig(seed=seed, frames=frames, size=size)
        settings = json.loads(json.dumps(dataclasses.asdict(self.config)))  # tuples -> lists, as stored
        described = ",".join(f"{k}={settings[k]}" for k in ("seed", "frames", "size"))
        self.spec = {"kind": "procedural", "count": count, "frames": frames, "size": size, "config": settings,
                     "description": f"procedural:{described}"}

    def __len__(self) -> int:
        return self.count

    def read(self, unit: int) -> Clip:
        from lrm.datasets.procedural import make_clip

        return make_clip(self.config, unit)

    def describe(self, unit: int) -> str:
        return f"procedural:seed={self.config.seed}:index={unit}"

    def reread(self, row: dict) -> torch.Tensor:
        return self.read(row["unit"]).pixels


def file_group(path: Path, root: Path) -> str:
    """Split group of a media file (see the module docstring for the rule)."""
    relative = path.relative_to(root) if path != root else Path(path.name)
    folder = relative.parent.as_posix()
    if "__" in path.stem:
        prefix = path.stem.split("__", 1)[0]
        return prefix if folder == "." else f"{folder}/{prefix}"
    if folder != ".":
        return folder
    return relative.as_posix()


class MediaSource(Source):
    def __init__(self, root: str | Path, frames: int | None, size: int, prompts: str | None = None,
                 expected_listing: str | None = None):
        from lrm.datasets import media

        self.root = Path(root).resolve()
        files = media.list_media(self.root)
        if not files:
            raise FileNotFoundError(f"no images or videos under {self.root}")
        self.files = [p.relative_to(self.root).as_posix() if p != self.root else p.name for p in files]
        listing = hashlib.sha256("\n".join(self.files).encode()).hexdigest()[:16]
        if expected_listing is not None and listing != expected_listing:
            raise st.StoreError(f"the media files under {self.root} are not the files the store was encoded from "
                                f"({len(files)} files now); restore them, or point --media-root at a copy")
        kinds = {media.media_kind(p) for p in files}
        self.frames = frames if frames is not None else (1 if kinds == {"image"} else 8)
        self.size = size
        self.prompt_list = None
        if prompts is not None:
            self.prompt_list = media.read_prompts(prompts)
            if len(self.prompt_list) != len(files):
                raise ValueError(
                    f"{prompts} has {len(self.prompt_list)} prompts but {self.root} has {len(files)} media files; "
                    "give one prompt per file, in sorted file order"
                )
        self.spec = {"kind": "media", "root": str(self.root), "frames": self.frames, "size": size,
                     "files": len(files), "listing_sha256": listing,
                     "prompts": str(Path(prompts).resolve()) if prompts else None,
                     "description": f"media:{self.root},frames={self.frames},size={size}"}

    def __len__(self) -> int:
        return len(self.files)

    def _path(self, relative: str) -> Path:
        return self.root / relative if self.root.is_dir() else self.root

    def read(self, unit: int) -> Clip:
        from lrm.datasets.media import read_clip

        return read_clip(self._path(self.files[unit]), frames=self.frames, size=self.size)

    def describe(self, unit: int) -> str:
        return str(self._path(self.files[unit]))

    def prompt(self, unit: int, clip: Clip) -> str | None:
        return self.prompt_list[unit] if self.prompt_list is not None else None

    def group(self, unit: int, clip: Clip) -> str:
        return file_group(self._path(self.files[unit]), self.root)

    def reread(self, row: dict) -> torch.Tensor:
        clip = self.read(row["unit"])
        if list(clip.frame_indices) != row["frame_indices"]:
            raise ValueError(f"{row['source']}: frames {list(clip.frame_indices)} differ from the stored "
                             f"{row['frame_indices']}; the file changed since encoding")
        return clip.pixels


def make_source(config: EncodeConfig) -> Source:
    data = config.data
    if data.startswith(PROCEDURAL_PREFIX):
        count = data[len(PROCEDURAL_PREFIX):]
        if not count.isdigit():
            raise ValueError(f"{data!r}: expected procedural:N with N a positive integer, e.g. procedural:256")
        if config.prompts:
            raise ValueError("--prompts applies to media folders; procedural clips bring their own captions")
        return ProceduralSource(int(count), config.seed, config.frames or 8, config.size)
    path = Path(data)
    if path.suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl", ".json"):
        raise ValueError(f"{data} is a prompts file, which holds no pixels to encode; pass a folder of images or "
                         f"videos with --prompts {data}, or procedural:N")
    return MediaSource(path, config.frames, config.size, config.prompts)


def source_from_spec(spec: dict, media_root: str | Path | None = None) -> Source:
    """Rebuild the source a store was encoded from (media_root: where the files live now)."""
    if spec["kind"] == "procedural":
        c = spec["config"]
        source = ProceduralSource(spec["count"], c["seed"], c["frames"], c["size"])
        if source.spec != spec:
            raise st.StoreError(f"procedural clips changed since this store was written: store has {spec}, "
                                f"this lrm makes {source.spec}")
        return source
    if spec["kind"] == "media":
        # Prompts are not re-read: every row keeps its own.
        return MediaSource(media_root or spec["root"], spec["frames"], spec["size"], None,
                           expected_listing=spec["listing_sha256"])
    raise st.StoreError(f"unknown source kind {spec['kind']!r} in the store manifest")


# ---------------------------------------------------------------- shard plan

def shard_units(index: int, shard_size: int, units: int) -> tuple[int, int]:
    return index * shard_size, min((index + 1) * shard_size, units)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _fit_length(emb: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with zeros / truncate token axis to `length`: (B, L', D) -> (B, L, D), (B, L') -> (B, L)."""
    b, l, d = emb.shape
    if l >= length:
        return emb[:, :length], mask[:, :length].bool()
    pad = length - l
    return (torch.cat([emb, emb.new_zeros(b, pad, d)], 1),
            torch.cat([mask.bool(), mask.new_zeros(b, pad).bool()], 1))


# ---------------------------------------------------------------- rewards

def parse_label(text: str) -> tuple[str, str]:
    """"NAME=REWARD" -> (NAME, REWARD); "REWARD" -> (REWARD, REWARD)."""
    name, sep, reward = text.partition("=")
    if sep and name and reward and ":" not in name:
        return name, reward
    return text, text


def label_column(name: str, pixels: str) -> str:
    """The default column of a label `name` scored on `pixels`: "niqe", or "niqe@decoded"."""
    return name + DECODED_SUFFIX if pixels == "decoded" else name


def column_name(text: str, pixels: str) -> str:
    """The column a label argument fills: NAME of "NAME=REWARD"; else the reward's name (a user
    metric "path/m.py:fn" by its function "fn"), with "@decoded" for decoded pixels."""
    name, reference = parse_label(text)
    if text != reference:
        return name
    from lrm.rewards import REWARDS

    return label_column(reference if reference in REWARDS else reference.rsplit(":", 1)[-1], pixels)


def most_common_failure(entry: dict) -> str | None:
    """"N rows failed, K of them with: REASON" for a manifest label entry; None when no row failed."""
    reasons = Counter(item["reason"] for item in entry["bad"]["items"])
    if not reasons:
        return None
    reason, times = reasons.most_common(1)[0]
    return f"{entry['bad']['count']} rows failed, {times} of them with: {reason}"


def check_distinct_columns(texts, pixels: str) -> None:
    """Refuse label arguments that would fill one column twice ("sharpness sharpness", "x=a x=b")."""
    names = [column_name(text, pixels) for text in texts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"column {', '.join(repeated)} is named more than once in {list(texts)}; name each "
                         "column once (NAME=REWARD gives another name)")


def load_labeler(text: str, options: dict | None = None, pixels: str = "source"):
    """(label name, reward, label info for labels/<name>/label.json); options go to the reward factory.

    A "decoded" label is named "REWARD@decoded" unless "NAME=REWARD" names it."""
    from lrm.rewards import load

    if pixels not in LABEL_PIXELS:
        raise ValueError(f"label pixels must be one of {', '.join(LABEL_PIXELS)}, got {pixels!r}")
    name, reference = column_name(text, pixels), parse_label(text)[1]
    reward = load(reference, **(options or {}))
    spec = dataclasses.asdict(reward.spec)
    return name, reward, {"reward": reference, "options": options or {}, "spec": spec, "pixels": pixels}


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
            reasons[i] = f"non-finite reward value {float(values[i])}"
        if reasons[i] is not None:
            values[i] = np.nan
            bad.append({"row_in_shard": row["_pos"], "unit": row["unit"], "source": row["source"],
                        "reason": reasons[i]})
    return values.astype(np.float32), bad


# ---------------------------------------------------------------- encode

def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)


def encode(config: EncodeConfig, out: str | Path, codec: Codec | None = None, progress: bool = True) -> st.LatentStore:
    """Encode the source of `config` into the store at `out`, resuming a killed run.

    `codec`: an already built codec (e.g. with non-default options) instead of `config.codec`.
    Under torchrun (process group open, see lrm.distributed) each rank encodes its own shards.
    """
    out = Path(out)
    if config.shard_size < 1 or config.batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    source = make_source(config)
    if codec is None:
        from lrm import codecs

        codec = codecs.load(config.codec)
    codec = codec.to(config.device).eval()
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

    num_shards = math.ceil(len(source) / config.shard_size)
    header = _jsonable({"format_version": st.FORMAT_VERSION, "codec": codec.settings(),
                        "latent_shape": list(codec.latent_shape(source.frames, source.size, source.size)),
                        "text": text_header, "source": source.spec, "shard_size": config.shard_size,
                        "units": len(source), "num_shards": num_shards})
    rank, world = distributed.rank(), distributed.world_size()
    show = progress and rank == 0
    # Every rank checks an existing store first (so all fail alike), rank 0 creates it, then all re-check.
    st.create_or_check(out, header, write=False)
    if rank == 0:
        st.create_or_check(out, header, write=True)
        for name, _, info in labelers:
            st.write_label_info(out, name, info)
    distributed.barrier()
    st.create_or_check(out, header, write=False)

    mine = distributed.owned(range(num_shards), rank, world)
    st.clean_orphans(out, mine)
    expected = (source.frames, 3, source.size, source.size)
    for index in _progress(mine, f"encode {out.name}", show):
        if st.shard_record(out, index) is None:
            _encode_shard(out, index, source, config, codec, text_encoder, text_header, labelers, expected)
        if rank == 0:
            st.refresh_manifest(out)
    distributed.barrier()
    if labelers:  # shards committed by an earlier run before their labels were
        _label_shards(out, source_reader(source), [(n, r) for n, r, _ in labelers], mine, config.batch_size,
                      config.device, show)
    distributed.barrier()
    if rank == 0:
        st.refresh_manifest(out)
    distributed.barrier()
    store = st.LatentStore.open(out)
    st.check_has_rows(store)  # every item unreadable: say which and why, here rather than at labelling
    return store


def _read_units(source: Source, units: list[int], expected: tuple, needs_prompt: bool, index: int):
    """Clips and provenance rows of `units`; unreadable or misshapen items go to `skipped` instead."""
    clips, rows, skipped = [], [], []
    for unit in units:
        try:
            clip = source.read(unit)
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
    for units in _batches(list(range(start, stop)), config.batch_size):
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
        st.commit_label_shard(out, name, index, v, _bad_records(bad[name], index))


def _jsonable(obj):
    """`obj` as it reads back from JSON (tuples become lists), so headers compare equal to manifests."""
    return json.loads(json.dumps(obj))


def _bad_records(bad: list[dict], index: int) -> list[dict]:
    return [{"shard": index, **b} for b in bad]


# ---------------------------------------------------------------- labels

def _read_shard_rows(root: Path, index: int) -> list[dict]:
    with open(st.shard_paths(root, index)["rows"]) as f:
        return [{**json.loads(line), "_pos": i} for i, line in enumerate(f)]


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
    from safetensors import safe_open

    def read(index: int, batch: list[dict]):
        lo, hi = batch[0]["_pos"], batch[-1]["_pos"] + 1  # a batch is a run of consecutive rows
        with safe_open(st.shard_paths(root, index)["tensors"], framework="pt") as f:
            latents = f.get_slice("latents")[lo:hi]  # (b, T', c, h, w)
        with torch.no_grad():
            return codec.decode(latents.to(device)).clamp(0, 1), batch, []
    return read


def _label_shards(root: Path, read: PixelReader, labelers: list[tuple[str, object]], shards: list[int],
                  batch_size: int, device: str, show: bool, on_commit: Callable[[], None] | None = None) -> None:
    """Compute and commit every missing label shard among `shards` from the pixels `read` gives.

    Each batch is read (media re-read or latents decoded) once for all the rewards still missing there."""
    def missing(index: int) -> list[tuple[str, object]]:
        return [(name, reward) for name, reward in labelers if not st.label_committed(root, name, index)]

    todo = [i for i in shards if st.shard_record(root, i) is not None and missing(i)]
    names = ", ".join(name for name, _ in labelers)
    for index in _progress(todo, f"label {names}", show and bool(todo)):
        rows = _read_shard_rows(root, index)
        rewards = missing(index)
        values = {name: [] for name, _ in rewards}
        bad = {name: [] for name, _ in rewards}
        for batch in _batches(rows, batch_size):
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
            st.commit_label_shard(root, name, index, v, _bad_records(bad[name], index))
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
    if pixels == "decoded":
        from lrm.codecs import from_settings

        read = decoded_reader(path, from_settings(store.codec_settings).to(device).eval(), device)
    else:
        read = source_reader(source_from_spec(store.manifest["source"], media_root))
    rank, world = distributed.rank(), distributed.world_size()
    if rank == 0:
        for name, _, info in labelers:
            st.write_label_info(path, name, info)
    distributed.barrier()
    mine = distributed.owned(range(store.manifest["num_shards"]), rank, world)
    st.clean_orphans(path, mine)
    refresh = (lambda: st.refresh_manifest(path)) if rank == 0 else None
    _label_shards(path, read, [(n, r) for n, r, _ in labelers], mine, batch_size, device,
                  progress and rank == 0, refresh)
    distributed.barrier()
    if rank == 0:
        st.refresh_manifest(path)
    distributed.barrier()
    return st.LatentStore.open(path)
