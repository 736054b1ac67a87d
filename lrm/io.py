"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

Readers see the old file or the whole new one, never a part. Each write has a temporary file of its
own ("<name>.<random>.tmp"), so processes that write one file at the same time do not collide: the
last rename wins.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


TMP_SUFFIX = ".tmp"  # temporary files are "<name>.<random>.tmp" beside their target


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_umask() -> int:
    umask = os.umask(0)  # the only way to read it; set it straight back (at import, before any threads)
    os.umask(umask)
    return umask


_UMASK = _process_umask()


def new_file_mode() -> int:
    """The permissions open() gives a new file under the process umask (0644 under umask 022)."""
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it into place. A path that cannot be written (a
    folder there, a read-only or missing parent) raises OSError naming `path`, not the temporary file."""
    path = Path(path)
    try:
        return _atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.strerror is None:  # already ours, or one without an errno
            raise
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}; pass a file path in a folder you can "
                                 "write") from exc


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    for folder in (path.parent, *path.parent.parents):  # mkdir would say "File exists" of a file in the way
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder; pass a file path "
                                         "in a folder you can write")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp makes files private (0600); give the usual rw-r--r--
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, strict: bool = False) -> Path:
    """Write obj as indented JSON; `strict` writes NaN and infinities as null, so that every JSON parser
    reads the file (Python's json and jq accept NaN, JavaScript's JSON.parse does not)."""
    if strict:
        obj = finite_or_null(obj)
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=not strict)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | Path, fix: str):
    """The JSON of one of lrm's own files; a damaged one (cut by a full disk, edited by hand) is one ValueError
    naming the file and `fix`, not the parser's "Expecting value: line 1 column 1"."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged (not JSON: {exc}); {fix}") from None


def read_safetensors(path: str | Path, fix: str, device: str = "cpu") -> dict:
    """The tensors of one of lrm's safetensors files; a damaged one (truncated, foreign) is one ValueError naming it
    and `fix`, not safetensors' SafetensorError."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device=device)
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors' own SafetensorError, or an OSError of a truncated file
        raise ValueError(f"{path} is damaged (not safetensors: {exc}); {fix}") from None


def _json_default(obj):
    """What json.dumps does not know: numpy scalars and 0-d tensors as numbers, anything else (paths) as text."""
    return obj.item() if getattr(obj, "shape", None) == () and hasattr(obj, "item") else str(obj)


def finite_or_null(obj):
    """obj with every non-finite float (in dicts, lists and tuples, at any depth) replaced by None; numpy
    scalars and 0-d tensors become Python numbers first (json.dumps would write them as strings)."""
    if getattr(obj, "shape", None) == () and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj
