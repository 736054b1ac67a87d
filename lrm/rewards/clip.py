"""Rewards on open_clip models: CLIP score, LAION aesthetic score, HPSv2 / HPSv2.1.

Each reward class scores with an already-built model (tests inject tiny random models); the
registered factory does the loading. Weights come from lrm.weights (folders in $LRM_WEIGHTS,
~/.cache/lrm, the Hugging Face cache, a download where a network exists) or from open_clip's own
pretrained tags; when absent the error names the file and where to put it.

- clip-score: 100 * cos(image, text), clipped at 0, as torchmetrics CLIPScore (Hessel et al. 2021
  without the w = 2.5 rescaling), on open_clip ViT-L-14 'openai'.
- laion-aesthetic: christophschuhmann/improved-aesthetic-predictor, an MLP on the L2-normalised
  ViT-L-14 'openai' image embedding; published scale is roughly 1..10.
- hpsv2 / hpsv2.1: Human Preference Score v2 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on
  HPD v2; score = cos(image, text) in the published units (typically 0.2 .. 0.35, not x100).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from lrm import weights
from lrm.rewards.base import FrameReward
from lrm.rewards.preprocess import ImagePreprocess
from lrm.rewards.registry import spec_of

CLIP_VOCAB_SIZE = 49408  # BPE vocabulary of every OpenAI / open_clip text tower

# open_clip (architecture, pretrained tag) -> lrm.weights name, so these files are found like any other
OPEN_CLIP_WEIGHTS = {("ViT-L-14", "openai"): "clip_vit_l14_openai", ("ViT-B-32-quickgelu", "openai"): "clip_vit_b32_openai"}
HPS_WEIGHTS = {"hpsv2": "hpsv2", "hpsv2.1": "hpsv2_1"}  # reward name -> lrm.weights name
HPS_ARCH = "ViT-H-14"  # open_clip architecture the HPS checkpoints fine-tune

# one spec per reward (lrm.rewards.registry); the built reward copies it with its model's input size
SPECS = {name: spec_of(name) for name in ("clip-score", "laion-aesthetic", "hpsv2", "hpsv2.1")}


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def follow_device(model: nn.Module, like: torch.Tensor) -> torch.dtype:
    """Move `model` to the device of `like` (devices follow inputs); return the model's dtype."""
    param = next(model.parameters())
    if param.device != like.device:
        model.to(like.device)
    return param.dtype


