"""Open a generator run folder for sampling: RUN (holding model/) or RUN/model itself.

A generator run is what `lrm teacher train` (and the distillation trainer) writes: RUN/model/ in the
save_denoiser format (config.json + model.safetensors), and optionally RUN/config.json with the
resolved training config; EMA snapshots may sit in RUN/snapshots/step-N/. A diffusers student the
trainer exported (lrm.generators.diffusers_export: unet/ or transformer/, scheduler/, lrm.json) opens
the same way (kind "diffusers"): its lrm.json names the codec and the prompt encoder (the teacher
pipeline's text encoders) and holds the "extra" below. What sampling needs beyond the weights is read
from the denoiser's config.json (lrm.json) "extra", falling back to the trainer's config.json of the
run folder above it (RUN/config.json, found up to two levels above the denoiser folder):
- "latent_shape": [T, c, h, w] of the latents it was trained on (else pass the pixel size);
- "student_steps": the number of steps of a distilled few-step student (absent for a teacher);
- "procedural_world" (or "store", whose manifest says it): the procedural world it was trained on, whose
  captions `lrm evaluate` and the tuning monitor prompt it with.

A folder of another kind (a surrogate run of `lrm fit`, whose model/config.json is an
"lrm-surrogate") is refused with a message saying what it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lrm.generators import diffusers_export
from lrm.generators.io import CONFIG_NAME, FORMAT, load_denoiser, read_config

SURROGATE_FORMAT = "lrm-surrogate"  # lrm.models.surrogate.FORMAT, compared without importing the models
LRM, DIFFUSERS = "lrm", "diffusers"  # GeneratorRun.kind: lrm's DiT (save_denoiser), a diffusers export (lrm.json)
DENOISER_FOLDERS = ("unet", "transformer")  # where a diffusers folder keeps its denoiser


@dataclass(frozen=True)
class GeneratorRun:
    path: Path  # the folder the user named (RUN or RUN/model)
    model_dir: Path  # the denoiser folder (save_denoiser format, or a diffusers export)
    config: dict  # model_dir/config.json (lrm.json of a diffusers export)
    run_config: dict  # RUN/config.json of the trainer ({} when absent)
    kind: str = LRM  # LRM or DIFFUSERS

    @property
    def in_channels(self) -> int:
        """c of the latents (T, c, h, w) it denoises."""
        return int(self.config["in_channels"] if self.kind == DIFFUSERS else self.config["dimensions"]["in_channels"])

    @property
    def codec_settings(self) -> dict | None:
        """The latent space its samples decode in (Codec.settings()); None when unrecorded."""
        return self.config.get("codec_settings")

    @property
    def run_dir(self) -> Path:
        """RUN: where outputs go by default (the folder above model/, or a bare denoiser folder itself)."""
        return self.model_dir.parent if self.model_dir.name == "model" else self.model_dir

    def setting(self, key: str):
        """A sampling setting from the denoiser's "extra", else from the trainer's RUN/config.json (None if absent)."""
        extra = self.config.get("extra") or {}
        return extra[key] if key in extra else self.run_config.get(key)

    @property
    def student_steps(self) -> int | None:
        """Steps of a distilled few-step student; None for a teacher."""
        steps = self.setting("student_steps")
        return None if steps is None else int(steps)

    @property
    def procedural_world(self) -> str:
        """The procedural world (lrm.datasets.procedural.WORLDS) of the clips it was trained on, from its recorded
        setting or its store's manifest; "full" when neither says (media, or a store that is gone)."""
        world = self.setting("procedural_world")
        store = self.store_path()
        if world is None and store is not None:
            source = _read_json(store / "manifest.json").get("source") or {}
            world = source.get("world") if source.get("kind") == "procedural" else None
        return world or "full"

    def training_captions(self, _depth: int = 0) -> set[str]:
        """Captions of the stores this model trained on: its run's recorded "store" and, for a run started from
        another (a tuned student's "from"), that run's; empty where none is recorded, found or readable."""
        from lrm.datasets.store import LatentStore, StoreError

        captions: set[str] = set()
        store = self.store_path()
        if store is not None:
            try:
                captions |= set(LatentStore.open(store).prompts or ())
            except StoreError:  # damaged or partly deleted: nothing to hold out
                pass
        start = self._recorded_path("from", "config.json")
        if start is not None and _depth < 4:
            try:
                captions |= open_generator_run(start).training_captions(_depth + 1)
            except (OSError, ValueError):  # no longer a generator run: nothing more to hold out
                pass
        return captions

    def store_path(self) -> Path | None:
        """The latent store the run trained on (its recorded "store"), as `_recorded_path` finds it; None when none
        is recorded or found."""
        return self._recorded_path("store", "manifest.json")

    def _recorded_path(self, key: str, marker: str) -> Path | None:
        """A folder the run recorded under `key` that holds `marker`: as recorded when absolute; a relative one (as
        typed in the folder the command ran in) below the nearest of the run folder's ancestors that has it, else
        below the current folder. Where that is gone, the recorded path's tails (longest first) below the run's
        ancestors: a folder tree moved or copied whole (a copied $LRM_CACHE: teachers/T recorded
        /old/cache/stores/S, found at /new/cache/stores/S). None when none exists."""
        recorded = self.setting(key) if key == "store" else self.run_config.get(key)
        if recorded is None:
            return None
        path = Path(recorded)
        ancestors = list(self.run_dir.resolve().parents)
        parts = path.parts[1:] if path.is_absolute() else path.parts
        # the whole relative path first; at least the last two parts (a bare name like "store" could be another's)
        tails = [Path(*parts[-k:]) for k in range(len(parts), 1, -1)]
        candidates = ([path] if path.is_absolute() else [*(a / path for a in ancestors), path]) + \
            [a / tail for tail in tails for a in ancestors]
        return next((c for c in candidates if (c / marker).exists()), None)

    def latent_shape(self, size: int | None = None, frames: int | None = None) -> tuple[int, int, int, int]:
        """(T, c, h, w) to sample: from `size` (pixels, square) and `frames` when given, else the recorded
        "latent_shape"."""
        codec = self.codec_settings or {}
        recorded = self.setting("latent_shape")
        if frames is not None and frames > 1 and self.kind != DIFFUSERS and self.config["dimensions"]["frames"] == 1:
            raise ValueError(f"--frames {frames}: {self.run_dir} is an image model, which would draw each frame as an "
                             "independent image, not a clip; sample a video run (`lrm teacher train --video`)")
        if size is None and recorded is None:
            config_file = diffusers_export.PROVENANCE if self.kind == DIFFUSERS else CONFIG_NAME
            raise ValueError(f"{self.model_dir / config_file} records no latent_shape (extra.latent_shape); "
                             "pass the pixel size to sample at (--size)")
        if size is None:
            shape = tuple(int(n) for n in recorded)
            if frames is not None:
                shape = (_latent_frames(frames, codec), *shape[1:])
            return shape
        factor = int(codec.get("spatial_factor", 1))
        if size % factor or size < factor:
            raise ValueError(f"size {size} must be a positive multiple of the codec's spatial factor {factor}")
        default_frames = 1 if self.kind == DIFFUSERS else self.config["dimensions"]["frames"]
        t = _latent_frames(frames, codec) if frames is not None else (int(recorded[0]) if recorded else default_frames)
        return (t, self.in_channels, size // factor, size // factor)

    def load(self, map_location="cpu"):
        """The denoiser in eval mode on map_location; a diffusers export behind lrm's adapter, in the dtype its
        weights were exported in (lrm.json's options.dtype; float32 where an older lrm.json records none), its
        codec_settings and text_encoder_id restored from lrm.json (null_text is set by sample_run from the prompt
        encoder)."""
        if self.kind == DIFFUSERS:
            from lrm.generators.diffusers_adapters import load_diffusers_denoiser

            return load_diffusers_denoiser(str(self.model_dir)).to(map_location).eval()
        return load_denoiser(self.model_dir, map_location=map_location)


def _latent_frames(frames: int, codec: dict) -> int:
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    factor = int(codec.get("temporal_factor", 1))
    return frames if factor == 1 else 1 + (frames - 1) // factor


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return data if isinstance(data, dict) else {}


def open_generator_run(path: str | Path) -> GeneratorRun:
    """The generator run at `path` (RUN or RUN/model, of lrm's DiT or a diffusers export); refuses folders of
    another kind with the fix."""
    path = Path(path)
    fix = ("pass a run folder of `lrm teacher train` or `lrm distill` (it holds model/), its model/ folder, or a "
           f"diffusers student exported by lrm (unet/ or transformer/, scheduler/, {diffusers_export.PROVENANCE})")
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} not found; {fix}")
    model_dir = next((folder for folder in (path / "model", path)
                      if (folder / CONFIG_NAME).is_file() or (folder / diffusers_export.PROVENANCE).is_file()), path)
    if (model_dir / diffusers_export.PROVENANCE).is_file():
        return _open_diffusers_export(path, model_dir, fix)
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        if (path / "model_index.json").is_file() or any((path / f / CONFIG_NAME).is_file() for f in DENOISER_FOLDERS):
            raise ValueError(f"{path} is a diffusers pipeline folder without {diffusers_export.PROVENANCE}, so lrm "
                             "does not know its codec, prompt encoder and sampler; sample it with diffusers, or "
                             "distil it through lrm's library and pass the exported student (docs/distill.md)")
        raise FileNotFoundError(f"{path} holds no model/{CONFIG_NAME}, {CONFIG_NAME} nor "
                                f"{diffusers_export.PROVENANCE}; {fix}")
    kind = _read_json(config_path).get("format")
    if kind == SURROGATE_FORMAT:
        raise ValueError(f"{path} is a surrogate run (lrm fit), not a generator; {fix}")
    if kind != FORMAT:
        raise ValueError(f"{config_path} is not a saved denoiser (format {kind!r}, expected {FORMAT!r}); {fix}")
    config = read_config(model_dir)
    return GeneratorRun(path, model_dir, config, _trainer_config(model_dir))


