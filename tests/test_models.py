"""Surrogate architectures: the paper's parameter counts, every preset, the shared forward, save/load."""

import copy
import json

import numpy as np
import pytest
import torch

from lrm import codecs
from lrm.models import (ARCHITECTURES, SURROGATES, CodecMismatchError, LatentRewardModel, build, needs_codec,
                        needs_text)
from lrm.models.aggd import aggd_shape, niqe_patch_features
from lrm.models.fullres import mean_of_largest
from lrm.models.mscn_gaussian import mscn, nss_patch_moments, paired_products, patch_tiles, signal_moments
from lrm.models.nss_pixels import NIQEDistance
from lrm.models.patch_gaussian import (COVARIANCE_EPS, NIQE_PATCH_CELLS, check_two_patches, gaussian_distance,
                                       patch_moments)
from lrm.rewards import quality

B, C, H, W, L, D = 2, 4, 16, 16, 5, 8
CODEC = {"name": "dct", "version": "1", "channels": C, "spatial_factor": 8, "temporal_factor": 1, "scale": 1.0}
LATENT_PRESETS = [p for p in SURROGATES if not needs_codec(p)]  # those that run no codec (tested on C channels)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core machine run far faster on one thread than on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latent_side(preset: str) -> int:
    """Latent side of the tiny test inputs: NIQE presets need 2 x 2 patches of 12 cells."""
    return 2 * NIQE_PATCH_CELLS if ARCHITECTURES[preset].niqe_patches else H


def inputs(frames: int = 1, seed: int = 0, side: int = H):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(B, frames, C, side, side, generator=g)
    text = torch.randn(B, L, D, generator=g)
    mask = torch.tensor([[True] * L, [True, True, True, False, False]])
    return latents, text, mask


# ---------------------------------------------------------------- the paper's tables

def test_image_cnn_is_table_10():
    model = build("image-cnn", in_channels=12)
    assert n_params(model) == 189_441  # Tab. 10 total (convs + linear + both GroupNorms' affine)
    stages = model.backbone.stages
    assert n_params(stages[0].conv) == 24_704 and n_params(stages[1].conv) == 147_584
    assert n_params(model.backbone.project) == 16_512 and n_params(model.head) == 129
    x = torch.randn(1, 12, 24, 40)  # 192 x 320 frames at 1/8
    h1 = stages[0](x)
    h2 = stages[1](h1)
    assert h1.shape == (1, 128, 6, 10) and h2.shape == (1, 128, 3, 5)  # Tab. 10 output shapes
    assert model(torch.randn(3, 1, 12, 24, 40)).shape == (3,)


def test_text_image_xattn_parameter_count():
    # Tab. 11 minus its text MLP (189,441 + 3 x 16,512 for Q, K, V), plus our MLP Linear(D,128)-SiLU-Linear(128,128).
    for text_dim, expected in ((4096, 779_905), (384, 304_769)):
        model = build("text-image-xattn", in_channels=12, text_dim=text_dim)
        assert n_params(model.cross_attention.text_mlp) == 128 * text_dim + 16_640
        assert n_params(model) == expected


# ---------------------------------------------------------------- every preset

@pytest.mark.parametrize("noise_aware", [False, True])
@pytest.mark.parametrize("preset", LATENT_PRESETS)
def test_every_preset_forward_backward(preset, noise_aware):
    torch.manual_seed(0)
    model = build(preset, C, text_dim=D if needs_text(preset) else None, noise_aware=noise_aware)
    for frames in (2, 3) if (ARCHITECTURES[preset].full_resolution and ARCHITECTURES[preset].temporal) else (1, 3):
        latents, text, mask = inputs(frames, side=latent_side(preset))
        t = torch.tensor([0, 500]) if noise_aware else None
        out = model(latents, text, mask, t) if needs_text(preset) else model(latents, t=t)
        assert out.shape == (B,) and torch.isfinite(out).all()
        model.zero_grad()
        out.sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{preset}: no finite gradient for {missing}"


