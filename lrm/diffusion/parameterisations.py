"""Prediction types: a denoiser's output <-> (x0_hat, eps_hat), and the training target from (x0, eps).

All on the general x_t = alpha x0 + sigma eps (any schedule of lrm.diffusion.schedules), so that losses
and samplers work on x0/eps and never branch on the model:

  name          the model predicts               x0 from output o                     eps
  "eps"         eps                              (x_t - sigma o) / alpha              o
  "x0"          x0                               o                                    (x_t - alpha o) / sigma
  "v"           alpha eps - sigma x0             (alpha x_t - sigma o) / n            (sigma x_t + alpha o) / n
                (n = alpha^2 + sigma^2, 1 on VP)
                (Salimans & Ho 2022; diffusers "v_prediction")
  "conjugate-v" x0 - eps (DOLLAR Eq. 13)         (x_t + sigma o) / (alpha + sigma)    x0 - o
  "flow"        eps - x0 (rectified flow:        (x_t - sigma o) / (alpha + sigma)    x0 + o
                d x_t / d sigma when alpha = 1 - sigma; SD3, FLUX, Wan)

"conjugate-v" on the VP schedule (alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t)) is DOLLAR's Eq. 15:
x_theta = (x_t + sqrt(1 - abar_t) v) / (sqrt(abar_t) + sqrt(1 - abar_t)); it is "flow" with the sign
flipped, on the VP trajectory. "flow" on the flow schedule (alpha + sigma = 1) gives x0 = x_t - sigma o,
as diffusers' FlowMatchEulerDiscreteScheduler. Every conversion is affine in the output, so
classifier-free guidance gives the same (x0_hat, eps_hat) whether applied to outputs or to x0/eps.
Arguments alpha, sigma broadcast against x (`Schedule.alpha_sigma(t, x)`). "eps" cannot give x0 where
alpha = 0 (flow at sigma = 1) and "x0" cannot give eps where sigma = 0: pick the prediction for the schedule.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v", "conjugate-v", "flow")


def check_prediction(prediction: str) -> str:
    """The prediction name, or a one-line error listing the known ones."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {list(PREDICTIONS)}")
    return prediction


def to_x0_eps(prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor,
              sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A denoiser's output (B, ...) at x_t = alpha x0 + sigma eps -> (x0_hat, eps_hat), both (B, ...)."""
    check_prediction(prediction)
    if prediction == "eps":
        x0 = (x_t - sigma * output) / alpha
        return x0, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    if prediction == "v":
        norm = alpha**2 + sigma**2  # 1 on a VP schedule
        return (alpha * x_t - sigma * output) / norm, (sigma * x_t + alpha * output) / norm
    if prediction == "conjugate-v":  # DOLLAR Eq. 15 (x_t = (alpha + sigma) x0 - sigma (x0 - eps))
        x0 = (x_t + sigma * output) / (alpha + sigma)
        return x0, x0 - output
    x0 = (x_t - sigma * output) / (alpha + sigma)  # "flow": x_t = (alpha + sigma) x0 + sigma (eps - x0)
    return x0, x0 + output


def training_target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
                    sigma: torch.Tensor) -> torch.Tensor:
    """What a denoiser of this prediction type should output at x_t = alpha x0 + sigma eps, (B, ...):
    the regression target of its denoising loss (DOLLAR Eq. 13 for "conjugate-v")."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "conjugate-v":
        return x0 - eps
    return eps - x0  # "flow"
