"""lrm.diffusion against independent references: diffusers' DDPM / DDIM / FlowMatchEulerDiscrete
schedulers, torch.distributions.Normal, DOLLAR's equations written out literally, and exact round trips.

How diffusers is configured to mean the same thing as lrm.diffusion:
- beta_schedule "linear" (1e-4..0.02) / "scaled_linear" (0.00085..0.012, set explicitly as SD configs do)
  = VPSchedule(betas="linear" / "scaled-linear");
- prediction_type "epsilon" / "v_prediction" = prediction "eps" / "v";
- DDIM: timestep_spacing="trailing" gives our grids (50 steps: 999, ..., 19); set_alpha_to_one=True makes
  the step after the last timestep land on clean data (our CLEAN = (1, 0)); clip_sample=False and no
  thresholding (we never clip); eta and variance_noise passed as our eta and noise;
- DDPM: variance_type="fixed_small" is the posterior std of Eq. 25; custom timesteps give the same
  "next timestep" as our loops (diffusers' previous_timestep);
- FlowMatchEulerDiscreteScheduler(shift=...) without dynamic shifting = FlowSchedule(shift=...);
  stochastic_sampling=True is our few-step re-noising sampler; FlowSchedule(grid="flux") is FluxPipeline's
  sampling grid (its sigmas through diffusers' retrieve_timesteps, with the dynamic shift of calculate_shift).
diffusers keeps alphas_cumprod in float32, lrm in float64: single steps are compared with diffusers'
schedulers recomputed in float64 (`_in_float64`, tolerance 1e-9), schedules and whole loops with diffusers
as shipped (float32, 1e-5..1e-4); our own identities are checked in float64 to 1e-9 or tighter.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrm.diffusion import schedule as legacy
from lrm.diffusion.parameterisations import PREDICTIONS, to_x0_eps, training_target
from lrm.diffusion.samplers import (STUDENT_TIMESTEPS, TEACHER_TIMESTEPS, cfg, ddim_step, ddpm_posterior,
                                    euler_step, gaussian_log_prob, sample, sample_few_step)
from lrm.diffusion.schedules import (FlowSchedule, VPSchedule, schedule_from_config, shift_sigma,
                                     trailing_timesteps)

diffusers = pytest.importorskip("diffusers")

# diffusers' beta_start/beta_end defaults are DDPM's; Stable Diffusion's configs set 0.00085 / 0.012
DIFFUSERS_BETAS = {"linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
                   "scaled-linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}
SHAPE = (3, 2, 4, 5, 5)  # (B, T, c, h, w) latents
TOL = dict(rtol=1e-5, atol=1e-5)  # against diffusers in float32
TIGHT = dict(rtol=1e-9, atol=1e-9)  # against diffusers in float64 (`_in_float64`)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _in_float64(scheduler):
    """A diffusers DDPM/DDIM scheduler with its alphas_cumprod recomputed by its own beta formula in float64
    (float32 loses 1 - abar_t near t = 0: a 1e-4 error in the posterior std at t = 1)."""
    cfg_ = scheduler.config
    if cfg_.beta_schedule == "linear":
        betas = torch.linspace(cfg_.beta_start, cfg_.beta_end, cfg_.num_train_timesteps, dtype=torch.float64)
    else:  # scaled_linear
        betas = torch.linspace(cfg_.beta_start**0.5, cfg_.beta_end**0.5, cfg_.num_train_timesteps,
                               dtype=torch.float64) ** 2
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    if hasattr(scheduler, "final_alpha_cumprod"):  # DDIM, set_alpha_to_one=True
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _fixed(z):
    """A noise callable that returns z (the same noise handed to diffusers)."""
    return lambda x: z.to(x.dtype)


def _toy_denoiser(x, t):
    """A deterministic stand-in network: output depends on x and t (B,)."""
    scale = (t.to(x.dtype) / 1000).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.7 * x - 0.3 * scale + 0.1 * torch.sin(3 * x)


# ---------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("betas", ["linear", "scaled-linear"])
def test_vp_alphas_equal_diffusers_alphas_cumprod(betas):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, **DIFFUSERS_BETAS[betas]).alphas_cumprod
    alpha, sigma = VPSchedule(betas=betas).alpha_sigma(torch.arange(1000))
    torch.testing.assert_close(alpha**2, ref.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(1000, dtype=torch.float64), rtol=0, atol=1e-12)
    # the same numbers as lrm.diffusion.schedule, which noise-aware surrogates use
    torch.testing.assert_close(alpha**2, legacy.alphas_cumprod(betas), rtol=0, atol=1e-15)


def test_grids_are_dollars_and_diffusers_trailing():
    # DOLLAR supplementary Sec. 7.3, in sampling order
    assert TEACHER_TIMESTEPS == tuple(range(999, 18, -20)) and len(TEACHER_TIMESTEPS) == 50
    assert TEACHER_TIMESTEPS[-1] == 19
    assert STUDENT_TIMESTEPS == {1: (999,), 2: (999, 499), 4: (999, 749, 499, 249)}
    for n in (1, 2, 4, 10, 50):
        ddim = diffusers.DDIMScheduler(timestep_spacing="trailing")
        ddim.set_timesteps(n)
        assert VPSchedule().timesteps(n).tolist() == ddim.timesteps.tolist()
    with pytest.raises(ValueError, match="sampling steps must be in 1..1000"):
        trailing_timesteps(0)


def test_trailing_grid_has_num_steps_valid_timesteps_for_every_count():
    # the float stride makes arange one entry too long for 62 counts (61, 103, ...): diffusers then ends at -1
    for n in range(1, 1001):
        grid = trailing_timesteps(n).tolist()
        assert len(grid) == n and grid[0] == 999 and grid[-1] >= 0, n
        assert all(a > b for a, b in zip(grid, grid[1:])), n
    ddim = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ddim.set_timesteps(61)
    assert ddim.timesteps.tolist()[-1] == -1  # the reference's rounding bug this grid avoids
    assert trailing_timesteps(61).tolist() == ddim.timesteps.tolist()[:61]


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_flow_shift_and_grid_equal_diffusers(shift):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    train_sigmas = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000  # diffusers' unshifted sigmas
    torch.testing.assert_close(shift_sigma(train_sigmas, shift).float(), ref.sigmas, **TOL)
    schedule = FlowSchedule(shift=shift)
    for n in (1, 4, 28):
        ref.set_timesteps(n)
        torch.testing.assert_close(schedule.timesteps(n), ref.timesteps, **TOL)
        alpha, sigma = schedule.alpha_sigma(ref.timesteps)
        torch.testing.assert_close(sigma.float(), ref.sigmas[:-1], **TOL)
        torch.testing.assert_close(alpha + sigma, torch.ones_like(alpha), rtol=0, atol=1e-12)


FLUX_DEV = {"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
            "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": True}  # FLUX.1-dev's scheduler/scheduler_config.json
FLUX_SCHNELL = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                "use_dynamic_shifting": False}  # FLUX.1-schnell's


def flux_pipeline_timesteps(config: dict, num_steps: int, image_seq_len: int) -> tuple[torch.Tensor, float]:
    """(timesteps, mu): the timesteps FluxPipeline.__call__ samples on, by its own code path: sigmas
    linspace(1, 1/n, n) and mu = calculate_shift(packed latent tokens, ...) through retrieve_timesteps into the
    scheduler."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    mu = calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                         scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                         scheduler.config.get("max_shift", 1.15))
    timesteps, n = retrieve_timesteps(scheduler, num_steps, "cpu", sigmas=sigmas, mu=mu)
    assert n == num_steps
    return timesteps, mu


@pytest.mark.parametrize("config, tokens", [(FLUX_DEV, 4096), (FLUX_DEV, 1024), (FLUX_SCHNELL, 4096)],
                         ids=["dev-1024px", "dev-512px", "schnell"])
def test_flux_grid_equals_flux_pipelines_timesteps(config, tokens):
    for n in (1, 4, 28):
        expected, mu = flux_pipeline_timesteps(config, n, tokens)
        shift = math.exp(mu) if config["use_dynamic_shifting"] else config["shift"]  # the adapter's flow_shift
        got = FlowSchedule(shift=shift, grid="flux").timesteps(n)
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, **TOL)
    # the default grid is the scheduler's own set_timesteps, which FluxPipeline does not use
    assert not torch.allclose(FlowSchedule(shift=shift).timesteps(28), expected, **TOL)


def test_schedule_configs_round_trip_and_refuse_bad_input():
    for schedule in (VPSchedule(), VPSchedule("scaled-linear"), FlowSchedule(), FlowSchedule(shift=3.0),
                     FlowSchedule(shift=2.5, grid="flux")):
        assert schedule_from_config(schedule.config()) == schedule
    assert VPSchedule().config() == {"type": "vp", "betas": "linear", "num_timesteps": 1000}
    assert FlowSchedule().config() == {"type": "flow", "shift": 1.0, "num_timesteps": 1000, "grid": "scheduler"}
    assert schedule_from_config({"type": "flow"}) == FlowSchedule()  # defaults from the dataclass
    old = schedule_from_config({"type": "flow", "shift": 3.0, "num_timesteps": 1000})  # saved before "grid"
    assert old.grid == "scheduler" and torch.equal(old.timesteps(4), FlowSchedule(shift=3.0).timesteps(4))
    with pytest.raises(ValueError, match="unknown flow grid 'karras'"):
        schedule_from_config({"type": "flow", "grid": "karras"})
    with pytest.raises(ValueError, match="type"):
        schedule_from_config({"type": "ve"})
    with pytest.raises(ValueError, match="unknown keys"):
        schedule_from_config({"type": "vp", "shift": 3.0})
    with pytest.raises(ValueError, match="beta schedule"):
        schedule_from_config({"type": "vp", "betas": "cosine"})
    with pytest.raises(ValueError, match="integer >= 1"):
        schedule_from_config({"type": "flow", "num_timesteps": "1000"})
    with pytest.raises(ValueError, match="0..999, got 1000..1000"):
        VPSchedule().alpha_sigma(torch.tensor([1000]))
    with pytest.raises(ValueError, match="integers"):
        VPSchedule().alpha_sigma(torch.tensor([3.5]))
    with pytest.raises(ValueError, match="flow timesteps"):
        FlowSchedule().alpha_sigma(torch.tensor([-1.0]))


