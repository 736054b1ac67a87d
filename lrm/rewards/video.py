"""Weight-free video rewards after VBench (Huang et al., CVPR 2024; pip vbench 0.1.5).

- temporal-flickering: VBench's exact definition (vbench/temporal_flickering.py).
- dynamic-degree / dynamic-degree-binary: VBench's protocol (vbench/dynamic_degree.py) with
  OpenCV DIS optical flow in place of RAFT.
- motion-smoothness: a DIS flow interpolation error standing in for VBench's AMT-based metric
  (vbench/motion_smoothness.py), with the same frame selection and normalisation.

Every reward converts pixels with `to_uint8_frames` (round to 0..255, as a decoded video holds them)
and scores each clip of the batch on its own, at the clip's own resolution.
"""

from __future__ import annotations

import numpy as np
import torch

from lrm.rewards.base import InputError, Reward, to_uint8_frames
from lrm.rewards.flow import check_preset, dis_flow, interpolate_middle, top_fraction_mean
from lrm.rewards.registry import spec_of


def check_frame_count(name: str, frames: int, needed: int, why: str) -> None:
    if frames < needed:
        raise InputError(
            f"{name}: needs clips of at least {needed} frames ({why}), got T = {frames}; "
            f"pass pixels (B, T, 3, H, W) with T >= {needed}, e.g. decode more frames of the video"
        )


def score_clips(pixels: torch.Tensor, score_clip) -> torch.Tensor:
    """Apply `score_clip((T, H, W, 3) uint8) -> float` to every clip of (b, T, 3, H, W). -> (b,)"""
    return torch.tensor([score_clip(to_uint8_frames(clip)) for clip in pixels], dtype=torch.float64)


# --------------------------------------------------------------------------- temporal flickering


class TemporalFlickering(Reward):
    """VBench temporal flickering: (255 - mean_t MAE(frame_t, frame_t+1)) / 255, in (0, 1], higher is steadier.

    Matches vbench 0.1.5 `temporal_flickering.cal_score` exactly: there, frames come from
    cv2.VideoCapture at full resolution with no resizing or sampling (BGR uint8), each consecutive
    pair gives `np.mean(cv2.absdiff(float32, float32))` over all pixels and channels, and the score
    is (255 - mean over pairs) / 255. Here the differences are taken exactly in integers and
    averaged in float64. The two agree (to float32 rounding, ~1e-7) when this reward receives the
    same decoded frames as float / 255, every frame, at the video's own resolution: channel order
    does not matter (MAE is symmetric over channels), and uint8 / 255 round-trips exactly through
    `to_uint8_frames`. OpenCV and PyAV decode the same H.264 frames bit-identically. VBench scores
    this dimension on static-scene prompts only, so camera or object motion lowers it too.
    """

    spec = spec_of("temporal-flickering")
    min_frames = 2  # frames a clip needs (lrm.datasets.labelling checks a store's before labelling it)
    needs_frames_because = "it compares consecutive frames"

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        check_frame_count(self.spec.name, pixels.shape[1], self.min_frames, self.needs_frames_because)
        return score_clips(pixels, flicker_score)


def flicker_score(frames: np.ndarray) -> float:
    """(T, H, W, 3) uint8 -> (255 - mean over pairs of the per-pair mean abs difference) / 255."""
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0))  # (T-1, H, W, 3)
    per_pair = diffs.reshape(diffs.shape[0], -1).sum(axis=1, dtype=np.int64) / diffs[0].size  # (T-1,)
    return (255.0 - float(per_pair.mean())) / 255.0


# --------------------------------------------------------------------------- dynamic degree


