"""lrm.evaluation against independent references: the vendi-score package, scipy's sqrtm and closed
forms, procedural frames with known captions, and lrm.rewards called directly."""

import random

import numpy as np
import pytest
import scipy.linalg
import torch

import lrm.codecs
import lrm.rewards
from lrm.datasets.procedural import ProceduralClips, ProceduralConfig, world_config
from lrm.evaluation import (alignment, decoded_rewards, diversity, frechet_distance, latent_frechet_distance,
                            pixel_features, sample_rewards, vendi_score)
from lrm.evaluation.alignment import caption_motions, caption_objects
from lrm.evaluation.frechet import gaussian_frechet_distance
from lrm.evaluation.vendi import prompt_diversity

# ---------------------------------------------------------------- Vendi


@pytest.mark.parametrize("n, d", [(10, 5), (6, 40), (30, 30), (2, 3)])
def test_vendi_matches_the_vendi_score_package(n, d):
    vendi = pytest.importorskip("vendi_score.vendi")
    x = np.random.default_rng(n * d).normal(size=(n, d)) + 0.3
    assert vendi_score(x) == pytest.approx(vendi.score_X(x), rel=1e-9)


def test_vendi_closed_forms():
    assert vendi_score(np.ones((7, 4))) == pytest.approx(1.0)  # identical samples: one effective sample
    assert vendi_score(np.eye(5) * 3.0) == pytest.approx(5.0)  # orthogonal: n
    assert vendi_score(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 5.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="all zeros"):
        vendi_score(np.zeros((3, 2)))
    for bad in (np.nan, np.inf):  # NaN read as "all zeros", inf as 1.0
        with pytest.raises(ValueError, match="NaN or inf"):
            vendi_score(np.array([[bad, 1.0], [1.0, 2.0]]))


def test_diversity_is_the_mean_over_prompts_of_keyframe_averaged_vendi():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 3, 8))  # 6 samples, 3 keyframes
    features[3:] = features[3]  # prompt "b": three identical samples
    prompts = ["a", "a", "a", "b", "b", "b"]
    result = diversity(features, prompts)
    a = np.mean([vendi_score(features[:3, k]) for k in range(3)])
    assert result.per_prompt == pytest.approx({"a": a, "b": 1.0})
    assert result.mean == pytest.approx((a + 1) / 2) and result.std == pytest.approx(abs(a - 1) / 2)
    assert result.samples_per_prompt == 3
    assert prompt_diversity(features[:3]) == pytest.approx(a)
    with pytest.raises(ValueError, match="prompt 'c' has one sample"):
        diversity(features[:4], ["a", "a", "a", "c"])


def test_pixel_features_pick_keyframes():
    pixels = torch.rand(2, 9, 3, 4, 4)
    features = pixel_features(pixels, keyframes=3)
    assert features.shape == (2, 3, 48)
    assert torch.equal(features[:, 1], pixels[:, 4].flatten(1))
    assert pixel_features(pixels).shape == (2, 9, 48)


# ---------------------------------------------------------------- Frechet


def scipy_frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_frechet_matches_the_sqrtm_formula():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6))
    b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)


def test_frechet_closed_forms():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 5))
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = np.array([1.0, -2.0, 0.0, 3.0, 0.5])
    assert frechet_distance(a + shift, a) == pytest.approx(float((shift**2).sum()), rel=1e-8)
    # diagonal Gaussians: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    assert gaussian_frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_frechet_of_fewer_samples_than_dimensions_is_not_biased_below_zero():
    """16 samples of 96 features (a monitor's few samples): singular covariances whose round-off eigenvalues added
    their square roots to the cross term, so a set's distance to itself came out -7e-6 (-6.75 at 1e3 scale)."""
    rng = np.random.default_rng(3)
    for scale in (1.0, 1e3):
        a, b = rng.normal(size=(16, 96)) * scale, rng.normal(size=(16, 96)) * scale + scale
        assert 0.0 <= frechet_distance(a, a) < 1e-9 * scale**2
        assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)


def test_latent_frechet_distance_reads_pooled_statistics():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(40, 1, 4, 8, 8, generator=g)
    assert abs(latent_frechet_distance(latents, latents)) < 1e-8
    far = latent_frechet_distance(latents * 3 + 1, latents)
    near = latent_frechet_distance(torch.randn(40, 1, 4, 8, 8, generator=g), latents)
    assert far > 10 * near > 0
    with pytest.raises(ValueError, match=r"\(n, T, c, h, w\)"):
        latent_frechet_distance(latents[:, 0], latents)
    with pytest.raises(ValueError, match="generated features have 3 dimensions, reference 4"):
        frechet_distance(np.ones((5, 3)), np.ones((5, 4)))


