"""PickScore (Kirstain et al. 2023, Pick-a-Pic): a CLIP-H/14 fine-tuned on human preferences.

Published scoring: score = logit_scale.exp() * cos(image, text), about 18..24 for typical
images (logit_scale.exp() is ~100). The model is "yuvalkirstain/PickScore_v1" (transformers
CLIPModel); tokenizer and image preprocessing are those of "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
redone in torch so gradients reach the pixels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from lrm import weights
from lrm.rewards.base import FrameReward
from lrm.rewards.clip import CLIP_VOCAB_SIZE, encode_unique, follow_device
from lrm.rewards.preprocess import ImagePreprocess
from lrm.rewards.registry import spec_of
from lrm.weights import MissingWeightsError

MODEL_REPO = "yuvalkirstain/PickScore_v1"  # fine-tuned CLIPModel weights
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # tokenizer + image processor it was trained with
MAX_TOKENS = 77  # CLIP text context

SPEC = spec_of("pickscore")

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]  # prompts -> (input_ids, attention_mask)


def hf_tokenize(tokenizer, max_length: int = MAX_TOKENS) -> Tokenize:
    """Wrap a Hugging Face tokenizer as prompts -> (input_ids (N, L), attention_mask (N, L))."""

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    return tokenize


def _features(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4.x) or an output with pooler_output (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScoreReward(FrameReward):
    """logit_scale.exp() * cos(image, text) with a transformers CLIPModel."""

    def __init__(self, model: nn.Module, tokenize: Tokenize, preprocess: ImagePreprocess, frames: int | None = None):
        super().__init__(frames)
        self.model = model  # transformers CLIPModel
        self.tokenize = tokenize
        self.preprocess = preprocess
        self.spec = replace(SPEC, size=preprocess.size)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        dtype = follow_device(self.model, frames)
        pixel_values = self.preprocess(frames).to(dtype)  # (N, 3, S, S)
        image = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
        image = image / image.norm(dim=-1, keepdim=True)  # (N, D)
        with torch.no_grad():
            text = encode_unique(prompts, lambda ps: self._text_features(ps, frames.device))  # (N, D)
        return self.model.logit_scale.exp().float() * (image * text).sum(-1)  # (N,)

    def _text_features(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        text = _features(self.model.get_text_features(input_ids=ids.to(device), attention_mask=mask.to(device)))
        text = text.float()
        return text / text.norm(dim=-1, keepdim=True)  # (U, D)


def _fix(repo: str, files: str) -> str:
    return (
        f"Fix: on a machine with network run `hf download {repo} {files}` (or "
        f"huggingface_hub.snapshot_download({repo!r})) and copy its Hugging Face cache here (set $HF_HOME to it)."
    )


def load_tokenizer(repo: str = PROCESSOR_REPO) -> Tokenize:
    """The CLIP tokenizer of `repo`, checked to carry the full BPE vocabulary."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(repo, local_files_only=weights.hub_offline())
    except OSError as exc:
        raise MissingWeightsError(
            f"tokenizer files of {repo} (tokenizer.json or vocab.json + merges.txt) not found. "
            f"{_fix(repo, 'tokenizer.json vocab.json merges.txt tokenizer_config.json special_tokens_map.json')}"
        ) from exc
    if len(tokenizer) < CLIP_VOCAB_SIZE:  # offline loads can silently fall back to a 2-token vocabulary
        raise MissingWeightsError(
            f"tokenizer of {repo} loaded only {len(tokenizer)} tokens (expected {CLIP_VOCAB_SIZE}): its vocab.json / "
            f"merges.txt are missing from the cache. {_fix(repo, 'vocab.json merges.txt tokenizer.json')}"
        )
    return hf_tokenize(tokenizer)


def load_preprocess(repo: str = PROCESSOR_REPO) -> ImagePreprocess:
    """Torch equivalent of the repo's CLIPImageProcessor (resize short side, centre crop, normalise)."""
    from transformers import CLIPImageProcessor

    try:
        proc = CLIPImageProcessor.from_pretrained(repo, local_files_only=weights.hub_offline())
    except OSError as exc:
        raise MissingWeightsError(
            f"preprocessor_config.json of {repo} not found. {_fix(repo, 'preprocessor_config.json')}"
        ) from exc
    size = _field(proc.size, "shortest_edge") or _field(proc.size, "height")
    crop = _field(proc.crop_size, "height") or size
    if size != crop:
        raise ValueError(f"{repo}: resize {size} != crop {crop}; lrm's torch preprocessing expects equal sizes")
    interpolation = {2: "bilinear", 3: "bicubic"}.get(int(proc.resample), "bicubic")  # PIL resample codes
    return ImagePreprocess(int(size), tuple(proc.image_mean), tuple(proc.image_std), "shortest", interpolation)


def _field(sizes, key: str):
    """A size entry from a dict (transformers 4.x) or a SizeDict (5.x)."""
    return sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)


def load_pickscore(frames: int | None = None) -> PickScoreReward:
    from transformers import CLIPModel

    tokenize = load_tokenizer()
    preprocess = load_preprocess()
    try:
        model = CLIPModel.from_pretrained(MODEL_REPO, local_files_only=weights.hub_offline())
    except OSError as exc:
        raise MissingWeightsError(
            f"PickScore weights {MODEL_REPO} (config.json + model.safetensors / pytorch_model.bin) not found. "
            f"{_fix(MODEL_REPO, 'config.json model.safetensors')}"
        ) from exc
    return PickScoreReward(model.eval().requires_grad_(False), tokenize, preprocess, frames)
