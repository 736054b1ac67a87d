"""Procedural captioned clips: the embedded default data set (no files, no downloads).

Clip `index` of a `ProceduralConfig` is rendered from a numpy Generator seeded with
(config.seed, index), so any clip is reproducible on its own and the set is endless. A clip holds
one or more coloured shapes (static, moving in a direction, or shaking) over a background (plain,
gradient, stripes, checkers or a noise texture), then quality perturbations: gaussian blur, additive
noise, per-frame brightness flicker and JPEG artifacts. The mix is chosen so that every weight-free
reward (JPEG size, sharpness, colorfulness, BRISQUE/NIQE, temporal flicker, dynamic degree, motion
smoothness, prompt colour) spreads over a wide range. Captions are built from the attributes, with
colour words from PALETTE, the main shape's colour first (the prompt-color reward reads the first).

WORLDS names variants of that mix. "full" (the default) is all of it, for fitting surrogates of quality
rewards. "simple" keeps one medium or large shape over a plain or gradient background, with no blur, noise,
flicker or JPEG: what a teacher small enough to train on a CPU in minutes can learn to draw, shape included
(lrm.generators.embedded; docs/teacher.md has the measurements). "blocks" is the simple world with each object
centred on the 8-px grid of the dct codec's blocks at a fixed radius per size word, so an outline always cuts
its blocks the same way in a still image (a teacher variant of benchmarks/teacher.py).

    clips = ProceduralClips(ProceduralConfig(seed=0, frames=8, size=64), count=1000)
    clip = clips[3]   # Clip: pixels (8, 3, 64, 64) float32 in [0, 1], caption, attributes, group
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
from PIL import Image

from lrm.datasets.clip import Clip

# sRGB (0-255) of each colour word used in captions.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "orange": (245, 130, 25),
    "yellow": (240, 215, 40),
    "green": (45, 160, 60),
    "blue": (35, 85, 205),
    "purple": (130, 55, 170),
    "pink": (245, 150, 190),
    "brown": (130, 80, 35),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
SIZES = {"small": 0.10, "medium": 0.17, "large": 0.26}  # shape radius as a fraction of the short side
BACKGROUNDS = {"flat": "plain", "gradient": "gradient", "stripes": "striped", "checker": "checkered",
               "texture": "textured"}  # kind -> caption adjective
DIRECTIONS = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up-left": (-0.7071, -0.7071), "up-right": (0.7071, -0.7071),
    "down-left": (-0.7071, 0.7071), "down-right": (0.7071, 0.7071),
}  # (dx, dy) unit vectors in image coordinates (y points down)


@dataclass(frozen=True)
class ProceduralConfig:
    seed: int = 0  # clip i is drawn from np.random.default_rng((seed, i))
    frames: int = 8  # frames per clip; 1 renders still images
    size: int | tuple[int, int] = 64  # output (H, W) in pixels; an int means square
    max_shapes: int = 2  # each clip holds 1..max_shapes shapes (at most 4), uniformly
    static_probability: float = 0.3  # share of clips whose shapes do not move
    shaking_probability: float = 0.15  # share of clips whose shapes jump randomly (jerky motion)
    max_speed: float = 0.06  # fastest linear motion, in short sides per frame
    blur_probability: float = 0.35  # share of clips blurred with a gaussian
    max_blur_sigma: float = 3.0  # strongest blur, in pixels at a 64 px short side (scales with size)
    noise_probability: float = 0.35  # share of clips with additive gaussian noise
    max_noise_std: float = 0.2  # strongest noise standard deviation, in [0, 1] pixel units
    flicker_probability: float = 0.25  # share of video clips with per-frame brightness jitter
    max_flicker: float = 0.15  # strongest per-frame brightness offset (std, [0, 1] pixel units)
    jpeg_probability: float = 0.35  # share of clips passed through JPEG
    jpeg_quality: tuple[int, int] = (5, 95)  # PIL quality range for JPEG artifacts, inclusive
    sizes: tuple[str, ...] = tuple(SIZES)  # size words a shape may take
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)  # background kinds a clip may take
    grid: int = 0  # shapes' mid-clip centres on multiples of this many pixels (8: the dct blocks); 0: anywhere.
    # Moving shapes leave the grid between their mid-clip and other frames.
    radius_jitter: float = 0.15  # a shape's radius is its size's times uniform(1 - jitter, 1 + jitter)

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"ProceduralConfig.frames must be >= 1, got {self.frames}")
        h, w = self.hw
        if h < 16 or w < 16:
            raise ValueError(f"ProceduralConfig.size must be at least 16 px, got {self.size!r}")
        if not 1 <= self.max_shapes <= 4:
            raise ValueError(f"ProceduralConfig.max_shapes must be in 1..4, got {self.max_shapes}")
        probabilities = ("static_probability", "shaking_probability", "blur_probability", "noise_probability",
                         "flicker_probability", "jpeg_probability")
        for name in probabilities:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ProceduralConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.static_probability + self.shaking_probability > 1.0:
            raise ValueError("ProceduralConfig: static_probability + shaking_probability must be <= 1")
        for name, allowed in (("sizes", SIZES), ("backgrounds", BACKGROUNDS)):
            chosen = getattr(self, name)
            if not chosen or any(c not in allowed for c in chosen):
                raise ValueError(f"ProceduralConfig.{name} must be a non-empty subset of {', '.join(allowed)}, "
                                 f"got {chosen!r}")
        if self.grid < 0 or not 0.0 <= self.radius_jitter < 1.0:
            raise ValueError(f"ProceduralConfig: grid must be >= 0 and radius_jitter in [0, 1), got {self.grid}, "
                             f"{self.radius_jitter}")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 95:
            raise ValueError(f"ProceduralConfig.jpeg_quality must satisfy 1 <= low <= high <= 95, got {(lo, hi)}")

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))


# Named variants of the clip mix: ProceduralConfig fields that differ from its defaults.
WORLDS: dict[str, dict] = {
    "full": {},
    "simple": {"max_shapes": 1, "sizes": ("medium", "large"), "backgrounds": ("flat", "gradient"),
               "blur_probability": 0.0, "noise_probability": 0.0, "flicker_probability": 0.0,
               "jpeg_probability": 0.0},
    "blocks": {"max_shapes": 1, "sizes": ("medium", "large"), "backgrounds": ("flat", "gradient"),
               "blur_probability": 0.0, "noise_probability": 0.0, "flicker_probability": 0.0,
               "jpeg_probability": 0.0, "grid": 8, "radius_jitter": 0.0},
}


def world_config(world: str = "full", **fields) -> ProceduralConfig:
    """ProceduralConfig of the named world (WORLDS), with `fields` (seed, frames, size, ...) on top."""
    if world not in WORLDS:
        raise ValueError(f"unknown procedural world {world!r}; choose one of {', '.join(WORLDS)}")
    return ProceduralConfig(**{**WORLDS[world], **fields})


class ProceduralClips(Sequence):
    """`count` procedural clips starting at clip `start` (disjoint ranges give disjoint sets)."""

    def __init__(self, config: ProceduralConfig, count: int, start: int = 0):
        if count < 0 or start < 0:
            raise ValueError(f"count and start must be >= 0, got count={count}, start={start}")
        self.config = config
        self.count = count
        self.start = start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Clip:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"clip {i} out of range for {self.count} procedural clips")
        return make_clip(self.config, self.start + i)


def make_clip(config: ProceduralConfig, index: int) -> Clip:
    """Render clip `index` of the procedural set defined by `config` (deterministic)."""
    if index < 0:
        raise ValueError(f"procedural clip index must be >= 0, got {index}")
    rng = np.random.default_rng((config.seed, index))
    attributes = sample_attributes(config, rng)
    frames = render(attributes, config, rng)  # (T, H, W, 3) uint8
    source = f"procedural:seed={config.seed}:index={index}"
    return Clip(
        pixels=torch.from_numpy(_to_unit_float(frames)),
        source=source,
        group=source,
        frame_indices=tuple(range(config.frames)),
        num_frames=config.frames,
        caption=caption(attributes),
        attributes=attributes,
    )


# ---------------------------------------------------------------------------------------------
# Attributes and captions
# ---------------------------------------------------------------------------------------------


def sample_attributes(config: ProceduralConfig, rng: np.random.Generator) -> dict:
    """Every random choice of a clip, as JSON-ready values (the caption is built from these)."""
    h, w = config.hw
    short = min(h, w)
    frames = config.frames
    count = int(rng.integers(1, config.max_shapes + 1))
    colors = rng.choice(list(PALETTE), size=count + 1, replace=False)  # shapes first, background last
    draw = rng.random()
    if frames == 1 or draw < config.static_probability:
        motion = "static"
    elif draw < config.static_probability + config.shaking_probability:
        motion = "shaking"
    else:
        motion = "linear"
    shapes = []
    for color in colors[:count]:
        size_word = str(rng.choice(list(config.sizes)))
        direction = str(rng.choice(list(DIRECTIONS)))
        speed = float(rng.uniform(0.1, 1.0) * config.max_speed) if motion == "linear" else 0.0
        shake = float(rng.uniform(0.02, 0.08)) if motion == "shaking" else 0.0
        shapes.append({
            "shape": str(rng.choice(SHAPES)),
            "color": str(color),
            "size": size_word,
            "radius": float(SIZES[size_word] * short * rng.uniform(1 - config.radius_jitter, 1 + config.radius_jitter)),
            "center": [_on_grid(rng.uniform(0.25, 0.75) * w, config.grid),
                       _on_grid(rng.uniform(0.25, 0.75) * h, config.grid)],  # mid-clip (x, y)
            "motion": motion,
            "direction": direction if motion == "linear" else None,
            "speed": speed,  # short sides per frame
            "shake": shake,  # std of per-frame jumps, in short sides
        })
    background = {
        "kind": str(rng.choice(list(config.backgrounds))),
        "color": str(colors[count]),
        "angle": float(rng.uniform(0, np.pi)),  # gradient / stripe direction, radians
        "period": float(rng.uniform(0.06, 0.3) * short),  # stripe / checker period, pixels
        "texture_scale": int(rng.choice([1, 2, 4, 8])),  # texture noise cell, pixels at 64 px
        "texture_amplitude": float(rng.uniform(0.1, 0.5)),
    }
    # Each perturbation is drawn on its own: "is it applied?" first, then its strength.
    blur = rng.uniform(0.5, config.max_blur_sigma) * short / 64 if rng.random() < config.blur_probability else 0.0
    noise = rng.uniform(0.01, config.max_noise_std) if rng.random() < config.noise_probability else 0.0
    flicker = rng.uniform(0.02, config.max_flicker) if frames > 1 and rng.random() < config.flicker_probability else 0.0
    lo, hi = config.jpeg_quality
    quality = int(rng.integers(lo, hi + 1)) if rng.random() < config.jpeg_probability else None
    return {
        "shapes": shapes,
        "background": background,
        "blur_sigma": float(blur),  # gaussian sigma in pixels; 0: sharp
        "noise_std": float(noise),  # additive gaussian noise std; 0: clean
        "flicker": float(flicker),  # per-frame brightness offset std; 0: steady
        "jpeg_quality": quality,  # PIL JPEG quality; None: never compressed
        "frames": frames,
        "size": [h, w],
    }


def _on_grid(position: float, step: int) -> float:
    """position rounded to the nearest multiple of step (pixels); step 0: unchanged."""
    return float(round(position / step) * step) if step > 0 else float(position)


def caption(attributes: dict) -> str:
    """e.g. "a small red circle moving left quickly over a blue gradient background, blurry"."""
    still = attributes["frames"] == 1
    objects = []
    for s in attributes["shapes"]:
        phrase = f"a {s['size']} {s['color']} {s['shape']}"  # sizes all start with a consonant
        if not still:
            phrase += " " + _motion_phrase(s)
        objects.append(phrase)
    things = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
    bg = attributes["background"]
    article = "an" if bg["color"][0] in "aeiou" else "a"
    text = f"{things} over {article} {bg['color']} {BACKGROUNDS[bg['kind']]} background"
    return ", ".join([text, *_quality_words(attributes)])


def _motion_phrase(shape: dict) -> str:
    if shape["motion"] == "static":
        return "standing still"
    if shape["motion"] == "shaking":
        return "shaking"
    pace = " slowly" if shape["speed"] < 0.02 else (" quickly" if shape["speed"] > 0.04 else "")
    return f"moving {shape['direction']}{pace}"


def _quality_words(attributes: dict) -> list[str]:
    words = []
    scale = min(attributes["size"]) / 64
    if attributes["blur_sigma"] > 0:
        words.append("blurry" if attributes["blur_sigma"] > 1.2 * scale else "slightly blurry")
    if attributes["noise_std"] > 0:
        words.append("noisy" if attributes["noise_std"] > 0.06 else "slightly noisy")
    if attributes["flicker"] > 0:
        words.append("flickering")
    quality = attributes["jpeg_quality"]
    if quality is not None and quality < 60:
        words.append("with strong JPEG artifacts" if quality < 25 else "with JPEG artifacts")
    return words


# ---------------------------------------------------------------------------------------------
# Rendering (vectorised over frames and pixels)
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x (1, 1, W) and y (1, H, 1), float32."""
    ys = np.arange(h, dtype=np.float32) + 0.5
    xs = np.arange(w, dtype=np.float32) + 0.5
    return xs[None, None, :], ys[None, :, None]