# ---------------------------------------------------------------- alignment


@pytest.fixture(scope="module")
def procedural_images():
    clips = ProceduralClips(ProceduralConfig(seed=3, frames=1, size=64), count=120)
    return torch.stack([c.pixels for c in clips]), [c.caption for c in clips]


def test_caption_objects():
    text = "a small red circle standing still and a large blue ring shaking over a green striped background, noisy"
    assert caption_objects(text) == {"red": "circle", "blue": "ring"}
    assert caption_objects("a photo of a dog") == {}


def test_alignment_is_high_for_true_captions_and_low_for_shuffled_ones(procedural_images):
    pixels, captions = procedural_images
    true = alignment(pixels, captions)
    shuffled = captions[:]
    random.Random(0).shuffle(shuffled)
    wrong = alignment(pixels, shuffled)
    assert true.color >= 0.85 and true.shape >= 0.65  # measured: 0.93 and 0.78
    assert wrong.color <= 0.3 and wrong.shape <= 0.1  # measured: 0.17 and 0.03
    assert len(true.per_sample_color) == 120 and np.mean(true.per_sample_shape) == pytest.approx(true.shape)


def test_alignment_scores_video_frames():
    clips = ProceduralClips(ProceduralConfig(seed=4, frames=4, size=64, max_shapes=1, blur_probability=0,
                                             noise_probability=0, jpeg_probability=0), count=24)
    pixels, captions = torch.stack([c.pixels for c in clips]), [c.caption for c in clips]
    result = alignment(pixels, captions)
    assert result.color >= 0.8 and result.shape >= 0.7  # measured: 0.92 and 0.85
    assert all(v in (0, 0.25, 0.5, 0.75, 1.0) for v in result.per_sample_color)
    with pytest.raises(ValueError, match="names no '<size> <colour> <shape>' object"):
        alignment(pixels[:1], ["a photo of a dog"])


def test_caption_motions():
    text = "a small red circle moving down-left quickly and a large blue ring moving up over a green plain background"
    assert caption_motions(text) == {"red": "down-left", "blue": "up"}
    assert caption_motions("a medium pink cross shaking and a small gray ring standing still over ...") == {}


def test_motion_alignment_follows_the_named_direction_and_fails_backwards_or_shuffled():
    clips = ProceduralClips(world_config("simple", seed=5, frames=8, size=64), count=60)
    pixels, captions = torch.stack([c.pixels for c in clips]), [c.caption for c in clips]
    moving = sum(bool(caption_motions(c)) for c in captions)
    shuffled = captions[:]
    random.Random(0).shuffle(shuffled)
    assert moving >= 20 and alignment(pixels, captions).motion >= 0.85  # measured: 0.95 (39 moving clips)
    assert alignment(pixels.flip(1), captions).motion <= 0.1  # played backwards: measured 0.0
    assert alignment(pixels, shuffled).motion <= 0.25  # measured: 0.03
    assert alignment(pixels[:, :1], captions).motion is None  # one frame: no motion to read
    assert alignment(pixels, [c.split(" moving")[0] for c in captions]).motion is None  # no caption names one


# ---------------------------------------------------------------- true rewards


def test_sample_rewards_summarise_lrm_rewards():
    pixels = torch.rand(5, 1, 3, 32, 32)
    prompts = ["a red circle", "a blue square", "a dog", "a green ring", "a pink cross"]
    summaries = sample_rewards(pixels, prompts, ["colorfulness", "prompt-color"])
    direct = lrm.rewards.load("colorfulness")(pixels).double()
    assert summaries["colorfulness"].mean == pytest.approx(float(direct.mean()))
    assert summaries["colorfulness"].std == pytest.approx(float(direct.std(unbiased=False)))
    color = summaries["prompt-color"]  # "a dog" names no colour: NaN, left out of the statistics
    assert color.scored == 4 and np.isnan(color.values[2])
    direct_color = lrm.rewards.load("prompt-color")(pixels, prompts).double().numpy()
    np.testing.assert_allclose(color.values, direct_color, rtol=1e-6, equal_nan=True)  # each sample's own value
    assert color.mean == pytest.approx(np.nanmean(direct_color))


def test_decoded_rewards_decode_in_chunks():
    codec = lrm.codecs.load("dct")
    clips = ProceduralClips(ProceduralConfig(seed=0, frames=1, size=32), count=5)
    latents = codec.encode(torch.stack([c.pixels for c in clips]))
    expected = sample_rewards(codec.decode(latents).clamp(0, 1), None, ["sharpness"])
    got = decoded_rewards(latents, codec, None, ["sharpness"], batch_size=2)
    assert got["sharpness"].values == pytest.approx(expected["sharpness"].values, rel=1e-5)
