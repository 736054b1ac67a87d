"""Frame-level 2D score distribution matching: AVDM2 Sec. 4.2, Eq. 8 (Alg. 1 lines 9-15).

VSD (lrm.tuning.vsd.score_distillation, the DMD surrogate on x0 predictions) on K random frames of a video
student's x0: the frames (B K, 1, c, h, w) are noised at t ~ U[0.2T, 0.98T] (AVDM2 Sec. 5.1) and scored
by a frozen image teacher (real score, CFG `guidance`; AVDM2 does not state its scale, DOLLAR's 3.5 for
VSD's real score is the default) and the 2D fake score, a copy of the image teacher trained on frames of
detached student samples with the image teacher's diffusion objective (2 updates per generator step,
the role's update ratio). The per-sample loss is the mean over its K frames. K is not given in AVDM2;
the default is 4. Both image models must work in the student's latent space (same channels).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lrm.tuning.denoise import denoising_loss
from lrm.tuning.roles import FAKE_2D, TEACHER_2D
from lrm.tuning.terms import Step, no_auxiliary
from lrm.tuning.vsd import REAL_GUIDANCE, score_distillation

T_LOW, T_HIGH = 0.2, 0.98  # AVDM2 Sec. 5.1: "t ~ U[0.2T, 0.98T] in SDM loss"
FRAMES = 4


class SDM2DLoss(NamedTuple):
    generator: torch.Tensor  # (B,)
    fake_2d: torch.Tensor  # (B,)


def random_frames(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """K distinct random frames per sample: x (B, T, c, h, w) -> (B K, 1, c, h, w), sample-major."""
    b, frames = x.shape[:2]
    if not 1 <= k <= frames:
        raise ValueError(f"SDM-2D needs 1 <= K <= frames; got K = {k} for clips of {frames} latent frames")
    index = torch.rand(b, frames, generator=generator).argsort(dim=1)[:, :k].to(x.device)  # (B, K)
    picked = torch.gather(x, 1, index.view(b, k, 1, 1, 1).expand(b, k, *x.shape[2:]))  # (B, K, c, h, w)
    return picked.reshape(b * k, 1, *x.shape[2:])


class SDM2D:
    """L_SDM (AVDM2 Eq. 8): reads the 2D teacher and the 2D fake score; trains the 2D fake score."""

    name = "sdm2d"
    needs_real = False
    needs_sample = True

    def __init__(self, frames: int = FRAMES, guidance: float = REAL_GUIDANCE, t_low: float = T_LOW,
                 t_high: float = T_HIGH):
        self.frames, self.guidance, self.t_low, self.t_high = frames, guidance, t_low, t_high
        self.reads = (TEACHER_2D, FAKE_2D)
        self.trains = (FAKE_2D,)

    def _frames_and_text(self, step: Step, x: torch.Tensor):
        channels = getattr(step.roles.module(TEACHER_2D), "in_channels", x.shape[2])
        if x.shape[2] != channels:
            raise ValueError(f"SDM-2D: the image teacher expects {channels} latent channels but the "
                             f"student makes {x.shape[2]}; use an image teacher of the same codec")
        k = self.frames
        return (random_frames(x, k, step.generator), step.batch.text.repeat_interleave(k, 0),
                step.batch.text_mask.repeat_interleave(k, 0))

    def generator_loss(self, step: Step) -> torch.Tensor:
        frames, text, mask = self._frames_and_text(step, step.x_hat)
        roles = step.roles
        per_frame = score_distillation(frames, roles.module(TEACHER_2D), roles.module(FAKE_2D), text, mask,
                                       step.generator, self.guidance, self.t_low, self.t_high)  # (B K,)
        return per_frame.view(-1, self.frames).mean(1)

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        if role != FAKE_2D:
            no_auxiliary(self, role)
        frames, text, mask = self._frames_and_text(step, step.x_hat.detach())
        per_frame = denoising_loss(step.roles.module(FAKE_2D), frames, text, mask, step.generator)
        return per_frame.view(-1, self.frames).mean(1)

    def __call__(self, step: Step) -> SDM2DLoss:
        return SDM2DLoss(self.generator_loss(step), self.auxiliary_loss(FAKE_2D, step))
