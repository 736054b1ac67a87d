"""Evaluate a generator run: samples at fixed seeds -> true rewards, Vendi, Frechet distance, alignment ->
metrics.json (strict JSON: NaN as null) and a self-contained report.html with the sample grid.

    metrics = evaluate_run("runs/teacher", EvaluationConfig(procedural=8, samples_per_prompt=4), "runs/teacher/eval")

metrics.json keys (METRIC_KEYS):
- run, sampler ("ddim" | "few-step"), steps, cfg, seed, timesteps, latent_shape: how the samples were made
  (sample k of every prompt uses seed + k);
- prompts (the distinct prompts), samples_per_prompt, n_samples;
- rewards: {name: {mean, std, scored}}: true rewards (lrm.rewards) of the decoded samples, over the
  samples a reward could score (prompt-color cannot score a prompt naming no colour);
- diversity: {mean, std, features}: Vendi score per prompt over its samples (DOLLAR Eq. 27) on raw
  pixel features, mean and std over prompts (null with fewer than 2 samples per prompt);
- frechet: {value, features, reference, n_generated, n_reference}: Frechet distance between pooled
  latent statistics (lrm.fidelity.pooled_latent_features: per latent channel mean, std, mean |spatial
  gradient| [+ mean |frame difference| for clips]) of the generated latents and of reference latents:
  a store's (--reference) or procedural clips encoded with the run's codec at the run's latent shape;
- alignment: {color, shape, motion}: object colour and shape named by procedural captions, read from the
  pixels, and for clips the direction of the motion they name (lrm.evaluation.alignment; motion is null for
  images and for captions that name no motion; the whole entry is null when a prompt is not a procedural
  caption);
- per_prompt: [{prompt, vendi, alignment_color, alignment_shape, <reward>...}] per distinct prompt;
- seconds: wall time of sampling and of the metrics.
"""

from __future__ import annotations

import html
import itertools
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from lrm.configs import EvaluationConfig  # defined there, torch-free, so `lrm evaluate` reads its defaults
from lrm.io import atomic_write_bytes, atomic_write_json, atomic_write_text

PROMPT_SEED = 7  # procedural prompts `lrm tune` tunes on: captions of clips of this seed (training draws seed 0)
TUNING_PROMPTS = 16  # how many of them `lrm tune` takes when no prompts are given
HELD_OUT_SEED = 13  # `lrm evaluate`'s procedural prompts: a seed no training or tuning default draws
SATURATED = 20_000  # captions drawn in a row without a new one: the world has no more (the simple world's ~2,640)
REFERENCE_SEED = 11  # procedural reference clips, disjoint from prompts and from training's seed 0
METRIC_KEYS = ("run", "sampler", "steps", "cfg", "seed", "timesteps", "latent_shape", "prompts", "samples_per_prompt",
               "n_samples", "rewards", "diversity", "frechet", "alignment", "per_prompt", "seconds")
FRECHET_FEATURES = ("pooled latent statistics (lrm.fidelity.pooled_latent_features): per latent channel mean, std and "
                    "mean |spatial gradient|, + mean |frame difference| for clips")
PER_FRAME_FEATURES = "the same of single latent frames (clips only): every frame a sample, no frame difference"
VENDI_FEATURES = "raw pixels (lrm.evaluation.vendi.pixel_features), every frame"




# ---------------------------------------------------------------------------------------------------
# inputs: prompts and reference latents
# ---------------------------------------------------------------------------------------------------

def _pixel_frames(latent_frames: int, codec_settings: dict) -> int:
    factor = int(codec_settings.get("temporal_factor", 1))
    return latent_frames if factor == 1 else 1 + (latent_frames - 1) * factor


def procedural_prompts(count: int, frames: int, seed: int = PROMPT_SEED, world: str = "full") -> list[str]:
    """Captions of `count` procedural clips of `frames` frames of `world` (lrm.datasets.procedural.WORLDS;
    seeded; motion words only when frames > 1)."""
    return list(itertools.islice(_captions(seed, frames, world), count))


def _captions(seed: int, frames: int, world: str) -> Iterator[str]:
    """Captions of procedural clips 0, 1, 2, ... of `seed` (motion words only when frames > 1), drawn lazily."""
    from lrm.datasets.procedural import caption, sample_attributes, world_config

    config = world_config(world, seed=seed, frames=frames, size=64)
    return (caption(sample_attributes(config, np.random.default_rng((seed, i)))) for i in itertools.count())


