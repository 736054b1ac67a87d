"""The embedded-default teachers: lrm's DiT trained on procedural captioned clips in the dct latent space.

    run = embedded_teacher()              # image teacher; trains it (~11 min on a 2-core CPU) if not cached
    model = load_denoiser(run / "model")
    run = embedded_teacher(video=True)    # 8-frame clips with motion, started from the image teacher

Each entry of EMBEDDED fixes the store (procedural clips of the "simple" world, dct codec, all-MiniLM-L6-v2
tokens) and the training settings, chosen for the 15-minute budget on this project's 2-core CPU. The simple
world (lrm.datasets.procedural.WORLDS: one medium or large shape over a plain or gradient background, no blur,
noise, flicker or JPEG) is what a teacher this small learns in minutes (colour alignment 0.92 against 0.56 on
the full world at the same settings, docs/teacher.md). The image teacher is dit-s1 (patch 1: one token per 8x8
dct block), which binds object colours where patch 2 did not; the named shapes it draws rarely (0.2 against
0.8 for real images), a limit of the dct latent space, which the same teacher in taef2 does not have (0.82). The
video teacher is the same dit-s1 started from the image teacher (lrm.generators.dit.inflate: the image model
frame by frame, temporal attention behind a zero gate), so it inherits the image teacher's binding and spends
its budget on time; its cache key includes the image teacher's run name, and training it trains the image
teacher first when that is missing.
Measured end to end by benchmarks/teacher.py (docs/teacher.md has the tables and the machine's load).

The run folder lives under the cache, `$LRM_CACHE/teachers/<name>` (default ~/.cache/lrm/teachers), with
<name> = "<kind>-<preset>-<size>px-<hash of the store and training settings>", so that changing a
setting trains a new teacher instead of reusing a stale one; the store goes to
`$LRM_CACHE/stores/<kind>-<size>px-<hash of its settings>`, shared by teachers of other training settings.
A run that was interrupted resumes from its newest checkpoint (store encoding resumes per shard).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lrm.configs import EncodeConfig
from lrm.configs import TeacherConfig, training_settings

CACHE_ENV = "LRM_CACHE"
TEXT_ENCODER = "minilm-l6-v2"  # the embedded default's text encoder (docs/teacher.md)
TEXT_LENGTH = 32  # tokens kept per caption: procedural captions take at most 29 MiniLM tokens


@dataclass(frozen=True)
class EmbeddedTeacher:
    store: EncodeConfig  # the procedural store it trains on
    teacher: TeacherConfig  # its training settings
    from_image_teacher: bool = False  # training starts from the embedded image teacher, inflated to clips


EMBEDDED: dict[str, EmbeddedTeacher] = {
    # 2,048 images of the simple world at 64 px (8x8x32 latents): 38 s to encode; dit-s1 (one token per 8x8 dct
    # block), 2,250 steps of 32 = 35 epochs
    "image": EmbeddedTeacher(
        EncodeConfig("procedural:2048:simple", codec="dct", frames=1, size=64, text=TEXT_ENCODER, text_length=TEXT_LENGTH),
        TeacherConfig()),
    # 1,024 clips of the simple world, 8 frames at 64 px (8x8x8x32 latents), moving shapes; dit-s1 started from the
    # image teacher (inflated: lrm.generators.dit.inflate), 540 steps of 8
    "video": EmbeddedTeacher(
        EncodeConfig("procedural:1024:simple", codec="dct", frames=8, size=64, text=TEXT_ENCODER, text_length=TEXT_LENGTH),
        TeacherConfig(steps=540, batch_size=8, checkpoint_every=60), from_image_teacher=True),
}


def cache_root() -> Path:
    """$LRM_CACHE, else ~/.cache/lrm."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/lrm").expanduser()


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _store_settings(entry: EmbeddedTeacher) -> dict:
    return json.loads(json.dumps(asdict(replace(entry.store, device="cpu"))))  # the device changes no latent


def embedded_run_dir(video: bool = False) -> Path:
    """$LRM_CACHE/teachers/<kind>-<preset>-<size>px-<8 hex of the store and training settings, and of the
    teacher it starts from>."""
    kind = "video" if video else "image"
    entry = EMBEDDED[kind]
    settings = {"store": _store_settings(entry), "teacher": training_settings(entry.teacher)}
    if entry.from_image_teacher:  # its run name carries that teacher's own settings
        settings["starts_from"] = embedded_run_dir(video=False).name
    return cache_root() / "teachers" / f"{kind}-{entry.teacher.preset}-{entry.store.size}px-{_digest(settings)}"


def embedded_config(video: bool = False) -> TeacherConfig:
    """The embedded teacher's training settings, `init` set to the model folder of the teacher it starts from."""
    entry = EMBEDDED["video" if video else "image"]
    if not entry.from_image_teacher:
        return entry.teacher
    return replace(entry.teacher, init=str(embedded_run_dir(video=False) / "model"))


def embedded_store_dir(video: bool = False) -> Path:
    """$LRM_CACHE/stores/<kind>-<size>px-<8 hex of the store settings>."""
    kind = "video" if video else "image"
    entry = EMBEDDED[kind]
    return cache_root() / "stores" / f"{kind}-{entry.store.size}px-{_digest(_store_settings(entry))}"


def embedded_store(video: bool = False, progress: bool = False, device: str = "cpu"):
    """The embedded default's procedural store (a LatentStore), encoded on first use (resumes per shard)."""
    from lrm.datasets.encoding import encode

    entry = EMBEDDED["video" if video else "image"]
    return encode(replace(entry.store, device=device), embedded_store_dir(video), progress=progress)


def embedded_teacher(video: bool = False, train_if_missing: bool = True, progress: bool = False,
                     device: str = "cpu") -> Path:
    """The run folder of the embedded-default teacher (its model in RUN/model), training or resuming it
    when it is not finished; with train_if_missing=False a missing teacher is a FileNotFoundError naming
    the command that trains it."""
    from lrm.generators.training import is_finished, train_teacher

    kind = "video" if video else "image"
    entry = EMBEDDED[kind]
    run, config = embedded_run_dir(video), embedded_config(video)
    if is_finished(run, config):
        return run
    if not train_if_missing:
        flag = " --video" if video else ""
        raise FileNotFoundError(f"the embedded {kind} teacher is not trained yet ({run}); train it with "
                                f"`lrm teacher train{flag}` (~11 minutes on a 2-core CPU for images, ~5 more for --video)")
    if entry.from_image_teacher:
        embedded_teacher(video=False, progress=progress, device=device)
    store = embedded_store(video, progress, device)
    train_teacher(store, replace(config, device=device), run, resume=True, progress=progress)
    return run