def render(attributes: dict, config: ProceduralConfig, rng: np.random.Generator) -> np.ndarray:
    """Attributes -> frames (T, H, W, 3) uint8. `rng` supplies the per-pixel noise draws."""
    h, w = config.hw
    t = config.frames
    frames = np.broadcast_to(_background(attributes["background"], h, w, rng), (t, h, w, 3)).copy()
    for shape in attributes["shapes"]:
        coverage = _coverage(shape, _trajectory(shape, t, min(h, w), rng), h, w)[..., None]  # (T, H, W, 1)
        color = np.asarray(PALETTE[shape["color"]], dtype=np.float32) / 255
        frames += coverage * (color - frames)
    if attributes["blur_sigma"] > 0:
        stacked = frames.transpose(1, 2, 0, 3).reshape(h, w, t * 3)  # (H, W, T*3): one cv2 call
        blurred = cv2.GaussianBlur(stacked, (0, 0), attributes["blur_sigma"], borderType=cv2.BORDER_REFLECT)
        frames = blurred.reshape(h, w, t, 3).transpose(2, 0, 1, 3)
    if attributes["noise_std"] > 0:
        frames = frames + attributes["noise_std"] * rng.standard_normal(frames.shape, dtype=np.float32)
    if attributes["flicker"] > 0:
        frames = frames + attributes["flicker"] * rng.standard_normal((t, 1, 1, 1), dtype=np.float32)
    out = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)
    if attributes["jpeg_quality"] is not None:
        out = np.stack([_jpeg_round_trip(frame, attributes["jpeg_quality"]) for frame in out])
    return np.ascontiguousarray(out)


