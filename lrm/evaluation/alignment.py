"""Prompt alignment for procedural captions: do a sample's object colour and shape match its caption?

Procedural captions (lrm.datasets.procedural.caption) name each object as "<size> <colour> <shape>"
("a small red circle ... and a large blue square over a green striped background"), with colour
words from PALETTE and shapes from SHAPES; the background colour follows "over a".

Per frame, measured from pixels alone:
1. Colour: each pixel gets a soft colour-name assignment (lrm.rewards.prompt_color: CIE Lab,
   nearest-prototype softmax, frames area-averaged to a 64-px short side). The object colour is the
   name most over-represented in the frame relative to its border ring (mean probability over the
   frame minus over the border): the background, stripes, texture and noise cover the border as
   much as the interior, so they cancel, and an object away from the border stands out.
   The colour matches when it is one of the object colours the caption names.
2. Shape: the pixels whose most likely colour is that object colour, largest connected region,
   are matched (intersection over union) against the procedural generator's own shape masks
   (lrm.datasets.procedural._coverage) of every shape in SHAPES, centred on the region's centroid
   with a radius fitted to its area; the best match is the measured shape. It matches when it is
   the shape the caption names for that colour.
A sample's colour and shape scores are the fraction of its frames that match; `alignment` averages
over samples. Across frames, for clips:
3. Motion: for a caption that names an object "moving <direction>" (up, down-left, ...), the centroid
   of that colour's largest region is followed over the frames; the least-squares velocity of the
   centroids must point closer to the named direction than to any other of the eight (DIRECTIONS) and
   move at least MIN_SPEED short sides per frame. A clip scores 1 or 0 for its first moving object;
   `alignment` averages over the clips whose captions name one (None when none does, e.g. for images).

Measured on the procedural frames themselves, with their own captions (colour / shape): 200 images
at 64 px (seed 0) 0.92 / 0.78, at 128 px 0.94 / 0.85; 60 eight-frame clips at 64 px (seed 5)
0.84 / 0.75; the same 200 images with shuffled captions 0.11 / 0.015 (chance: about 1/11 colours,
1/6 shapes). Motion (benchmarks/alignment_ceiling.py: 150 clips at 64 px, seed 5, 94 naming a moving
object): 0.97-0.98 for 3, 4 and 8 frames of the simple world (the embedded teacher's) with their own
captions, 0.01 with shuffled captions and 0.0 played backwards, no still object read as moving; the
full world 0.79 / 0.80 / 0.88 at 3 / 4 / 8 frames (shaking objects, camera motion and noise; 9-18% of
its still objects read as moving). Misses come from heavy blur, noise and JPEG artifacts, small or
overlapping shapes and shapes cut by the border. These are the ceiling a generator's samples can
reach: compare a generator's alignment with them, not with 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from lrm.datasets.procedural import DIRECTIONS, PALETTE, SHAPES, SIZES, _coverage
from lrm.rewards.base import check_pixels
from lrm.rewards.prompt_color import BORDER_FRACTION, COLOR_NAMES, color_probabilities, shrink, srgb_to_lab

_OBJECT = re.compile(r"\b(" + "|".join(SIZES) + r") (" + "|".join(PALETTE) + r") (" + "|".join(SHAPES) + r")\b")
_MOVING = re.compile(r"\b(" + "|".join(PALETTE) + r") (?:" + "|".join(SHAPES) + r") moving ("
                     + "|".join(sorted(DIRECTIONS, key=len, reverse=True)) + r")\b")
MIN_SPEED = 0.003  # short sides per frame an object must move to count as moving (the slowest procedural: 0.006)
RADIUS_FACTORS = (0.85, 1.0, 1.15)  # radii tried around the one whose template area equals the region's
REFERENCE_RADIUS = 16.0  # pixels: the templates' areas are measured once at this radius


def caption_motions(caption: str) -> dict[str, str]:
    """Object colour -> direction of each object a procedural caption says is "moving <direction>" (the first
    one's, when two objects of a colour move)."""
    motions: dict[str, str] = {}
    for color, direction in _MOVING.findall(caption):
        motions.setdefault(color, direction)
    return motions


def caption_objects(caption: str) -> dict[str, str]:
    """Object colour -> shape named in a procedural caption ({} when it names no "<size> <colour> <shape>")."""
    return {color: shape for _, color, shape in _OBJECT.findall(caption)}


@dataclass(frozen=True)
class FrameReading:
    color: str  # the colour name most over-represented against the border
    shape: str | None  # best-matching shape of that colour's largest region (None: no region)
    shape_iou: float  # its intersection over union with the fitted template (0 without a region)


def object_color(probabilities: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) colour-name probabilities -> (N,) index of the name most over-represented vs. the border."""
    h, w = probabilities.shape[1:3]
    ring = max(1, round(min(h, w) * BORDER_FRACTION))
    border = torch.ones(h, w, dtype=torch.bool, device=probabilities.device)
    border[ring : h - ring, ring : w - ring] = False
    excess = probabilities.mean(dim=(1, 2)) - probabilities[:, border].mean(dim=1)  # (N, C)
    return excess.argmax(dim=1)


@lru_cache(maxsize=4)
def _template_areas(h: int, w: int) -> dict[str, float]:
    center = np.array([[w / 2, h / 2]], dtype=np.float32)
    return {kind: float(_coverage({"shape": kind, "radius": REFERENCE_RADIUS}, center, h, w).sum()) for kind in SHAPES}


def fit_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """(H, W) bool region -> (best shape in SHAPES, its IoU) over templates centred on the largest
    connected component's centroid, with radii matched to its area."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return None, 0.0
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = labels == largest
    area = float(region.sum())
    h, w = mask.shape
    side = max(h, w, 4 * int(REFERENCE_RADIUS))
    areas = _template_areas(side, side)
    center = centroids[largest].astype(np.float32)[None] + 0.5  # pixel-centre coordinates, as _coverage uses
    best, best_iou = None, 0.0
    for kind in SHAPES:
        base = REFERENCE_RADIUS * np.sqrt(area / areas[kind])
        for factor in RADIUS_FACTORS:
            template = _coverage({"shape": kind, "radius": base * factor}, center, h, w)[0] > 0.5
            iou = float((template & region).sum() / max((template | region).sum(), 1))
            if iou > best_iou:
                best, best_iou = kind, iou
    return best, best_iou


def read_frames(frames: torch.Tensor) -> tuple[list[FrameReading], np.ndarray]:
    """(N, 3, H, W) frames in [0, 1] -> the object colour and shape read from each, and the index in COLOR_NAMES
    of each pixel's most likely colour (N, h, w) at the 64-px short side colours are read at."""
    with torch.no_grad():
        probabilities = color_probabilities(srgb_to_lab(shrink(frames.float())))  # (N, h, w, C)
        colors = object_color(probabilities)  # (N,)
        names = probabilities.argmax(dim=-1).cpu().numpy()  # (N, h, w)
    readings = []
    for i, color in enumerate(colors.tolist()):
        shape, iou = fit_shape(names[i] == color)
        readings.append(FrameReading(COLOR_NAMES[color], shape, iou))
    return readings, names


@dataclass(frozen=True)
class Alignment:
    color: float  # mean over samples of the fraction of frames whose object colour the caption names
    shape: float  # ... whose object colour is named and whose shape is the one named with it
    per_sample_color: list[float]  # (N,) per sample
    per_sample_shape: list[float]  # (N,) per sample
    motion: float | None = None  # fraction of the clips naming a moving object whose object moves that way; None
    #                              when no sample is such a clip


def centroid_velocity(names: np.ndarray, color: str) -> np.ndarray | None:
    """names (T, h, w): a clip's most likely colour per pixel (read_frames) -> the least-squares velocity (dx, dy) of
    the centroid of `color`'s largest region, in short sides per frame; None when it is found in fewer than 2
    frames."""
    index = COLOR_NAMES.index(color)
    steps, centers = [], []
    for t, frame in enumerate(names):
        count, labels, stats, centroids = cv2.connectedComponentsWithStats((frame == index).astype(np.uint8),
                                                                           connectivity=8)
        if count >= 2:
            steps.append(t)
            centers.append(centroids[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))])
    if len(steps) < 2:
        return None
    velocity = np.polyfit(np.asarray(steps, dtype=np.float64), np.asarray(centers), 1)[0]  # (2,) pixels per frame
    return velocity / min(names.shape[1:])


