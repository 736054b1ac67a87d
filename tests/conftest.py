"""Tests run offline: no hub look-ups, no downloads, whatever the machine's network.
Fixtures used by several test files live here."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LRM_OFFLINE", "1")


@pytest.fixture()
def exact_float32():
    """TF32 off on CUDA, so that a GPU and the CPU differ only by summation order (tests/test_cuda*.py)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture()
def one_thread():
    """torch on one thread for the test: tiny convolutions on a shared 2-core machine run far faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_vaes(tmp_path_factory):
    """Random-init tiny diffusers autoencoders saved with save_pretrained: {kind: folder}."""
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("vaes")
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        scaling_factor=0.5, shift_factor=0.1,
    ).save_pretrained(root / "kl")
    diffusers.AutoencoderKLWan(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 1.0, 0.5],
    ).save_pretrained(root / "wan")
    diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).save_pretrained(root / "tiny")
    diffusers.AutoencoderDC(  # encode() returns .latent (AutoencoderTiny: .latents, AutoencoderKL: .latent_dist)
        latent_channels=4, attention_head_dim=8, encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
        decoder_qkv_multiscales=((), ()),
    ).save_pretrained(root / "dc")
    return {kind: root / kind for kind in ("kl", "wan", "tiny", "dc")}
