"""Surrogate architectures: the paper's parameter counts, every preset, the shared forward, save/load."""

import json

import numpy as np
import pytest
import torch

from lrm.models import (DEFAULT_PRESETS, PRESETS, REMOVED_PRESETS, CodecMismatchError, LatentRewardModel, build,
                        needs_text)
from lrm.models.fullres import mean_of_largest

B, C, H, W, L, D = 2, 4, 16, 16, 5, 8
CODEC = {"name": "dct", "version": "1", "channels": C, "spatial_factor": 8, "temporal_factor": 1, "scale": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_forward_backward(preset, noise_aware):
    torch.manual_seed(0)
    model = build(preset, C, text_dim=D if needs_text(preset) else None, noise_aware=noise_aware)
    pairs = PRESETS[preset].backbone == "fullres" and PRESETS[preset].temporal
    for frames in (2, 3) if pairs else (1, 3):
        latents, text, mask = inputs(frames)
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
    with pytest.raises(ValueError, match=r"latents are float64 but its weights are float32: pass latents.to\("):
        build("image-cnn", C)(latents.double())
    with pytest.raises(ValueError, match="no latents to score"):
        build("image-cnn", C)(latents[:0])
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
                                                ("image-fullres-log-stats", False), ("video-pair-stats", True)])
def test_save_load_round_trip(tmp_path, preset, noise_aware):
    torch.manual_seed(0)
    model = build(preset, C, text_dim=D if needs_text(preset) else None, noise_aware=noise_aware, width=0.5)
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
    latents, text, mask = inputs(frames=3)
    t = torch.tensor([10, 700]) if noise_aware else None
    model.eval()
    torch.testing.assert_close(loaded(latents, text, mask, t), model(latents, text, mask, t), rtol=0, atol=0)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["preset"] == preset and config["width"] == 0.5 == loaded.width
    assert config["label_stats"] == {"mean": 2.5, "std": 0.25, "transform": "none", "shift": 0.0}
    assert config["codec_settings"] == CODEC and config["reward_name"] == "colorfulness"
    assert loaded.info.reward_spec == {"name": "colorfulness", "kind": "image"}
    assert loaded.noise_aware == noise_aware and loaded.text_dim == model.text_dim


def test_the_log_transform_keeps_labels_far_from_zero_with_a_small_span():
    # labels near 1e7 spanning 200: in float32, y - shift rounded to 0 for the smallest label and log gave -inf
    model = build("image-cnn", C)
    labels = torch.tensor([1e7, 1e7 + 50, 1e7 + 200], dtype=torch.float64)
    shift = float(labels.min()) - 0.5
    logs = torch.log(labels - shift)
    model.set_label_stats(float(logs.mean()), float(logs.std()), "log", shift)
    z = model.standardise(labels.float())
    assert torch.isfinite(z).all()
    torch.testing.assert_close(model.to_reward_units(z).double(), labels, rtol=0, atol=2.0)  # float32 spacing: 1


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


def test_a_fit_run_folder_or_a_generator_run_given_as_a_surrogate_says_what_it_is(tmp_path):
    from lrm.generators import build_dit, save_denoiser
    from lrm.generators.io import FORMAT
    from lrm.models.surrogate import GENERATOR_FORMAT

    assert GENERATOR_FORMAT == FORMAT
    build("image-cnn", C).save_pretrained(tmp_path / "fit-run" / "model")
    with pytest.raises(FileNotFoundError, match=r"is a run folder of `lrm fit`; pass its surrogate: .*fit-run/model"):
        LatentRewardModel.from_pretrained(tmp_path / "fit-run")
    save_denoiser(build_dit("dit-xs", C, 8), tmp_path / "student" / "model")
    for folder in (tmp_path / "student", tmp_path / "student" / "model"):
        with pytest.raises(ValueError, match="is a generator run .* not a surrogate"):
            LatentRewardModel.from_pretrained(folder)


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


# ---------------------------------------------------------------- the preset table

def test_default_presets_serve_their_reward_kind():
    from lrm.rewards.base import KINDS

    assert sorted(DEFAULT_PRESETS) == sorted(KINDS)
    assert all(PRESETS[preset].kind == kind for kind, preset in DEFAULT_PRESETS.items())
    assert all(preset.what for preset in PRESETS.values())  # the table names what each one is


def test_width_scales_the_conv_channels():
    base, wide = build("image-cnn", C), build("image-cnn", C, width=2.0)
    assert [s.conv.out_channels for s in wide.backbone.stages] == [256, 256] and wide.backbone.feature_dim == 256
    assert 3.5 < n_params(wide.backbone) / n_params(base.backbone) < 4.5  # convs grow with width squared
    narrow = build("image-fullres-stats", C, width=0.4)  # 64 * 0.4 = 25.6 -> 24 channels (a multiple of 8)
    assert [s.conv.out_channels for s in narrow.backbone.stages] == [24, 24, 24]
    assert build("image-cnn", C, width=0.3)(inputs()[0]).shape == (B,)  # GroupNorm groups divide 40 channels
    with pytest.raises(ValueError, match="width must be a positive multiplier"):
        build("image-cnn", C, width=0)


@pytest.mark.parametrize("removed", ["image-cnn-m", "image-patch-gaussian-log-stats", "image-nss-codec"])
def test_a_surrogate_saved_with_a_removed_preset_is_refused_by_name(tmp_path, removed):
    build("image-cnn", C).save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "preset": removed}))
    with pytest.raises(ValueError) as error:
        LatentRewardModel.from_pretrained(tmp_path / "m")
    message = str(error.value)
    assert "\n" not in message and f"preset {removed!r}" in message and "refit it" in message
    assert REMOVED_PRESETS[removed] in message and "image-cnn-stats" in message
    with pytest.raises(KeyError, match=f"{removed!r} was removed"):
        build(removed, C)


def test_the_models_import_no_reward():
    # Surrogates know latents only; NIQE and the other pixel rewards live in lrm.rewards (the pixel path joins them).
    import subprocess
    import sys

    code = "import sys, lrm.models; print(sorted(m for m in sys.modules if m.startswith('lrm.rewards')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