def _open_diffusers_export(path: Path, model_dir: Path, fix: str) -> GeneratorRun:
    """A diffusers export, after checking its lrm.json, denoiser folder and scheduler config are there and that it
    records what sampling needs (the codec and the prompt encoder)."""
    where = model_dir / diffusers_export.PROVENANCE
    config = _read_json(where)
    if config.get("format") != diffusers_export.FORMAT:
        raise ValueError(f"{where} is not an lrm diffusers export (format {config.get('format')!r}, expected "
                         f"{diffusers_export.FORMAT!r}); {fix}")
    if not any((model_dir / folder / CONFIG_NAME).is_file() for folder in DENOISER_FOLDERS):
        raise FileNotFoundError(f"{model_dir} holds {diffusers_export.PROVENANCE} but neither unet/{CONFIG_NAME} nor "
                                f"transformer/{CONFIG_NAME}; export the student again (Distiller.export_student)")
    if not (model_dir / "scheduler" / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'scheduler' / 'scheduler_config.json'} is missing; copy the teacher "
                                "pipeline's scheduler/ folder there or export the student again")
    missing = [key for key in ("codec_settings", "text_encoder_id", "in_channels") if config.get(key) is None]
    if missing:
        raise ValueError(f"{where} records no {' nor '.join(missing)}, so its samples cannot be made and decoded; "
                         "export it again from a teacher loaded with lrm.generators.load_diffusers (the text encoder) "
                         "whose codec_settings were set (teacher.codec_settings = lrm.codecs.load("
                         "'diffusers:<pipeline>/vae').settings()), or add them to it")
    return GeneratorRun(path, model_dir, config, _trainer_config(model_dir), kind=DIFFUSERS)