def held_out_prompts(count: int, frames: int, world: str, exclude: set[str]) -> list[str]:
    """`count` distinct captions of procedural clips of seed HELD_OUT_SEED that are not in `exclude` (what the model
    trained on): a small world repeats captions, so clips of another seed alone would share many with training.
    The draws stop, and the request is refused, once SATURATED draws in a row bring no new caption."""
    captions = itertools.islice(_captions(HELD_OUT_SEED, frames, world), 100 * count)
    chosen = [text for _, text in first_unseen(captions, exclude, count, patience=SATURATED)]
    if len(chosen) < count:
        raise ValueError(f"{count} held-out prompts asked: only {len(chosen)} distinct captions of the {world} world "
                         f"are not among the {len(exclude)} the model trained or was tuned on; ask for fewer, or "
                         f"pass a prompts file")
    return chosen


def first_unseen(captions: Iterable[str], seen: set[str], count: int,
                 patience: int | None = None) -> list[tuple[int, str]]:
    """(position, caption) of the first `count` distinct captions that are not in `seen`; fewer if they run out or,
    with `patience`, once that many captions in a row brought no new one (a small world is exhausted)."""
    found: dict[str, int] = {}
    last = -1  # position of the last new caption
    for position, text in enumerate(captions):
        if len(found) == count or (patience is not None and position - last > patience):
            break
        if text not in seen and text not in found:
            found[text] = last = position
    return [(position, text) for text, position in found.items()]


def evaluation_prompts(run, count: int, frames: int) -> list[str]:
    """`lrm evaluate`'s procedural prompts for a GeneratorRun: held out from its training captions and from the
    prompts `lrm tune` tunes on by default."""
    tuned_on = procedural_prompts(TUNING_PROMPTS, frames, world=run.procedural_world)
    return held_out_prompts(count, frames, run.procedural_world, run.training_captions() | set(tuned_on))


def procedural_reference(codec, latent_shape, count: int, seed: int = REFERENCE_SEED,
                         device: str | torch.device = "cpu", world: str = "full") -> torch.Tensor:
    """(count, T, c, h, w) latents of procedural clips of `world` rendered at the pixel size of `latent_shape` and
    encoded with `codec`."""
    from lrm.datasets.procedural import ProceduralClips, world_config

    t, _, h, w = latent_shape
    f = codec.spatial_factor
    config = world_config(world, seed=seed, frames=_pixel_frames(t, codec.settings()), size=(h * f, w * f))
    clips = ProceduralClips(config, count)
    with torch.no_grad():
        chunks = [codec.encode(torch.stack([c.pixels for c in clips[s : s + 32]]).to(device)).cpu()
                  for s in range(0, count, 32)]
    return torch.cat(chunks)


def store_reference(path: str | Path, codec_settings: dict, latent_shape, count: int) -> torch.Tensor:
    """(n, T, c, h, w) latents of `count` rows spread evenly over a latent store (all rows if it has fewer),
    refused unless they share the run's latent space and shape."""
    from lrm.datasets.store import LatentStore

    store = LatentStore.open(path)
    if store.codec_settings != codec_settings:
        raise ValueError(f"reference store {path} is in codec {store.codec_id}, the run samples in "
                         f"{codec_settings.get('name')}-v{codec_settings.get('version')}; encode the reference "
                         "with the run's codec (lrm encode --codec ...)")
    if tuple(store.latent_shape) != tuple(latent_shape):
        raise ValueError(f"reference store {path} holds latents {tuple(store.latent_shape)}, the run samples "
                         f"{tuple(latent_shape)}; encode the reference at the run's size and frames")
    if len(store) < 2:
        raise ValueError(f"reference store {path} has {len(store)} rows; the Frechet distance needs at least 2")
    rows = np.unique(np.linspace(0, len(store) - 1, min(count, len(store))).round().astype(np.int64))
    return store.latents(rows)  # rows spread evenly over the store, not just its first shard


# ---------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------

def as_frames(latents: torch.Tensor) -> torch.Tensor:
    """Clips (n, T, c, h, w) -> their frames as one-frame samples (n * T, 1, c, h, w)."""
    return latents.flatten(0, 1)[:, None]


