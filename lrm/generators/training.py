"""Teacher training: lrm's latent DiT fitted to a latent store's latents and prompts (DOLLAR Eq. 13).

    result = train_teacher(LatentStore.open("store"), TeacherConfig(steps=1500), "runs/teacher")
    result.model                      # the EMA weights, in eval mode; also saved to runs/teacher/model

One step, per sample of the batch: t ~ U{0..T-1} on the model's schedule (`Schedule.sample_timesteps`),
eps ~ N(0, I), x_t = alpha_t x0 + sigma_t eps, and the loss || f(x_t, t, c) - target ||^2 with the
target of the model's own prediction type (lrm.diffusion.training_target: x0 - eps for the default
"conjugate-v", Eq. 13). Classifier-free guidance dropout: with probability `cfg_dropout` a sample's
prompt is dropped by clearing its text_mask row, which the DiT reads as its null token alone (the
unconditional branch `sample_latents` uses for CFG). AdamW with a linear warm-up to a constant
learning rate (DiT), gradient clipping, and an exponential moving average of the weights (with the
usual warm-up min(decay, (1 + s) / (10 + s)), so early snapshots are not dominated by the random init);
the EMA weights are the teacher.

Repeatability: the model is initialised from torch.manual_seed(seed); the batch of step s is the
permutation of epoch e seeded by (seed, e) (lrm.fitting.batch_positions); timesteps, noise and dropout
of step s are drawn from a generator seeded by (seed, s, rank). A checkpoint holds the weights, the EMA
weights, the AdamW state, the torch RNG state, the step and the metrics so far, so a resumed run
continues exactly as the uninterrupted one (bit for bit on the same machine).

Scale-out: under torchrun the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU);
`batch_size` is the global batch and each rank takes its slice. Rank 0 writes every file.

Run directory (out_dir): config.json, metrics.jsonl, checkpoints/step-NNNNNNN.{safetensors,json},
snapshots/step-NNNNNNN/ (the EMA model at every 1/`snapshots` of training, for samples over training),
model/ (the EMA teacher: lrm.generators.save_denoiser, with the store's codec settings and text encoder
id), report.html (loss curve and samples of the teacher at fixed seeds and prompts).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lrm import distributed
from lrm.config_diff import read_run_config, refuse_other_run
from lrm.configs import RUN_ONLY_FIELDS, TeacherConfig, training_settings  # noqa: F401 (re-exported)
from lrm.diffusion import samplers
from lrm.diffusion.parameterisations import check_prediction, training_target
from lrm.generators.dit import DIT_PRESETS, LatentDiT, build_dit, inflate
from lrm.generators.io import check_compatible, load_denoiser, read_config, save_denoiser
from lrm.generators.sampling import guided
from lrm.io import atomic_write_json, atomic_write_text

CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
MODEL_DIR = "model"


@dataclass
class TeacherResult:
    model: LatentDiT  # the EMA teacher, in eval mode
    history: list[dict]  # every metrics.jsonl record
    steps: int  # optimizer steps done
    seconds: float  # training wall time, summed over resumes
    paths: dict[str, Path] = field(default_factory=dict)  # what the run wrote: out_dir, model, report, ...


def check_config(config: TeacherConfig) -> None:
    """One-line ValueError naming the bad field, before any work."""
    if config.preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {config.preset!r}; choose one of {', '.join(DIT_PRESETS)}")
    check_prediction(config.prediction)
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "report_samples"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            what = f"--{name.replace('_', '-')}" if name in ("steps", "batch_size") else f"TeacherConfig.{name}"
            raise ValueError(f"teacher {what} must be a positive integer, got {value!r}")
    if config.warmup_steps < 0 or config.snapshots < 0:
        raise ValueError("TeacherConfig.warmup_steps and snapshots must be >= 0")
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"TeacherConfig.ema_decay must be in [0, 1), got {config.ema_decay}")
    if not 0 <= config.cfg_dropout < 1:
        raise ValueError(f"TeacherConfig.cfg_dropout must be in [0, 1), got {config.cfg_dropout}")
    finite = all(math.isfinite(v) for v in (config.lr, config.grad_clip, config.weight_decay))
    if not finite or config.lr <= 0 or config.grad_clip < 0 or config.weight_decay < 0:
        raise ValueError(f"TeacherConfig.lr must be a finite number > 0, grad_clip and weight_decay finite and >= 0; "
                         f"got {config.lr}, {config.grad_clip}, {config.weight_decay}")


# ---------------------------------------------------------------- pure helpers

def learning_rate(step: int, config: TeacherConfig) -> float:
    """Learning rate of update `step` (0-based): linear warm-up, then constant."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def ema_decay(step: int, decay: float) -> float:
    """EMA decay after update `step` (1-based): min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers copied)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def drop_text(text_mask: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """text_mask (B, L) bool with the rows where drop (B,) is True cleared: those samples see only the
    DiT's null token, the unconditional branch of classifier-free guidance."""
    return text_mask & ~drop[:, None]


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the timesteps, noise and dropout of `step` on `rank`."""
    return int(np.random.SeedSequence([seed, 7, step, rank]).generate_state(1)[0])


def denoising_batch(model: LatentDiT, x0: torch.Tensor, text_mask: torch.Tensor, cfg_dropout: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch from clean latents x0 (B, T, c, h, w): (x_t, t (B,), text_mask with dropped rows
    cleared (B, L), target (B, T, c, h, w) in the model's prediction). Draws t, eps, dropout from `generator`
    (on the CPU, so a run is the same on any device)."""
    b = x0.shape[0]
    schedule = model.schedule
    t = schedule.sample_timesteps(b, generator)  # (B,)
    eps = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(b, generator=generator) < cfg_dropout  # (B,)
    t, eps, drop = t.to(x0.device), eps.to(x0.device), drop.to(x0.device)
    alpha, sigma = schedule.alpha_sigma(t, x0)  # (B, 1, 1, 1, 1) each
    x_t = alpha * x0 + sigma * eps
    return x_t, t, drop_text(text_mask, drop), training_target(model.prediction, x0, eps, alpha, sigma)


