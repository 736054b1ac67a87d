"""Diffusion math on (alpha_t, sigma_t), no nn.Modules (docs/generators.md).

- schedule: the DDPM beta schedules (T = 1000; "linear", "scaled-linear") and add_noise, also used by
  noise-aware surrogates;
- schedules: one interface for a model's own timesteps -> (alpha, sigma): VPSchedule, FlowSchedule
  (rectified flow with the SD3/FLUX/Wan shift), schedule_from_config;
- parameterisations: model output <-> (x0_hat, eps_hat) and training targets for "eps", "x0", "v",
  "conjugate-v" (DOLLAR Eq. 13/15), "flow";
- samplers: DDIM (Eq. 14), DDPM posterior (Eq. 25) and log-prob (Eq. 26), Euler, CFG, the teacher's and
  the few-step student's loops with injectable noise.
"""