def sample_metrics(samples, reference: torch.Tensor, rewards, reference_name: str) -> dict:
    """The metrics of `samples` (lrm.generators.sampling.Samples) against `reference` latents (n, T, c, h, w):
    the rewards, diversity, frechet, alignment and per_prompt entries of metrics.json."""
    from lrm.evaluation.alignment import alignment, caption_objects
    from lrm.evaluation.frechet import latent_frechet_distance
    from lrm.evaluation.rewards import sample_rewards
    from lrm.evaluation.vendi import pixel_diversity

    prompts = samples.prompts
    distinct = list(dict.fromkeys(prompts))
    rows = {p: [i for i, q in enumerate(prompts) if q == p] for p in distinct}
    scores = sample_rewards(samples.pixels, prompts, rewards)
    out = {"rewards": {name: {"mean": s.mean, "std": s.std, "scored": s.scored} for name, s in scores.items()}}

    vendi = pixel_diversity(samples.pixels, prompts) if min(len(r) for r in rows.values()) >= 2 else None
    if vendi is not None:
        out["diversity"] = {"mean": vendi.mean, "std": vendi.std, "features": VENDI_FEATURES}
        per_prompt_vendi = vendi.per_prompt
    else:  # one sample per prompt (its Vendi is 1 by definition), or an all-black sample: nothing measured
        out["diversity"] = None
        per_prompt_vendi = {}

    frechet = per_frame = None
    if samples.latents.shape[0] >= 2:
        frechet = latent_frechet_distance(samples.latents, reference)
        if samples.latents.shape[1] > 1:
            per_frame = latent_frechet_distance(as_frames(samples.latents), as_frames(reference))
    out["frechet"] = {"value": frechet, "per_frame": per_frame, "features": FRECHET_FEATURES,
                      "per_frame_features": PER_FRAME_FEATURES if per_frame is not None else None,
                      "reference": reference_name, "n_generated": samples.latents.shape[0],
                      "n_reference": reference.shape[0]}

    procedural = all(caption_objects(p) for p in distinct)
    aligned = alignment(samples.pixels, prompts) if procedural else None
    out["alignment"] = {"color": aligned.color, "shape": aligned.shape, "motion": aligned.motion} if aligned else None

    per_prompt = []
    for prompt, index in rows.items():
        entry = {"prompt": prompt, "vendi": per_prompt_vendi.get(prompt)}
        if aligned is not None:
            entry["alignment_color"] = float(np.mean([aligned.per_sample_color[i] for i in index]))
            entry["alignment_shape"] = float(np.mean([aligned.per_sample_shape[i] for i in index]))
        for name, s in scores.items():
            values = np.array([s.values[i] for i in index], dtype=np.float64)
            entry[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        per_prompt.append(entry)
    out["per_prompt"] = per_prompt
    return out


# ---------------------------------------------------------------------------------------------------
# the whole evaluation
# ---------------------------------------------------------------------------------------------------

def evaluate_run(run_path: str | Path, config: EvaluationConfig, out_dir: str | Path,
                 progress: bool = False) -> dict:
    """Sample the run at fixed seeds, measure, write out_dir/metrics.json, report.html and grid.png; returns the
    metrics (the content of metrics.json before NaN -> null)."""
    from lrm.codecs import from_settings
    from lrm.datasets.media import read_prompts
    from lrm.rewards import load as load_reward
    from lrm.generators.runs import open_generator_run, sample_run
    from lrm.generators.sampling import expand_requests

    run = open_generator_run(run_path)
    latent_shape = run.latent_shape(config.size, config.frames)
    if config.prompts_file is not None:
        distinct = list(dict.fromkeys(read_prompts(config.prompts_file)))
    else:
        frames = _pixel_frames(latent_shape[0], run.codec_settings or {})
        distinct = evaluation_prompts(run, config.procedural, frames)
    built = {name: load_reward(name) for name in config.rewards}  # unknown names fail before any sampling
    video_rewards = [name for name, reward in built.items() if reward.spec.is_video]
    if latent_shape[0] == 1 and video_rewards:
        raise ValueError(f"reward {video_rewards[0]} scores videos but this run samples images; choose image "
                         "rewards (see `lrm rewards`)")
    model = run.load(map_location=config.device)
    codec = from_settings(model.codec_settings).to(config.device)
    if config.reference is not None:
        reference = store_reference(config.reference, model.codec_settings, latent_shape, config.reference_count)
        reference_name = f"store {config.reference}"
    else:
        reference = procedural_reference(codec, latent_shape, config.reference_count, device=config.device,
                                         world=run.procedural_world)
        reference_name = (f"procedural clips ({run.procedural_world} world, seed {REFERENCE_SEED}, "
                          f"{config.reference_count} clips) in {codec.codec_id}")

    start = time.perf_counter()
    prompts, seeds = expand_requests(distinct, config.samples_per_prompt, config.seed)
    samples, settings = sample_run(run, model, prompts, seeds, latent_shape, steps=config.steps, cfg=config.cfg,
                                   batch_size=config.batch_size, progress=progress)
    sampled = time.perf_counter()
    measured = sample_metrics(samples, reference, built, reference_name)
    seconds = {"sampling": sampled - start, "metrics": time.perf_counter() - sampled}
    metrics = {**settings, "seed": config.seed, "timesteps": samples.timesteps, "latent_shape": list(latent_shape),
               "prompts": distinct, "samples_per_prompt": config.samples_per_prompt, "n_samples": len(prompts),
               **measured, "seconds": seconds}
    write_evaluation(out_dir, metrics, samples, config)
    return metrics


def write_evaluation(out_dir: str | Path, metrics: dict, samples, config: EvaluationConfig) -> Path:
    """metrics.json (strict), grid.png and report.html in out_dir; returns the report's path."""
    from lrm.generators.writing import grid_png

    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", {k: metrics[k] for k in METRIC_KEYS}, strict=True)
    grid = grid_png(samples.pixels, samples.prompts, samples.seeds)
    atomic_write_bytes(out_dir / "grid.png", grid)
    return atomic_write_text(out_dir / "report.html", report_html(metrics, grid, config))


def _value(x) -> str | float:
    """A metric for a table cell: missing (None, NaN) as an em dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return x


def resolved_options(config: EvaluationConfig, metrics: dict) -> list[list[str]]:
    """[option, value] rows of the Configuration table: an option left to the run (None) shows the value used,
    as the facts table does (steps 50, not None), marked as the run's default."""
    used = {"steps": metrics.get("steps"), "cfg": metrics.get("cfg"),
            "size": metrics.get("latent_shape") and f"latent shape {tuple(metrics['latent_shape'])}",
            "frames": metrics.get("latent_shape") and f"latent shape {tuple(metrics['latent_shape'])}"}
    rows = []
    for key, value in asdict(config).items():
        if value is None and used.get(key) is not None:
            rows.append([key, f"{used[key]} (the run's default)"])
        else:
            rows.append([key, str(value)])
    return rows


def report_html(metrics: dict, grid: bytes, config: EvaluationConfig) -> str:
    """The self-contained page: facts, metrics, per-prompt table, the sample grid (inlined PNG)."""
    from lrm.reports.html import CSS, _img, _section, _table

    title = f"Generator evaluation: {metrics['run']}"
    facts = [["sampler", metrics["sampler"]], ["steps", metrics["steps"]], ["cfg", metrics["cfg"]],
             ["seeds", f"{metrics['seed']} .. {metrics['seed'] + metrics['samples_per_prompt'] - 1} per prompt"],
             ["prompts", len(metrics["prompts"])], ["samples", metrics["n_samples"]],
             ["latent shape", str(tuple(metrics["latent_shape"]))]]
    rows = [[f"reward: {name}", _value(r["mean"]), _value(r["std"]), f"{r['scored']} scored"]
            for name, r in metrics["rewards"].items()]
    d = metrics["diversity"]
    rows.append(["Vendi diversity (per prompt)", _value(d and d["mean"]), _value(d and d["std"]),
                 "pixels" if d else "needs >= 2 samples per prompt"])
    f = metrics["frechet"]
    rows.append(["Frechet distance", _value(f["value"]), "—", f"{f['n_generated']} vs {f['n_reference']}"])
    if f.get("per_frame") is not None:
        rows.append(["Frechet distance per frame", _value(f["per_frame"]), "—", "every frame a sample"])
    a = metrics["alignment"]
    over = "procedural captions" if a else "not procedural"
    rows.append(["alignment: colour", _value(a and a["color"]), "—", over])
    rows.append(["alignment: shape", _value(a and a["shape"]), "—", over])
    if a and a.get("motion") is not None:
        rows.append(["alignment: motion", _value(a["motion"]), "—", "clips whose caption names a direction"])
    reward_names = list(metrics["rewards"])
    per_prompt = [[p["prompt"], _value(p["vendi"]), _value(p.get("alignment_color")),
                   *[_value(p[name]) for name in reward_names]] for p in metrics["per_prompt"]]
    parts = [f"<h1>{html.escape(title)}</h1>", _table(["fact", "value"], facts),
             _section("Sample quality",
                      "True rewards of the decoded samples (mean and std over samples), Vendi diversity "
                      "(DOLLAR Eq. 27: the effective number of distinct samples per prompt, 1 to samples per "
                      "prompt), the Frechet distance to the reference (lower is closer) and prompt alignment "
                      "(share of frames whose object colour / shape the caption names).",
                      _table(["metric", "mean", "std", "over"], rows)),
             _section("Frechet distance features", f"Features: {f['features']}. Reference: {f['reference']}. "
                      "Not FID: no Inception network, values compare only with other runs measured the same way.", ""),
             _section("Per prompt", "Each distinct prompt: Vendi over its samples, colour alignment, mean rewards.",
                      _table(["prompt", "Vendi", "alignment colour", *reward_names], per_prompt)),
             _section("Samples", "Rows are prompts, columns seeds (a clip shows its middle frame).",
                      _img(grid, "samples")),
             _section("Configuration", "The evaluation's options.",
                      _table(["option", "value"], resolved_options(config, metrics)))]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
