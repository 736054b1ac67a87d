"""The embedded-default teachers: lrm's DiT trained on procedural captioned clips in the latent space of lrm's
own autoencoder (lrm.codecs.pae).

    run = embedded_teacher()              # image teacher; trains it (~13 min on a 2-core CPU) if not cached
    model = load_denoiser(run / "model")
    run = embedded_teacher(video=True)    # 8-frame clips with motion, started from the image teacher

Each entry of EMBEDDED fixes the store (procedural clips of the "simple" world, pae codec, all-MiniLM-L6-v2
tokens) and the training settings, chosen for the 15-minute budget on this project's 2-core CPU. The simple
world (lrm.datasets.procedural.WORLDS: one medium or large shape over a plain or gradient background, no blur,
noise, flicker or JPEG) is what a teacher this small learns in minutes (colour alignment 0.92 against 0.56 on
the full world at the same settings, docs/teacher.md). The latent space is pae, an autoencoder lrm trains on
that world first (cached in $LRM_CACHE/codecs, shared by both teachers) whose tokens are aligned to HOG shape
descriptors and their mean colour: in it the teacher draws the shape its caption names (0.60 of samples at
CFG 4), which it did not in the weight-free dct space (0.20; docs/teacher.md, "The latent space: lrm's own
autoencoder (pae)"). The image teacher is dit-s1 (patch 1: one token per 8 x 8 pixels). The video teacher is
the same dit-s1 started from the image teacher
(lrm.generators.dit.inflate: the image model frame by frame, temporal attention behind a zero gate), so it
inherits the image teacher's binding and spends its budget on time; its cache key includes the image teacher's
run name, and training it trains the image teacher first when that is missing.
Measured end to end by benchmarks/teacher.py (docs/teacher.md has the tables and the machine's load).

The run folder lives under the cache, `$LRM_CACHE/teachers/<name>` (default ~/.cache/lrm/teachers), with
<name> = "<kind>-<preset>-<size>px-<hash of the store and training settings>", so that changing a
setting trains a new teacher instead of reusing a stale one; the store goes to
`$LRM_CACHE/stores/<kind>-<size>px-<hash of its settings>` (its settings include the autoencoder's), shared by
teachers of other training settings. A run that was interrupted resumes from its newest checkpoint (the
autoencoder's training from its own, store encoding per shard).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lrm.cache import cache_root, settings_digest
from lrm.configs import EncodeConfig
from lrm.configs import TeacherConfig, training_settings

TEXT_ENCODER = "minilm-l6-v2"  # the embedded default's text encoder (docs/teacher.md)
TEXT_LENGTH = 32  # tokens kept per caption: procedural captions take at most 29 MiniLM tokens
CODEC = "pae"  # lrm's own autoencoder (lrm.codecs.pae), trained on the simple world on first use


@dataclass(frozen=True)
class EmbeddedTeacher:
    store: EncodeConfig  # the procedural store it trains on
    teacher: TeacherConfig  # its training settings
    from_image_teacher: bool = False  # training starts from the embedded image teacher, inflated to clips


EMBEDDED: dict[str, EmbeddedTeacher] = {
    # 2,048 images of the simple world at 64 px (8x8x16 latents); dit-s1 (one token per 8x8 pixels), 2,250 steps
    # of 32 = 35 epochs
    "image": EmbeddedTeacher(
        EncodeConfig("procedural:2048:simple", codec=CODEC, frames=1, size=64, text=TEXT_ENCODER, text_length=TEXT_LENGTH),
        TeacherConfig()),
    # 1,024 clips of the simple world, 8 frames at 64 px (8x8x8x16 latents), moving shapes; dit-s1 started from the
    # image teacher (inflated: lrm.generators.dit.inflate), 540 steps of 8
    "video": EmbeddedTeacher(
        EncodeConfig("procedural:1024:simple", codec=CODEC, frames=8, size=64, text=TEXT_ENCODER, text_length=TEXT_LENGTH),
        TeacherConfig(steps=540, batch_size=8, checkpoint_every=60), from_image_teacher=True),
}


def _store_settings(entry: EmbeddedTeacher) -> dict:
    settings = json.loads(json.dumps(asdict(replace(entry.store, device="cpu"))))  # the device changes no latent
    if entry.store.codec == "pae":  # its autoencoder's settings, so that another autoencoder gives another store
        from lrm.codecs.pae import PAE_DEFAULT

        settings["codec_weights"] = PAE_DEFAULT.folder_name()
    return settings


def embedded_run_dir(video: bool = False) -> Path:
    """$LRM_CACHE/teachers/<kind>-<preset>-<size>px-<8 hex of the store and training settings, and of the
    teacher it starts from>."""
    kind = "video" if video else "image"
    entry = EMBEDDED[kind]
    settings = {"store": _store_settings(entry), "teacher": training_settings(entry.teacher)}
    if entry.from_image_teacher:  # its run name carries that teacher's own settings
        settings["starts_from"] = embedded_run_dir(video=False).name
    return cache_root() / "teachers" / f"{kind}-{entry.teacher.preset}-{entry.store.size}px-{settings_digest(settings)}"


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
    return cache_root() / "stores" / f"{kind}-{entry.store.size}px-{settings_digest(_store_settings(entry))}"


def embedded_store(video: bool = False, progress: bool = False, device: str = "cpu"):
    """The embedded default's procedural store (a LatentStore), encoded on first use (resumes per shard)."""
    from lrm.datasets.encoding import encode

    entry = EMBEDDED["video" if video else "image"]
    if entry.store.codec == "pae":  # trains lrm's autoencoder first when it is not cached (~4 min), with its bar
        from lrm.codecs.pae import resolve_folder

        resolve_folder(None, train_if_missing=True, progress=progress)
    return encode(replace(entry.store, device=device), embedded_store_dir(video), progress=progress)


def check_autoencoder(run: Path, store: Path) -> None:
    """Refuse, naming what to delete, a finished embedded teacher whose pae autoencoder is gone or was retrained
    since (its cache name keys the autoencoder's settings, not its bits; a retraining can differ in them)."""
    from lrm.codecs.pae import MODEL_FILE, default_folder, is_trained
    from lrm.io import read_json
    from lrm.weights import sha256_of

    folder, fix = default_folder(), f"delete {run} and {store} to train the teacher again on the autoencoder there"
    if not is_trained(folder):
        raise FileNotFoundError(f"the embedded teacher {run} works in the pae autoencoder {folder}, which is gone; "
                                f"{fix.replace(' on the autoencoder there', ' (the autoencoder first)')}")
    recorded = read_json(run / "model" / "config.json", f"delete {run} to retrain it").get("codec_settings") or {}
    if recorded.get("weights_sha256") != sha256_of(folder / MODEL_FILE)[:16]:
        raise ValueError(f"the embedded teacher {run} was trained on other weights of {folder.name} than the ones "
                         f"cached now (the autoencoder was retrained); {fix}")


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
        if entry.store.codec == "pae":
            check_autoencoder(run, embedded_store_dir(video))
        return run
    if not train_if_missing:
        flag = " --video" if video else ""
        raise FileNotFoundError(f"the embedded {kind} teacher is not trained yet ({run}); train it with "
                                f"`lrm teacher train{flag}` (~13 minutes on a 2-core CPU for images, its autoencoder "
                                "included, ~5 more for --video)")
    if entry.from_image_teacher:
        embedded_teacher(video=False, progress=progress, device=device)
    store = embedded_store(video, progress, device)
    train_teacher(store, replace(config, device=device), run, resume=True, progress=progress)
    return run