def test_alpha_sigma_broadcasts_to_x():
    x = torch.zeros(SHAPE, dtype=torch.float16)
    alpha, sigma = VPSchedule().alpha_sigma(torch.tensor([0, 500, 999]), x)
    assert alpha.shape == (3, 1, 1, 1, 1) and alpha.dtype == torch.float16
    alpha, _ = FlowSchedule().alpha_sigma(250.0, x)
    assert alpha.ndim == 0 and float(alpha) == 0.75
    with pytest.raises(ValueError, match="batch"):
        VPSchedule().alpha_sigma(torch.tensor([1, 2]), x)


@pytest.mark.parametrize("schedule", [VPSchedule(), FlowSchedule(shift=3.0)], ids=["vp", "flow"])
def test_training_timesteps_are_seeded_and_in_range(schedule):
    a = schedule.sample_timesteps(256, torch.Generator().manual_seed(1))
    b = schedule.sample_timesteps(256, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (256,)
    assert float(a.min()) >= 0 and float(a.max()) <= 1000 and a.unique().numel() > 100
    schedule.alpha_sigma(a)  # every draw is a valid timestep of the schedule


# ---------------------------------------------------------------------------------------------------
# parameterisations
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", [VPSchedule(), VPSchedule("scaled-linear"), FlowSchedule(shift=3.0)],
                         ids=["vp-linear", "vp-scaled", "flow"])
