"""Codecs: registry, block-DCT (against scipy), TAEF2 on real photos, diffusers autoencoders, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from PIL import Image

import lrm.codecs as codecs
from lrm import weights
from lrm.codecs.dct import CHANNEL_MEAN, CHANNEL_STD, SPLIT, DCTCodec, zigzag

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DREAMBOOTH = DATA / "images" / "dreambooth"
TAESD_WEIGHTS = DATA / "weights" / "taesd"


def square_photos(images: list[Image.Image], size: int) -> torch.Tensor:
    """Short side resized to `size` (bicubic), centre crop -> (N, 1, 3, size, size) in [0, 1]."""
    crops = []
    for im in images:
        w, h = im.size
        s = size / min(w, h)
        im = im.convert("RGB").resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        crops.append(np.asarray(im.crop((left, top, left + size, top + size))))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).unsqueeze(1).float() / 255


def dreambooth(size: int, step: int = 1) -> torch.Tensor:
    files = sorted(DREAMBOOTH.glob("*.jpg"))[::step] if DREAMBOOTH.is_dir() else []
    if not files:
        pytest.skip(f"real photos not found at {DREAMBOOTH} (../shared/data is absent)")
    return square_photos([Image.open(f) for f in files], size)


def skimage_photos(size: int) -> torch.Tensor:
    import skimage.data

    return square_photos([Image.fromarray(getattr(skimage.data, n)()) for n in ("astronaut", "chelsea", "coffee", "rocket")], size)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1))


@pytest.fixture
def taef2_weights(monkeypatch):
    if not (TAESD_WEIGHTS / "taef2_encoder.pth").is_file():
        pytest.skip(f"TAEF2 weights not found in {TAESD_WEIGHTS}")
    monkeypatch.setenv("LRM_WEIGHTS", str(TAESD_WEIGHTS))
    monkeypatch.setenv("LRM_OFFLINE", "1")


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Offline, with empty weight folders: nothing can be found or downloaded."""
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("LRM_OFFLINE", "1")
    monkeypatch.setenv("LRM_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))


# ---- registry -------------------------------------------------------------------------------


def test_registry_builds_every_entry(monkeypatch, tmp_path):
    from lrm.codecs import pae

    monkeypatch.setenv("LRM_OFFLINE", "1")  # entries whose weights are absent raise instead of downloading
    monkeypatch.setenv("LRM_CACHE", str(tmp_path))  # pae trains its default here on first use: a tiny one
    monkeypatch.setattr(pae, "PAE_DEFAULT", pae.PAEConfig(widths=(4, 4, 8), size=32, images=8, steps=2, batch_size=2,
                                                            min_psnr=0.0))
    if TAESD_WEIGHTS.is_dir():
        monkeypatch.setenv("LRM_WEIGHTS", str(TAESD_WEIGHTS))
    built = []
    for name in codecs.CODECS:
        try:
            codec = codecs.load(name, batch_size=2)
        except weights.MissingWeightsError:
            assert name != "dct", "the dct codec needs no weights"
            continue
        pixels = torch.rand(3, 2, 3, 16, 24)
        latents = codec.encode(pixels)
        assert latents.shape == (3, *codec.latent_shape(2, 16, 24))
        assert codec.decode(latents).shape == pixels.shape
        assert codec.settings()["name"] == name and codec.codec_id == f"{name}-v{codec.version}"
        built.append(name)
    assert {"dct", "pae"} <= set(built)


def test_unknown_codec_lists_known_names():
    with pytest.raises(KeyError, match="Known codecs: dct, pae, taef2. Or diffusers:"):
        codecs.load("jpeg")
    with pytest.raises(KeyError, match="unknown codec 'tae2f'; did you mean 'taef2'"):
        codecs.load("tae2f")


def test_from_settings_round_trip_and_refusal():
    codec = codecs.load("dct")
    assert codecs.from_settings(codec.settings()).settings() == codec.settings()
    with pytest.raises(ValueError, match="differs in: channels, split"):
        codecs.from_settings({**codec.settings(), "channels": 16, "split": [10, 3, 3]})


# ---- dct ------------------------------------------------------------------------------------


def test_zigzag_matches_jpeg_order():
    # ITU-T T.81 figure A.6: the first ten positions of the zigzag scan, as row * 8 + col
    assert [r * 8 + c for r, c in zigzag()[:10]] == [0, 1, 8, 16, 9, 2, 3, 10, 17, 24]
    assert sorted(zigzag()) == [(r, c) for r in range(8) for c in range(8)]


def test_dct_coefficients_match_scipy():
    codec = DCTCodec(mean=None, std=None)  # raw coefficients
    pixels = torch.rand(1, 1, 3, 16, 24, dtype=torch.float64)
    latents = codec.encode(pixels)[0, 0]  # (32, 2, 3)
    rgb = pixels[0, 0].permute(1, 2, 0).numpy()  # (H, W, 3)
    ycbcr = rgb @ np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).T
    ycbcr[..., 0] -= 0.5
    start = 0
    for plane, kept in enumerate(SPLIT):
        for by in range(2):
            for bx in range(3):
                block = ycbcr[by * 8:(by + 1) * 8, bx * 8:(bx + 1) * 8, plane]
                ref = scipy.fft.dctn(block, norm="ortho")
                expected = [ref[r, c] for r, c in zigzag()[:kept]]
                np.testing.assert_allclose(latents[start:start + kept, by, bx].numpy(), expected, atol=1e-5)
        start += kept


