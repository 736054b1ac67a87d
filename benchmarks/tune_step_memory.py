"""Memory and time of ONE reward-tuning step (DOLLAR Tab. 8): the latent surrogate against the direct pixel path
and against DDPO-SF's reward side.

One step = forward and backward from a student's x0 latents to the student's parameters, for a clip of H
frames at 192x320 (latents (1, H, c, 24, 40): c = 32 for taef2, whose shape is also the dct codec's; c = 4 for
the SD VAE fallback):
  lrm    x0 -> lrm's video surrogate (DEFAULT_PRESETS["video"], random init, frozen) -> -score -> backward
         (H = 1: the image default, DEFAULT_PRESETS["image"], since the frame-pair video default needs 2 frames)
  pixel  x0 -> a decoder (taef2's, or, without its weights, a diffusers AutoencoderKL with SD's config, random
         init) -> frames resized (short side, bicubic) and centre-cropped to 224, CLIP-normalised -> a ViT-H-14
         image tower with HPSv2's architecture (open_clip's ViT-H-14 vision config, random init, frozen) ->
         cosine with a fixed unit text embedding (the stand-in for the prompt's HPSv2 text features), mean over
         frames -> -score -> backward
  ddpo   DDPO-SF (DOLLAR Alg. 2): x0 is the mean of the student's Gaussian step; a sample x ~ N(x0, SIGMA^2) is
         drawn and scored by the pixel path's decoder and tower WITHOUT gradient (the reward is a number), then
         -R * log N(x; x0, SIGMA^2) (Eq. 26) -> backward. What the reward side costs a policy-gradient step: the
         decoder and the tower in memory and their forward pass, no activations kept for backward. (Its student
         side, N tracked student calls, is not in this benchmark: the stand-in is the same for every path.)
The student is a stand-in for its last layer: a 1x1 convolution (c -> c channels) applied per frame to fixed
penultimate features (H, c, 24, 40); its output is x0 and its weight and bias receive the gradient. Reward
models and decoder are frozen (no parameter gradients), as in tuning.

Each (path, H) runs in a fresh subprocess: it imports everything the paths need, records its resident memory
(the idle baseline), builds its models, takes one warm-up step and the timed steps. Peak memory on CPU is
the child's getrusage(RUSAGE_SELF).ru_maxrss minus that baseline (weights, activations and allocator caches);
on CUDA torch.cuda.max_memory_allocated (weights, activations and the workspaces CUDA's libraries keep in
PyTorch's allocator; those alone are recorded as library_mb). Time is the median of the timed steps
(`--lrm-steps`; `--pixel-steps` for the pixel and ddpo paths). A CPU child is capped at `--memory-cap-gb` of data
(RLIMIT_DATA, so an allocation past it fails inside the child, which then reports the config as out of memory
instead of the machine's OOM killer choosing a victim). A config whose predicted wall time (that of the path's
largest H measured so far, scaled by the frame ratio) would overrun what is left of `--time-budget-s` is skipped
and recorded as such;
`--frames` may come in any order, so the H that matters most can run first. Prints a table, writes JSON.

    LRM_WEIGHTS=../shared/data/weights/taesd OMP_NUM_THREADS=1 python benchmarks/tune_step_memory.py
    python benchmarks/tune_step_memory.py --frames 1 2 --pixel-steps 1 --out /tmp/tab8.json     # a quick look
    python benchmarks/tune_step_memory.py --device cuda --out benchmarks/results/cuda/tune_step_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FRAMES = (1, 2, 4, 8, 16)  # H, the clip lengths of Tab. 8
HEIGHT, WIDTH = 192, 320  # frame size in pixels
SPATIAL = 8  # both decoders upsample latents 8x
CLIP_SIZE = 224  # HPSv2's (ViT-H-14's) input resolution
TOWER = "ViT-H-14"  # HPSv2's architecture (open_clip config name)
PATHS = ("lrm", "pixel", "ddpo")  # lrm first: every other path is what the LRM step is compared against
LABELS = {"pixel": "pixel", "ddpo": "DDPO-SF"}  # the other paths' names in the table
SIGMA = 0.1  # std of the DDPO path's Gaussian step (its value does not change the cost)
DECODERS = ("taef2", "sd-vae")
SD_VAE_CONFIG = dict(  # Stable Diffusion 1.x / 2.x VAE (diffusers AutoencoderKL config), 4 latent channels
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512)


# ---------------------------------------------------------------- child: one config in a fresh process


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def build_decoder(name: str):
    """(decode: latents (1, H, c, h, w) -> pixels (1, H, 3, 8h, 8w) in [0, 1], latent channels, module)."""
    if name == "taef2":
        from lrm import codecs

        codec = codecs.load("taef2")
        return codec.decode, codec.channels, codec
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**SD_VAE_CONFIG).requires_grad_(False).eval()
    del vae.encoder, vae.quant_conv  # the decoder alone is the pixel path (freed before any step, so uncounted)

    def decode(latents):
        b, t = latents.shape[:2]
        pixels = vae.decode(latents.flatten(0, 1) / vae.config.scaling_factor).sample  # (B*T, 3, H, W) in [-1, 1]
        return ((pixels + 1) / 2).clamp(0, 1).reshape(b, t, *pixels.shape[1:])

    return decode, SD_VAE_CONFIG["latent_channels"], vae


def build_pixel_reward(decoder: str, device):
    """reward(latents (1, H, c, h, w)) -> (1,): decode, resize to CLIP_SIZE, ViT-H-14 tower, cosine with a fixed
    text embedding, mean over frames. Returns (reward, latent channels, frozen parameter count). The pixel and
    ddpo paths share it."""
    import torch
    import torch.nn.functional as F
    from open_clip import get_model_config
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import _build_vision_tower  # the image tower alone (create_model builds the text tower)

    torch.manual_seed(0)  # random init: the weights' values do not change the cost
    decode, channels, decoder_module = build_decoder(decoder)
    decoder_module.to(device)
    config = get_model_config(TOWER)
    tower = _build_vision_tower(config["embed_dim"], config["vision_cfg"]).requires_grad_(False).eval().to(device)
    text = F.normalize(torch.randn(config["embed_dim"], generator=torch.Generator().manual_seed(1)), dim=0).to(device)
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
    short = min(HEIGHT, WIDTH)
    size = (round(HEIGHT * CLIP_SIZE / short), round(WIDTH * CLIP_SIZE / short))  # (224, 373)
    top, left = (size[0] - CLIP_SIZE) // 2, (size[1] - CLIP_SIZE) // 2

    def reward(latents):
        frames = decode(latents).flatten(0, 1)  # (H, 3, 192, 320)
        frames = F.interpolate(frames, size=size, mode="bicubic", align_corners=False)  # (H, 3, 224, 373)
        frames = frames[:, :, top:top + CLIP_SIZE, left:left + CLIP_SIZE]  # (H, 3, 224, 224)
        features = F.normalize(tower((frames - mean) / std), dim=-1)  # (H, 1024)
        return (features @ text).mean().reshape(1)  # (1,)

    frozen = sum(p.numel() for p in tower.parameters()) + sum(p.numel() for p in decoder_module.parameters())
    return reward, channels, frozen


def surrogate_preset(frames: int) -> str:
    """The default video surrogate; for one frame the image default (the frame-pair video one needs two)."""
    from lrm.models import DEFAULT_PRESETS

    return DEFAULT_PRESETS["video" if frames >= 2 else "image"]


def build_lrm_reward(channels: int, frames: int, device):
    """The default surrogate (random init, frozen): reward(latents (1, H, c, h, w)) -> (1,)."""
    from lrm.models import build

    surrogate = build(surrogate_preset(frames), channels).requires_grad_(False).eval().to(device)
    return surrogate, channels, sum(p.numel() for p in surrogate.parameters())


def step_loss(path: str, reward, x0):
    """One step's loss from the student's x0 (B, H, c, h, w): lrm and pixel -R(x0) (DOLLAR Eq. 11; the pixel path is
    ReFL's -R(decode(x0))); ddpo -R(x) log N(x; x0, SIGMA^2) with x drawn and R scored without gradient (Alg. 2)."""
    import torch

    if path != "ddpo":
        return -reward(x0).sum()
    from lrm.diffusion.samplers import gaussian_log_prob

    with torch.no_grad():
        sample = x0 + SIGMA * torch.randn_like(x0)  # x ~ N(x0, SIGMA^2): the student's step, drawn
        score = reward(sample)  # (B,): decode + tower, no graph kept
    return -(score * gaussian_log_prob(sample, x0, torch.tensor(SIGMA))).sum()


def cuda_library_bytes(device) -> int:
    """What CUDA's libraries keep in PyTorch's allocator once used (cuBLAS's workspaces, ...): a matrix product and a
    convolution, forward and backward, on throwaway tensors; the memory still allocated after them. It is part of
    every CUDA step's peak, whatever the model."""
    import torch

    a = torch.randn(64, 64, device=device, requires_grad=True)
    x = torch.randn(1, 8, 16, 16, device=device, requires_grad=True)
    ((a @ a).sum() + torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, device=device)).sum()).backward()
    del a, x
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device)