# ---------------------------------------------------------------- sampling (report, benchmarks)

@torch.no_grad()
def sample_latents(model: LatentDiT, text: torch.Tensor, text_mask: torch.Tensor, shape: tuple[int, ...],
                   guidance: float = 4.0, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """DDIM (eta = 0) samples of `model` for prompts text (N, L, D) / text_mask (N, L): latents (N, *shape),
    shape = (T, c, h, w), from noise seeded by `seed` (one CPU generator for the whole batch, so row i is not
    what `lrm sample --seed` draws: that seeds each sample's own generator), with CFG `guidance` (the
    unconditional branch is the all-False mask row the model was trained with). steps = 50 is DOLLAR's
    teacher grid [999, 979, ..., 19] on the default schedule."""
    device = next(model.parameters()).device
    n = text.shape[0]
    x_T = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)).to(device)
    text, text_mask = text.to(device), text_mask.to(device).bool()

    schedule = model.schedule
    return samplers.sample(guided(model, text, text_mask, guidance), x_T, schedule.timesteps(steps), schedule,
                           model.prediction)


# ---------------------------------------------------------------- run directory

def snapshot_path(out_dir: str | Path, step: int) -> Path:
    """Folder of the EMA model saved at `step` (a save_denoiser folder)."""
    return Path(out_dir) / SNAPSHOTS / f"step-{step:07d}"


def snapshot_steps(config: TeacherConfig) -> list[int]:
    """Steps at which an EMA snapshot is saved: every 1/snapshots of training (rounded), the last included."""
    if config.snapshots == 0:
        return []
    return sorted({max(1, round(config.steps * k / config.snapshots)) for k in range(1, config.snapshots + 1)})