def _to_unit_float(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 1]; numpy, so no torch thread pool spins up."""
    pixels = frames.transpose(0, 3, 1, 2).astype(np.float32)
    pixels /= np.float32(255)
    return pixels


def _shade(rgb: np.ndarray) -> np.ndarray:
    """A lighter (for dark colours) or darker version of a colour, same name in a caption."""
    target = 1.0 if rgb.mean() < 0.5 else 0.0
    return rgb + 0.55 * (target - rgb)


def _background(bg: dict, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    x, y = _grid(h, w)
    x, y = x[0], y[0]  # (1, W), (H, 1)
    base = np.asarray(PALETTE[bg["color"]], dtype=np.float32) / 255
    shade = _shade(base)
    along = x * np.cos(bg["angle"]) + y * np.sin(bg["angle"])  # (H, W) distance along the direction
    if bg["kind"] == "flat":
        weight = np.zeros((h, w), dtype=np.float32)
    elif bg["kind"] == "gradient":
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif bg["kind"] == "stripes":
        weight = ((along / bg["period"]) % 1.0 < 0.5).astype(np.float32)
    elif bg["kind"] == "checker":
        cell = max(bg["period"] / 2, 1.0)
        weight = ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
    else:  # texture: smooth-to-fine luminance noise around the base colour
        cell = max(1, round(bg["texture_scale"] * min(h, w) / 64))
        coarse = rng.random((-(-h // cell) + 1, -(-w // cell) + 1), dtype=np.float32)
        noise = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC if cell > 1 else cv2.INTER_NEAREST)
        plane = base[None, None, :] + bg["texture_amplitude"] * (noise[..., None] - 0.5)
        return np.clip(plane, 0, 1).astype(np.float32)
    weight = np.broadcast_to(weight, (h, w))[..., None]
    return (base + weight * (shade - base)).astype(np.float32)


def _trajectory(shape: dict, frames: int, short: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 2) shape centres (x, y) in pixels, centred on the clip's middle frame."""
    center = np.asarray(shape["center"], dtype=np.float32)
    steps = np.arange(frames, dtype=np.float32) - (frames - 1) / 2  # (T,)
    if shape["motion"] == "linear":
        velocity = np.asarray(DIRECTIONS[shape["direction"]], dtype=np.float32) * shape["speed"] * short
        return center + steps[:, None] * velocity
    if shape["motion"] == "shaking":
        return center + shape["shake"] * short * rng.standard_normal((frames, 2), dtype=np.float32)
    return np.broadcast_to(center, (frames, 2))


