"""Users' own metrics: "path/to/metric.py:fn" or "package.module:fn" become lrm rewards.

The function receives either the pixel tensor (input="tensor": (B, T, 3, H, W) float in [0, 1],
plus prompts for text kinds) or uint8 frames (input="uint8": one (T, H, W, 3) numpy array per
clip, plus its prompt for text kinds) and returns one score per clip (a number; NaN or infinity
marks a clip it cannot score). No code inside lrm needed:

    def sharpness(frames):                 # input="uint8", kind="video"
        return float(np.abs(np.diff(frames.astype(float), axis=0)).mean())
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lrm.rewards.base import KINDS, InputError, Reward, RewardSpec, to_uint8_frames

if TYPE_CHECKING:
    import torch

INPUTS = ("tensor", "uint8")
_REFERENCE = re.compile(r"^(?P<target>[^:]+(?:\.py)?):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")


def is_reference(name: str) -> bool:
    return bool(_REFERENCE.match(name))


def resolve_function(reference: str) -> Callable:
    """Import `fn` from "file.py:fn" (a path) or "package.module:fn" (an importable module)."""
    match = _REFERENCE.match(reference)
    if not match:
        raise ValueError(f"{reference!r} is not 'path/to/file.py:function' or 'package.module:function'")
    target, fn_name = match["target"], match["fn"]
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"metric file {path} does not exist (from {reference!r})")
        module_name = f"lrm_user_metric_{path.stem}_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(module_name, None)
            raise ValueError(f"metric file {path} has a syntax error at line {exc.lineno}: {exc.msg}; "
                             "fix the file (python -m py_compile shows it)") from exc
        except Exception as exc:  # the user's module failed while importing: name it, not lrm
            sys.modules.pop(module_name, None)
            raise ValueError(f"metric file {path} failed to import: {type(exc).__name__}: {exc}; "
                             f"fix the file (python {path} shows the traceback)") from exc
    else:
        if "/" in target or "\\" in target or target.startswith("."):
            raise ValueError(f"{reference!r}: {target} looks like a file path; give the file with its .py ending "
                             f"({target}.py:{fn_name}) or a module name (package.module:{fn_name})")
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ValueError(f"{reference!r}: no module named {exc.name!r}; give a path ending in .py, or make "
                             f"{target} importable (pip install it, or add its folder to PYTHONPATH)") from exc
        except SyntaxError as exc:
            raise ValueError(f"metric module {target} has a syntax error in {exc.filename} at line {exc.lineno}: "
                             f"{exc.msg}; fix the file") from exc
        except Exception as exc:  # the user's module failed while importing (an ImportError inside it, ...)
            raise ValueError(f"metric module {target} failed to import: {type(exc).__name__}: {exc}; fix it "
                             f"(python -c 'import {target}' shows the traceback)") from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        defined = sorted(name for name, value in vars(module).items()
                         if inspect.isfunction(value) and value.__module__ == module.__name__)
        raise ValueError(f"{reference!r}: {target} has no function {fn_name!r}; it defines: "
                         f"{', '.join(defined) or 'no functions'}")
    return fn


def metric_identity(reference: str) -> dict | None:
    """What computes a user metric, as its label columns record it and are matched by: the file (resolved; for
    "package.module:fn" the module's source file, None without one), the function and the sha256 of the file's
    bytes. So "./m.py:fn" and "m.py:fn" are one metric, and an edited m.py another. None for a built-in reward."""
    match = _REFERENCE.match(reference)
    if not match:
        return None
    target = match["target"]
    if target.endswith(".py"):
        path, module = Path(target).expanduser().resolve(), None
    else:
        try:
            found, module = importlib.util.find_spec(target), target
        except ImportError:  # a parent package is missing
            found = None
        if found is None:
            raise ValueError(f"{reference!r}: no module named {target!r}; make it importable (pip install it, or "
                             "add its folder to PYTHONPATH)")
        path = Path(found.origin) if found.has_location and found.origin.endswith(".py") else None
    return {"file": str(path) if path else None, "module": module, "function": match["fn"],
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path else None}


class MetricError(InputError):
    """A user's metric raised, or returned something that is not one number per clip."""


def _number(value, who: str) -> float:
    """A user metric's value for one clip as a float; NaN / infinity pass through (callers skip them)."""
    if hasattr(value, "item") and hasattr(value, "shape") and math.prod(value.shape) == 1:
        value = value.item()  # a numpy scalar, or a one-element array / tensor
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricError(f"{who} returned {_shown(value)} for a clip; return one number per clip")
    return float(value)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:50]}..."


