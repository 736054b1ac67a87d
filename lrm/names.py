"""One message for an unknown name (a reward, a codec, a preset, an option): what was asked, the closest
known name, and the known names.

    raise KeyError(unknown_name("reward", "colourfulness", REWARDS))
    # unknown reward 'colourfulness'; did you mean 'colorfulness'? Known rewards: brisque, colorfulness, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib similarity below which no suggestion is made ("colourfulness" vs "colorfulness": 0.96)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The known name most like `name` (case-insensitive), or None when none is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=CUTOFF)
    return by_lower[match[0]] if match else None


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> str:
    """'unknown KIND 'NAME'; did you mean 'X'? Known KINDs: a, b, c.' plus an optional hint sentence."""
    choices = sorted(choices)
    guess = closest(name, choices)
    suggestion = f"; did you mean {guess!r}?" if guess else "."
    kinds = f"{kind}es" if kind.endswith("s") else f"{kind}s"  # losses, rewards
    known = f" Known {kinds}: {', '.join(choices)}." if choices else f" There are no {kinds}."
    return f"unknown {kind} {name!r}{suggestion}{known}{f' {hint}' if hint else ''}"


def not_one_of(what: str, value: str, choices: Iterable[str]) -> str:
    """'WHAT must be one of a, b, c, got 'x'; did you mean 'b'?' for a value outside a short fixed list."""
    choices = list(choices)
    guess = closest(str(value), choices)
    return (f"{what} must be one of {', '.join(choices)}, got {value!r}"
            + (f"; did you mean {guess!r}?" if guess else ""))
