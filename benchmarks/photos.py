"""Real photos for codec benchmarks: DreamBooth from ../shared/data, else scikit-image's samples.

Each photo is resized so that its short side is `size` (bicubic, antialiased) and centre-cropped
to size x size; the result is pixels (N, 1, 3, size, size) float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

DREAMBOOTH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images" / "dreambooth"
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # the natural photos shipped inside the wheel


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """Short side resized to `size`, then the centre size x size square."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (N, 1, 3, H, W) float32 in [0, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images])  # (N, H, W, 3) uint8
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).unsqueeze(1).float() / 255


def load_photos(size: int, limit: int | None = None, folder: Path = DREAMBOOTH) -> tuple[torch.Tensor, str]:
    """(pixels (N, 1, 3, size, size), source name): DreamBooth photos when present, else scikit-image's."""
    files = sorted(folder.glob("*.jpg"))[:limit] if folder.is_dir() else []
    if files:
        images = [square_crop(Image.open(f), size) for f in files]
        return to_pixels(images), f"dreambooth ({len(files)} photos)"
    import skimage.data

    names = SKIMAGE_PHOTOS[:limit]
    images = [square_crop(Image.fromarray(getattr(skimage.data, n)()), size) for n in names]
    return to_pixels(images), f"skimage.data ({', '.join(names)})"


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR in dB for pixels (B, T, 3, H, W) in [0, 1] (MSE over all frames and pixels)."""
    mse = (reference.float() - reconstruction.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))
