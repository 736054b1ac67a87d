"""benchmarks/caption_binding.py: the caption changes, token kinds, gap statistics, centroid velocities, and the
loss / attention probes on a tiny in-process DiT with random latents (offline, no text encoder)."""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import pytest
import torch

from benchmark_scripts import load_benchmark
from lrm.datasets.procedural import DIRECTIONS, PALETTE, SHAPES
from lrm.generators import build_dit

C, D, L, FRAMES = 4, 8, 12, 3
CAPTION = "a large green circle moving up-left quickly over a purple plain background"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("caption_binding")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_dit("dit-xs", C, D, FRAMES, depth=2, width=32, heads=2, patch=2)
    with torch.no_grad():  # random weights everywhere: an initialised DiT outputs 0 whatever its text (adaLN-zero)
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net.eval()


def fake_embed(captions):
    """A stand-in text encoder: L tokens of D numbers seeded by the caption, all valid."""
    rows = [torch.randn(L, D, generator=torch.Generator().manual_seed(zlib.crc32(c.encode()))) for c in captions]
    return torch.stack(rows), torch.ones(len(captions), L, dtype=torch.bool)


def words_offsets(caption):
    """Offsets of a whitespace / hyphen tokenizer with [CLS] and [SEP]: (0, 0) for the special tokens."""
    return [(0, 0), *[m.span() for m in re.finditer(r"[a-z]+|[-,]", caption)], (0, 0)]


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_opposite_direction_points_the_other_way(bench, direction):
    other = bench.opposite(direction)
    assert np.allclose(DIRECTIONS[other], -np.asarray(DIRECTIONS[direction]))
    assert bench.opposite(other) == direction
    caption = f"a small red square moving {direction} slowly over a blue gradient background"
    variants = bench.caption_variants(caption)
    assert variants["opposite direction"] == f"a small red square moving {other} slowly over a blue gradient background"


def test_caption_variants(bench):
    for pick in range(20):
        v = bench.caption_variants(CAPTION, pick)
        colour = v["other colour"].split()[2]
        assert colour in PALETTE and colour not in CAPTION.split()  # neither the object's nor the background's
        assert v["other colour"] == CAPTION.replace(" green ", f" {colour} ")
        shape = v["other shape"].split()[3]
        assert shape in SHAPES and shape != "circle"
        assert v["other shape"] == CAPTION.replace(" circle ", f" {shape} ")
    assert len({bench.caption_variants(CAPTION, p)["other colour"] for p in range(20)}) > 1  # pick varies them
    v = bench.caption_variants(CAPTION)
    assert v["motion words dropped"] == "a large green circle over a purple plain background"
    assert v["standing still"] == "a large green circle standing still over a purple plain background"
    still = bench.caption_variants("a medium blue ring standing still over a red plain background")
    assert set(still) == {"other colour", "other shape"}
    with pytest.raises(ValueError, match="names no"):
        bench.caption_variants("a photo of a cat")


def test_token_kinds(bench):
    kinds = bench.token_kinds(CAPTION, words_offsets(CAPTION))
    assert kinds == ["special", "other", "size", "colour", "shape", "moving", "direction", "direction", "direction",
                     "pace", "background", "background", "background", "background", "background", "special"]


def test_gap_stats(bench):
    x = np.array([0.5, 0.2, 0.3])
    same = bench.gap_stats(x, x)
    assert same["gap"] == 0.0 and same["relative_gap"] == 0.0 and same["rises"] == 0.0 and same["gap_se"] == 0.0
    worse = bench.gap_stats(x, x + np.array([0.1, -0.1, 0.3]))
    assert worse["gap"] == pytest.approx(0.1) and worse["rises"] == pytest.approx(2 / 3)
    assert worse["relative_gap"] == pytest.approx(np.mean([0.2, -0.5, 1.0]))


def test_centroid_velocity_and_motion_stats(bench):
    from lrm.evaluation.alignment import COLOR_NAMES, centroid_velocity, moving_direction

    names = np.full((4, 64, 64), COLOR_NAMES.index("white"))
    for t in range(4):  # a red square moving right 2 px and down 1 px per frame
        names[t, 20 + t : 30 + t, 10 + 2 * t : 20 + 2 * t] = COLOR_NAMES.index("red")
    v = centroid_velocity(names, "red")
    assert np.allclose(v, [2 / 64, 1 / 64]) and moving_direction(names, "red") == "down-right"
    assert centroid_velocity(names, "blue") is None
    stats = bench.motion_stats([v, None, -v], ["right", "right", "right"])
    assert stats["found"] == pytest.approx(2 / 3) and stats["moving"] == 1.0
    assert stats["cosine"] == pytest.approx(0.0, abs=1e-9) and stats["within_22_5"] == 0.0
    assert stats["median_speed"] == pytest.approx(math.hypot(2, 1) / 64)


def batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    captions = [CAPTION, "a medium red square moving down over a blue gradient background",
                "a large white ring moving left slowly over a black plain background",
                "a large yellow cross moving up-right over a green plain background"][:n]
    return torch.randn(n, FRAMES, C, 8, 8, generator=g), list(range(10, 10 + n)), captions


def test_losses_same_caption_zero_gap_no_text_differs(bench, model):
    x0, rows, captions = batch()
    text, mask = fake_embed(captions)
    eps = torch.stack([bench.clip_noise(tuple(x0.shape[1:]), r, 500) for r in rows])
    a = bench.denoising_losses(model, x0, eps, 500, text, mask)
    b = bench.denoising_losses(model, x0, eps, 500, text, mask)
    assert bench.gap_stats(a, b)["gap"] == 0.0
    none = bench.denoising_losses(model, x0, eps, 500, text, torch.zeros_like(mask))
    assert np.all(none != a)


def test_loss_gaps_deterministic_and_batch_independent(bench, model):
    x0, rows, captions = batch()
    text, mask = fake_embed(captions)
    first = bench.loss_gaps(model, x0, rows, captions, text, mask, fake_embed, [100, 700], batch=4)
    again = bench.loss_gaps(model, x0, rows, captions, text, mask, fake_embed, [100, 700], batch=2)
    assert set(first) == set(bench.CHANGES)
    for name in first:
        for t in (100, 700):
            assert first[name][t]["loss"] == pytest.approx(again[name][t]["loss"], rel=1e-5)
            assert first[name][t]["gap"] == pytest.approx(again[name][t]["gap"], rel=1e-4, abs=1e-7)
    assert first["no text"][700]["gap"] != 0.0 and first["other colour"][700]["gap"] != 0.0
    assert torch.equal(bench.clip_noise((2, 3), 5, 100), bench.clip_noise((2, 3), 5, 100))
    assert not torch.equal(bench.clip_noise((2, 3), 5, 100), bench.clip_noise((2, 3), 6, 100))
    image = bench.loss_gaps(model, x0[:, :1], rows, captions, text, mask, fake_embed, [500])
    assert set(image) == set(bench.IMAGE_CHANGES)


def test_cross_attention_shares(bench, model):
    x0, rows, captions = batch(2)
    text, mask = fake_embed(captions)
    mask[:, 8:] = False
    with bench.CrossAttentionShares(model) as rec:
        out = model(x0, torch.full((2,), 300), text, mask)
    assert len(rec.records) == len(model.blocks)
    for weights in rec.records:  # (B, 1 + L): the null token and the valid tokens share all of it
        assert weights.shape == (2, 1 + L)
        assert torch.allclose(weights.sum(1), torch.ones(2), atol=1e-5)
        assert torch.all(weights[:, 1 + 8 :] == 0)
    assert all(not block.cross_attention._forward_pre_hooks for block in model.blocks)
    assert torch.equal(out, model(x0, torch.full((2,), 300), text, mask))  # the hooks change nothing


def test_attention_shares_cover_every_token(bench, model):
    x0, rows, captions = batch(2)
    text, mask = fake_embed(captions)

    def tokenizer(caption, truncation, max_length, return_offsets_mapping):  # the transformers call it makes
        offsets = words_offsets(caption)[: max_length - 1] + [(0, 0)]  # truncated: [CLS] ... [SEP]
        return {"offset_mapping": offsets}

    shares = bench.attention_shares(model, x0, rows, captions, text, mask, tokenizer, [300, 700])
    assert set(shares) == {300, 700}
    for blocks in shares.values():
        assert len(blocks) == len(model.blocks)
        for block in blocks:
            assert set(block) == set(bench.KINDS)
            assert sum(block.values()) == pytest.approx(1.0, abs=1e-5)
            assert block["colour"] > 0 and block["null"] > 0
