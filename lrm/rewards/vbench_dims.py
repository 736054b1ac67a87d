"""VBench quality dimensions with learned models (Huang et al., "VBench", CVPR 2024).

Each adapter follows vbench 0.1.5's formula and preprocessing, rewritten in torch so that gradients
reach the pixels (VBench itself scores uint8 frames under no_grad):

- subject-consistency     DINO ViT-B/16 class token per frame (vbench/subject_consistency.py)
- background-consistency  CLIP ViT-B/32 image embedding per frame (vbench/background_consistency.py)
    both: mean over frames i >= 1 of (max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2
- vbench-aesthetic-quality  LAION aesthetic predictor v1 (a linear head on the normalised CLIP
    ViT-L/14 embedding) / 10, averaged over frames (vbench/aesthetic_quality.py)
- imaging-quality         MUSIQ (SPAQ) / 100, averaged over frames (vbench/imaging_quality.py;
    lrm.rewards.musiq is the model, a port of pyiqa's that loads its checkpoint)
- viclip-score            cosine of ViCLIP video and text embeddings on 8 frames
    (vbench/overall_consistency.py; lrm.rewards.viclip is the model)

Preprocessing matches vbench.utils: `dino_transform` (bilinear short-side resize to 224, no crop,
ImageNet statistics) and `clip_transform` (bicubic short-side resize to 224, centre crop, CLIP
statistics), both with antialias=False, which is why the resize here is not lrm.rewards.preprocess's
antialiased one (crop and normalisation are shared). VBench resizes uint8 frames, so its inputs
carry an extra rounding of at most half a grey level that these float versions skip. Scoring cores
take a built model; the factories load weights (lrm.weights; CLIP through lrm.rewards.clip).

They resize (and viclip-score samples its frames) from the pixels they are given, so they set
`reads_whole_media`: `lrm score` hands them each file's own frames at its own size, as VBench reads
them, rather than a centre crop at spec.size or spec.frames frames picked by lrm's uniform_indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrm import weights
from lrm.frames import uniform_indices
from lrm.rewards import musiq, viclip
from lrm.rewards.base import FrameReward, InputError, Reward
from lrm.rewards.clip import OPEN_CLIP_WEIGHTS, follow_device, load_open_clip
from lrm.rewards.preprocess import center_crop, normalize
from lrm.rewards.registry import spec_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # dino_transform's Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # clip_transform's Normalize (OpenAI CLIP)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- preprocessing (vbench.utils)


def resize_short_side(frames: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, 3, H, W) -> short side `size`, long side int(size * long / short): torchvision Resize(size)."""
    h, w = frames.shape[-2:]
    long_side = int(size * max(h, w) / min(h, w))
    out = (size, long_side) if h <= w else (long_side, size)
    if out == (h, w):
        return frames
    return F.interpolate(frames, size=out, mode=mode, align_corners=False, antialias=False)


def dino_pixels(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """vbench dino_transform: (N, 3, H, W) in [0, 1] -> (N, 3, size, size * W / H) normalised."""
    return normalize(resize_short_side(frames, size, "bilinear"), IMAGENET_MEAN, IMAGENET_STD)


def clip_pixels(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """vbench clip_transform: (N, 3, H, W) in [0, 1] -> (N, 3, size, size) normalised.

    The clamp stands for the uint8 saturation of VBench's bicubic resize (bicubic overshoots)."""
    resized = resize_short_side(frames, size, "bicubic").clamp(0, 1)
    return normalize(center_crop(resized, size), CLIP_MEAN, CLIP_STD)


def limit_longer_side(frames: torch.Tensor, size: int = 512) -> torch.Tensor:
    """vbench imaging_quality 'longer' mode: shrink (bilinear) so the longer side is at most `size`."""
    h, w = frames.shape[-2:]
    if max(h, w) <= size:
        return frames
    scale = size / max(h, w)
    out = (int(scale * h), int(scale * w))
    return F.interpolate(frames, size=out, mode="bilinear", align_corners=False, antialias=False)


def vbench_middle_indices(num_frames: int, k: int) -> np.ndarray:
    """vbench.utils.get_frame_indices(k, num_frames, sample="middle"): centre of k equal intervals,
    padded with the last index when the clip is shorter than k."""
    edges = np.linspace(0, num_frames, min(k, num_frames) + 1).astype(int)
    idx = [(a + b - 1) // 2 for a, b in zip(edges[:-1], edges[1:])]
    return np.asarray(idx + [idx[-1]] * (k - len(idx)), dtype=np.int64)


# ---------------------------------------------------------------- shared pieces


def frame_consistency(features: torch.Tensor) -> torch.Tensor:
    """VBench's consistency of per-frame features (B, T, D), T >= 2 -> (B,) in [0, 1].

    Mean over frames i >= 1 of (max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2."""
    f = F.normalize(features.float(), dim=-1)
    to_previous = (f[:, 1:] * f[:, :-1]).sum(-1).clamp(min=0)  # (B, T-1)
    to_first = (f[:, 1:] * f[:, :1]).sum(-1).clamp(min=0)  # (B, T-1)
    return ((to_previous + to_first) / 2).mean(dim=1)


def pick_frames(pixels: torch.Tensor, frames: int | None, who: str) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, k, 3, H, W) uniformly spaced frames, k >= 2 for consistency scores."""
    idx = torch.as_tensor(uniform_indices(pixels.shape[1], frames), device=pixels.device)
    if len(idx) < 2:
        raise InputError(
            f"{who}: consistency compares frames, so it needs a clip of at least 2 frames "
            f"(got {pixels.shape[1]} frame(s), frames={frames})"
        )
    return pixels.index_select(1, idx)


def dino_cls_features(vit: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """DINO's VisionTransformer.forward on a timm ViT: class token after the final norm.

    pixels (N, 3, H, W) normalised, any H, W (VBench keeps the aspect ratio) -> (N, D).
    Positional embeddings are resized exactly as DINO's interpolate_pos_encoding does it."""
    x = vit.patch_embed.proj(pixels)  # (N, D, h, w): the conv drops remainder pixels, like DINO
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)  # (N, h*w, D)
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1 + h*w, D)
    x = vit.pos_drop(x + dino_pos_embed(vit.pos_embed, h, w, pixels.shape[-2] == pixels.shape[-1]))
    x = vit.norm(vit.blocks(x))
    return x[:, 0]


