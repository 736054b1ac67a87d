"""Pixel rewards behind one interface.

    from lrm.rewards import load
    reward = load("jpeg-compressibility")
    scores = reward(pixels)             # pixels (B, T, 3, H, W) in [0, 1] -> (B,) float32

`REWARDS` is a plain dict from name to `RewardEntry` (factory + spec + what it needs). A user's
own metric loads from "path/to/metric.py:fn" or "package.module:fn" (see lrm.rewards.custom).
Heavy dependencies are imported inside factories only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from lrm.rewards import clip, custom, image, imagereward, niqe, pickscore, prompt_color, quality, vbench_dims, video
from lrm.rewards.base import FrameReward, InputError, Reward, RewardEntry, RewardSpec

REWARDS: dict[str, RewardEntry] = {
    **image.ENTRIES,
    **quality.ENTRIES,
    **niqe.ENTRIES,
    **prompt_color.ENTRIES,
    **video.ENTRIES,
    **clip.ENTRIES,
    **pickscore.ENTRIES,
    **imagereward.ENTRIES,
    **vbench_dims.ENTRIES,
}

__all__ = ["REWARDS", "Reward", "FrameReward", "RewardSpec", "RewardEntry", "InputError", "load",
           "availability", "Availability"]


def load(name: str, **options) -> Reward:
    """Build a reward by registry name, or a user's metric from "file.py:fn" / "pkg.module:fn"."""
    if name in REWARDS:
        return REWARDS[name].factory(**options)
    if custom.is_reference(name):
        return custom.load_metric(name, **options)
    raise KeyError(
        f"unknown reward {name!r}. Known rewards: {', '.join(sorted(REWARDS))}. "
        "For your own metric pass 'path/to/metric.py:function' or 'package.module:function'."
    )


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