def measure(path: str, frames: int, decoder: str, device_name: str, warmup: int, steps: int, threads: int) -> dict:
    """One config: build, `warmup` untimed steps, `steps` timed steps; the facts as a dict."""
    import torch
    import open_clip  # noqa: F401  (imported by every path, so every baseline holds the same modules)
    import lrm.diffusion.samplers  # noqa: F401  (the ddpo path's log-prob)
    import lrm.models  # noqa: F401

    if device_name == "cpu" or decoder == "sd-vae":  # CUDA's peak is its allocator's, whatever is imported
        import diffusers  # noqa: F401

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    baseline = rss_bytes()
    library = None
    if device.type == "cuda":
        library = cuda_library_bytes(device)
        torch.cuda.reset_peak_memory_stats(device)
    channels = 32 if decoder == "taef2" else SD_VAE_CONFIG["latent_channels"]
    if path in ("pixel", "ddpo"):
        reward, channels, frozen = build_pixel_reward(decoder, device)
    else:
        reward, channels, frozen = build_lrm_reward(channels, frames, device)
    h, w = HEIGHT // SPATIAL, WIDTH // SPATIAL
    torch.manual_seed(0)
    student = torch.nn.Conv2d(channels, channels, 1).to(device)  # stand-in for the student's last layer
    features = torch.randn(frames, channels, h, w, device=device)  # its fixed input (the penultimate features)

    def step() -> tuple[float, float]:
        """One step's (wall seconds, this process's CPU seconds)."""
        student.zero_grad(set_to_none=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        x0 = student(features).unsqueeze(0)  # (1, H, c, h, w): the student's x0 latents
        step_loss(path, reward, x0).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        assert student.weight.grad is not None and torch.isfinite(student.weight.grad).all()
        return seconds, cpu

    warm = [step() for _ in range(warmup)]
    times = [step() for _ in range(steps)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        measured = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # ru_maxrss in KiB on Linux
        measured = "ru_maxrss - idle baseline"
    return {"status": "ok", "peak_mb": peak / 2**20, "memory_measure": measured, "baseline_mb": baseline / 2**20,
            "library_mb": None if library is None else library / 2**20,
            "step_s": statistics.median(t for t, _ in times), "step_cpu_s": statistics.median(c for _, c in times),
            "steps_s": [t for t, _ in times], "steps_cpu_s": [c for _, c in times], "warmup_s": [t for t, _ in warm],
            "latent_shape":
            [1, frames, channels, h, w], "frozen_parameters": frozen,
            "model": surrogate_preset(frames) if path == "lrm" else f"{decoder} decoder + {TOWER} image tower"
            + (" (no gradient)" if path == "ddpo" else "")}


def child_main(args) -> None:
    if args.memory_cap_gb and args.device == "cpu":  # CUDA reports its own out-of-memory error
        cap = int(args.memory_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    try:
        facts = measure(args.path, args.child, args.decoder, args.device, args.warmup, args.steps, args.threads)
    except (MemoryError, RuntimeError) as error:  # CPU: "DefaultCPUAllocator: can't allocate memory"
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not isinstance(error, MemoryError) and "memory" not in message.lower():
            raise
        facts = {"status": "out of memory", "error": message[:300]}
    print("RESULT " + json.dumps(facts))


# ---------------------------------------------------------------- parent: the sweep


def run_child(path: str, frames: int, args) -> dict:
    command = [sys.executable, __file__, "--child", str(frames), "--path", path, "--decoder", args.decoder,
               "--device", args.device, "--steps", str(args.lrm_steps if path == "lrm" else args.pixel_steps),
               "--warmup", str(args.lrm_warmup if path == "lrm" else args.pixel_warmup),  # ddpo: the pixel path's
               "--threads", str(args.threads),
               "--memory-cap-gb", str(args.memory_cap_gb)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode == 0 and lines:
        facts = json.loads(lines[-1][len("RESULT "):])
    elif done.returncode in (-9, 137):  # killed, on Linux most likely by the OOM killer
        facts = {"status": "out of memory", "error": f"killed (signal 9) after {wall:.0f} s"}
    else:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        facts = {"status": "failed", "error": f"exit {done.returncode}: {tail[:300]}"}
    return {"path": path, "frames": frames, "wall_s": wall, **facts}


def resolve_decoder(choice: str) -> str:
    """auto: taef2 when its decoder weights are on disk (lrm.weights search order), else the SD VAE."""
    if choice != "auto":
        return choice
    from lrm import weights

    return "taef2" if weights.find("taef2_decoder") is not None else "sd-vae"


def sweep(args) -> list[dict]:
    rows: list[dict] = []
    started = time.perf_counter()
    for path in args.paths:
        last = None  # the largest H of this path measured so far
        for frames in args.frames:
            if last is not None and frames > last["frames"]:
                predicted = last["wall_s"] * frames / last["frames"]
                left = args.time_budget_s - (time.perf_counter() - started)
                if predicted > left:
                    rows.append({"path": path, "frames": frames, "status": "skipped", "error":
                                 f"predicted {predicted:.0f} s (H={last['frames']} took {last['wall_s']:.0f} s) "
                                 f"exceeds the {left:.0f} s left of --time-budget-s {args.time_budget_s:.0f}"})
                    print(format_row(rows[-1]), flush=True)
                    continue
            rows.append(run_child(path, frames, args))
            print(format_row(rows[-1]), flush=True)
            if rows[-1]["status"] == "ok" and (last is None or frames > last["frames"]):
                last = rows[-1]
    return rows


def format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['path']:>5}  H={row['frames']:<3} {row['status']}: {row.get('error', '')}"
    return (f"{row['path']:>5}  H={row['frames']:<3} peak {row['peak_mb']:10.1f} MB  step {row['step_s']:9.3f} s wall, "
            f"{row['step_cpu_s']:9.3f} s CPU  (child {row['wall_s']:.0f} s)"
            + (f"  of which CUDA libraries {row['library_mb']:.1f} MB" if row.get("library_mb") is not None else ""))


def measured_others(rows: list[dict]) -> list[str]:
    """The paths besides lrm that `rows` measured, in PATHS order: what the LRM step is compared against."""
    return [path for path in PATHS[1:] if any(r["path"] == path for r in rows)]


def ratio_table(rows: list[dict]) -> list[dict]:
    """Per H: each path's peak memory and step time (median wall and CPU seconds), and the LRM step's as a share
    of each other path's (`memory_share_pixel`, `time_share_cpu_ddpo`, ...; None where either is missing)."""
    by = {(r["path"], r["frames"]): r for r in rows}
    table = []
    for frames in sorted({r["frames"] for r in rows}):
        entry = {"frames": frames}
        for path in ("lrm", *measured_others(rows)):
            row = by.get((path, frames), {})
            entry[f"{path}_status"] = row.get("status")
            for key in ("peak_mb", "step_s", "step_cpu_s"):
                entry[f"{path}_{key}"] = row.get(key)
        for other in measured_others(rows):
            both = entry["lrm_status"] == "ok" and entry[f"{other}_status"] == "ok"
            for share, key in (("memory_share", "peak_mb"), ("time_share_wall", "step_s"),
                               ("time_share_cpu", "step_cpu_s")):
                entry[f"{share}_{other}"] = entry[f"lrm_{key}"] / entry[f"{other}_{key}"] if both else None
        table.append(entry)
    return table


def markdown(table: list[dict], device: str) -> str:
    """The table of docs/tuning.md: each path's memory, the LRM step's share of the others', then the same for time.
    CPU: step times in CPU seconds of the (one-thread) child, which other jobs on a shared machine do not inflate as
    they do wall time; CUDA: wall seconds."""
    clock, unit = ("step_cpu_s", "CPU s") if device == "cpu" else ("step_s", "s")
    share = "time_share_cpu" if device == "cpu" else "time_share_wall"
    others = [path for path in PATHS[1:] if f"{path}_status" in table[0]]

    def cell(entry: dict, path: str, key: str, fmt: str) -> str:
        if entry[f"{path}_status"] != "ok":
            return entry[f"{path}_status"] or "—"
        return format(entry[f"{path}_{key}"], fmt)

    def percent(value) -> str:
        return f"{value:.3%}" if value is not None else "—"

    header = ["H", "LRM peak (MB)"] + [f"{LABELS[o]} peak (MB)" for o in others] \
        + [f"LRM / {LABELS[o]} memory" for o in others] + [f"LRM step ({unit})"] \
        + [f"{LABELS[o]} step ({unit})" for o in others] + [f"LRM / {LABELS[o]} time" for o in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        cells = [str(r["frames"]), cell(r, "lrm", "peak_mb", ",.1f")] \
            + [cell(r, o, "peak_mb", ",.0f") for o in others] + [percent(r[f"memory_share_{o}"]) for o in others] \
            + [cell(r, "lrm", clock, ".3g")] + [cell(r, o, clock, ".3g") for o in others] \
            + [percent(r[f"{share}_{o}"]) for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=list(FRAMES),
                        help="clip lengths H, run in this order (put the one that matters first)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to measure")
    parser.add_argument("--decoder", choices=("auto", *DECODERS), default="auto",
                        help="auto: taef2 when its weights are found (LRM_WEIGHTS), else a random-init SD VAE")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak: torch.cuda.max_memory_allocated)")
    parser.add_argument("--lrm-steps", type=int, default=10, help="the LRM path's timed steps after one warm-up "
                        "(median reported)")
    parser.add_argument("--lrm-warmup", type=int, default=1, help="the LRM path's untimed steps first")
    parser.add_argument("--pixel-steps", type=int, default=3, help="the pixel and ddpo paths' timed steps")
    parser.add_argument("--pixel-warmup", type=int, default=1,
                        help="the pixel and ddpo paths' untimed steps first (0 on a busy CPU: in a trial the pixel "
                             "path's first step cost what the next did, 22.5 s vs 22.8 s wall at H = 1)")
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)  # internal: a child's timed steps
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)  # internal: a child's untimed steps
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable on shared machines)")
    parser.add_argument("--memory-cap-gb", type=float, default=16.0,
                        help="data limit of each child (CPU); a config past it is recorded as out of memory "
                             "(16: what a 24 GB machine shared with other jobs leaves)")
    parser.add_argument("--time-budget-s", type=float, default=1200.0,
                        help="skip a config whose predicted wall time overruns what is left of this budget")
    parser.add_argument("--out", type=Path, default=RESULTS / "tune_step_memory.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: run one config with H frames
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child_main(args)
    if min(args.frames) < 1 or len(set(args.frames)) != len(args.frames):
        parser.error("--frames must be distinct positive clip lengths")
    if min(args.lrm_steps, args.pixel_steps) < 1 or min(args.lrm_warmup, args.pixel_warmup) < 0:
        parser.error("--lrm-steps and --pixel-steps must be at least 1, the warm-ups at least 0")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here; run on a GPU machine or use --device cpu")
    args.decoder = resolve_decoder(args.decoder)
    print(f"decoder {args.decoder}, device {args.device}, {args.threads} thread(s), warm-up + timed steps: lrm "
          f"{args.lrm_warmup} + {args.lrm_steps}, pixel and ddpo {args.pixel_warmup} + {args.pixel_steps}", flush=True)
    rows = sweep(args)
    table = ratio_table(rows)
    print(markdown(table, args.device))
    import torch

    from lrm.io import atomic_write_json
    from lrm.models import DEFAULT_PRESETS

    atomic_write_json(args.out, {
        "benchmark": "one tuning step (DOLLAR Tab. 8)", "frame_size": [HEIGHT, WIDTH], "decoder": args.decoder,
        "surrogate": f"{DEFAULT_PRESETS['video']} (H = 1: {DEFAULT_PRESETS['image']})",
        "reward_tower": f"{TOWER} image tower (open_clip config, random init)",
        "student": "1x1 conv stand-in for the student's last layer", "device": args.device,
        "threads": args.threads, "paths": args.paths, "ddpo_sigma": SIGMA,
        "timed_steps": {"lrm": args.lrm_steps, "pixel": args.pixel_steps, "ddpo": args.pixel_steps},
        "warmup_steps": {"lrm": args.lrm_warmup, "pixel": args.pixel_warmup, "ddpo": args.pixel_warmup},
        "frames_order": args.frames, "memory_cap_gb": args.memory_cap_gb,
        "time_budget_s": args.time_budget_s, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "rows": rows, "table": table})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