def test_dct_decode_inverts_encode_on_band_limited_pixels():
    codec = DCTCodec()
    torch.manual_seed(0)
    grey = codec.encode(torch.full((2, 3, 3, 16, 16), 0.5, dtype=torch.float64))
    latents = grey + 0.05 * torch.randn_like(grey)  # small enough to stay inside [0, 1]
    pixels = codec.decode(latents)
    assert 0 < pixels.min() and pixels.max() < 1
    torch.testing.assert_close(codec.encode(pixels), latents, rtol=0, atol=1e-10)


def test_dct_psnr_on_skimage_photos():
    codec = DCTCodec()
    pixels = skimage_photos(256)
    scores = psnr(pixels, codec.decode(codec.encode(pixels)))
    assert scores.mean() > 32.0, scores  # measured 32.63 dB (30.2 - 35.6)


@pytest.mark.data
def test_dct_psnr_and_scale_on_dreambooth():
    codec = DCTCodec()
    pixels = dreambooth(256, step=2)  # 79 photos
    latents = codec.encode(pixels)
    scores = psnr(pixels, codec.decode(latents))
    assert scores.mean() > 32.0, scores.mean()  # measured 32.45 dB on all 158 photos
    std = latents.transpose(0, 2).flatten(1).std(1)  # per channel
    torch.testing.assert_close(std, torch.ones_like(std), atol=0.1, rtol=0)  # constants measured on all 158


def test_dct_constants_have_one_value_per_channel():
    assert len(CHANNEL_MEAN) == len(CHANNEL_STD) == sum(SPLIT) == 32