def test_conversions_round_trip_exactly(prediction, schedule):
    x0, eps = _randn(*SHAPE, seed=1, dtype=torch.float64), _randn(*SHAPE, seed=2, dtype=torch.float64)
    t = torch.tensor([0, 500, 999]) if isinstance(schedule, VPSchedule) else torch.tensor([1.0, 500.0, 990.0])
    alpha, sigma = schedule.alpha_sigma(t, x0)
    x_t = alpha * x0 + sigma * eps
    x0_hat, eps_hat = to_x0_eps(prediction, training_target(prediction, x0, eps, alpha, sigma), x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)
    # any output decodes to a consistent pair: x_t = alpha x0_hat + sigma eps_hat
    x0_hat, eps_hat = to_x0_eps(prediction, _randn(*SHAPE, seed=3, dtype=torch.float64), x_t, alpha, sigma)
    torch.testing.assert_close(alpha * x0_hat + sigma * eps_hat, x_t, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="prediction type"):
        to_x0_eps("epsilon", x_t, x_t, alpha, sigma)


def test_conjugate_v_is_dollar_eq_13_and_15():
    abar = legacy.alphas_cumprod("linear")[torch.tensor([10, 400, 999])].reshape(-1, 1, 1, 1, 1)
    x0, eps = _randn(*SHAPE, seed=4, dtype=torch.float64), _randn(*SHAPE, seed=5, dtype=torch.float64)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps  # Eq. 17
    alpha, sigma = VPSchedule().alpha_sigma(torch.tensor([10, 400, 999]), x0)
    assert torch.equal(training_target("conjugate-v", x0, eps, alpha, sigma), x0 - eps)  # Eq. 13
    v = _randn(*SHAPE, seed=6, dtype=torch.float64)
    eq15 = (x_t + (1 - abar).sqrt() * v) / (abar.sqrt() + (1 - abar).sqrt())
    torch.testing.assert_close(to_x0_eps("conjugate-v", v, x_t, alpha, sigma)[0], eq15, rtol=0, atol=1e-12)


