"""`LatentRewardModel`: a latent surrogate R^l_phi(latents, text) of a pixel-space reward (DOLLAR Eq. 10).

One forward signature for every preset, so that a trainer can swap a real reward for its surrogate:

    model(latents (B, T, c, h, w), text=None (B, L, D), text_mask=None (B, L), t=None (B,)) -> (B,)

The network predicts a standardised value z; the output maps it to the reward's own units with the
label statistics of the training split: y = z * label_std + label_mean, or, for a surrogate fitted
on log labels (lrm.labels, label_transform "log", for right-skewed rewards such as sharpness),
y = exp(z * label_std + label_mean) + label_shift (mean and std are then those of log(y - shift)).
Mean and std are buffers saved with the weights; transform and shift are saved in config.json.
"-log" presets feed the backbone log-energy channels log(x^2 + eps) beside the latents x (see
`with_log_energy`). Per-frame presets run the 2D backbone on every latent frame and average the
frame outputs z (DOLLAR's frame-average reward); temporal presets run a 3D or frame-pair backbone
over the clip.
Noise-aware surrogates take the DDPM timestep t of noised latents x_t (t=None means clean
latents, t = 0).

Checkpoints are a directory with model.safetensors (weights and label statistics) and
config.json (preset, geometry, codec settings, reward, text encoder, lrm version); never pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lrm.io import atomic_write_bytes, atomic_write_json
from lrm.labels import LABEL_TRANSFORMS
from lrm.models.cnn import ConvBackbone
from lrm.models.fullres import FullResolutionBackbone
from lrm.models.timestep import TimestepEmbedding
from lrm.models.xattn import TextCrossAttention

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "lrm-surrogate"
FORMAT_VERSION = 1
GENERATOR_FORMAT = "lrm-denoiser"  # lrm.generators.io.FORMAT: a teacher's or student's model/config.json
# must match to load (weights, weights_sha256: a trained codec's own, lrm.codecs.pae; compared when both record them)
CODEC_KEYS = ("name", "version", "channels", "spatial_factor", "temporal_factor", "scale", "weights", "weights_sha256")
LOG_ENERGY_EPS = 1e-4  # floor added to x^2 in the log-energy channels (bounds their gradient by 1 / sqrt(eps))


def with_log_energy(x: torch.Tensor) -> torch.Tensor:
    """(N, c, ...) latents -> (N, 2c, ...): [x, log(x^2 + eps)].

    Natural-scene-statistics rewards (BRISQUE, NIQE) read locally normalised pixels: deviations
    divided by the local contrast. A conv over log energies turns that division into a difference
    of logs, which it can form; over raw latents it cannot. On the real-data benchmark this lifts
    every image reward in dct, whose latents are DCT coefficients (BRISQUE 0.710 -> 0.890 with the
    strided CNN), and lowers most in taef2, whose latents are learned features (docs/surrogates.md, "Why log
    energies").
    """
    return torch.cat([x, torch.log(x.square() + LOG_ENERGY_EPS)], dim=1)


def channel_stats(x: torch.Tensor, logs: bool = True) -> torch.Tensor:
    """Per-channel pooled statistics (those the ridge baseline reads), as extra head inputs.

    Per channel: mean, std, mean |spatial difference| (neighbours along h and w, summed) and, for
    clips, mean |x_{t+1} - x_t|; each positive statistic both as is and as its log, so that the
    linear head can read rewards that are linear in an energy (flicker: mean frame difference)
    and those that scale with it (JPEG size).

    (N, c, h, w) frames -> (N, 5c);  (N, c, T, h, w) clips -> (N, 7c).
    logs=False drops the logs: (N, 3c) / (N, 4c), the ridge baseline's features (lrm.fidelity).
    """
    dims = tuple(range(2, x.ndim))
    spatial = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=dims) + (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=dims)
    positive = [x.std(dim=dims), spatial]  # (N, c) each
    if x.ndim == 5:
        change = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=dims) if x.shape[2] > 1 else x.new_zeros(x.shape[:2])
        positive.append(change)
    return torch.cat([x.mean(dim=dims), *positive, *(torch.log(v + 1e-4) for v in positive if logs)], dim=1)


def channel_stats_dim(in_channels: int, per_frame: bool) -> int:
    """Width of channel_stats for `in_channels` latent channels (frames: 5c, clips: 7c)."""
    return (5 if per_frame else 7) * in_channels


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` (torch >= 2.4 takes the device type; older releases answer per
    device through two functions)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class CodecMismatchError(ValueError):
    """A surrogate was fitted in one latent space and is being used in another."""


def check_codec(preset: str, in_channels: int, fitted_in: dict | None, codec_settings: dict) -> None:
    """Raise CodecMismatchError when latents of `codec_settings` cannot feed a surrogate of `preset` for
    `in_channels` channels fitted in the latent space `fitted_in` (None: unknown, only channels checked)."""
    channels = codec_settings.get("channels")
    if channels is not None and channels != in_channels:
        raise CodecMismatchError(
            f"surrogate {preset!r} takes {in_channels}-channel latents but codec "
            f"{codec_settings.get('name')!r} makes {channels}-channel latents; refit it in this codec's latent space"
        )
    if fitted_in is None:
        return
    diff = [k for k in CODEC_KEYS if k in fitted_in and k in codec_settings and fitted_in[k] != codec_settings[k]]
    if diff:
        theirs = {k: codec_settings[k] for k in CODEC_KEYS if k in codec_settings}
        ours = {k: fitted_in[k] for k in CODEC_KEYS if k in fitted_in}
        raise CodecMismatchError(
            f"surrogate fitted in codec {ours} cannot read latents of codec {theirs} (differs in {diff}); "
            "encode with the codec it was fitted in, or refit the surrogate"
        )


@dataclass
class SurrogateInfo:
    """What the surrogate imitates and in which latent space; saved in config.json."""

    codec_settings: dict | None = None  # Codec.settings() of the latent space it was fitted in
    reward_name: str | None = None  # reward (label column) it imitates
    reward_spec: dict | None = None  # asdict(RewardSpec) of that reward, when known
    text_encoder_id: str | None = None  # lrm.text encoder that produced the text embeddings
    noise_schedule: str | None = None  # lrm.diffusion.schedule name giving t its meaning (noise-aware only)
    extra: dict = field(default_factory=dict)  # free-form provenance (store path, fit run, ...)


def not_a_surrogate(run: Path) -> str:
    return (f"{run} is a generator run (`lrm teacher train` / `lrm distill`), not a surrogate; pass the model folder "
            "of an `lrm fit` run")


def _saved_format(config_path: Path) -> str | None:
    """The "format" a saved config.json declares (lrm-surrogate, lrm-denoiser, ...); None when unreadable."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("format") if isinstance(config, dict) else None


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float64, on the CPU where its device has no float64 (MPS); gradients follow the move."""
    return x.cpu().double() if x.device.type == "mps" else x.double()


class LatentRewardModel(nn.Module):
    """Backbone (+ text cross-attention) (+ timestep FiLM) -> Linear head -> un-standardise."""

    def __init__(self, preset: str, in_channels: int,
                 backbone: ConvBackbone | FullResolutionBackbone,
                 per_frame: bool,
                 cross_attention: TextCrossAttention | None = None,
                 time_embedding: TimestepEmbedding | None = None, pooled_stats: bool = False,
                 log_energy: bool = False, width: float = 1.0):
        super().__init__()
        self.preset = preset
        self.width = width  # the preset's conv width multiplier (lrm.models.presets.build)
        self.in_channels = in_channels
        self.per_frame = per_frame
        self.backbone = backbone
        self.cross_attention = cross_attention
        self.time_embedding = time_embedding
        self.pooled_stats = pooled_stats
        self.log_energy = log_energy  # the backbone reads with_log_energy(latents): 2c channels
        stats_dim = channel_stats_dim(in_channels, per_frame) if pooled_stats else 0
        self.head = nn.Linear(backbone.feature_dim + stats_dim, 1)
        self.register_buffer("label_mean", torch.zeros(()))
        self.register_buffer("label_std", torch.ones(()))
        self.label_transform = "none"
        self.label_shift = 0.0
        self.info = SurrogateInfo()

    # ---------------------------------------------------------------- properties
    @property
    def text_dim(self) -> int | None:
        return self.cross_attention.text_dim if self.cross_attention is not None else None

    @property
    def noise_aware(self) -> bool:
        return self.time_embedding is not None

    def set_label_stats(self, mean: float, std: float, transform: str = "none", shift: float = 0.0) -> None:
        """Statistics of the (transformed) training labels that map standardised outputs to reward units."""
        if not std > 0:
            raise ValueError(f"label std must be positive, got {std}")
        if transform not in LABEL_TRANSFORMS:
            raise ValueError(f"label transform must be one of {LABEL_TRANSFORMS}, got {transform!r}")
        self.label_mean.fill_(float(mean))
        self.label_std.fill_(float(std))
        self.label_transform = transform
        self.label_shift = float(shift) if transform == "log" else 0.0

    def to_reward_units(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised outputs z (B,) -> reward units (B,)."""
        if self.label_transform != "log":
            return z * self.label_std + self.label_mean
        u = _wide(z) * _wide(self.label_std) + _wide(self.label_mean)  # float64: the shift can dwarf the span
        return (torch.exp(u) + self.label_shift).to(z.device, z.dtype)

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        """Rewards y (B,) -> the standardised scale the network is fitted on; inverse of to_reward_units.

        With the log transform, y must exceed label_shift (training labels always do). It is computed in float64:
        labels near 1e7 with a span of 200 have y - shift rounded to 0 in float32 (log 0 = -inf)."""
        if self.label_transform != "log":
            return (y - self.label_mean) / self.label_std
        u = torch.log(_wide(y) - self.label_shift)
        return ((u - _wide(self.label_mean)) / _wide(self.label_std)).to(y.device, y.dtype)

    # ---------------------------------------------------------------- forward
    def forward(self, latents: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, t: torch.Tensor | None = None,
                standardised: bool = False) -> torch.Tensor:
        """(B,) rewards in reward units; standardised=True returns the network's z (what fitting's loss reads)."""
        text, text_mask, t = self._check_inputs(latents, text, text_mask, t)
        b, frames = latents.shape[:2]
        cond = self.time_embedding(t) if self.time_embedding is not None else None  # (B, E)
        if self.per_frame:
            x = latents.flatten(0, 1)  # (B*T, c, h, w)
            if cond is not None:
                cond = cond.repeat_interleave(frames, dim=0)  # (B*T, E)
            if text is not None:
                text = text.repeat_interleave(frames, dim=0)  # (B*T, L, D)
                text_mask = text_mask.repeat_interleave(frames, dim=0)  # (B*T, L)
        else:
            x = latents.transpose(1, 2)  # (B, c, T, h, w)
        features = self.backbone(with_log_energy(x) if self.log_energy else x, cond)  # (N, F)
        if self.cross_attention is not None:
            features = self.cross_attention(features, text, text_mask)
        if self.pooled_stats:
            features = torch.cat([features, channel_stats(x)], dim=1)  # (N, F + 5c | 7c)
        z = self.head(features).reshape(b, -1).mean(dim=1)  # (B,) standardised, frame-averaged
        return z if standardised else self.to_reward_units(z)

    def _check_inputs(self, latents, text, text_mask, t):
        who = f"surrogate {self.preset!r}"
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            hint = " (images: add a time axis with latents.unsqueeze(1))" if getattr(latents, "ndim", 0) == 4 else ""
            raise ValueError(f"{who}: latents must have shape (B, T, c, h, w), got {shape}{hint}")
        b = latents.shape[0]
        weights = next(self.parameters()).dtype
        # conv's own message named no fix ("Input type (double) and bias type (float)"); autocast casts for itself
        if latents.dtype != weights and not autocast_enabled(latents.device.type):
            raise ValueError(f"{who}: latents are {str(latents.dtype).removeprefix('torch.')} but its weights are "
                             f"{str(weights).removeprefix('torch.')}: pass latents.to({weights}) (or move the "
                             f"surrogate: surrogate.to({latents.dtype}) for a floating dtype)")
        if b == 0:
            raise ValueError(f"{who}: no latents to score (a batch of 0)")
        if latents.shape[2] != self.in_channels:
            raise ValueError(
                f"{who}: expects {self.in_channels} latent channels, got {latents.shape[2]} "
                f"(shape {tuple(latents.shape)}); was it fitted in another codec's latent space?"
            )
        if self.cross_attention is None:
            text = text_mask = None  # image/video rewards ignore the prompt, like pixel rewards do
        else:
            if text is None:
                raise ValueError(
                    f"{who} is a text-conditioned surrogate: pass text (B, L, {self.text_dim}) token embeddings "
                    "(and text_mask (B, L)) from the text encoder it was fitted with"
                )
            if text.ndim != 3 or text.shape[0] != b or text.shape[2] != self.text_dim:
                raise ValueError(f"{who}: text must have shape ({b}, L, {self.text_dim}), got {tuple(text.shape)}")
            if text_mask is None:
                text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            if text_mask.shape != text.shape[:2]:
                raise ValueError(f"{who}: text_mask must have shape {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
            text_mask = text_mask.bool()
            if not text_mask.any(dim=1).all():
                raise ValueError(f"{who}: every text_mask row needs at least one True (valid) token")
        if self.time_embedding is None:
            if t is not None:
                raise ValueError(f"{who} was not fitted noise-aware: call it without t, or fit with noise_aware=True")
        elif t is None:
            t = torch.zeros(b, dtype=torch.long, device=latents.device)  # clean latents
        elif t.ndim != 1 or t.shape[0] != b:
            raise ValueError(f"{who}: t must be integer timesteps of shape ({b},), got {tuple(t.shape)}")
        return text, text_mask, t

    # ---------------------------------------------------------------- compatibility
    def check_compatible(self, codec_settings: dict) -> None:
        """Raise CodecMismatchError when `codec_settings` is not the latent space this surrogate was fitted in."""
        check_codec(self.preset, self.in_channels, self.info.codec_settings, codec_settings)

    # ---------------------------------------------------------------- save / load
    def config(self) -> dict:
        from lrm import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lrm_version": __version__,
            "preset": self.preset,
            "width": self.width,
            "in_channels": self.in_channels,
            "text_dim": self.text_dim,
            "noise_aware": self.noise_aware,
            "label_stats": {"mean": float(self.label_mean), "std": float(self.label_std),
                            "transform": self.label_transform, "shift": self.label_shift},
            **asdict(self.info),
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors + config.json into `directory` (atomic per file); returns the directory."""
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}))
        atomic_write_json(directory / CONFIG_NAME, self.config())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, codec_settings: dict | None = None,
                        map_location: str | torch.device = "cpu") -> "LatentRewardModel":
        """Load a saved surrogate, in eval mode; with `codec_settings`, refuse a latent space it was not fitted in."""
        from safetensors.torch import load_file

        from lrm.models.presets import PRESETS, REMOVED_PRESETS, build

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                inner = _saved_format(directory / "model" / CONFIG_NAME)
                if inner == FORMAT:  # the run folder of `lrm fit`
                    raise FileNotFoundError(f"{directory} is a run folder of `lrm fit`; pass its surrogate: "
                                            f"{directory / 'model'}")
                if inner == GENERATOR_FORMAT:
                    raise ValueError(not_a_surrogate(directory))
                raise FileNotFoundError(
                    f"{path} not found: a saved surrogate is a folder with {CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(written by LatentRewardModel.save_pretrained or `lrm fit`)"
                )
        refit = "fit the surrogate again (lrm fit ... --out RUN) or restore the file"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{config_path} is damaged: not valid JSON ({exc}); {refit}") from exc
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} is damaged: it holds a {type(config).__name__}, not an object; {refit}")
        if config.get("format") == GENERATOR_FORMAT:
            raise ValueError(not_a_surrogate(directory.parent if directory.name == "model" else directory))
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{config_path} is not an lrm surrogate of format {FORMAT} v{FORMAT_VERSION} "
                f"(got format={config.get('format')!r}, version={config.get('format_version')!r})"
            )
        missing = [key for key in ("preset", "in_channels", "text_dim", "noise_aware") if key not in config]
        if missing:
            raise ValueError(f"{config_path} is damaged: it lacks {', '.join(missing)}; {refit}")
        removed = REMOVED_PRESETS.get(config["preset"])
        if removed is not None:
            raise ValueError(f"{directory} holds a surrogate of preset {config['preset']!r}, which lrm no longer has "
                             f"(use {removed}); refit it with `lrm fit REWARD --model PRESET`, PRESET one of "
                             f"{', '.join(PRESETS)}")
        if codec_settings is not None:
            check_codec(config["preset"], config["in_channels"], config.get("codec_settings"), codec_settings)
        model = build(config["preset"], config["in_channels"], text_dim=config["text_dim"],
                      noise_aware=config["noise_aware"], width=config.get("width", 1.0))
        try:
            weights = load_file(weights_path, device=str(map_location))
        except Exception as exc:  # safetensors' own SafetensorError: a truncated or foreign file
            raise ValueError(f"{weights_path} cannot be read as safetensors ({exc}); {refit}") from exc
        non_finite = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if non_finite:  # e.g. a fit that diverged: every prediction would be NaN
            raise ValueError(f"{weights_path} holds NaN or infinite values (in {', '.join(non_finite[:3])}"
                             f"{', ...' if len(non_finite) > 3 else ''}); {refit}, e.g. with a lower --lr")
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # missing / unexpected keys, or shapes of another model
            first = str(exc).strip().splitlines()[:2]
            raise ValueError(f"{weights_path} does not hold the weights of this {config['preset']} surrogate "
                             f"({' '.join(line.strip() for line in first)}); {refit}") from exc
        stats = config.get("label_stats", {})
        model.set_label_stats(float(model.label_mean), float(model.label_std),
                              stats.get("transform", "none"), stats.get("shift", 0.0))
        model.info = SurrogateInfo(**{k: config.get(k) for k in SurrogateInfo.__dataclass_fields__ if k in config})
        return model.to(map_location).eval()
