"""The reward protocol: a spec plus `__call__(pixels, prompts) -> (B,)`.

Pixels are float tensors in [0, 1] of shape (B, T, 3, H, W); an image is T = 1.
Every reward validates its inputs the same way, chunks large batches, and returns float32
scores on the pixels' device. Image rewards score videos by averaging over (sampled) frames,
DOLLAR's frame-average video reward.

Import-light: specs and registry entries are read without torch (`lrm rewards`); torch is imported
where pixels are handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np
    import torch

KINDS = ("image", "text-image", "video", "text-video")


@dataclass(frozen=True)
class RewardSpec:
    name: str  # registry name, e.g. "jpeg-compressibility"
    kind: str  # one of KINDS: what the reward reads
    differentiable: bool  # True when gradients flow from the score back to the pixels
    higher_is_better: bool = True  # direction a tuner should push the score
    frames: int | None = None  # preferred number of frames for video kinds (None: any)
    size: int | None = None  # preferred short side in pixels (None: any)
    units: str = ""  # human-readable unit of the score, e.g. "kB"
    description: str = ""  # one line for `lrm rewards`

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"reward {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def needs_text(self) -> bool:
        return self.kind.startswith("text-")

    @property
    def is_video(self) -> bool:
        return self.kind.endswith("video")


class InputError(ValueError):
    """Pixels or prompts that a reward cannot score; the message says what was expected."""


def check_min_side(frames: torch.Tensor, min_side: int, who: str) -> None:
    """InputError naming `who` when frames (..., H, W) are smaller than min_side on either side."""
    h, w = frames.shape[-2:]
    if min(h, w) < min_side:
        raise InputError(f"{who}: frames must be at least {min_side}x{min_side} pixels, got {h}x{w}; resize them up first")


def check_pixels(pixels: torch.Tensor, who: str, atol: float = 1e-3) -> torch.Tensor:
    """Validate (B, T, 3, H, W) float pixels in [0, 1]; returns them unchanged."""
    import torch

    if not isinstance(pixels, torch.Tensor):
        raise InputError(f"{who}: pixels must be a torch.Tensor (B, T, 3, H, W), got {type(pixels).__name__}")
    if not pixels.is_floating_point():
        raise InputError(
            f"{who}: pixels must be floating point in [0, 1], got dtype {pixels.dtype}; "
            "for uint8 frames use pixels.float() / 255"
        )
    if pixels.ndim != 5:
        hint = " (an image batch: add a time axis with pixels.unsqueeze(1))" if pixels.ndim == 4 else ""
        raise InputError(f"{who}: pixels must have shape (B, T, 3, H, W), got {tuple(pixels.shape)}{hint}")
    if pixels.shape[2] != 3:
        raise InputError(
            f"{who}: pixels must have 3 RGB channels on dim 2 of (B, T, 3, H, W), got shape {tuple(pixels.shape)}"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise InputError(f"{who}: empty batch or clip, shape {tuple(pixels.shape)}")
    with torch.no_grad():
        if not torch.isfinite(pixels).all():
            raise InputError(f"{who}: pixels contain NaN or Inf")
        lo, hi = pixels.min().item(), pixels.max().item()
    if lo < -atol or hi > 1 + atol:
        raise InputError(
            f"{who}: pixels must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]; "
            "for [-1, 1] inputs use (pixels + 1) / 2, for [0, 255] use pixels / 255"
        )
    return pixels


def check_prompts(prompts: Sequence[str] | None, batch: int, spec: RewardSpec) -> list[str] | None:
    """Text rewards need one prompt per sample; other rewards ignore prompts."""
    if not spec.needs_text:
        return None
    if prompts is None:
        raise InputError(f"{spec.name}: this {spec.kind} reward needs prompts=[...] with one prompt per sample")
    if isinstance(prompts, str):
        raise InputError(f"{spec.name}: prompts must be a list of strings, not a single string; use [prompt] * batch")
    prompts = list(prompts)
    if len(prompts) != batch:
        raise InputError(f"{spec.name}: got {len(prompts)} prompts for a batch of {batch}; give one prompt per sample")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise InputError(f"{spec.name}: prompt {bad[0]} is {type(prompts[bad[0]]).__name__}, expected str")
    return prompts


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8 numpy, rounding like PIL's ToPILImage."""
    import torch

    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


class Reward:
    """Base class: validation and batch chunking around `score`.

    Subclasses set `spec` and implement `score(pixels (b, T, 3, H, W), prompts) -> (b,)`.
    """

    spec: RewardSpec
    batch_size: int = 16  # samples per chunk: bounds peak memory of large batches
    # True: the reward resizes (and, where its reference samples frames, picks them) itself, as its reference
    # metric does from the media file (VBench's adapters); `lrm score` then reads files at their own size with
    # every frame instead of pre-resizing to spec.size and pre-sampling spec.frames (--size / --frames still do)
    reads_whole_media: bool = False
    nan_means: str | None = None  # why a score may be NaN by design (shown where an item is skipped for it)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        import torch

        pixels = check_pixels(pixels, self.spec.name)
        prompt_list = check_prompts(prompts, pixels.shape[0], self.spec)
        chunks = []
        for start in range(0, pixels.shape[0], self.batch_size):
            stop = start + self.batch_size
            part = prompt_list[start:stop] if prompt_list is not None else None
            chunks.append(self.score(pixels[start:stop], part).reshape(-1))
        return torch.cat(chunks).to(device=pixels.device, dtype=torch.float32)

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, kind={self.spec.kind})"


class FrameReward(Reward):
    """An image reward applied per frame and averaged over frames (DOLLAR's frame-average reward).

    Subclasses implement `score_frames(frames (N, 3, H, W), prompts list[N] | None) -> (N,)`.
    `frames` picks K uniformly spaced frames per clip before scoring (None: every frame).
    """

    def __init__(self, frames: int | None = None):
        self.frames = frames

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        import torch

        from lrm.frames import uniform_indices

        b, t = pixels.shape[:2]
        idx = torch.as_tensor(uniform_indices(t, self.frames), device=pixels.device)
        pixels = pixels.index_select(1, idx)  # (b, k, 3, H, W)
        k = pixels.shape[1]
        frame_prompts = [p for p in prompts for _ in range(k)] if prompts is not None else None
        per_frame = self.score_frames(pixels.flatten(0, 1), frame_prompts)  # (b*k,)
        # a frame the reward cannot score (BRISQUE's NaN for a flat frame: a fade-in) leaves the clip's other
        # frames to score it; NaN only when no frame has a score
        return per_frame.reshape(b, k).float().nanmean(dim=1)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class RewardEntry:
    """One registry row: how to build a reward and what it needs, known without building it."""

    factory: object  # callable(**options) -> Reward
    spec: RewardSpec  # the spec the built reward will carry
    requires: tuple[str, ...] = ()  # importable modules the factory needs
    weights: tuple[str, ...] = ()  # names in lrm.weights.WEIGHTS the factory loads
    options: dict = field(default_factory=dict)  # documented factory options -> one-line help
