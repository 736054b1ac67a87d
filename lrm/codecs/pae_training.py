"""Training lrm's own autoencoder (lrm.codecs.pae) on procedural images, once per PAEConfig.

    train_pae(PAE_DEFAULT, folder, progress=True)   # ~4 min on a 2-core CPU; resumes from its last checkpoint

Step s draws its batch indices and latent noise from a generator seeded by (seed, s), so a run resumed from a
checkpoint repeats an uninterrupted one. Checkpoints (lrm.tuning.checkpoint) go to folder/checkpoints and are
removed when training finishes; model.safetensors and then config.json are written atomically at the end.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from lrm.codecs import hog
from lrm.codecs.pae import CONFIG_FILE, MODEL_FILE, PAEConfig, decoder, encoder, json_settings
from lrm.io import atomic_write_bytes, atomic_write_json

STATS_IMAGES = 1024  # images whose latents give the per-channel mean and std (and the reconstruction check)
METRICS_FILE = "metrics.json"  # reconstruction PSNR, wall time of this call, the last step's loss terms
CHANNELS_LAST = torch.channels_last  # 20-35% faster convolutions on this project's CPU (one thread, batch 32)


def target_channels(config: PAEConfig) -> int:
    """Per-token alignment targets: the HOG descriptor (36), and the token's mean RGB (3) with align_colour."""
    return hog.CHANNELS + (3 if config.align_colour else 0)


class TrainingAutoencoder(nn.Module):
    """Encoder, decoder and the alignment head (1 x 1 conv, c -> target_channels) that predicts each token's
    targets from the token alone."""

    def __init__(self, config: PAEConfig):
        super().__init__()
        self.encoder, self.decoder = encoder(config), decoder(config)
        self.align_head = nn.Conv2d(config.channels, target_channels(config), 1)


def training_images(config: PAEConfig, progress: bool = False) -> torch.Tensor:
    """(images, 3, size, size) uint8: still procedural images of config.world, clips 0.. of config.seed."""
    from lrm.datasets.procedural import make_clip, world_config

    world = world_config(config.world, seed=config.seed, frames=1, size=config.size)
    out = torch.empty(config.images, 3, config.size, config.size, dtype=torch.uint8)
    for i in tqdm(range(config.images), desc="pae images", unit="img", leave=False, disable=not progress):
        out[i] = (make_clip(world, i).pixels[0] * 255).round().to(torch.uint8)
    return out


def alignment_targets(images: torch.Tensor, align_colour: bool, chunk: int = 256) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 36 [+ 3], H/8, W/8): each token's HOG descriptor [and mean RGB over its 8 x 8
    pixels], standardised per channel over the N images."""
    def descriptors_of(pixels: torch.Tensor) -> torch.Tensor:
        parts = [hog.token_hog(pixels)] + ([F.avg_pool2d(pixels, hog.TOKEN)] if align_colour else [])
        return torch.cat(parts, dim=1)

    descriptors = torch.cat([descriptors_of(part.float() / 255) for part in images.split(chunk)])
    mean = descriptors.mean(dim=(0, 2, 3), keepdim=True)
    std = descriptors.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (descriptors - mean) / std


def learning_rate(step: int, config: PAEConfig) -> float:
    """Linear warm-up to config.lr, then cosine decay to lr / 10 at config.steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_losses(model: TrainingAutoencoder, pixels: torch.Tensor, targets: torch.Tensor, config: PAEConfig,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The loss terms of one batch: pixels (B, 3, H, W) in [0, 1], targets (B, target_channels, H/8, W/8)."""
    z = model.encoder(pixels)  # (B, c, H/8, W/8)
    noise = config.latent_noise * torch.rand(z.shape[0], 1, 1, 1, generator=generator)
    recon = model.decoder(z + noise * torch.randn(z.shape, generator=generator))  # (B, 3, H, W)
    terms = {"mse": F.mse_loss(recon, pixels), "l1": F.l1_loss(recon, pixels), "latent": z.pow(2).mean(),
             "align": F.mse_loss(model.align_head(z), targets)}
    terms["loss"] = (terms["mse"] + config.l1_weight * terms["l1"] + config.latent_weight * terms["latent"]
                     + config.align_weight * terms["align"])
    return terms


@torch.no_grad()
def latent_statistics(model: TrainingAutoencoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel mean and std (1, c, 1, 1) of the raw latents of the first STATS_IMAGES images, and their mean
    reconstruction PSNR in dB."""
    pixels = images[:STATS_IMAGES].float() / 255
    z = torch.cat([model.encoder(part) for part in pixels.split(256)])
    mse = torch.cat([(model.decoder(part).clamp(0, 1) - x).pow(2).mean((1, 2, 3))
                     for part, x in zip(z.split(256), pixels.split(256))])
    psnr = (-10 * torch.log10(mse.clamp_min(1e-10))).mean().item()
    return z.mean(dim=(0, 2, 3), keepdim=True), z.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6), psnr


def train_pae(config: PAEConfig, folder: str | Path, progress: bool = False) -> Path:
    """Train the autoencoder of `config` into `folder` (resuming from its newest checkpoint); returns folder."""
    from lrm.tuning.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    started = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation that leaves the caller's RNG as it was
        torch.manual_seed(config.seed)
        model = TrainingAutoencoder(config).to(memory_format=CHANNELS_LAST)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    step = 0
    found = latest_checkpoint(folder)
    if found is not None:
        _, state = load_checkpoint(found, {"autoencoder": model}, {"optimizer": optimizer})
        step = state["step"]
    images = training_images(config, progress)
    targets = alignment_targets(images, config.align_colour)
    bar = tqdm(total=config.steps, initial=step, desc="pae autoencoder", unit="step", leave=False,
               dynamic_ncols=True, disable=not progress)
    model.train()
    while step < config.steps:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0]))
        rows = torch.randint(config.images, (config.batch_size,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        pixels = (images[rows].float() / 255).contiguous(memory_format=CHANNELS_LAST)
        terms = step_losses(model, pixels, targets[rows], config, generator)
        if not torch.isfinite(terms["loss"]):
            raise ValueError(f"pae training diverged at step {step} (loss {terms['loss'].item()}); lower PAEConfig.lr")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(mse=f"{terms['mse'].item():.4f}", align=f"{terms['align'].item():.3f}")
        if step % config.checkpoint_every == 0 and step < config.steps:
            save_checkpoint(folder, step, {"autoencoder": model}, {"optimizer": optimizer}, {}, {"step": step})
    bar.close()
    model.eval()
    mean, std, psnr = latent_statistics(model, images)
    if psnr < config.min_psnr:  # the latents shrank under the latent noise and the decoder learnt the mean image
        raise ValueError(f"pae training in {folder} collapsed (reconstruction {psnr:.1f} dB on its own images, "
                         f"under {config.min_psnr} dB); delete the folder and run again, or for a PAEConfig of your "
                         "own lower its lr")
    tensors = {**{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()},
               **{f"decoder.{k}": v for k, v in model.decoder.state_dict().items()},
               "latent_mean": mean, "latent_std": std}
    atomic_write_bytes(folder / MODEL_FILE, save({k: v.detach().contiguous() for k, v in tensors.items()}))
    atomic_write_json(folder / METRICS_FILE, {"psnr_db": round(psnr, 2), "train_s": round(time.perf_counter() - started, 1),
                                              "final": {k: round(v.item(), 5) for k, v in terms.items()}})
    atomic_write_json(folder / CONFIG_FILE, json_settings(config))  # last: marks the training finished
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return folder