def _resolved_config(config: TeacherConfig, store, model: LatentDiT, batch_size: int) -> dict:
    from lrm import __version__

    return {"teacher": json.loads(json.dumps(asdict(config))), "store": str(Path(store.path).resolve()),
            "codec": store.codec_settings, "text_encoder_id": store.text_encoder_id,
            "latent_shape": list(store.latent_shape), "rows": len(store), "dimensions": model.dimensions(),
            "parameters": sum(p.numel() for p in model.parameters()), "effective_batch_size": batch_size,
            "world_size": distributed.world_size(), "lrm_version": __version__}


def _prepare_out_dir(out_dir: Path, resolved: dict) -> None:
    """Write config.json; an existing run (resume) must have been started with the same training settings."""
    from lrm.config_diff import differences, own_store

    path = out_dir / "config.json"
    if path.exists():
        old = read_run_config(path)
        defaults = training_settings(TeacherConfig())
        saved = {"teacher": {**defaults, **{k: v for k, v in old.get("teacher", {}).items() if k in defaults}},
                 "store": own_store(old.get("store"), out_dir), "codec": old.get("codec")}  # a moved run: its own
        now = {"teacher": {k: v for k, v in resolved["teacher"].items() if k in defaults},
               "store": own_store(resolved["store"], out_dir), "codec": resolved["codec"]}
        diff = differences(saved, now)
        if diff:
            raise ValueError(f"cannot resume teacher run {out_dir}: it was started with other settings "
                             f"({'; '.join(diff)}). Fix: re-run with the same settings, or write to a new --out folder")
    atomic_write_json(path, resolved)


def check_store(store, video: bool | None = None) -> None:
    """A store a teacher can train on: text embeddings present and, with `video` given, clips (True) or
    images (False). One-line ValueError with the fix otherwise."""
    if store.text_encoder_id is None:
        raise ValueError(f"store {store.path} has no text embeddings; a teacher learns from prompts: encode it with "
                         "a text encoder (lrm encode DATA --text minilm-l6-v2 --out STORE)")
    if len(store) < 1:
        raise ValueError(f"store {store.path} holds no rows")
    frames = store.latent_shape[0]
    if video is not None and video != (frames > 1):
        held = "images" if frames == 1 else f"{frames}-frame clips"
        fix = "add --video for a video teacher" if frames > 1 else "drop --video, or pass a store of clips"
        raise ValueError(f"store {store.path} holds {held}, not {'clips' if video else 'images'}: {fix}")


def check_init(init: str | Path, preset: str) -> Path:
    """The model folder of `init` (a teacher run or its model folder), read from its config.json alone: it must
    be a `preset` DiT (one-line ValueError naming the difference otherwise)."""
    folder = Path(init)
    if (folder / MODEL_DIR).is_dir():
        folder = folder / MODEL_DIR
    saved = read_config(folder)
    dims = saved.get("dimensions", {})
    differs = [f"{k} {dims.get(k)} vs {v}" for k, v in DIT_PRESETS[preset].items() if dims.get(k) != v]
    if differs:
        raise ValueError(f"--init {init} is not a {preset} ({', '.join(differs)}); pass --preset "
                         f"{saved.get('preset') or 'matching its dimensions'}")
    return folder


def initial_model(init: str | Path, store, config: TeacherConfig) -> LatentDiT:
    """The DiT a run with `config.init` starts from: the teacher saved in `init` (a teacher run or its model
    folder), inflated (lrm.generators.dit.inflate) when it is an image model and `store` holds clips. It must
    be `config.preset` with `config.prediction`, in the store's latent space and text encoder (one-line
    ValueError naming the difference otherwise)."""
    folder = check_init(init, config.preset)
    check_compatible(read_config(folder), store.codec_settings, store.text_encoder_id, f"--init {init}")
    model = load_denoiser(folder)
    if model.prediction != config.prediction:
        raise ValueError(f"--init {init} predicts {model.prediction}, the run trains {config.prediction}")
    frames = store.latent_shape[0]
    if model.frames == frames:
        return model.train()
    if model.frames == 1 and frames > 1:
        return inflate(model, frames).train()
    raise ValueError(f"--init {init} is a {model.frames}-frame model and store {store.path} holds {frames}-frame "
                     "latents; start from an image teacher or one of the same frames")