def dino_pos_embed(pos_embed: torch.Tensor, h: int, w: int, square: bool) -> torch.Tensor:
    """(1, 1 + N, D) trained on a sqrt(N) grid -> (1, 1 + h*w, D), bicubic with DINO's +0.1 offset."""
    n = pos_embed.shape[1] - 1
    if n == h * w and square:
        return pos_embed
    grid = int(n ** 0.5)
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    patch_pos = F.interpolate(patch_pos, scale_factor=((h + 0.1) / grid, (w + 0.1) / grid), mode="bicubic")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, h*w, D)
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


# ---------------------------------------------------------------- rewards


class SubjectConsistency(Reward):
    spec = spec_of("subject-consistency")
    reads_whole_media = True  # VBench resizes the file's own frames (see Reward.reads_whole_media)
    batch_size = 4  # clips per chunk: every frame goes through a ViT-B

    def __init__(self, model: nn.Module, frames: int | None = None):
        self.model = model  # timm VisionTransformer with DINO's layout (cls_token, pos_embed, blocks, norm)
        self.frames = frames  # uniformly spaced frames scored per clip (None: all, as VBench)

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        clips = pick_frames(pixels, self.frames, self.spec.name)  # (b, k, 3, H, W)
        b, k = clips.shape[:2]
        x = dino_pixels(clips.flatten(0, 1)).to(follow_device(self.model, pixels))  # (b*k, 3, 224, W')
        return frame_consistency(dino_cls_features(self.model, x).reshape(b, k, -1))


class BackgroundConsistency(Reward):
    spec = spec_of("background-consistency")
    reads_whole_media = True  # VBench resizes the file's own frames (see Reward.reads_whole_media)
    batch_size = 4  # clips per chunk

    def __init__(self, model: nn.Module, frames: int | None = None):
        self.model = model  # anything with encode_image((N, 3, 224, 224) CLIP-normalised) -> (N, D)
        self.frames = frames  # uniformly spaced frames scored per clip (None: all, as VBench)

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        clips = pick_frames(pixels, self.frames, self.spec.name)  # (b, k, 3, H, W)
        b, k = clips.shape[:2]
        x = clip_pixels(clips.flatten(0, 1)).to(follow_device(self.model, pixels))  # (b*k, 3, 224, 224)
        return frame_consistency(self.model.encode_image(x).reshape(b, k, -1))


class VBenchAestheticQuality(FrameReward):
    spec = spec_of("vbench-aesthetic-quality")
    reads_whole_media = True  # VBench resizes the file's own frames (see Reward.reads_whole_media)
    batch_size = 4  # clips per chunk

    def __init__(self, clip_model: nn.Module, head: nn.Module, frames: int | None = None):
        super().__init__(frames)  # frames: uniformly spaced frames per clip (None: all, as VBench)
        self.clip_model = clip_model  # encode_image((N, 3, 224, 224) CLIP-normalised) -> (N, 768)
        self.head = head  # nn.Linear(768, 1) on the L2-normalised embedding

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        x = clip_pixels(frames).to(follow_device(self.clip_model, frames))  # (N, 3, 224, 224)
        embedding = F.normalize(self.clip_model.encode_image(x).float(), dim=-1)  # (N, 768)
        return self.head(embedding.to(follow_device(self.head, frames))).squeeze(-1).float() / 10


