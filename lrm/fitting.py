"""Fit a latent surrogate to one label column of a latent store (DOLLAR supplementary, Eq. 10).

    result = fit_surrogate(LatentStore.open("store"), "colorfulness", FitConfig(steps=2000), "runs/color")
    result.model(latents)      # (B, T, c, h, w) -> (B,) in the reward's units

Loss: MSE between the surrogate and the reward on standardised labels (Eq. 10, the default), or
a pairwise Bradley-Terry ranking loss (logistic loss on prediction differences of every pair in
the batch, oriented by the true order; ties skipped). With the ranking loss only the order of the
outputs is fitted: they keep the label's location and scale, not its calibration.

Labels are standardised with the mean and std of the training split (kept in the model's
buffers); rows whose label is NaN (the reward failed) are dropped and counted. With
`label_transform="log"` the network fits standardised log(y - shift) instead, shift lying just
below the smallest training label (lrm.labels.LOG_SHIFT_FRACTION of the range below it), so that for
right-skewed rewards (sharpness, dynamic degree: median 6, max 90) the MSE is not ruled by a few
extreme samples; the surrogate still outputs reward units (exp, then + shift). "auto" (the
default) picks log when it at least halves the |skewness| of the training labels. The split is
group-aware (`store.split`); `train_groups=N` then fits on only N of the training groups (a choice
seeded by `train_groups_seed`, nested as N grows) against the same validation rows: a data-scaling
curve. AdamW with linear warm-up then cosine decay; validation every `eval_every` steps (Spearman,
Pearson, MSE); early stopping on validation Spearman; the best model is saved to out_dir/model and
returned.

Data: the training and validation rows are read once into memory when they fit under
`cache_limit_gb` (the common case: 10k latents of 32 x 32 x 32 are 1.3 GB); otherwise each step
reads its batch with `store.latents(rows)` (memory-mapped shards).

Repeatability: every random draw derives from `seed`: model init from torch.manual_seed(seed),
the batch order of epoch e from numpy's generator seeded with (seed, e), the noise of step s from
(seed, s, rank). So a run resumed from a checkpoint (model, AdamW state, step, history, early-stopping
state, torch RNG state; the learning rate is a pure function of the step) continues exactly as
the uninterrupted run would have.

Augmentation (`augment="hflip"`): each training sample is mirrored left-right with probability
1/2, in latent space by the codec's exact mirror (`Codec.mirror_latents`; the dct codec has one,
codecs whose encoder is not flip-equivariant refuse). Only for rewards that a mirror leaves
unchanged; the flips of step s are drawn from (seed, s, rank) like the noise.

Noise-aware fitting (`noise_aware=True`): train on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
with t ~ U{0..t_max}, t given to the model; validation also reports fidelity at `eval_timesteps`.

Gradient matching (`gradient_weight` > 0; Sobolev training, Czarnecki et al. 2017): a surrogate can rank
samples well while its gradient with respect to the latents is orthogonal to the reward's, and LRM fine-tuning
follows that gradient (lrm.tuning.monitor's gradient alignment measures it). With `gradients(latents, prompts)`
giving the reward's gradient with respect to the latents (through the codec's decoder: lrm.pipeline passes it
for a differentiable reward of decoded latents), each step adds gradient_weight * mean over the batch of
1 - cos(d z / d x, gradients(x)), rows whose reward gradient is (near) zero left out; double backpropagation, so
a step costs about twice a plain one (docs/surrogates.md). The reward's gradient of each row is computed once
and kept in memory when the rows' latents are; with augment="hflip" (mirrored latents change from step to
step) or a store too large to cache, it is computed for every batch (a decode and the reward's backward pass
per step). The training lines of metrics.jsonl log the fit's loss ("loss") and the mean 1 - cos
("gradient_loss") apart. Whenever `gradients` is given, validation also reports `gradient_cosine`, the mean of
that cosine over the held-out rows. Single process, clean latents only (not with noise_aware).

Scale-out: under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on GPU); `batch_size` is the global batch and each rank takes its slice, so
the gradient equals the single-process one for the MSE loss (the ranking loss pairs rows within
a rank's slice). Rank 0 writes every file.

Run directory (out_dir): config.json (resolved config), metrics.jsonl (one line per log or
validation step), checkpoints/step-NNNNNNN.{safetensors,json}, model/ (the best surrogate).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lrm import distributed
from lrm.config_diff import differences, own_store, read_run_config, refuse_other_run
from lrm.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lrm.models import LatentRewardModel, build, needs_text
from lrm.labels import LABEL_TRANSFORM_CHOICES, label_statistics
from lrm.configs import FitConfig  # noqa: F401 - lrm.fitting.FitConfig, as before

LOSSES = ("mse", "ranking")
AUGMENTS = ("none", "hflip")
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
MIN_GRADIENT_NORM = 1e-8  # gradient matching: smaller gradients (a flat sample) have no direction to match


@dataclass
class FitResult:
    model: LatentRewardModel  # the surrogate with the best validation Spearman, in eval mode
    history: list[dict]  # every metrics.jsonl record (train-loss and validation lines)
    best_step: int  # step whose validation Spearman was best
    val_metrics: dict  # validation metrics of the best model: spearman, pearson, mse, rmse, n
    val_by_timestep: dict[int, dict]  # noise-aware: validation metrics of the best model at each eval t
    steps: int  # optimizer steps done (fewer than config.steps after early stopping)
    stopped_early: bool  # True when patience ran out
    train_indices: np.ndarray  # store rows fitted on (NaN labels removed)
    val_indices: np.ndarray  # store rows validated on (NaN labels removed)
    nan_labels: int  # rows dropped because their label is NaN
    label_mean: float  # mean of the (transformed) training-split labels (the model's output offset)
    label_std: float  # std of the (transformed) training-split labels (the model's output scale)
    label_transform: str  # "none" or "log" (what "auto" chose)
    label_shift: float  # log transform: labels are fitted as log(y - label_shift); 0 otherwise
    paths: dict[str, Path] = field(default_factory=dict)  # out_dir, config, metrics, checkpoints, model


# ---------------------------------------------------------------- pure helpers

def learning_rate(step: int, config: FitConfig) -> float:
    """Learning rate of update `step` (0-based): linear warm-up, then cosine decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine)


