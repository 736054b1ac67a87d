"""VBench learned-model dimensions: preprocessing against torchvision/vbench, formulas, tiny models.

Every model is tiny and randomly initialised in-process; references are torchvision, vbench's own
code (where it imports) and literal transcriptions of VBench's loops.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import shutil
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrm import weights
from lrm.rewards import REWARDS, vbench_dims, viclip
from lrm.rewards.base import InputError

TINY_VICLIP = viclip.ViCLIPConfig(
    image_size=224, patch_size=32, frames=8, vision_width=32, vision_layers=1, vision_heads=2,
    text_width=32, text_layers=1, text_heads=2, embed_dim=16, context_length=32,
)


# ---------------------------------------------------------------- tiny models


def tiny_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    return vit.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_clip() -> nn.Module:
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=32, image_size=224),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1),
        quick_gelu=True,
    )
    return model.eval().requires_grad_(False)


def tiny_viclip() -> viclip.ViCLIP:
    torch.manual_seed(0)
    return viclip.build_viclip(TINY_VICLIP).requires_grad_(False)


def static_and_moving_clips(t: int = 4, size: int = 48) -> torch.Tensor:
    """(2, T, 3, size, size): clip 0 repeats one frame, clip 1 changes content every frame."""
    g = torch.Generator().manual_seed(1)
    frame = torch.rand(3, size, size, generator=g)
    static = frame.expand(t, -1, -1, -1)
    moving = torch.rand(t, 3, size, size, generator=g)
    return torch.stack([static, moving])


def check_reward_behaviour(reward, prompts=None):
    """Shape (B,), determinism, gradient to pixels, identical frames -> 1, changing frames lower."""
    pixels = static_and_moving_clips().requires_grad_(True)
    scores = reward(pixels, prompts)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    again = reward(pixels.detach(), prompts)
    torch.testing.assert_close(reward(pixels.detach(), prompts), again, rtol=0, atol=0)
    torch.testing.assert_close(again, scores.detach())
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad[1].abs().sum() > 0
    return scores.detach()


# ---------------------------------------------------------------- preprocessing against references


@pytest.mark.parametrize("shape", [(40, 64), (64, 40), (30, 30)])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_short_side_matches_torchvision(shape, mode):
    from torchvision.transforms import InterpolationMode, Resize

    frames = torch.rand(2, 3, *shape)
    ours = vbench_dims.resize_short_side(frames, 24, mode)
    theirs = Resize(24, interpolation=InterpolationMode(mode), antialias=False)(frames)
    torch.testing.assert_close(ours, theirs)


def test_transforms_match_vbench_on_uint8_frames():
    vbench_utils = pytest.importorskip("vbench.utils")  # needs decord
    frames = (torch.rand(3, 3, 60, 100) * 255).round().to(torch.uint8)  # VBench reads uint8 (T, C, H, W)
    floats = frames.float() / 255
    # VBench rounds the resized uint8 frames: at most half a grey level, divided by the std (~0.23-0.27)
    tolerance = 0.6 / 255 / 0.22
    ours, theirs = vbench_dims.clip_pixels(floats), vbench_utils.clip_transform(224)(frames)
    assert ours.shape == theirs.shape == (3, 3, 224, 224)
    assert (ours - theirs).abs().max() < tolerance
    ours, theirs = vbench_dims.dino_pixels(floats), vbench_utils.dino_transform(224)(frames)
    assert ours.shape == theirs.shape == (3, 3, 224, 373)
    assert (ours - theirs).abs().max() < tolerance


def test_middle_indices_match_vbench():
    vbench_utils = pytest.importorskip("vbench.utils")
    for n in (1, 3, 7, 8, 9, 16, 33, 100):
        expected = vbench_utils.get_frame_indices(8, n, sample="middle")
        assert vbench_dims.vbench_middle_indices(n, 8).tolist() == list(expected), n


def test_limit_longer_side():
    frames = torch.rand(2, 3, 600, 300)
    assert vbench_dims.limit_longer_side(frames, 512).shape == (2, 3, 512, 256)
    small = torch.rand(1, 3, 100, 200)
    assert vbench_dims.limit_longer_side(small, 512) is small


# ---------------------------------------------------------------- the consistency formula


def vbench_consistency_loop(features: torch.Tensor) -> float:
    """Literal transcription of vbench subject_consistency's loop for one clip (T, D)."""
    video_sim, former, first = 0.0, None, None
    for i in range(len(features)):
        f = F.normalize(features[i : i + 1], dim=-1, p=2)
        if i == 0:
            first = f
        else:
            sim_pre = max(0.0, F.cosine_similarity(former, f).item())
            sim_fir = max(0.0, F.cosine_similarity(first, f).item())
            video_sim += (sim_pre + sim_fir) / 2
        former = f
    return video_sim / (len(features) - 1)


