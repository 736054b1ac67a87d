"""The latent store: an append-only, sharded, on-disk dataset of latents, labels and provenance.

Layout of a store folder:

    manifest.json                      header (codec, shapes, source) + a summary of the records below
    shards/shard-00000.safetensors     "latents" (n, T', c, h, w) f32 [+ "text" (n, L, D) f32, "text_mask" (n, L) bool]
    shards/shard-00000.jsonl           one provenance row per latent row: unit, source, frame_indices, group, prompt
    shards/shard-00000.json            commit record (rows, unit range, skipped items), written last
    labels/<name>/label.json           which reward produced the column, its spec, and the pixels it scored
                                       ("source": the media; "decoded": what the latents decode to)
    labels/<name>/shard-00000.npy      (n,) float32 label values, NaN where the reward failed
    labels/<name>/shard-00000.json     commit record (bad items, partial statistics), written last

Only this module knows these paths: encoding and labelling write and read shards through its functions
(commit_shard, read_shard_rows, read_shard_latents, commit_label_shard, ...), everything else through
LatentStore, which also hands out the store's codec (LatentStore.codec()).

Shard i holds the source units [i * shard_size, (i + 1) * shard_size) in source order, so the content
of a shard depends only on the source and never on which process or which run produced it.
Every file is written to a temporary name, fsynced and renamed; a shard (or a label shard) counts
as committed once its commit record exists. The manifest is rebuilt from the commit records, so a
run killed at any moment and started again ends with exactly the bytes an uninterrupted run writes.
Readers see the committed prefix of shards; nothing is ever rewritten once committed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lrm.config_diff import differences
from lrm.datasets.label_names import as_matched, metric_code_changed
from lrm.io import TMP_SUFFIX, atomic_write_bytes

if TYPE_CHECKING:
    from lrm.codecs.base import Codec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Header keys fixed when a store is created; a later run must agree on all of them.
HEADER_KEYS = ("format_version", "codec", "latent_shape", "text", "source", "shard_size", "units", "num_shards")


class StoreError(ValueError):
    """A store that cannot be opened, resumed or extended as asked; the message says why and what to do."""


# Keys every manifest has (HEADER_KEYS plus the summary refresh_manifest writes).
MANIFEST_KEYS = (*HEADER_KEYS, "shards", "rows", "complete", "skipped", "labels")


def damaged(path: Path, problem: str, column: str | None = None) -> StoreError:
    """A StoreError naming a damaged file of a store, what is wrong with it and the fix for that kind of file
    (`column`: the label column the file belongs to)."""
    path = Path(path)
    if column is not None or path.parent.parent.name == "labels":  # labels/<folder>/...
        root, column = path.parent.parent.parent, column or path.parent.name
        problem = f"(label {column!r}) {problem}"
        fix = f"remove the column with `lrm store drop-label {root} {column}` and label it again"
    elif path.parent.name == "shards":  # shards/shard-00003.{safetensors,jsonl,json}
        root, stem = path.parent.parent, path.name.split(".")[0]
        fix = (f"remove {root / 'shards' / stem}.* and run the `lrm encode` command that made the store again: "
               "it rewrites that shard (labels are kept)")
    else:  # manifest.json holds the store's header: it cannot be rebuilt from the shards alone
        root = path.parent
        fix = "restore it from a copy, or encode the data again into a new folder (lrm encode ... --out NEW)"
    return StoreError(f"latent store {root} is damaged: {path} {problem}; {fix}")


# ---------------------------------------------------------------- files

def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _npy_bytes(values: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(values, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _read_json(path: Path):
    """A store's JSON file; a missing, unreadable or truncated one is a StoreError naming it (see `damaged`)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise damaged(path, "is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, f"is not valid JSON ({exc})") from exc


# ---------------------------------------------------------------- paths

def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def shard_paths(root: Path, index: int) -> dict[str, Path]:
    folder = Path(root) / "shards"
    stem = shard_stem(index)
    return {"tensors": folder / f"{stem}.safetensors", "rows": folder / f"{stem}.jsonl",
            "commit": folder / f"{stem}.json"}