def batch_positions(step: int, num_rows: int, batch_size: int, seed: int) -> np.ndarray:
    """Positions (into the training rows) of the global batch of `step`: epoch e is a permutation
    seeded by (seed, e), cut into num_rows // batch_size batches (the remainder is dropped)."""
    per_epoch = num_rows // batch_size
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[k * batch_size:(k + 1) * batch_size]


def ranking_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pairwise Bradley-Terry loss: mean over pairs (i, j) with y_i > y_j of softplus(-(s_i - s_j))."""
    diff_pred = pred[:, None] - pred[None, :]  # (B, B): s_i - s_j
    better = target[:, None] > target[None, :]  # (B, B): y_i > y_j, ties excluded
    if not better.any():
        return pred.sum() * 0.0
    return F.softplus(-diff_pred[better]).mean()


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    """spearman, pearson, mse, rmse, n (NaN correlations, e.g. constant predictions, become None)."""
    from scipy import stats

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    mse = float(np.mean((pred - true) ** 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: scipy warns and returns NaN
        spearman = float(stats.spearmanr(pred, true).statistic) if len(true) > 1 else float("nan")
        pearson = float(stats.pearsonr(pred, true).statistic) if len(true) > 1 else float("nan")
    clean = lambda v: None if not math.isfinite(v) else v  # noqa: E731 - JSON has no NaN
    return {"spearman": clean(spearman), "pearson": clean(pearson), "mse": mse, "rmse": math.sqrt(mse),
            "n": int(len(true))}


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ---------------------------------------------------------------- data

class RowSource:
    """Latents (and text embeddings) of store rows: from memory when cached, else read per call."""

    def __init__(self, store, rows: np.ndarray, with_text: bool, cache: bool):
        self.store = store
        self.with_text = with_text
        self.rows = np.unique(rows)  # sorted store rows this source may serve from memory
        self.latents_cache = self.text_cache = self.mask_cache = None
        if cache:
            self.latents_cache = store.latents(self.rows)  # (n, T', c, h, w)
            if with_text:
                self.text_cache, self.mask_cache = store.text_embeddings(self.rows)

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(latents (n, T', c, h, w), text (n, L, D) or None, text_mask (n, L) or None) of store rows."""
        if self.latents_cache is None:
            text, mask = self.store.text_embeddings(rows) if self.with_text else (None, None)
            return self.store.latents(rows), text, mask
        pos = torch.as_tensor(np.searchsorted(self.rows, rows))
        if not self.with_text:
            return self.latents_cache[pos], None, None
        return self.latents_cache[pos], self.text_cache[pos], self.mask_cache[pos]


def _cache_bytes(store, num_rows: int, with_text: bool) -> int:
    per_row = int(np.prod(store.latent_shape)) * 4
    if with_text:
        emb, mask = store.text_embeddings([0])
        per_row += emb[0].numel() * 4 + mask[0].numel()
    return per_row * num_rows


