"""Weight-free optical flow (OpenCV DIS) and the flow statistics the video rewards share.

DIS (Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016) stands in for the
RAFT and AMT networks VBench uses: it needs no weights and runs in milliseconds per frame pair on a
CPU. Frames are (H, W, 3) uint8 RGB numpy arrays, as `lrm.rewards.base.to_uint8_frames` returns
them; flows are (H, W, 2) float32 in pixels, (dx, dy), at the frames' own resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

from lrm.rewards.base import InputError

# Frame sizes OpenCV's DIS takes (measured with opencv-python 4.x over its three presets, 8-40 px sides): it raises
# cv2.error when both sides are under 12 px or one is under 8, and crashes the process (SIGSEGV, which no skip can
# catch) on elongated frames with a short side under 32 px: 12 x 48 (medium), 28 x 84 (fast). Up to 2:1 it is safe.
DIS_MIN_SIDE = 12  # the long side
DIS_MIN_SHORT = 8  # the short side
DIS_THIN = 32  # below this short side, at most DIS_MAX_THIN_RATIO : 1
DIS_MAX_THIN_RATIO = 2

# DIS presets by name; MEDIUM is OpenCV's recommended balance (coarse-to-fine down to 1/2^k scale,
# variational refinement) and handles displacements of tens of pixels at 256 px.
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def check_preset(preset: str, who: str) -> str:
    if preset not in DIS_PRESETS:
        raise ValueError(f"{who}: unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
    return preset


def to_gray(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 luma, the input DIS expects."""
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def dis_flow(first: np.ndarray, second: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Dense flow from `first` to `second` (H, W, 3) uint8: second(x + flow(x)) ~ first(x). -> (H, W, 2)."""
    short, long = sorted(first.shape[:2])
    if long < DIS_MIN_SIDE or short < DIS_MIN_SHORT or (short < DIS_THIN and long > DIS_MAX_THIN_RATIO * short):
        raise InputError(f"optical flow needs frames of at least {DIS_MIN_SIDE} pixels on one side and "
                         f"{DIS_MIN_SHORT} on the other, and no longer than {DIS_MAX_THIN_RATIO}:1 under {DIS_THIN} "
                         f"pixels (OpenCV's DIS fails or crashes on such frames), got {first.shape[0]}x{first.shape[1]}; "
                         "resize the clip up first")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])  # one per call: DIS objects keep state
    return dis.calc(to_gray(first), to_gray(second), None)


def top_fraction_mean(flow: np.ndarray, fraction: float = 0.05) -> float:
    """Mean of the largest `fraction` of flow magnitudes: VBench DynamicDegree.get_score.

    VBench takes int(h * w * 0.05) values; at least one is kept so tiny frames stay defined.
    """
    magnitude = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1])).ravel()  # (h*w,)
    keep = max(1, int(magnitude.size * fraction))
    return float(np.partition(magnitude, magnitude.size - keep)[-keep:].mean())


def backward_warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `frame` (H, W, C) at x + flow(x), bilinear, edges replicated. -> (H, W, C) float32."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        frame.astype(np.float32), grid_x + flow[..., 0], grid_y + flow[..., 1],
        interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )


def interpolate_middle(first: np.ndarray, last: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Estimate the frame half-way between two (H, W, 3) uint8 frames from DIS flow. -> (H, W, 3) uint8.

    Flows to the middle time t = 1/2 use the linear-motion approximation of Super SloMo
    (Jiang et al., CVPR 2018, Eq. 4): F_t0 = -t(1-t) F_01 + t^2 F_10 and
    F_t1 = (1-t)^2 F_01 - t(1-t) F_10, i.e. +-(F_10 - F_01) / 4 at t = 1/2. Both end frames are
    warped to t and averaged. The result is clipped and truncated to uint8 like AMT's `tensor2img`.
    """
    flow_01 = dis_flow(first, last, preset)  # (H, W, 2)
    flow_10 = dis_flow(last, first, preset)  # (H, W, 2)
    flow_t0 = 0.25 * (flow_10 - flow_01)
    flow_t1 = -flow_t0
    middle = 0.5 * (backward_warp(first, flow_t0) + backward_warp(last, flow_t1))  # (H, W, 3)
    return middle.clip(0, 255).astype(np.uint8)
