"""Text cross-attention of the text-image latent reward model (DOLLAR supplementary, Tab. 11).

The image (or clip) feature is the query; the prompt's token embeddings (N, L, D) go through a
text MLP to the feature width and give keys and values; single-head softmax attention over the
valid tokens (text_mask), added to the image feature (residual), so the head sees both.

Tab. 11 lists the text MLP at 524,544 parameters for text tokens (L = 256) whose width D the paper
does not state; its other rows (Q, K, V: 16,512 each) fix the width at 128. Our MLP is
Linear(D, 128) -> SiLU -> Linear(128, 128): 128 D + 16,640 parameters (540,928 at D = 4096,
65,792 at D = 384 for all-MiniLM-L6-v2). Tab. 11 also mean-pools the text before attention, which
makes the softmax over one key trivially 1; attending over the tokens is what the table's prose
(Softmax(Q(e_x) K(e_c)^T) V(e_c)) describes, so that is what we do.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TextCrossAttention(nn.Module):
    def __init__(self, feature_dim: int, text_dim: int):
        super().__init__()
        self.text_dim = text_dim
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, feature_dim), nn.SiLU(), nn.Linear(feature_dim, feature_dim))
        self.query = nn.Linear(feature_dim, feature_dim)
        self.key = nn.Linear(feature_dim, feature_dim)
        self.value = nn.Linear(feature_dim, feature_dim)

    def forward(self, features: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """features (N, F), text (N, L, D), text_mask (N, L) bool (True = real token) -> (N, F)."""
        tokens = self.text_mlp(text)  # (N, L, F)
        q = self.query(features).unsqueeze(1)  # (N, 1, F)
        k, v = self.key(tokens), self.value(tokens)  # (N, L, F)
        scores = (q @ k.transpose(1, 2)).squeeze(1) / math.sqrt(q.shape[-1])  # (N, L)
        scores = scores.masked_fill(~text_mask, float("-inf"))
        attn = scores.softmax(dim=-1)  # (N, L)
        return features + (attn.unsqueeze(1) @ v).squeeze(1)  # (N, F)