def test_dct_gradients_are_exact():
    codec = DCTCodec()
    pixels = (0.25 + 0.5 * torch.rand(1, 1, 3, 8, 16, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(codec.encode, (pixels,), fast_mode=True)
    latents = codec.encode(pixels).detach().requires_grad_()  # decodes inside (0, 1): clamp inactive
    assert torch.autograd.gradcheck(codec.decode, (latents,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dct_follows_input_dtype(dtype):
    codec = DCTCodec()
    pixels = torch.rand(1, 1, 3, 16, 16, dtype=dtype)
    latents = codec.encode(pixels)
    assert latents.dtype == dtype and codec.decode(latents).dtype == dtype


@pytest.mark.parametrize("standardised", [True, False])
def test_dct_mirror_latents_equal_latents_of_mirrored_pixels(standardised):
    codec = DCTCodec() if standardised else DCTCodec(mean=None, std=None)
    pixels = torch.rand(2, 3, 3, 16, 24, dtype=torch.float64)
    mirrored = codec.mirror_latents(codec.encode(pixels))
    torch.testing.assert_close(mirrored, codec.encode(pixels.flip(-1)), rtol=0, atol=1e-10)
    assert not torch.allclose(mirrored, codec.encode(pixels))  # the mirror changes something


def test_codecs_without_an_exact_mirror_refuse(tiny_vaes):
    codec = codecs.load(f"diffusers:{tiny_vaes['kl']}")
    with pytest.raises(ValueError, match="no exact latent-space mirror"):
        codec.mirror_latents(torch.zeros(1, 1, 4, 8, 8))


def test_batch_chunking_equals_unchunked():
    pixels = torch.rand(5, 2, 3, 16, 16)
    chunked, whole = DCTCodec(batch_size=2), DCTCodec(batch_size=64)
    torch.testing.assert_close(chunked.encode(pixels), whole.encode(pixels), rtol=0, atol=1e-6)
    latents = whole.encode(pixels)
    torch.testing.assert_close(chunked.decode(latents), whole.decode(latents), rtol=0, atol=1e-6)


def test_size_and_shape_errors():
    codec = DCTCodec()
    with pytest.raises(ValueError, match="multiples of 8, got \\(20, 16\\)"):
        codec.encode(torch.rand(1, 1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        codec.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, T', 32, h, w\)"):
        codec.decode(torch.rand(1, 1, 16, 2, 2))


# ---- taef2 ----------------------------------------------------------------------------------


def test_missing_taef2_weights_error(no_weights):
    with pytest.raises(weights.MissingWeightsError, match="taef2_encoder.pth"):
        codecs.load("taef2")


@pytest.mark.data
def test_taef2_round_trip_on_dreambooth(taef2_weights):
    codec = codecs.load("taef2")
    pixels = dreambooth(256, step=53)  # 3 photos of different subjects
    with torch.no_grad():
        latents = codec.encode(pixels)
        scores = psnr(pixels, codec.decode(latents))
    assert latents.shape == (3, 1, 32, 32, 32)
    assert scores.mean() > 28.0, scores  # upstream reports 29.6-32.7 dB; measured 30.1 dB on 40 photos
    assert 0.5 < latents.std() < 1.5  # already in FLUX.2's normalised latent scale
    pixels.requires_grad_()
    codec.decode(codec.encode(pixels[:1, :, :, :32, :32])).mean().backward()
    assert pixels.grad.abs().sum() > 0


@pytest.mark.data
def test_pixel_path_runs_niqe_on_taef2_decoded_photos_with_a_gradient_to_the_latents(taef2_weights):
    from lrm.pixel_path import PixelPathReward
    from lrm.rewards import load

    codec = codecs.load("taef2")
    with torch.no_grad():
        latents = codec.encode(dreambooth(192, step=53))  # (3, 1, 32, 24, 24)
        expected = load("niqe")(codec.decode(latents))
    latents.requires_grad_()
    scores = PixelPathReward(codec, load("niqe"))(latents)
    torch.testing.assert_close(scores.detach(), expected)
    scores.sum().backward()
    assert torch.isfinite(latents.grad).all() and (latents.grad.flatten(1).abs().sum(1) > 0).all()


# ---- diffusers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, factors, frames", [("kl", (2, 1), 3), ("wan", (8, 4), 5), ("tiny", (8, 1), 2),
                                                  ("dc", (2, 1), 2)])
def test_diffusers_codec_geometry_gradients_settings(tiny_vaes, kind, factors, frames):
    codec = codecs.load(f"diffusers:{tiny_vaes[kind]}", batch_size=1)
    assert (codec.spatial_factor, codec.temporal_factor, codec.channels) == (*factors, 4)
    pixels = torch.rand(2, frames, 3, 16, 16, requires_grad=True)
    latents = codec.encode(pixels)
    assert latents.shape == (2, *codec.latent_shape(frames, 16, 16))
    decoded = codec.decode(latents)
    assert decoded.shape == pixels.shape and 0 <= decoded.min() and decoded.max() <= 1
    decoded.pow(2).mean().backward()
    assert pixels.grad.abs().sum() > 0
    settings = codec.settings()
    assert settings["name"] == f"diffusers:{tiny_vaes[kind]}"
    assert codecs.from_settings(settings).settings() == settings


def test_diffusers_latents_are_scaled_like_the_pipelines(tiny_vaes):
    kl = codecs.load(f"diffusers:{tiny_vaes['kl']}")
    pixels = torch.rand(1, 1, 3, 16, 16)
    with torch.no_grad():
        raw = kl.model.encode(pixels[:, 0] * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(kl.encode(pixels)[:, 0], (raw - 0.1) * 0.5)
    wan = codecs.load(f"diffusers:{tiny_vaes['wan']}")
    clip = torch.rand(1, 5, 3, 16, 16)
    with torch.no_grad():
        raw = wan.model.encode(clip.transpose(1, 2) * 2 - 1).latent_dist.mode().transpose(1, 2)  # (1, 2, 4, 2, 2)
        mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(4, 1, 1)
        std = torch.tensor([2.0, 1.5, 1.0, 0.5]).view(4, 1, 1)
        torch.testing.assert_close(wan.encode(clip), (raw - mean) / std)


def test_ltx_video_latents_are_normalised_by_its_buffers_like_its_pipeline(tmp_path):
    """AutoencoderKLLTXVideo keeps latents_mean / latents_std as buffers, not in its config; LTXPipeline normalises
    with them: (raw - mean) * scaling_factor / std. The codec read only the config and left LTX latents raw."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLLTXVideo(block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                          layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                          latent_channels=8)
    vae.latents_mean.copy_(torch.linspace(-1.0, 1.0, 8))
    vae.latents_std.copy_(torch.linspace(0.5, 2.0, 8))
    vae.save_pretrained(tmp_path / "ltx")
    codec = codecs.load(f"diffusers:{tmp_path / 'ltx'}")
    clip = torch.rand(1, 9, 3, 32, 32)
    with torch.no_grad():
        raw = codec.model.encode(clip.transpose(1, 2) * 2 - 1).latent_dist.mode().transpose(1, 2)
        mean, std = vae.latents_mean.view(8, 1, 1), vae.latents_std.view(8, 1, 1)
        scaling = codec.model.config.scaling_factor
        torch.testing.assert_close(codec.encode(clip), (raw - mean) * scaling / std)
    assert codec.settings()["latent_mean"][:2] == [-1.0, round(-1.0 + 2 / 7, 6)]


def test_svds_temporal_decoder_decodes_each_clips_frames_together(tmp_path):
    """AutoencoderKLTemporalDecoder (Stable Video Diffusion) encodes frames as images but decodes a clip's frames
    together, given their count: decode(z, num_frames). lrm called decode(z) and raised TypeError."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), latent_channels=4, layers_per_block=1,
                                                 down_block_types=("DownEncoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "svd")
    codec = codecs.load(f"diffusers:{tmp_path / 'svd'}")
    clips = torch.rand(2, 3, 3, 16, 16)
    latents = codec.encode(clips)
    with torch.no_grad():
        pixels = codec.decode(latents)
        raw = latents[1] / codec.model.config.scaling_factor  # the second clip's (T, c, h, w), unscaled
        alone = codec.model.decode(raw, num_frames=3).sample  # what SVD's pipeline does per clip
    assert pixels.shape == clips.shape
    torch.testing.assert_close(pixels[1], ((alone + 1) / 2).clamp(0, 1))


def test_video_codec_rejects_frame_counts_it_would_truncate(tiny_vaes):
    codec = codecs.load(f"diffusers:{tiny_vaes['wan']}")
    with pytest.raises(ValueError, match="needs 1 \\+ k \\* 4 frames, got 4; sample 1 frames"):
        codec.encode(torch.rand(1, 4, 3, 16, 16))


def test_diffusers_missing_model_errors(no_weights, tmp_path):
    with pytest.raises(weights.MissingWeightsError, match="no-such-org/no-such-vae"):
        codecs.load("diffusers:no-such-org/no-such-vae")
    with pytest.raises(weights.MissingWeightsError, match="no folder at"):
        codecs.load(f"diffusers:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match="needs a model"):
        codecs.load("diffusers:")
