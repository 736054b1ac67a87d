"""ImageReward v1.0 (Xu et al. 2023), ported onto timm + transformers.

Published model (THUDM/ImageReward, ImageReward.py): a BLIP ViT-L/16 encodes the image; BLIP's
"med" BERT encodes the prompt with cross-attention to every image token; an MLP (the
improved-aesthetic-predictor head) maps the [CLS] state to a reward, reported normalised as
(r - 0.16717362830052426) / 1.0333394966054072. Prompts are tokenised by bert-base-uncased
(+ [DEC], [ENC]) to 35 tokens; images go through CLIP's resize/crop/normalise at 224 px.

This port does not use the `image-reward` package (it pins timm 0.6 and breaks on recent
transformers): the ViT is timm's VisionTransformer (BLIP's key names are timm's), the text encoder
is transformers' BertModel made bidirectional with cross-attention (see build_text_encoder), and
`convert_state_dict` maps ImageReward.pt onto them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import torch
from torch import nn

from lrm import weights
from lrm.rewards.base import FrameReward
from lrm.rewards.clip import ScoreMLP, follow_device
from lrm.rewards.pickscore import Tokenize, hf_tokenize
from lrm.rewards.preprocess import ImagePreprocess
from lrm.rewards.registry import spec_of

REWARD_MEAN = 0.16717362830052426  # ImageReward.mean: raw MLP output mean on the authors' set
REWARD_STD = 1.0333394966054072  # ImageReward.std
MAX_TOKENS = 35  # ImageReward tokenises prompts to 35 tokens (padding="max_length")
TOKENIZER_REPO = "bert-base-uncased"  # BLIP's tokenizer, plus [DEC] and [ENC]
BERT_VOCAB_SIZE = 30522  # bert-base-uncased vocabulary before BLIP's two added tokens
PREPROCESS = ImagePreprocess(  # ImageReward._transform(224): CLIP statistics, bicubic
    224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), "shortest", "bicubic"
)

SPEC = spec_of("imagereward")


@dataclass(frozen=True)
class BlipArch:
    image_size: int = 224  # ViT input side
    patch_size: int = 16  # ViT patch side
    vision_width: int = 1024  # ViT-L token width; also the cross-attention key/value input width
    vision_depth: int = 24  # ViT-L blocks
    vision_heads: int = 16  # ViT-L heads
    text_width: int = 768  # BERT-base hidden size (also the MLP head's input)
    text_depth: int = 12  # BERT layers, each with self- and cross-attention
    text_heads: int = 12  # BERT heads
    text_intermediate: int = 3072  # BERT feed-forward width
    vocab_size: int = 30524  # bert-base-uncased 30522 + [DEC] + [ENC]
    max_positions: int = 512  # BERT absolute position table
    layer_norm_eps: float = 1e-12  # BERT LayerNorm epsilon

    @classmethod
    def from_med_config(cls, med: dict) -> "BlipArch":
        """Text dims from ImageReward's med_config.json; the vision side is ViT-L/16 at 224 (vit='large')."""
        return cls(
            text_width=med["hidden_size"],
            text_depth=med["num_hidden_layers"],
            text_heads=med["num_attention_heads"],
            text_intermediate=med["intermediate_size"],
            vocab_size=med["vocab_size"],
            max_positions=med["max_position_embeddings"],
            layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        )


def build_vision_encoder(arch: BlipArch) -> nn.Module:
    """BLIP's ViT as timm's VisionTransformer (same parameter names); forward_features -> (N, 1+P, D)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.vision_width,
        depth=arch.vision_depth, num_heads=arch.vision_heads, mlp_ratio=4.0, qkv_bias=True,
        num_classes=0, global_pool="",  # no head: BLIP reads every token
    )


def build_text_encoder(arch: BlipArch) -> nn.Module:
    """BLIP's med BERT on transformers' BertModel: bidirectional self-attention + cross-attention.

    transformers only builds cross-attention layers for decoders (causal), while BLIP's text
    encoder attends both ways. So: build with is_decoder=True (creates `crossattention`), then set
    config.is_decoder=False (bidirectional padding mask, no cache) and each self-attention's
    is_causal=False; layers keep is_decoder=True so they run their cross-attention. Cross-attention
    keys/values read vision tokens of width vision_width (BLIP's `encoder_width`). BLIP has no
    token-type embeddings: a single zero row stands in for them (see convert_state_dict).
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.text_width, num_hidden_layers=arch.text_depth,
        num_attention_heads=arch.text_heads, intermediate_size=arch.text_intermediate, hidden_act="gelu",
        max_position_embeddings=arch.max_positions, type_vocab_size=1, layer_norm_eps=arch.layer_norm_eps,
        pad_token_id=0, is_decoder=True, add_cross_attention=True,
    )
    text = BertModel(config, add_pooling_layer=False)
    text.config.is_decoder = False
    for layer in text.encoder.layer:
        layer.attention.self.is_causal = False  # transformers 5.x flag
        layer.attention.self.is_decoder = False  # transformers 4.x flag for the same choice
        layer.crossattention.self.key = nn.Linear(arch.vision_width, arch.text_width)
        layer.crossattention.self.value = nn.Linear(arch.vision_width, arch.text_width)
    return text


