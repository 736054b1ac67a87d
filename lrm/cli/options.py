"""Option parsing shared by commands: reward options (KEY=VALUE pairs, --kind/--input) and the torch device."""

from __future__ import annotations

import json

import typer


def parse_options(pairs: list[str] | None) -> dict:
    """["frames=8", "model=ViT-B-32", "kind=video"] -> {"frames": 8, "model": "ViT-B-32", "kind": "video"}.

    Values are read as JSON when they parse (numbers, true/false, null), else kept as strings.
    """
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. --option frames=8)")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def with_metric_options(options: dict, rewards: list[str], kind: str | None, input: str | None) -> dict:
    """`options` plus --kind/--input, which describe a user's own metric: refused for built-in rewards."""
    if not (kind or input):
        return options
    from lrm.rewards import REWARDS

    built_in = [r for r in rewards if r in REWARDS]
    if built_in:
        raise typer.BadParameter(f"--kind/--input describe your own metric; {', '.join(built_in)} built in: "
                                 "leave them out for built-in rewards")
    return {**options, **{k: v for k, v in (("kind", kind), ("input", input)) if v is not None}}


def check_positive(value: float) -> float:
    """Typer callback for a rate that must be a finite number > 0 (a learning rate): refused before any work."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value!r}")
    return value


def check_device(value: str) -> str:
    """Typer callback for --device: refuse, before any work, a device this machine does not have."""
    if value == "cpu":  # every machine has one; answered without importing torch
        return value
    import torch

    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise typer.BadParameter(f"{value!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count()  # 0 without a GPU or with a CPU-only torch build
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise typer.BadParameter(f"{value!r}: no CUDA GPU is visible here (torch {torch.__version__}, {build}); "
                                     "use --device cpu")
        if device.index is not None and device.index >= count:
            raise typer.BadParameter(f"{value!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise typer.BadParameter(f"{value!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise typer.BadParameter(f"{value!r}: lrm runs on cpu, cuda or mps")
    return value


def standalone_app(register, no_args_is_help: bool = True) -> typer.Typer:
    """One command module's commands alone, for `python -m lrm.cli.MODULE` (tests and torchrun):
    `register(app)` adds them to a fresh app. A module with one command that runs with no arguments
    (`lrm distill`) passes no_args_is_help=False."""
    app = typer.Typer(no_args_is_help=no_args_is_help, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    return app
