"""Weight-free video rewards: VBench temporal flickering (against vbench itself), dynamic degree and
motion smoothness with DIS flow (against clips whose motion is known by construction)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrm.rewards import REWARDS, video
from lrm.rewards.base import InputError

PANCAKE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "flipping_a_pancake.mkv"


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A seeded (H, W, 3) uint8 texture with fine and coarse detail, so flow is well defined everywhere."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 1, (height, width, 3)).astype(np.float32)
    fine, coarse = cv2.GaussianBlur(noise, (0, 0), 1.5), cv2.GaussianBlur(noise, (0, 0), 6.0)
    mix = fine - fine.mean() + 2.0 * (coarse - coarse.mean())
    return np.clip(128 + mix * (100 / np.abs(mix).max()), 0, 255).astype(np.uint8)


def pan(frames: int, size: int, step: int, seed: int = 0) -> np.ndarray:
    """(T, size, size, 3) uint8: a camera window sliding `step` px right per frame over a texture."""
    canvas = texture(size, size + step * frames, seed)
    return np.stack([canvas[:, t * step: t * step + size] for t in range(frames)])


def as_pixels(*clips: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 clips -> (B, T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255


# --------------------------------------------------------------------------- temporal flickering


@pytest.mark.data
@pytest.mark.parametrize("start", [0, 200])
def test_temporal_flickering_equals_vbench_on_real_video(start, monkeypatch):
    vbench_flicker = pytest.importorskip("vbench.temporal_flickering")
    if not PANCAKE.exists():
        pytest.skip(f"real video not found at {PANCAKE}")
    # vbench's own reader (cv2.VideoCapture, BGR uint8, full resolution), cut to 32 frames so that its
    # own cal_score runs on exactly the frames lrm sees.
    bgr = vbench_flicker.get_frames(str(PANCAKE))[start: start + 32]
    monkeypatch.setattr(vbench_flicker, "get_frames", lambda path: bgr)
    expected = vbench_flicker.cal_score(str(PANCAKE))

    rgb = np.stack([cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in bgr])  # (32, 240, 426, 3)
    got = video.TemporalFlickering()(as_pixels(rgb))
    assert got.dtype == torch.float32 and got.shape == (1,)
    assert abs(got.item() - expected) < 1e-6, (got.item(), expected)  # float32 rounding only


def made_clips() -> list[np.ndarray]:
    """(T, H, W, 3) uint8 clips of known content, no data needed: a pan, a flickering texture, noise."""
    base = texture(40, 56, seed=2).astype(np.int16)
    flicker = np.stack([np.clip(base + level, 0, 255) for level in (0, 30, -20, 45, 0, -60)]).astype(np.uint8)
    noise = np.random.default_rng(3).integers(0, 256, (5, 37, 53, 3), dtype=np.uint8)  # odd sizes, saturated diffs
    return [pan(8, 64, step=3), flicker, noise]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["pan", "flicker", "noise"])
def test_temporal_flickering_equals_vbench_on_made_clips(index, monkeypatch):
    vbench_flicker = pytest.importorskip("vbench.temporal_flickering")
    rgb = made_clips()[index]
    bgr = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in rgb]  # what vbench's cv2 reader would give
    monkeypatch.setattr(vbench_flicker, "get_frames", lambda path: bgr)
    expected = vbench_flicker.cal_score("made.mp4")
    got = video.TemporalFlickering()(as_pixels(rgb)).item()
    assert 0.0 < expected < 0.999  # the clip changes: the comparison is not of two 1.0s
    assert abs(got - expected) < 1e-6, (got, expected)


def test_temporal_flickering_extremes():
    static = np.repeat(texture(32, 48)[None], 4, axis=0)
    strobe = np.zeros((4, 32, 48, 3), np.uint8)
    strobe[1::2] = 255  # black / white every frame: mean abs difference 255
    got = video.TemporalFlickering()(as_pixels(static, strobe))
    assert got.tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- dynamic degree


def test_dynamic_degree_static_clip_is_near_zero():
    rng = np.random.default_rng(1)
    frame = texture(128, 160).astype(np.int16)
    # One frame repeated with +-2 levels of sensor noise: no motion at all.
    clip = np.stack([np.clip(frame + rng.integers(-2, 3, frame.shape), 0, 255) for _ in range(16)]).astype(np.uint8)
    assert video.DynamicDegree()(as_pixels(clip)).item() < 1.0  # VBench threshold is 6.0
    assert video.DynamicDegreeBinary()(as_pixels(clip)).item() == 0.0


def test_dynamic_degree_measures_known_pan_scaled_to_256_px():
    # 6 px per frame at 128 px and 12 px per frame at 256 px are both 12 px at VBench's 256-px
    # reference. The top-5% mean sits a few percent above the true speed (it keeps the high tail).
    small, large = pan(12, 128, step=6), pan(12, 256, step=12)
    still = np.repeat(small[:1], 12, axis=0)
    scores = video.DynamicDegree()(as_pixels(small, still))
    assert scores[0].item() == pytest.approx(12.0, rel=0.1)
    assert scores[1].item() < 0.5
    assert video.DynamicDegree()(as_pixels(large)).item() == pytest.approx(12.0, rel=0.1)
    assert video.DynamicDegreeBinary()(as_pixels(small, still)).tolist() == [1.0, 0.0]


def test_dynamic_degree_binary_needs_enough_moving_pairs():
    # 16 kept frames: VBench needs round(4 * 16 / 16) = 4 pairs over the threshold.
    three_moves = np.concatenate([pan(4, 96, step=8), np.repeat(pan(4, 96, step=8)[-1:], 12, axis=0)])
    four_moves = np.concatenate([pan(5, 96, step=8), np.repeat(pan(5, 96, step=8)[-1:], 11, axis=0)])
    got = video.DynamicDegreeBinary()(as_pixels(three_moves, four_moves))
    assert got.tolist() == [0.0, 1.0]


def test_dynamic_degree_keeps_every_round_fps_over_8_th_frame():
    reward = video.DynamicDegree(fps=30)  # VBench: interval = round(30 / 8) = 4
    assert reward.stride == 4
    clip = pan(9, 64, step=1)  # 1 px per frame -> 4 px per kept frame -> 16 px at 256 px
    assert reward(as_pixels(clip)).item() == pytest.approx(16.0, rel=0.1)
    with pytest.raises(InputError, match=r"dynamic-degree: needs clips of at least 5 frames.*fps=30"):
        reward(as_pixels(clip[:4]))


# --------------------------------------------------------------------------- motion smoothness


def test_motion_smoothness_high_for_linear_motion_lower_for_jumps():
    smooth = pan(16, 96, step=3)
    jumpy = smooth[np.random.default_rng(0).permutation(16)]
    still = np.repeat(smooth[:1], 5, axis=0)
    linear, shuffled = video.MotionSmoothness()(as_pixels(smooth, jumpy)).tolist()
    assert linear > 0.98
    assert shuffled < linear - 0.03
    assert video.MotionSmoothness()(as_pixels(still)).item() == 1.0


def test_motion_smoothness_uses_even_frames_to_predict_odd_ones():
    # Frames 0, 2, 4 are the same image and frames 1, 3 differ: a VBench-style score sees only the
    # odd frames as errors, so an extra trailing odd frame (T = 6) is ignored as in VBench.
    base = texture(48, 48)
    odd = 255 - base
    clip = np.stack([base, odd, base, odd, base, odd])
    expected = (255 - np.abs(base.astype(np.int16) - odd).mean()) / 255
    assert video.MotionSmoothness()(as_pixels(clip)).item() == pytest.approx(expected, abs=1e-6)
    assert video.MotionSmoothness()(as_pixels(clip[:5])).item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- errors and registry


@pytest.mark.parametrize(
    "reward, frames, needed",
    [(video.TemporalFlickering(), 1, 2), (video.DynamicDegree(), 1, 2),
     (video.DynamicDegreeBinary(), 1, 2), (video.MotionSmoothness(), 2, 3)],
)
def test_too_few_frames_is_a_clear_error(reward, frames, needed):
    with pytest.raises(InputError, match=rf"{reward.spec.name}: needs clips of at least {needed} frames.*T >= {needed}"):
        reward(torch.rand(1, frames, 3, 16, 16))


@pytest.mark.parametrize("reward", [video.DynamicDegree(), video.MotionSmoothness(preset="fast")], ids=lambda r: r.spec.name)
def test_frames_optical_flow_cannot_take_are_refused_not_crashed_on(reward):
    """OpenCV's DIS raises on tiny frames and crashes the process (SIGSEGV: no skip can catch it) on elongated ones
    with a short side under 32 px (12 x 48 medium, 28 x 84 fast): such frames are refused with InputError first."""
    for h, w in ((6, 12), (12, 48), (28, 84), (84, 28), (10, 10)):
        with pytest.raises(InputError, match=f"optical flow needs frames .* got {h}x{w}; resize the clip up"):
            reward(torch.rand(1, 3, 3, h, w))
    for h, w in ((12, 12), (16, 32), (32, 128)):  # what DIS takes
        assert torch.isfinite(reward(torch.rand(1, 3, 3, h, w))).all()


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown DIS preset 'slow'"):
        video.MotionSmoothness(preset="slow")
    with pytest.raises(ValueError, match="fps must be > 0"):
        video.DynamicDegree(fps=0)


def test_entries_build_with_matching_specs():
    for name, entry in REWARDS.items():
        if entry.factory.module != video.__name__:
            continue
        reward = entry.factory()
        assert reward.spec == entry.spec and reward.spec.name == name
        assert reward.spec.kind == "video" and not reward.spec.differentiable
        assert entry.weights == ()
