"""The item every dataset yields: a clip of pixels plus where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Clip:
    """One image (T = 1) or video clip, as read from a file or rendered procedurally."""

    pixels: torch.Tensor  # (T, 3, H, W) float32 in [0, 1]
    source: str  # file path, or "procedural:seed=S:index=I"
    group: str  # split key: clips sharing a group must land on the same side of a train/test split
    frame_indices: tuple[int, ...]  # indices of the returned frames in the source's frame axis
    num_frames: int  # frames in the source before sampling (1 for an image)
    fps: float | None = None  # frame rate of the source; None for images and unknown rates
    caption: str | None = None  # text describing the clip, where one is known
    attributes: dict = field(default_factory=dict)  # generator parameters of a procedural clip

    def __post_init__(self):
        if self.pixels.ndim != 4 or self.pixels.shape[1] != 3:
            raise ValueError(f"clip {self.source}: pixels must be (T, 3, H, W), got {tuple(self.pixels.shape)}")
        if len(self.frame_indices) != self.pixels.shape[0]:
            raise ValueError(
                f"clip {self.source}: {len(self.frame_indices)} frame indices for {self.pixels.shape[0]} frames"
            )
