"""Data for labelling and fitting: media files, procedural clips (the embedded default).

    from lrm.datasets import read_clip, iter_clips, read_prompts, ProceduralClips, ProceduralConfig
"""

from __future__ import annotations

from lrm.datasets.clip import Clip
from lrm.datasets.media import (
    ClipStream,
    MediaError,
    iter_clips,
    list_media,
    media_kind,
    read_clip,
    read_prompts,
    resize_center_crop,
    video_backend,
)
from lrm.datasets.procedural import PALETTE, ProceduralClips, ProceduralConfig, make_clip

__all__ = [
    "Clip",
    "ClipStream",
    "MediaError",
    "iter_clips",
    "list_media",
    "media_kind",
    "read_clip",
    "read_prompts",
    "resize_center_crop",
    "video_backend",
    "PALETTE",
    "ProceduralClips",
    "ProceduralConfig",
    "make_clip",
]