def moving_direction(names: np.ndarray, color: str) -> str | None:
    """names (T, h, w): a clip's most likely colour per pixel (read_frames) -> the direction in DIRECTIONS closest
    to the centroid velocity of `color`'s largest region (centroid_velocity), or None when it is found in fewer
    than 2 frames or moves slower than MIN_SPEED short sides per frame."""
    velocity = centroid_velocity(names, color)
    if velocity is None or np.linalg.norm(velocity) < MIN_SPEED:
        return None
    return max(DIRECTIONS, key=lambda name: float(np.dot(DIRECTIONS[name], velocity)))


def motion_alignment(names: np.ndarray, captions: Sequence[str]) -> float | None:
    """names (N, T, h, w): each clip's most likely colour per pixel (read_frames) -> fraction of the clips (T >= 2)
    whose caption names a moving object that moves the named way (its first moving object); None when no clip
    names one."""
    hits = []
    for clip, caption in zip(names, captions):
        moving = caption_motions(caption)
        if clip.shape[0] < 2 or not moving:
            continue
        color, direction = next(iter(moving.items()))
        hits.append(moving_direction(clip, color) == direction)
    return float(np.mean(hits)) if hits else None


def alignment(pixels: torch.Tensor, captions: Sequence[str]) -> Alignment:
    """pixels (N, T, 3, H, W) in [0, 1] and their procedural captions (N,) -> colour, shape and (clips) motion
    alignment."""
    check_pixels(pixels, "alignment")
    if len(captions) != pixels.shape[0]:
        raise ValueError(f"alignment: {pixels.shape[0]} samples but {len(captions)} captions")
    objects = [caption_objects(c) for c in captions]
    unnamed = [i for i, o in enumerate(objects) if not o]
    if unnamed:
        raise ValueError(f"alignment: caption {unnamed[0]} ({captions[unnamed[0]]!r}) names no '<size> <colour> "
                         "<shape>' object; alignment reads procedural captions (lrm.datasets.procedural)")
    n, frames = pixels.shape[:2]
    readings, names = read_frames(pixels.flatten(0, 1))
    color_hits, shape_hits = np.zeros((n, frames)), np.zeros((n, frames))
    for k, reading in enumerate(readings):
        i, f = divmod(k, frames)
        named_shape = objects[i].get(reading.color)
        color_hits[i, f] = named_shape is not None
        shape_hits[i, f] = named_shape is not None and reading.shape == named_shape
    motion = motion_alignment(names.reshape(n, frames, *names.shape[1:]), captions)
    return Alignment(float(color_hits.mean()), float(shape_hits.mean()), color_hits.mean(1).tolist(),
                     shape_hits.mean(1).tolist(), motion)
