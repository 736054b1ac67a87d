"""The pixel path: reward(codec.decode(latents)), chunked, differentiable where its parts are."""

import pytest
import torch

from lrm import codecs
from lrm.pixel_path import PixelPathReward
from lrm.rewards import load


def latents_of(codec, count: int = 5, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, 1, 3, side, side, generator=g)
    with torch.no_grad():
        return codec.encode(pixels)  # (count, 1, c, side / 8, side / 8)


@pytest.mark.parametrize("reward", ["colorfulness", "jpeg-compressibility"])
def test_pixel_path_equals_the_reward_of_the_decoded_latents(reward):
    codec = codecs.load("dct")
    codec.batch_size = 2  # 5 clips: chunks of 2, 2, 1
    latents = latents_of(codec)
    path = PixelPathReward(codec, load(reward))
    with torch.no_grad():
        scores = path(latents)
        expected = load(reward)(codec.decode(latents))
    assert scores.shape == (5,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected)
    assert path.spec.name == reward and reward in repr(path)


@pytest.mark.parametrize("reward", ["colorfulness", "sharpness", "niqe"])
def test_gradient_reaches_the_latents_through_decoder_and_reward(reward):
    codec = codecs.load("dct")
    codec.batch_size = 2
    side = 192 if reward == "niqe" else 32  # NIQE needs two 96-px patches
    latents = latents_of(codec, count=3, side=side).requires_grad_()
    path = PixelPathReward(codec, load(reward))
    assert path.differentiable
    path(latents).sum().backward()
    assert torch.isfinite(latents.grad).all() and (latents.grad.flatten(1).abs().sum(1) > 0).all()
    if reward == "colorfulness":  # matches the gradient taken on one decode of the whole batch
        x = latents.detach().clone().requires_grad_()
        load(reward)(codec.decode(x)).sum().backward()
        torch.testing.assert_close(latents.grad, x.grad)


def test_a_non_differentiable_reward_scores_but_refuses_a_gradient():
    codec = codecs.load("dct")
    path = PixelPathReward(codec, load("jpeg-compressibility"))
    assert not path.differentiable
    latents = latents_of(codec, count=2).requires_grad_()
    with pytest.raises(ValueError, match="'jpeg-compressibility' is not differentiable.*lrm fit jpeg-compressibility"):
        path(latents)
    with torch.no_grad():
        assert path(latents).shape == (2,)


def test_prompts_are_chunked_with_the_latents_and_bad_input_is_named():
    codec = codecs.load("dct")
    codec.batch_size = 1
    seen = []

    class Echo:  # a text reward that records the prompts of every chunk
        spec = load("colorfulness").spec

        def __call__(self, pixels, prompts=None):
            seen.append(prompts)
            return pixels.mean(dim=(1, 2, 3, 4))

    path = PixelPathReward(codec, Echo())
    path(latents_of(codec, count=2), ["a", "b"])
    assert seen == [["a"], ["b"]]
    with pytest.raises(ValueError, match="one prompt per sample"):
        path(latents_of(codec, count=2), ["a"])
    with pytest.raises(ValueError, match=r"latents must have shape \(B, T', c, h, w\)"):
        path(latents_of(codec, count=2)[:, 0])



def test_latent_gradient_is_the_whole_batchs_gradient_chunk_by_chunk_and_none_for_a_detaching_reward():
    codec = codecs.load("dct")
    codec.batch_size = 2  # 5 clips: chunks of 2, 2, 1
    latents = latents_of(codec)
    path = PixelPathReward(codec, load("colorfulness"))
    whole = latents.clone().requires_grad_()
    path(whole).sum().backward()
    torch.testing.assert_close(path.latent_gradient(latents), whole.grad)

    class Detached:  # says differentiable, but scores pixels it has detached
        spec = load("colorfulness").spec

        def __call__(self, pixels, prompts=None):
            return pixels.detach().mean(dim=(1, 2, 3, 4))

    assert PixelPathReward(codec, Detached()).latent_gradient(latents) is None
