"""Read images, videos and GIFs into clips of pixels; list media folders; read prompt files.

    clip = read_clip("pancake.mkv", frames=8, size=256)   # clip.pixels (8, 3, 256, 256) in [0, 1]
    stream = iter_clips("photos/", frames=1, size=256)    # skips unreadable files ...
    for clip in stream: ...
    stream.skipped                                         # ... and lists them: [(path, reason)]

Frames are sampled uniformly (lrm.frames.uniform_indices), resized so the short side covers the
target size (bilinear, antialiased) and centre-cropped. Videos decode with decord where it is
installed, else PyAV; `$LRM_VIDEO_BACKEND=pyav|decord` or `backend=` picks one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lrm.datasets.clip import Clip
from lrm.frames import uniform_indices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
GIF_EXTENSIONS = (".gif",)
MEDIA_KINDS = ("image", "video", "gif")
VIDEO_BACKENDS = ("decord", "pyav")
PROMPT_EXTENSIONS = (".txt", ".csv", ".tsv", ".jsonl", ".json")
PROMPT_KEYS = ("prompt", "text", "caption")  # JSON keys searched for a prompt, in this order

log = logging.getLogger(__name__)


class MediaError(ValueError):
    """A media or prompt file that cannot be read; names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# ---------------------------------------------------------------------------------------------
# Files and kinds
# ---------------------------------------------------------------------------------------------


def media_kind(path: str | os.PathLike) -> str:
    """ "image", "video" or "gif" from the file extension (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in GIF_EXTENSIONS:
        return "gif"
    known = " ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + GIF_EXTENSIONS)
    raise MediaError(path, f"unsupported extension {suffix or '(none)'!r}; supported: {known}")


def list_media(path: str | os.PathLike, kinds: Sequence[str] = MEDIA_KINDS) -> list[Path]:
    """Media files under a folder (recursive, sorted, hidden files skipped), or a single file."""
    root = Path(path)
    unknown = set(kinds) - set(MEDIA_KINDS)
    if unknown:
        raise ValueError(f"unknown media kinds {sorted(unknown)}; choose from {MEDIA_KINDS}")
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        if media_kind(root) not in kinds:
            raise MediaError(root, f"is a {media_kind(root)}, but only {', '.join(kinds)} were asked for")
        return [root]
    found = []
    for candidate in root.rglob("*"):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not candidate.is_file():
            continue
        try:
            kind = media_kind(candidate)
        except MediaError:
            continue  # not a media file (captions, licences, ...)
        if kind in kinds:
            found.append(candidate)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def gather_media(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The media files of every path (list_media), and the named files that are not media as skipped
    (path, reason) pairs, for commands that skip and count what they cannot read. A missing path raises."""
    files, skipped = [], []
    for path in paths:
        try:
            files += list_media(path)
        except MediaError as error:
            skipped.append((error.path, error.reason))
    return files, skipped


def video_backend(name: str | None = None) -> str:
    """The video decoder to use: `name`, else $LRM_VIDEO_BACKEND, else decord when importable."""
    name = name or os.environ.get("LRM_VIDEO_BACKEND") or None
    if name is None:
        try:
            import decord  # noqa: F401
        except ImportError:
            return "pyav"
        return "decord"
    if name not in VIDEO_BACKENDS:
        raise ValueError(f"video backend must be one of {VIDEO_BACKENDS}, got {name!r} (from LRM_VIDEO_BACKEND?)")
    return name


# ---------------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------------


def read_clip(
    path: str | os.PathLike,
    frames: int | None = None,
    stride: int = 1,
    size: int | tuple[int, int] | None = None,
    backend: str | None = None,
    pick: Callable[[int], np.ndarray] | None = None,
) -> Clip:
    """Read an image, video or GIF as a clip of float32 pixels (T, 3, H, W) in [0, 1].

    frames: K frames spread uniformly over the (strided) source; None keeps them all.
    stride: take every stride-th source frame before sampling.
    size: output (H, W) after a short-side resize and centre crop; an int means square; None keeps
        the source resolution.
    backend: video decoder, "decord" or "pyav" (default: see `video_backend`).
    pick: the frame indices to read given the file's frame count, instead of `frames` / `stride` (a reward that
        samples frames by its reference's own rule, e.g. VBench's): non-decreasing, in [0, count), repeats
        allowed; only those frames are decoded.
    Raises MediaError naming the file for missing, unsupported or undecodable files.
    """
    path = Path(path)
    kind = media_kind(path)
    out_size = _size_hw(size)
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be >= 1 or None, got {frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    decoder = video_backend(backend) if kind == "video" else None
    chooser = (lambda n: _checked_pick(pick, n)) if pick else (lambda n: uniform_indices(n, frames, stride))
    if not path.is_file():
        raise MediaError(path, "no such file")
    # Decoders raise many exception types on bad files (OSError, SyntaxError, struct.error,
    # DECORDError, av.FFmpegError, ...); every one of them means "this file is unreadable".
    try:
        if kind == "image":
            raw, indices, num_frames, fps = _read_image(path)
        elif kind == "gif":
            raw, indices, num_frames, fps = _read_gif(path, chooser)
        elif decoder == "decord":
            raw, indices, num_frames, fps = _read_video_decord(path, chooser)
        else:
            raw, indices, num_frames, fps = _read_video_pyav(path, chooser)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(path, f"cannot decode {kind} ({type(exc).__name__}: {exc})") from exc
    if not raw.flags.writeable:
        raw = raw.copy()  # arrays viewing PIL images are read-only
    pixels = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255)  # (T, 3, H, W)
    if out_size is not None:
        pixels = resize_center_crop(pixels, out_size)
    return Clip(
        pixels=pixels.contiguous(),
        source=str(path),
        group=str(path),
        frame_indices=tuple(int(i) for i in indices),
        num_frames=int(num_frames),
        fps=fps,
    )