def _coverage(shape: dict, centers: np.ndarray, h: int, w: int) -> np.ndarray:
    """(T, H, W) float32 in [0, 1]: area of each pixel inside the shape (1 px antialiased edge)."""
    x, y = _grid(h, w)
    dx = x - centers[:, 0, None, None]  # (T, 1, W)
    dy = y - centers[:, 1, None, None]  # (T, H, 1)
    r = shape["radius"]
    kind = shape["shape"]
    if kind == "circle":
        inside = r - np.sqrt(dx**2 + dy**2)
    elif kind == "square":
        inside = 0.85 * r - np.maximum(np.abs(dx), np.abs(dy))
    elif kind == "diamond":
        inside = (r - (np.abs(dx) + np.abs(dy))) / np.sqrt(2)
    elif kind == "triangle":  # equilateral, pointing up, circumradius r (edges at distance r / 2)
        edges = np.maximum(dy, np.maximum(0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy))
        inside = 0.5 * r - edges
    elif kind == "cross":
        bar = r / 3
        inside = np.maximum(np.minimum(r - np.abs(dx), bar - np.abs(dy)), np.minimum(bar - np.abs(dx), r - np.abs(dy)))
    elif kind == "ring":
        distance = np.sqrt(dx**2 + dy**2)
        inside = np.minimum(r - distance, distance - 0.55 * r)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
    return np.clip(np.broadcast_to(inside, (len(centers), h, w)) + 0.5, 0, 1).astype(np.float32)


def _jpeg_round_trip(frame: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same frame after JPEG encoding at `quality` (PIL / libjpeg)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return np.asarray(img.convert("RGB"))