def test_v_target_equals_diffusers_get_velocity():
    scheduler = diffusers.DDPMScheduler(**DIFFUSERS_BETAS["scaled-linear"], prediction_type="v_prediction")
    x0, eps, t = _randn(*SHAPE, seed=7), _randn(*SHAPE, seed=8), torch.tensor([3, 321, 998])
    alpha, sigma = VPSchedule("scaled-linear").alpha_sigma(t, x0)
    torch.testing.assert_close(training_target("v", x0, eps, alpha, sigma), scheduler.get_velocity(x0, eps, t), **TOL)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_cfg_commutes_with_conversion(prediction):
    cond, uncond, x_t = _randn(*SHAPE, seed=9), _randn(*SHAPE, seed=10), _randn(*SHAPE, seed=11)
    torch.testing.assert_close(cfg(cond, uncond, 1.0), cond, rtol=0, atol=1e-6)
    assert torch.equal(cfg(cond, uncond, 0.0), uncond)
    alpha, sigma = VPSchedule().alpha_sigma(torch.tensor([100, 500, 900]), x_t)
    guided = to_x0_eps(prediction, cfg(cond, uncond, 7.5), x_t, alpha, sigma)
    parts = [to_x0_eps(prediction, o, x_t, alpha, sigma) for o in (cond, uncond)]
    for i in range(2):
        torch.testing.assert_close(guided[i], cfg(parts[0][i], parts[1][i], 7.5), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# single steps against diffusers
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("betas", ["linear", "scaled-linear"])
def test_ddim_step_equals_diffusers(prediction, eta, betas):
    ref = _in_float64(diffusers.DDIMScheduler(**DIFFUSERS_BETAS[betas],
                                              prediction_type=DIFFUSERS_PREDICTION[prediction],
                                              set_alpha_to_one=True, timestep_spacing="trailing",
                                              clip_sample=False))
    ref.set_timesteps(50)
    schedule, grid = VPSchedule(betas), TEACHER_TIMESTEPS
    for i in (0, 1, 25, 48, 49):  # 999 -> 979, ..., 39 -> 19, 19 -> clean
        t = grid[i]
        x_t, out, z = (_randn(*SHAPE, seed=seed, dtype=torch.float64) for seed in (i, 100 + i, 200 + i))
        expected = ref.step(out, t, x_t, eta=eta, variance_noise=z).prev_sample
        a_t, s_t = schedule.alpha_sigma(torch.full((3,), t), x_t)
        a_s, s_s = schedule.alpha_sigma(torch.full((3,), grid[i + 1]), x_t) if i < 49 else (1.0, 0.0)
        x0_hat, eps_hat = to_x0_eps(prediction, out, x_t, a_t, s_t)
        got = ddim_step(x0_hat, eps_hat, a_t, s_t, torch.as_tensor(a_s), torch.as_tensor(s_s), eta=eta, noise=_fixed(z))
        torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("grid", [None, STUDENT_TIMESTEPS[4]], ids=["T=1000", "student-4"])
def test_ddpm_posterior_step_equals_diffusers(prediction, grid):
    ref = _in_float64(diffusers.DDPMScheduler(**DIFFUSERS_BETAS["linear"],
                                              prediction_type=DIFFUSERS_PREDICTION[prediction],
                                              variance_type="fixed_small", clip_sample=False))
    if grid is not None:
        ref.set_timesteps(timesteps=list(grid))
    grid = list(grid) if grid is not None else [999, 998, 500, 499, 1, 0]
    schedule = VPSchedule()
    for i, t in enumerate(grid):
        prev = ref.previous_timestep(t)
        x_t, out = _randn(*SHAPE, seed=i, dtype=torch.float64), _randn(*SHAPE, seed=50 + i, dtype=torch.float64)
        expected = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
        a_t, s_t = schedule.alpha_sigma(torch.full((3,), t), x_t)
        if int(prev) >= 0:
            a_s, s_s = schedule.alpha_sigma(torch.full((3,), int(prev)), x_t)
        else:
            a_s, s_s = torch.ones_like(a_t), torch.zeros_like(s_t)
        x0_hat, eps_hat = to_x0_eps(prediction, out, x_t, a_t, s_t)
        mean, std = ddpm_posterior(x_t, x0_hat, a_t, s_t, a_s, s_s)
        z = _randn(*SHAPE, seed=i, dtype=torch.float64)  # the draw diffusers made from its generator
        torch.testing.assert_close(mean + std * z, expected, **TIGHT)
        # DDIM with eta = 1 samples the same posterior
        got = ddim_step(x0_hat, eps_hat, a_t, s_t, a_s, s_s, eta=1.0, noise=torch.Generator().manual_seed(i))
        torch.testing.assert_close(got, expected, **TIGHT)


def test_ddpm_posterior_is_dollar_eq_25_on_unit_steps():
    abar = legacy.alphas_cumprod("linear")
    t = torch.tensor([1, 500, 999])
    a_t = (abar[t] / abar[t - 1]).reshape(-1, 1, 1, 1, 1)  # alpha_t of Eq. 25 (one step)
    ab_t, ab_s = abar[t].reshape(-1, 1, 1, 1, 1), abar[t - 1].reshape(-1, 1, 1, 1, 1)
    x_t, x0 = _randn(*SHAPE, seed=12, dtype=torch.float64), _randn(*SHAPE, seed=13, dtype=torch.float64)
    # Eq. 25 with the x0 coefficient sqrt(abar_{t-1}) (Ho et al. 2020, Eq. 7; the supplementary prints sqrt(abar_t))
    mean = (1 - a_t) * ab_s.sqrt() / (1 - ab_t) * x0 + a_t.sqrt() * (1 - ab_s) / (1 - ab_t) * x_t
    std = ((1 - a_t) * (1 - ab_s) / (1 - ab_t)).sqrt()
    schedule = VPSchedule()
    got = ddpm_posterior(x_t, x0, *schedule.alpha_sigma(t, x_t), *schedule.alpha_sigma(t - 1, x_t))
    torch.testing.assert_close(got.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.std, std, rtol=0, atol=1e-12)


def test_bf16_inputs_keep_float32_precision_where_small_differences_matter():
    # log-probs: DDPO's likelihood ratios are differences of these sums (a bf16 sum rounded a 1e-3 shift away)
    x = _randn(2, 8, 4, 16, 16, seed=3)
    mean = torch.zeros_like(x)
    low = gaussian_log_prob(x.bfloat16(), mean.bfloat16(), 0.5)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, gaussian_log_prob(x.bfloat16().float(), mean, 0.5))
    assert bool((gaussian_log_prob(x.bfloat16(), (mean + 1e-3).bfloat16(), 0.5) != low).all())
    # add_noise: 1 - abar at small t, cast to bf16 before its square root, lost the noise entirely
    abar = legacy.alphas_cumprod()
    t = torch.tensor([0, 5, 10, 20])
    noised = legacy.add_noise(torch.zeros(4, 8).bfloat16(), torch.ones(4, 8).bfloat16(), t, abar)[:, 0].float()
    torch.testing.assert_close(noised, (1 - abar[t]).sqrt().float(), rtol=1e-2, atol=0)