def encode_unique(prompts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """encode(list[str]) -> (U, D) run once per distinct prompt; returns (N, D) in prompt order.

    Video rewards repeat each prompt once per frame, so this saves T - 1 text passes per clip.
    """
    unique = list(dict.fromkeys(prompts))
    feats = encode(unique)  # (U, D)
    index = {p: i for i, p in enumerate(unique)}
    return feats[torch.tensor([index[p] for p in prompts], device=feats.device)]  # (N, D)


def open_clip_preprocess(model: nn.Module, resize_mode: str | None = None) -> ImagePreprocess:
    """The image preprocessing an open_clip model was trained with, read from its preprocess config."""
    cfg = getattr(model.visual, "preprocess_cfg", None)
    if cfg is None:
        raise ValueError(
            "open_clip model has no visual.preprocess_cfg; build it with open_clip.create_model or set it with "
            "open_clip.model.set_model_preprocess_cfg(model, {...})"
        )
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return ImagePreprocess(
        size=int(size),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize_mode=resize_mode or cfg.get("resize_mode", "shortest"),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


class ScoreMLP(nn.Module):
    """Regression head of improved-aesthetic-predictor (also ImageReward's head); state keys `layers.N.*`."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)  # (N, D) -> (N,)


# ---------------------------------------------------------------------------------------------
# rewards (take built models)
# ---------------------------------------------------------------------------------------------


class ClipScoreReward(FrameReward):
    """100 * cos(image, text) clipped at 0 (torchmetrics CLIPScore) with any open_clip model."""

    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess: ImagePreprocess, frames: int | None = None):
        super().__init__(frames)
        self.model = model  # open_clip CLIP: encode_image, encode_text
        self.tokenizer = tokenizer  # list[str] -> (N, L) token ids
        self.preprocess = preprocess
        self.spec = replace(SPECS["clip-score"], size=preprocess.size)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        image, text = open_clip_features(self.model, self.tokenizer, self.preprocess, frames, prompts)
        return (100 * (image * text).sum(-1)).clamp(min=0)  # (N,)


class HPSReward(FrameReward):
    """HPSv2 / HPSv2.1: cos(image, text) of the HPS-tuned ViT-H-14, in the published units."""

    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess: ImagePreprocess,
                 frames: int | None = None, name: str = "hpsv2"):
        super().__init__(frames)
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess  # HPSv2 evaluates with resize-longest + black padding
        self.spec = replace(SPECS[name], size=preprocess.size)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        image, text = open_clip_features(self.model, self.tokenizer, self.preprocess, frames, prompts)
        return (image * text).sum(-1)  # (N,): diagonal of image_features @ text_features.T


class LaionAestheticReward(FrameReward):
    """improved-aesthetic-predictor: ScoreMLP on the L2-normalised CLIP image embedding."""

    def __init__(self, clip_model: nn.Module, head: ScoreMLP, preprocess: ImagePreprocess, frames: int | None = None):
        super().__init__(frames)
        self.clip_model = clip_model
        self.head = head
        self.preprocess = preprocess
        self.spec = replace(SPECS["laion-aesthetic"], size=preprocess.size)

    def score_frames(self, frames: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        dtype = follow_device(self.clip_model, frames)
        follow_device(self.head, frames)
        embed = self.clip_model.encode_image(self.preprocess(frames).to(dtype), normalize=True)  # (N, D)
        return self.head(embed.float())  # (N,)


def open_clip_features(model, tokenizer, preprocess, frames, prompts):
    """L2-normalised image features (N, D) with gradients and text features (N, D) without."""
    dtype = follow_device(model, frames)
    image = model.encode_image(preprocess(frames).to(dtype), normalize=True).float()  # (N, D)
    with torch.no_grad():
        text = encode_unique(
            prompts, lambda ps: model.encode_text(tokenizer(ps).to(frames.device), normalize=True).float()
        )  # (N, D)
    return image, text


# ---------------------------------------------------------------------------------------------
# loading (factories)
# ---------------------------------------------------------------------------------------------


def load_open_clip(model_name: str, pretrained: str | None, quick_gelu: bool | None = None) -> nn.Module:
    """An eval-mode, frozen open_clip model.

    `pretrained`: None (random init), an open_clip tag (files found through lrm.weights where
    registered in OPEN_CLIP_WEIGHTS, else open_clip's Hugging Face cache / download), or a path
    to a checkpoint file: a state dict (open_clip's, or OpenAI's converted), or one of OpenAI's own
    TorchScript archives (ViT-L-14.pt, what VBench loads with `clip.load`).
    `quick_gelu`: the towers' activation. None: a tag's own (OpenAI-trained towers use QuickGELU); for
    a file, QuickGELU when it is an OpenAI TorchScript archive (OpenAI released every CLIP that way, all
    trained with QuickGELU), else what `model_name` implies (open_clip's "-quickgelu" configs): a
    converted OpenAI state dict under a plain name (ViT-L-14) needs quick_gelu=True. True / False force it.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    if quick_gelu is False and open_clip.get_model_config(model_name).get("quick_gelu", False):
        raise ValueError(f"open_clip model {model_name!r} is a QuickGELU configuration; for GELU name the "
                         f"architecture without '-quickgelu', or leave out quick_gelu")
    if pretrained is None:
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=bool(quick_gelu))
    elif (model_name, pretrained) in OPEN_CLIP_WEIGHTS:
        name = OPEN_CLIP_WEIGHTS[(model_name, pretrained)]
        model = _create_from_file(model_name, weights.resolve(name), get_pretrained_cfg(model_name, pretrained),
                                  weights.entry(name).url, quick_gelu)
    elif Path(pretrained).is_file():
        if is_torchscript_archive(pretrained):  # OpenAI's release format, which torch.load(weights_only) refuses
            model = _create_from_openai_archive(model_name, Path(pretrained), quick_gelu is not False)
        else:
            model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=bool(quick_gelu))
    else:
        cfg = get_pretrained_cfg(model_name, pretrained)
        if not cfg:
            raise ValueError(
                f"{pretrained!r} is neither an open_clip tag of {model_name} "
                f"({', '.join(list_pretrained_tags_by_model(model_name))}) nor a checkpoint file"
            )
        try:  # the tag's quick_gelu flag: OpenAI-trained towers are wrong with plain GELU
            model = open_clip.create_model(model_name, pretrained=pretrained,
                                           force_quick_gelu=cfg.get("quick_gelu", False) if quick_gelu is None
                                           else quick_gelu)
        except RuntimeError as exc:  # open_clip wraps hub / download failures in RuntimeError
            where = cfg.get("hf_hub") or cfg.get("url")
            raise weights.MissingWeightsError(
                f"open_clip weights {model_name}/{pretrained} are not in the Hugging Face cache and could not be "
                f"downloaded (source: {where}). Fix: on a machine with network run open_clip.create_model("
                f"{model_name!r}, pretrained={pretrained!r}) to fill the cache (copy $HF_HOME over), or download the "
                f"checkpoint and pass pretrained='/path/to/checkpoint'. Cause: {exc}"
            ) from exc
    return model.eval().requires_grad_(False)


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript archive (torch.jit.save; OpenAI's CLIP .pt files): a zip with constants.pkl."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except zipfile.BadZipFile:  # not a zip, or a damaged one: open_clip's loader names the file
        return False


def _create_from_openai_archive(model_name: str, path: Path, quick_gelu: bool) -> nn.Module:
    """open_clip `model_name` with the weights of an OpenAI TorchScript archive (its state dict, as
    open_clip.load_openai_model reads it), QuickGELU unless told otherwise."""
    import open_clip

    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    try:
        with warnings.catch_warnings():  # torch's deprecation of torch.jit: the archive's format is OpenAI's
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        unsaved = {name for name, _ in model.named_buffers()} - set(model.state_dict())  # attn_mask
        for key in ("input_resolution", "context_length", "vocab_size", *unsaved):  # attributes, not weights
            state.pop(key, None)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # another model's archive: missing keys or size mismatch
        raise ValueError(f"{path} does not hold open_clip {model_name} weights ({type(exc).__name__}: "
                         f"{str(exc)[:300]})") from exc
    return model


def _create_from_file(model_name: str, path: Path, tag_cfg: dict, url: str,
                      quick_gelu: bool | None = None) -> nn.Module:
    """Build from a checkpoint file with the tag's activation (unless `quick_gelu` says) and preprocessing
    settings; a file that is damaged or holds another model raises ValueError naming the file, the model and the fix."""
    import open_clip

    pp_keys = ("mean", "std", "interpolation", "resize_mode")
    try:
        return open_clip.create_model(
            model_name,
            pretrained=str(path),
            # OpenAI weights were trained with QuickGELU
            force_quick_gelu=tag_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu,
            force_preprocess_cfg={k: tag_cfg[k] for k in pp_keys if k in tag_cfg},
        )
    except Exception as exc:  # safetensors' header error on a damaged file; size mismatch for another model
        raise ValueError(
            f"{path} does not hold open_clip {model_name} weights ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Fix: re-download it from {url} under the name {path.name!r}"
        ) from exc


def load_clip_tokenizer(model_name: str) -> Callable:
    """open_clip's tokenizer for `model_name`, checked to carry the full CLIP BPE vocabulary."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(model_name)
    vocab = len(getattr(tokenizer, "encoder", {}))
    if hasattr(tokenizer, "encoder") and vocab != CLIP_VOCAB_SIZE:
        raise RuntimeError(
            f"open_clip tokenizer for {model_name} loaded {vocab} BPE tokens, expected {CLIP_VOCAB_SIZE}: "
            "open_clip's bpe_simple_vocab_16e6.txt.gz is missing or damaged; reinstall open_clip_torch"
        )
    return tokenizer


def load_checkpoint_into(model: nn.Module, path: Path) -> nn.Module:
    """Load a {'state_dict': ...} or plain state dict (tensors only, weights_only) strictly into `model`."""
    state = weights.read_checkpoint(path, "a CLIP state dict", "re-download the checkpoint, or re-save it as a plain "
                                    "state dict of tensors")
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved checkpoints
    model.load_state_dict(state, strict=True)
    return model


def load_clip_score(model: str = "ViT-L-14", pretrained: str = "openai", frames: int | None = None,
                    quick_gelu: bool | None = None) -> ClipScoreReward:
    # quick_gelu: see load_open_clip; a converted OpenAI state dict given as a path needs it (or a -quickgelu model)
    clip_model = load_open_clip(model, pretrained, quick_gelu)
    return ClipScoreReward(clip_model, load_clip_tokenizer(model), open_clip_preprocess(clip_model), frames)


def load_laion_aesthetic(frames: int | None = None) -> LaionAestheticReward:
    # both files, before the 400M-param backbone is built: fail fast, naming every missing file
    head_path, _ = weights.require("laion_aesthetic_mlp_l14", OPEN_CLIP_WEIGHTS[("ViT-L-14", "openai")])
    head = load_checkpoint_into(ScoreMLP(768), head_path).eval().requires_grad_(False)
    clip_model = load_open_clip("ViT-L-14", "openai")
    return LaionAestheticReward(clip_model, head, open_clip_preprocess(clip_model), frames)


def load_hps(name: str, frames: int | None = None) -> HPSReward:
    import open_clip

    path = weights.resolve(HPS_WEIGHTS[name])  # before building the 1B-param model: fail fast
    model = open_clip.create_model(HPS_ARCH, pretrained=None)
    load_checkpoint_into(model, path).eval().requires_grad_(False)
    preprocess = open_clip_preprocess(model, resize_mode="longest")  # HPSv2's val transform: ResizeMaxSize + pad
    return HPSReward(model, load_clip_tokenizer(HPS_ARCH), preprocess, frames, name=name)


def load_hpsv2(frames: int | None = None) -> HPSReward:
    return load_hps("hpsv2", frames)


def load_hpsv21(frames: int | None = None) -> HPSReward:
    return load_hps("hpsv2.1", frames)