class ImagingQuality(FrameReward):
    spec = spec_of("imaging-quality")
    reads_whole_media = True  # VBench resizes the file's own frames (see Reward.reads_whole_media)
    batch_size = 4  # clips per chunk

    def __init__(self, model: nn.Module, frames: int | None = None, longer_side: int = 512):
        super().__init__(frames)  # frames: uniformly spaced frames per clip (None: all, as VBench)
        self.model = model  # lrm.rewards.musiq.MUSIQ: (N, 3, H, W) in [0, 1] -> (N, 1) mean opinion score
        self.longer_side = longer_side  # VBench's 'longer' preprocessing bound

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        x = limit_longer_side(frames, self.longer_side).to(follow_device(self.model, frames))
        return self.model(x).reshape(-1).float() / 100


class ViCLIPScore(Reward):
    spec = spec_of("viclip-score")
    reads_whole_media = True  # VBench picks its 8 frames of the whole file and resizes them (Reward.reads_whole_media)
    batch_size = 4  # clips per chunk: ViT-L over 8 x 256 joint tokens

    def __init__(self, model: viclip.ViCLIP):
        self.model = model

    def source_frames(self, num_frames: int) -> np.ndarray:
        """The frames of a file of `num_frames` it scores (VBench's 8 "middle" ones): `lrm score` decodes only
        these, and on exactly these `score` picks every one."""
        return vbench_middle_indices(num_frames, self.model.cfg.frames)

    def score(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        frames = self.model.cfg.frames
        idx = torch.as_tensor(vbench_middle_indices(pixels.shape[1], frames), device=pixels.device)
        clips = pixels.index_select(1, idx)  # (b, 8, 3, H, W)
        b = clips.shape[0]
        model = self.model
        x = clip_pixels(clips.flatten(0, 1), model.cfg.image_size).to(follow_device(model, pixels))
        video = F.normalize(model.encode_video(x.reshape(b, frames, *x.shape[1:])).float(), dim=-1)  # (b, D)
        tokens = viclip.tokenize(prompts, model.cfg.context_length).to(pixels.device)
        with torch.no_grad():  # the text tower is frozen in VBench; only the video side needs gradients
            text = F.normalize(model.encode_text(tokens).float(), dim=-1)  # (b, D)
        return (video * text).sum(-1)


# ---------------------------------------------------------------- factories (weights loading)


def frozen(model: nn.Module) -> nn.Module:
    """Evaluation mode, no parameter gradients; gradients still flow to the inputs."""
    return model.eval().requires_grad_(False)


def subject_consistency(frames: int | None = None) -> SubjectConsistency:
    import timm

    state = weights.load_registered("dino_vitbase16_pretrain")
    model = timm.create_model("vit_base_patch16_224.dino", pretrained=False, num_classes=0)
    model.load_state_dict(state, strict=True)  # DINO's backbone keys are timm's ViT keys
    return SubjectConsistency(frozen(model), frames)


def background_consistency(frames: int | None = None, pretrained: str = "openai") -> BackgroundConsistency:
    # the -quickgelu config: OpenAI's weights were trained with QuickGELU (VBench loads them with `clip`)
    return BackgroundConsistency(load_open_clip("ViT-B-32-quickgelu", pretrained), frames)


def vbench_aesthetic_quality(frames: int | None = None, pretrained: str = "openai",
                             quick_gelu: bool | None = None) -> VBenchAestheticQuality:
    registered = ("ViT-L-14", pretrained) in OPEN_CLIP_WEIGHTS
    if quick_gelu is None and not registered and Path(pretrained).is_file():
        # VBench's backbone is OpenAI's ViT-L/14 (clip.load), trained with QuickGELU, which a converted state
        # dict cannot tell from a GELU model's (an OpenAI TorchScript archive would be detected anyway)
        quick_gelu = True
    backbone = [OPEN_CLIP_WEIGHTS[("ViT-L-14", pretrained)]] if registered else []
    weights.require("laion_aesthetic_linear_l14", *backbone)  # before the 400M-param backbone: fail fast, naming all
    head = nn.Linear(768, 1)
    head.load_state_dict(weights.load_registered("laion_aesthetic_linear_l14"))
    return VBenchAestheticQuality(load_open_clip("ViT-L-14", pretrained, quick_gelu), frozen(head), frames)


def imaging_quality(frames: int | None = None) -> ImagingQuality:
    # lrm's MUSIQ port: pyiqa's parameter names, num_class=1 SPAQ regression head, as in VBench
    return ImagingQuality(frozen(musiq.load_musiq(weights.resolve("musiq_spaq"))), frames)


def viclip_score() -> ViCLIPScore:
    return ViCLIPScore(frozen(viclip.load_viclip(weights.resolve("viclip_internvid_10m_flt"))))
