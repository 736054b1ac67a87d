"""lrm's own text-conditioned latent DiT (Peebles & Xie 2023) for images and videos.

A denoiser (docs/generators.md):

    model(x_t (B, T, c, h, w), t (B,), text (B, L, D) | None, text_mask (B, L) | None) -> (B, T, c, h, w)

in its own `prediction` type ("conjugate-v" by default: DOLLAR Eq. 13, target x0 - eps) on the
schedule `schedule_config` describes (read by lrm.diffusion; VP-DDPM with linear betas, T = 1000, by
default). Downstream code converts outputs to (x0_hat, eps_hat) and never branches on the model.

Structure, per DiT:
- Patchify: each latent frame is cut into p x p patches, one token each (a stride-p conv), plus a
  fixed 2D sin-cos position over (h/p, w/p). For clips (T > 1) a fixed 1D sin-cos position over frames
  is added to the temporal attention's input only, so the spatial path of a video model sees exactly
  what an image model sees. Fixed positions make the model resolution- and length-agnostic.
- Conditioning vector: sinusoidal timestep features -> MLP, plus the mean of the projected text
  context (a pooled prompt), feeding adaLN-zero in every block: each sub-layer is
  x + gate * f(norm(x) * (1 + scale) + shift), with the modulation Linear zero-initialised, so
  every block starts as the identity; the final Linear is zero too, so an untrained model outputs 0.
- Each block: spatial self-attention within each frame; temporal self-attention across frames at
  each patch position (video models, frames > 1, and only when the input has T > 1: a video model
  also denoises images); cross-attention to the text context; MLP.
- Text context: a learned null token (in the text encoder's space, D) always comes first, then the
  prompt's tokens (masked keys are never attended). text=None is the unconditional branch of CFG:
  the context is the null token alone. A row of text_mask that is all False is the same thing, so
  a trainer drops text for CFG per sample by clearing its mask row.
- An image model (frames = 1) has no temporal layers and denoises a clip frame by frame (an image
  teacher on a video's frames, AVDM2's SDM-2D). `inflate` turns an image model into a video model
  that starts as exactly that: every weight copied, temporal attention added behind a zero adaLN gate
  (the image-to-video warm start of VideoLDM / AnimateDiff), so a video teacher inherits what the image
  teacher binds to the prompt and only has to learn time.

Sizes are the named presets in DIT_PRESETS; `build_dit` makes one, `LatentDiT` takes explicit
dimensions. Weights save as safetensors + config.json (lrm.generators.io).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lrm.diffusion.parameterisations import check_prediction
from lrm.diffusion.schedules import FlowSchedule, Schedule, schedule_from_config
from lrm.models.timestep import sinusoidal_embedding

DEFAULT_PREDICTION = "conjugate-v"  # DOLLAR Eq. 13: the network regresses x0 - eps
DEFAULT_SCHEDULE = {"type": "vp", "betas": "linear", "num_timesteps": 1000}  # DOLLAR: DDPM schedule, T = 1000
TIME_FREQUENCIES = 256  # sinusoidal timestep features before the MLP, as in DiT
MAX_PERIOD = 10_000  # longest wavelength of the sin-cos positions

# name -> explicit dimensions. Parameter counts (comments) at 32 latent channels (dct), text D = 384
# (all-MiniLM-L6-v2); a video model (frames > 1) adds temporal attention + its modulation per block.
DIT_PRESETS: dict[str, dict] = {
    "dit-xs": dict(depth=2, width=64, heads=2, patch=2),  # 286,464 image / 344,704 video: tests
    "dit-s": dict(depth=6, width=128, heads=4, patch=2),  # 2,672,640 image / 3,366,144 video
    "dit-s1": dict(depth=6, width=128, heads=4, patch=1),  # 2,647,968 image / 3,341,472 video: the embedded teachers
    "dit-m": dict(depth=8, width=256, heads=4, patch=2),  # 13,711,872 image / 17,396,224 video: a bigger CPU/GPU teacher
    "dit-m1": dict(depth=8, width=256, heads=4, patch=1),  # 13,662,624 image / 17,346,976 video: dit-m at patch 1
    "dit-b": dict(depth=12, width=768, heads=12, patch=2),  # 180,793,856 image / 230,403,584 video: GPUs (DiT-B width)
}


def build_dit(name: str, in_channels: int, text_dim: int, frames: int = 1, **overrides) -> LatentDiT:
    """The DIT_PRESETS entry `name` for `in_channels` latent channels, text tokens of width `text_dim`
    and clips of `frames` latent frames (1: an image model); `overrides` replace preset dimensions or
    set prediction / schedule_config / gradient_checkpointing."""
    if name not in DIT_PRESETS:
        raise KeyError(f"unknown DiT preset {name!r}; choose one of {', '.join(DIT_PRESETS)}")
    model = LatentDiT(in_channels, text_dim, frames, **{**DIT_PRESETS[name], **overrides})
    model.preset = name
    return model


def inflate(image: LatentDiT, frames: int) -> LatentDiT:
    """A video DiT for clips of `frames` latent frames that equals the image DiT `image` applied frame by frame:
    every weight copied, each block's temporal attention fresh behind a zero adaLN gate (its modulation rows
    zero), so only training opens it. Codec settings, text encoder id and preset carry over."""
    if image.temporal:
        raise ValueError(f"inflate: the DiT is already a video model ({image.frames} frames); pass an image model")
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"inflate: a video model needs frames >= 2, got {frames!r}")
    video = LatentDiT(**{**image.dimensions(), "frames": frames},
                      gradient_checkpointing=image.gradient_checkpointing).to(image.null_text)
    state = image.state_dict()
    width = image.width
    for i, block in enumerate(video.blocks):  # modulation rows (spatial, cross, mlp) -> (spatial, temporal, cross, mlp)
        for kind in ("weight", "bias"):
            rows = state.pop(f"blocks.{i}.modulation.1.{kind}").unflatten(0, (3, 3 * width))  # (sublayer, 3W, ...)
            merged = torch.zeros_like(block.modulation[1].get_parameter(kind)).unflatten(0, (4, 3 * width))
            merged[[0, 2, 3]] = rows  # the temporal sub-layer's shift, scale and gate stay zero
            state[f"blocks.{i}.modulation.1.{kind}"] = merged.flatten(0, 1)
    missing, unexpected = video.load_state_dict(state, strict=False)
    if unexpected or any(".temporal_attention." not in name for name in missing):
        raise RuntimeError(f"inflate: weights did not map (missing {missing}, unexpected {unexpected})")
    video.preset, video.codec_settings, video.text_encoder_id = image.preset, image.codec_settings, image.text_encoder_id
    return video


# ---------------------------------------------------------------- positions


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim) [sin | cos] features (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float64) / half)
    args = positions.double()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1).float()


def sincos_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """(rows * cols, dim) positions of a row-major grid: half the features encode the row, half the column."""
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([sincos_1d(ys.flatten(), dim // 2), sincos_1d(xs.flatten(), dim // 2)], dim=1)


# ---------------------------------------------------------------- layers


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, S, W) * (1 + scale) + shift, with shift and scale (B, W) per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None. Keys where key_mask is False are ignored."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"DiT width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, S, W), context (N, K, W) (default x), key_mask (N, K) bool -> (N, S, W)."""
        n, s, w = x.shape
        context = x if context is None else context
        q = self.query(x).view(n, s, self.heads, -1).transpose(1, 2)  # (N, H, S, W/H)
        k, v = self.key_value(context).view(n, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (N, H, K, W/H)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (N, 1, 1, K)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, S, W/H)
        return self.out(y.transpose(1, 2).reshape(n, s, w))


