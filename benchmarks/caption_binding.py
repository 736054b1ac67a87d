"""Which caption words does a teacher use? Denoising losses under caption changes, the motion of its samples, and
where its cross-attention looks.

On held-out procedural clips (procedural seed EVAL_SEED = 1 in the teacher's own world, codec, frames, size and
text settings; benchmarks/teacher.py's folder `eval-<run name>-<count>` next to the run when one holds enough
clips, else `binding-<run name>`):

  Table 1, loss gaps  the teacher's denoising loss (mean squared error to its own prediction target,
              lrm.diffusion.training_target, as in training) on each probed clip at each --timesteps t, with its
              true caption and with one change: another colour for the object (one the caption does not name),
              another shape, the opposite direction, the motion words dropped, "standing still", the clip played
              backwards (true caption), no text (all-False mask: the null token only, CFG's unconditional branch).
              Every variant sees the same noise per clip and t (seeded by clip row and t). Per change and t: the
              mean loss with the true caption, the mean gap (changed - true), its standard error, the mean relative
              gap and the fraction of clips whose loss rises. A model that uses a word pays for a wrong one; a gap
              of 0 means the word is ignored. Clips: those whose caption names a moving object (lrm.evaluation.
              alignment.caption_motions); an image teacher (1 frame) probes every clip with the colour, shape and
              no-text changes only.
  Table 2, motion     (video only) the first --samples moving captions sampled with 50-step DDIM at CFG --cfg
              (lrm.generators.training.sample_latents, seed 0), decoded, and the named object followed as
              lrm.evaluation.alignment does (largest region of its colour per frame, least-squares centroid
              velocity in short sides per frame); the same for the real clips of those captions (decoded
              latents): median speed, fraction at least alignment.MIN_SPEED, mean cosine of the velocity to the
              named direction, fraction within 22.5 degrees of it, and the motion alignment of
              lrm.evaluation.alignment (nearest of the 8 directions and fast enough). A third row samples the
              same noise with the opposite direction in every caption and measures it against the original
              direction: a teacher that follows the direction word turns its cosine negative.
  Table 3, attention  share of cross-attention (softmax weights averaged over heads and latent tokens, recomputed
              by forward pre-hooks from each block's own query / key weights) on each kind of caption token:
              null token, [CLS]/[SEP], the object's size, colour and shape words, "moving", the direction, the
              pace, the background phrase, the rest (articles, commas). Token kinds come from the tokenizer's
              character offsets against the caption's parse (PALETTE / SHAPES / SIZES / DIRECTIONS words).

Played backwards flips the latent frames, which is the clip played backwards for codecs without temporal
compression (dct: temporal_factor 1). Writes JSON (--out, atomically) and prints the tables.

    LRM_CACHE=/tmp/lrm-bench OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/caption_binding.py \\
        --run $LRM_CACHE/teachers/video-dit-s1-64px-<hash>-dct \\
        --out benchmarks/results/caption_binding_video.json   # the dct video teacher (teacher.py --video --codec dct)
    ... --run /tmp/s21/vteacher2000 --held-out /tmp/lrm-bench/teachers/eval-video-dit-s1-64px-da42e1e7-256 \\
        --out benchmarks/results/caption_binding_video_2000.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrm.datasets.procedural import DIRECTIONS, PALETTE, SHAPES, SIZES
from lrm.io import atomic_write_json

measure = importlib.import_module("lrm.evaluation.alignment")  # the module (lrm.evaluation.alignment is its function)
EVAL_SEED = 1  # procedural seed of the held-out clips (benchmarks/teacher.py's; the teachers train on seed 0)
NOISE_SEED = 0
WITHIN = math.cos(math.radians(22.5))  # cosine of a velocity within 22.5 degrees of the named direction
PACES = ("slowly", "quickly")
CHANGES = ("other colour", "other shape", "opposite direction", "motion words dropped", "standing still",
           "played backwards", "no text")
IMAGE_CHANGES = ("other colour", "other shape", "no text")
KINDS = ("null", "special", "size", "colour", "shape", "moving", "direction", "pace", "background", "other")

_DIRECTION = "|".join(sorted(DIRECTIONS, key=len, reverse=True))  # "up-left" before "up"
_OBJECT = re.compile(rf"\b(?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(PALETTE)}) (?P<shape>{'|'.join(SHAPES)})"
                     rf"(?: (?P<motion>(?P<moving>moving) (?P<direction>{_DIRECTION})(?: (?P<pace>{'|'.join(PACES)}))?"
                     r"|standing still|shaking))?\b")
_BACKGROUND = re.compile(r"\bover an? \w+ \w+ background\b")


# ---------------------------------------------------------------- caption changes (pure)

def opposite(direction: str) -> str:
    """The direction of DIRECTIONS pointing the other way ("up-left" -> "down-right")."""
    dx, dy = DIRECTIONS[direction]
    return min(DIRECTIONS, key=lambda d: (DIRECTIONS[d][0] + dx) ** 2 + (DIRECTIONS[d][1] + dy) ** 2)


def probed_object(caption: str) -> re.Match:
    """The object phrase a change edits: the first moving object's, else the first object's."""
    objects = list(_OBJECT.finditer(caption))
    if not objects:
        raise ValueError(f"caption {caption!r} names no '<size> <colour> <shape>' object (a procedural caption?)")
    return next((m for m in objects if m.group("moving")), objects[0])


def _replace(caption: str, match: re.Match, group: str, new: str) -> str:
    lo, hi = match.span(group)
    return caption[:lo] + new + caption[hi:]


def caption_variants(caption: str, pick: int = 0) -> dict[str, str]:
    """The caption changes of Table 1 for the first moving object of a procedural caption (the first object when
    none moves: then only "other colour" and "other shape"). `pick` (e.g. the clip's row) chooses among the other
    colours, ones the caption names nowhere, and the other shapes, so that the replacements vary over clips."""
    m = probed_object(caption)
    words = set(re.findall(r"[a-z]+", caption))
    colours = [c for c in PALETTE if c not in words]
    shapes = [s for s in SHAPES if s != m.group("shape")]
    out = {"other colour": _replace(caption, m, "colour", colours[pick % len(colours)]),
           "other shape": _replace(caption, m, "shape", shapes[pick % len(shapes)])}
    if m.group("moving"):
        out["opposite direction"] = _replace(caption, m, "direction", opposite(m.group("direction")))
        lo, hi = m.span("motion")
        out["motion words dropped"] = caption[:lo - 1] + caption[hi:]  # with the space before them
        out["standing still"] = caption[:lo] + "standing still" + caption[hi:]
    return out


def token_kinds(caption: str, offsets: list[tuple[int, int]]) -> list[str]:
    """Kind (KINDS, less "null") of each token of `caption` from its tokenizer's character offsets: (0, 0) is a
    special token ([CLS], [SEP]); a token inside the probed object's size / colour / shape / "moving" / direction
    / pace word or the background phrase gets that kind; any other token is "other"."""
    m = probed_object(caption)
    spans = [(kind, m.span(kind)) for kind in ("size", "colour", "shape", "moving", "direction", "pace")
             if m.group(kind)]
    background = _BACKGROUND.search(caption)
    if background:
        spans.append(("background", background.span()))
    kinds = []
    for lo, hi in offsets:
        if lo == hi:
            kinds.append("special")
            continue
        kinds.append(next((kind for kind, (a, b) in spans if a <= lo and hi <= b), "other"))
    return kinds


# ---------------------------------------------------------------- statistics (pure)

def gap_stats(true: np.ndarray, changed: np.ndarray) -> dict:
    """Per-clip losses with the true and a changed caption (N,) -> mean true loss, mean gap (changed - true) and
    its standard error, mean relative gap, fraction of clips whose loss rises."""
    true, changed = np.asarray(true, np.float64), np.asarray(changed, np.float64)
    gap = changed - true
    return {"loss": float(true.mean()), "gap": float(gap.mean()),
            "gap_se": float(gap.std(ddof=1) / math.sqrt(len(gap))) if len(gap) > 1 else None,
            "relative_gap": float((gap / true).mean()), "rises": float((gap > 0).mean()), "clips": int(len(gap))}


def motion_stats(velocities: list[np.ndarray | None], directions: list[str]) -> dict:
    """Velocities (short sides per frame; None: object not found) and the named directions -> median speed,
    fraction at least MIN_SPEED, mean cosine to the named direction, fraction within 22.5 degrees (over the clips
    whose object was found), and the fraction found."""
    found = [(v, d) for v, d in zip(velocities, directions) if v is not None]
    if not found:
        return {"clips": len(directions), "found": 0.0, "median_speed": None, "moving": None, "cosine": None,
                "within_22_5": None}
    speeds = np.array([np.linalg.norm(v) for v, _ in found])
    cosines = np.array([float(np.dot(v, DIRECTIONS[d])) / max(float(np.linalg.norm(v)), 1e-12) for v, d in found])
    return {"clips": len(directions), "found": len(found) / len(directions), "median_speed": float(np.median(speeds)),
            "moving": float((speeds >= measure.MIN_SPEED).mean()), "cosine": float(cosines.mean()),
            "within_22_5": float((cosines >= WITHIN).mean())}


# ---------------------------------------------------------------- model probes

def clip_noise(shape: tuple[int, ...], row: int, t: int, seed: int = NOISE_SEED) -> torch.Tensor:
    """The noise of clip `row` at timestep t: the same for every caption change, whatever the batch."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(np.random.SeedSequence(
        [seed, int(row), int(t)]).generate_state(1)[0])))