def test_ddim_refuses_eta_above_one():
    a, s = torch.tensor(0.5), torch.tensor(0.8)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim_step(torch.zeros(1), torch.zeros(1), a, s, a, s, eta=2.0)


def test_log_prob_equals_normal_summed_over_non_batch_dims():
    x, mean = _randn(*SHAPE, seed=14, dtype=torch.float64), _randn(*SHAPE, seed=15, dtype=torch.float64)
    for std in (torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64).reshape(-1, 1, 1, 1, 1),
                torch.tensor(0.3, dtype=torch.float64)):
        expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).sum(dim=(1, 2, 3, 4))
        got = gaussian_log_prob(x, mean, std)
        assert got.shape == (3,)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    # ddpo-pytorch's per-element formula, averaged over non-batch dims, is ours divided by D
    std = torch.tensor(0.3, dtype=torch.float64)
    log_sqrt_2pi = torch.log(torch.sqrt(torch.tensor(2 * torch.pi, dtype=torch.float64)))
    ddpo = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - log_sqrt_2pi
    torch.testing.assert_close(ddpo.mean(dim=(1, 2, 3, 4)), gaussian_log_prob(x, mean, std) / x[0].numel(),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="std > 0"):
        gaussian_log_prob(x, mean, torch.tensor(0.0))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_steps_and_loop_equal_diffusers(shift):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(8)
    x_T = _randn(*SHAPE, seed=16)
    x = x_T
    for t in ref.timesteps:  # diffusers' loop
        x = ref.step(_toy_denoiser(x, t.expand(3)), t, x).prev_sample
    schedule = FlowSchedule(shift=shift)
    got = sample(_toy_denoiser, x_T, schedule.timesteps(8), schedule, "flow")  # DDIM eta = 0 on flow
    torch.testing.assert_close(got, x, **TOL)
    # the explicit Euler step, one step at a time
    y, sigmas = x_T, ref.sigmas
    for i, t in enumerate(ref.timesteps):
        y = euler_step(y, _toy_denoiser(y, t.expand(3)), sigmas[i], sigmas[i + 1])
    torch.testing.assert_close(y, x, **TOL)


# ---------------------------------------------------------------------------------------------------
# loops
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_loop_equals_diffusers(prediction):
    ref = diffusers.DDIMScheduler(**DIFFUSERS_BETAS["scaled-linear"], prediction_type=DIFFUSERS_PREDICTION[prediction],
                                  set_alpha_to_one=True, timestep_spacing="trailing", clip_sample=False)
    ref.set_timesteps(10)
    x_T = _randn(*SHAPE, seed=17)
    x = x_T
    for t in ref.timesteps:
        x = ref.step(_toy_denoiser(x, t.expand(3)), t, x, eta=0.0).prev_sample
    schedule = VPSchedule("scaled-linear")
    got = sample(_toy_denoiser, x_T, schedule.timesteps(10), schedule, prediction)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_few_step_flow_equals_diffusers_stochastic_sampling(shift):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, stochastic_sampling=True)
    ref.set_timesteps(4)
    x_T = _randn(*SHAPE, seed=18)
    x, g = x_T, torch.Generator().manual_seed(3)
    for t in ref.timesteps:
        x = ref.step(_toy_denoiser(x, t.expand(3)), t, x, generator=g).prev_sample
    schedule = FlowSchedule(shift=shift)
    got = sample_few_step(_toy_denoiser, x_T, schedule.timesteps(4), schedule, "flow",
                          noise=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, x, **TOL)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", [VPSchedule(), FlowSchedule(shift=3.0)], ids=["vp", "flow"])
