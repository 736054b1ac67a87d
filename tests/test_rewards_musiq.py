"""lrm's MUSIQ port: a tiny random-init model, and pyiqa's own class as the reference.

tests/data/musiq_keys.json and tests/data/musiq_tiny_reference.safetensors were written from pyiqa
0.1.16's MUSIQ by tests/data/make_musiq_fixtures.py (which says how to regenerate them); pyiqa itself
is not needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lrm.rewards import musiq, vbench_dims

DATA = Path(__file__).parent / "data"
TINY = musiq.MUSIQConfig(
    patch_size=8, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1, spatial_pos_grid_size=4,
    longer_side_lengths=(16, 24), root_channels=32,
)


@pytest.fixture(scope="module")
def tiny() -> musiq.MUSIQ:
    torch.manual_seed(0)
    return musiq.MUSIQ(TINY).eval()


# ---------------------------------------------------------------- tiny random-init model


@pytest.mark.parametrize("size", [(24, 24), (14, 32), (37, 23), (5, 7), (8, 8)])
def test_forward_shape_for_any_image_size(tiny, size):
    scores = tiny(torch.rand(3, 3, *size))
    assert scores.shape == (3, 1)
    assert torch.isfinite(scores).all()


def test_forward_is_deterministic_and_per_image(tiny):
    images = torch.rand(3, 3, 20, 30, generator=torch.Generator().manual_seed(1))
    scores = tiny(images)
    torch.testing.assert_close(tiny(images), scores, rtol=0, atol=0)
    torch.testing.assert_close(tiny(images[1:2]), scores[1:2])  # batching does not mix images
    assert (scores[0] - scores[1]).abs() > 1e-6  # different images, different scores


def test_gradient_reaches_the_pixels(tiny):
    images = torch.rand(2, 3, 14, 32, requires_grad=True)
    tiny(images).sum().backward()
    assert images.grad.shape == images.shape
    assert (images.grad.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_imaging_quality_reward_averages_frame_scores_over_100(tiny):
    clips = torch.rand(2, 3, 3, 40, 24, requires_grad=True)  # (B, T, 3, H, W)
    scores = vbench_dims.ImagingQuality(tiny)(clips)
    with torch.no_grad():
        expected = tiny(clips.flatten(0, 1)).reshape(2, 3).mean(dim=1) / 100
    torch.testing.assert_close(scores.detach(), expected)
    scores.sum().backward()
    assert clips.grad.abs().sum() > 0


def test_token_layout_per_scale():
    cfg = musiq.MUSIQConfig(patch_size=8, spatial_pos_grid_size=4, longer_side_lengths=(24, 16))
    tokens = musiq.multiscale_tokens(torch.zeros(1, 3, 14, 32), cfg)
    # scales sorted: 16 -> 7x16 (1x2 patches, padded to 4); 24 -> 10x24 (after round-half-even of
    # 10.5; 2x3 patches, padded to 9); native 14x32 -> 2x4 = 8 patches, all kept.
    # Padding tokens carry scale id 0, as pyiqa's zero padding of its packed vectors gives them.
    assert tokens.scale.tolist() == [0] * 4 + [1] * 6 + [0] * 3 + [2] * 8
    assert tokens.mask.tolist() == [True] * 2 + [False] * 2 + [True] * 6 + [False] * 3 + [True] * 8
    assert tokens.patches.shape == (1, 21, 3, 8, 8)
    assert tokens.spatial[-8:].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # 2x4 grid hashed onto 4x4


def test_hashed_positions_follow_nearest_resampling():
    # a 12-wide row of patches on a 10-wide table: cell i reads table entry floor(i * 10/12)
    assert musiq.grid_index(10, 12).tolist() == [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert musiq.hashed_positions(4, 2, 2).tolist() == [0, 2, 8, 10]


def test_same_padding_puts_the_extra_pixel_last():
    x = torch.ones(1, 1, 5, 6)
    padded = musiq.same_pad(x, 4, 4)  # 5 -> 8 (1 before, 2 after); 6 -> 8 (1 before, 1 after)
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, :, 0].sum() == 0 and padded[0, 0, 1:6, 1:7].sum() == 30


# ---------------------------------------------------------------- against pyiqa


def test_full_config_state_dict_matches_pyiqa_keys():
    expected = json.loads((DATA / "musiq_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in musiq.MUSIQ(musiq.MUSIQ_PRESETS["MUSIQ-SPAQ"]).state_dict().items()}
    assert ours == expected


def reference() -> tuple[dict, musiq.MUSIQConfig, dict[str, int], object]:
    f = safe_open(str(DATA / "musiq_tiny_reference.safetensors"), "pt")
    meta = f.metadata()
    opts = json.loads(meta["config"])
    assert opts.pop("num_scales") == len(opts["longer_side_lengths"]) + 1
    cfg = musiq.MUSIQConfig(**{**opts, "longer_side_lengths": tuple(opts["longer_side_lengths"])})
    state = {k.removeprefix("state."): f.get_tensor(k).float() for k in f.keys() if k.startswith("state.")}
    return state, cfg, json.loads(meta["cases"]), f


@pytest.mark.parametrize("case", ["wide", "tall_cut", "small_padded"])
def test_matches_pyiqa_numerically(case):
    state, cfg, cases, f = reference()
    cfg = musiq.MUSIQConfig(**{**cfg.__dict__, "max_seq_len_from_original_res": cases[case]})
    model = musiq.MUSIQ(cfg).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        ours = model(f.get_tensor(f"{case}.input"))
    torch.testing.assert_close(ours, f.get_tensor(f"{case}.output"), rtol=1e-5, atol=1e-5)


def test_load_musiq_reads_a_pyiqa_checkpoint(tmp_path):
    state, cfg, cases, f = reference()
    path = tmp_path / "musiq.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as saved from DataParallel
    model = musiq.load_musiq(path, musiq.MUSIQConfig(**{**cfg.__dict__, "max_seq_len_from_original_res": -1}))
    with torch.no_grad():
        torch.testing.assert_close(model(f.get_tensor("wide.input")), f.get_tensor("wide.output"), rtol=1e-5, atol=1e-5)


def test_load_musiq_names_the_fix_for_unreadable_files(tmp_path):
    path = tmp_path / "musiq.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="musiq_spaq_ckpt-358bb6af.pth"):
        musiq.load_musiq(path)