@torch.no_grad()
def denoising_losses(model, x0: torch.Tensor, eps: torch.Tensor, t: int, text: torch.Tensor,
                     mask: torch.Tensor) -> np.ndarray:
    """Per-clip mean squared error of the model's output to its training target at x_t = alpha x0 + sigma eps,
    x0 / eps (B, T, c, h, w), text (B, L, D), mask (B, L) -> (B,)."""
    from lrm.diffusion.parameterisations import training_target

    tt = torch.full((x0.shape[0],), int(t))
    alpha, sigma = model.schedule.alpha_sigma(tt, x0)
    target = training_target(model.prediction, x0, eps, alpha, sigma)
    out = model(alpha * x0 + sigma * eps, tt, text, mask)
    return ((out.float() - target.float()) ** 2).flatten(1).mean(1).numpy()


def loss_gaps(model, x0: torch.Tensor, rows: list[int], captions: list[str], text: torch.Tensor, mask: torch.Tensor,
              embed, timesteps: list[int], batch: int = 16) -> dict:
    """Table 1: {change: {t: gap_stats}} for the clips x0 (N, T, c, h, w) with their captions and stored token
    embeddings text / mask; `embed(captions) -> (text, mask)` encodes the changed captions like the store."""
    changes = CHANGES if x0.shape[1] > 1 else IMAGE_CHANGES
    losses = {name: {t: [] for t in timesteps} for name in ("true", *changes)}
    for lo in range(0, len(rows), batch):
        sl = slice(lo, lo + batch)
        x, txt, msk = x0[sl], text[sl], mask[sl]
        variants = [caption_variants(c, r) for c, r in zip(captions[sl], rows[sl])]
        edited = {name: embed([v[name] for v in variants]) for name in changes
                  if name not in ("played backwards", "no text")}
        for t in timesteps:
            eps = torch.stack([clip_noise(tuple(x.shape[1:]), r, t) for r in rows[sl]])
            losses["true"][t] += denoising_losses(model, x, eps, t, txt, msk).tolist()
            for name in changes:
                if name == "played backwards":
                    value = denoising_losses(model, x.flip(1), eps, t, txt, msk)
                elif name == "no text":
                    value = denoising_losses(model, x, eps, t, txt, torch.zeros_like(msk))
                else:
                    value = denoising_losses(model, x, eps, t, *edited[name])
                losses[name][t] += value.tolist()
    return {name: {t: gap_stats(losses["true"][t], losses[name][t]) for t in timesteps} for name in changes}