class MetricReward(Reward):
    """Wraps a user's function behind the reward protocol: what it raises or returns wrong is a MetricError
    (an InputError) naming the metric, so callers skip and count the clip instead of crashing."""

    def __init__(self, fn: Callable, spec: RewardSpec, input: str):
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
        if input == "uint8" and spec.differentiable:
            raise ValueError("a metric of uint8 frames cannot be differentiable; use input='tensor'")
        self.fn, self.spec, self.input = fn, spec, input

    def _call(self, *args):
        try:
            return self.fn(*args)
        except Exception as exc:  # the user's code failed on this input
            hint = ""
            if self.input == "tensor" and isinstance(exc, AttributeError) and "'Tensor' object" in str(exc):
                hint = ("; it was given a torch tensor (N, T, 3, H, W) in [0, 1]: for numpy uint8 frames (T, H, W, 3) "
                        "per clip pass --input uint8 (input='uint8')")
            raise MetricError(f"{self.spec.name} raised {type(exc).__name__}: {exc}{hint}") from exc

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        import torch

        if self.input == "tensor":
            out = self._call(pixels, prompts) if self.spec.needs_text else self._call(pixels)
            try:
                out = torch.as_tensor(out, device=pixels.device)
            except (TypeError, ValueError, RuntimeError) as exc:  # None, strings, ragged lists
                raise MetricError(f"{self.spec.name} returned {_shown(out)}; return a tensor of one score per "
                                  "clip, shape (B,)") from exc
            if out.dtype == torch.bool or out.is_complex():
                raise MetricError(f"{self.spec.name} returned a {out.dtype} tensor; return real scores, shape (B,)")
        else:
            values = []
            for i, clip in enumerate(pixels):
                frames = to_uint8_frames(clip)  # (T, H, W, 3) uint8
                value = self._call(frames, prompts[i]) if self.spec.needs_text else self._call(frames)
                values.append(_number(value, self.spec.name))
            out = torch.tensor(values)
        out = out.reshape(-1).float()
        if out.numel() != pixels.shape[0]:
            raise InputError(
                f"{self.spec.name}: the metric returned {out.numel()} values for {pixels.shape[0]} clips; "
                "return one score per clip"
            )
        return out


def load_metric(reference: str, kind: str = "image", input: str = "tensor", differentiable: bool = False,
                higher_is_better: bool = True, name: str | None = None, frames: int | None = None) -> Reward:
    """A reward from a user's function. `kind` is one of KINDS; for "image" kinds the function
    sees the whole clip (average over frames yourself or use kind="video")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    fn = resolve_function(reference)
    expected = 2 if kind.startswith("text-") else 1
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) > expected:
        raise ValueError(
            f"{reference}: a {kind} metric is called with {expected} argument(s) "
            f"({'pixels, prompts' if expected == 2 else 'pixels'}), but it requires {len(params)}"
        )
    positional = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if expected == 2 and len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in positional):
        raise ValueError(f"{reference}: a {kind} metric is called with the pixels and the prompts, but it takes "
                         f"{len(positional)} argument(s); add the prompts argument, or use --kind "
                         f"{kind.removeprefix('text-')}")
    spec = RewardSpec(name=name or reference, kind=kind, differentiable=differentiable,
                      higher_is_better=higher_is_better, frames=frames,
                      description=f"user metric {reference} ({input} input)")
    return MetricReward(fn, spec, input)