def _trainer_config(model_dir: Path) -> dict:
    """The trainer's config.json nearest above a denoiser folder (RUN/model, RUN/snapshots/step-N), {} if none:
    the first one that is not itself a saved model (those carry a "format")."""
    for folder in (model_dir.parent, model_dir.parent.parent):
        path = folder / CONFIG_NAME
        if path.is_file():
            config = _read_json(path)
            if "format" not in config:
                return config
    return {}


def sample_run(run: GeneratorRun, model, prompts: list[str], seeds: list[int], latent_shape, *,
               steps: int | None = None, cfg: float | None = None, batch_size: int | None = None,
               progress: bool = False):
    """Samples of a run's model with the sampler the run calls for: a distilled student (run.student_steps set)
    samples few-step (default: its own steps, cfg 1), a teacher DDIM (default 50 steps, cfg 7.5).
    Returns (Samples, settings): settings name the sampler, steps and cfg used, for index.json / metrics.json."""
    from lrm.generators import sampling

    student = run.student_steps
    options = {"latent_shape": latent_shape, "progress": progress, "text_encoder": prompt_encoder(run, model)}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if student is not None:
        steps, cfg = student if steps is None else steps, 1.0 if cfg is None else cfg
        samples = sampling.generate_few_step(model, prompts, seeds, steps=steps, cfg=cfg, **options)
        sampler = "few-step"
    else:
        steps = sampling.DEFAULT_STEPS if steps is None else steps
        cfg = sampling.DEFAULT_CFG if cfg is None else cfg
        samples = sampling.generate(model, prompts, seeds, steps=steps, cfg=cfg, **options)
        sampler = "ddim"
    return samples, {"run": str(run.path), "sampler": sampler, "steps": steps, "cfg": cfg}


def prompt_encoder(run: GeneratorRun, model):
    """The text encoder whose tokens `model` reads (lrm.text, by the id it records). A diffusers denoiser's CFG
    unconditional branch (null_text) is set from it, as load_diffusers does."""
    from lrm.text import load

    if model.text_encoder_id is None:
        raise ValueError(f"{run.model_dir} records no text encoder id, so prompts cannot be encoded; "
                         "sample a run written by lrm")
    encoder = load(model.text_encoder_id)
    if run.kind == DIFFUSERS and model.null_text is None:
        model.null_text = encoder.unconditional()
    return encoder