def test_frame_consistency_matches_vbench_loop():
    torch.manual_seed(0)
    features = torch.randn(3, 6, 5)  # random features: some cosines are negative and get clipped
    features[2] = features[2, :1] + 0.1 * features[2]
    ours = vbench_dims.frame_consistency(features)
    expected = torch.tensor([vbench_consistency_loop(f) for f in features])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_frame_consistency_of_identical_frames_is_one():
    features = torch.randn(1, 1, 7).expand(2, 5, 7)
    torch.testing.assert_close(vbench_dims.frame_consistency(features), torch.ones(2), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- subject consistency (DINO)


def test_dino_features_equal_timm_forward_on_square_input():
    vit = tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(vbench_dims.dino_cls_features(vit, x), vit(x))


def dino_interpolate_pos_encoding(pos_embed, patch_size, x):
    """Literal transcription of dino/vision_transformer.py VisionTransformer.interpolate_pos_encoding,
    for a pixel batch x (B, 3, w, h) (DINO names the height w)."""
    _, _, w, h = x.shape
    npatch = (w // patch_size) * (h // patch_size)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size + 0.1, h // patch_size + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("size", [(32, 32), (32, 60), (57, 32), (224, 398)])
def test_dino_pos_embed_matches_dino(size):
    pos = torch.randn(1, 1 + 16, 8)  # trained on a 4 x 4 grid of 8-pixel patches
    x = torch.zeros(1, 3, *size)
    h, w = size[0] // 8, size[1] // 8
    ours = vbench_dims.dino_pos_embed(pos, h, w, square=size[0] == size[1])
    torch.testing.assert_close(ours, dino_interpolate_pos_encoding(pos, 8, x))


def test_timm_vit_keys_are_dino_keys():
    # dino/vision_transformer.py: VisionTransformer(depth=2) state dict, listed literally
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                 "mlp.fc2.weight", "mlp.fc2.bias"]
    dino_keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                 "norm.weight", "norm.bias"} | {f"blocks.{i}.{k}" for i in range(2) for k in per_block}
    assert set(tiny_vit().state_dict()) == dino_keys


def test_subject_consistency_behaviour():
    reward = vbench_dims.SubjectConsistency(tiny_vit())
    scores = check_reward_behaviour(reward)
    assert abs(scores[0].item() - 1) < 1e-5
    assert scores[1] < scores[0] - 1e-3


def test_consistency_needs_two_frames():
    reward = vbench_dims.SubjectConsistency(tiny_vit())
    with pytest.raises(InputError, match="at least 2 frames"):
        reward(torch.rand(1, 1, 3, 32, 32))


# ---------------------------------------------------------------- CLIP-based dimensions


def test_background_consistency_behaviour(tiny_clip):
    scores = check_reward_behaviour(vbench_dims.BackgroundConsistency(tiny_clip))
    assert abs(scores[0].item() - 1) < 1e-5
    assert scores[1] < scores[0] - 1e-3


def test_aesthetic_quality_is_frame_mean_of_linear_head_over_ten(tiny_clip):
    torch.manual_seed(0)
    head = nn.Linear(16, 1).requires_grad_(False)
    reward = vbench_dims.VBenchAestheticQuality(tiny_clip, head)
    pixels = static_and_moving_clips()
    check_reward_behaviour(reward)
    # vbench laion_aesthetic: normalise the CLIP embedding, linear head, / 10, mean over frames
    frames = vbench_dims.clip_pixels(pixels[1])
    expected = head(F.normalize(tiny_clip.encode_image(frames), dim=-1)).squeeze(-1).div(10).mean()
    torch.testing.assert_close(reward(pixels)[1], expected)


# ---------------------------------------------------------------- imaging quality (MUSIQ core)


