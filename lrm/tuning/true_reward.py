"""The true (gold) reward of the reward hooks: decode latents with the codec and score the pixels.

`TrueReward` wraps lrm.pixel_path.PixelPathReward with what the hooks share: the direction of the reward
(`sign`: +1 when higher is better, so `sign * score` is always maximised), a check that the reward fits the
generator (a video reward needs a video generator; a text reward needs prompts), prompts from the batch,
and the count of non-finite scores, which the hooks mask out and never train on (`finite`).
"""

from __future__ import annotations

import torch

from lrm import distributed
from lrm.pixel_path import PixelPathReward
from lrm.tuning.denoise import Batch


class TrueReward:
    """reward(codec.decode(latents), prompts) -> (B,) float32, in the reward's own units."""

    def __init__(self, codec, reward):
        self.path = PixelPathReward(codec, reward)
        self.nonfinite = 0  # scores that were NaN or Inf, skipped by the hooks

    @property
    def spec(self):
        return self.path.spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sign(self) -> float:
        """+1 when higher scores are better, -1 otherwise: the hooks maximise sign * score."""
        return 1.0 if self.spec.higher_is_better else -1.0

    def check_generator(self, latent_shape, who: str) -> None:
        """Refuse a reward of the wrong kind for samples of `latent_shape` (T', c, h, w), before any work."""
        frames = int(tuple(latent_shape)[0])
        if self.spec.is_video and frames == 1:
            raise ValueError(f"{who}: reward {self.name!r} is a {self.spec.kind} reward and this generator makes "
                             "images (1 latent frame); use an image reward or tune a video generator")

    def prompts(self, batch: Batch, who: str) -> list[str] | None:
        if not self.spec.needs_text:
            return None
        if batch.prompts is None or len(batch.prompts) != batch.size:
            raise ValueError(f"{who}: reward {self.name!r} reads prompts; give Batch(prompts=[...]) with one "
                             f"prompt per sample ({batch.size})")
        return list(batch.prompts)

    def __call__(self, latents: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """(B,) scores of latents (B, T', c, h, w); differentiable when the reward is and grad mode is on. Always in
        float32, also inside the trainer's bf16 autocast: the decode and the reward are the gold standard the hooks
        learn from (bf16 moved jpeg-incompressibility by a tenth of a batch's spread)."""
        with torch.autocast(latents.device.type, enabled=False):
            return self.path(latents.float(), prompts)

    def scored_gradient(self, latents: torch.Tensor, prompts: list[str] | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scores (B,), d score / d latents (B, T', c, h, w) or None: PixelPathReward.scored_gradient) from one
        decode, in float32 as __call__."""
        with torch.autocast(latents.device.type, enabled=False):
            return self.path.scored_gradient(latents.float(), prompts)

    def finite(self, scores: torch.Tensor) -> torch.Tensor:
        """(B,) bool mask of finite scores; the others are counted in `nonfinite` (over every torchrun rank: each
        calls this for its share of the batch)."""
        mask = torch.isfinite(scores.detach())
        self.nonfinite += distributed.sum_over_ranks(int((~mask).sum()))
        return mask