@pytest.mark.parametrize("preset", ["image-cnn-stats", "video-pair-stats"])
def test_noise_aware_surrogate_runs_in_any_float_dtype(preset):
    # The sinusoidal timestep features are float32; the model's dtype must win (float64 here,
    # bfloat16 or float16 inside a mixed-precision tuning loop).
    torch.manual_seed(0)
    model = build(preset, C, noise_aware=True).eval()
    latents, _, _ = inputs(frames=2)
    t = torch.tensor([0, 500])
    with torch.no_grad():
        single = model(latents, t=t)
        double = model.double()(latents.double(), t=t)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-4)


def test_frame_average_equals_mean_of_frames():
    torch.manual_seed(0)
    model = build("video-frame-avg", C)
    latents, _, _ = inputs(frames=3)
    per_frame = torch.stack([model(latents[:, i:i + 1]) for i in range(3)], dim=1)  # (B, 3)
    torch.testing.assert_close(model(latents), per_frame.mean(dim=1))


def test_video_3d_mixes_frames():
    torch.manual_seed(0)
    model = build("video-3d", C)
    latents, _, _ = inputs(frames=3)
    shuffled = latents[:, [2, 0, 1]]
    assert not torch.allclose(model(latents), model(shuffled))  # order matters, unlike frame averaging


def test_frame_pairs_read_change_between_frames():
    torch.manual_seed(0)
    model = build("video-pair-stats", C)
    latents, _, _ = inputs(frames=3)
    features = model.backbone(latents.transpose(1, 2))  # (B, 2K): mean and top-5% of 16 change maps
    assert features.shape == (B, 32)
    # Two clips of the same frames: pairs (0,1),(1,2) vs (1,0),(0,2) -> different changes, different features.
    assert not torch.allclose(features, model.backbone(latents[:, [1, 0, 2]].transpose(1, 2)))
    # A clip's features are the mean of its consecutive pairs' features.
    per_pair = [model.backbone(latents[:, i:i + 2].transpose(1, 2)) for i in range(2)]
    torch.testing.assert_close(features, (per_pair[0] + per_pair[1]) / 2)
    with pytest.raises(ValueError, match="needs T >= 2"):
        model(latents[:, :1])


def test_mean_of_largest_pools_the_top_fraction():
    values = torch.arange(40.0).reshape(1, 1, 40)  # 0..39; 5% of 40 positions = 2 largest
    torch.testing.assert_close(mean_of_largest(values, 0.05), torch.tensor([[38.5]]))
    torch.testing.assert_close(mean_of_largest(values, 0.001), torch.tensor([[39.0]]))  # at least one


def test_output_is_in_label_units():
    torch.manual_seed(0)
    model = build("image-cnn", C)
    latents, _, _ = inputs()
    z = model(latents)
    model.set_label_stats(mean=3.0, std=0.5)
    torch.testing.assert_close(model(latents), z * 0.5 + 3.0)


def test_log_label_transform_maps_back_to_reward_units():
    torch.manual_seed(0)
    model = build("image-cnn", C)
    latents, _, _ = inputs()
    z = model(latents, standardised=True)
    model.set_label_stats(mean=1.5, std=0.8, transform="log", shift=-0.2)
    y = model(latents)
    torch.testing.assert_close(y, torch.exp(z * 0.8 + 1.5) - 0.2)
    torch.testing.assert_close(model(latents, standardised=True), z)  # the network's z is untouched
    torch.testing.assert_close(model.standardise(y), z, rtol=1e-5, atol=1e-5)
    assert (y > -0.2).all()  # a log-fitted surrogate never predicts below its shift
    with pytest.raises(ValueError, match="label transform must be one of"):
        model.set_label_stats(0.0, 1.0, transform="sqrt")


def test_text_mask_hides_padding_tokens():
    torch.manual_seed(0)
    model = build("text-image-xattn", C, text_dim=D)
    latents, text, mask = inputs()
    changed = text.clone()
    changed[1, 3:] = 100.0  # padding positions of sample 1
    torch.testing.assert_close(model(latents, text, mask), model(latents, changed, mask))
    assert not torch.allclose(model(latents, text, mask), model(latents, changed))  # unmasked: they count


def test_noise_aware_output_depends_on_t():
    torch.manual_seed(0)
    model = build("image-cnn", C, noise_aware=True)
    latents, _, _ = inputs()
    t0, t1 = torch.tensor([0, 0]), torch.tensor([900, 900])
    torch.testing.assert_close(model(latents, t=t0), model(latents, t=t1))  # FiLM starts as the identity
    with torch.no_grad():
        for stage in model.backbone.stages:
            stage.film.weight.normal_()
    assert not torch.allclose(model(latents, t=t0), model(latents, t=t1))
    torch.testing.assert_close(model(latents), model(latents, t=t0))  # t=None means clean latents