# ---------------------------------------------------------------- training

def train_teacher(store, config: TeacherConfig, out_dir: str | Path, *, resume: bool = True,
                  progress: bool = False) -> TeacherResult:
    """Train `config.preset` on `store` (a LatentStore with text embeddings); see the module docstring.

    resume=True continues the run in `out_dir` from its newest checkpoint (or starts it); without it an
    `out_dir` that already holds a run is an error. progress=True shows a progress bar with the loss
    (first process only)."""
    from lrm.fitting import (RowSource, batch_positions, latest_checkpoint, mean_across_ranks, rank_share,
                             save_checkpoint)
    from lrm.fitting import load_checkpoint

    check_config(config)
    check_store(store)
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a teacher run; resume it, or choose a new output folder")

    device = torch.device(config.device)
    created_group = distributed.init_from_env(device)
    rank, world, is_main = distributed.rank(), distributed.world_size(), distributed.is_main()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    rows_all = np.arange(len(store))
    batch_size = min(config.batch_size, len(store))
    local_batch = batch_size // world
    if local_batch < 1:
        raise ValueError(f"store {store.path} has {len(store)} rows, too few for {world} processes")
    batch_size = local_batch * world

    frames, channels = store.latent_shape[0], store.latent_shape[1]
    text_dim = store.text_embeddings([0])[0].shape[-1]
    checkpoints, metrics_path = out_dir / CHECKPOINTS, out_dir / "metrics.jsonl"
    saved = read_run_config(out_dir / "config.json") if (out_dir / "config.json").is_file() else None
    refuse_other_run(out_dir, saved, "teacher")  # before any of its fields is read as a teacher's
    found = latest_checkpoint(checkpoints) if resume else None
    torch.manual_seed(config.seed)
    if config.init is not None and found is None:
        model = initial_model(config.init, store, config).to(device)
    elif config.init is not None:  # resumed: the architecture and schedule the run recorded (the init may be gone)
        model = LatentDiT(**saved["dimensions"]).to(device)
        model.preset = config.preset
    else:  # a fresh model, or the shape a checkpoint's weights are loaded into
        model = build_dit(config.preset, channels, text_dim, frames=frames, prediction=config.prediction).to(device)
    model.codec_settings, model.text_encoder_id = dict(store.codec_settings), store.text_encoder_id
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    distributed.barrier()  # every rank has looked at out_dir before rank 0 writes into it
    if is_main:
        _prepare_out_dir(out_dir, _resolved_config(config, store, model, batch_size))
        checkpoints.mkdir(parents=True, exist_ok=True)

    step, history, pending, elapsed = 0, [], [], 0.0
    if found is not None:
        model_state, ema_state, optim_state, record, rng = load_checkpoint(*found)
        model.load_state_dict(model_state)
        ema.load_state_dict(ema_state)
        optimizer.load_state_dict(optim_state)
        torch.set_rng_state(rng)
        step, history = record["step"], record["history"]
        pending = rank_share(record.get("pending_losses", []), rank, [])  # what the next loss line averages
        elapsed = record.get("elapsed_s", history[-1]["elapsed_s"] if history else 0.0)
    if is_main:  # drops lines a killed run wrote after its last checkpoint
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    cache = len(store) * (np.prod(store.latent_shape) + np.prod(store.text_embeddings([0])[0].shape)) * 4 < 2**31
    source = RowSource(store, rows_all, with_text=True, cache=bool(cache))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)
    snapshot_at = set(snapshot_steps(config))

    def checkpoint() -> None:
        pending_by_rank = distributed.gather_objects(losses)  # each rank's own: the next line averages them all
        if is_main:
            record = {"history": history, "pending_losses": pending_by_rank,
                      "elapsed_s": time.perf_counter() - started}
            save_checkpoint(checkpoints, step, model, ema.state_dict(), optimizer, record, config.keep_checkpoints)

    model.train()
    losses: list[float] = list(pending)  # since the last loss line
    started = time.perf_counter() - elapsed  # cumulative over resumes
    bar = tqdm(total=config.steps, initial=step, desc=f"teacher {config.preset}", unit="step", leave=False,
               dynamic_ncols=True, disable=not (progress and is_main))
    while step < config.steps:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        positions = batch_positions(step, len(store), batch_size, config.seed)
        rows = rows_all[positions[rank * local_batch:(rank + 1) * local_batch]]
        x0, text, mask = source.get(rows)  # (b, T, c, h, w), (b, L, D), (b, L)
        generator = torch.Generator().manual_seed(step_seed(config.seed, step, rank))
        x0, text, mask = x0.to(device), text.to(device), mask.to(device).bool()
        x_t, t, mask, target = denoising_batch(model, x0, mask, config.cfg_dropout, generator)
        loss = F.mse_loss(net(x_t, t, text, mask).float(), target.float())
        if not math.isfinite(mean_across_ranks([loss.item()])):  # before the update: the weights stay finite
            raise ValueError(f"teacher run {out_dir}: the loss is not finite at step {step + 1}: a row of that batch "
                             "holds NaN or inf latents, or the learning rate is too high (--lr); the checkpoints "
                             "before this step are kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        update_ema(ema, model, ema_decay(step, config.ema_decay))
        losses.append(loss.item())

        if step % config.log_every == 0 or step == config.steps:
            entry = {"step": step, "split": "train", "loss": mean_across_ranks(losses), "lr": lr,
                     "elapsed_s": round(time.perf_counter() - started, 3)}
            history.append(entry)
            if is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
            bar.set_postfix({"loss": f"{entry['loss']:.4f}"}, refresh=False)
            losses = []
        if step in snapshot_at and is_main:
            save_denoiser(ema, snapshot_path(out_dir, step), extra={"step": step, "run": str(out_dir)})
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint()
        bar.update()
    bar.close()

    seconds = history[-1]["elapsed_s"] if history else 0.0
    ema.eval()
    paths = {"out_dir": out_dir, "config": out_dir / "config.json", "metrics": metrics_path,
             "checkpoints": checkpoints, "snapshots": out_dir / SNAPSHOTS, "model": out_dir / MODEL_DIR,
             "report": out_dir / "report.html"}
    if is_main:
        save_denoiser(ema, paths["model"], extra={"steps": step, "store": str(Path(store.path).resolve()),
                                                  "procedural_world": store.procedural_world,
                                                  "train_seconds": seconds, "run": str(out_dir)})
        from lrm.generators.report import write_teacher_report

        write_teacher_report(out_dir, ema, store, history, config)
    distributed.barrier()
    if created_group:
        distributed.shutdown()
    return TeacherResult(model=ema, history=history, steps=step, seconds=seconds, paths=paths)


def is_finished(out_dir: str | Path, config: TeacherConfig) -> bool:
    """True when `out_dir` holds the saved teacher of a run of `config` that reached its last step."""
    path = Path(out_dir) / MODEL_DIR / "config.json"
    run = Path(out_dir) / "config.json"
    if not (path.exists() and run.exists()):
        return False
    saved = read_run_config(run).get("teacher", {})
    same = all(saved.get(k) == v for k, v in training_settings(config).items())
    return same and json.loads(path.read_text()).get("extra", {}).get("steps") == config.steps


