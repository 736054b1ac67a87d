"""Write generated samples: one PNG (images) or GIF / MP4 (clips) per sample, a captioned grid PNG, the
latents as safetensors and a JSON index. Every file is written atomically.

    index = save_samples(samples, "runs/teacher/samples", settings={"steps": 50, "cfg": 7.5})

Layout of the folder:
  samples/<i>_seed<seed>.png | .gif | .mp4   decoded sample i (i in generation order)
  grid.png                                   rows = prompts, columns = seeds; videos show their middle frame
  latents.safetensors                        "latents" (N, T, c, h, w) float32, row i = sample i
  index.json                                 settings + one entry per sample: prompt, seed, steps, cfg, file, row

Writing into a folder that holds an earlier save_samples first deletes the sample files its index.json lists
(only names of the layout above), so a run with fewer samples leaves none of the earlier run's behind; every
other file in the folder is left alone.
"""

from __future__ import annotations

import io
import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lrm.io import atomic_write_bytes, atomic_write_json

VIDEO_FORMATS = ("gif", "mp4")
SAMPLE_FILE = re.compile(r"samples/\d{4,}_seed-?\d+\.(png|gif|mp4)")  # the names save_samples gives sample files
FPS = 8  # playback rate of written clips
GRID_MIN_TILE = 128  # tiles are upscaled (nearest) to at least this many pixels on their short side
GRID_FONT_SIZE = 12
GRID_PAD = 4  # pixels between tiles and around captions


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] -> (T, H, W, 3) uint8."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: np.ndarray, fps: int = FPS) -> bytes:
    """(T, H, W, 3) uint8 -> an endlessly looping GIF."""
    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def mp4_bytes(frames: np.ndarray, fps: int = FPS) -> bytes:
    """(T, H, W, 3) uint8 -> H.264 MP4 (yuv420p; odd sizes are padded by one pixel, as the codec needs)."""
    import av

    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def sample_file_bytes(frames: torch.Tensor, video_format: str = "gif") -> tuple[bytes, str]:
    """(T, 3, H, W) in [0, 1] -> (file bytes, extension): PNG for one frame, else GIF or MP4."""
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video format must be one of {', '.join(VIDEO_FORMATS)}, got {video_format!r}")
    array = to_uint8(frames)
    if array.shape[0] == 1:
        return png_bytes(array[0]), "png"
    return (gif_bytes(array), "gif") if video_format == "gif" else (mp4_bytes(array), "mp4")


# ---------------------------------------------------------------------------------------------------
# grid
# ---------------------------------------------------------------------------------------------------

def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=GRID_FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def grid_png(pixels: torch.Tensor, prompts: list[str], seeds: list[int]) -> bytes:
    """Captioned grid of samples (N, T, 3, H, W): one row per distinct prompt (first-appearance order), its
    samples left to right labelled with their seeds; a clip shows its middle frame."""
    rows: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        rows.setdefault(prompt, []).append(i)
    h, w = pixels.shape[-2:]
    scale = max(1, math.ceil(GRID_MIN_TILE / min(h, w)))
    tile_h, tile_w = h * scale, w * scale
    columns = max(len(r) for r in rows.values())
    width = columns * (tile_w + GRID_PAD) + GRID_PAD
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 2
    char_w = max(1.0, probe.textlength("abcdefghij", font=font) / 10)
    wrap = max(10, int((width - 2 * GRID_PAD) / char_w))
    captions = {p: textwrap.wrap(p, wrap) or [""] for p in rows}
    row_heights = [len(captions[p]) * line_h + GRID_PAD + tile_h + line_h + GRID_PAD for p in rows]
    canvas = Image.new("RGB", (width, sum(row_heights) + GRID_PAD), "white")
    draw = ImageDraw.Draw(canvas)
    middle = pixels.shape[1] // 2
    y = GRID_PAD
    for prompt, height in zip(rows, row_heights):
        for k, line in enumerate(captions[prompt]):
            draw.text((GRID_PAD, y + k * line_h), line, fill="black", font=font)
        top = y + len(captions[prompt]) * line_h + GRID_PAD
        for c, i in enumerate(rows[prompt]):
            left = GRID_PAD + c * (tile_w + GRID_PAD)
            tile = Image.fromarray(to_uint8(pixels[i, middle : middle + 1])[0]).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(tile, (left, top))
            draw.text((left, top + tile_h + 1), f"seed {seeds[i]}", fill="dimgray", font=font)
        y += height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------------------

def remove_previous_samples(out_dir: str | Path) -> list[Path]:
    """Delete the sample files an earlier save_samples into out_dir wrote, as its index.json lists them; returns
    them. Only listed names of save_samples' layout (samples/<i>_seed<seed>.<ext>) that are plain files inside
    out_dir go: nothing when the index is absent or unreadable, never a file lrm did not write there."""
    out_dir = Path(out_dir)
    try:
        index = json.loads((out_dir / "index.json").read_text())
    except (OSError, ValueError):  # no earlier run here, or an index.json that is not one lrm wrote
        return []
    entries = index.get("samples") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        return []
    root, removed = out_dir.resolve(), []
    for entry in entries:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not SAMPLE_FILE.fullmatch(name):
            continue
        path = out_dir / name
        if path.is_file() and not path.is_symlink() and path.resolve().parent == root / "samples":
            path.unlink()
            removed.append(path)
    return removed


def save_samples(samples, out_dir: str | Path, settings: dict, video_format: str = "gif") -> dict:
    """Write `samples` (lrm.generators.sampling.Samples) into out_dir (layout in the module docstring), after
    deleting the sample files of an earlier save_samples there (remove_previous_samples); settings: facts recorded
    in index.json (run, steps, cfg, sampler, ...). Returns the index."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    remove_previous_samples(out_dir)
    entries = []
    for i, (prompt, seed) in enumerate(zip(samples.prompts, samples.seeds)):
        data, extension = sample_file_bytes(samples.pixels[i], video_format)
        name = f"samples/{i:04d}_seed{seed}.{extension}"
        atomic_write_bytes(out_dir / name, data)
        entries.append({"prompt": prompt, "seed": seed, "steps": len(samples.timesteps), "cfg": samples.cfg,
                        "file": name, "row": i})
    atomic_write_bytes(out_dir / "grid.png", grid_png(samples.pixels, samples.prompts, samples.seeds))
    atomic_write_bytes(out_dir / "latents.safetensors",
                       save({"latents": samples.latents.contiguous()}, metadata={"format": "lrm-samples"}))
    index = {**settings, "timesteps": samples.timesteps, "latent_shape": list(samples.latents.shape[1:]),
             "latents": "latents.safetensors", "grid": "grid.png", "samples": entries}
    atomic_write_json(out_dir / "index.json", index, strict=True)
    return index
