"""prompt-color on made images with a known answer, prompt parsing, NaN for colourless prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.color
import torch

from lrm.rewards import REWARDS, load
from lrm.rewards.prompt_color import COLOR_NAMES, COLOR_PROTOTYPES, color_of_prompt, srgb_to_lab


def square_on_background(square: tuple[int, int, int], background: tuple[int, int, int], size: int = 64) -> torch.Tensor:
    """(1, 1, 3, size, size): a centred square of one sRGB colour on another."""
    frame = torch.tensor(background, dtype=torch.float32).div(255).view(3, 1, 1).repeat(1, size, size)
    lo, hi = size // 4, 3 * size // 4
    frame[:, lo:hi, lo:hi] = torch.tensor(square, dtype=torch.float32).div(255).view(3, 1, 1)
    return frame[None, None]


RED, BLUE, GREEN, WHITE, YELLOW = (220, 20, 20), (30, 60, 210), (40, 170, 60), (255, 255, 255), (245, 220, 30)


def test_red_square_scores_high_for_red_and_low_for_blue():
    reward = load("prompt-color")
    pixels = square_on_background(RED, WHITE).repeat(2, 1, 1, 1, 1)
    red, blue = reward(pixels, ["a red car", "a blue car"]).tolist()
    assert red > 0.95 and blue < 0.05


@pytest.mark.parametrize(
    "square, background, name",
    [(BLUE, GREEN, "blue"), (GREEN, WHITE, "green"), (YELLOW, BLUE, "yellow"), ((20, 20, 20), (200, 200, 200), "black")],
)
def test_named_colour_of_the_object_wins_over_the_background(square, background, name):
    pixels = square_on_background(square, background).repeat(len(COLOR_NAMES), 1, 1, 1, 1)
    scores = load("prompt-color")(pixels, [f"a photo of a {c} bird" for c in COLOR_NAMES])
    right = scores[COLOR_NAMES.index(name)].item()
    assert right > 0.8 and right == scores.max().item() and scores.sum().item() == pytest.approx(1, abs=0.01)


def test_prompt_without_a_palette_colour_scores_nan_and_others_are_kept():
    pixels = square_on_background(RED, WHITE).repeat(2, 1, 1, 1, 1)
    scores = load("prompt-color")(pixels, ["a car", "a red car"])
    assert math.isnan(scores[0].item()) and scores[1].item() > 0.95


def test_uniform_frame_has_no_salient_object():
    pixels = torch.full((1, 1, 3, 32, 32), 0.8)
    assert load("prompt-color")(pixels, ["a gray wall"]).item() == 0.0


def test_prompt_parsing():
    assert color_of_prompt("A Red car") == "red"
    assert color_of_prompt("a grey cat") == "gray"
    assert color_of_prompt("a red car and a blue bird") == "red"
    assert color_of_prompt("a bluebird on a reddish branch") is None  # whole words only
    assert color_of_prompt("a car") is None


def test_lab_conversion_matches_skimage():
    rgb = np.random.default_rng(0).random((5, 7, 3))
    ours = srgb_to_lab(torch.tensor(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.allclose(ours, skimage.color.rgb2lab(rgb), atol=0.02)  # matrices differ in the 4th digit


def test_each_prototype_is_classified_as_its_own_colour():
    cases = [(name, rgb) for name in COLOR_NAMES for rgb in COLOR_PROTOTYPES[name]]
    pixels = torch.cat([square_on_background(rgb, (255, 255, 255) if sum(rgb) < 600 else (0, 0, 0)) for _, rgb in cases])
    scores = load("prompt-color")(pixels, [f"a {name} object" for name, _ in cases])
    assert (scores > 0.5).all(), [case for case, score in zip(cases, scores) if score <= 0.5]


def test_frame_average_and_gradient_to_pixels():
    clip = torch.cat([square_on_background(RED, WHITE), square_on_background(BLUE, WHITE)], dim=1)  # (1, 2, ...)
    clip.requires_grad_(True)
    reward = load("prompt-color")
    score = reward(clip, ["a red ball"])
    per_frame = [reward(clip[:, i : i + 1], ["a red ball"]).item() for i in range(2)]
    assert score.item() == pytest.approx(np.mean(per_frame), rel=1e-5)
    assert REWARDS["prompt-color"].spec.differentiable
    score.sum().backward()
    assert torch.isfinite(clip.grad).all() and clip.grad.abs().sum() > 0


def test_frame_chunks_keep_each_frame_with_its_prompt():
    reward = load("prompt-color")
    frames = [RED, BLUE, GREEN, YELLOW, RED, BLUE, GREEN, YELLOW, RED, BLUE]  # 10 frames: chunks of 8 + 2
    clips = torch.cat([square_on_background(c, WHITE) for c in frames])  # (10, 1, 3, 64, 64)
    prompts = [f"a {c} kite" for c in ["blue", "blue", "green", "red", "red", "blue", "green", "yellow", "gray", "blue"]]
    together = reward(clips, prompts)
    alone = torch.cat([reward(clips[i : i + 1], prompts[i : i + 1]) for i in range(10)])
    assert torch.allclose(together, alone, atol=1e-6)
    assert together[1] > 0.8 and together[0] < 0.1
