"""ViCLIP, the video-text CLIP that VBench uses for overall consistency (and scene, style, ...).

A port of vbench/third_party/ViCLIP (InternVid, Wang et al. 2023): a ViT-L/14 whose patch tokens
get a learned temporal embedding and are attended jointly over all frames, and a 12-layer CLIP text
transformer with a 32-token context. Same module and parameter names as VBench's classes, so the
published checkpoint (ViClip-InternVid-10M-FLT.pth, key "model") loads with strict=True. The port
exists because vbench's own classes do not import here (they need einops and pkg_resources, and
their tokenizer downloads its vocabulary with wget at import); the tokenizer is open_clip's copy of
the same OpenAI CLIP BPE.

    model = build_viclip(VICLIP_PRESETS["ViCLIP-L/14"])
    video = model.encode_video(frames)        # (B, T, 3, 224, 224) CLIP-normalised -> (B, 768)
    text = model.encode_text(tokenize(["a dog running"]))   # -> (B, 768)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from lrm import weights


@dataclass(frozen=True)
class ViCLIPConfig:
    image_size: int = 224  # input side the spatial positional embedding was trained for
    patch_size: int = 14  # ViT patch side in pixels
    frames: int = 8  # clip length of the temporal positional embedding; inputs must match (or be 1)
    vision_width: int = 1024  # vision transformer channels
    vision_layers: int = 24  # vision transformer depth
    vision_heads: int = 16  # vision attention heads
    text_width: int = 768  # text transformer channels
    text_layers: int = 12  # text transformer depth
    text_heads: int = 12  # text attention heads
    embed_dim: int = 768  # joint embedding size both towers project to
    context_length: int = 32  # text tokens (ViCLIP's max_txt_l)
    vocab_size: int = 49408  # OpenAI CLIP BPE vocabulary


VICLIP_PRESETS: dict[str, ViCLIPConfig] = {
    "ViCLIP-L/14": ViCLIPConfig(),  # vbench ViCLIP(): clip_joint_l14 + clip_text_l14(context_length=32)
}


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm CLIP block; parameter names ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj as in ViCLIP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)  # (B, L, D)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VideoEncoder(nn.Module):
    """ViCLIP's vision tower (viclip_vision.VisionTransformer with kernel_size=1, no masking)."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        width, patch = cfg.vision_width, cfg.patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((cfg.image_size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.frames, width))
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W) normalised -> (B, embed_dim) from the class token."""
        x = self.conv1(video)  # (B, D, T, h, w)
        b, d, t, h, w = x.shape
        n = h * w
        x = x.permute(0, 2, 3, 4, 1).reshape(b * t, n, d)  # (B*T, n, D)
        cls = self.class_embedding.to(x.dtype).expand(b * t, 1, d)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B*T, 1+n, D)
        cls_tokens = x[:b, :1]  # (B, 1, D): every frame's class token is the same vector
        patches = x[:, 1:].reshape(b, t, n, d).permute(0, 2, 1, 3)  # (B, n, T, D)
        if t == 1:  # ViCLIP's rule for single images
            patches = patches + self.temporal_positional_embedding.mean(1)
        else:
            patches = patches + self.temporal_positional_embedding  # broadcasts over (B, n)
        x = torch.cat([cls_tokens, patches.reshape(b, n * t, d)], dim=1)  # (B, 1 + n*T, D)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, embed_dim)


class TextEncoder(nn.Module):
    """ViCLIP's text tower (viclip_text.CLIP_TEXT): causal CLIP transformer, end-of-text pooling."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        width, length = cfg.text_width, cfg.context_length
        self.transformer = Transformer(width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(width ** -0.5 * torch.randn(width, cfg.embed_dim))
        self.register_buffer("causal_mask", torch.full((length, length), float("-inf")).triu(1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) int with L = context_length -> (B, embed_dim) at the end-of-text token."""
        x = self.token_embedding(tokens) + self.positional_embedding  # (B, L, D)
        x = self.ln_final(self.transformer(x, self.causal_mask.to(x.dtype)))
        eot = tokens.argmax(dim=-1)  # end-of-text has the largest id in the vocabulary
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class ViCLIP(nn.Module):
    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VideoEncoder(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))  # contrastive temperature, kept for the checkpoint

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) CLIP-normalised, T = cfg.frames -> (B, embed_dim), not normalised."""
        if frames.shape[1] not in (1, self.cfg.frames):
            raise ValueError(f"ViCLIP takes clips of {self.cfg.frames} frames, got {frames.shape[1]}")
        return self.vision_encoder(frames.permute(0, 2, 1, 3, 4))  # (B, 3, T, H, W)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, context_length) from `tokenize` -> (B, embed_dim), not normalised."""
        return self.text_encoder(tokens)


def build_viclip(cfg: ViCLIPConfig) -> ViCLIP:
    return ViCLIP(cfg).eval()


def load_viclip(path: Path, cfg: ViCLIPConfig = VICLIP_PRESETS["ViCLIP-L/14"]) -> ViCLIP:
    """Build ViCLIP and load a checkpoint saved as {"model": state_dict} (or a bare state dict)."""
    state = weights.read_checkpoint(path, "ViCLIP weights", "re-download ViClip-InternVid-10M-FLT.pth, or save "
                                    "its 'model' state dict alone with torch.save.")
    state = state.get("model", state)
    model = build_viclip(cfg)
    model.load_state_dict(state, strict=True)
    return model


def tokenize(texts: list[str], context_length: int = 32) -> torch.Tensor:
    """OpenAI CLIP BPE tokens (B, context_length) as ViCLIP's CLIP_TEXT.tokenize makes them."""
    return _bpe_tokenizer(context_length)(texts)


@lru_cache(maxsize=None)
def _bpe_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer  # ships the OpenAI CLIP vocabulary

    return SimpleTokenizer(context_length=context_length)