def label_folder_name(name: str) -> str:
    """A file-system-safe folder for a label column ("path/m.py:fn" -> "path_m.py_fn")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def label_json(root: Path, name: str) -> Path:
    """labels/<folder>/label.json of column `name`: which reward computed it, its spec, pixels and options."""
    return Path(root) / "labels" / label_folder_name(name) / "label.json"


def label_paths(root: Path, name: str, index: int) -> dict[str, Path]:
    folder = Path(root) / "labels" / label_folder_name(name)
    stem = shard_stem(index)
    return {"values": folder / f"{stem}.npy", "commit": folder / f"{stem}.json"}


def clean_orphans(root: Path, shard_indices, manifest: bool = False) -> list[Path]:
    """Remove temporary files left by a killed run for the given shards, and with `manifest` (the process that
    writes it: rank 0) those of the manifest, which a kill during a manifest rewrite leaves."""
    root = Path(root)
    removed = []
    stems = {shard_stem(i) for i in shard_indices}
    candidates = list((root / "shards").glob(f"*{TMP_SUFFIX}")) + list((root / "labels").glob(f"*/*{TMP_SUFFIX}"))
    for tmp in candidates:
        if tmp.name.split(".")[0] in stems:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    for tmp in root.glob(f"{MANIFEST}.*{TMP_SUFFIX}") if manifest else ():
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


# ---------------------------------------------------------------- writing

def create_or_check(root: Path, header: dict, write: bool) -> dict:
    """Return the manifest of `root`, creating it from `header` when absent (if `write`).

    An existing store must have been created with the same header: a different codec or version,
    latent shape, text encoder, source or sharding raises StoreError naming both sides.
    """
    root = Path(root)
    manifest_path = root / MANIFEST
    if manifest_path.exists():
        manifest = _read_json(manifest_path)
        check_header(manifest, header, root)
        return manifest

    def leftover(p: Path) -> bool:  # what a run killed while creating the store leaves
        return p.name in ("shards", "labels") or (p.name.startswith(MANIFEST) and p.name.endswith(TMP_SUFFIX))

    if root.exists() and not all(leftover(p) for p in root.iterdir()):
        raise StoreError(f"{root} exists and is not a latent store (no {MANIFEST}); choose an empty or new folder")
    manifest = {**header, "shards": [], "rows": 0, "complete": False, "skipped": {"count": 0, "items": []},
                "labels": {}}
    if write:
        for tmp in root.glob(f"{MANIFEST}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        (root / "shards").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        atomic_write_bytes(manifest_path, _json_bytes(manifest))
    return manifest


def check_header(manifest: dict, header: dict, root: Path) -> None:
    if manifest.get("format_version") != header["format_version"]:
        raise StoreError(f"{root} has store format {manifest.get('format_version')}, this lrm writes "
                         f"{header['format_version']}; encode into a new folder")
    old, new = manifest["codec"], header["codec"]
    if old != new:
        raise StoreError(
            f"{root} was written by codec {old['name']}-v{old['version']}, but this run uses codec "
            f"{new['name']}-v{new['version']} ({'; '.join(differences(old, new, 'codec'))}); encode into a new "
            f"folder or use --codec {old['name']} with the store's settings (lrm store info {root})"
        )
    diffs = differences({k: manifest.get(k) for k in HEADER_KEYS}, {k: header[k] for k in HEADER_KEYS})
    if diffs:
        raise StoreError(f"{root} was created with other settings; resume with the same command or use a new "
                         "folder. Differences: " + "; ".join(diffs))


def commit_shard(root: Path, index: int, units: tuple[int, int], latents: torch.Tensor,
                 rows: list[dict], skipped: list[dict], text: torch.Tensor | None = None,
                 text_mask: torch.Tensor | None = None) -> None:
    """Write shard `index` atomically: tensors, provenance rows, then the commit record.

    latents (n, T', c, h, w); text (n, L, D) and text_mask (n, L) when the store has text.
    """
    from safetensors.torch import save

    if latents.shape[0] != len(rows):
        raise ValueError(f"shard {index}: {latents.shape[0]} latent rows but {len(rows)} provenance rows")
    paths = shard_paths(root, index)
    tensors = {"latents": latents.detach().to("cpu", torch.float32).contiguous()}
    if text is not None:
        tensors["text"] = text.detach().to("cpu", torch.float32).contiguous()
        tensors["text_mask"] = text_mask.detach().to("cpu", torch.bool).contiguous()
    atomic_write_bytes(paths["tensors"], save(tensors))
    lines = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
    atomic_write_bytes(paths["rows"], lines.encode())
    record = {"index": index, "units": list(units), "rows": len(rows), "skipped": skipped}
    atomic_write_bytes(paths["commit"], _json_bytes(record))


def shard_record(root: Path, index: int) -> dict | None:
    """The commit record of shard `index`, or None when it is not committed."""
    commit = shard_paths(root, index)["commit"]
    return _read_json(commit) if commit.exists() else None


def read_shard_rows(root: Path, index: int) -> list[dict]:
    """The provenance rows of committed shard `index`, in row order."""
    with open(shard_paths(root, index)["rows"]) as f:
        return [json.loads(line) for line in f]


def read_shard_latents(root: Path, index: int, lo: int, hi: int) -> torch.Tensor:
    """Rows lo..hi-1 of committed shard `index`: latents (hi - lo, T', c, h, w) float32."""
    from safetensors import safe_open

    with safe_open(shard_paths(root, index)["tensors"], framework="pt") as f:
        return f.get_slice("latents")[lo:hi]


def check_label_info(root: Path, name: str, info: dict) -> bool:
    """Whether labels/<name>/label.json exists, agreeing with `info` (which reward, its spec); a StoreError when it
    disagrees. Every process of a torchrun launch checks, so that all refuse alike before the first one writes."""
    path = label_json(root, name)
    info = {**info, "name": name}
    if path.exists():
        old = {"pixels": "source", **_read_json(path)}  # stores older than decoded labels scored the source
        if old["name"] != name:
            raise StoreError(f"label {name!r} would share the folder {path.parent} with the column {old['name']!r}; "
                             "give the new column another name (NAME=REWARD)")
        saved, now = as_matched(old, info), as_matched(info, old)  # a user metric by its code, not its spelling
        refusal = metric_code_changed(root, name, old, info)
        if refusal or saved != now:
            raise StoreError(refusal or f"label {name!r} of {root} was computed otherwise "
                             f"({'; '.join(differences(saved, now))}); give the new column another name "
                             f"(NAME=REWARD), or remove the old one with `lrm store drop-label {root} {name}`")
        return True
    return False


def write_label_info(root: Path, name: str, info: dict) -> None:
    """Create labels/<name>/label.json (which reward, its spec); must agree with an existing one."""
    if not check_label_info(root, name, info):
        path = label_json(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _json_bytes({**info, "name": name}))


def _moments(values: np.ndarray) -> dict:
    """count, mean, M2 (sum of squared deviations), min, max, nan over finite values; float64."""
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return {"count": 0, "mean": 0.0, "m2": 0.0, "min": None, "max": None, "nan": int(values.size)}
    mean = float(finite.mean())
    return {"count": int(finite.size), "mean": mean, "m2": float(((finite - mean) ** 2).sum()),
            "min": float(finite.min()), "max": float(finite.max()), "nan": int(values.size - finite.size)}


def _merge_moments(a: dict, b: dict) -> dict:
    """Chan et al.'s parallel merge of two partial moment records."""
    n = a["count"] + b["count"]
    if n == 0:
        return {**a, "nan": a["nan"] + b["nan"]}
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * b["count"] / n
    m2 = a["m2"] + b["m2"] + delta ** 2 * a["count"] * b["count"] / n
    mins = [v for v in (a["min"], b["min"]) if v is not None]
    maxs = [v for v in (a["max"], b["max"]) if v is not None]
    return {"count": n, "mean": mean, "m2": m2, "min": min(mins), "max": max(maxs), "nan": a["nan"] + b["nan"]}


def commit_label_shard(root: Path, name: str, index: int, values: np.ndarray, bad: list[dict]) -> None:
    """Write the values (n,) of label `name` for shard `index`, then its commit record.

    Non-finite values are stored as NaN; `bad` lists {row, unit, source, reason} for each of them.
    """
    values = np.asarray(values, dtype=np.float32).copy()
    values[~np.isfinite(values)] = np.nan
    paths = label_paths(root, name, index)
    atomic_write_bytes(paths["values"], _npy_bytes(values))
    atomic_write_bytes(paths["commit"], _json_bytes({"index": index, "rows": int(values.size), "bad": bad,
                                                     "moments": _moments(values)}))


def label_committed(root: Path, name: str, index: int) -> bool:
    return label_paths(root, name, index)["commit"].exists()


def refresh_manifest(root: Path) -> dict:
    """Rebuild the summary parts of manifest.json from the commit records on disk; write atomically.

    Lists the committed prefix of shards (so row numbers never change once visible), the skipped
    source items, and for each label its progress, statistics and bad items.
    """
    root = Path(root)
    manifest = _read_json(root / MANIFEST)
    shards, skipped = [], []
    for index in range(manifest["num_shards"]):
        record = shard_record(root, index)
        if record is None:
            break
        shards.append({"index": index, "units": record["units"], "rows": record["rows"]})
        skipped.extend(record["skipped"])
    labels = {}
    for info_path in sorted((root / "labels").glob("*/label.json")):
        info = _read_json(info_path)
        name = info["name"]
        done, bad, moments = 0, [], None
        for shard in shards:
            commit = label_paths(root, name, shard["index"])["commit"]
            if not commit.exists():
                break
            record = _read_json(commit)
            done += 1
            offset = sum(s["rows"] for s in shards[:done - 1])
            bad.extend({"row": offset + b["row_in_shard"], **b} for b in record["bad"])
            moments = record["moments"] if moments is None else _merge_moments(moments, record["moments"])
        stats = _stats_from_moments(moments)
        labels[name] = {"reward": info["reward"], "spec": info.get("spec", {}),
                        "pixels": info.get("pixels", "source"), "folder": info_path.parent.name,
                        "shards": done, "complete": done == len(shards) and len(shards) == manifest["num_shards"],
                        "stats": stats, "bad": {"count": len(bad), "items": bad}}
    manifest.update({"shards": shards, "rows": sum(s["rows"] for s in shards),
                     "complete": len(shards) == manifest["num_shards"],
                     "skipped": {"count": len(skipped), "items": skipped}, "labels": labels})
    atomic_write_bytes(root / MANIFEST, _json_bytes(manifest))
    return manifest


def drop_labels(root: Path, names: list[str]) -> dict:
    """Remove the label columns `names` and return the rebuilt manifest. Every name is checked
    before anything is removed, so a typo removes nothing.

    Each column's folder is first renamed out of labels/, so a run killed midway leaves the whole
    column or none of it; what such a run left behind is removed the next time. The rest of the store
    must be whole (check_files); damage inside the dropped columns is what dropping them repairs.
    """
    root = Path(root)
    manifest = read_manifest(root)
    check_files(root, {**manifest, "labels": {k: v for k, v in manifest["labels"].items() if k not in names}})
    labels = manifest["labels"]
    if any(name not in labels for name in names):  # a column a killed run wrote but the manifest does not list yet
        labels = refresh_manifest(root)["labels"]
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise KeyError(f"store {root} has no label {', '.join(map(repr, unknown))} "
                       f"(labels: {', '.join(labels) or 'none'}); nothing was removed")
    for stale in root.glob(".dropped-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for name in dict.fromkeys(names):
        folder = root / "labels" / labels[name].get("folder", label_folder_name(name))
        aside = root / f".dropped-{folder.name}"
        folder.rename(aside)
        shutil.rmtree(aside)
    return refresh_manifest(root)


def _stats_from_moments(m: dict | None) -> dict:
    if m is None or m["count"] == 0:
        nan = 0 if m is None else m["nan"]
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "nan": nan}
    return {"count": m["count"], "mean": m["mean"], "std": math.sqrt(m["m2"] / m["count"]),
            "min": m["min"], "max": m["max"], "nan": m["nan"]}


# ---------------------------------------------------------------- reading

def read_manifest(root: Path) -> dict:
    """manifest.json of the store at `root`: JSON, of this lrm's format version, with every key."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        hint = ""
        if (root / "model").is_dir():  # `lrm store info runs/x`: a run, whose store lies elsewhere
            hint = " (it is a run folder: its store is named in its config.json, or RUN/store)"
        elif (root / "shards").is_dir() or (root / "labels").is_dir():
            hint = " (an encode was started here but never created its manifest)"
        raise FileNotFoundError(f"no latent store at {root}: {MANIFEST} is missing{hint}; "
                                "create one with `lrm encode DATA --out STORE`")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise damaged(manifest_path, f"holds a {type(manifest).__name__}, not a manifest object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{root} has store format version {version}; this lrm reads version "
                         f"{FORMAT_VERSION}. Re-encode it with this lrm (lrm encode ...)")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise damaged(manifest_path, f"lacks the key(s) {', '.join(missing)}")
    return manifest


SKIPPED_IN_ERROR = 5  # skipped items an error message names (all of them: manifest.json, lrm store info)


def _short_reason(item: dict) -> str:
    """A skipped item's reason without the "MediaError: <source>: " its record repeats."""
    return item["reason"].removeprefix(f"MediaError: {item['source']}: ")


def check_has_rows(store: "LatentStore") -> None:
    """A complete store into which no source item could be read is a StoreError naming the skipped items
    and why they were skipped (rather than an empty store that fails later, or a success with 0 rows)."""
    skipped = store.manifest["skipped"]
    if len(store) or not store.complete or not skipped["count"]:
        return
    named = "; ".join(f"{item['source']}: {_short_reason(item)}" for item in skipped["items"][:SKIPPED_IN_ERROR])
    more = skipped["count"] - min(len(skipped["items"]), SKIPPED_IN_ERROR)
    raise StoreError(f"none of the {skipped['count']} items of {store.manifest['source']['description']} could be "
                     f"read, so {store.path} holds no rows: {named}" + (f"; and {more} more" if more else "")
                     + f"; fix or remove those files (all listed in lrm store info {store.path}), or encode another "
                       "folder")


def check_files(root: Path, manifest: dict) -> None:
    """Every file the manifest counts on is there and whole: each listed shard's tensors (header read),
    rows and commit record (parsed), and each label column's label.json (parsed), values (header and length read)
    and commit records.
    A missing or truncated file is a StoreError naming it and the fix, so that no command goes on with
    (or, by rebuilding the manifest, silently drops) what the store has lost."""
    root = Path(root)
    try:
        listed = [(int(s["index"]), int(s["rows"])) for s in manifest["shards"]]
        columns = {name: int(entry["shards"]) for name, entry in manifest["labels"].items()}
    except (TypeError, KeyError, ValueError) as exc:
        raise damaged(root / MANIFEST, f"has a malformed shard or label entry ({type(exc).__name__}: {exc})") from exc
    for index, rows in listed:
        paths = shard_paths(root, index)
        for path in paths.values():
            if not path.is_file():
                raise damaged(path, "is missing")
        _read_json(paths["commit"])  # a cut record: `lrm store info` said "done" of a store `lrm label` refused
        shape = _latents_shape(paths["tensors"])
        if shape[0] != rows:
            raise damaged(paths["tensors"], f"holds {shape[0]} latent rows where its commit record says {rows}")
    for name, done in columns.items():
        info = label_json(root, name)
        if not info.is_file():
            raise damaged(info, "is missing", column=name)
        _read_json(info)
        for index, rows in listed[:done]:
            paths = label_paths(root, name, index)
            if not paths["commit"].is_file():
                raise damaged(paths["commit"], "is missing", column=name)
            read_label_values(paths["values"], rows, name)


def _latents_shape(path: Path) -> list[int]:
    """The shape of the "latents" tensor of a shard file, from its safetensors header (8-byte little-endian
    length, then JSON), after checking that the file holds every byte the header points to."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > size - 8:
                raise ValueError("the header is cut off")
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            raise ValueError(f"it is truncated: {size} bytes where the header needs {8 + length + end}")
        return list(header["latents"]["shape"])
    except KeyError as exc:
        raise damaged(path, "holds no 'latents' tensor (not a shard of this store)") from exc
    except (ValueError, TypeError, AttributeError) as exc:  # incl. JSONDecodeError / UnicodeDecodeError
        raise damaged(path, f"is not a whole safetensors file ({exc})") from exc


def read_label_values(path: Path, rows: int, name: str, mmap: bool = True) -> np.ndarray:
    """(rows,) float32 values of one label shard; a missing, truncated or misshapen file is a StoreError."""
    try:
        values = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as exc:
        raise damaged(path, "is missing", column=name) from exc
    except (ValueError, OSError, EOFError) as exc:  # numpy's messages for a truncated or foreign .npy
        raise damaged(path, f"cannot be read ({exc})", column=name) from exc
    if values.shape != (rows,):
        raise damaged(path, f"holds shape {values.shape} where the shard has {rows} rows", column=name)
    return values


class LatentStore:
    """Read access to a store folder. Nothing is loaded until asked for; latents are read per shard
    through memory-mapped safetensors, so a store larger than memory reads fine."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._shards = manifest["shards"]
        counts = np.array([s["rows"] for s in self._shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])  # row offset of each shard, (S + 1,)
        self._rows: list[dict] | None = None

    @classmethod
    def open(cls, path) -> "LatentStore":
        """The store at `path`, after checking its manifest and that every file it lists is whole."""
        manifest = read_manifest(path)
        check_files(path, manifest)
        return cls(path, manifest)

    # ---- header
    @property
    def codec_settings(self) -> dict:
        return self.manifest["codec"]

    @property
    def codec_id(self) -> str:
        return f"{self.codec_settings['name']}-v{self.codec_settings['version']}"

    def codec(self) -> Codec:
        """The codec of this store's latent space, rebuilt from its recorded settings (lrm.codecs.from_settings:
        a codec whose weights or options differ is refused)."""
        from lrm.codecs import from_settings

        return from_settings(self.codec_settings)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.manifest["latent_shape"])

    @property
    def procedural_world(self) -> str | None:
        """The procedural world (lrm.datasets.procedural.WORLDS) of its clips; None for a store of media."""
        source = self.manifest.get("source") or {}
        return source.get("world", "full") if source.get("kind") == "procedural" else None

    @property
    def text_encoder_id(self) -> str | None:
        text = self.manifest["text"]
        return text["encoder"] if text else None

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (f"LatentStore({str(self.path)!r}, rows={len(self)}, codec={self.codec_id}, "
                f"latent_shape={self.latent_shape}, labels={self.labels})")

    # ---- labels
    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    def _label_entry(self, name: str) -> dict:
        if name not in self.manifest["labels"]:
            known = ", ".join(self.labels) or "none yet"
            from lrm.datasets.label_names import DECODED_SUFFIX

            # a decoded column is added by its reward with --pixels decoded ("niqe@decoded" names no reward)
            add = (f"{name[:-len(DECODED_SUFFIX)]} --pixels decoded" if name.endswith(DECODED_SUFFIX) else name)
            raise KeyError(f"store {self.path} has no label {name!r} (labels: {known}); "
                           f"add it with `lrm label {self.path} {add}`")
        return self.manifest["labels"][name]

    def label(self, name: str) -> np.ndarray:
        """(N,) float32 label column, NaN where the reward failed."""
        entry = self._label_entry(name)
        if self.label_unfinished(name):
            raise StoreError(f"label {name!r} covers {entry['shards']} of {len(self._shards)} shards of "
                             f"{self.path}; finish it with `{self.finish_label_command(name)}` (or re-run the "
                             "`lrm fit` that started it)")
        parts = [read_label_values(label_paths(self.path, name, s["index"])["values"], s["rows"], name, mmap=False)
                 for s in self._shards]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def label_unfinished(self, name: str) -> bool:
        """True when column `name` covers fewer shards than the store holds (labelling was stopped); `lrm label`
        and `lrm fit` resume it shard by shard."""
        return self._label_entry(name)["shards"] < len(self._shards)

    def finish_label_command(self, name: str) -> str:
        """The `lrm label` command that resumes column `name` as it was started: its reward (NAME=REWARD where the
        name is not the reward's default column), its pixels and its reward options (a user metric's kind and
        input among them)."""
        import shlex

        from lrm.datasets.label_names import column_name

        try:
            info = self.label_info(name)
        except (OSError, ValueError, KeyError):  # no readable label.json: the bare form
            return f"lrm label {shlex.quote(str(self.path))} {shlex.quote(name)}"
        reward, pixels = str(info.get("reward", name)), info.get("pixels", "source")
        words = ["lrm", "label", str(self.path), reward if column_name(reward, pixels) == name else f"{name}={reward}"]
        if pixels != "source":
            words += ["--pixels", pixels]
        for key, value in (info.get("options") or {}).items():
            words += ["-o", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
        return " ".join(shlex.quote(w) for w in words)

    def label_info(self, name: str) -> dict:
        """labels/<name>/label.json: the reward, its options and spec, and the pixels it scored."""
        folder = self.path / "labels" / self._label_entry(name).get("folder", label_folder_name(name))
        return {"pixels": "source", **_read_json(folder / "label.json")}

    def label_pixels(self, name: str) -> str:
        """What label `name` scored: "source" (the media) or "decoded" (what the latents decode to)."""
        return self._label_entry(name).get("pixels", "source")  # manifests older than decoded labels: source

    def label_stats(self, name: str) -> dict:
        """count (finite values), mean, std, min, max, nan (count of NaN)."""
        return dict(self._label_entry(name)["stats"])

    # ---- provenance
    def rows(self) -> list[dict]:
        """Provenance per row: unit, source, frame_indices, group, prompt (read once, then cached)."""
        if self._rows is None:
            rows = []
            for s in self._shards:
                path = shard_paths(self.path, s["index"])["rows"]
                try:
                    with open(path, encoding="utf-8") as f:
                        shard_rows = [json.loads(line) for line in f]
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise damaged(path, f"is not valid JSON lines ({exc})") from exc
                if len(shard_rows) != s["rows"]:
                    raise damaged(path, f"holds {len(shard_rows)} rows where its commit record says {s['rows']}")
                rows.extend(shard_rows)
            self._rows = rows
        return self._rows

    @property
    def prompts(self) -> list[str] | None:
        if not self.manifest["text"]:
            return None
        return [r["prompt"] for r in self.rows()]

    @property
    def groups(self) -> np.ndarray:
        return np.array([r["group"] for r in self.rows()], dtype=str)

    # ---- tensors
    def _locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for a store of {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        shard_pos = np.searchsorted(self._offsets, idx, side="right") - 1  # position in self._shards
        return idx, shard_pos

    def _gather(self, indices, keys: tuple[str, ...]) -> list[torch.Tensor]:
        """Rows `indices` of the tensors `keys`, in the order asked, opening only the shards needed."""
        from safetensors import safe_open

        idx, shard_pos = self._locate(indices)
        out: list[torch.Tensor | None] = [None] * len(keys)
        for pos in np.unique(shard_pos):
            take = np.nonzero(shard_pos == pos)[0]
            local = idx[take] - self._offsets[pos]
            lo, hi = int(local.min()), int(local.max()) + 1
            path = shard_paths(self.path, self._shards[pos]["index"])["tensors"]
            try:
                with safe_open(path, framework="pt") as f:
                    parts = [f.get_slice(key)[lo:hi][torch.as_tensor(local - lo)] for key in keys]
            except Exception as exc:  # SafetensorError: truncated, foreign, or a tensor missing
                raise damaged(path, f"cannot be read ({exc})") from exc
            for k, part in enumerate(parts):
                if out[k] is None:
                    out[k] = torch.empty((idx.size, *part.shape[1:]), dtype=part.dtype)
                out[k][torch.as_tensor(take)] = part
        if idx.size == 0:
            return [torch.zeros(0) for _ in keys]
        return out

    def latents(self, indices) -> torch.Tensor:
        """(n, T', c, h, w) float32 latents of rows `indices`."""
        if len(np.asarray(indices).reshape(-1)) == 0:
            return torch.zeros((0, *self.latent_shape))
        return self._gather(indices, ("latents",))[0]

    def text_embeddings(self, indices) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(n, L, D) float32 token embeddings and (n, L) bool mask, or None without text."""
        text = self.manifest["text"]
        if not text:
            return None
        if len(np.asarray(indices).reshape(-1)) == 0:
            return torch.zeros((0, text["length"], text["dim"])), torch.zeros((0, text["length"]), dtype=torch.bool)
        emb, mask = self._gather(indices, ("text", "text_mask"))
        return emb, mask

    # ---- splits
    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Seeded split by group: train_idx, val_idx (sorted), no group on both sides.

        Groups are shuffled with `seed` and moved to validation until it holds at least
        `val_fraction` of the rows; with two or more groups both sides are non-empty.
        """
        return group_split(self.groups, val_fraction, seed)


def group_split(groups: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices by group label (see LatentStore.split)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = np.asarray(groups)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    target = val_fraction * len(groups)
    val_groups, val_rows = [], 0
    for g in order:
        if val_rows >= target or len(val_groups) == len(names) - 1:
            break
        val_groups.append(g)
        val_rows += counts[g]
    in_val = np.isin(inverse, val_groups)
    return np.nonzero(~in_val)[0], np.nonzero(in_val)[0]