def frame_size(path: str | os.PathLike, backend: str | None = None) -> tuple[int, int]:
    """(H, W) of the frames of an image, GIF or video, read from its header (nothing is decoded).

    Raises MediaError naming the file when it cannot be read."""
    path = Path(path)
    kind = media_kind(path)
    try:
        if kind in ("image", "gif"):
            with Image.open(path) as img:
                width, height = img.size  # EXIF rotation may swap them; the short side stays the same
        elif video_backend(backend) == "decord":
            import decord

            height, width = decord.VideoReader(str(path), ctx=decord.cpu(0))[0].shape[:2]
        else:
            import av

            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise MediaError(path, "file has no video stream")
                context = container.streams.video[0].codec_context
                height, width = context.height, context.width
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(path, f"cannot read the {kind}'s size ({type(exc).__name__}: {exc})") from exc
    return int(height), int(width)


def resize_center_crop(pixels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(..., C, H, W) float -> (..., C, h, w): scale so the image covers (h, w), then centre-crop.

    Bilinear with antialiasing, so downscaling averages instead of aliasing; keeps [0, 1].
    """
    h_out, w_out = _size_hw(size)
    *lead, c, h, w = pixels.shape
    scale = max(h_out / h, w_out / w)
    h_mid, w_mid = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    x = pixels.reshape(-1, c, h, w)  # (N, C, H, W)
    if (h_mid, w_mid) != (h, w):
        x = F.interpolate(x, size=(h_mid, w_mid), mode="bilinear", antialias=True, align_corners=False)
    top, left = (h_mid - h_out) // 2, (w_mid - w_out) // 2
    x = x[:, :, top : top + h_out, left : left + w_out]
    return x.reshape(*lead, c, h_out, w_out).clamp(0, 1)


def _size_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB. Transparency is composited over white."""
    if img.mode.startswith("I;16"):
        gray = np.round(np.asarray(img, dtype=np.float64) / 257.0)
        return np.repeat(gray.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode in ("I", "F"):
        # 32-bit int / float: 16-bit scans (max > 255) or [0, 1] floats are rescaled to 8 bits.
        values = np.asarray(img, dtype=np.float64)
        peak = values.max(initial=0.0)
        scale = 255.0 / 65535.0 if peak > 255 else (255.0 if img.mode == "F" and peak <= 1 else 1.0)
        gray = np.round(values * scale).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _checked_pick(pick: Callable[[int], np.ndarray], num_frames: int) -> np.ndarray:
    """pick(num_frames) as int64 indices; ValueError unless they are non-decreasing and within the file."""
    indices = np.asarray(pick(num_frames), dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices[0] < 0 or indices[-1] >= num_frames or (np.diff(indices) < 0).any():
        raise ValueError(f"frame pick {indices.tolist()} is not a non-decreasing list in [0, {num_frames})")
    return indices


def _read_image(path: Path):
    with Image.open(path) as img:
        img.load()
        rgb = _pil_to_rgb(ImageOps.exif_transpose(img))
    return rgb[None], np.zeros(1, dtype=np.int64), 1, None  # (1, H, W, 3)


def _read_gif(path: Path, choose: Callable[[int], np.ndarray]):
    with Image.open(path) as img:
        num_frames = getattr(img, "n_frames", 1)
        duration = img.info.get("duration") or 0  # milliseconds per frame
        indices = choose(num_frames)
        out = []
        for i in indices:
            img.seek(int(i))
            out.append(_pil_to_rgb(img))
    fps = 1000.0 / duration if duration > 0 else None
    return np.stack(out), indices, num_frames, fps  # (T, H, W, 3)


def _read_video_decord(path: Path, choose: Callable[[int], np.ndarray]):
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    num_frames = len(reader)
    if num_frames == 0:
        raise MediaError(path, "video has no frames")
    indices = choose(num_frames)
    batch = reader.get_batch(indices.tolist())
    raw = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # torch bridge set elsewhere
    fps = float(reader.get_avg_fps()) or None
    return raw, indices, num_frames, fps  # (T, H, W, 3) uint8


def _read_video_pyav(path: Path, choose: Callable[[int], np.ndarray]):
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(path, "file has no video stream")
        stream = container.streams.video[0]
        num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size > 0)
        fps = float(stream.average_rate) if stream.average_rate else None
    if num_frames == 0:
        raise MediaError(path, "video has no frames")
    indices = choose(num_frames)
    wanted = iter(indices.tolist())
    target = next(wanted)
    out, used, last, decoded = [], [], None, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for position, frame in enumerate(container.decode(stream)):
            decoded = position + 1
            last = frame
            while target == position:  # a frame picked twice is appended twice
                out.append(frame.to_ndarray(format="rgb24"))
                used.append(position)
                target = next(wanted, None)
            if target is None:
                break
    if last is None:
        raise MediaError(path, "no frame could be decoded")
    if target is not None:
        # The container announced more frames than the stream holds: hold the last real frame.
        tail = last.to_ndarray(format="rgb24")
        while len(out) < len(indices):
            out.append(tail)
            used.append(decoded - 1)
    return np.stack(out), np.asarray(used, dtype=np.int64), num_frames, fps


# ---------------------------------------------------------------------------------------------
# Reading many files
# ---------------------------------------------------------------------------------------------


class ClipStream:
    """Clips read from many files in order. Unreadable files are logged, skipped and listed in
    `skipped` as (path, reason), so batch commands go on; iterating again starts a fresh list."""

    def __init__(self, paths: Iterable[str | os.PathLike], **read_options):
        self.paths = [Path(p) for p in paths]
        self.read_options = read_options  # forwarded to read_clip: frames, stride, size, backend
        self.skipped: list[tuple[Path, str]] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Clip]:
        self.skipped = []
        for path in self.paths:
            try:
                clip = read_clip(path, **self.read_options)
            except MediaError as exc:
                log.warning("skipping %s: %s", path, exc.reason)
                self.skipped.append((path, exc.reason))
                continue
            yield clip


def iter_clips(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    frames: int | None = None,
    stride: int = 1,
    size: int | tuple[int, int] | None = None,
    backend: str | None = None,
) -> ClipStream:
    """Clips from a folder or file (expanded with `list_media`) or a list of files; bad files skipped."""
    files = list_media(paths) if isinstance(paths, (str, os.PathLike)) else list(paths)
    return ClipStream(files, frames=frames, stride=stride, size=size, backend=backend)


# ---------------------------------------------------------------------------------------------
# Prompt files
# ---------------------------------------------------------------------------------------------


def read_prompts(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """Prompts from a .txt (one per line), .csv / .tsv (column `column`, else "prompt", "text" or "caption" in
    any case, else an error naming the columns; PartiPrompts.tsv has "Prompt"), .jsonl (key "prompt", "text" or
    "caption") or .json (a list of strings or of such objects; VBench's "prompt_en" too).

    Blank prompts are skipped. Raises MediaError naming the file (and line) on bad content.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "no such prompt file")
    suffix = path.suffix.lower()
    if suffix not in PROMPT_EXTENSIONS:
        raise MediaError(path, f"unsupported prompt file extension {suffix!r}; use {' '.join(PROMPT_EXTENSIONS)}")
    if column is not None and suffix not in (".csv", ".tsv"):
        raise ValueError(f"column= applies to .csv/.tsv prompt files, not {suffix}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MediaError(path, f"not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8") from exc
    if suffix in (".csv", ".tsv"):
        prompts = _prompts_table(path, text, column)
    elif suffix == ".jsonl":
        prompts = _prompts_jsonl(path, text)
    elif suffix == ".json":
        prompts = _prompts_json(path, text)
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise MediaError(path, "contains no prompts")
    return prompts


def _prompts_table(path: Path, text: str, column: str | None = None) -> list[str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(rows, None)
    if not header:
        raise MediaError(path, "empty table: expected a header row")
    names = [h.strip() for h in header]
    if column is not None:
        if column not in names:
            raise MediaError(path, f"no column {column!r}; columns are {names}")
        position = names.index(column)
    else:  # the keys a .jsonl line is read by, in any case (PartiPrompts.tsv has "Prompt")
        lowered = [n.lower() for n in names]
        found = [key for key in PROMPT_KEYS if key in lowered]
        if not found:
            raise MediaError(path, f"no prompt column: the header row holds {names}; name the prompts' column "
                                   f"{' or '.join(repr(k) for k in PROMPT_KEYS)}")
        position = lowered.index(found[0])
    return [row[position] for row in rows if len(row) > position]


def _prompt_from_object(obj, path: Path, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for key in PROMPT_KEYS + ("prompt_en",):
            if isinstance(obj.get(key), str):
                return obj[key]
        raise MediaError(path, f"{where}: no prompt key {PROMPT_KEYS} in object with keys {sorted(obj)}")
    raise MediaError(path, f"{where}: expected a string or an object, got {type(obj).__name__}")


def _prompts_jsonl(path: Path, text: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MediaError(path, f"line {number}: invalid JSON ({exc.msg})") from exc
        prompts.append(_prompt_from_object(obj, path, f"line {number}"))
    return prompts


def _prompts_json(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MediaError(path, f"invalid JSON at line {exc.lineno} ({exc.msg})") from exc
    if not isinstance(data, list):
        raise MediaError(path, f"expected a JSON list of prompts, got {type(data).__name__}")
    return [_prompt_from_object(obj, path, f"item {i}") for i, obj in enumerate(data)]
