"""Latent spaces: pixels (B, T, 3, H, W) in [0, 1] <-> latents (B, T', c, h, w), already scaled.

    codec = lrm.codecs.load("dct")                      # built-in, weight-free (the default)
    codec = lrm.codecs.load("taef2")                    # FLUX.2 tiny autoencoder (weights via lrm.weights)
    codec = lrm.codecs.load("pae")                      # lrm's own autoencoder (trained here on first use)
    codec = lrm.codecs.load("diffusers:stabilityai/sd-vae-ft-mse")  # any diffusers autoencoder
    codec = lrm.codecs.from_settings(store_settings)    # rebuild a recorded latent space, or refuse

`CODECS` maps each fixed name to its factory; `diffusers:<path-or-id>` names are parsed by `load`.
"""

from __future__ import annotations

from collections.abc import Callable

from lrm.codecs.base import Codec
from lrm.codecs.diffusers_vae import PREFIX as DIFFUSERS_PREFIX
from lrm.names import unknown_name


def _dct(**options) -> Codec:
    from lrm.codecs.dct import DCTCodec

    return DCTCodec(**options)


def _taef2(**options) -> Codec:
    from lrm.codecs.taesd import TAESDCodec

    return TAESDCodec("taef2", **options)


def _pae(**options) -> Codec:
    from lrm.codecs.pae import PAECodec

    return PAECodec(**options)


def _diffusers(source: str, **options) -> Codec:
    from lrm.codecs.diffusers_vae import DiffusersCodec

    return DiffusersCodec(source, **options)


CODECS: dict[str, Callable[..., Codec]] = {
    "dct": _dct,  # block DCT on YCbCr, 32 x H/8 x W/8, no weights
    "taef2": _taef2,  # TAESD-family tiny autoencoder for the FLUX.2 latent space, 32 x H/8 x W/8
    "pae": _pae,  # lrm's own autoencoder, trained on procedural images on first use, 16 x H/8 x W/8
}


def load(name: str, **options) -> Codec:
    """The codec called `name` ("dct", "taef2", "pae", "diffusers:<path-or-id>"); options go to its constructor."""
    if name.startswith(DIFFUSERS_PREFIX):
        return _diffusers(name[len(DIFFUSERS_PREFIX):], **options)
    if name not in CODECS:
        raise KeyError(unknown_name("codec", name, CODECS, hint=f"Or {DIFFUSERS_PREFIX}<local folder or hub id>."))
    return CODECS[name](**options)


def from_settings(settings: dict, **options) -> Codec:
    """Rebuild the codec that wrote `settings` (Codec.settings()); refuse when the latent space differs. A codec
    whose settings name its weights ("weights": lrm.codecs.pae) is rebuilt from those weights."""
    if "weights" in settings:
        options = {"weights": settings["weights"], **options}
    codec = load(settings["name"], **options)
    rebuilt = codec.settings()
    if rebuilt != settings:
        changed = sorted(k for k in settings.keys() | rebuilt.keys() if settings.get(k) != rebuilt.get(k))
        raise ValueError(
            f"codec {settings['name']!r} no longer matches the recorded latent space (differs in: "
            f"{', '.join(changed)}); re-encode the data with codec {codec.codec_id} or use the lrm version that wrote it"
        )
    return codec


def spatial_factor(name: str) -> int:
    """H / h of the codec called `name`, without training lrm's own autoencoder to learn it."""
    if name == "pae":
        from lrm.codecs.pae import PAECodec

        return PAECodec.spatial_factor
    return load(name).spatial_factor


__all__ = ["CODECS", "Codec", "from_settings", "load", "spatial_factor"]
