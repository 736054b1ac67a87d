"""The text-encoder interface: prompts -> token embeddings (B, L, D) + mask (B, L).

Token embeddings (not one pooled vector) feed the cross-attention text-image surrogates (DOLLAR
supplementary, Tab. 11). Each prompt's tokens are computed once and kept in an LRU cache keyed by
the prompt string, so labelling and training loops that repeat prompts pay for each prompt once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch


class TextEmbeddings(NamedTuple):
    emb: torch.Tensor  # (B, L, D) float32; zeros at padded positions
    mask: torch.Tensor  # (B, L) bool; True at real tokens


class TextEncoder:
    """Base class. Subclasses set `id`, `dim`, `max_length` and implement `embed_tokens`."""

    id: str  # stable name recorded with stored embeddings, e.g. "minilm-l6-v2"
    dim: int  # D, the width of a token embedding
    max_length: int  # longest token sequence; longer prompts are truncated

    def __init__(self, cache_size: int = 4096, batch_size: int = 64):
        if cache_size < 0 or batch_size < 1:
            raise ValueError(f"cache_size must be >= 0 and batch_size >= 1, got {cache_size}, {batch_size}")
        self.cache_size = cache_size  # prompts kept in the LRU cache (0 disables caching)
        self.batch_size = batch_size  # prompts per forward pass of the model
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> (L_i, D)

    def embed_tokens(self, prompts: list[str]) -> list[torch.Tensor]:
        """One (L_i, D) tensor of real (unpadded) token embeddings per prompt."""
        raise NotImplementedError

    def encode(self, prompts: Sequence[str]) -> TextEmbeddings:
        """prompts (B,) -> embeddings (B, L, D) float32 and mask (B, L) bool, L = longest prompt."""
        prompts = _check_prompts(prompts, self.id)
        rows = self.token_rows(prompts)
        return pad_rows([rows[p] for p in prompts])

    def token_rows(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each distinct prompt -> its real (unpadded) token embeddings (L_i, D) float32: from the cache, or
        embedded `batch_size` prompts per forward pass. `pad_rows` of them gives what `encode` returns, so a
        caller that pads several batches from one call embeds their prompts together (fewer, larger passes)."""
        prompts = _check_prompts(prompts, self.id)
        fresh: dict[str, torch.Tensor] = {}
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]  # unique, first-seen order
        with torch.no_grad():
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                fresh.update(zip(chunk, (row.detach().float() for row in self.embed_tokens(chunk))))
        rows = {}
        for p in prompts:  # every occurrence refreshes its cache entry, as a lookup of the padded batch would
            rows[p] = fresh[p] if p in fresh else self._cached(p)
        for prompt, row in fresh.items():
            self._remember(prompt, row)
        return rows

    def clear_cache(self) -> None:
        self._cache.clear()

    def _cached(self, prompt: str) -> torch.Tensor:
        self._cache.move_to_end(prompt)
        return self._cache[prompt]

    def _remember(self, prompt: str, row: torch.Tensor) -> None:
        if self.cache_size == 0:
            return
        self._cache[prompt] = row
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)  # least recently used

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, max_length={self.max_length})"


def _check_prompts(prompts: Sequence[str], who: str) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError(f"{who}: encode() takes a list of prompts, not a single string; use encode([prompt])")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{who}: encode() got an empty list of prompts")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{who}: prompt {bad[0]} is {type(prompts[bad[0]]).__name__}, expected str")
    return prompts


def pad_rows(rows: Sequence[torch.Tensor]) -> TextEmbeddings:
    """Stack (L_i, D) rows into (B, L, D) with zeros after each row's end, and the (B, L) mask."""
    length = max(row.shape[0] for row in rows)
    first = rows[0]
    emb = first.new_zeros(len(rows), length, first.shape[1])  # (B, L, D)
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=first.device)  # (B, L)
    for i, row in enumerate(rows):
        emb[i, : row.shape[0]] = row.to(first.device)
        mask[i, : row.shape[0]] = True
    return TextEmbeddings(emb, mask)


def length_passes(lengths: Sequence[int], pass_cost: float) -> list[range]:
    """Split prompts sorted by token length (ascending) into consecutive forward passes, minimising the tokens
    computed: each pass costs (its prompts x its longest length), padding included, plus `pass_cost` tokens' worth
    of fixed cost (streaming the weights once). Exact dynamic programme, O(n^2) for n prompts."""
    if any(later < earlier for earlier, later in zip(lengths, lengths[1:])):
        raise ValueError("length_passes needs the lengths sorted ascending")
    n = len(lengths)
    best, start = [0.0] + [math.inf] * n, [0] * (n + 1)  # cheapest split of the first j prompts; its last pass's start
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + pass_cost + lengths[j - 1] * (j - i)
            if cost < best[j]:
                best[j], start[j] = cost, i
    passes, j = [], n
    while j:
        passes.append(range(start[j], j))
        j = start[j]
    return passes[::-1]
