"""Sources of a latent store: the deterministic sequences of units (procedural clip indices, or media
files in sorted order) that `encode` reads, each unit one clip, re-readable from a stored row
(pixels are never stored: procedural rows keep seed, config and index; file rows keep path, frame
indices and size). Also the frame size a new store gets when none is asked for.

Groups of media files (the key that keeps related rows on one side of a split):
  1. a file named "<prefix>__<rest>" (DreamBooth's "subject__index") -> "<folder>/<prefix>";
  2. else a file inside a sub-folder of the data folder -> that sub-folder (e.g. one video's clips);
  3. else the file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from lrm.datasets import store as st
from lrm.datasets.clip import Clip

if TYPE_CHECKING:
    from lrm.datasets.encoding import EncodeConfig

PROCEDURAL_PREFIX = "procedural:"
PROCEDURAL_SIZE = 128  # side of the embedded default's clips: 16 x 16 dct latents, quick on a CPU
# Largest side a media folder keeps by default. Shrinking erases what pixel rewards read (a BRISQUE
# surrogate in taef2 fitted on 256-px photos: held-out Spearman 0.76 at 128 px, 0.92 at 256 px),
# while latents, encoding and fitting time grow with the square of the side (512 px: 16x the latents of 128 px).
MEDIA_SIZE_CAP = 512


class FrameSize(NamedTuple):
    size: int  # square side in pixels of every clip of a new store
    reason: str  # why, as --dry-run, the log and the report say it: "size 256: the media's short side (cap 512)"


def _down_to_multiple(side: int, factor: int) -> int:
    return max(factor, side // factor * factor)


def choose_frame_size(data: str, size: int | None, spatial_factor: int, preferred: int | None = None) -> FrameSize:
    """The side of a new store's clips: `size` when given; procedural clips: PROCEDURAL_SIZE; a media folder:
    the reward's `preferred` short side when it has one, else the smallest short side of its files, capped at
    MEDIA_SIZE_CAP; both rounded down to a multiple of the codec's `spatial_factor`."""
    if size is not None:
        return FrameSize(size, f"size {size}: as asked (--size)")
    if data.startswith(PROCEDURAL_PREFIX):
        return FrameSize(PROCEDURAL_SIZE, f"size {PROCEDURAL_SIZE}: the procedural clips' default")
    rounding = f", down to a multiple of {spatial_factor} (the codec's spatial factor)"
    if preferred:
        side = _down_to_multiple(preferred, spatial_factor)
        return FrameSize(side, f"size {side}: the reward's preferred size"
                               + (f" {preferred}{rounding}" if side != preferred else ""))
    from lrm.datasets import media

    shorts = []
    for path in media.list_media(data):
        try:
            shorts.append(min(media.frame_size(path)))
        except (media.MediaError, ValueError):
            continue  # unreadable: encode skips and names it
    if not shorts:
        return FrameSize(PROCEDURAL_SIZE, f"size {PROCEDURAL_SIZE}: no media file's size could be read")
    short = min(shorts)
    which = "the media's short side" if len(set(shorts)) == 1 else f"the smallest short side of {len(shorts)} files"
    if short > MEDIA_SIZE_CAP:
        side = _down_to_multiple(MEDIA_SIZE_CAP, spatial_factor)
        return FrameSize(side, f"size {side}: the cap {MEDIA_SIZE_CAP} ({which} is {short})")
    side = _down_to_multiple(short, spatial_factor)
    return FrameSize(side, f"size {side}: {which} (cap {MEDIA_SIZE_CAP})" + (rounding if side != short else ""))


# ---------------------------------------------------------------- sources

class Source:
    """A deterministic sequence of units, each read as one Clip, and re-readable from a row."""

    spec: dict  # JSON description kept in the manifest; `source_from_spec` rebuilds the source
    frames: int  # T of every clip
    size: int  # H = W of every clip
    frame_size: FrameSize | None = None  # the size and why (set by make_source for a new store)

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
    def __init__(self, count: int, seed: int, frames: int, size: int, world: str = "full"):
        from lrm.datasets.procedural import world_config

        if count < 1:
            raise ValueError(f"procedural:N needs N >= 1, got {count}")
        self.count, self.frames, self.size = count, frames, size
        self.config = world_config(world, seed=seed, frames=frames, size=size)
        settings = json.loads(json.dumps(dataclasses.asdict(self.config)))  # tuples -> lists, as stored
        described = ",".join(f"{k}={settings[k]}" for k in ("seed", "frames", "size"))
        self.spec = {"kind": "procedural", "count": count, "frames": frames, "size": size, "config": settings,
                     "description": f"procedural:{described}"}
        if world != "full":  # stores of the full world keep the spec they had before worlds existed
            self.spec["world"] = world
            self.spec["description"] += f",world={world}"

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



def make_source(config: EncodeConfig, spatial_factor: int, preferred_size: int | None = None) -> Source:
    """The source of `config`; its clips get `choose_frame_size(...)` (kept as `source.frame_size`)."""
    data = config.data
    if data.startswith(PROCEDURAL_PREFIX):
        count, _, world = data[len(PROCEDURAL_PREFIX):].partition(":")
        if not count.isdigit():
            raise ValueError(f"{data!r}: expected procedural:N with N a positive integer, e.g. procedural:256 "
                             "(or procedural:N:WORLD, e.g. procedural:256:simple)")
        if config.prompts:
            raise ValueError("--prompts applies to media folders; procedural clips bring their own captions")
        size = choose_frame_size(data, config.size, spatial_factor)
        source = ProceduralSource(int(count), config.seed, config.frames or 8, size.size, world or "full")
    else:
        path = Path(data)
        if path.suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl", ".json"):
            raise ValueError(f"{data} is a prompts file, which holds no pixels to encode; pass a folder of images "
                             f"or videos with --prompts {data}, or procedural:N")
        size = choose_frame_size(data, config.size, spatial_factor, preferred_size)
        source = MediaSource(path, config.frames, size.size, config.prompts)
    source.frame_size = size
    return source


def source_from_spec(spec: dict, media_root: str | Path | None = None) -> Source:
    """Rebuild the source a store was encoded from (media_root: where the files live now)."""
    if spec["kind"] == "procedural":
        from lrm.datasets.procedural import ProceduralConfig

        c = spec["config"]
        source = ProceduralSource(spec["count"], c["seed"], c["frames"], c["size"], spec.get("world", "full"))
        # fields added to ProceduralConfig after a store was written read at their defaults
        defaults = json.loads(json.dumps(dataclasses.asdict(ProceduralConfig())))
        if source.spec != {**spec, "config": {**defaults, **c}}:
            raise st.StoreError(f"procedural clips changed since this store was written: store has {spec}, "
                                f"this lrm makes {source.spec}")
        return source
    if spec["kind"] == "media":
        root = Path(media_root or spec["root"])
        if not root.exists():  # moved or deleted since encoding
            raise FileNotFoundError(f"{root}: no such file or folder; the store was encoded from it: pass --media-root "
                                    "FOLDER where its files are now" + ("" if media_root else ", or label the decoded "
                                                                        "latents (--label-pixels decoded)"))
        # Prompts are not re-read: every row keeps its own.
        return MediaSource(root, spec["frames"], spec["size"], None, expected_listing=spec["listing_sha256"])
    raise st.StoreError(f"unknown source kind {spec['kind']!r} in the store manifest")