class DiTBlock(nn.Module):
    """Spatial attention, [temporal attention], cross-attention, MLP; each an adaLN-zero residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.sublayers = ("spatial", "temporal", "cross", "mlp") if temporal else ("spatial", "cross", "mlp")
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)  # shared: it has no parameters
        self.spatial_attention = Attention(width, heads)
        self.temporal_attention = Attention(width, heads) if temporal else None
        self.cross_attention = Attention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * len(self.sublayers) * width))  # zeroed by LatentDiT

    def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                time_position: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, N, W) tokens, cond (B, W), context (B, K, W), context_mask (B, K), time_position (T, W)
        added to the temporal attention's input (None: no temporal attention) -> (B, T, N, W)."""
        b, frames, n, w = x.shape
        chunks = self.modulation(cond).chunk(3 * len(self.sublayers), dim=1)  # each (B, W)
        mods = {name: chunks[3 * i : 3 * i + 3] for i, name in enumerate(self.sublayers)}  # (shift, scale, gate)

        def residual(tokens, name, f):  # tokens (B, S, W) -> tokens + gate * f(adaLN(tokens))
            shift, scale, gate = mods[name]
            return tokens + gate[:, None] * f(modulate(self.norm(tokens), shift, scale))

        def within_frames(h):  # (B, T*N, W): attention over the N patches of each of the B*T frames
            return self.spatial_attention(h.reshape(b * frames, n, w)).reshape(b, frames * n, w)

        def across_frames(h):  # (B, T*N, W): attention over the T frames at each of the B*N patch positions
            h = (h.reshape(b, frames, n, w) + time_position[None, :, None]).transpose(1, 2).reshape(b * n, frames, w)
            return self.temporal_attention(h).reshape(b, n, frames, w).transpose(1, 2).reshape(b, frames * n, w)

        tokens = residual(x.reshape(b, frames * n, w), "spatial", within_frames)
        if time_position is not None:  # a video model given a clip (T > 1); given an image it skips this
            tokens = residual(tokens, "temporal", across_frames)
        tokens = residual(tokens, "cross", lambda h: self.cross_attention(h, context, context_mask))
        tokens = residual(tokens, "mlp", self.mlp)
        return tokens.reshape(b, frames, n, w)


