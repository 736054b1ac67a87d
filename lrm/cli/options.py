"""Option parsing shared by commands: reward options given as KEY=VALUE pairs."""

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
