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
    for key in options:
        if key not in known:
            guess = closest(key, known)
            raise ValueError(f"{name} has no option {key!r}" + (f"; did you mean {guess!r}?" if guess else ".")
                             + (f" Its options: {', '.join(known)} (-o KEY=VALUE)." if known
                                else " It takes no options; leave out -o."))


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
