"""Weight-free image rewards against independent references (PIL, OpenCV, numpy formulas)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from lrm.frames import uniform_indices
from lrm.rewards import REWARDS, InputError, load
from lrm.rewards.image import Colorfulness, Sharpness

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = ("dog5__04.jpg", "cat__02.jpg", "backpack_dog__04.jpg")


def real_photos() -> list[np.ndarray]:
    """(H, W, 3) uint8 photos: skimage's astronaut always, dreambooth photos when present."""
    photos = [skimage.data.astronaut()]
    folder = DATA / "images" / "dreambooth"
    photos += [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS if (folder / name).exists()]
    return photos


def as_pixels(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 1, 3, H, W) float in [0, 1]."""
    return torch.tensor(rgb).permute(2, 0, 1).float().div(255)[None, None]


def structured_clip(t: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    """(1, t, 3, size, size): smooth gradients plus a moving textured square, different per frame."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    frames = []
    for i in range(t):
        frame = torch.stack([x, y, (x + y) / 2]) * 0.6
        lo = 4 + 6 * i
        frame[:, lo : lo + 16, lo : lo + 16] = torch.rand(3, 16, 16, generator=g)
        frames.append(frame)
    return torch.stack(frames)[None]


def pil_jpeg_bytes(rgb: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95)
    return len(buffer.getvalue())


def test_registry_specs_match_built_rewards():
    for name in ("jpeg-incompressibility", "jpeg-compressibility", "sharpness", "colorfulness"):
        reward = load(name, frames=2)
        assert reward.spec == REWARDS[name].spec and reward.spec.name == name
        assert reward.frames == 2


def test_jpeg_size_equals_direct_pil_encoding():
    reward = load("jpeg-incompressibility")
    for rgb in real_photos():
        kilobytes = reward(as_pixels(rgb)).item()  # float32 kB: the exact byte count survives
        assert round(kilobytes * 1000) == pil_jpeg_bytes(rgb)
    assert reward.spec.units == "kB" and reward.spec.higher_is_better


def test_compressibility_is_negated_incompressibility():
    clip = torch.cat([structured_clip(seed=0), structured_clip(seed=1)])  # (2, 3, 3, 48, 48)
    sizes = load("jpeg-incompressibility")(clip)
    assert torch.equal(load("jpeg-compressibility")(clip), -sizes)
    assert (sizes > 0).all()


@pytest.mark.parametrize("name", ["jpeg-incompressibility", "sharpness", "colorfulness"])
def test_video_score_is_mean_over_frames_and_frames_option_samples(name):
    clip = structured_clip(t=5)  # (1, 5, 3, 48, 48)
    per_frame = torch.stack([load(name)(clip[:, i : i + 1]) for i in range(5)])  # (5, 1)
    assert load(name)(clip[:, :3]).item() == pytest.approx(per_frame[:3].mean().item(), rel=1e-5)
    picked = uniform_indices(5, 2)  # [1, 3]
    assert load(name, frames=2)(clip).item() == pytest.approx(per_frame[picked].mean().item(), rel=1e-5)


def test_sharpness_matches_opencv_laplacian_variance():
    reward = load("sharpness")
    for rgb in real_photos():
        gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        reference = cv2.Laplacian(gray, cv2.CV_64F).var()
        assert reward(as_pixels(rgb)).item() == pytest.approx(reference, rel=1e-4)
        # The common recipe on 8-bit gray from cvtColor agrees up to its rounding.
        gray_u8 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        assert reward(as_pixels(rgb)).item() == pytest.approx(cv2.Laplacian(gray_u8, cv2.CV_64F).var(), rel=0.03)


def test_sharpness_of_a_frame_too_small_for_its_laplacian_is_an_input_error():
    with pytest.raises(InputError, match="sharpness: frames must be at least 2x2 pixels, got 1x5"):
        load("sharpness")(torch.rand(1, 1, 3, 1, 5))  # torch's own "Padding size should be less than ..." before
    assert torch.isfinite(load("sharpness")(torch.rand(1, 1, 3, 2, 2))).all()


def test_sharpness_drops_with_blur():
    rgb = skimage.data.astronaut()
    blurred = cv2.GaussianBlur(rgb, (0, 0), 2)
    reward = load("sharpness")
    assert reward(as_pixels(blurred)).item() < 0.2 * reward(as_pixels(rgb)).item()


def numpy_colorfulness(rgb: np.ndarray) -> float:
    r, g, b = (rgb.astype(np.float64)[..., i] for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def test_colorfulness_matches_numpy_formula_and_gray_is_zero():
    reward = load("colorfulness")
    for rgb in real_photos() + [skimage.data.coffee(), skimage.data.chelsea()]:
        assert reward(as_pixels(rgb)).item() == pytest.approx(numpy_colorfulness(rgb), rel=1e-4)
    gray = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    assert reward(as_pixels(gray)).item() == 0.0
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert reward(as_pixels(red)).item() == pytest.approx(0.3 * np.hypot(255, 127.5), rel=1e-5)


@pytest.mark.parametrize("reward_class", [Sharpness, Colorfulness])
def test_differentiable_rewards_pass_gradcheck(reward_class):
    frames = torch.rand(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: reward_class().score_frames(f, None), (frames,))


@pytest.mark.parametrize("name", ["sharpness", "colorfulness"])
def test_gradients_reach_pixels(name):
    assert REWARDS[name].spec.differentiable
    pixels = structured_clip().requires_grad_(True)
    load(name)(pixels).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    gray = torch.full((1, 1, 3, 8, 8), 0.5, requires_grad=True)  # colorfulness' sqrt at 0
    load(name)(gray).sum().backward()
    assert torch.isfinite(gray.grad).all()


@pytest.mark.parametrize(
    "name, pixels, prompts, message",
    [
        ("jpeg-incompressibility", torch.zeros(1, 1, 3, 8, 8, dtype=torch.uint8), None, "floating point"),
        ("sharpness", torch.zeros(1, 3, 8, 8), None, "unsqueeze"),
        ("colorfulness", torch.full((1, 1, 3, 8, 8), 2.0), None, r"\[0, 1\]"),
        ("brisque", torch.full((1, 1, 3, 32, 32), -1.0), None, r"\[0, 1\]"),
        ("niqe", torch.zeros(1, 1, 3, 100, 100), None, "at least 192x192"),
        ("prompt-color", torch.zeros(1, 1, 3, 8, 8), None, "needs prompts"),
        ("prompt-color", torch.zeros(2, 1, 3, 8, 8), ["a red car"], "got 1 prompts for a batch of 2"),
    ],
)
def test_bad_inputs_raise_clear_input_error(name, pixels, prompts, message):
    with pytest.raises(InputError, match=message):
        load(name)(pixels, prompts)
