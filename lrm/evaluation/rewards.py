"""True (gold) rewards of generated samples: pixel rewards from lrm.rewards on decoded samples.

    summaries = decoded_rewards(latents, codec, prompts, ["prompt-color", "jpeg-compressibility"])
    summaries["prompt-color"].mean

A reward may return NaN for a sample it cannot score (prompt-color for a prompt naming no colour):
statistics are over the finite scores, and `scored` says how many there were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lrm.rewards import Reward, load


@dataclass(frozen=True)
class RewardSummary:
    mean: float  # mean of the finite scores (NaN when none is finite)
    std: float  # their population std
    scored: int  # how many samples got a finite score
    values: list[float]  # (N,) every score, NaN included, in sample order


def summarise(scores: torch.Tensor) -> RewardSummary:
    """(N,) scores -> RewardSummary over the finite ones."""
    scores = scores.detach().double().cpu()
    finite = scores[torch.isfinite(scores)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    std = float(finite.std(unbiased=False)) if len(finite) else float("nan")
    return RewardSummary(mean, std, len(finite), scores.tolist())


def _build(rewards: Sequence[str] | Mapping[str, Reward]) -> dict[str, Reward]:
    if isinstance(rewards, Mapping):
        return dict(rewards)
    return {name: load(name) for name in rewards}


def sample_rewards(pixels: torch.Tensor, prompts: Sequence[str] | None,
                   rewards: Sequence[str] | Mapping[str, Reward]) -> dict[str, RewardSummary]:
    """pixels (N, T, 3, H, W) in [0, 1], their prompts (N,) and reward names (or built rewards) ->
    name -> RewardSummary."""
    built = _build(rewards)
    with torch.no_grad():
        return {name: summarise(reward(pixels, prompts)) for name, reward in built.items()}


def decoded_rewards(latents: torch.Tensor, codec, prompts: Sequence[str] | None,
                    rewards: Sequence[str] | Mapping[str, Reward], batch_size: int = 16) -> dict[str, RewardSummary]:
    """Latents (N, T, c, h, w) of generated samples, decoded by `codec` in chunks of `batch_size`, then
    scored as in `sample_rewards`."""
    if batch_size < 1:
        raise ValueError(f"decoded_rewards: batch_size must be >= 1, got {batch_size}")
    built = _build(rewards)
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in built}
    with torch.no_grad():
        for start in range(0, latents.shape[0], batch_size):
            pixels = codec.decode(latents[start : start + batch_size]).clamp(0, 1)  # (b, T, 3, H, W)
            part = list(prompts[start : start + batch_size]) if prompts is not None else None
            for name, reward in built.items():
                scores[name].append(reward(pixels, part).cpu())
    return {name: summarise(torch.cat(parts)) for name, parts in scores.items()}
