"""The pixel path: a pixel reward read through a codec's decoder, as a reward on latents.

    path = PixelPathReward(codecs.load("dct"), rewards.load("niqe"))
    scores = path(latents)          # (B, T', c, h, w) -> (B,) = niqe(codec.decode(latents))
    (-scores.mean()).backward()     # the gradient reaches the latents through reward and decoder

A surrogate (lrm.models) imitates R(decode(x)) with a small network on the latents; the pixel path
computes it exactly, at the cost of running the decoder and the reward (and, for a gradient,
keeping their activations). It is the reference a surrogate is compared against and what direct
pixel-gradient tuning (ReFL / DRaFT style) backpropagates through. It lives beside lrm.fitting and
lrm.fidelity, not in lrm.rewards or lrm.codecs, because it joins the two: it takes any codec
(`encode` / `decode`, `batch_size`, an nn.Module) and any reward (`spec` + `__call__(pixels,
prompts)`), and imports neither package.

Latents are decoded and scored in chunks of the codec's `batch_size` clips, so memory is bounded
by one chunk's decode when no gradient is taken. The codec follows the latents' device (it is
moved there on the first call) and keeps its own dtype, as its `decode` casts. A reward whose
spec says it is not differentiable (BRISQUE, JPEG size, most video metrics) still scores latents,
but asking it for a gradient (latents that require grad, with grad mode on) is an error that
names the reward and the fix: fit a surrogate, or score under torch.no_grad().
"""

from __future__ import annotations

from typing import Sequence

import torch


class PixelPathReward:
    """reward(codec.decode(latents), prompts) for latents (B, T', c, h, w) -> (B,) float32 in the reward's units."""

    def __init__(self, codec, reward):
        self.codec = codec
        self.reward = reward

    @property
    def spec(self):
        """The pixel reward's spec (its name, units, direction, differentiability)."""
        return self.reward.spec

    @property
    def differentiable(self) -> bool:
        """True when a gradient of the score reaches the latents (the codec's decoder is a torch module)."""
        return self.reward.spec.differentiable

    def __call__(self, latents: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        name = self.reward.spec.name
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"pixel path of {name!r}: latents must have shape (B, T', c, h, w), got {shape}")
        if prompts is not None and (isinstance(prompts, str) or len(prompts) != latents.shape[0]):
            raise ValueError(f"pixel path of {name!r}: give one prompt per sample ({latents.shape[0]}), "
                             f"got {'a single string' if isinstance(prompts, str) else len(prompts)}")
        if latents.requires_grad and torch.is_grad_enabled() and not self.differentiable:
            raise ValueError(f"reward {name!r} is not differentiable (its spec says so), so no gradient reaches "
                             f"the latents through it; fit a latent surrogate of it (`lrm fit {name}`) and "
                             "backpropagate through that, or score under torch.no_grad()")
        self.codec.to(latents.device)
        step = self.codec.batch_size
        scores = []
        for start in range(0, latents.shape[0], step):
            pixels = self.codec.decode(latents[start:start + step])  # (b, T, 3, H, W) in [0, 1]
            part = list(prompts[start:start + step]) if prompts is not None else None
            scores.append(self.reward(pixels, part))  # (b,)
        return torch.cat(scores)

    def scored_gradient(self, latents: torch.Tensor, prompts: Sequence[str] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scores (B,), detached; d score / d latents (B, T', c, h, w), or None when the score carries no gradient:
        a reward that detaches its pixels) from one decode, a chunk of the codec's `batch_size` clips at a time
        (the rows are independent, so one chunk's pixel graph is in memory at once)."""
        step = self.codec.batch_size
        scores, grads = [], []
        for start in range(0, latents.shape[0], step):
            with torch.enable_grad():
                x = latents[start:start + step].detach().requires_grad_(True)
                score = self(x, list(prompts[start:start + step]) if prompts is not None else None)
                grads.append(torch.autograd.grad(score.sum(), x)[0] if score.requires_grad else None)
            scores.append(score.detach())
        return torch.cat(scores), None if any(g is None for g in grads) else torch.cat(grads)

    def latent_gradient(self, latents: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor | None:
        """d score / d latents (B, T', c, h, w) (scored_gradient); None when the score carries no gradient."""
        return self.scored_gradient(latents, prompts)[1]

    def __repr__(self) -> str:
        return f"PixelPathReward(codec={getattr(self.codec, 'name', self.codec)!r}, reward={self.reward.spec.name!r})"
