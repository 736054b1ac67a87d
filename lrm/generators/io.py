"""Save and load lrm's latent DiT: a folder with model.safetensors + config.json; never pickle.

config.json records what the weights mean: the preset and its dimensions, the prediction type and
schedule_config, the latent space (codec settings) and the text encoder whose tokens it reads, and
the lrm version. Loading for a given codec or text encoder refuses a mismatch, before building.

    model.codec_settings, model.text_encoder_id = codec.settings(), encoder.id   # set by the trainer
    save_denoiser(model, "runs/teacher/model")
    model = load_denoiser("runs/teacher/model", codec_settings=codec.settings(), text_encoder_id=encoder.id)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lrm.generators.dit import LatentDiT
from lrm.io import atomic_write_bytes, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "lrm-denoiser"
FORMAT_VERSION = 2  # 2: a video DiT adds its frame positions inside temporal attention only (1: to every token)
ARCHITECTURE = "latent-dit"  # the only architecture this format holds so far
DAMAGED = "the folder is damaged: rerun the command that wrote it (`lrm teacher train`, `lrm distill`, `lrm tune`)"


class DenoiserMismatchError(ValueError):
    """A saved denoiser was trained in another latent space or on another text encoder's tokens."""


def save_denoiser(model: LatentDiT, directory: str | Path, extra: dict | None = None) -> Path:
    """Write model.safetensors + config.json into `directory` (atomic per file); returns the directory.

    The model's codec_settings and text_encoder_id go into config.json (None: unknown, then loading
    cannot check that side); extra: free-form provenance (store, run, steps)."""
    from safetensors.torch import save

    from lrm import __version__

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lrm_version": __version__,
        "architecture": ARCHITECTURE,
        "preset": model.preset,
        "dimensions": model.dimensions(),
        "prediction": model.prediction,
        "schedule_config": dict(model.schedule_config),
        "frames": model.frames,
        "codec_settings": model.codec_settings,
        "text_encoder_id": model.text_encoder_id,
        "extra": extra or {},
    }
    atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}))
    atomic_write_json(directory / CONFIG_NAME, config)
    return directory


def read_config(directory: str | Path) -> dict:
    """config.json of a saved denoiser, after checking the folder holds one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"denoiser folder {directory} not found: pass the folder written by save_denoiser "
                                "(it holds config.json and model.safetensors)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: a saved denoiser is a folder with {CONFIG_NAME} "
                                    f"and {WEIGHTS_NAME} (written by save_denoiser)")
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{directory / CONFIG_NAME} is not valid JSON ({exc}); {DAMAGED}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG_NAME} does not hold a JSON object; {DAMAGED}")
    version = config.get("format_version")
    if config.get("format") != FORMAT or version not in (1, FORMAT_VERSION):
        raise ValueError(f"{directory / CONFIG_NAME} is not an lrm denoiser of format {FORMAT} v{FORMAT_VERSION} "
                         f"(got format={config.get('format')!r}, version={version!r})")
    if version == 1 and config.get("frames", 1) > 1:  # v1 image models compute what v2 ones do
        raise ValueError(f"{directory} is a video DiT of format v1, which added frame positions to every token; this "
                         "lrm adds them inside temporal attention, so its weights no longer fit: retrain it")
    return config


def check_compatible(config: dict, codec_settings: dict | None, text_encoder_id: str | None, where: str) -> None:
    """Raise DenoiserMismatchError when latents of `codec_settings` or tokens of `text_encoder_id` are not
    what the denoiser of `config` was trained on (None on either side: that check is skipped)."""
    saved = config.get("codec_settings")
    if codec_settings is not None and saved is not None and dict(codec_settings) != saved:
        differs = sorted(k for k in saved.keys() | codec_settings.keys() if saved.get(k) != codec_settings.get(k))
        raise DenoiserMismatchError(
            f"denoiser {where} was trained in codec {saved.get('name')!r} but these latents come from codec "
            f"{codec_settings.get('name')!r} (differs in: {', '.join(differs)}); encode with the codec it was "
            f"trained in ({saved}), or train a teacher in this codec"
        )
    channels = config["dimensions"]["in_channels"]
    if codec_settings is not None and codec_settings.get("channels", channels) != channels:
        raise DenoiserMismatchError(
            f"denoiser {where} takes {channels}-channel latents but codec {codec_settings.get('name')!r} makes "
            f"{codec_settings['channels']}; train a teacher in this codec"
        )
    saved_text = config.get("text_encoder_id")
    if text_encoder_id is not None and saved_text is not None and text_encoder_id != saved_text:
        raise DenoiserMismatchError(
            f"denoiser {where} was trained on text encoder {saved_text!r} tokens, not {text_encoder_id!r}; "
            f"encode prompts with lrm.text.load({saved_text!r}), or train a teacher with {text_encoder_id!r}"
        )


def load_denoiser(directory: str | Path, codec_settings: dict | None = None, text_encoder_id: str | None = None,
                  map_location: str | torch.device = "cpu") -> LatentDiT:
    """Load a saved DiT in eval mode; with codec_settings / text_encoder_id, refuse another latent space or
    text encoder. The model's codec_settings and text_encoder_id are the saved ones."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    if config.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{directory / CONFIG_NAME}: unknown denoiser architecture {config.get('architecture')!r}; "
                         f"this lrm loads {ARCHITECTURE!r}")
    if not isinstance(config.get("dimensions"), dict):
        raise ValueError(f"{directory / CONFIG_NAME} has no \"dimensions\" of the model; {DAMAGED}")
    check_compatible(config, codec_settings, text_encoder_id, str(directory))
    try:
        model = LatentDiT(**config["dimensions"])
    except (TypeError, ValueError) as exc:  # an unknown or missing dimension, or a value the DiT refuses
        raise ValueError(f"{directory / CONFIG_NAME}: its dimensions do not build a DiT ({exc}); {DAMAGED}") from None
    model.preset = config.get("preset")
    weights_path = directory / WEIGHTS_NAME
    try:
        weights = load_file(weights_path, device=str(map_location))
    except Exception as exc:  # safetensors' own SafetensorError: a truncated or foreign file
        raise ValueError(f"{weights_path} cannot be read as safetensors ({exc}); {DAMAGED}") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # missing / unexpected keys, or shapes of another model
        first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise ValueError(f"{weights_path} does not hold the weights {CONFIG_NAME} describes ({first}); "
                         f"{DAMAGED}") from None
    model.codec_settings, model.text_encoder_id = config.get("codec_settings"), config.get("text_encoder_id")
    return model.to(map_location).eval()