class DynamicDegree(Reward):
    """How much a clip moves: VBench's dynamic-degree statistic with DIS flow instead of RAFT.

    VBench (dynamic_degree.py) keeps every round(fps / 8)-th frame, computes RAFT flow between
    consecutive kept frames at the video's own resolution, and per pair takes the mean of the top 5%
    flow magnitudes. A pair "moves" when that exceeds 6 * (short side / 256) pixels, i.e. 6 px at a
    256-px short side, and the clip is dynamic when at least round(4 * n / 16) of its n kept frames'
    pairs move. Here flow is OpenCV DIS on luma, also at the clip's own resolution.

    This reward returns the continuous statistic: the mean over pairs of the top-5% flow magnitude
    rescaled to a 256-px short side (pixels per kept frame at 256 px; VBench's threshold is 6.0).
    `DynamicDegreeBinary` ("dynamic-degree-binary") returns VBench's 0/1 decision from the same
    flows. Two registry entries, one fixed return type each, rather than a flag that switches them.
    """

    spec = spec_of("dynamic-degree")
    reference_side = 256.0  # VBench: threshold = 6.0 * (short side / 256)
    threshold = 6.0  # VBench: top-5% flow magnitude (px at a 256-px short side) that counts as moving
    top_fraction = 0.05  # VBench: share of largest flow magnitudes averaged per frame pair
    target_fps = 8.0  # VBench keeps every round(fps / 8)-th frame

    def __init__(self, fps: float = 8.0, preset: str = "medium"):
        if not fps > 0:
            raise ValueError(f"{self.spec.name}: fps must be > 0 (the clips' frame rate), got {fps}")
        self.fps = fps
        self.preset = check_preset(preset, self.spec.name)
        self.stride = max(1, round(fps / self.target_fps))  # VBench: interval = max(1, round(fps / 8))
        self.min_frames = self.stride + 1
        self.needs_frames_because = f"two frames after keeping every {self.stride}-th frame at fps={self.fps:g}"

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        check_frame_count(self.spec.name, pixels.shape[1], self.min_frames, self.needs_frames_because)
        return score_clips(pixels[:, :: self.stride], self.score_kept)

    def pair_scores(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 kept frames -> (n-1,) top-5% flow magnitude per consecutive pair, in px."""
        return np.array([
            top_fraction_mean(dis_flow(first, second, self.preset), self.top_fraction)
            for first, second in zip(frames[:-1], frames[1:])
        ])

    def score_kept(self, frames: np.ndarray) -> float:
        short_side = min(frames.shape[1:3])
        return float(self.pair_scores(frames).mean()) * self.reference_side / short_side


class DynamicDegreeBinary(DynamicDegree):
    """VBench's dynamic-degree decision (1.0 moving, 0.0 static) from DIS flow; see `DynamicDegree`.

    One deviation: VBench's count threshold round(4 * n / 16) is 0 for n = 2 kept frames, which
    calls every two-frame clip dynamic; here at least one moving pair is required.
    """

    spec = spec_of("dynamic-degree-binary")

    def score_kept(self, frames: np.ndarray) -> float:
        short_side = min(frames.shape[1:3])
        threshold_px = self.threshold * (short_side / self.reference_side)  # VBench set_params "thres"
        needed = max(1, round(4 * (len(frames) / 16.0)))  # VBench set_params "count_num" (Python round)
        moving = int((self.pair_scores(frames) > threshold_px).sum())
        return float(moving >= needed)


# --------------------------------------------------------------------------- motion smoothness


class MotionSmoothness(Reward):
    """Frame-interpolation error with DIS flow, a weight-free stand-in for VBench's AMT metric.

    As in vbench/motion_smoothness.py: the even frames 0, 2, 4, ... are the inputs; each odd frame
    2k+1 is predicted from frames 2k and 2k+2 (here by warping both half-way along DIS flow and
    averaging, `lrm.rewards.flow.interpolate_middle`, instead of the AMT-S network); the score is
    (255 - mean over predicted frames of mean |predicted - real| on uint8) / 255, higher is smoother.
    A trailing odd frame with no even frame after it is unused, as in VBench. Values are not
    interchangeable with VBench's AMT numbers: DIS interpolation is weaker on occlusions and
    non-linear motion, so scores run lower on hard clips.
    """

    spec = spec_of("motion-smoothness")
    min_frames = 3
    needs_frames_because = "it predicts frame 1 from frames 0 and 2"

    def __init__(self, preset: str = "medium"):
        self.preset = check_preset(preset, self.spec.name)

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        check_frame_count(self.spec.name, pixels.shape[1], self.min_frames, self.needs_frames_because)
        return score_clips(pixels, self.score_frames)

    def score_frames(self, frames: np.ndarray) -> float:
        """(T, H, W, 3) uint8 -> (255 - mean interpolation error) / 255."""
        inputs = frames[0::2]  # (ceil(T/2), H, W, 3): VBench extract_frame(start_from=0)
        errors = [
            np.abs(interpolate_middle(first, last, self.preset).astype(np.int16) - real).mean()
            for first, last, real in zip(inputs[:-1], inputs[1:], frames[1::2])
        ]
        return (255.0 - float(np.mean(errors))) / 255.0