# ---------------------------------------------------------------- the model


class LatentDiT(nn.Module):
    """Text-conditioned latent DiT; see the module docstring."""

    def __init__(self, in_channels: int, text_dim: int, frames: int = 1, *, depth: int, width: int, heads: int,
                 patch: int, mlp_ratio: float = 4.0, prediction: str = DEFAULT_PREDICTION,
                 schedule_config: dict | None = None, gradient_checkpointing: bool = False):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("text_dim", text_dim), ("frames", frames),
                            ("depth", depth), ("width", width), ("heads", heads), ("patch", patch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LatentDiT: {name} must be a positive integer, got {value!r}")
        if width % 4:
            raise ValueError(f"LatentDiT: width must be a multiple of 4 (2D sin-cos positions), got {width}")
        self.preset: str | None = None  # set by build_dit
        self.in_channels = in_channels  # c of the latents
        self.text_dim = text_dim  # D of the text encoder's tokens
        self.frames = frames  # latent frames of the clips it is made for; 1: an image model (no temporal layers)
        self.depth, self.width, self.heads, self.patch, self.mlp_ratio = depth, width, heads, patch, mlp_ratio
        self.prediction = check_prediction(prediction)  # what the network outputs (a parameterisation lrm.diffusion knows)
        self.schedule_config = dict(schedule_config or DEFAULT_SCHEDULE)  # lrm.diffusion.schedules.schedule_from_config reads it
        if isinstance(self.schedule, FlowSchedule) and prediction == "eps":  # (also checks the schedule config)
            raise ValueError("LatentDiT: an eps model on a flow schedule cannot give x0 at sigma = 1 (alpha = 0), where "
                             "sampling starts; use prediction 'flow' (or 'x0', 'v', 'conjugate-v')")
        self.gradient_checkpointing = gradient_checkpointing  # recompute blocks in backward (less memory, ~30% slower)
        self.codec_settings: dict | None = None  # Codec.settings() of the latents it was trained on (set by the trainer)
        self.text_encoder_id: str | None = None  # lrm.text id of the tokens it was trained on (set by the trainer)

        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQUENCIES, width), nn.SiLU(), nn.Linear(width, width))
        self.null_text = nn.Parameter(torch.randn(1, text_dim) * 0.02)  # the unconditional context token
        self.text_proj = nn.Sequential(nn.Linear(text_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        self.text_pool = nn.Linear(width, width)  # pooled context -> conditioning vector
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, temporal=frames > 1) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final = nn.Linear(width, patch * patch * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():  # DiT: xavier-uniform Linears, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.width, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-zero
            nn.init.zeros_(block.modulation[1].weight)
            nn.init.zeros_(block.modulation[1].bias)
        for layer in (self.final_modulation[1], self.final):  # the untrained model outputs exactly 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def temporal(self) -> bool:
        return self.frames > 1

    @property
    def schedule(self) -> Schedule:
        """The lrm.diffusion Schedule of `schedule_config` (a denoiser carries its schedule)."""
        return schedule_from_config(self.schedule_config)

    def dimensions(self) -> dict:
        """The constructor's arguments (what config.json records to rebuild the model)."""
        return {"in_channels": self.in_channels, "text_dim": self.text_dim, "frames": self.frames,
                "depth": self.depth, "width": self.width, "heads": self.heads, "patch": self.patch,
                "mlp_ratio": self.mlp_ratio, "prediction": self.prediction,
                "schedule_config": dict(self.schedule_config)}

    # ---------------------------------------------------------------- forward
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, T, c, h, w), t (B,) integer or float timesteps, text (B, L, D) | None, text_mask (B, L) bool
        | None (None: all tokens valid) -> (B, T, c, h, w) in `self.prediction`."""
        b, frames, c, h, w = self._check(x_t, t, text, text_mask)
        p = self.patch
        rows, cols = h // p, w // p
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(x_t.reshape(b * frames, c, h, w).to(dtype))  # (B*T, W, h/p, w/p)
        x = x.flatten(2).transpose(1, 2).reshape(b, frames, rows * cols, self.width)  # (B, T, N, W)
        x = x + sincos_2d(rows, cols, self.width).to(x)[None, None]  # space
        time_position = sincos_1d(torch.arange(frames), self.width).to(x) if frames > 1 and self.temporal else None

        context, context_mask = self._context(b, text, text_mask, dtype, x.device)  # (B, K, W), (B, K)
        pooled = (context * context_mask[..., None]).sum(1) / context_mask.sum(1, keepdim=True)  # (B, W)
        cond = self.time_mlp(sinusoidal_embedding(t.to(x.device), TIME_FREQUENCIES).to(dtype))  # (B, W)
        cond = cond + self.text_pool(pooled)

        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, context, context_mask, time_position, use_reentrant=False)
            else:
                x = block(x, cond, context, context_mask, time_position)

        shift, scale = self.final_modulation(cond).chunk(2, dim=1)  # (B, W) each
        tokens = modulate(self.final_norm(x.reshape(b, frames * rows * cols, self.width)), shift, scale)
        out = self.final(tokens)  # (B, T*N, p*p*c)
        out = out.reshape(b, frames, rows, cols, p, p, c).permute(0, 1, 6, 2, 4, 3, 5)  # (B, T, c, h/p, p, w/p, p)
        return out.reshape(b, frames, c, h, w).to(x_t.dtype)

    def forward_features(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                         text_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The tokens after each block, [(B, T, N, W)] * depth (N = h/p * w/p patches), for a discriminator
        head on this model as a frozen encoder (AVDM2 Sec. 4.1). Collected by forward hooks on the blocks
        during an ordinary `forward`, so the outputs and the weights are untouched."""
        features: list[torch.Tensor] = []
        hooks = [block.register_forward_hook(lambda _m, _i, out: features.append(out)) for block in self.blocks]
        try:
            self.forward(x_t, t, text, text_mask)
        finally:
            for hook in hooks:
                hook.remove()
        return features

    def _context(self, b: int, text, text_mask, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected [null token, prompt tokens] (B, 1 + L, W) and their validity (B, 1 + L) bool."""
        null = self.null_text.to(dtype)[None].expand(b, 1, self.text_dim)  # (B, 1, D)
        if text is None:
            tokens, mask = null, torch.ones(b, 1, dtype=torch.bool, device=device)
        else:
            valid = torch.ones(text.shape[:2], dtype=torch.bool, device=device) if text_mask is None else text_mask.bool()
            text = torch.where(valid[..., None], text.to(dtype), 0.0)  # masked tokens never reach the sums
            tokens = torch.cat([null, text], dim=1)  # (B, 1 + L, D)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), valid], dim=1)
        return self.text_proj(tokens), mask

    def _check(self, x_t, t, text, text_mask) -> tuple[int, int, int, int, int]:
        who = f"DiT {self.preset or 'model'}"
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 5:
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            hint = " (images: add a time axis with x_t.unsqueeze(1))" if getattr(x_t, "ndim", 0) == 4 else ""
            raise ValueError(f"{who}: x_t must have shape (B, T, c, h, w), got {shape}{hint}")
        b, frames, c, h, w = x_t.shape
        if c != self.in_channels:
            raise ValueError(f"{who}: expects {self.in_channels} latent channels, got {c} (shape {tuple(x_t.shape)}); "
                             "was it trained in another codec's latent space?")
        if h % self.patch or w % self.patch:
            raise ValueError(f"{who}: latent height and width must be multiples of the patch size {self.patch}, "
                             f"got {(h, w)}")
        if not isinstance(t, torch.Tensor) or t.shape != (b,):
            raise ValueError(f"{who}: t must be a tensor of {b} timesteps, shape ({b},), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if text is None:
            if text_mask is not None:
                raise ValueError(f"{who}: text_mask given without text; pass both, or neither for the unconditional branch")
            return b, frames, c, h, w
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != self.text_dim:
            raise ValueError(f"{who}: text must have shape ({b}, L, {self.text_dim}) (the text encoder it was "
                             f"trained with), got {tuple(text.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"{who}: text_mask must have shape {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
        return b, frames, c, h, w
