"""One registry of pretrained weight files, and where to find them.

Search order for a file: every folder in $LRM_WEIGHTS (os.pathsep-separated), then
~/.cache/lrm, then the Hugging Face cache (for entries hosted on the hub), then a download to
~/.cache/lrm where a network exists (skipped when LRM_OFFLINE=1 or HF_HUB_OFFLINE=1). When all
fail, `MissingWeightsError` names the file and the folders it looked in.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lrm.io import new_file_mode


@dataclass(frozen=True)
class WeightFile:
    filename: str  # file name as published (download address, Hugging Face cache)
    sha256: str | None  # checksum of the published file; None where the publisher gives none
    url: str | None  # direct download address
    hf_repo: str | None = None  # Hugging Face repository that hosts the file, if any
    source: str = ""  # project and license, for `lrm rewards` and error messages
    saved_as: str | None = None  # name in $LRM_WEIGHTS and ~/.cache/lrm where `filename` is shared by several models

    @property
    def hub_only(self) -> bool:
        """Read by transformers from the Hugging Face cache, so looked for nowhere else."""
        return self.url is None and self.hf_repo is not None

    @property
    def local_name(self) -> str:
        """The name looked for in $LRM_WEIGHTS and ~/.cache/lrm, and given to downloads."""
        return self.saved_as or self.filename


WEIGHTS: dict[str, WeightFile] = {
    "taef2_encoder": WeightFile(
        "taef2_encoder.pth",
        "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
        "https://github.com/madebyollin/taesd/raw/main/taef2_encoder.pth",
        source="madebyollin/taesd (MIT)",
    ),
    "taef2_decoder": WeightFile(
        "taef2_decoder.pth",
        "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
        "https://github.com/madebyollin/taesd/raw/main/taef2_decoder.pth",
        source="madebyollin/taesd (MIT)",
    ),
    "dino_vitbase16_pretrain": WeightFile(  # VBench subject consistency
        "dino_vitbase16_pretrain.pth",
        None,
        "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        source="facebookresearch/dino ViT-B/16 backbone (Apache-2.0)",
    ),
    "laion_aesthetic_linear_l14": WeightFile(  # VBench aesthetic quality: predictor v1, linear head
        "sa_0_4_vit_l_14_linear.pth",
        None,
        "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
        source="LAION-AI/aesthetic-predictor (MIT)",
    ),
    "musiq_spaq": WeightFile(  # VBench imaging quality
        "musiq_spaq_ckpt-358bb6af.pth",
        None,
        "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth",
        source="chaofengc/IQA-PyTorch MUSIQ trained on SPAQ",
    ),
    "viclip_internvid_10m_flt": WeightFile(  # VBench overall consistency
        "ViClip-InternVid-10M-FLT.pth",
        None,
        "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/ViClip-InternVid-10M-FLT.pth",
        hf_repo="OpenGVLab/ViCLIP",
        source="OpenGVLab InternVid ViCLIP-L/14",
    ),
    "clip_vit_b32_openai": WeightFile(  # background-consistency backbone (open_clip ViT-B-32 'openai')
        "open_clip_model.safetensors",
        None,
        "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_model.safetensors",
        hf_repo="timm/vit_base_patch32_clip_224.openai",
        source="OpenAI CLIP ViT-B/32 in open_clip format (MIT)",
        saved_as="clip_vit_b32_openai.safetensors",  # the published name is the same for ViT-L/14
    ),
    "pickscore_v1": WeightFile(  # pickscore: found in the Hugging Face cache by transformers
        "model.safetensors",
        None,
        None,
        hf_repo="yuvalkirstain/PickScore_v1",
        source="yuvalkirstain/PickScore_v1 (MIT)",
    ),
    "clip_h14_laion_tokenizer": WeightFile(  # pickscore's tokenizer (with merges.txt beside it)
        "vocab.json",
        None,
        None,
        hf_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        source="LAION CLIP ViT-H/14 tokenizer, used by PickScore (MIT)",
    ),
    "clip_h14_laion_preprocessor": WeightFile(  # pickscore's image preprocessing
        "preprocessor_config.json",
        None,
        None,
        hf_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        source="LAION CLIP ViT-H/14 image processor, used by PickScore (MIT)",
    ),
    "bert_base_uncased_vocab": WeightFile(  # imagereward's text tokenizer
        "vocab.txt",
        None,
        None,
        hf_repo="bert-base-uncased",
        source="google-bert/bert-base-uncased tokenizer, used by ImageReward (Apache-2.0)",
    ),
    "clip_vit_l14_openai": WeightFile(  # clip-score, laion-aesthetic backbone (open_clip ViT-L-14 'openai')
        "open_clip_model.safetensors",
        None,
        "https://huggingface.co/timm/vit_large_patch14_clip_224.openai/resolve/main/open_clip_model.safetensors",
        hf_repo="timm/vit_large_patch14_clip_224.openai",
        source="OpenAI CLIP ViT-L/14 in open_clip format (MIT)",
        saved_as="clip_vit_l14_openai.safetensors",  # the published name is the same for ViT-B/32
    ),
    "laion_aesthetic_mlp_l14": WeightFile(  # laion-aesthetic: improved predictor, MLP head
        "sac+logos+ava1-l14-linearMSE.pth",
        None,
        "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth",
        source="christophschuhmann/improved-aesthetic-predictor (Apache-2.0)",
    ),
    "hpsv2": WeightFile(
        "HPS_v2_compressed.pt",
        None,
        "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2_compressed.pt",
        hf_repo="xswu/HPSv2",
        source="tgxs002/HPSv2 Human Preference Score v2 (Apache-2.0)",
    ),
    "hpsv2_1": WeightFile(
        "HPS_v2.1_compressed.pt",
        None,
        "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt",
        hf_repo="xswu/HPSv2",
        source="tgxs002/HPSv2 Human Preference Score v2.1 (Apache-2.0)",
    ),
    "imagereward": WeightFile(
        "ImageReward.pt",
        None,
        "https://huggingface.co/THUDM/ImageReward/resolve/main/ImageReward.pt",
        hf_repo="THUDM/ImageReward",
        source="THUDM/ImageReward v1.0 (Apache-2.0)",
    ),
    "imagereward_med_config": WeightFile(  # BLIP text-encoder config that ships with ImageReward.pt
        "med_config.json",
        None,
        "https://huggingface.co/THUDM/ImageReward/resolve/main/med_config.json",
        hf_repo="THUDM/ImageReward",
        source="THUDM/ImageReward v1.0 (Apache-2.0)",
    ),
}


class MissingWeightsError(FileNotFoundError):
    """A weight file is not on disk and could not be downloaded."""


def search_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get("LRM_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(cache_dir())
    return dirs


def cache_dir() -> Path:
    return Path(os.environ.get("LRM_CACHE", "~/.cache/lrm")).expanduser()


def offline() -> bool:
    return os.environ.get("LRM_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def hub_offline() -> bool:
    """True when Hugging Face loaders should read only their cache: offline(), or the hub's host
    cannot be reached. Without this, transformers and diffusers retry an unreachable hub for about
    a minute before reporting a missing file."""
    return offline() or not _hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str) -> bool:
    """One TCP connection to the hub's host, 3 s at most, checked once per process and endpoint."""
    url = urllib.parse.urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
        return True
    except OSError:  # no DNS, no route, refused, timed out
        return False


