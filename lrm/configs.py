"""The configs of lrm's entry points, one default per option, importable without torch so that the
command line reads its option defaults from them at start-up.

    FitConfig      lrm.fitting.fit_surrogate: fit a surrogate to a label column of a store
    EncodeConfig   lrm.datasets.encoding.encode: encode a source into a latent store
    FitJob         lrm.pipeline.run_fit, `lrm fit`: encode -> label -> fit -> report; the options it
                   shares with the two above take their defaults from them
    TeacherConfig  lrm.generators.training.train_teacher, `lrm teacher train`: train lrm's latent DiT teacher
    EvaluationConfig  lrm.evaluation.report.evaluate_run, `lrm evaluate`: sample a generator run and score it
    DEFAULT_*      the sampling defaults of lrm.generators.sampling and `lrm sample`
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class FitConfig:
    # surrogate architecture (lrm.models.PRESETS); None: the recommended one of the label's reward kind
    # (lrm.models.presets.DEFAULT_PRESETS)
    preset: str | None = None
    steps: int = 2000  # optimizer steps; the paper's LRMs converge within 2,000-3,000
    batch_size: int = 64  # global batch (split across DDP ranks); capped at the training-set size
    lr: float = 3e-3  # peak AdamW learning rate (measured better than 1e-3 on procedural data)
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr, then cosine decay
    min_lr_fraction: float = 0.0  # the cosine ends at lr * min_lr_fraction on the last step
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    loss: str = "mse"  # "mse" (Eq. 10 on standardised labels) or "ranking" (pairwise Bradley-Terry)
    label_transform: str = "auto"  # "none", "log" (fit log(y - shift)) or "auto" (log when it halves |skewness|)
    augment: str = "none"  # "none" or "hflip" (mirror training latents left-right with probability 1/2)
    val_fraction: float = 0.2  # share of rows, as whole groups, held out for validation
    split_seed: int = 0  # seed of the group-aware train/validation split
    train_groups: int | None = None  # fit on only this many training groups (data-scaling studies); None: all
    train_groups_seed: int | None = None  # seed of which training groups train_groups keeps; None: split_seed
    seed: int = 0  # seed of model init, batch order, noise and mirror-flip draws
    eval_every: int = 100  # steps between validations (and after the last step)
    patience: int = 10  # validations without a better val Spearman before stopping; 0 never stops early
    checkpoint_every: int = 500  # steps between resumable checkpoints (and after the last step)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_every: int = 10  # steps between train-loss lines in metrics.jsonl
    noise_aware: bool = False  # fit on noised latents x_t with the timestep t as model input
    # weight of the gradient-matching term (lrm.fitting, "Gradient matching"): 1 - cos(surrogate's latent gradient,
    # the reward's through the decoder), batch mean; 0: off. Needs a differentiable reward of decoded latents
    gradient_weight: float = 0.0
    noise_schedule: str = "linear"  # lrm.diffusion.schedule name (DDPM linear betas, T = 1000)
    t_max: int = 999  # noise-aware training draws t uniformly from 0..t_max
    eval_timesteps: tuple[int, ...] = (0, 250, 500, 750)  # noise-aware: fixed t reported by validation
    cache_limit_gb: float = 2.0  # keep train + val latents in memory when they fit under this size
    eval_batch_size: int = 256  # rows per forward pass in validation
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"; under torchrun with CUDA each rank uses cuda:LOCAL_RANK


@dataclass(frozen=True)
class EncodeConfig:
    data: str  # "procedural:N" (N seeded clips) or a folder / file of images and videos
    codec: str = "dct"  # lrm.codecs registry name (or "diffusers:<path>")
    frames: int | None = None  # frames per clip; None: 8 for procedural clips and videos, 1 for images
    # square side in pixels after short-side resize and centre crop; None: 128 for procedural clips, a media
    # folder's own short side up to 512 (lrm.datasets.sources.choose_frame_size)
    size: int | None = None
    text: str | None = None  # lrm.text encoder name for token embeddings; None stores no text
    text_length: int = 77  # tokens kept per prompt (padded or truncated), fixed for the store
    prompts: str | None = None  # prompts file for a media folder: one prompt per file, in sorted file order
    shard_size: int = 256  # units per shard: the unit of atomic commit, resume and rank sharding
    seed: int = 0  # seed of procedural clips
    labels: tuple[str, ...] = ()  # rewards computed at encode time (same as `lrm label` afterwards)
    batch_size: int = 16  # clips per codec / text / reward call
    device: str = "cpu"  # where the codec, text encoder and rewards run

    def __post_init__(self):
        if not (isinstance(self.text_length, int) and self.text_length >= 1):
            raise ValueError(f"text_length must be a positive number of tokens, got {self.text_length!r}")


# One default per option: the options FitJob shares with FitConfig (fitting) and EncodeConfig (a new store)
# take their defaults from there, so `lrm fit`, run_fit and fit_surrogate with a default FitConfig agree
# (tests/test_defaults.py checks it). Flat fields, not nested configs: `lrm fit` maps one flag to one field.
@dataclass
class FitJob:
    reward: str  # registry name or a user's metric "file.py:fn" / "pkg.module:fn"
    data: str | None = None  # media folder or "procedural:N"; None with no store: procedural:{count}
    store: str | None = None  # existing latent store to reuse instead of encoding
    out: str | None = None  # run directory; default runs/<label>
    label: str | None = None  # label column name; default: the reward name (function name for user metrics)
    label_pixels: str = "source"  # "source" (score the media) or "decoded" (score what the latents decode to)
    codec: str = EncodeConfig.codec  # latent space for a new store (lrm.codecs name)
    count: int = 4000  # procedural clips when no data is given (the main job measured in docs/main_job.md)
    frames: int | None = None  # frames per clip; default 1 for image rewards, 8 for video rewards
    # square side in pixels of a new store; None: 128 for procedural clips (16 x 16 dct latents), for a media
    # folder the reward's preferred size, else the media's short side up to 512 (lrm.datasets.sources)
    size: int | None = EncodeConfig.size
    text: str | None = None  # text encoder of a new store; default minilm-l6-v2 for text rewards
    preset: str | None = FitConfig.preset  # surrogate preset; None: by the reward's kind (DEFAULT_PRESETS)
    steps: int = FitConfig.steps  # optimizer steps
    batch_size: int = FitConfig.batch_size  # training batch
    lr: float = FitConfig.lr  # peak AdamW learning rate
    loss: str = FitConfig.loss  # "mse" (DOLLAR Eq. 10) or "ranking" (Bradley-Terry)
    label_transform: str = FitConfig.label_transform  # "none", "log" or "auto" (log when it halves the skewness)
    noise_aware: bool = FitConfig.noise_aware  # fit on noised latents with the timestep as input
    gradient_weight: float = FitConfig.gradient_weight  # match the reward's latent gradient too (0: off)
    augment: str = FitConfig.augment  # "none" or "hflip" (exact latent mirror; mirror-invariant rewards only)
    seed: int = FitConfig.seed  # data, split and training seed
    eval_every: int = FitConfig.eval_every  # steps between validations
    patience: int = FitConfig.patience  # validations without a better val Spearman before stopping; 0 never
    warmup_steps: int = FitConfig.warmup_steps  # linear learning-rate warm-up steps (0: none)
    reward_options: dict | None = None  # options of the reward factory (kind/input for user metrics)
    device: str = FitConfig.device  # where encoding, labelling and fitting run

    def label_name(self) -> str:
        from lrm.datasets.label_names import column_name

        return self.label or column_name(self.reward, self.label_pixels)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.label_name()


DEFAULT_STEPS = 50  # DOLLAR's teacher: DDIM 50 steps on [19, 39, ..., 999]
DEFAULT_CFG = 7.5  # DOLLAR: the teacher's guidance scale in CD
DEFAULT_BATCH_SIZE = 16  # samples per denoiser call (twice that under guidance)
DEFAULT_PER_PROMPT = 4  # seeds per prompt in `lrm sample`: the columns of its grid
DEFAULT_REWARDS = ("prompt-color", "jpeg-compressibility")  # weight-free, offline, read every frame


@dataclass(frozen=True)
class EvaluationConfig:
    prompts_file: str | None = None  # prompts file (.txt/.csv/.jsonl/.json); None: procedural captions
    procedural: int = 8  # procedural captions to sample when no prompts file is given
    samples_per_prompt: int = DEFAULT_PER_PROMPT  # samples (seeds) per prompt; Vendi needs at least 2
    seed: int = 0  # sample k of every prompt uses seed + k
    steps: int | None = None  # sampling steps; None: 50 for a teacher, the student's own for a student
    cfg: float | None = None  # guidance scale; None: 7.5 for a teacher, 1 for a student
    rewards: tuple[str, ...] = DEFAULT_REWARDS  # true rewards of the decoded samples (names in lrm.rewards)
    reference: str | None = None  # latent store of reference latents for the Frechet distance; None: procedural
    reference_count: int = 128  # reference latents used (procedural clips made, or store rows read)
    size: int | None = None  # pixel size to sample at; None: the run's recorded latent shape
    frames: int | None = None  # frames per sample; None: the run's recorded latent shape
    batch_size: int = DEFAULT_BATCH_SIZE  # samples per denoiser call
    device: str = "cpu"  # where the denoiser runs (cpu, cuda)

    def __post_init__(self):
        for name, low in (("procedural", 1), ("samples_per_prompt", 1), ("reference_count", 2), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.cfg is not None and not self.cfg >= 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if not self.rewards:
            raise ValueError("rewards is empty; name at least one reward (e.g. prompt-color)")


# `lrm distill` and lrm.tuning.run.distill: one default per option. Flat fields, one flag per field.
@dataclass
class DistillJob:
    teacher: str | None = None  # generator run (RUN or RUN/model); None: the cached embedded teacher
    video: bool = False  # with no teacher: the embedded video teacher instead of the image one
    losses: tuple[str, ...] = ("vsd", "cd")  # loss terms by name (lrm.tuning.run.LOSSES); DOLLAR: VSD + CD
    student_steps: int = 4  # the student's sampling steps: 1, 2 or 4 (DOLLAR's grids)
    steps: int = 500  # generator steps (each also takes the auxiliary roles' updates); 0: export the copy
    batch_size: int = 8  # prompts (and real latents) per generator step
    cd_teacher_steps: int = 1  # m of multi-step CD (1: plain CD; the paper's 5 costs 5x the teacher calls)
    image_teacher: str | None = None  # image generator run for sdm2d (same codec and text encoder)
    student_lr: float = 1e-4  # AdamW lr of the student; DOLLAR's 1e-5 barely moves a small DiT in 500 steps
    fake_lr: float = 1e-4  # AdamW lr of the fake score / discriminator / 2D fake score
    seed: int = 0  # trainer draws (noise, timesteps, frames) and the batch order
    lora_rank: int | None = None  # peft LoRA rank on the student's / fake scores' attention; None: all weights train
    eval_every: int = 100  # steps between fixed-seed logs (samples, FD, alignment, Vendi); 0: none
    eval_prompts: int = 4  # the teacher store's first distinct prompts sampled at each log
    eval_seeds: int = 2  # seeds per prompt at each log (Vendi needs >= 2)
    reference_count: int = 128  # reference latents (spread over the store) for the Frechet distance
    checkpoint_every: int = 100  # steps between checkpoints (and after the last step)
    device: str = "cpu"  # where every role runs (cpu, cuda)
    autocast: str | None = None  # None (float32) or "bf16": the terms' forward passes under bf16 autocast (weights,
    #                              optimisers and samplers stay float32); like device, a rerun may change it
    out: str | None = None  # run folder; None: runs/student-<losses>-<student_steps>step

    def run_dir(self) -> Path:
        name = f"student-{'-'.join(self.losses)}-{self.student_steps}step"
        return Path(self.out) if self.out else Path("runs") / name


@dataclass
class TeacherConfig:
    preset: str = "dit-s1"  # DiT size, a key of lrm.generators.dit.DIT_PRESETS (dit-s1: 2.6M params, one token per 8x8 latent)
    steps: int = 2250  # optimizer steps: the embedded image teacher's, ~10 min on a 2-core CPU at 8x8 latents
    batch_size: int = 32  # global batch (split across DDP ranks); capped at the store's size
    lr: float = 1e-3  # AdamW learning rate after warm-up (high for short runs; the EMA smooths it)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (DiT trains without)
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr, then constant
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.995  # EMA of the weights (the teacher): a ~200-step horizon suits runs of ~1k steps
    cfg_dropout: float = 0.1  # share of samples trained without their prompt (the CFG unconditional branch)
    prediction: str = "conjugate-v"  # what the DiT outputs; DOLLAR Eq. 13 (target x0 - eps)
    init: str | None = None  # teacher run (or its model folder) to start from; an image teacher starts a video one inflated
    seed: int = 0  # seed of model init, batch order, timesteps, noise and dropout
    log_every: int = 10  # steps between training-loss lines in metrics.jsonl
    checkpoint_every: int = 150  # steps between resumable checkpoints (and after the last step)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    snapshots: int = 10  # EMA models kept at every 1/snapshots of training (0: none); the 10% teacher of benchmarks
    report_guidance: float = 4.0  # CFG scale of the report's samples
    report_samples: int = 8  # prompts (the store's first distinct ones) shown in the report, 2 seeds each
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"; under torchrun with CUDA each rank uses cuda:LOCAL_RANK


# Fields left out of resume checks and of the embedded teacher's cache key: how a run is logged or shown, and
# `init`, a path that only sets step 0 (a resumed run loads its checkpoint; the embedded video teacher's key
# names its image teacher's run), so a moved cache or another spelling of the path still resumes.
RUN_ONLY_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints", "snapshots", "report_guidance",
                   "report_samples", "device", "init")


def training_settings(config: TeacherConfig) -> dict:
    """The fields of `config` that determine the trained weights (JSON-able)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k not in RUN_ONLY_FIELDS}
