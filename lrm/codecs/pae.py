"""lrm's own autoencoder ("pae"): a small convolutional autoencoder trained by lrm on procedural images, its
latent tokens aligned to HOG shape descriptors and their mean colour. 16 x H/8 x W/8, per frame, no downloaded
weights. The embedded teachers' latent space (lrm.generators.embedded); not a codec for photos.

    codec = lrm.codecs.load("pae")                 # the default (PAE_DEFAULT), trained on first use (~4 min CPU)
    codec = lrm.codecs.load("pae", weights=NAME)   # another trained one: a folder under $LRM_CACHE/codecs, or a path

Why it exists: the embedded teacher must draw the shape its caption names, and a DiT this small draws it only in
a latent space where one token tells which shape it belongs to (benchmarks/token_probe.py: one token of dct tells
it in 0.25 of held-out images, of taef2 in 0.99; dct's teacher draws the named shape in 0.20 of samples, taef2's
in 0.82). taef2 needs downloaded weights; dct's blocks keep the outline only in how neighbouring blocks fit
together. This autoencoder is trained with a linear head (1 x 1 conv, 16 -> 39) that must predict each token's
HOG descriptor (lrm.codecs.hog: the 24 x 24 pixels around the token) and its mean colour from the token alone:
the VA-VAE recipe (aligning latents to a vision model's features) with weight-free descriptors in place of
DINOv2. The head is used only in training. One pae token tells the shape in 0.82 of those images, and the
embedded teacher in pae draws the named shape in 0.60 of its samples (docs/teacher.md has the measurements).

Network: pixel-unshuffle by 2, then three stages of (3 x 3 conv, residual block), the last two downsampling by 2,
and a 3 x 3 conv to 16 channels; the decoder mirrors it with nearest upsampling and ends in a pixel shuffle.
Latents are standardised per channel with the mean and std measured on the training images after training, so
they come out with unit variance like the other codecs'.

A trained autoencoder is a folder `$LRM_CACHE/codecs/pae-<8 hex of its PAEConfig>` holding model.safetensors
(encoder, decoder, latent statistics), metrics.json (reconstruction PSNR, training time) and config.json (the
PAEConfig, written last: its presence marks a finished training). The codec's settings record the folder name and the weights' SHA-256, so a store or
teacher made with one trained autoencoder refuses another (a retrained one differs in its bits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from lrm.cache import cache_root, settings_digest
from lrm.codecs.base import Codec
from lrm.io import read_json, read_safetensors

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class PAEConfig:
    """Architecture and training of one autoencoder; its digest names the cache folder."""

    # architecture
    channels: int = 16  # latent channels c
    widths: tuple[int, int, int] = (24, 48, 96)  # feature channels at H/2, H/4, H/8
    # training data: procedural still images (lrm.datasets.procedural)
    world: str = "simple"  # WORLDS name: the embedded default's world
    size: int = 64  # pixels per side
    images: int = 8192  # clips 0..images-1 of `seed`
    seed: int = 3  # the embedded store is seed 0, teacher evaluation seed 1, the token probe seed 2
    # optimisation
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3  # AdamW; linear warm-up, then cosine decay to lr / 10
    warmup_steps: int = 100
    # loss = MSE + l1_weight * L1 + latent_weight * mean(z^2) + align_weight * MSE(head(z), targets): targets are each
    # token's HOG descriptor (lrm.codecs.hog) [and mean RGB], standardised
    l1_weight: float = 0.5
    latent_weight: float = 1e-3
    align_weight: float = 0.5
    align_colour: bool = True  # the head also predicts each token's mean RGB (3 more standardised targets)
    latent_noise: float = 0.2  # z + noise * u * N(0, 1), u ~ U(0, 1) per image: a decoder robust to imprecise latents
    checkpoint_every: int = 250  # steps between resumable checkpoints
    min_psnr: float = 20.0  # dB of its own images after training, else it collapsed and is refused (the default
    # reaches ~29; a collapse to the mean image ~15: the latents shrink under the latent noise)

    def __post_init__(self):
        checks = {"channels": self.channels >= 1, "size": self.size >= 16 and self.size % 8 == 0,
                  "images": self.images >= 1, "steps": self.steps >= 1, "batch_size": self.batch_size >= 1,
                  "lr": self.lr > 0, "widths": len(self.widths) == 3 and min(self.widths) >= 1,
                  "checkpoint_every": self.checkpoint_every >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"PAEConfig: invalid {', '.join(bad)} ({', '.join(f'{n}={getattr(self, n)!r}' for n in bad)})")

    def folder_name(self) -> str:
        """pae-<8 hex of the settings that change the weights> (not checkpoint_every nor min_psnr)."""
        weights = {k: v for k, v in json_settings(self).items() if k not in ("checkpoint_every", "min_psnr")}
        return f"pae-{settings_digest(weights)}"


PAE_DEFAULT = PAEConfig()  # the embedded default's latent space


def json_settings(config: PAEConfig) -> dict:
    """The config as plain JSON types (tuples as lists), as written to config.json."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_json(settings: dict, path: Path) -> PAEConfig:
    known = {f.name for f in fields(PAEConfig)}
    if set(settings) != known:
        raise ValueError(f"{path} does not hold a PAEConfig of this lrm version (differs in: "
                         f"{', '.join(sorted(set(settings) ^ known))}); retrain it (delete the folder)")
    return PAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


def default_folder() -> Path:
    return cache_root() / "codecs" / PAE_DEFAULT.folder_name()


def is_trained(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / MODEL_FILE).is_file()


# ---- network ---------------------------------------------------------------------------------------

