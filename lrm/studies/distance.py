"""A KL-like distance between a tuned denoiser and its start, in the spirit of DRaFT+ (Clark et al. 2024):

    D(theta) = E_{t, x_t, c} mean_elements || eps_theta(x_t, t, c) - eps_init(x_t, t, c) ||^2

on noisy latents shared by both models (same x0, eps, t and text). For Gaussian reverse steps with a shared
variance, the per-step KL between the two models is proportional to this squared gap of their noise
predictions, so sqrt(D) plays the role of Gao et al.'s d = sqrt(KL). It is zero for the initial model itself.
The shared latents are x_t = alpha_t x0 + sigma_t eps with x0, eps ~ N(0, I) (latents are scaled to about unit
variance by their codec) and t drawn from the schedule's training distribution, all from one seed.
"""

from __future__ import annotations

from lrm.tuning.kl_penalty import eps_distance  # the measure lives beside the KL penalty built on it

__all__ = ["eps_distance", "run_eps_distance"]


def run_eps_distance(tuned_dir, start_dir, *, prompts: int = 8, samples_per_text: int = 4, seed: int = 0,
                     device: str = "cpu") -> float:
    """eps_distance between the tuned student saved in `tuned_dir` (a generator run: `lrm tune`'s OUT) and the
    model it started from in `start_dir` (its records.json "from": a distilled student, or the teacher whose copy
    was distilled and tuned), on `prompts` procedural captions (lrm tune's default prompts) and the tuned run's
    latent shape."""
    from lrm.evaluation.report import procedural_prompts
    from lrm.generators.runs import open_generator_run
    from lrm.text import load as load_text

    tuned_run, start_run = open_generator_run(tuned_dir), open_generator_run(start_dir)
    latent_shape = tuned_run.latent_shape()
    tuned, start = tuned_run.load(map_location=device), start_run.load(map_location=device)
    if tuned.text_encoder_id is None:
        raise ValueError(f"{tuned_dir} records no text encoder, so its text tokens cannot be made; tune a run "
                         "written by lrm")
    captions = procedural_prompts(prompts, latent_shape[0], world=start_run.procedural_world)
    text = load_text(tuned.text_encoder_id).encode(captions)
    return eps_distance(tuned, start, text.emb, text.mask, latent_shape=latent_shape,
                        samples_per_text=samples_per_text, seed=seed)