class MeanBrightness(nn.Module):
    """Stands in for MUSIQ: (N, 3, H, W) -> (N, 1) in [0, 100]; records the input size."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(100.0), requires_grad=False)
        self.seen = None

    def forward(self, x):
        self.seen = tuple(x.shape)
        return self.scale * x.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_imaging_quality_core_resizes_and_divides_by_100():
    model = MeanBrightness()
    reward = vbench_dims.ImagingQuality(model)
    levels = torch.tensor([0.2, 0.9]).view(2, 1, 1, 1, 1)  # clips far apart: swapped or averaged scores fail
    pixels = (levels * torch.rand(2, 3, 3, 600, 300)).requires_grad_()
    scores = reward(pixels)
    assert model.seen == (6, 3, 512, 256)  # all frames of both clips, longer side 512
    torch.testing.assert_close(scores, pixels.detach().mean(dim=(1, 2, 3, 4)), atol=2e-3, rtol=0)
    scores.sum().backward()
    assert pixels.grad.abs().sum() > 0


# ---------------------------------------------------------------- ViCLIP port against vbench's classes


def einops_stub() -> types.ModuleType:
    """The two einops patterns ViCLIP's vision tower uses, for environments without einops."""

    def rearrange(x, pattern, b, t):
        if pattern == "(b t) n m -> (b n) t m":
            return x.reshape(b, t, *x.shape[1:]).transpose(1, 2).reshape(-1, t, x.shape[-1])
        if pattern == "(b n) t m -> b (n t) m":
            return x.reshape(b, -1, x.shape[-1])
        raise NotImplementedError(pattern)

    return types.SimpleNamespace(rearrange=rearrange)


@pytest.fixture(scope="module")
def vbench_viclip(tmp_path_factory):
    """vbench's ViCLIP modules, imported with their download-at-import and missing deps sidestepped."""
    vbench_utils = pytest.importorskip("vbench.utils")
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    cache = tmp_path_factory.mktemp("vbench_cache")
    (cache / "ViCLIP").mkdir()
    shutil.copy(open_clip_tokenizer.default_bpe(), cache / "ViCLIP" / "bpe_simple_vocab_16e6.txt.gz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vbench_utils, "CACHE_DIR", str(cache))  # its tokenizer would wget the vocabulary
        if importlib.util.find_spec("einops") is None:
            mp.setitem(sys.modules, "einops", einops_stub())
        if importlib.util.find_spec("pkg_resources") is None:
            import packaging.version

            mp.setitem(sys.modules, "pkg_resources", types.SimpleNamespace(packaging=packaging))
        names = ("viclip_text", "viclip_vision", "simple_tokenizer", "viclip")
        with warnings.catch_warnings():  # vbench imports timm's deprecated module paths
            warnings.simplefilter("ignore", FutureWarning)
            mods = {n: importlib.import_module(f"vbench.third_party.ViCLIP.{n}") for n in names}
    return SimpleNamespace(**mods)


def vbench_tiny_towers(vb):
    torch.manual_seed(0)
    vision = vb.viclip_vision.VisionTransformer(
        input_resolution=64, patch_size=16, width=32, layers=2, heads=2, output_dim=16, num_frames=8
    ).eval()
    text = vb.viclip_text.CLIP_TEXT(16, 32, 49408, 32, 2, 2, 0).eval()
    with torch.no_grad():  # CLIP_TEXT leaves these torch.empty
        text.positional_embedding.normal_(std=0.01)
        text.text_projection.normal_(std=0.2)
        vision.proj.normal_(std=0.2)
        vision.temporal_positional_embedding.normal_(std=0.1)
    return vision, text


def test_viclip_port_matches_vbench_numerically(vbench_viclip):
    vision, text = vbench_tiny_towers(vbench_viclip)
    cfg = viclip.ViCLIPConfig(image_size=64, patch_size=16, vision_width=32, vision_layers=2, vision_heads=2,
                              text_width=32, text_layers=2, text_heads=2, embed_dim=16)
    port = viclip.build_viclip(cfg)
    port.vision_encoder.load_state_dict(vision.state_dict(), strict=True)
    port.text_encoder.load_state_dict(text.state_dict(), strict=True)

    video = torch.randn(2, 8, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(port.encode_video(video), vision(video.permute(0, 2, 1, 3, 4)), atol=1e-5, rtol=1e-4)
        image = video[:, :1]
        torch.testing.assert_close(port.encode_video(image), vision(image.permute(0, 2, 1, 3, 4)), atol=1e-5, rtol=1e-4)
        prompts = ["a dog running on the beach", "Two CATS, sleeping!"]
        tokens = viclip.tokenize(prompts, 32)
        assert torch.equal(tokens, text.tokenize(prompts, context_length=32).long())
        torch.testing.assert_close(port.encode_text(tokens), text(tokens), atol=1e-5, rtol=1e-4)


def test_viclip_port_has_checkpoint_keys_and_shapes(vbench_viclip, monkeypatch):
    """Full ViCLIP-L/14, built on the meta device: same state-dict keys and shapes as vbench's."""
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **k, device="cpu"))  # drop-path .item()
    with torch.device("meta"):
        theirs = vbench_viclip.viclip.ViCLIP(tokenizer=object(), pretrain=None)
        ours = viclip.ViCLIP(viclip.VICLIP_PRESETS["ViCLIP-L/14"])
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(theirs)