def conv(n_in: int, n_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), width kept."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), conv(width, width), nn.SiLU(), conv(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder(config: PAEConfig) -> nn.Sequential:
    """(N, 3, H, W) in [0, 1] -> (N, c, H/8, W/8), raw (not standardised)."""
    w1, w2, w4 = config.widths
    return nn.Sequential(
        nn.PixelUnshuffle(2), conv(12, w1), ResBlock(w1),  # H/2
        conv(w1, w2, stride=2), ResBlock(w2),  # H/4
        conv(w2, w4, stride=2), ResBlock(w4),  # H/8
        nn.SiLU(), conv(w4, config.channels),
    )


def decoder(config: PAEConfig) -> nn.Sequential:
    """(N, c, h, w) raw latents -> (N, 3, 8h, 8w), about [0, 1] (not clamped: training sees the overshoot)."""
    w1, w2, w4 = config.widths
    return nn.Sequential(
        conv(config.channels, w4), ResBlock(w4),  # h
        nn.Upsample(scale_factor=2), conv(w4, w2), ResBlock(w2),  # 2h
        nn.Upsample(scale_factor=2), conv(w2, w1), ResBlock(w1),  # 4h
        nn.SiLU(), conv(w1, 12), nn.PixelShuffle(2),  # 8h
    )


# ---- the codec -------------------------------------------------------------------------------------

class PAECodec(Codec):
    """A trained lrm autoencoder as a frozen codec: 8x spatial, per frame, standardised latents."""

    name = "pae"
    version = "1"
    spatial_factor = 8
    temporal_factor = 1
    scale = 1.0  # latents are standardised per channel (latent_mean / latent_std below)

    def __init__(self, weights: str | Path | None = None, batch_size: int = 16, train_if_missing: bool = True,
                 progress: bool = False):
        super().__init__()
        self.folder = resolve_folder(weights, train_if_missing, progress)
        self.config = config_from_json(read_json(self.folder / CONFIG_FILE, fix=_retrain(self.folder)),
                                       self.folder / CONFIG_FILE)
        self.channels = self.config.channels
        self.batch_size = batch_size
        self.encoder, self.decoder = encoder(self.config), decoder(self.config)
        self.register_buffer("latent_mean", torch.zeros(1, self.channels, 1, 1))  # (1, c, 1, 1)
        self.register_buffer("latent_std", torch.ones(1, self.channels, 1, 1))  # (1, c, 1, 1)
        tensors = read_safetensors(self.folder / MODEL_FILE, fix=_retrain(self.folder))
        try:
            self.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{self.folder / MODEL_FILE} does not match its config.json "
                             f"({str(exc).splitlines()[0]}); {_retrain(self.folder)}") from None
        from lrm.weights import sha256_of

        self.weights_sha256 = sha256_of(self.folder / MODEL_FILE)[:16]
        self.requires_grad_(False).eval()  # a frozen latent space; gradients still flow to the inputs

    def settings(self) -> dict:
        return {**super().settings(), "weights": self.folder.name, "weights_sha256": self.weights_sha256}

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = pixels.shape
        raw = self.encoder(self._on_device(pixels).reshape(b * t, 3, h, w))  # (B*T, c, h/8, w/8)
        latents = (raw - self.latent_mean) / self.latent_std
        return latents.to(pixels.dtype).reshape(b, t, self.channels, h // 8, w // 8)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = latents.shape
        raw = self._on_device(latents).reshape(b * t, c, h, w) * self.latent_std + self.latent_mean
        pixels = self.decoder(raw).clamp(0, 1)  # (B*T, 3, 8h, 8w)
        return pixels.to(latents.dtype).reshape(b, t, 3, 8 * h, 8 * w)

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        """x in the weights' dtype; a clear error when x and the weights sit on different devices."""
        if x.device != self.latent_std.device:
            raise ValueError(f"pae: inputs are on {x.device} but the codec is on {self.latent_std.device}; "
                             f"move the codec with codec.to({str(x.device)!r})")
        return x.to(self.latent_std.dtype)


def _retrain(folder: Path) -> str:
    return (f"delete {folder}: lrm retrains the default autoencoder on its next use (stores and teachers encoded "
            "with the damaged one must be made again)")


def wait_until_trained(folder: Path, timeout_s: float = 3600.0, poll_s: float = 5.0) -> None:
    """Wait for another process (torchrun's rank 0) to finish training into `folder`; a TimeoutError after
    timeout_s names the folder."""
    import time

    deadline = time.monotonic() + timeout_s
    while not is_trained(folder):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to train the pae autoencoder into {folder}; "
                               "see rank 0's error, or train it first in one process (`lrm teacher train`)")
        time.sleep(poll_s)


def resolve_folder(weights: str | Path | None, train_if_missing: bool, progress: bool) -> Path:
    """The folder of a trained autoencoder: None is the default (trained here when missing and train_if_missing);
    a name is a folder under $LRM_CACHE/codecs, anything else a path, and either must hold a trained one (a store
    or teacher names its autoencoder so: one trained anew would differ in its bits, so it is never trained here)."""
    if weights is None:
        folder = default_folder()
        if not is_trained(folder) and train_if_missing:
            from lrm import distributed
            from lrm.codecs.pae_training import train_pae

            if distributed.rank() == 0:  # under torchrun ($RANK, before any process group opens) rank 0 trains it
                train_pae(PAE_DEFAULT, folder, progress=progress)
            else:
                wait_until_trained(folder)
    else:
        folder = Path(weights).expanduser()
        if not folder.is_absolute() and len(folder.parts) == 1 and not folder.exists():
            folder = cache_root() / "codecs" / folder
    if is_trained(folder):
        return folder
    raise FileNotFoundError(
        f"no trained pae autoencoder in {folder} (model.safetensors and config.json); copy that folder from the "
        f"machine that trained it, or re-encode the data with the default `pae` (trained on first use)")
