"""Pixel rewards behind one interface.

    from lrm.rewards import load
    reward = load("jpeg-compressibility")
    scores = reward(pixels)             # pixels (B, T, 3, H, W) in [0, 1] -> (B,) float32

`REWARDS` is a plain dict from name to `RewardEntry` (factory + spec + what it needs), in
lrm.rewards.registry: reading it imports no torch. A user's own metric loads from
"path/to/metric.py:fn" or "package.module:fn" (see lrm.rewards.custom). Heavy dependencies are
imported inside factories only.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass

from lrm.names import closest, unknown_name
from lrm.rewards import custom
from lrm.rewards.base import FrameReward, InputError, Reward, RewardEntry, RewardSpec
from lrm.rewards.registry import REWARDS

__all__ = ["REWARDS", "Reward", "FrameReward", "RewardSpec", "RewardEntry", "InputError", "load",
           "availability", "Availability"]


def load(name: str, **options) -> Reward:
    """Build a reward by registry name, or a user's metric from "file.py:fn" / "pkg.module:fn"."""
    if name in REWARDS:
        factory = REWARDS[name].factory.resolve()
        check_options(name, factory, options)
        return factory(**options)
    if custom.is_reference(name):
        check_options(name, custom.load_metric, options, fixed=("reference",))
        return custom.load_metric(name, **options)
    raise KeyError(unknown_name("reward", name, REWARDS,
                                hint="For your own metric pass 'path/to/metric.py:function' or "
                                     "'package.module:function'."))


def check_options(name: str, factory, options: dict, fixed: tuple[str, ...] = ()) -> None:
    """Refuse, by name, an option the factory does not take (before a TypeError from deep inside it)."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    known = [p for p in parameters if p not in fixed]
    for key, value in options.items():
        if key not in known:
            guess = closest(key, known)
            raise ValueError(f"{name} has no option {key!r}" + (f"; did you mean {guess!r}?" if guess else ".")
                             + (f" Its options: {', '.join(known)} (-o KEY=VALUE)." if known
                                else " It takes no options; leave out -o."))
        check_option_type(name, key, value, parameters[key])


OPTION_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}  # annotation -> accepted
OPTION_EXAMPLES = {"int": 8, "float": 0.5, "str": "text", "bool": "true"}


def check_option_type(name: str, key: str, value, parameter: inspect.Parameter) -> None:
    """Refuse an option value of another type than the factory's annotation ("int | None", "float", "str"),
    by name (`-o frames=abc` failed deep inside the reward with a TypeError). Annotations this check does
    not know are let through."""
    types = [t.strip() for t in str(parameter.annotation).split("|")]
    if value is None and "None" in types:
        return
    wanted = [t for t in types if t != "None"]
    if not wanted or any(t not in OPTION_TYPES for t in wanted):
        return
    if any(isinstance(value, OPTION_TYPES[t]) and (t == "bool" or not isinstance(value, bool)) for t in wanted):
        return
    default = parameter.default
    example = default if default not in (None, inspect.Parameter.empty) else OPTION_EXAMPLES[wanted[0]]
    raise ValueError(f"{name} option {key!r} takes {' or '.join(wanted)}, got {value!r}; e.g. -o {key}={example}")


@dataclass(frozen=True)
class Availability:
    missing_modules: tuple[str, ...]  # importable modules the reward needs but this env lacks
    missing_weights: tuple[str, ...]  # weight files not found on disk

    @property
    def ready(self) -> bool:
        return not self.missing_modules and not self.missing_weights


def availability(name: str) -> Availability:
    """What a registered reward still needs here, checked without importing or downloading."""
    from lrm import weights

    entry = REWARDS[name]
    missing_modules = tuple(m for m in entry.requires if importlib.util.find_spec(m) is None)
    missing_weights = tuple(w for w in entry.weights if weights.find(w) is None)
    return Availability(missing_modules, missing_weights)