def test_load_viclip_round_trip(tmp_path):
    model = tiny_viclip()
    path = tmp_path / "tiny_viclip.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = viclip.load_viclip(path, TINY_VICLIP)
    tokens = viclip.tokenize(["a red ball"])
    torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens))


def test_viclip_score_behaviour():
    reward = vbench_dims.ViCLIPScore(tiny_viclip())
    prompts = ["a red ball", "a red ball"]
    scores = check_reward_behaviour(reward, prompts)
    assert ((scores >= -1) & (scores <= 1)).all()
    pixels = static_and_moving_clips()
    other = reward(pixels, ["a blue cube falling over", "a red ball"])
    assert not torch.allclose(other[0], scores[0])  # the prompt matters
    torch.testing.assert_close(other[1], scores[1])  # and only for its own sample


def test_viclip_score_samples_eight_frames_like_vbench():
    reward = vbench_dims.ViCLIPScore(tiny_viclip())
    pixels = torch.rand(1, 20, 3, 40, 40)
    idx = vbench_dims.vbench_middle_indices(20, 8)
    torch.testing.assert_close(reward(pixels, ["x"]), reward(pixels[:, idx], ["x"]))
    short = torch.rand(1, 3, 3, 40, 40)  # fewer than 8 frames: padded with the last, as VBench
    padded = short[:, [0, 1, 2, 2, 2, 2, 2, 2]]
    torch.testing.assert_close(reward(short, ["x"]), reward(padded, ["x"]))


# ---------------------------------------------------------------- registry and factories


VBENCH_NAMES = ("subject-consistency", "background-consistency", "vbench-aesthetic-quality", "imaging-quality",
                "viclip-score")


def test_entries_are_registered_with_their_needs():
    for name in VBENCH_NAMES:
        entry = REWARDS[name]
        assert entry.spec.name == name
        assert all(w in weights.WEIGHTS for w in entry.weights)
    assert REWARDS["viclip-score"].spec.kind == "text-video"


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Offline, with empty weight folders and an empty Hugging Face cache."""
    monkeypatch.setenv("LRM_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LRM_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    constants = pytest.importorskip("huggingface_hub.constants")  # read at import: patch the live values
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize(
    "factory, filename",
    [
        (vbench_dims.subject_consistency, "dino_vitbase16_pretrain.pth"),
        (vbench_dims.vbench_aesthetic_quality, "sa_0_4_vit_l_14_linear.pth"),
        (vbench_dims.viclip_score, "ViClip-InternVid-10M-FLT.pth"),
    ],
)
def test_factories_name_the_missing_file(no_weights, factory, filename):
    with pytest.raises(weights.MissingWeightsError, match=filename.replace(".", r"\.")):
        factory()


def test_open_clip_factory_names_the_missing_weights(no_weights):
    pytest.importorskip("open_clip")
    with pytest.raises(weights.MissingWeightsError, match="vit_base_patch32_clip_224.openai"):
        vbench_dims.background_consistency()
    with pytest.raises(ValueError, match="nor a checkpoint file"):
        vbench_dims.background_consistency(pretrained=str(Path("/nonexistent/ViT-B-32.pt")))


def test_imaging_quality_factory_explains_what_is_missing(no_weights):
    assert REWARDS["imaging-quality"].requires == ()  # lrm's own MUSIQ port: no pyiqa
    with pytest.raises(weights.MissingWeightsError, match=r"musiq_spaq_ckpt-358bb6af\.pth"):
        vbench_dims.imaging_quality()


def test_middle_indices_pad_short_clips():
    assert vbench_dims.vbench_middle_indices(3, 8).tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    assert np.all(np.diff(vbench_dims.vbench_middle_indices(100, 8)) > 0)
