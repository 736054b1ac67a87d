"""Procedural clips: determinism, layout, captions, and a wide spread of every weight-free reward."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
import torch

from lrm.datasets.procedural import PALETTE, SHAPES, ProceduralClips, ProceduralConfig, make_clip

# Weight-free rewards and the resolution their test clips are rendered at (NIQE needs >= 192 px).
WEIGHT_FREE_REWARDS = {
    "jpeg-incompressibility": 64,
    "sharpness": 64,
    "colorfulness": 64,
    "brisque": 64,
    "niqe": 192,
    "prompt-color": 64,
    "temporal-flickering": 64,
    "dynamic-degree": 64,
    "motion-smoothness": 64,
}


def test_same_seed_and_index_give_identical_clips():
    config = ProceduralConfig(seed=3)
    a, b = make_clip(config, 17), make_clip(config, 17)
    assert torch.equal(a.pixels, b.pixels)
    assert a.caption == b.caption and a.attributes == b.attributes


def test_golden_clips_do_not_drift():
    # Stored data sets name clips by (seed, index): a change here silently changes every stored set.
    clip = make_clip(ProceduralConfig(), 1)
    assert clip.caption == ("a large pink square moving left slowly and a large white circle moving down slowly "
                            "over a black plain background, slightly blurry, with JPEG artifacts")
    # every drawn parameter, exactly: a JPEG quality of 25 instead of 26 or a shape one pixel over moves the
    # pixels' mean and std by under 7e-4, which the statistics below would not see
    assert clip.attributes == {
        "shapes": [{"shape": "square", "color": "pink", "size": "large", "radius": 14.145538735862901,
                    "center": [39.22313834755683, 35.80053316024754], "motion": "linear", "direction": "left",
                    "speed": 0.018765637546177365, "shake": 0.0},
                   {"shape": "circle", "color": "white", "size": "large", "radius": 14.795479521186532,
                    "center": [40.374472962510126, 46.68069308258836], "motion": "linear", "direction": "down",
                    "speed": 0.011848491172278274, "shake": 0.0}],
        "background": {"kind": "flat", "color": "black", "angle": 1.8213512969653631, "period": 8.673460617214227,
                       "texture_scale": 1, "texture_amplitude": 0.11337154986149463},
        "blur_sigma": 1.1589602240993455, "noise_std": 0.0, "flicker": 0.0, "jpeg_quality": 26, "frames": 8,
        "size": [64, 64]}
    assert clip.pixels.mean().item() == pytest.approx(0.265254, abs=1e-5)  # how they are drawn (OpenCV's rounding
    assert clip.pixels.std().item() == pytest.approx(0.328079, abs=1e-5)  # may differ by one level across builds)


def test_different_index_or_seed_gives_different_clips():
    config = ProceduralConfig(seed=3)
    base = make_clip(config, 17)
    for other in (make_clip(config, 18), make_clip(ProceduralConfig(seed=4), 17)):
        assert not torch.equal(base.pixels, other.pixels)
    captions = {make_clip(config, i).caption for i in range(20)}
    assert len(captions) == 20


def _global_states():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return (kind, keys.copy(), pos, has_gauss, gauss), torch.get_rng_state()


def _same_states(a, b) -> bool:
    (np_a, torch_a), (np_b, torch_b) = a, b
    return (np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[2:] == np_b[2:]
            and torch.equal(torch_a, torch_b))


def test_global_random_state_is_neither_used_nor_changed():
    np.random.seed(0)
    torch.manual_seed(0)
    before = _global_states()
    a = make_clip(ProceduralConfig(), 5)
    assert _same_states(_global_states(), before)  # not reseeded in between: any draw from numpy/torch shows
    np.random.seed(123)  # a different global state must not change the clip
    torch.manual_seed(123)
    b = make_clip(ProceduralConfig(), 5)
    assert torch.equal(a.pixels, b.pixels)


@pytest.mark.parametrize("frames, size", [(8, 64), (1, 48), (5, (32, 80))])
def test_shapes_dtype_range_and_metadata(frames, size):
    config = ProceduralConfig(frames=frames, size=size)
    h, w = (size, size) if isinstance(size, int) else size
    for clip in ProceduralClips(config, count=6):
        assert clip.pixels.shape == (frames, 3, h, w)
        assert clip.pixels.dtype == torch.float32
        assert 0.0 <= clip.pixels.min() and clip.pixels.max() <= 1.0
        # 8-bit content, like decoded media
        assert torch.equal((clip.pixels * 255).round() / 255, clip.pixels)
        assert clip.frame_indices == tuple(range(frames)) and clip.num_frames == frames
        assert clip.group == clip.source and clip.source.startswith("procedural:")


def test_sequence_indexing_and_disjoint_ranges():
    config = ProceduralConfig()
    clips = ProceduralClips(config, count=5, start=10)
    assert len(clips) == 5
    assert torch.equal(clips[0].pixels, make_clip(config, 10).pixels)
    assert torch.equal(clips[-1].pixels, make_clip(config, 14).pixels)
    assert [c.source for c in clips[1:3]] == [make_clip(config, i).source for i in (11, 12)]
    with pytest.raises(IndexError, match="out of range"):
        clips[5]
    assert len({c.group for c in clips}) == 5


def test_captions_name_the_main_shape_first_and_match_attributes():
    words = "|".join(PALETTE)
    for clip in ProceduralClips(ProceduralConfig(), count=60):
        main = clip.attributes["shapes"][0]
        first_color = re.search(rf"\b({words})\b", clip.caption).group(1)
        assert first_color == main["color"], clip.caption
        assert main["shape"] in SHAPES and main["shape"] in clip.caption
        assert f"{clip.attributes['background']['color']} " in clip.caption
        if clip.attributes["blur_sigma"] > 0:
            assert "blurry" in clip.caption
        if clip.attributes["flicker"] > 0:
            assert "flickering" in clip.caption


def test_main_shape_really_has_its_colour():
    # Clean static clips: the pixel nearest the main shape's centre has the palette colour.
    config = ProceduralConfig(max_shapes=1, static_probability=1.0, shaking_probability=0, blur_probability=0,
                              noise_probability=0, flicker_probability=0, jpeg_probability=0)
    for clip in ProceduralClips(config, count=20):
        shape = clip.attributes["shapes"][0]
        if shape["shape"] == "ring":  # the centre of a ring is background
            continue
        x, y = (int(v) for v in shape["center"])
        pixel = (clip.pixels[0, :, y, x] * 255).round().tolist()
        assert pixel == list(PALETTE[shape["color"]]), (clip.caption, pixel)


def test_images_are_one_frame_clips_without_motion_words():
    for clip in ProceduralClips(ProceduralConfig(frames=1), count=30):
        assert clip.pixels.shape[0] == 1
        assert not any(w in clip.caption for w in ("moving", "standing still", "shaking", "flickering"))


def test_static_clean_clips_repeat_one_frame_and_moving_clips_change():
    clean = dict(blur_probability=0, noise_probability=0, flicker_probability=0, jpeg_probability=0.5)
    static = ProceduralClips(ProceduralConfig(static_probability=1.0, shaking_probability=0, **clean), count=10)
    for clip in static:
        assert "standing still" in clip.caption
        assert torch.equal(clip.pixels, clip.pixels[:1].expand_as(clip.pixels))
    moving = ProceduralClips(ProceduralConfig(static_probability=0.0, shaking_probability=0.0, **clean), count=10)
    for clip in moving:
        assert "moving" in clip.caption
        assert (clip.pixels[1:] - clip.pixels[:-1]).abs().amax(dim=(1, 2, 3)).min() > 0


def test_flicker_on_a_static_clip_is_a_per_frame_brightness_shift():
    config = ProceduralConfig(static_probability=1.0, shaking_probability=0, blur_probability=0, noise_probability=0,
                              flicker_probability=1.0, jpeg_probability=0)
    clip = next(c for c in ProceduralClips(config, count=20) if c.attributes["flicker"] > 0.05)
    diff = clip.pixels[1:] - clip.pixels[:-1]  # (T-1, 3, H, W)
    inside = (clip.pixels > 0.02) & (clip.pixels < 0.98)  # (T, 3, H, W): not clipped at 0 or 1
    unclipped = inside[1:] & inside[:-1]
    for d, keep in zip(diff, unclipped):
        values = d[keep]
        assert values.max() - values.min() <= 1.5 / 255  # one offset per frame (up to rounding)
    assert diff.abs().amax() > 0


def test_bad_configs_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="frames"):
        ProceduralConfig(frames=0)
    with pytest.raises(ValueError, match="max_shapes"):
        ProceduralConfig(max_shapes=9)
    with pytest.raises(ValueError, match="blur_probability"):
        ProceduralConfig(blur_probability=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ProceduralConfig(jpeg_quality=(0, 100))


@lru_cache(maxsize=None)
def _clip_set(video: bool, size: int, count: int = 64):
    """64 clips (8 frames) or stills, rendered once per module and shared by the reward tests."""
    clips = list(ProceduralClips(ProceduralConfig(seed=11, frames=8 if video else 1, size=size), count=count))
    return clips, torch.stack([c.pixels for c in clips]), [c.caption for c in clips]  # (B, T, 3, H, W)


@lru_cache(maxsize=None)
def _reward_scores(name: str):
    """(clips, float64 scores) of a registered reward on its clip set."""
    from lrm.rewards import REWARDS, load

    spec = REWARDS[name].spec
    clips, pixels, captions = _clip_set(spec.is_video, WEIGHT_FREE_REWARDS[name])
    scores = load(name)(pixels, captions if spec.needs_text else None).double().numpy()
    return clips, scores


@pytest.mark.parametrize("name", sorted(WEIGHT_FREE_REWARDS))
def test_weight_free_rewards_spread_widely(name):
    from lrm.rewards import availability

    needs = availability(name)
    if not needs.ready:  # an optional package of the reward's is missing: say which, do not pass silently
        pytest.skip(f"{name} needs {', '.join(needs.missing_modules + needs.missing_weights)}")
    _, scores = _reward_scores(name)
    finite = scores[np.isfinite(scores)]
    assert len(finite) >= 60, f"{name}: only {len(finite)} finite scores"
    assert len(np.unique(np.round(finite, 6))) >= 20, f"{name}: degenerate scores {np.unique(finite)[:10]}"
    p10, p50, p90 = np.percentile(finite, [10, 50, 90])
    relative_spread = (p90 - p10) / (abs(p50) + 1e-8)
    assert relative_spread > 0.1, f"{name}: p10..p90 = {p10:.4g}..{p90:.4g} around {p50:.4g} is too narrow"


def test_rewards_follow_the_perturbations_that_drive_them():
    # Independent check that the spread comes from the intended knobs, not from chance.
    clips, scores = _reward_scores("sharpness")
    blurred = np.array([c.attributes["blur_sigma"] > 1.0 for c in clips])
    assert np.median(scores[blurred]) < 0.5 * np.median(scores[~blurred])
    clips, scores = _reward_scores("dynamic-degree")
    still = np.array([c.attributes["shapes"][0]["motion"] == "static" and c.attributes["noise_std"] == 0
                      and c.attributes["flicker"] == 0 for c in clips])
    fast = np.array([c.attributes["shapes"][0]["speed"] > 0.03 for c in clips])
    assert still.any() and fast.any()
    assert scores[still].max() < np.median(scores[fast])
    clips, scores = _reward_scores("temporal-flickering")
    flicker = np.array([c.attributes["flicker"] > 0.05 for c in clips])
    assert np.median(scores[flicker]) < np.median(scores[~flicker])



def test_simple_world_keeps_one_large_shape_over_a_plain_background():
    from lrm.datasets.procedural import world_config

    config = world_config("simple", seed=2, frames=4)
    for index in range(40):
        attributes = make_clip(config, index).attributes
        assert len(attributes["shapes"]) == 1
        assert attributes["shapes"][0]["size"] in ("medium", "large")
        assert attributes["background"]["kind"] in ("flat", "gradient")
        assert (attributes["blur_sigma"], attributes["noise_std"], attributes["flicker"]) == (0.0, 0.0, 0.0)
        assert attributes["jpeg_quality"] is None
    assert world_config("full", seed=2) == ProceduralConfig(seed=2)


def test_blocks_world_puts_each_shape_on_the_block_grid_at_its_size_radius():
    from dataclasses import replace

    from lrm.datasets.procedural import SIZES, world_config

    config = world_config("blocks", seed=2, frames=1, size=64)
    assert config == replace(world_config("simple", seed=2, frames=1, size=64), grid=8, radius_jitter=0.0)
    for index in range(40):
        shape = make_clip(config, index).attributes["shapes"][0]
        assert all(c % 8 == 0 and 16 <= c <= 48 for c in shape["center"]), shape["center"]
        assert shape["radius"] == pytest.approx(SIZES[shape["size"]] * 64)
    for size in (100, (48, 80)):  # the dct blocks at any size: 8 px
        shapes = [make_clip(replace(config, size=size), index).attributes["shapes"][0] for index in range(20)]
        assert all(c % 8 == 0 for shape in shapes for c in shape["center"])
    simple = [make_clip(world_config("simple", seed=2, frames=1), index).attributes["shapes"][0] for index in range(20)]
    assert not all(c % 8 == 0 for shape in simple for c in shape["center"])  # grid 0: anywhere


def test_unknown_world_and_bad_subsets_are_refused_by_name():
    from lrm.datasets.procedural import world_config

    with pytest.raises(ValueError, match="unknown procedural world 'tiny'; choose one of full, simple, blocks"):
        world_config("tiny")
    with pytest.raises(ValueError, match="ProceduralConfig.sizes must be a non-empty subset"):
        ProceduralConfig(sizes=("huge",))
    for bad in ({"grid": -8}, {"radius_jitter": 1.0}, {"radius_jitter": -0.1}):
        with pytest.raises(ValueError, match="grid must be >= 0 and radius_jitter in \\[0, 1\\)"):
            ProceduralConfig(**bad)
    with pytest.raises(ValueError, match="ProceduralConfig.backgrounds must be a non-empty subset"):
        ProceduralConfig(backgrounds=())