class CrossAttentionShares:
    """Context manager: while open, every forward of `model` records, per block, each sample's cross-attention
    weights averaged over heads and latent tokens, (B, 1 + L), recomputed from the block's own query / key
    projections and key mask (forward pre-hooks; the model and its outputs are untouched)."""

    def __init__(self, model):
        self.model, self.records, self._hooks = model, [], []

    def _hook(self, module, args):
        x, context, key_mask = args[0], args[1], args[2]
        n, s, _ = x.shape
        q = module.query(x).view(n, s, module.heads, -1).transpose(1, 2)  # (N, H, S, W/H)
        k, _ = module.key_value(context).view(n, context.shape[1], 2, module.heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (N, H, S, K)
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        self.records.append(scores.softmax(-1).mean((1, 2)).float())  # (N, K)

    def __enter__(self):
        self.records.clear()
        self._hooks = [block.cross_attention.register_forward_pre_hook(self._hook) for block in self.model.blocks]
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


@torch.no_grad()
def attention_shares(model, x0: torch.Tensor, rows: list[int], captions: list[str], text: torch.Tensor,
                     mask: torch.Tensor, tokenizer, timesteps: list[int], batch: int = 16) -> dict:
    """Table 3: {t: [{kind: mean share over clips} per block]} with the true captions."""
    length = text.shape[1]
    kinds = []
    for caption in captions:
        offsets = tokenizer(caption, truncation=True, max_length=length, return_offsets_mapping=True)["offset_mapping"]
        kinds.append(["null", *token_kinds(caption, [tuple(o) for o in offsets])])
    result = {}
    for t in timesteps:
        sums = np.zeros((len(model.blocks), len(KINDS)))
        for lo in range(0, len(rows), batch):
            sl = slice(lo, lo + batch)
            x = x0[sl]
            eps = torch.stack([clip_noise(tuple(x.shape[1:]), r, t) for r in rows[sl]])
            tt = torch.full((x.shape[0],), int(t))
            alpha, sigma = model.schedule.alpha_sigma(tt, x)
            with CrossAttentionShares(model) as rec:
                model(alpha * x + sigma * eps, tt, text[sl], mask[sl])
            for b, weights in enumerate(rec.records):  # (B, 1 + L)
                for i, sample_kinds in enumerate(kinds[sl]):
                    for j, kind in enumerate(sample_kinds):
                        sums[b, KINDS.index(kind)] += float(weights[i, j])
        result[t] = [{kind: float(sums[b, k] / len(rows)) for k, kind in enumerate(KINDS)}
                     for b in range(len(model.blocks))]
    return result


@torch.no_grad()
def sampled_motion(model, codec, real: torch.Tensor, captions: list[str], text: torch.Tensor, mask: torch.Tensor,
                   guidance: float, steps: int = 50, seed: int = 0, reversed_text=None) -> dict:
    """Table 2: motion_stats and alignment.motion_alignment of the real clips (latents `real`) and of the model's
    samples for the same captions; with reversed_text ((text, mask) of the captions with the opposite direction),
    also of samples from the same noise for those, measured against the ORIGINAL named direction: a model that
    follows the direction word gets a negative cosine there, one whose direction comes from the noise the same."""
    from lrm.generators.training import sample_latents

    started = time.perf_counter()
    samples = sample_latents(model, text, mask, tuple(real.shape[1:]), guidance=guidance, steps=steps, seed=seed)
    sample_s = time.perf_counter() - started
    colors, directions = zip(*[next(iter(measure.caption_motions(c).items())) for c in captions])
    clips = [("real", real), ("teacher", samples)]
    if reversed_text is not None:
        clips.append(("teacher, directions reversed", sample_latents(model, *reversed_text, tuple(real.shape[1:]),
                                                                     guidance=guidance, steps=steps, seed=seed)))
    out = {}
    for name, latents in clips:
        pixels = codec.decode(latents).clamp(0, 1)  # (N, T, 3, H, W)
        n, frames = pixels.shape[:2]
        _, names = measure.read_frames(pixels.flatten(0, 1))
        names = names.reshape(n, frames, *names.shape[1:])
        velocities = [measure.centroid_velocity(clip, color) for clip, color in zip(names, colors)]
        out[name] = {**motion_stats(velocities, list(directions)),
                     "motion_alignment": measure.motion_alignment(names, captions)}
    out["teacher"]["sample_s"] = round(sample_s, 1)
    return out


# ---------------------------------------------------------------- setup

def resolve_run(path: str | Path | None) -> tuple[Path, Path]:
    """(run folder, model folder) of a teacher run folder or its model/ folder; None: the embedded video teacher."""
    if path is None:
        from lrm.generators.embedded import embedded_teacher

        run = embedded_teacher(video=True)
        return run, run / "model"
    path = Path(path)
    if (path / "model" / "config.json").exists():
        return path, path / "model"
    if path.name == "model" and (path / "config.json").exists():
        return path.parent, path
    raise FileNotFoundError(f"{path}: neither a teacher run folder (with model/config.json) nor its model/ folder")


def held_out_store(run: Path, clips: int, held_out: str | None):
    """The held-out store: `held_out` when given, else procedural seed EVAL_SEED clips in the settings of the run's
    training store: benchmarks/teacher.py's `eval-<run name>-<count>` next to the run when one holds at least
    `clips`, else encoded (or reused) in `binding-<run name>` (the caller uses the first `clips` rows)."""
    from lrm.datasets.encoding import EncodeConfig, encode
    from lrm.datasets.store import LatentStore

    if held_out is not None:
        return LatentStore.open(held_out)
    config = json.loads((run / "config.json").read_text())
    training = LatentStore.open(config["store"])
    source = training.manifest["source"]
    if training.procedural_world is None or not training.manifest["text"]:
        raise ValueError(f"{run}: trained on {config['store']}, not a captioned procedural store; pass --held-out")
    mine = re.compile(rf"eval-{re.escape(run.name)}-\d+")  # benchmarks/teacher.py's (eval-<run>-<count>), not
    for folder in sorted(f for f in run.parent.iterdir() if mine.fullmatch(f.name)):  # those of a run <run>-b:
        manifest = folder / "manifest.json"  # reused when it holds enough clips (its first `clips` rows are the
        if manifest.exists() and int(json.loads(manifest.read_text())["units"]) >= clips:  # same clips), never grown
            return LatentStore.open(folder)
    folder = run.parent / f"binding-{run.name}"
    settings = EncodeConfig(f"procedural:{clips}:{training.procedural_world}", codec=training.codec_settings["name"],
                            frames=source["frames"], size=source["size"], text=training.text_encoder_id,
                            text_length=training.manifest["text"]["length"], seed=EVAL_SEED)
    return encode(settings, folder, progress=False)


def text_embedder(encoder_id: str, length: int):
    """captions -> (text (B, length, D), mask (B, length)) as the store encodes them."""
    from lrm import text as lrm_text
    from lrm.datasets.encoding import _fit_length

    encoder = lrm_text.load(encoder_id)

    def embed(captions):
        with torch.no_grad():
            emb, mask = encoder.encode(list(captions))
        return _fit_length(emb, mask, length)

    return encoder, embed


# ---------------------------------------------------------------- report

def _fmt(v, p=4, sign=False):
    return "-" if v is None else f"{v:+.{p}f}" if sign else f"{v:.{p}f}"


def print_tables(result: dict) -> None:
    gaps, timesteps = result["loss_gaps"], result["settings"]["timesteps"]
    print(f"\nTable 1: loss gaps over {result['probed_clips']} clips: mean gap (changed - true caption) ± standard "
          "error (mean relative gap, fraction of clips whose loss rises)")
    print("| change | " + " | ".join(f"t={t}" for t in timesteps) + " |\n|---|" + "---|" * len(timesteps))
    first = next(iter(gaps.values()))
    print("| true-caption loss | " + " | ".join(_fmt(first[str(t)]["loss"]) for t in timesteps) + " |")
    for name, per_t in gaps.items():
        cells = [f"{_fmt(s['gap'], sign=True)} ± {_fmt(s['gap_se'])} ({100 * s['relative_gap']:+.1f}%, "
                 f"{s['rises']:.2f})" for s in (per_t[str(t)] for t in timesteps)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if result.get("sampled_motion"):
        m = result["sampled_motion"]
        print(f"\nTable 2: motion of the named object, {m['real']['clips']} moving captions, DDIM 50 steps, "
              f"CFG {result['settings']['cfg']}")
        print("(directions reversed: the same noise with the opposite direction in the captions, measured against the "
              "original direction)")
        print("| clips | found | median speed | moving >= MIN_SPEED | cosine to named | within 22.5 deg | motion "
              "alignment |\n|---|---|---|---|---|---|---|")
        for name in m:  # real, teacher, teacher with the directions reversed
            s = m[name]
            print(f"| {name} | {_fmt(s['found'], 2)} | {_fmt(s['median_speed'])} | {_fmt(s['moving'], 2)} | "
                  f"{_fmt(s['cosine'], 2, True)} | {_fmt(s['within_22_5'], 2)} | {_fmt(s['motion_alignment'], 2)} |")
    if result.get("attention"):
        for t, blocks in result["attention"].items():
            print(f"\nTable 3: share of cross-attention per token kind, t={t}")
            print("| block | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS))
            for b, shares in enumerate(blocks):
                print(f"| {b} | " + " | ".join(_fmt(shares[k], 3) for k in KINDS) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="teacher run folder or its model/ folder (default: the embedded "
                                                    "video teacher, trained if not cached)")
    parser.add_argument("--held-out", default=None, help="held-out store to use instead of eval-<run name>")
    parser.add_argument("--clips", type=int, default=256, help="held-out clips encoded (the moving ones are probed)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    parser.add_argument("--samples", type=int, default=48, help="moving captions sampled for Table 2 (0: skip)")
    parser.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance of the samples")
    parser.add_argument("--attention-timesteps", type=int, nargs="*", default=[300, 700],
                        help="timesteps of Table 3 (none: skip it)")
    parser.add_argument("--batch", type=int, default=16, help="clips per forward pass")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the tables")
    args = parser.parse_args(argv)

    from lrm.generators import load_denoiser

    started = time.perf_counter()
    run, model_dir = resolve_run(args.run)
    store = held_out_store(run, args.clips, args.held_out)
    model = load_denoiser(model_dir).eval()
    if store.latent_shape[1] != model.in_channels or store.latent_shape[0] > model.frames or (
            model.text_encoder_id and model.text_encoder_id != store.text_encoder_id):
        raise ValueError(f"{store.path} (latents {store.latent_shape}, text {store.text_encoder_id}) is not in the "
                         f"latent space / text encoder of {model_dir} ({model.in_channels} channels, "
                         f"{model.frames} frames, {model.text_encoder_id})")
    video = store.latent_shape[0] > 1
    prompts = store.prompts[: args.clips]
    rows = [i for i, p in enumerate(prompts) if measure.caption_motions(p)] if video else list(range(len(prompts)))
    captions = [prompts[i] for i in rows]
    x0 = store.latents(np.asarray(rows))
    text, mask = store.text_embeddings(np.asarray(rows))
    encoder, embed = text_embedder(store.text_encoder_id, text.shape[1])
    check_text, check_mask = embed(captions[: args.batch])  # the changed captions must be encoded like the stored
    embedding_error = float((check_text - text[: args.batch]).abs().max())
    if not torch.equal(check_mask, mask[: args.batch]) or embedding_error > 1e-3:
        raise ValueError(f"re-encoded captions differ from {store.path}'s token embeddings (max |diff| "
                         f"{embedding_error:.2g}); the text encoder is not the store's")
    print(f"{model_dir}: {len(rows)} probed clips of {len(prompts)} in {store.path}", flush=True)

    gaps = loss_gaps(model, x0, rows, captions, text, mask, embed, args.timesteps, args.batch)
    result = {"command": "python benchmarks/caption_binding.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "run": str(run), "model": str(model_dir), "held_out": str(store.path),
              "held_out_clips": len(prompts), "probed_clips": len(rows), "video": video,
              "settings": {"timesteps": args.timesteps, "samples": args.samples, "cfg": args.cfg,
                           "attention_timesteps": args.attention_timesteps, "noise_seed": NOISE_SEED,
                           "eval_seed": EVAL_SEED, "min_speed": measure.MIN_SPEED,
                           "sampler": "DDIM eta 0, 50 steps, seed 0"},
              "embedding_check_max_abs": embedding_error,
              "loss_gaps": {name: {str(t): s for t, s in per_t.items()} for name, per_t in gaps.items()}}
    if video and args.samples > 0:
        m = min(args.samples, len(rows))
        reversed_text = embed([caption_variants(c)["opposite direction"] for c in captions[:m]])
        result["sampled_motion"] = sampled_motion(model, store.codec(), x0[:m], captions[:m], text[:m], mask[:m],
                                                  args.cfg, reversed_text=reversed_text)
    if args.attention_timesteps and hasattr(encoder, "tokenizer"):
        shares = attention_shares(model, x0, rows, captions, text, mask, encoder.tokenizer,
                                  args.attention_timesteps, args.batch)
        result["attention"] = {str(t): blocks for t, blocks in shares.items()}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads()}
    print_tables(result)
    print(f"\n{result['wall_s']:.0f} s")
    if args.out is not None:
        atomic_write_json(args.out, result, strict=True)


if __name__ == "__main__":
    main()