class ImageRewardModel(nn.Module):
    """images (N, 3, S, S) normalised + tokens (N, L) -> raw reward (N,) (before REWARD_MEAN/STD)."""

    def __init__(self, visual: nn.Module, text: nn.Module, head: ScoreMLP):
        super().__init__()
        self.visual = visual
        self.text = text
        self.head = head

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.visual.forward_features(images)  # (N, 1+P, Dv)
        image_atts = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=images.device)  # (N, 1+P)
        out = self.text(
            input_ids=input_ids, attention_mask=attention_mask,
            encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
        )
        return self.head(out.last_hidden_state[:, 0].float())  # [CLS] state (N, Dt) -> (N,)


def build_model(arch: BlipArch) -> ImageRewardModel:
    return ImageRewardModel(build_vision_encoder(arch), build_text_encoder(arch), ScoreMLP(arch.text_width))


def convert_state_dict(published: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt keys -> ImageRewardModel keys.

    blip.visual_encoder.*   -> visual.*  (BLIP ViT names are timm's: blocks.N.attn.qkv, ...)
    blip.text_encoder.*     -> text.*    (med BERT names are transformers':
                                          encoder.layer.N.crossattention.self.key, ...)
    mlp.layers.*            -> head.layers.*
    Dropped: the position_ids buffer (transformers rebuilds it) and the pretraining heads
    (blip.vision_proj, blip.text_proj, ...) that the reward never reads. Added: the zero
    token-type embedding row that stands in for BLIP's missing token types.
    """
    converted = {}
    for key, value in published.items():
        if key.startswith("blip.visual_encoder."):
            converted["visual." + key.removeprefix("blip.visual_encoder.")] = value
        elif key.startswith("blip.text_encoder."):
            name = key.removeprefix("blip.text_encoder.")
            if name != "embeddings.position_ids":
                converted["text." + name] = value
        elif key.startswith("mlp."):
            converted["head." + key.removeprefix("mlp.")] = value
    word = converted.get("text.embeddings.word_embeddings.weight")
    if word is None:
        raise KeyError("not an ImageReward checkpoint: no blip.text_encoder.embeddings.word_embeddings.weight")
    converted["text.embeddings.token_type_embeddings.weight"] = torch.zeros(1, word.shape[1], dtype=word.dtype)
    return converted


class ImageRewardReward(FrameReward):
    """(raw - REWARD_MEAN) / REWARD_STD of an ImageRewardModel, per frame."""

    def __init__(self, model: ImageRewardModel, tokenize: Tokenize, preprocess: ImagePreprocess = PREPROCESS,
                 frames: int | None = None):
        super().__init__(frames)
        self.model = model
        self.tokenize = tokenize  # prompts -> (input_ids, attention_mask), 35 tokens for the published model
        self.preprocess = preprocess
        self.spec = replace(SPEC, size=preprocess.size)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        dtype = follow_device(self.model, frames)
        row_of = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        ids, mask = self.tokenize(list(row_of))  # (U, L)
        rows = torch.tensor([row_of[p] for p in prompts])
        raw = self.model(
            self.preprocess(frames).to(dtype), ids[rows].to(frames.device), mask[rows].to(frames.device)
        )  # (N,): text attends to each frame, so tokens repeat per frame
        return (raw - REWARD_MEAN) / REWARD_STD


def load_tokenizer(repo: str = TOKENIZER_REPO) -> Tokenize:
    """bert-base-uncased + BLIP's [DEC] / [ENC] tokens, as ImageReward's init_tokenizer."""
    from transformers import BertTokenizer

    try:
        tokenizer = BertTokenizer.from_pretrained(repo, local_files_only=weights.hub_offline())
    except OSError as exc:
        raise weights.MissingWeightsError(
            f"tokenizer files of {repo} (vocab.txt, tokenizer_config.json) not found. Fix: on a machine with network "
            f"run `hf download {repo} vocab.txt tokenizer_config.json tokenizer.json` and copy its "
            "Hugging Face cache here (set $HF_HOME to it)."
        ) from exc
    if len(tokenizer) < BERT_VOCAB_SIZE:
        raise weights.MissingWeightsError(
            f"tokenizer of {repo} loaded only {len(tokenizer)} tokens (expected {BERT_VOCAB_SIZE}); its vocab.txt "
            f"is missing from the Hugging Face cache: `hf download {repo} vocab.txt`"
        )
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return hf_tokenize(tokenizer, MAX_TOKENS)


def load_imagereward(frames: int | None = None) -> ImageRewardReward:
    checkpoint, med_config = weights.require("imagereward", "imagereward_med_config")
    med = json.loads(med_config.read_text())
    tokenize = load_tokenizer()
    model = build_model(BlipArch.from_med_config(med))
    published = weights.read_checkpoint(checkpoint, "ImageReward weights",
                                        "re-download ImageReward.pt from THUDM/ImageReward")
    model.load_state_dict(convert_state_dict(published), strict=True)
    return ImageRewardReward(model.eval().requires_grad_(False), tokenize, PREPROCESS, frames)