def test_input_errors_are_clear():
    latents, text, _ = inputs()
    text_model = build("text-image-xattn", C, text_dim=D)
    with pytest.raises(ValueError, match="text-conditioned"):
        text_model(latents)
    with pytest.raises(ValueError, match="channels"):
        build("image-cnn", C + 1)(latents)
    with pytest.raises(ValueError, match=r"\(B, T, c, h, w\)"):
        build("image-cnn", C)(latents[:, 0])
    with pytest.raises(ValueError, match="noise_aware"):
        build("image-cnn", C)(latents, t=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="text_dim"):
        build("text-image-xattn", C)
    with pytest.raises(KeyError, match="image-cnn"):
        build("no-such-preset", C)
    mask = torch.zeros(B, L, dtype=torch.bool)
    with pytest.raises(ValueError, match="at least one True"):
        text_model(latents, text, mask)


# ---------------------------------------------------------------- save / load

@pytest.mark.parametrize("preset,noise_aware", [("image-cnn", False), ("text-video-3d-xattn", True),
                                                ("image-fullres-log-stats", False), ("image-nss-pixels", True)])
def test_save_load_round_trip(tmp_path, preset, noise_aware):
    torch.manual_seed(0)
    model = build(preset, C, text_dim=D if needs_text(preset) else None, noise_aware=noise_aware)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # FiLM weights non-zero too
    model.set_label_stats(2.5, 0.25)
    model.info.codec_settings = CODEC
    model.info.reward_name = "colorfulness"
    model.info.reward_spec = {"name": "colorfulness", "kind": "image"}
    model.info.text_encoder_id = "minilm" if needs_text(preset) else None
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]

    loaded = LatentRewardModel.from_pretrained(tmp_path / "m", codec_settings=CODEC)
    assert not loaded.training  # loaded for use, as transformers' from_pretrained does
    latents, text, mask = inputs(frames=3, side=latent_side(preset))
    t = torch.tensor([10, 700]) if noise_aware else None
    model.eval()
    torch.testing.assert_close(loaded(latents, text, mask, t), model(latents, text, mask, t), rtol=0, atol=0)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["preset"] == preset
    assert config["label_stats"] == {"mean": 2.5, "std": 0.25, "transform": "none", "shift": 0.0}
    assert config["codec_settings"] == CODEC and config["reward_name"] == "colorfulness"
    assert loaded.info.reward_spec == {"name": "colorfulness", "kind": "image"}
    assert loaded.noise_aware == noise_aware and loaded.text_dim == model.text_dim


def test_log_label_transform_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = build("image-cnn-stats", C)
    model.set_label_stats(2.0, 0.5, transform="log", shift=-1.25)
    model.save_pretrained(tmp_path / "m")
    loaded = LatentRewardModel.from_pretrained(tmp_path / "m")
    assert (loaded.label_transform, loaded.label_shift) == ("log", -1.25)
    latents, _, _ = inputs()
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(latents), model(latents), rtol=0, atol=0)


def test_surrogates_saved_before_label_transforms_load_as_untransformed(tmp_path):
    model = build("image-cnn", C)
    model.set_label_stats(2.0, 0.5)
    model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["label_stats"] = {"mean": 2.0, "std": 0.5}  # what lrm wrote before label transforms existed
    config_path.write_text(json.dumps(config))
    loaded = LatentRewardModel.from_pretrained(tmp_path / "m")
    assert (loaded.label_transform, loaded.label_shift) == ("none", 0.0)
    latents, _, _ = inputs()
    torch.testing.assert_close(loaded.eval()(latents), model.eval()(latents), rtol=0, atol=0)


def test_loading_into_another_codec_is_a_clear_error(tmp_path):
    model = build("image-cnn", C)
    model.info.codec_settings = CODEC
    model.save_pretrained(tmp_path / "m")
    other = {**CODEC, "name": "taef2"}
    with pytest.raises(CodecMismatchError, match="dct.*taef2"):
        LatentRewardModel.from_pretrained(tmp_path / "m", codec_settings=other)
    with pytest.raises(CodecMismatchError, match="4-channel.*32-channel"):
        LatentRewardModel.from_pretrained(tmp_path / "m", codec_settings={**CODEC, "channels": 32})
    with pytest.raises(FileNotFoundError, match="config.json"):
        LatentRewardModel.from_pretrained(tmp_path / "nothing")


