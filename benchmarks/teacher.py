"""The embedded-default teacher: training cost, and sample quality next to an untrained model and to the
same run at 10% of its training.

Trains (or, when already cached, reuses) `lrm.generators.embedded_teacher()` and records the wall time of
encoding the store and of training, and the process's peak resident memory. Then samples, with the
teacher's 50-step DDIM grid at CFG 4, prompts the teacher never saw (distinct procedural captions of seed 1 that
are not among its training store's captions; in the simple world about half of seed 1's captions are):
  untrained   the same DiT at initialisation (outputs 0: its samples are x_T / (alpha + sigma) pushed to x0)
  10%         the EMA snapshot of the same run at 10% of its steps (snapshots/)
  teacher     the finished EMA teacher, also at CFG 1 and 7.5
and measures
  FD          Frechet distance of pooled latent statistics (lrm.evaluation.latent_frechet_distance) to real
              held-out procedural latents; "real" is a second real set, the floor
  alignment   colour / shape named by the caption, read from decoded pixels, and for clips the direction of the
              motion it names (lrm.evaluation.alignment); "real" is the real images with their captions (the
              ceiling), "shuffled" with others' captions
  Vendi       per-prompt Vendi of pixel features (DOLLAR Eq. 27), 4 seeds per prompt (range 1..4)
Writes benchmarks/results/teacher.json, benchmarks/results/teacher_grid.png and prints a table.

Variants of the image teacher, one setting changed, trained into their own run folder beside the embedded one
and evaluated the same way (results/teacher_<variant>.json):
  --steps N        the embedded settings trained for N steps (the learning rate is constant after warm-up, so
                   the first 2,250 steps are the embedded run's)
  --standardise all | luma
                   with --codec dct: trained on the store's dct latents standardised per channel ((z - mean) / std
                   over the store: the luma AC channels' std is 0.3-0.8, the chroma channels' ~2): every channel, or
                   the luma channels only (the chroma ones, which carry the layout, keep their scale); samples are
                   mapped back to the codec's latents before FD and decoding (here only: its run folder records
                   the plain codec, so `lrm sample` on it decodes standardised latents as they are)
  --preset NAME    another DiT size (lrm.generators.dit.DIT_PRESETS), e.g. dit-m1: dit-s1's patch at 5x the parameters
  --prediction P   another output parameterisation (lrm.diffusion), e.g. x0: trained on the MSE of x0 instead of
                   DOLLAR's conjugate v (x0 - eps)
  --images N       trained on N procedural images of the same world instead of the embedded 2,048 (its store beside
                   the embedded one); evaluated on the same prompts, so the record counts how many of them its
                   larger store holds
  --codec NAME     the same images in another latent space (lrm.codecs): dct (the embedded default until
                   2026-12-05; the other variants of it combine with --codec dct) or taef2 (8 x 8 x 32 at 64 px;
                   needs its weights: $LRM_WEIGHTS); its store and its held-out data beside the
                   embedded ones, the same prompts, real images decoded by that codec as the ceiling. With --video:
                   the embedded video teacher's clips in that codec, started from the image teacher of that codec
                   (the --codec NAME image variant, trained first)
  --world NAME     trained on images of another procedural world (lrm.datasets.procedural.WORLDS), e.g. blocks: the
                   simple world with each object on the dct block grid at a fixed radius per size; its store and its
                   held-out data (that world's captions and images) beside the embedded ones

    LRM_CACHE=/tmp/lrm-bench OMP_NUM_THREADS=1 python benchmarks/teacher.py   # fresh cache: trains from scratch
    LRM_CACHE=/tmp/lrm-bench python benchmarks/teacher.py --codec dct --steps 4500   # a variant
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lrm.datasets.encoding import EncodeConfig, encode
from lrm.datasets.procedural import WORLDS
from lrm.diffusion.parameterisations import PREDICTIONS
from lrm.datasets.store import LatentStore
from lrm.evaluation import alignment, latent_frechet_distance
from lrm.evaluation.vendi import pixel_diversity
from lrm.evaluation.report import first_unseen
from lrm.evaluation.rewards import sample_rewards
from lrm.generators import DIT_PRESETS, build_dit, inflate, load_denoiser
from lrm.generators.embedded import (EMBEDDED, embedded_config, embedded_run_dir, embedded_store, embedded_store_dir,
                                     embedded_teacher)
from lrm.generators.training import sample_latents, snapshot_path, snapshot_steps, train_teacher
from lrm.io import atomic_write_bytes, atomic_write_json
from lrm.tuning.memory import peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_SEED = 1  # procedural seed of the held-out prompts and real latents (the teacher trains on seed 0)
GRID_PROMPTS = 6


class StandardisedStore:
    """A LatentStore whose latents are standardised per channel: (z - mean) / std, mean and std (c,) over all rows;
    channels="luma": only the dct codec's luma channels (its split's first part), the others unchanged."""

    def __init__(self, store: LatentStore, channels: str = "all"):
        self.store = store
        z = store.latents(np.arange(len(store)))  # (N, T, c, h, w)
        mean, std = z.mean(dim=(0, 1, 3, 4)), z.std(dim=(0, 1, 3, 4))  # (c,)
        if channels == "luma":
            luma = store.codec_settings["split"][0]
            mean[luma:], std[luma:] = 0.0, 1.0
        self.mean, self.std = mean.view(1, 1, -1, 1, 1), std.view(1, 1, -1, 1, 1)

    def latents(self, indices) -> torch.Tensor:
        return (self.store.latents(indices) - self.mean) / self.std

    def to_codec(self, z: torch.Tensor) -> torch.Tensor:
        """A teacher's samples (N, T, c, h, w) back in the codec's latent space."""
        return z * self.std + self.mean

    def __len__(self) -> int:
        return len(self.store)

    def __getattr__(self, name):  # everything else: the store's own
        return getattr(self.store, name)


def variant_name(steps: int | None, standardise: str | None, images: int | None = None,
                 preset: str | None = None, codec: str | None = None, prediction: str | None = None,
                 world: str | None = None) -> str | None:
    """"dct", "dct-steps4500", "dct-standardised-luma", "dct-images8192", "dit-m1-dct", "taef2", "dct-blocks", ...;
    None for the embedded teacher."""
    scaled = {None: [], "all": ["standardised"], "luma": ["standardised-luma"]}[standardise]
    parts = ([preset] if preset is not None else []) + ([codec] if codec is not None else []) \
        + ([world] if world is not None else []) \
        + ([prediction] if prediction is not None else []) + scaled \
        + ([f"images{images}"] if images is not None else []) + ([f"steps{steps}"] if steps is not None else [])
    return "-".join(parts) or None


def variant_store_config(images: int | None, codec: str | None = None, world: str | None = None) -> EncodeConfig:
    """The embedded image store's settings, with `images` images instead of its own count, of `world` instead of its
    own, and latents in `codec` instead of its own."""
    entry = EMBEDDED["image"].store
    _, count, own_world = entry.data.split(":")  # procedural:N:WORLD
    entry = replace(entry, data=f"procedural:{images or count}:{world or own_world}")
    return entry if codec is None else replace(entry, codec=codec)


def variant_store(images: int | None, codec: str | None = None, video: bool = False,
                  world: str | None = None) -> LatentStore:
    """The embedded image store, or one of `images` images and/or of `world` and/or in `codec` beside it; with
    video, the embedded video store in `codec` beside it."""
    if images is None and codec is None and world is None:
        return embedded_store(video, progress=True)
    suffix = "-".join(([codec] if codec else []) + ([world] if world else []) + ([f"images{images}"] if images else []))
    folder = embedded_store_dir(video).with_name(f"{embedded_store_dir(video).name}-{suffix}")
    config = replace(EMBEDDED["video"].store, codec=codec) if video else variant_store_config(images, codec, world)
    return encode(config, folder, progress=True)


def video_init(codec: str | None) -> str | None:
    """The model folder the video teacher (of `codec`: the --codec image variant's) starts from."""
    init = embedded_config(video=True).init
    if codec is None:
        return init
    image_run = embedded_run_dir(video=False)
    return str(image_run.with_name(f"{image_run.name}-{codec}") / "model")


def train(video: bool, steps: int | None = None, standardise: str | None = None, images: int | None = None,
          preset: str | None = None, codec: str | None = None, prediction: str | None = None,
          world: str | None = None) -> tuple[dict, StandardisedStore | None]:
    """Train (or find) the embedded teacher, or a variant of the image teacher; time its store and training
    stages, and the peak memory. Returns the record and, for --standardise, the standardised store."""
    run, scaled = embedded_run_dir(video), None
    variant = variant_name(steps, standardise, images, preset, codec, prediction, world)
    if variant is not None:
        run = run.with_name(f"{run.name}-{variant}")
    cached = (run / "model" / "config.json").exists()
    from lrm.codecs.pae import default_folder, is_trained

    codec_cached = is_trained(default_folder())  # the embedded autoencoder, before this run
    started = time.perf_counter()
    if variant is None:
        embedded_teacher(video=video, progress=True)
    elif video:  # the video teacher in another codec, from the image teacher of that codec
        if not (Path(video_init(codec)) / "config.json").is_file():
            train(False, codec=codec)
        train_teacher(variant_store(None, codec, video=True), replace(embedded_config(video=True), init=video_init(codec)),
                      run, resume=True, progress=True)
    else:
        store = variant_store(images, codec, world=world)
        scaled = StandardisedStore(store, standardise) if standardise else None
        embedded = EMBEDDED["image"].teacher
        config = replace(embedded, steps=steps or embedded.steps, preset=preset or embedded.preset,
                         prediction=prediction or embedded.prediction)
        train_teacher(scaled or store, config, run, resume=True, progress=True)
    total = time.perf_counter() - started
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_s = history[-1]["elapsed_s"]
    codec_s = None
    if not codec_cached and is_trained(default_folder()):  # this run trained the autoencoder
        from lrm.codecs.pae_training import METRICS_FILE

        codec_s = json.loads((default_folder() / METRICS_FILE).read_text())["train_s"]
    return {"run": str(run), "cached": cached, "total_s": round(total, 1), "train_s": train_s,
            "codec_train_s": codec_s,  # part of store_and_report_s; None when the autoencoder was cached
            "store_and_report_s": round(total - train_s, 1) if not cached else None,
            "peak_rss_mb": round(peak_rss_mb(), 1), "steps": history[-1]["step"],
            "final_loss": history[-1]["loss"], "first_loss": history[0]["loss"],
            "torch_threads": torch.get_num_threads(), "variant": variant, "images": images}, scaled


def evaluate(name: str, model, prompts: list[str], text, mask, shape, guidance: float, seeds: int, reference,
             codec, to_codec=None) -> tuple[dict, torch.Tensor]:
    """Sample `seeds` samples per prompt; FD, alignment and Vendi. Returns (metrics, decoded pixels). to_codec: maps
    the model's samples to the codec's latents (a teacher of standardised latents)."""
    started = time.perf_counter()
    latents = torch.stack([sample_latents(model, text, mask, shape, guidance, 50, seed) for seed in range(seeds)], 1)
    latents = latents.flatten(0, 1)  # (P * S, T, c, h, w), prompt-major
    latents = latents if to_codec is None else to_codec(latents)
    sample_s = time.perf_counter() - started
    with torch.no_grad():
        pixels = codec.decode(latents).clamp(0, 1)  # (N, T, 3, H, W)
    captions = [p for p in prompts for _ in range(seeds)]
    aligned = alignment(pixels, captions)
    vendi = pixel_diversity(pixels, captions)  # None: a sample is all black (no cosine similarity)
    return {"model": name, "guidance": guidance, "samples": len(captions), "fd": latent_frechet_distance(latents, reference),
            "color": aligned.color, "shape": aligned.shape, "motion": aligned.motion,
            "vendi": None if vendi is None else vendi.mean, "vendi_std": None if vendi is None else vendi.std, "flicker": temporal_flickering(pixels), "sample_s": round(sample_s, 1)}, pixels


def temporal_flickering(pixels: torch.Tensor) -> float | None:
    """Mean temporal-flickering reward (1: frames change smoothly) of clips (N, T, 3, H, W); None for images."""
    if pixels.shape[1] == 1:
        return None
    return sample_rewards(pixels, None, ["temporal-flickering"])["temporal-flickering"].mean


def grid_png(rows: list[tuple[str, torch.Tensor]], prompts: list[str]) -> bytes:
    """Columns: one per (label, pixels (P, 3, H, W)); rows: prompts."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrm.reports.figures import _png

    cols = len(rows)
    fig, axes = plt.subplots(len(prompts), cols, figsize=(1.7 * cols + 2.4, 1.75 * len(prompts)), squeeze=False)
    for r, prompt in enumerate(prompts):
        for c, (label, pixels) in enumerate(rows):
            ax = axes[r, c]
            ax.imshow(pixels[r].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=8)
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(prompt, 30)[:4]), fontsize=5.5, rotation=0, ha="right",
                              va="center")
    return _png(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", action="store_true", help="the embedded video teacher instead of the image one")
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts sampled (each with --seeds seeds)")
    parser.add_argument("--seeds", type=int, default=4, help="samples per prompt (Vendi ranges 1..seeds)")
    parser.add_argument("--reference", type=int, default=256, help="real held-out latents for FD")
    parser.add_argument("--steps", type=int, help="variant: the image teacher trained for this many steps")
    parser.add_argument("--standardise", choices=("all", "luma"),
                        help="variant: the image teacher trained on per-channel standardised latents")
    parser.add_argument("--preset", choices=[name for name in DIT_PRESETS if name != EMBEDDED["image"].teacher.preset],
                        help="variant: the image teacher at another DiT size")
    parser.add_argument("--prediction", choices=[name for name in PREDICTIONS  # flow needs a flow schedule
                                                 if name not in (EMBEDDED["image"].teacher.prediction, "flow")],
                        help="variant: the image teacher trained in this output parameterisation")
    parser.add_argument("--images", type=int, help="variant: the image teacher trained on this many procedural images")
    parser.add_argument("--codec", help="variant: the image teacher trained on the same images in this latent space")
    embedded_world = variant_store_config(None).data.split(":")[2]
    parser.add_argument("--world", choices=[name for name in WORLDS if name != embedded_world],
                        help="variant: the image teacher trained on images of this procedural world")
    parser.add_argument("--out", type=Path, help="default: results/teacher.json, results/teacher_<variant>.json")
    args = parser.parse_args()
    if args.codec == EMBEDDED["image"].store.codec:
        args.codec = None  # the embedded teacher's own
    if args.standardise is not None and (args.codec or EMBEDDED["image"].store.codec) != "dct":
        parser.error("--standardise rescales the dct codec's luma and chroma channels: add --codec dct")
    variant = variant_name(args.steps, args.standardise, args.images, args.preset, args.codec, args.prediction,
                           args.world)
    if variant is not None and variant != args.codec and args.video:
        parser.error("--steps, --standardise, --images, --preset, --prediction and --world make variants of the image "
                     "teacher: leave out --video")
    for flag, value in (("--steps", args.steps), ("--images", args.images)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be a positive integer, got {value}")
    args.out = args.out or RESULTS / ("teacher.json" if variant is None else f"teacher_{variant}.json")

    kind = "video" if args.video else "image"
    entry = EMBEDDED[kind]
    training, scaled = train(args.video, args.steps, args.standardise, args.images, args.preset, args.codec,
                             args.prediction, args.world)
    if training["cached"] and args.out.is_file():  # evaluated again: keep the training as measured when it ran
        earlier = json.loads(args.out.read_text()).get("training", {})
        if earlier.get("run") == training["run"] and not earlier.get("cached"):
            training = {**earlier, "evaluated_again": True}
    print(json.dumps(training, indent=1), flush=True)
    run = Path(training["run"])

    # held-out real data: prompts, their token embeddings, and real latents (FD reference; floor; ceiling)
    count = max(4 * args.prompts, 2 * args.reference)
    codec_name = args.codec or entry.store.codec
    work = run.parent / f"eval-{embedded_run_dir(args.video).name}-{count}"  # shared by the variants of one codec
    work = work.with_name("-".join([work.name] + [name for name in (args.codec, args.world) if name]))
    # the captions the prompts are held out from: the embedded store's (a codec variant's store holds the same), or
    # the world variant's own
    training_store = LatentStore.open(embedded_store_dir(args.video) if args.codec is None and args.world is None
                                      else json.loads((run / "config.json").read_text())["store"])
    world = training_store.procedural_world  # the world the teacher learnt
    held_out = encode(EncodeConfig(f"procedural:{count}:{world}", codec=codec_name, frames=entry.store.frames,
                                   size=entry.store.size, text=entry.store.text, text_length=entry.store.text_length,
                                   seed=EVAL_SEED), work, progress=False)
    candidates = held_out.prompts[: count - args.reference]  # the rows after them are the FD reference
    prompt_rows = np.array([row for row, _ in first_unseen(candidates, set(training_store.prompts), args.prompts)])
    if len(prompt_rows) < args.prompts:
        parser.error(f"only {len(prompt_rows)} of {len(candidates)} held-out captions are distinct and unseen in "
                     f"training; lower --prompts")
    prompts = [held_out.prompts[i] for i in prompt_rows]
    if args.images is not None and args.world is None:  # the embedded teacher's prompts: its larger store holds some
        training["prompts_in_its_store"] = len(set(prompts) & set(variant_store(args.images).prompts))
    text, mask = held_out.text_embeddings(prompt_rows)
    reference = held_out.latents(np.arange(count - args.reference, count))
    second_real = held_out.latents(np.arange(args.reference))
    shape = tuple(held_out.latent_shape)

    from lrm.codecs import from_settings

    codec = from_settings(held_out.codec_settings)
    with torch.no_grad():
        real_pixels = codec.decode(held_out.latents(prompt_rows)).clamp(0, 1)
    shuffled = [prompts[(i + 1) % len(prompts)] for i in range(len(prompts))]
    real_aligned, shuffled_aligned = alignment(real_pixels, prompts), alignment(real_pixels, shuffled)
    rows = [{"model": "real (held-out, decoded)", "guidance": None, "samples": args.reference,
             "fd": latent_frechet_distance(second_real, reference), "color": real_aligned.color,
             "shape": real_aligned.shape, "motion": real_aligned.motion, "vendi": None,
             "flicker": temporal_flickering(real_pixels)},
            {"model": "real, shuffled captions", "guidance": None, "samples": args.prompts, "fd": None,
             "color": shuffled_aligned.color, "shape": shuffled_aligned.shape, "motion": shuffled_aligned.motion,
             "vendi": None}]

    teacher = load_denoiser(run / "model")
    ten_percent = snapshot_steps(replace(entry.teacher, steps=training["steps"]))[0]
    early = load_denoiser(snapshot_path(run, ten_percent))
    torch.manual_seed(entry.teacher.seed)
    untrained = build_dit(args.preset or entry.teacher.preset, shape[1], text.shape[-1], frames=shape[0]).eval()
    grid = [("real", real_pixels[:GRID_PROMPTS, 0])]
    candidates = [("untrained", untrained, 4.0)]
    init = video_init(args.codec) if args.video else None
    if init is not None:  # the video teacher's step 0: the image teacher inflated, frame by frame
        candidates.append(("image teacher, inflated", inflate(load_denoiser(init), shape[0]).eval(), 4.0))
    candidates += [(f"10% ({ten_percent} steps)", early, 4.0), ("teacher", teacher, 4.0), ("teacher", teacher, 1.0),
                   ("teacher", teacher, 7.5)]
    for name, model, guidance in candidates:
        metrics, pixels = evaluate(name, model, prompts, text, mask, shape, guidance, args.seeds, reference, codec,
                                   None if scaled is None else scaled.to_codec)
        rows.append(metrics)
        print(json.dumps(metrics), flush=True)
        if guidance == 4.0:
            for seed in range(2):
                grid.append((f"{name} s{seed}", pixels[seed::args.seeds][:GRID_PROMPTS, 0]))

    store_config = (replace(entry.store, codec=codec_name) if args.video
                    else variant_store_config(args.images, args.codec, args.world))
    result = {"kind": kind, "store": json.loads(json.dumps(store_config.__dict__)),
              "teacher": json.loads(json.dumps(replace(embedded_config(args.video), steps=training["steps"], init=init,
                                                        preset=args.preset or entry.teacher.preset,
                                                        prediction=args.prediction or entry.teacher.prediction
                                                        ).__dict__)),
              "standardised_latents": args.standardise, "training": training,
              "evaluation": {"prompts": args.prompts, "seeds": args.seeds, "reference": args.reference,
                             "eval_seed": EVAL_SEED, "sampler": "DDIM eta 0, 50 steps (999..19)",
                             "prompt_selection": "the first distinct captions of seed EVAL_SEED's clips that are not "
                                                 "among the training store's captions",
                             "fd_features": "pooled latent statistics (lrm.fidelity.pooled_latent_features)"},
              "rows": rows, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                         "torch": torch.__version__}}
    atomic_write_json(args.out, result, strict=True)
    atomic_write_bytes(args.out.with_name(args.out.stem + "_grid.png"), grid_png(grid, prompts[:GRID_PROMPTS]))

    fmt = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    print(f"\n{'model':28s} {'cfg':>4s} {'FD':>8s} {'colour':>7s} {'shape':>6s} {'motion':>6s} {'Vendi':>6s} "
          f"{'flicker':>7s}")
    for r in rows:
        print(f"{r['model']:28s} {fmt(r['guidance'], 1):>4s} {fmt(r['fd'], 2):>8s} {fmt(r['color']):>7s} "
              f"{fmt(r['shape']):>6s} {fmt(r.get('motion')):>6s} {fmt(r['vendi'], 2):>6s} {fmt(r.get('flicker')):>7s}")
    print(f"training: {training['train_s']:.0f} s for {training['steps']} steps, total {training['total_s']:.0f} s, "
          f"peak RSS {training['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