@torch.no_grad()
def _predict_rows(model: LatentRewardModel, source: RowSource, rows: np.ndarray, batch_size: int,
                  device: torch.device, t: int | None = None, noise_seed: int = 0, abar=None) -> np.ndarray:
    """Predictions (n,) in reward units for store rows; with t, on latents noised with a fixed seed."""
    from lrm.diffusion.schedule import add_noise

    was_training = model.training
    model.eval()
    out = []
    generator = torch.Generator().manual_seed(_seed_of(noise_seed, 2, t)) if t is not None else None
    for start in range(0, len(rows), batch_size):
        latents, text, mask = source.get(rows[start:start + batch_size])
        timesteps = None
        if t is not None:
            timesteps = torch.full((latents.shape[0],), t, dtype=torch.long)
            eps = torch.randn(latents.shape, generator=generator)
            latents = add_noise(latents, eps, timesteps, abar)
            timesteps = timesteps.to(device)
        text = text.to(device) if text is not None else None
        mask = mask.to(device) if mask is not None else None
        out.append(model(latents.to(device), text, mask, timesteps).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def predict(model: LatentRewardModel, store, indices=None, batch_size: int = 64,
            t: int | None = None, noise_seed: int = 0) -> np.ndarray:
    """Surrogate predictions (n,) in reward units for store rows `indices` (None: all rows).

    With `t` (noise-aware surrogates) the latents are noised to timestep t with a fixed seed first.
    The store must be in the latent space the surrogate was fitted in.
    """
    model.check_compatible(store.codec_settings)
    rows = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    with_text = model.cross_attention is not None
    if with_text and store.text_embeddings(rows[:1]) is None:
        raise ValueError(f"surrogate {model.preset!r} reads text but store {store.path} has no text embeddings")
    abar = None
    if t is not None:
        from lrm.diffusion.schedule import alphas_cumprod

        abar = alphas_cumprod(model.info.noise_schedule or "linear")
    device = next(model.parameters()).device
    return _predict_rows(model, RowSource(store, rows, with_text, cache=False), rows, batch_size, device,
                         t=t, noise_seed=noise_seed, abar=abar)


# ---------------------------------------------------------------- checkpoints

def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in rest["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def _checkpoint_paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = folder / f"step-{step:07d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def latest_checkpoint(folder: Path) -> tuple[Path, Path] | None:
    """(tensors, record) of the newest committed checkpoint (its JSON record is written last)."""
    records = sorted(Path(folder).glob("step-*.json"))
    for record in reversed(records):
        tensors = record.with_suffix(".safetensors")
        if tensors.exists():
            return tensors, record
    return None


def save_checkpoint(folder: Path, step: int, model: nn.Module, best_state: dict, optimizer, state: dict,
                     keep: int) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    optim_tensors, optim_rest = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors_path, record_path = _checkpoint_paths(folder, step)
    atomic_write_bytes(tensors_path, save(tensors))
    atomic_write_json(record_path, {**state, "step": step, "optimizer": optim_rest})
    for old in sorted(folder.glob("step-*.json"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)


def load_checkpoint(tensors_path: Path, record_path: Path) -> tuple[dict, dict, dict, dict, torch.Tensor]:
    """-> (model state, best state, optimizer state_dict, record, torch RNG state); a damaged file is one ValueError
    naming it."""
    from lrm.io import read_json, read_safetensors

    fix = (f"delete {tensors_path.name} and {record_path.name} to resume from the checkpoint before it, or start "
           "over in another --out")
    tensors = read_safetensors(tensors_path, fix)
    record = read_json(record_path, fix)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    best_state = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    return model_state, best_state, _unflatten_optimizer(tensors, record["optimizer"]), record, tensors["rng.torch"]


# ---------------------------------------------------------------- distributed

def mean_across_ranks(values: list[float]) -> float:
    total = torch.tensor([sum(values), float(len(values))], dtype=torch.float64,
                         device=distributed.collective_device())  # nccl reduces CUDA tensors only
    if distributed.world_size() > 1:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


# ---------------------------------------------------------------- fitting

def _check_config(config: FitConfig) -> None:
    if config.loss not in LOSSES:
        raise ValueError(f"FitConfig.loss must be one of {LOSSES}, got {config.loss!r}")
    if config.augment not in AUGMENTS:
        raise ValueError(f"FitConfig.augment must be one of {AUGMENTS}, got {config.augment!r}")
    if config.label_transform not in LABEL_TRANSFORM_CHOICES:
        raise ValueError(f"FitConfig.label_transform must be one of {LABEL_TRANSFORM_CHOICES}, "
                         f"got {config.label_transform!r}")
    for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "log_every", "keep_checkpoints",
                 "eval_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"FitConfig.{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.lr < math.inf:  # lr 0 holds the model still (a library test's control); `lrm fit --lr` > 0
        raise ValueError(f"FitConfig.lr (lrm fit --lr) must be >= 0 and finite, got {config.lr}")
    if not 0 <= config.gradient_weight < math.inf:
        raise ValueError(f"FitConfig.gradient_weight must be >= 0 and finite, got {config.gradient_weight}")
    if config.gradient_weight > 0 and config.noise_aware:
        raise ValueError("gradient matching fits clean latents; leave out gradient_weight or noise_aware")
    if config.train_groups is not None and config.train_groups < 1:
        raise ValueError(f"FitConfig.train_groups must be >= 1 or None (all groups), got {config.train_groups}")
    if config.train_groups_seed is not None and config.train_groups is None:
        raise ValueError("FitConfig.train_groups_seed picks the groups of train_groups; set train_groups or leave "
                         "train_groups_seed out")
    if config.patience < 0:
        raise ValueError(f"FitConfig.patience must be >= 0 (0: never stop early), got {config.patience}")
    if config.warmup_steps < 0:
        raise ValueError(f"FitConfig.warmup_steps must be >= 0 (0: no warm-up), got {config.warmup_steps}")
    if config.noise_aware:
        from lrm.diffusion.schedule import NUM_TIMESTEPS, SCHEDULES

        if config.noise_schedule not in SCHEDULES:
            raise ValueError(f"FitConfig.noise_schedule must be one of {sorted(SCHEDULES)}, got {config.noise_schedule!r}")
        bad = [t for t in (config.t_max, *config.eval_timesteps) if not 0 <= t < NUM_TIMESTEPS]
        if bad:
            raise ValueError(f"timesteps must lie in 0..{NUM_TIMESTEPS - 1}; got t_max/eval_timesteps {bad}")


def training_subset(groups: np.ndarray, train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The rows of `train` (sorted) in the first `count` of its groups in a seeded order, so that the
    subsets for growing counts are nested (a data-scaling curve adds groups, never swaps them)."""
    names = np.unique(groups[train])
    if count > len(names):
        raise ValueError(f"train_groups={count}, but the training split holds only {len(names)} groups with a "
                         f"finite label; use at most {len(names)} or None (all)")
    kept = np.random.default_rng(seed).permutation(names)[:count]
    return train[np.isin(groups[train], kept)]


def split_rows(store, labels: np.ndarray, config: FitConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """The training and validation rows a fit with `config` uses (finite labels only) and the NaN count."""
    train, val = store.split(config.val_fraction, config.split_seed)
    finite = np.isfinite(labels)
    nan_count = int((~finite[train]).sum() + (~finite[val]).sum())
    train, val = train[finite[train]], val[finite[val]]
    if config.train_groups is not None:  # among the groups with a finite label
        seed = config.split_seed if config.train_groups_seed is None else config.train_groups_seed
        train = training_subset(store.groups, train, config.train_groups, seed)
    if len(train) < 2 or len(val) < 2:
        # what `lrm fit` can change: more clips; val_fraction and train_groups only where a caller set them
        changed = [f"{name}={value}" for name, value in (("val_fraction", config.val_fraction),
                                                            ("train_groups", config.train_groups))
                   if value != getattr(FitConfig, name)]
        raise ValueError(
            f"store {store.path} gives {len(train)} training and {len(val)} validation rows with a finite label "
            f"({len(store)} rows, {nan_count} NaN labels; whole groups, {config.val_fraction:.0%} held out); a fit "
            "needs at least 2 of each: fit on more clips (a larger --count, or a --data folder or --store with more "
            "groups)" + (f", or change {' and '.join(changed)}" if changed else "")
        )
    return train, val, nan_count


def split_facts(store, train_rows: np.ndarray, val_rows: np.ndarray) -> dict:
    """What the split was made on, for config.json: the store's row count and a digest of the training and
    validation rows (which follow from the rows' groups, the finite labels, val_fraction and the seeds); a resume
    on a store whose rows changed would hold out rows the model has trained on."""
    import hashlib

    digest = hashlib.sha256()
    for rows in (train_rows, val_rows):
        digest.update(np.asarray(rows, dtype=np.int64).tobytes() + b"|")
    return {"rows": int(store.manifest["rows"]), "train_val_sha256": digest.hexdigest()[:16]}


def _resolved_config(config: FitConfig, store, label: str, model: LatentRewardModel, batch_size: int,
                     sizes: dict) -> dict:
    from lrm import __version__

    return {"fit": json.loads(json.dumps(asdict(config))), "label": label, "store": str(store.path.resolve()),
            "codec": store.codec_settings, "in_channels": model.in_channels, "text_dim": model.text_dim,
            "text_encoder_id": store.text_encoder_id, "effective_batch_size": batch_size,
            "world_size": distributed.world_size(), **sizes, "lrm_version": __version__}


def _prepare_out_dir(out_dir: Path, resolved: dict) -> None:
    """Write the resolved config; an existing run (resume) must have been started with the same one."""
    config_path = out_dir / "config.json"
    if config_path.exists():
        old = read_run_config(config_path)
        refuse_other_run(out_dir, old, "fit")
        # FitConfig fields added after the run started take their defaults, the behaviour it ran with
        defaults = json.loads(json.dumps(asdict(FitConfig())))
        # A run may move between devices (the device is not compared); a store path may be given
        # relative or absolute.
        old["fit"] = {**defaults, **old.get("fit", {}), "device": resolved["fit"]["device"]}
        old["store"] = str(Path(own_store(old.get("store"), out_dir) or "").resolve())  # a moved run: its own
        keys = ("fit", "label", "store", "codec")
        diff = differences({k: old.get(k) for k in keys}, {k: resolved.get(k) for k in keys})
        if diff:
            raise ValueError(f"cannot resume {out_dir}: it was started with other settings ({'; '.join(diff)}). "
                             "Fix: re-run with the same settings, or write to a new --out folder")
        then, now = old.get("split"), resolved["split"]  # a run older than the split record is not checked
        if then is not None and then != now:
            raise ValueError(f"cannot resume {out_dir}: its train/validation split was made on other rows of "
                             f"{resolved['store']} ({then['rows']} rows then, {now['rows']} now); resuming would "
                             "validate on rows it trained on. Fix: write to a new --out folder")
    atomic_write_json(config_path, resolved)


def _new_surrogate(store, label: str, config: FitConfig, text_dim: int | None,
                   label_stats: tuple[str, float, float, float]) -> LatentRewardModel:
    """A fresh surrogate for `store`'s latents, carrying the label statistics and provenance."""
    model = build(config.preset, store.latent_shape[1], text_dim=text_dim, noise_aware=config.noise_aware)
    transform, mean, std, shift = label_stats
    model.set_label_stats(mean, std, transform, shift)
    entry = store.manifest.get("labels", {}).get(label, {})
    model.info.codec_settings = dict(store.codec_settings)
    model.info.reward_name = entry.get("reward", label)
    model.info.reward_spec = entry.get("spec")
    model.info.text_encoder_id = store.text_encoder_id
    model.info.noise_schedule = config.noise_schedule if config.noise_aware else None
    model.info.extra = {"store": str(store.path), "label": label, "label_pixels": store.label_pixels(label)}
    return model


def latent_mirror(codec_settings: dict):
    """The exact mirror (`Codec.mirror_latents`) of the latent space `codec_settings`, for `augment="hflip"`;
    a ValueError, before any work, when the codec has none."""
    from lrm import codecs

    codec = codecs.from_settings(codec_settings)
    codec.mirror_latents(torch.zeros(1, 1, codec.channels, 1, 1))  # codecs without an exact mirror refuse
    return codec.mirror_latents


def _training_inputs(source: RowSource, rows: np.ndarray, config: FitConfig, step: int, rank: int, abar,
                     mirror, device: torch.device):
    """(latents, text, text_mask, t) of one step on `device`. hflip: each row mirrored with probability 1/2;
    noise-aware: x_t. Flips and noise are seeded by (seed, step, rank)."""
    from lrm.diffusion.schedule import add_noise

    latents, text, mask = source.get(rows)  # (b, T', c, h, w)
    if mirror is not None:
        generator = torch.Generator().manual_seed(_seed_of(config.seed, 3, step, rank))
        flip = torch.rand(latents.shape[0], generator=generator) < 0.5  # (b,)
        latents = torch.where(flip[:, None, None, None, None], mirror(latents), latents)
    t = None
    if config.noise_aware:
        generator = torch.Generator().manual_seed(_seed_of(config.seed, 1, step, rank))
        t = torch.randint(0, config.t_max + 1, (latents.shape[0],), generator=generator)
        latents = add_noise(latents, torch.randn(latents.shape, generator=generator), t, abar)
        t = t.to(device)
    text = text.to(device) if text is not None else None
    mask = mask.to(device) if mask is not None else None
    return latents.to(device), text, mask, t


def default_preset(kind: str) -> str:
    """The surrogate preset a reward of `kind` gets when none is asked for (lrm.models.presets.DEFAULT_PRESETS)."""
    from lrm.models.presets import DEFAULT_PRESETS

    if kind not in DEFAULT_PRESETS:
        raise ValueError(f"no default surrogate preset for reward kind {kind!r}; kinds: {', '.join(DEFAULT_PRESETS)}")
    return DEFAULT_PRESETS[kind]


def with_preset(config: FitConfig, store, label: str) -> FitConfig:
    """`config` with its preset filled in: the default of the reward kind recorded for column `label`."""
    if config.preset is not None:
        return config
    kind = (store.manifest["labels"][label].get("spec") or {}).get("kind")
    if kind is None:
        raise ValueError(f"column {label!r} of {store.path} records no reward kind, so no default surrogate fits "
                         "it; pass FitConfig(preset=...) (see lrm.models.PRESETS)")
    return replace(config, preset=default_preset(kind))


# ---------------------------------------------------------------- one fit, job by job

@dataclass
class _Fit:
    """The fixed parts of one fit: data, rows, model, optimizer, process layout, run files."""
    config: FitConfig  # with its preset filled in
    store: object  # the LatentStore fitted on
    labels: np.ndarray  # (N,) the label column, NaN where the reward failed
    train_rows: np.ndarray  # store rows fitted on (finite labels)
    val_rows: np.ndarray  # store rows validated on (finite labels)
    nan_count: int  # rows dropped because their label is NaN
    label_stats: tuple[str, float, float, float]  # (transform, mean, std, shift) of the training labels
    model: LatentRewardModel
    net: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    source: RowSource  # latents (and text) of the train + val rows
    mirror: object  # the codec's exact latent mirror for augment="hflip", else None
    abar: torch.Tensor | None  # noise-aware: the schedule's cumulative alphas
    device: torch.device
    rank: int
    world: int
    is_main: bool
    created_group: bool  # this fit opened the process group and closes it
    batch_size: int  # global batch (a multiple of world)
    local_batch: int  # this rank's slice of the batch
    out_dir: Path
    gradients: object = None  # gradients(latents, prompts) -> the reward's latent gradient, or None
    prompts: list | None = None  # the store's prompts per row (for gradients of a text reward)
    gradient_cache: dict = field(default_factory=dict)  # store row -> its reward gradient (no augmentation)

    @property
    def caches_gradients(self) -> bool:
        """Keep each row's reward gradient: the latents are the rows' own (no mirror) and held in memory too."""
        return self.mirror is None and self.source.latents_cache is not None

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / CHECKPOINTS

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


@dataclass
class _State:
    """What changes as the fit goes on; a checkpoint keeps all of it (with the AdamW state and torch RNG)."""
    step: int = 0
    history: list[dict] = field(default_factory=list)  # every metrics.jsonl record so far
    bad_evals: int = 0  # validations since the last better held-out Spearman
    stopped_early: bool = False
    best: dict = field(default_factory=lambda: {"spearman": -math.inf, "step": 0, "metrics": {}, "by_t": {}})
    best_state: dict = field(default_factory=dict)  # weights of the best validation so far
    losses: list[float] = field(default_factory=list)  # training losses since the last train line (this process)
    mismatches: list[float] = field(default_factory=list)  # and gradient matching's 1 - cos
    elapsed_s: float = 0.0  # training seconds at the last checkpoint, summed over resumes


def _set_up(store, label: str, config: FitConfig, out_dir: Path, resume: bool,
            gradients=None) -> tuple[_Fit, tuple | None]:
    """Check the inputs, split the rows, build model and optimizer, and write (or check) the run's config.json.
    Returns the fit and the newest checkpoint to resume from (None: start fresh)."""
    from lrm.diffusion.schedule import alphas_cumprod

    _check_config(config)
    if config.gradient_weight > 0 and gradients is None:
        raise ValueError("gradient_weight > 0 matches the reward's latent gradient: pass gradients=, the function "
                         "that gives it (lrm fit does for a differentiable reward with --label-pixels decoded)")
    if (out_dir / "config.json").exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a fit run; pass resume=True to continue it "
                              "or choose a new output folder")
    if not store.complete:  # its rows decide the split: a resume after the encode finished would re-split
        shards = store.manifest
        raise ValueError(f"store {store.path} is not completely encoded ({len(shards['shards'])} of "
                         f"{shards['num_shards']} shards); finish it by re-running the same `lrm encode` (or "
                         "`lrm fit`) that made it, then fit")
    labels = store.label(label)  # KeyError listing the store's labels when absent
    config = with_preset(config, store, label)
    train_rows, val_rows, nan_count = split_rows(store, labels, config)
    transform, mean, std, shift = label_statistics(labels[train_rows], config.label_transform)
    if not std > 0:
        raise ValueError(f"label {label!r} is constant ({labels[train_rows[0]]}) on the {len(train_rows)} "
                         f"training rows of {store.path}: there is nothing to fit")

    with_text = needs_text(config.preset)
    text_dim = None
    if with_text:
        sample = store.text_embeddings(train_rows[:1])
        if sample is None:
            raise ValueError(f"preset {config.preset!r} reads text but store {store.path} has no text embeddings; "
                             "encode the store with a text encoder or pick an image/video preset")
        text_dim = sample[0].shape[-1]
    mirror = latent_mirror(store.codec_settings) if config.augment == "hflip" else None

    device = torch.device(config.device)
    if config.gradient_weight > 0 and distributed.world_size() > 1:
        raise ValueError("gradient matching runs in one process (double backpropagation under DDP is not "
                         "supported here); run without torchrun, or leave out gradient_weight")
    created_group = distributed.init_from_env(device)
    rank, world, is_main = distributed.rank(), distributed.world_size(), distributed.is_main()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    batch_size = min(config.batch_size, len(train_rows))
    local_batch = batch_size // world
    batch_size = local_batch * world
    if local_batch < (2 if config.loss == "ranking" else 1):
        raise ValueError(f"{len(train_rows)} training rows are too few for {world} processes "
                         f"with the {config.loss} loss")

    torch.manual_seed(config.seed)
    model = _new_surrogate(store, label, config, text_dim, (transform, mean, std, shift)).to(device)
    found = latest_checkpoint(out_dir / CHECKPOINTS) if resume else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    sizes = {"train_size": int(len(train_rows)), "val_size": int(len(val_rows)), "nan_labels": nan_count,
             "label_mean": mean, "label_std": std, "label_transform": transform, "label_shift": shift,
             "split": split_facts(store, train_rows, val_rows)}
    resolved = _resolved_config(config, store, label, model, batch_size, sizes)
    distributed.barrier()  # every rank has checked out_dir before rank 0 writes into it
    if is_main:
        _prepare_out_dir(out_dir, resolved)
        (out_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)

    cache = _cache_bytes(store, len(train_rows) + len(val_rows), with_text) <= config.cache_limit_gb * 2**30
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)
    fit = _Fit(config=config, store=store, labels=labels, train_rows=train_rows, val_rows=val_rows,
               nan_count=nan_count, label_stats=(transform, mean, std, shift), model=model, net=net,
               optimizer=optimizer, mirror=mirror,
               source=RowSource(store, np.concatenate([train_rows, val_rows]), with_text, cache),
               abar=alphas_cumprod(config.noise_schedule) if config.noise_aware else None, device=device,
               rank=rank, world=world, is_main=is_main, created_group=created_group, batch_size=batch_size,
               local_batch=local_batch, out_dir=out_dir, gradients=gradients,
               prompts=[r.get("prompt") for r in store.rows()] if gradients is not None else None)
    return fit, found


def _start_state(fit: _Fit, found: tuple | None) -> _State:
    """A fresh state, or the one the newest checkpoint holds (model, optimizer and torch RNG restored too).
    metrics.jsonl is rewritten from the state's history, dropping lines a crashed run wrote after it."""
    state = _State(best_state={k: v.detach().clone() for k, v in fit.model.state_dict().items()})
    if found is not None:
        model_state, best_state, optim_state, record, rng = load_checkpoint(*found)
        fit.model.load_state_dict(model_state)
        fit.optimizer.load_state_dict(optim_state)
        torch.set_rng_state(rng)
        best = record["best"]
        best["spearman"] = -math.inf if best["spearman"] is None else best["spearman"]
        losses, mismatches = rank_share(record.get("pending_by_rank", []), fit.rank, ([], []))
        history = record["history"]
        state = _State(step=record["step"], history=history, bad_evals=record["bad_evals"],
                       stopped_early=record["stopped_early"], best=best, best_state=best_state,
                       losses=list(losses), mismatches=list(mismatches),
                       elapsed_s=record.get("elapsed_s", history[-1]["elapsed_s"] if history else 0.0))
        fit.model.info.extra.update(record.get("model_extra", {}))
    if fit.is_main:
        atomic_write_text(fit.metrics_path, "".join(json.dumps(r) + "\n" for r in state.history))
    return state


def rank_share(by_rank: list, rank: int, empty):
    """This process's entry of a checkpoint's per-rank list (what each rank had pending when it was written, in
    rank order: lrm.distributed.gather_objects); `empty` for a checkpoint written without it."""
    return by_rank[rank] if rank < len(by_rank) else empty


def _train_step(fit: _Fit, step: int) -> tuple[float, float, float | None]:
    """One optimizer update at `step` on this rank's slice of the global batch; -> (the fit's loss, learning rate,
    gradient matching's mean 1 - cos or None)."""
    config, model = fit.config, fit.model
    lr = learning_rate(step, config)
    for group in fit.optimizer.param_groups:
        group["lr"] = lr
    positions = batch_positions(step, len(fit.train_rows), fit.batch_size, config.seed)
    rows = fit.train_rows[positions[fit.rank * fit.local_batch:(fit.rank + 1) * fit.local_batch]]
    latents, text, mask, t = _training_inputs(fit.source, rows, config, step, fit.rank, fit.abar, fit.mirror,
                                              fit.device)
    matching = config.gradient_weight > 0
    latents.requires_grad_(matching)
    z = fit.net(latents, text, mask, t, standardised=True)  # (b,)
    z_true = model.standardise(torch.as_tensor(fit.labels[rows]).to(fit.device))  # (b,)
    loss = F.mse_loss(z, z_true) if config.loss == "mse" else ranking_loss(z, z_true)
    total, mismatch = loss, None
    if matching:
        (grad,) = torch.autograd.grad(z.sum(), latents, create_graph=True)  # (b, T', c, h, w)
        cosine, kept = gradient_cosines(grad, _reward_gradients(fit, rows, latents.detach(), fit.caches_gradients))
        if kept.any():
            mismatch = (1 - cosine[kept]).mean()
            total = loss + config.gradient_weight * mismatch
    fit.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    fit.optimizer.step()
    return loss.item(), lr, None if mismatch is None else mismatch.item()


def _prompts(fit: _Fit, rows: np.ndarray) -> list[str] | None:
    return None if fit.prompts is None else [fit.prompts[i] for i in rows]


def _reward_gradients(fit: _Fit, rows: np.ndarray, latents: torch.Tensor, cache: bool) -> torch.Tensor:
    """The reward's latent gradients (b, T', c, h, w) of store rows `rows` at `latents` (their latents as fitted);
    with `cache` (the latents are the rows' own), each row's is computed once and kept (on the CPU)."""
    if not cache:
        return fit.gradients(latents, _prompts(fit, rows))
    missing = [i for i, row in enumerate(rows) if int(row) not in fit.gradient_cache]
    if missing:
        computed = fit.gradients(latents[missing], _prompts(fit, rows[missing])).detach().cpu()
        fit.gradient_cache.update({int(rows[i]): g for i, g in zip(missing, computed)})
    return torch.stack([fit.gradient_cache[int(row)] for row in rows])


def gradient_cosines(grad: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row cos(grad, reference) (b,), and which rows count (b,): those whose reference gradient is finite and
    of norm above MIN_GRADIENT_NORM (the others get a zero reference, so that no NaN reaches the backward pass)."""
    grad, reference = grad.flatten(1).float(), reference.to(grad.device).flatten(1).float()
    finite = torch.isfinite(reference).all(dim=1)
    reference = torch.where(finite[:, None], reference, torch.zeros_like(reference))
    kept = finite & (reference.norm(dim=1) > MIN_GRADIENT_NORM)
    return F.cosine_similarity(grad, reference, dim=1, eps=MIN_GRADIENT_NORM), kept


def held_out_gradient_cosine(fit: _Fit) -> float | None:
    """Mean over the validation rows of cos(the surrogate's latent gradient, the reward's); None when no row has a
    nonzero reward gradient."""
    was_training = fit.model.training
    fit.model.eval()
    cosines = []
    for start in range(0, len(fit.val_rows), fit.config.eval_batch_size):
        rows = fit.val_rows[start:start + fit.config.eval_batch_size]
        latents, text, mask = fit.source.get(rows)
        latents = latents.to(fit.device).requires_grad_(True)
        text = text.to(fit.device) if text is not None else None
        mask = mask.to(fit.device) if mask is not None else None
        (grad,) = torch.autograd.grad(fit.model(latents, text, mask, standardised=True).sum(), latents)
        cosine, kept = gradient_cosines(grad, _reward_gradients(fit, rows, latents.detach(),
                                                                 fit.source.latents_cache is not None))
        cosines += cosine[kept].tolist()
    fit.model.train(was_training)
    return float(np.mean(cosines)) if cosines else None


def _validate(fit: _Fit) -> tuple[dict, dict]:
    """Held-out metrics of the current model (with `gradients`, its held-out gradient cosine too), and
    (noise-aware) at each of config.eval_timesteps."""
    config = fit.config
    true = fit.labels[fit.val_rows]
    predict_val = lambda *noise: _predict_rows(fit.model, fit.source, fit.val_rows,  # noqa: E731
                                               config.eval_batch_size, fit.device, *noise)
    metrics = regression_metrics(predict_val(), true)
    if fit.gradients is not None:
        metrics["gradient_cosine"] = held_out_gradient_cosine(fit)
    by_t = {}
    if config.noise_aware:
        for t in config.eval_timesteps:
            by_t[int(t)] = regression_metrics(predict_val(t, config.seed, fit.abar), true)
    return metrics, by_t


def _record(fit: _Fit, state: _State, entry: dict) -> None:
    """Add a metrics line to the history and (first process) to metrics.jsonl."""
    state.history.append(entry)
    if fit.is_main:
        with open(fit.metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _validation_step(fit: _Fit, state: _State, elapsed: float) -> None:
    """Validate, record the line, keep the best weights, and count down the patience of early stopping."""
    metrics, by_t = _validate(fit)
    line = {"step": state.step, "split": "val", **metrics, "elapsed_s": round(elapsed, 3)}
    line.update({f"t{t}_{k}": m[k] for t, m in by_t.items() for k in ("spearman", "mse")})
    _record(fit, state, line)
    score = metrics["spearman"] if metrics["spearman"] is not None else -math.inf
    if score > state.best["spearman"]:
        state.best = {"spearman": score, "step": state.step, "metrics": metrics, "by_t": by_t}
        state.best_state = {k: v.detach().clone() for k, v in fit.model.state_dict().items()}
        state.bad_evals = 0
    else:
        state.bad_evals += 1
        state.stopped_early = fit.config.patience > 0 and state.bad_evals >= fit.config.patience


def _checkpoint(fit: _Fit, state: _State) -> None:
    """Save a resumable checkpoint of the state (first process), keeping the newest config.keep_checkpoints."""
    pending = distributed.gather_objects((state.losses, state.mismatches))  # every rank's own, in rank order
    if not fit.is_main:
        return
    best = state.best
    record = {"history": state.history, "bad_evals": state.bad_evals, "stopped_early": state.stopped_early,
              "best": {**best, "spearman": best["spearman"] if math.isfinite(best["spearman"]) else None},
              "model_extra": fit.model.info.extra,
              # what the next train line averages, so a resumed run logs what the uninterrupted one does
              "pending_by_rank": pending, "elapsed_s": state.elapsed_s}
    save_checkpoint(fit.checkpoints, state.step, fit.model, state.best_state, fit.optimizer, record,
                     fit.config.keep_checkpoints)


def _train(fit: _Fit, state: _State, progress: bool) -> None:
    """The loop: steps, training-loss lines, validations and checkpoints, until config.steps or early stopping."""
    config = fit.config
    fit.model.train()
    started = time.perf_counter() - state.elapsed_s  # training seconds summed over resumes
    bar = tqdm(total=config.steps, initial=state.step, desc=f"fit {config.preset}", unit="step", leave=False,
               dynamic_ncols=True, disable=not (progress and fit.is_main))
    shown: dict[str, str] = {}  # the bar's postfix: latest training loss, best held-out Spearman
    while state.step < config.steps and not state.stopped_early:
        loss, lr, mismatch = _train_step(fit, state.step)
        if not math.isfinite(mean_across_ranks([loss])):  # every rank stops alike
            raise ValueError(f"fit {fit.out_dir}: the training loss is not finite at step {state.step + 1}: a row of "
                             "that batch holds NaN or inf latents or labels, or the learning rate is too high "
                             "(--lr); the checkpoints before this step are kept")
        state.step += 1
        state.losses.append(loss)
        if mismatch is not None:
            state.mismatches.append(mismatch)
        last = state.step == config.steps
        if state.step % config.log_every == 0 or last:
            line = {"step": state.step, "split": "train", "loss": mean_across_ranks(state.losses), "lr": lr,
                    "elapsed_s": round(time.perf_counter() - started, 3)}
            if state.mismatches:
                line["gradient_loss"] = float(np.mean(state.mismatches))
            _record(fit, state, line)
            shown["loss"] = f"{state.history[-1]['loss']:.3g}"
            state.losses, state.mismatches = [], []
        if state.step % config.eval_every == 0 or last:
            _validation_step(fit, state, time.perf_counter() - started)
        if state.step % config.checkpoint_every == 0 or last or state.stopped_early:
            state.elapsed_s = time.perf_counter() - started
            _checkpoint(fit, state)
        if math.isfinite(state.best["spearman"]):
            shown["best held-out Spearman"] = f"{state.best['spearman']:.3f}"
        bar.set_postfix(shown, refresh=False)
        bar.update()
    bar.close()


def _finish(fit: _Fit, state: _State) -> FitResult:
    """Load the best weights, save them to out_dir/model (first process), close the process group we opened."""
    fit.model.load_state_dict(state.best_state)
    fit.model.eval()
    if fit.is_main:
        fit.model.save_pretrained(fit.out_dir / MODEL_DIR)
    distributed.barrier()
    if fit.created_group:
        distributed.shutdown()
    out_dir = fit.out_dir
    paths = {"out_dir": out_dir, "config": out_dir / "config.json", "metrics": fit.metrics_path,
             "checkpoints": fit.checkpoints, "model": out_dir / MODEL_DIR}
    transform, mean, std, shift = fit.label_stats
    return FitResult(model=fit.model, history=state.history, best_step=state.best["step"],
                     val_metrics=state.best["metrics"],
                     val_by_timestep={int(t): m for t, m in state.best["by_t"].items()}, steps=state.step,
                     stopped_early=state.stopped_early, train_indices=fit.train_rows, val_indices=fit.val_rows,
                     nan_labels=fit.nan_count, label_mean=mean, label_std=std,
                     label_transform=transform, label_shift=shift, paths=paths)


def fit_surrogate(store, label: str, config: FitConfig, out_dir: str | Path, *, resume: bool = False,
                  progress: bool = False, gradients=None) -> FitResult:
    """Fit `config.preset` to label column `label` of `store` (a LatentStore); see the module docstring.
    gradients(latents (b, T', c, h, w), prompts (b,) or None) -> the reward's gradient with respect to the
    latents, same shape: needed by config.gradient_weight > 0; when given, validation reports the held-out
    gradient cosine.

    resume=True continues the run in `out_dir` from its newest checkpoint (or starts it when there is none);
    without it, an `out_dir` that already holds a run is an error. progress=True shows a progress bar of the
    steps with the latest training loss and held-out Spearman (first process only).
    """
    fit, found = _set_up(store, label, config, Path(out_dir), resume, gradients)
    state = _start_state(fit, found)
    _train(fit, state, progress)
    return _finish(fit, state)