def test_oracle_denoiser_recovers_its_data_point(prediction, schedule):
    """A denoiser that knows x0 outputs the exact target; deterministic DDIM and the few-step sampler then
    return x0 for any grid (the step to clean data is x0_hat itself)."""
    x0 = _randn(*SHAPE, seed=19, dtype=torch.float64)
    seen = []

    def oracle(x_t, t):
        seen.append(t.tolist())
        alpha, sigma = schedule.alpha_sigma(t, x_t)
        eps = (x_t - alpha * x0) / sigma
        return training_target(prediction, x0, eps, alpha, sigma)

    x_T = _randn(*SHAPE, seed=20, dtype=torch.float64)
    grid = schedule.timesteps(4)[1:] if prediction == "eps" and isinstance(schedule, FlowSchedule) else \
        schedule.timesteps(4)  # eps cannot give x0 at sigma = 1 (alpha = 0)
    torch.testing.assert_close(sample(oracle, x_T, grid, schedule, prediction), x0, rtol=0, atol=1e-8)
    seen.clear()
    few = sample_few_step(oracle, x_T, grid, schedule, prediction, noise=torch.Generator().manual_seed(0))
    torch.testing.assert_close(few, x0, rtol=0, atol=1e-8)
    assert [s[0] for s in seen] == grid.tolist() and all(len(s) == 3 for s in seen)


def test_student_sampler_renoises_to_dollars_timesteps():
    """The few-step sampler's intermediate states are alpha_s x0_hat + sigma_s z with fresh z."""
    schedule, x_T = VPSchedule(), _randn(*SHAPE, seed=21)
    states = []

    def record(x_t, t):
        states.append((int(t[0]), x_t))
        return _toy_denoiser(x_t, t)

    zs = [_randn(*SHAPE, seed=300 + i) for i in range(3)]
    draws = iter(zs)
    sample_few_step(record, x_T, STUDENT_TIMESTEPS[4], schedule, "v", noise=lambda x: next(draws))
    assert [t for t, _ in states] == [999, 749, 499, 249]
    for i in range(3):
        t, x_t = states[i]
        a_t, s_t = schedule.alpha_sigma(torch.full((3,), t), x_t)
        x0_hat, _ = to_x0_eps("v", _toy_denoiser(x_t, torch.full((3,), t)), x_t, a_t, s_t)
        a_s, s_s = schedule.alpha_sigma(torch.full((3,), states[i + 1][0]), x_t)
        torch.testing.assert_close(states[i + 1][1], a_s * x0_hat + s_s * zs[i], rtol=0, atol=1e-6)


def test_sampling_is_deterministic_per_seed():
    schedule, x_T = VPSchedule(), _randn(*SHAPE, seed=22)
    run = lambda seed, fn: fn(_toy_denoiser, x_T, STUDENT_TIMESTEPS[4], schedule, "conjugate-v",  # noqa: E731
                              noise=torch.Generator().manual_seed(seed))
    ddpm = lambda *a, noise: sample(*a, eta=1.0, noise=noise)  # noqa: E731
    for fn in (ddpm, sample_few_step):
        assert torch.equal(run(0, fn), run(0, fn))
        assert not torch.allclose(run(0, fn), run(1, fn))
    deterministic = sample(_toy_denoiser, x_T, TEACHER_TIMESTEPS, schedule, "conjugate-v")
    assert torch.equal(deterministic, sample(_toy_denoiser, x_T, TEACHER_TIMESTEPS, schedule, "conjugate-v"))
    with pytest.raises(ValueError, match="decreasing"):
        sample(_toy_denoiser, x_T, [249, 499], schedule, "v")
    with pytest.raises(ValueError, match="eta"):
        sample(_toy_denoiser, x_T, [999], schedule, "v", eta=-1.0)