def test_channel_stats_match_a_direct_numpy_computation():
    from lrm.models.surrogate import channel_stats, channel_stats_dim

    rng = np.random.default_rng(0)
    clip = rng.normal(size=(2, 3, 4, 5, 6))  # (N, c, T, h, w)
    got = channel_stats(torch.tensor(clip, dtype=torch.float64)).numpy()
    assert got.shape == (2, channel_stats_dim(3, per_frame=False)) == (2, 21)
    axes = (2, 3, 4)
    std = clip.reshape(2, 3, -1).std(axis=2, ddof=1)
    spatial = np.abs(np.diff(clip, axis=3)).mean(axis=axes) + np.abs(np.diff(clip, axis=4)).mean(axis=axes)
    temporal = np.abs(np.diff(clip, axis=2)).mean(axis=axes)
    want = np.concatenate([clip.mean(axis=axes), std, spatial, temporal,
                           np.log(std + 1e-4), np.log(spatial + 1e-4), np.log(temporal + 1e-4)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    frames = torch.tensor(clip[:, :, 0], dtype=torch.float64)  # (N, c, h, w)
    assert channel_stats(frames).shape == (2, channel_stats_dim(3, per_frame=True)) == (2, 15)


def test_stats_head_sees_energy_that_group_norm_removes():
    # With a bias-free first conv, Tab. 10's first GroupNorm makes the backbone blind to a global
    # scale of the latents (an energy, e.g. JPEG size or flicker); the -stats head is not.
    torch.manual_seed(0)
    latents = torch.randn(2, 1, 8, 16, 16)
    scaled = latents * 3.0
    plain, stats = build("image-cnn", 8).eval(), build("image-cnn-stats", 8).eval()
    with torch.no_grad():
        for model in (plain, stats):
            model.backbone.stages[0].conv.bias.zero_()
        assert torch.allclose(plain.backbone(latents[:, 0]), plain.backbone(scaled[:, 0]), atol=1e-4)
        assert not torch.allclose(stats(latents), stats(scaled), atol=1e-3)


def test_log_energy_presets_read_latents_and_their_log_energies():
    from lrm.models.surrogate import LOG_ENERGY_EPS, channel_stats, with_log_energy

    x = torch.tensor([[[0.0, 0.5], [-2.0, 1e-3]]]).reshape(1, 1, 2, 2).requires_grad_()
    out = with_log_energy(x)  # (1, 2, 2, 2)
    expected = np.log(x.detach().numpy() ** 2 + LOG_ENERGY_EPS)
    np.testing.assert_allclose(out[:, 1].detach().numpy(), expected[:, 0], rtol=1e-6)
    assert torch.equal(out[:, :1], x)
    out[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() <= 1 / np.sqrt(LOG_ENERGY_EPS)
    for preset in ("image-cnn-log-stats", "image-fullres-log-stats"):
        model = build(preset, 8)
        first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == 16  # 8 latent channels + their 8 log energies
        latents = torch.randn(2, 1, 8, 12, 12)
        with torch.no_grad():  # the same as the plain backbone run on [x, log(x^2 + eps)]
            direct = model.head(torch.cat([model.backbone(with_log_energy(latents[:, 0])),
                                           channel_stats(latents[:, 0])], 1))[:, 0]
            np.testing.assert_allclose(model(latents, standardised=True).numpy(), direct.numpy(), rtol=1e-5)


# ---------------------------------------------------------------- patch-Gaussian (learned NIQE)

def test_patch_gaussian_distance_is_niqes_formula():
    # NIQE: sqrt((mu - nu)^T ((Sigma + S) / 2)^-1 (mu - nu)), S the covariance over patches; here
    # Sigma = L L^T, plus the ridge; checked against numpy's cov and inverse.
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)  # (M, P, F)
    reference_mean = torch.randn(4, generator=g, dtype=torch.float64)
    factor = torch.randn(4, 4, generator=g, dtype=torch.float64)  # only its lower triangle counts
    distance, mean = gaussian_distance(features, reference_mean, factor)
    lower = np.tril(factor.numpy())
    for i, f in enumerate(features.numpy()):
        pooled = (lower @ lower.T + np.cov(f.T)) / 2 + COVARIANCE_EPS * np.eye(4)
        diff = f.mean(axis=0) - reference_mean.numpy()
        np.testing.assert_allclose(distance[i].item(), np.sqrt(diff @ np.linalg.inv(pooled) @ diff), rtol=1e-6)
        np.testing.assert_allclose(mean[i].numpy(), f.mean(axis=0), rtol=1e-12)


def test_patch_moments_tile_from_the_top_left_and_need_two_patches():
    maps = torch.rand(1, 2, 25, 13) + 0.1  # (M, K, h, w): 2 x 1 whole 12-cell tiles, the rest dropped
    moments = patch_moments(maps, 12)  # (M, P, K)
    assert moments.shape == (1, 2, 2)
    torch.testing.assert_close(moments[0, 0].exp(), maps[0, :, :12, :12].mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moments[0, 1].exp(), maps[0, :, 12:24, :12].mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 patches of 12x12 latent cells.*got latents of 23x23"):
        check_two_patches(torch.rand(1, 2, 23, 23), 12)
    for preset in ("image-patch-gaussian-log-stats", "image-mscn-gaussian-stats", "image-nss-pixels"):
        with pytest.raises(ValueError, match="at least 2 patches.*got latents of 16x16"):
            build(preset, C)(torch.randn(1, 1, C, 16, 16))


# ---------------------------------------------------------------- MSCN-Gaussian (learned NIQE on pixel planes)

def test_mscn_statistics_match_the_niqe_reward():
    # The reward's numpy MSCN coefficients and paired products (lrm.rewards.quality, checked against
    # scikit-video there) are the independent reference; c = 1 is NIQE's stabiliser on 0-255 pixels.
    gray = np.random.default_rng(0).random((40, 52)) * 255  # odd size: the zero padding at every border
    coefficients = mscn(torch.tensor(gray)[None, None], torch.ones(1, dtype=torch.float64))  # (1, 1, H, W)
    np.testing.assert_allclose(coefficients[0, 0].numpy(), quality.mscn(gray), atol=1e-7)
    for mine, theirs in zip(paired_products(coefficients), quality.paired_products(quality.mscn(gray))):
        np.testing.assert_allclose(mine[0, 0].numpy(), theirs, atol=1e-6)
    # Patch moments: s^2, |s|, relu(-s)^2, [s < 0] averaged over each 20-px tile.
    s = coefficients[..., :40, :40]
    moments = signal_moments(patch_tiles(s, 20))  # (1, 4 tiles, 4)
    tile = s[0, 0, 20:, :20].numpy()  # third tile: second row, first column
    expected = [np.mean(tile**2), np.mean(np.abs(tile)), np.mean(np.minimum(tile, 0) ** 2), np.mean(tile < 0)]
    np.testing.assert_allclose(moments[0, 2].numpy(), expected, rtol=1e-6, atol=1e-9)


def test_mscn_gaussian_reads_pixel_planes_at_8x_the_latent_resolution():
    model = build("image-mscn-gaussian-stats", C)
    backbone = model.backbone
    latents = torch.randn(2, C, 24, 36)  # 192 x 288 px: 2 x 3 NIQE patches
    hidden = latents
    for stage in backbone.stages:
        hidden = stage(hidden)
    planes = backbone.to_pixels(torch.cat([latents, hidden], dim=1))
    assert planes.shape == (2, 2, 192, 288)
    # Each latent cell decodes to its own 8x8 pixel block: pixels of block (1, 2) move only with
    # what the 3x3 convs see around cell (1, 2).
    moved = latents.clone()
    moved[:, :, 20, 30] += 1.0
    hidden_moved = moved
    for stage in backbone.stages:
        hidden_moved = stage(hidden_moved)
    changed = (backbone.to_pixels(torch.cat([moved, hidden_moved], dim=1)) - planes).abs().sum(dim=(0, 1)) > 0
    rows, cols = changed.nonzero().unbind(1)
    assert rows.min() >= 8 * (20 - 2) and rows.max() < 8 * (20 + 3)  # two 3x3 convs: +-2 cells
    assert cols.min() >= 8 * (30 - 2) and cols.max() < 8 * (30 + 3)
    features = backbone(latents)
    assert features.shape == (2, backbone.feature_dim) and torch.isfinite(features).all()


# ---------------------------------------------------------------- NIQE itself, differentiable (AGGD fits, NSS pixels)

def textured_gray(seed: int, shape: tuple[int, int] = (192, 288)) -> np.ndarray:
    """0-255 float64 image with texture at three scales and a vertical edge: 2 x 3 NIQE patches."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = sum(gaussian_filter(rng.normal(size=shape), s) * s for s in (1, 3, 8))
    x[:, shape[1] // 2:] += 2.0
    return (x - x.min()) / (x.max() - x.min()) * 255


def niqe_scales(gray: np.ndarray) -> tuple[tuple[np.ndarray, int], tuple[np.ndarray, int]]:
    """NIQE's two scales of a (H, W) image with their patch sides: the half by PIL bicubic, as the reward."""
    from PIL import Image

    half = Image.fromarray(gray.astype(np.float32), mode="F").resize((gray.shape[1] // 2, gray.shape[0] // 2),
                                                                       Image.BICUBIC)
    return (gray, 96), (np.asarray(half).astype(np.float64), 48)


def niqe_moments(gray: np.ndarray) -> torch.Tensor:
    """(1, P, 40) patch moments at NIQE's two scales."""
    c = torch.ones(1, dtype=torch.float64)
    return torch.cat([nss_patch_moments(torch.tensor(image, dtype=torch.float64)[None, None], c, patch)
                      for image, patch in niqe_scales(gray)], dim=2)


def test_aggd_shape_inverts_niqes_moment_ratio():
    alpha = torch.tensor([0.3, 0.8, 1.0, 2.0, 4.5, 9.0], dtype=torch.float64, requires_grad=True)
    ratio = torch.exp(2 * torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha))
    torch.testing.assert_close(aggd_shape(ratio.detach()), alpha.detach(), atol=1e-6, rtol=0)
    ratio = ratio.detach().requires_grad_()
    aggd_shape(ratio).sum().backward()
    assert (ratio.grad > 0).all()  # rho increases with alpha, so alpha with the ratio
    beyond = aggd_shape(torch.tensor([0.0, 0.99], dtype=torch.float64))
    torch.testing.assert_close(beyond, torch.tensor([0.2, 10.0], dtype=torch.float64))  # the grid's ends


def test_aggd_features_of_patch_moments_match_niqes_grid_search():
    # Independent reference: lrm.rewards.quality's numpy NIQE features (scikit-video's, grid search).
    for seed in range(2):
        gray = textured_gray(seed)
        mine = niqe_patch_features(niqe_moments(gray))[0].numpy()  # (6, 36)
        theirs = np.hstack([
            np.array([quality.niqe_patch_features(quality.mscn(image)[r * p:(r + 1) * p, k * p:(k + 1) * p])
                      for r in range(2) for k in range(3)])
            for image, p in niqe_scales(gray)])
        np.testing.assert_allclose(mine, theirs, atol=1e-3, rtol=2e-3)  # the grid's step is 0.001


def test_niqe_distance_starts_as_niqe():
    # With the exact moments of an image, the untrained distance is NIQE's score of it.
    distance_of = NIQEDistance()
    for seed in range(2):
        gray = np.round(textured_gray(seed))
        rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
        distance, _ = distance_of(niqe_moments(rgb.astype(np.float32) @ quality.SKVIDEO_GRAY))
        np.testing.assert_allclose(distance.item(), quality.niqe_score(rgb), rtol=0.02)


def test_nss_pixel_decoder_fit_recovers_a_linear_decoder():
    # Grey pixels that a 3x3 conv and a PixelShuffle(8) make from the latents are fitted back exactly
    # (the ridge aside), and the backbone then reads them in 8-bit levels.
    torch.manual_seed(0)
    backbone = build("image-nss-pixels", C).backbone
    truth = torch.nn.Conv2d(C, 64, 3, padding=1).double()
    latents = torch.randn(6, C, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        grey = torch.nn.functional.pixel_shuffle(40 * truth(latents) + 128, 8)  # (6, 1, 192, 192), inside 0-255
    error = backbone.fit_decoder(latents, grey)
    assert error < 0.05  # grey levels
    torch.testing.assert_close(backbone.decoder.weight.double(), 40 * truth.weight.detach(), atol=5e-3, rtol=0)
    decoded = backbone.grey(latents.float())
    assert decoded.shape == (6, 1, 192, 192) and torch.equal(decoded, decoded.round())
    assert (decoded - grey).abs().max() <= 0.5 + 0.05


# ---------------------------------------------------------------- NIQE on the codec's own decode

def dct_images(count: int = 4) -> tuple[torch.nn.Module, torch.Tensor]:
    """The dct codec and the latents (count, 1, 32, 24, 36) of textured 192 x 288 images of growing noise."""
    codec = codecs.load("dct")
    gray = np.stack([textured_gray(seed) for seed in range(count)])  # (N, 192, 288)
    rng = np.random.default_rng(0)
    noisy = gray + rng.normal(size=gray.shape) * np.arange(count)[:, None, None] * 2
    rgb = torch.tensor(np.clip(noisy, 0, 255) / 255, dtype=torch.float32)[:, None, None].expand(-1, 1, 3, -1, -1)
    return codec, codec.encode(rgb.contiguous())


def test_nss_codec_surrogate_is_niqe_of_the_codecs_decoded_frames():
    # Independent reference: lrm.rewards.quality's numpy NIQE (scikit-video's) of the decoded 8-bit frames.
    codec, latents = dct_images()
    model = build("image-nss-codec", codec.channels, codec_settings=codec.settings()).eval()
    with torch.no_grad():
        distance = model.backbone(latents[:, 0])[:, 0]
    frames = (codec.decode(latents)[:, 0].clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(distance.numpy(), [quality.niqe_score(f) for f in frames], rtol=0.02)


def test_nss_codec_surrogate_trains_only_its_head_and_saves_no_codec_weights(tmp_path):
    codec, latents = dct_images(2)
    model = build("image-nss-codec", codec.channels, codec_settings=codec.settings())
    names = [n for n, _ in model.named_parameters()]
    assert names == ["backbone.distance.reference_mean", "backbone.distance.reference_factor", "head.weight",
                     "head.bias"]
    assert not any("codec" in k or "synthesis" in k for k in model.state_dict())
    x = latents.clone().requires_grad_(True)
    model(x).sum().backward()  # the reward-tuning gradient reaches the latents through the decoder
    assert x.grad.abs().sum() > 0 and all(torch.isfinite(p.grad).all() for p in model.parameters())
    # the frozen codec follows the surrogate's device, keeps its own dtype (dct's float64 constants), and
    # the surrogate's output keeps the input's
    assert model.double()(latents.double()).dtype == torch.float64
    assert model.float().backbone.codec.synthesis.dtype == torch.float64
    meta = copy.deepcopy(model).to("meta")
    assert meta.backbone.codec.synthesis.device.type == "meta" and model.backbone.codec.synthesis.device.type == "cpu"
    # a saved surrogate rebuilds the codec from the settings it was built with
    model.save_pretrained(tmp_path / "m")
    loaded = LatentRewardModel.from_pretrained(tmp_path / "m")
    model.eval()
    torch.testing.assert_close(loaded(latents), model(latents), rtol=0, atol=0)
    with pytest.raises(CodecMismatchError, match="differs in"):  # checked before the codec is built
        LatentRewardModel.from_pretrained(tmp_path / "m", codec_settings={**codec.settings(), "version": "0"})


def test_nss_codec_surrogate_refuses_what_it_cannot_decode():
    settings = codecs.load("dct").settings()
    with pytest.raises(ValueError, match="runs the codec's own decoder: pass codec_settings"):
        build("image-nss-codec", 32)
    with pytest.raises(ValueError, match="no noise-aware variant"):
        build("image-nss-codec", 32, noise_aware=True, codec_settings=settings)
    with pytest.raises(ValueError, match="makes 32-channel latents, not 4"):
        build("image-nss-codec", 4, codec_settings=settings)
    with pytest.raises(ValueError, match="at least 2 patches.*got latents of 16x16"):
        build("image-nss-codec", 32, codec_settings=settings)(torch.randn(1, 1, 32, 16, 16))