def entry(name: str) -> WeightFile:
    if name not in WEIGHTS:
        raise KeyError(f"unknown weight file {name!r}; known: {', '.join(sorted(WEIGHTS))}")
    return WEIGHTS[name]


def find(name: str) -> Path | None:
    """Path of a weight file already on disk, or None. Never downloads."""
    wf = entry(name)
    for folder in [] if wf.hub_only else search_dirs():
        candidate = folder / wf.local_name
        if candidate.is_file():
            return candidate
    if wf.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        cached = try_to_load_from_cache(wf.hf_repo, wf.filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name: str) -> Path:
    """Path of a weight file: on disk, or downloaded where a network exists; else a clear error."""
    found = find(name)
    if found is not None:
        return found
    wf = entry(name)
    if wf.hub_only:
        raise MissingWeightsError(
            f"{wf.filename!r} of {wf.hf_repo} ({name}, {wf.source}) is not in the Hugging Face cache. Fix: on a "
            f"machine with network run `hf download {wf.hf_repo}` and copy its Hugging Face cache here (set $HF_HOME "
            "to it), or run once with network."
        )
    errors = ""
    if not offline() and wf.url:
        try:
            return _download(wf)
        except OSError as exc:  # no network, HTTP error, checksum mismatch
            errors = f"\n  download from {wf.url} failed: {exc}"
    looked = "\n".join(f"  - {d / wf.local_name}" for d in search_dirs())
    hub = f"\n  - Hugging Face cache of {wf.hf_repo} ({wf.filename})" if wf.hf_repo else ""
    rename = f" and save it as {wf.local_name!r}" if wf.saved_as else ""
    raise MissingWeightsError(
        f"weight file {wf.local_name!r} ({name}, {wf.source}) not found. Looked in:\n{looked}{hub}{errors}\n"
        f"Fix: download it{f' from {wf.url}' if wf.url else ''}{rename} into one of those folders "
        "(or point $LRM_WEIGHTS at its folder)."
    )


def require(*names: str) -> list[Path]:
    """resolve() every name; when some are missing, one MissingWeightsError names all of them, so a
    reward that needs two files does not reveal the second only after the first is fixed."""
    paths, missing = [], []
    for name in names:
        try:
            paths.append(resolve(name))
        except MissingWeightsError as exc:
            missing.append(str(exc))
    if len(missing) == 1:
        raise MissingWeightsError(missing[0])
    if missing:
        raise MissingWeightsError(f"{len(missing)} weight files are missing:\n" +
                                  "\n".join(f"{i}. {m}" for i, m in enumerate(missing, 1)))
    return paths


def _download(wf: WeightFile) -> Path:
    target = cache_dir() / wf.local_name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{wf.local_name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(wf.url, timeout=30) as response:
            while block := response.read(1 << 20):
                out.write(block)
        if wf.sha256 and sha256_of(Path(tmp)) != wf.sha256:
            raise OSError(f"checksum mismatch for {wf.filename}; expected sha256 {wf.sha256}")
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)  # atomic: a partial download never sits under the final name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_checkpoint(path: Path, what: str, fix: str) -> dict:
    """torch.load(path) with weights_only semantics (never unpickles code); a file it cannot read
    raises ValueError naming `what` it should hold and the `fix`."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects that weights_only refuses, or a truncated file
        raise ValueError(f"could not read {what} from {path} with weights_only=True: {exc}. Fix: {fix}") from exc


def load_registered(name: str) -> dict:
    """State dict of the registered single-file checkpoint `name`: resolve() it, then read_checkpoint()."""
    wf = entry(name)
    return read_checkpoint(resolve(name), f"the {name!r} weights", f"re-download it from {wf.url or wf.source}")
