"""lrm.tuning's reward hooks (LRM fine-tuning, DDPO-SF, direct) on tiny in-process models (CPU, offline)."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from lrm.codecs.dct import DCTCodec
from lrm.diffusion.samplers import sample_few_step
from lrm.models import CodecMismatchError
from lrm.models import build as build_surrogate
from lrm.pixel_path import PixelPathReward
from lrm.rewards import load as load_reward
from lrm.rewards.base import Reward, RewardSpec
from lrm.tuning import (DDPO, LRM, Batch, DirectReward, DistillConfig, Distiller, LRMFineTune, Step, TrueReward,
                        build_roles, student_sample, surrogate_role)
from lrm.tuning.ddpo import advantages, group_ids, prompt_keys, sample_trajectory
from lrm.tuning.denoise import schedule_of
from lrm.tuning.roles import STUDENT
from test_tuning import C, D, H, W, Recorder, batch, tiny_dit

SHAPE = (1, C, H, W)  # one latent frame of 4 dct channels at 8x8: 64x64 pixels


def codec() -> DCTCodec:
    """The dct latent space cut to 4 channels (Y: DC and one AC; Cb, Cr: DC), raw coefficients."""
    return DCTCodec(split=(2, 1, 1), mean=None, std=None)


class Brightness(Reward):
    """A user-style differentiable metric: mean pixel value."""

    spec = RewardSpec("mean-brightness", "image", differentiable=True)

    def score(self, pixels, prompts):
        return pixels.mean(dim=(1, 2, 3, 4))


class BrightFraction(Reward):
    """A non-differentiable metric (numpy on uint8 frames): the fraction of pixels brighter than mid-grey."""

    spec = RewardSpec("bright-fraction", "image", differentiable=False)

    def score(self, pixels, prompts):
        frames = (pixels.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return torch.tensor((frames > 128).reshape(len(frames), -1).mean(1), dtype=torch.float32)


class Recording(Reward):
    """Wraps a reward, keeping every pixel batch it scores; NaN for the samples in `nan_rows`."""

    def __init__(self, inner, nan_rows=()):
        self.inner, self.nan_rows, self.seen = inner, set(nan_rows), []
        self.spec = inner.spec

    def score(self, pixels, prompts):
        self.seen.append(pixels.detach().clone())
        out = self.inner.score(pixels, prompts).float()
        for i in self.nan_rows:
            if i < len(out):
                out = out.clone()
                out[i] = float("nan")
        return out


class VideoReward(Brightness):
    spec = RewardSpec("video-brightness", "video", differentiable=True)


class CountingCodec(DCTCodec):
    def __init__(self):
        super().__init__(split=(2, 1, 1), mean=None, std=None)
        self.decodes = 0

    def decode(self, latents):
        self.decodes += 1
        return super().decode(latents)


def surrogate(preset="image-cnn-stats", seed=0):
    torch.manual_seed(seed)
    return build_surrogate(preset, C)


def student_roles(lr=1e-3, seed=4):
    return build_roles(tiny_dit(seed=seed), student_lr=lr, fake_score=False, ema=False)


def grads(module):
    return [p.grad for p in module.parameters()]


def has_grad(module) -> bool:
    return any(g is not None and bool(torch.count_nonzero(g)) for g in grads(module))


@torch.no_grad()
def true_reward_at_fixed_seeds(student, reward, n=16, steps=1) -> float:
    """Mean true reward of n student samples from fixed noise and prompts (the evaluation of a tuning)."""
    b = batch(b=n, seed=1234)
    x_T = torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(99))
    x0 = sample_few_step(lambda x, t: student(x, t, b.text, b.text_mask), x_T,
                         schedule_of(student).timesteps(steps), schedule_of(student), student.prediction,
                         noise=torch.Generator().manual_seed(7))
    return float(reward(x0, None).mean())


# ---------------------------------------------------------------- LRM fine-tuning


@pytest.mark.parametrize("concurrent", [False, True])
def test_lrm_ft_gradient_reaches_the_student_only_and_no_decoder(concurrent):
    roles = student_roles()
    lrm = surrogate()
    if concurrent:  # warm-started from a fit: followed from the start (a fresh one only after its first step on
        lrm.set_label_stats(0.5, 0.25)  # finite labels: tests/test_tune_cli_metrics.py)
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=concurrent))
    counting = CountingCodec()
    term = LRMFineTune(TrueReward(counting, Brightness()) if concurrent else None)
    b = batch()
    g = torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 4, g)
    loss = term.generator_loss(Step(roles, b, x_hat, g))
    assert loss.shape == (2,)
    loss.sum().backward()
    assert has_grad(roles.module(STUDENT))
    assert all(p is None for p in grads(lrm))  # trainable or not, the surrogate gets no generator gradient
    assert counting.decodes == 0  # L_FT is computed in latent space
    assert term.trains == ((LRM,) if concurrent else ())
    # Eq. 11 by hand: -z(x_hat), the surrogate's standardised score
    torch.testing.assert_close(loss, -lrm(x_hat.detach(), standardised=True))


def test_concurrent_lrm_steps_on_the_merged_batch_labelled_by_the_true_reward():
    roles = student_roles()
    lrm = surrogate()
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=True, lr=1e-3))
    recording = Recording(Brightness())
    term = LRMFineTune(TrueReward(codec(), recording))
    start = copy.deepcopy(lrm.state_dict())
    distiller = Distiller(roles, [term], DistillConfig(latent_shape=SHAPE, student_steps=1))
    batches = [batch(b=3, seed=s) for s in range(2)]
    logs = [distiller.train_step([batches[s]]) for s in range(2)]
    # the fresh surrogate moves the student only after its first step: step 0's student update is skipped
    assert distiller.updates == {STUDENT: 1, LRM: 2} and distiller.skipped == {STUDENT: 1, LRM: 0}
    assert [set(log.losses) for log in logs] == [{LRM}, {"lrm_ft", LRM}]
    assert any(not torch.equal(v, lrm.state_dict()[k]) for k, v in start.items())
    # each labelled batch is x | x_hat: the real latents decoded first, then 3 student samples
    assert [p.shape[0] for p in recording.seen] == [6, 6]
    for pixels, b in zip(recording.seen, batches):
        torch.testing.assert_close(pixels[:3], codec().decode(b.x0))
        assert not torch.allclose(pixels[3:], codec().decode(b.x0))
    # a never-fitted surrogate took its label statistics from the first labelled batch
    first = recording.seen[0].mean(dim=(1, 2, 3, 4))
    assert float(lrm.label_mean) == pytest.approx(float(first.mean()), rel=1e-5)
    assert float(lrm.label_std) == pytest.approx(float(first.std()), rel=1e-4)
    assert len(term.fidelities) == 2 and np.isfinite(term.fidelities).all() and np.isfinite(term.true_mean)


def test_concurrent_lrm_counts_and_skips_nan_labels():
    roles = student_roles()
    lrm = surrogate()
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=True))
    true = TrueReward(codec(), Recording(Brightness(), nan_rows=[0, 4]))  # one real and one student sample
    term = LRMFineTune(true)
    b, g = batch(b=3), torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, g, grad=False)
    loss = term.auxiliary_loss(LRM, Step(roles, b, x_hat, g))
    assert loss.shape == (4,) and torch.isfinite(loss).all() and true.nonfinite == 2
    loss.mean().backward()
    assert has_grad(lrm)
    # every label non-finite: nothing to train on, so the trainer skips the surrogate's update and counts it
    roles = student_roles()
    roles.add(surrogate_role(surrogate(), roles.module(STUDENT), SHAPE, concurrent=True))
    nan_everywhere = LRMFineTune(TrueReward(codec(), Recording(Brightness(), nan_rows=range(6))))
    distiller = Distiller(roles, [nan_everywhere], DistillConfig(latent_shape=SHAPE, student_steps=1))
    log = distiller.train_step([batch(b=3)])
    # and a surrogate never trained on a finite label does not move the student either
    assert log.skipped == [STUDENT, LRM] and distiller.skipped[LRM] == 1 and distiller.updates[STUDENT] == 0


def test_concurrent_gradient_matching_adds_one_minus_the_gradient_cosine_per_row():
    roles = student_roles()
    lrm = surrogate()
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=True))
    true = TrueReward(codec(), Brightness())
    b, g = batch(b=3), torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, g, grad=False)
    plain = LRMFineTune(true).auxiliary_loss(LRM, Step(roles, b, x_hat, g))  # (6,): real 3 | student 3
    matched = LRMFineTune(true, gradient_weight=2.0)
    loss = matched.auxiliary_loss(LRM, Step(roles, b, x_hat, g))
    merged = torch.cat([b.x0, x_hat]).requires_grad_(True)  # the cosines, computed independently
    (ours,) = torch.autograd.grad(lrm(merged, standardised=True).sum(), merged)
    merged = merged.detach().requires_grad_(True)
    (gold,) = torch.autograd.grad(true(merged, None).sum(), merged)
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(1), gold.flatten(1), dim=1)
    torch.testing.assert_close(loss.detach(), plain.detach() + 2.0 * (1 - cosine), atol=1e-5, rtol=1e-5)
    assert matched.gradient_cosines == [pytest.approx(float(cosine.mean()), abs=1e-5)]
    loss.mean().backward()  # double backpropagation reaches the surrogate's parameters, never the student's
    assert has_grad(lrm) and not has_grad(roles.module(STUDENT))


def test_concurrent_gradient_matching_turns_the_surrogates_gradient_toward_the_rewards():
    true = TrueReward(codec(), Brightness())
    held_out = torch.randn((16, *SHAPE), generator=torch.Generator().manual_seed(5))

    def train(weight):
        roles = build_roles(tiny_dit(seed=4), student_lr=0.0, fake_score=False, ema=False)  # a still student
        lrm = surrogate()
        roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=True, lr=3e-3))
        term = LRMFineTune(true, gradient_weight=weight)
        distiller = Distiller(roles, [term], DistillConfig(latent_shape=SHAPE, student_steps=1))
        for s in range(40):
            distiller.train_step([batch(b=4, seed=s)])
        x = held_out.clone().requires_grad_(True)
        (ours,) = torch.autograd.grad(lrm(x, standardised=True).sum(), x)
        cosine = torch.nn.functional.cosine_similarity(ours.flatten(1), true.path.latent_gradient(held_out).flatten(1))
        return term, float(cosine.mean())

    (matched, matched_cosine), (plain, plain_cosine) = train(3.0), train(0.0)
    assert plain.gradient_cosines == [] and np.isnan(plain.gradient_cosine)
    assert matched.gradient_cosine > np.mean(matched.gradient_cosines[:5]) + 0.2  # its running cosine rose
    assert matched_cosine > plain_cosine + 0.15, (matched_cosine, plain_cosine)  # and beats value-only updates


class PartlyDetached(Brightness):
    """Brightness whose first sample's score carries no gradient (a label without a gradient to match)."""

    def score(self, pixels, prompts):
        scores = super().score(pixels, prompts)
        return torch.cat([scores[:1].detach(), scores[1:]])


def test_gradient_matching_averages_over_the_rows_with_a_label_and_a_gradient():
    roles = student_roles()
    lrm = surrogate()
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=True))
    b, g = batch(b=3), torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, g, grad=False)
    true = TrueReward(codec(), Recording(PartlyDetached(), nan_rows=[4]))  # row 0: no gradient; row 4: no label
    plain = LRMFineTune(true).auxiliary_loss(LRM, Step(roles, b, x_hat, g))  # (5,): the labelled rows
    matched = LRMFineTune(true, gradient_weight=2.0)
    extra = (matched.auxiliary_loss(LRM, Step(roles, b, x_hat, g)) - plain).detach()
    merged = torch.cat([b.x0, x_hat]).requires_grad_(True)
    (ours,) = torch.autograd.grad(lrm(merged, standardised=True).sum(), merged)
    merged = merged.detach().requires_grad_(True)
    (gold,) = torch.autograd.grad(TrueReward(codec(), Brightness())(merged, None).sum(), merged)
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(1), gold.flatten(1), dim=1)
    rows = [1, 2, 3, 5]  # labelled and with a gradient
    assert extra[0] == 0  # row 0 has a label but no gradient: only its value is fitted
    # the mean over the labelled rows of the extra term is 2 x the mean 1 - cos over the matched rows
    assert float(extra.mean()) == pytest.approx(2.0 * float((1 - cosine[rows]).mean()), abs=1e-5)
    assert matched.gradient_cosines == [pytest.approx(float(cosine[rows].mean()), abs=1e-5)]


def test_concurrent_gradient_matching_is_refused_where_it_cannot_run():
    true = TrueReward(codec(), Brightness())
    cases = [(dict(true_reward=None, gradient_weight=1.0), "add concurrent"),
             (dict(true_reward=TrueReward(codec(), BrightFraction()), gradient_weight=1.0), "not differentiable"),
             (dict(true_reward=true, gradient_weight=1.0, noise_aware=True), "leave out gradient_weight or noise"),
             (dict(true_reward=true, gradient_weight=-1.0), ">= 0 and finite"),
             (dict(true_reward=true, gradient_weight=float("inf")), ">= 0 and finite")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            LRMFineTune(**kwargs)
    from lrm.tuning.tune import TuneConfig

    with pytest.raises(ValueError, match="only method 'lrm' uses"):
        TuneConfig(method="ddpo", gradient_weight=1.0)
    with pytest.raises(ValueError, match="add concurrent"):
        TuneConfig(gradient_weight=1.0)
    roles = student_roles()  # a reward that says differentiable but detaches: one line at its first update
    roles.add(surrogate_role(surrogate(), roles.module(STUDENT), SHAPE, concurrent=True))
    b, g = batch(b=2), torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, g, grad=False)
    with pytest.raises(ValueError, match="carry no gradient"):
        LRMFineTune(TrueReward(codec(), DetachedBrightness()), gradient_weight=1.0).auxiliary_loss(
            LRM, Step(roles, b, x_hat, g))


def test_lrm_ft_joins_vsd_and_cd_as_in_dollar():
    """DOLLAR's VSD + CD + LRM (Alg. 1): one trainer step updates student, fake score and surrogate."""
    from lrm.tuning import CD, VSD
    from lrm.tuning.roles import FAKE_SCORE

    roles = build_roles(tiny_dit(seed=4), student_lr=1e-3)
    roles.add(surrogate_role(surrogate(), roles.module(STUDENT), SHAPE, concurrent=True))
    distiller = Distiller(roles, [VSD(), CD(), LRMFineTune(TrueReward(codec(), Brightness()))],
                          DistillConfig(latent_shape=SHAPE, student_steps=4))
    log = distiller.train_step([batch()])
    assert not log.skipped and set(log.losses) == {"vsd", "cd", "lrm_ft", FAKE_SCORE, LRM}
    assert distiller.updates == {STUDENT: 1, FAKE_SCORE: 5, LRM: 1}


def test_lrm_ft_refuses_a_surrogate_that_does_not_fit_the_generator():
    student = tiny_dit()
    student.codec_settings = codec().settings()
    with pytest.raises(CodecMismatchError, match="reads 32-channel latents and the generator makes 4-channel"):
        surrogate_role(build_surrogate("image-cnn-stats", 32), student, SHAPE)
    other = surrogate()
    other.info.codec_settings = {**codec().settings(), "name": "taef2"}
    with pytest.raises(CodecMismatchError, match=r"does not fit the generator: .*differs in \['name'\]"):
        surrogate_role(other, student, SHAPE)
    texty = build_surrogate("text-image-xattn", C, text_dim=2 * D)
    with pytest.raises(ValueError, match=f"reads {2 * D}-wide text tokens and the generator's text encoder makes {D}"):
        surrogate_role(texty, student, SHAPE)
    same_width = build_surrogate("text-image-xattn", C, text_dim=D)
    same_width.info.text_encoder_id = "clip-l"
    student.text_encoder_id = "t5-small"
    with pytest.raises(ValueError, match="fitted on text encoder 'clip-l' tokens and the generator reads 't5-small'"):
        surrogate_role(same_width, student, SHAPE)
    with pytest.raises(ValueError, match="imitates a video reward and the generator makes images"):
        surrogate_role(build_surrogate("video-3d", C), student, SHAPE)
    of_colour = surrogate()
    of_colour.info.reward_spec = {"name": "colorfulness", "kind": "image"}
    with pytest.raises(ValueError, match="imitates 'colorfulness', not the tuned reward 'sharpness'"):
        surrogate_role(of_colour, student, SHAPE, reward="sharpness")
    surrogate_role(of_colour, student, SHAPE, reward="colorfulness")
    of_metric = surrogate()  # a user's metric, typed with another path when fitted than when tuned
    of_metric.info.reward_spec = {"name": "metrics/m.py:level", "kind": "image"}
    surrogate_role(of_metric, student, SHAPE, reward="/home/me/metrics/m.py:level")
    with pytest.raises(ValueError, match="imitates 'metrics/m.py:level', not the tuned reward 'm.py:other'"):
        surrogate_role(of_metric, student, SHAPE, reward="m.py:other")
    surrogate_role(surrogate(), student, SHAPE)  # a fitting one passes


def test_noise_aware_lrm_ft_scores_noised_samples():
    roles = student_roles()
    lrm = build_surrogate("image-cnn-stats", C, noise_aware=True)
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE))
    b, g = batch(), torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, g)
    loss = LRMFineTune(noise_aware=True).generator_loss(Step(roles, b, x_hat, torch.Generator().manual_seed(1)))
    loss.sum().backward()
    assert has_grad(roles.module(STUDENT))
    clean = -lrm(x_hat.detach(), standardised=True)
    assert not torch.allclose(loss.detach(), clean)
    # the loss is -lrm(x_t, t) with t ~ U{0..NOISE_T_MAX T} and x_t = alpha_t x_hat + sigma_t eps, both drawn
    # (t first) from the step's generator, rebuilt here from a generator of the same seed
    from lrm.diffusion.schedules import VPSchedule
    from lrm.tuning.lrm_ft import NOISE_T_MAX

    schedule, g1 = VPSchedule(lrm.info.noise_schedule or "linear"), torch.Generator().manual_seed(1)
    t = torch.randint(0, round(NOISE_T_MAX * schedule.num_timesteps) + 1, (x_hat.shape[0],), generator=g1)
    alpha, sigma = schedule.alpha_sigma(t, x_hat)
    x_t = alpha * x_hat.detach() + sigma * torch.randn(x_hat.shape, generator=g1)
    with torch.no_grad():
        noised = -lrm(x_t, b.text, b.text_mask, t=t, standardised=True)
    torch.testing.assert_close(loss.detach(), noised.float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs a noise-aware surrogate"):
        plain = student_roles()
        plain.add(surrogate_role(surrogate(), plain.module(STUDENT), SHAPE))
        LRMFineTune(noise_aware=True).generator_loss(Step(plain, b, x_hat, g))


def test_a_frozen_surrogate_is_tuned_in_the_tuned_rewards_direction_not_the_one_it_was_fitted_with():
    """`lrm fit m.py:fn` then `lrm tune m.py:fn -o higher_is_better=false --surrogate RUN`: the records call lower
    better, so the student must be pushed down the surrogate even though it was fitted as higher-is-better."""
    from dataclasses import replace

    from lrm.tuning.tune import TuneConfig, build_term

    class Darkness(Brightness):
        spec = replace(Brightness.spec, higher_is_better=False)

    roles = student_roles()
    fitted = surrogate()
    fitted.info.reward_spec = {"name": "mean-brightness", "kind": "image", "higher_is_better": True}
    roles.add(surrogate_role(fitted, roles.module(STUDENT), SHAPE, reward="mean-brightness"))
    b = batch()
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = fitted(x_hat, standardised=True)
    for reward, s in ((Brightness(), 1.0), (Darkness(), -1.0)):
        term = build_term(TuneConfig(method="lrm"), TrueReward(codec(), reward), SHAPE)
        loss = term.generator_loss(Step(roles, b, x_hat, torch.Generator().manual_seed(1)))
        torch.testing.assert_close(loss.detach(), -s * z.float())
    with pytest.raises(ValueError, match="contradicts the true reward"):
        LRMFineTune(TrueReward(codec(), Brightness()), sign=-1.0)


# ---------------------------------------------------------------- DDPO-SF


class GradRecorder(Recorder):
    """Records (t, whether the call carries gradient) per denoiser call."""

    def forward(self, x_t, t, text, text_mask):
        out = super().forward(x_t, t, text, text_mask)
        self.calls[-1] = (self.calls[-1], out.requires_grad)
        return out


def test_ddpo_log_probs_are_normal_log_densities_of_the_last_n_steps():
    student = GradRecorder(tiny_dit())
    b = batch()
    trajectory = sample_trajectory(student, b, SHAPE, steps=4, grad_steps=2, generator=torch.Generator().manual_seed(0))
    assert student.calls == [(999, False), (749, False), (499, True), (249, True)]
    assert trajectory.timesteps == [(499, 249), (249, 0)]  # DOLLAR: log-probs at [499, 249], the last to t = 0
    assert trajectory.log_probs.shape == (2, 2) and trajectory.log_probs.requires_grad
    for n, (post, x_s) in enumerate(zip(trajectory.posteriors, trajectory.outputs)):
        normal = torch.distributions.Normal(post.mean.detach(), post.std.expand_as(post.mean))
        torch.testing.assert_close(trajectory.log_probs[:, n].detach(), normal.log_prob(x_s).flatten(1).sum(1))
        assert not x_s.requires_grad and not trajectory.inputs[n].requires_grad
    assert torch.equal(trajectory.sample, trajectory.outputs[-1])
    trajectory.log_probs.sum().backward()
    assert has_grad(student.model)


def test_ddpo_checkpoints_its_tracked_student_calls_with_the_same_loss_and_gradient():
    b = batch(b=4)
    b.prompts = ["p", "p", "q", "q"]
    losses, gradients = [], []
    for checkpointed in (False, True):
        roles = build_roles(GradRecorder(tiny_dit(seed=4)), student_lr=1e-3, fake_score=False, ema=False)
        recorder = roles.module(STUDENT)  # the student role's copy
        term = DDPO(TrueReward(codec(), BrightFraction()), SHAPE, steps=4, gradient_checkpointing=checkpointed)
        loss = term.generator_loss(Step(roles, b, torch.empty(0), torch.Generator().manual_seed(0)))
        loss.sum().backward()
        losses.append(loss.detach())
        gradients.append([p.grad for p in recorder.model.parameters()])
        # sampling: 4 calls, the last 2 with gradient; checkpointing recomputes those 2 in backward
        assert len(recorder.calls) == 4 + 2 * checkpointed and recorder.calls[:4] == \
            [(999, False), (749, False), (499, True), (249, True)]
    torch.testing.assert_close(losses[1], losses[0])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain)
    assert DDPO(TrueReward(codec(), BrightFraction()), SHAPE).gradient_checkpointing  # the default, as direct's


def test_ddpo_advantages_are_normalised_per_prompt_with_a_batch_fallback():
    r = torch.tensor([1.0, 3.0, 10.0, 5.0, float("nan")])
    keep = torch.isfinite(r)
    b = Batch(torch.zeros(5, 3, D), torch.ones(5, 3, dtype=torch.bool), prompts=["a", "a", "b", "b", "c"])
    b.prompts[3] = "d"  # "b" and "d" have one finite sample each; "c" has none
    groups = group_ids(prompt_keys(b))
    assert groups == [0, 0, 1, 2, 3]
    adv = advantages(torch.where(keep, r, torch.zeros_like(r)), groups, keep)
    finite = r[:4]
    batch_mean, batch_std = finite.mean(), finite.std(unbiased=False)
    expected = torch.tensor([-1.0, 1.0, float((10 - batch_mean) / batch_std), float((5 - batch_mean) / batch_std), 0.0])
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-5)
    tokens = batch(b=3)  # without prompt strings, equal text tokens make a group
    tokens.text[2], tokens.text_mask[2] = tokens.text[0], tokens.text_mask[0]
    assert group_ids(prompt_keys(tokens)) == [0, 1, 0]


def ddpo_pytorch_tracker(batches, size):
    """An independent reference: ddpo-pytorch's PerPromptStatTracker (buffer_size = min_count = size), in numpy
    with deques, over batches of (prompts, rewards); every batch's advantages."""
    from collections import deque

    stats, out = {}, []
    for prompts, rewards in batches:
        prompts, rewards = np.array(prompts), np.array(rewards, dtype=np.float64)
        adv = np.empty_like(rewards)
        for prompt in np.unique(prompts):
            mine = rewards[prompts == prompt]
            stats.setdefault(prompt, deque(maxlen=size)).extend(mine)
            if len(stats[prompt]) < size:
                mean, std = rewards.mean(), rewards.std() + 1e-6
            else:
                mean, std = np.mean(stats[prompt]), np.std(stats[prompt]) + 1e-6
            adv[prompts == prompt] = (mine - mean) / std
        out.append(adv)
    return out


def test_ddpo_prompt_history_is_ddpo_pytorchs_per_prompt_stat_tracker():
    from lrm.tuning.ddpo import tracked_advantages

    g = torch.Generator().manual_seed(0)
    batches = [(["a", "b", "c", "a"], torch.randn(4, generator=g, dtype=torch.float64).tolist()) for _ in range(5)]
    history: dict[str, list[float]] = {}
    ours = [tracked_advantages(torch.tensor(r, dtype=torch.float64), p, torch.ones(4, dtype=torch.bool), history, 3)
            for p, r in batches]
    for mine, reference in zip(ours, ddpo_pytorch_tracker(batches, 3)):
        np.testing.assert_allclose(mine.numpy(), reference, rtol=1e-6)
    assert {k: len(v) for k, v in history.items()} == {"a": 3, "b": 3, "c": 3}  # the last 3 of each prompt
    assert history["a"] == [batches[3][1][3], batches[4][1][0], batches[4][1][3]]
    # "a" (two samples a batch) has 3 rewards from the second batch on, "b" and "c" from the third: before, the
    # batch's statistics
    batch_stats = (torch.tensor(batches[1][1]) - torch.tensor(batches[1][1]).mean()) / (
        torch.tensor(batches[1][1]).std(unbiased=False) + 1e-6)
    assert torch.allclose(ours[1][[1, 2]].float(), batch_stats[[1, 2]]) and not torch.allclose(
        ours[1][[0, 3]].float(), batch_stats[[0, 3]])
    keep = torch.tensor([True, False, True, True])  # a non-finite reward: 0 advantage, kept out of the history
    before = {k: list(v) for k, v in history.items()}
    adv = tracked_advantages(torch.tensor([1.0, float("nan"), 2.0, 3.0], dtype=torch.float64), ["a", "b", "c", "a"],
                             keep, history, 3)
    assert adv[1] == 0 and history["b"] == before["b"] and history["a"] == before["a"][2:] + [1.0, 3.0]


def test_ddpo_with_a_prompt_history_keeps_it_across_updates_and_in_the_tuning_config():
    from lrm.tuning.tune import TuneConfig, build_term

    true = TrueReward(codec(), BrightFraction())
    term = build_term(TuneConfig(method="ddpo", prompt_history=2), true, SHAPE)
    assert term.history == 2 and term.reward_history == {}
    b = batch(b=4)
    b.prompts = ["p", "q", "p", "q"]
    Distiller(student_roles(lr=1e-3), [term], DistillConfig(latent_shape=SHAPE, student_steps=4)).fit(
        lambda step: [b], num_steps=2)
    assert {k: len(v) for k, v in term.reward_history.items()} == {"p": 2, "q": 2}
    with pytest.raises(ValueError, match="prompt_history sets DDPO-SF's per-prompt reward statistics"):
        TuneConfig(method="direct", prompt_history=2)
    with pytest.raises(ValueError, match="one reward has no spread"):
        TuneConfig(method="ddpo", prompt_history=1)


def test_the_true_reward_scores_in_float32_inside_the_trainers_bf16_autocast():
    """The hooks' gold labels (DDPO's rewards, the concurrent surrogate's labels, direct's scores) come from
    TrueReward, which leaves the trainer's bf16 autocast for the decode and the reward: the same scores as
    outside it. (In bf16 the dct decode moved jpeg-incompressibility by a tenth of a batch's spread.)"""
    true = TrueReward(DCTCodec(), load_reward("colorfulness"))
    latents = torch.randn(4, 1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = true(latents, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = true(latents, None)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_ddpo_term_is_reinforce_on_the_true_reward_and_skips_nan_rewards():
    roles = student_roles()
    true = TrueReward(codec(), Recording(BrightFraction(), nan_rows=[1]))
    term = DDPO(true, SHAPE, steps=4)
    b = batch(b=4)
    b.prompts = ["p", "p", "p", "p"]
    loss = term.generator_loss(Step(roles, b, torch.empty(0), torch.Generator().manual_seed(0)))
    assert loss.shape == (3,) and true.nonfinite == 1 and term.samples == 4
    loss.sum().backward()
    assert has_grad(roles.module(STUDENT))
    # the same draws by hand: loss = -A * sum_n lp_n / D with A from the finite rewards of the one prompt
    trajectory = sample_trajectory(roles.module(STUDENT), b, SHAPE, 4, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        r = BrightFraction()(codec().decode(trajectory.sample))[[0, 2, 3]]
    adv = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    lp = trajectory.log_probs.detach()[[0, 2, 3]] / (C * H * W)
    torch.testing.assert_close(loss.detach(), -(adv[:, None] * lp).sum(1), rtol=1e-4, atol=1e-4)


def test_ddpo_ratio_clipping_on_reused_samples():
    roles = student_roles(lr=1e-2)
    true = TrueReward(codec(), Brightness())
    term = DDPO(true, SHAPE, steps=2, grad_steps=1, clip_range=1e-4, reuse=2)
    distiller = Distiller(roles, [term], DistillConfig(latent_shape=SHAPE, student_steps=2, clip_norm=None))
    distiller.train_step([batch(b=4)])  # samples, ratio 1
    assert term.samples == 4
    student = roles.module(STUDENT)
    loss = term.generator_loss(Step(roles, batch(b=4), torch.empty(0), distiller.generator))  # reuses them
    assert term.samples == 4  # no new samples
    loss.sum().backward()
    # with the student moved by lr 1e-2, every ratio leaves [1 - 1e-4, 1 + 1e-4] on the side the advantage
    # favours, so the clipped objective has no gradient (PPO) ...
    assert not has_grad(student)
    # ... where the unclipped one has
    student.zero_grad(set_to_none=True)
    term.clip_range, term._uses = None, 1
    term.generator_loss(Step(roles, batch(b=4), torch.empty(0), distiller.generator)).sum().backward()
    assert has_grad(student)


# ---------------------------------------------------------------- direct (ReFL / DRaFT-K)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_direct_backpropagates_through_exactly_k_student_calls(k):
    roles = student_roles()
    recorder = GradRecorder(roles.module(STUDENT))
    roles.roles[STUDENT].module = recorder
    term = DirectReward(TrueReward(codec(), Brightness()), SHAPE, steps=4, grad_steps=k)
    loss = term.generator_loss(Step(roles, batch(), torch.empty(0), torch.Generator().manual_seed(0)))
    assert [with_grad for _, with_grad in recorder.calls] == [False] * (4 - k) + [True] * k
    assert [t for t, _ in recorder.calls] == [999, 749, 499, 249]
    recorder.calls = []
    loss.sum().backward()
    assert len(recorder.calls) == k  # gradient checkpointing recomputes exactly the K calls in backward
    assert has_grad(recorder.model)


def test_direct_gradient_checkpointing_gives_the_same_gradient():
    got = []
    for checkpointing in (True, False):
        roles = student_roles()
        term = DirectReward(TrueReward(codec(), Brightness()), SHAPE, steps=2, grad_steps=2,
                            gradient_checkpointing=checkpointing)
        term.generator_loss(Step(roles, batch(), torch.empty(0), torch.Generator().manual_seed(0))).sum().backward()
        got.append(torch.cat([p.grad.flatten() for p in roles.module(STUDENT).parameters() if p.grad is not None]))
    torch.testing.assert_close(got[0], got[1])


class NaNForBadPrompt(Reward):
    """Mean brightness times a weight that is NaN for the prompt "bad": its gradient there is NaN too, as a
    reward's is when it fails on an input (a division by zero), so masking the score alone would still put
    0 x NaN into the backward pass."""

    spec = RewardSpec("brightness-unless-bad", "text-video", differentiable=True)

    def score(self, pixels, prompts):
        weight = torch.tensor([float("nan") if p == "bad" else 1.0 for p in prompts])
        return pixels.mean(dim=(1, 2, 3, 4)) * weight


def test_direct_decodes_selected_frames_of_a_video_and_skips_nan_rewards():
    teacher = tiny_dit(frames=3)
    roles = build_roles(teacher, fake_score=False, ema=False)
    recording = Recording(NaNForBadPrompt())
    true = TrueReward(codec(), recording)
    term = DirectReward(true, (3, C, H, W), steps=1, frames=2)
    b = batch(b=3, frames=3)
    b.prompts = ["bad", "good", "fine"]
    loss = term.generator_loss(Step(roles, b, torch.empty(0), torch.Generator().manual_seed(0)))
    assert recording.seen[0].shape == (3, 2, 3, 8 * H, 8 * W)  # 2 of the 3 frames decoded
    assert recording.seen[1].shape == (2, 2, 3, 8 * H, 8 * W)  # the finite rows scored again, alone
    torch.testing.assert_close(recording.seen[1], recording.seen[0][1:])
    assert loss.shape == (2,) and torch.isfinite(loss).all() and true.nonfinite == 1
    loss.sum().backward()
    grads = [p.grad for p in roles.module(STUDENT).parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)  # the bad row's NaN gradient is kept out
    assert has_grad(roles.module(STUDENT))


def test_with_no_finite_reward_direct_and_ddpo_skip_the_update_alone_and_let_other_terms_learn():
    """Every reward NaN: the hook's loss is empty. Alone it must not move the student (Adam's momentum would, on a
    zero loss) and the skip is counted; beside VSD the update goes ahead on VSD's loss."""
    from lrm.tuning import VSD

    b = batch(b=2, frames=3)
    b.prompts = ["bad", "bad"]
    for make in (lambda true: DirectReward(true, (3, C, H, W), steps=1),
                 lambda true: DDPO(true, (3, C, H, W), steps=2)):
        roles = build_roles(tiny_dit(frames=3), fake_score=False, ema=False, student_lr=1e-3)
        true = TrueReward(codec(), NaNForBadPrompt())
        term = make(true)
        loss = term.generator_loss(Step(roles, b, torch.empty(0), torch.Generator().manual_seed(0)))
        assert loss.shape == (0,) and loss.requires_grad
        good = batch(b=2, frames=3)
        good.prompts = ["good", "fine"]
        distiller = Distiller(roles, [term], DistillConfig(latent_shape=(3, C, H, W), student_steps=2))
        assert not distiller.train_step([good]).skipped  # Adam now has momentum
        before = copy.deepcopy(roles.module(STUDENT).state_dict())
        log = distiller.train_step([b])
        assert log.skipped == [STUDENT] and distiller.skipped[STUDENT] == 1 and distiller.updates[STUDENT] == 1
        assert all(torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in before.items())
        assert true.nonfinite == 4  # 2 in the call above, 2 in the skipped step
        with_vsd = build_roles(tiny_dit(frames=3), ema=False, student_lr=1e-3)
        distiller = Distiller(with_vsd, [VSD(), make(TrueReward(codec(), NaNForBadPrompt()))],
                              DistillConfig(latent_shape=(3, C, H, W), student_steps=2))
        log = distiller.train_step([b])
        assert STUDENT not in log.skipped and distiller.updates[STUDENT] == 1 and np.isfinite(log.losses["vsd"])


# ---------------------------------------------------------------- refusals


def test_refusals_before_any_work():
    with pytest.raises(ValueError, match="'jpeg-incompressibility' is not .*surrogate .* or with DDPO"):
        DirectReward(TrueReward(codec(), load_reward("jpeg-incompressibility")), SHAPE)
    video = TrueReward(codec(), VideoReward())
    for make in (lambda: DirectReward(video, SHAPE), lambda: DDPO(video, SHAPE),
                 lambda: LRMFineTune(video, latent_shape=SHAPE)):
        with pytest.raises(ValueError, match="'video-brightness' is a video reward and this generator makes images"):
            make()
    with pytest.raises(ValueError, match="grad_steps"):
        DDPO(TrueReward(codec(), Brightness()), SHAPE, steps=4, grad_steps=5)
    texty = TrueReward(codec(), load_reward("prompt-color"))
    roles = student_roles()
    with pytest.raises(ValueError, match=r"reads prompts; give Batch\(prompts=\[...\]\)"):
        DDPO(texty, SHAPE, steps=1).generator_loss(Step(roles, batch(), torch.empty(0), torch.Generator()))
    flow = build_roles(tiny_dit_flow(), fake_score=False, ema=False)
    with pytest.raises(ValueError, match="DDPO-SF needs a VP"):
        DDPO(TrueReward(codec(), Brightness()), SHAPE).generator_loss(Step(flow, batch(), torch.empty(0),
                                                                           torch.Generator()))


def tiny_dit_flow():
    from lrm.generators import build_dit

    return build_dit("dit-xs", in_channels=C, text_dim=D, prediction="flow",
                     schedule_config={"type": "flow", "shift": 1.0, "num_timesteps": 1000})


# ---------------------------------------------------------------- short tunings raise the true reward


def tune(roles, terms, steps, micro=4):
    distiller = Distiller(roles, terms, DistillConfig(latent_shape=SHAPE, student_steps=1, seed=3))
    distiller.fit(lambda step: [batch(b=micro, seed=100 + step)], num_steps=steps)
    return distiller


def test_direct_tuning_raises_a_differentiable_reward():
    roles = student_roles(lr=3e-3)
    true = TrueReward(codec(), Brightness())
    before = true_reward_at_fixed_seeds(roles.module(STUDENT), true)
    tune(roles, [DirectReward(true, SHAPE, steps=1)], steps=10)
    after = true_reward_at_fixed_seeds(roles.module(STUDENT), true)
    assert after > before + 0.05, (before, after)


def test_concurrent_lrm_tuning_raises_a_non_differentiable_reward():
    roles = student_roles(lr=1e-3)
    true = TrueReward(codec(), BrightFraction())
    before = true_reward_at_fixed_seeds(roles.module(STUDENT), true)
    roles.add(surrogate_role(surrogate(), roles.module(STUDENT), SHAPE, concurrent=True, lr=3e-3))
    term = LRMFineTune(true)
    tune(roles, [term], steps=30, micro=8)
    after = true_reward_at_fixed_seeds(roles.module(STUDENT), true)
    assert after > before + 0.08, (before, after, term.fidelities)
    assert term.fidelity > 0.5  # the surrogate follows the student's samples


class ConstantPolicy(torch.nn.Module):
    """A denoiser whose x0 prediction is a learnt per-channel constant: DDPO's policy mean is a parameter."""

    prediction = "x0"
    schedule_config = {"type": "vp", "betas": "linear", "num_timesteps": 1000}

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(C))

    def forward(self, x_t, t, text, text_mask):
        return self.theta.view(1, 1, C, 1, 1).expand_as(x_t)


def constant_policy_roles(lr):
    from lrm.tuning.roles import Role, Roles, adamw

    policy = ConstantPolicy()
    roles = Roles()
    roles.add(Role(STUDENT, policy, adamw(lr)(list(policy.parameters()))))
    return roles, policy


def test_ddpo_gradient_agrees_with_the_pathwise_gradient():
    """On a policy whose mean is a parameter, REINFORCE's expected gradient is the pathwise gradient of the
    reward (an independent reference: backpropagation through the differentiable reward and decoder)."""
    roles, policy = constant_policy_roles(1e-2)
    term = DDPO(TrueReward(codec(), Brightness()), SHAPE, steps=4)
    term.generator_loss(Step(roles, batch(b=1024, seed=1), torch.empty(0), torch.Generator().manual_seed(0))
                        ).mean().backward()
    x0 = torch.zeros(1, *SHAPE, requires_grad=True)
    (-Brightness()(codec().decode(x0))).sum().backward()
    pathwise = x0.grad.sum(dim=(0, 1, 3, 4))  # (C,) d(-R)/d theta
    assert torch.nn.functional.cosine_similarity(policy.theta.grad, pathwise, dim=0) > 0.95


def test_ddpo_tuning_raises_a_non_differentiable_reward():
    roles, policy = constant_policy_roles(3e-2)
    true = TrueReward(codec(), BrightFraction())
    before = true_reward_at_fixed_seeds(policy, true)
    term = DDPO(true, SHAPE, steps=4)
    tune(roles, [term], steps=15, micro=32)
    after = true_reward_at_fixed_seeds(policy, true)
    assert after > before + 0.1, (before, after, term.rewards)


# ---------------------------------------------------------------- resume


def hooks_distiller():
    roles = student_roles(lr=1e-3)
    roles.add(surrogate_role(surrogate(), roles.module(STUDENT), SHAPE, concurrent=True, lr=1e-3))
    terms = [LRMFineTune(TrueReward(codec(), BrightFraction())),
             DDPO(TrueReward(codec(), Brightness()), SHAPE, steps=2),
             DirectReward(TrueReward(codec(), Brightness()), SHAPE, steps=2)]
    return Distiller(roles, terms, DistillConfig(latent_shape=SHAPE, student_steps=2, seed=5))


def test_a_resumed_tuning_equals_an_uninterrupted_one(tmp_path):
    """The concurrent surrogate (weights, label statistics, optimiser) and the draws are checkpointed."""
    data = lambda step: [batch(b=3, seed=50 + step)]  # noqa: E731
    straight = hooks_distiller()
    straight.fit(data, 4)
    hooks_distiller().fit(data, 2, run_dir=tmp_path)
    resumed = hooks_distiller()
    assert resumed.resume(tmp_path) and resumed.step == 2
    resumed.fit(data, 4)
    for name in straight.roles.names():
        a, b = straight.roles.module(name).state_dict(), resumed.roles.module(name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert straight.updates == resumed.updates == {STUDENT: 4, LRM: 4}


# ---------------------------------------------------------------- the monitor


def test_the_monitor_records_gold_proxy_diversity_and_distance_at_fixed_seeds():
    from lrm.generators import build_dit
    from lrm.tuning.monitor import TuningMonitor
    from test_sampling import Words

    torch.manual_seed(0)
    student = build_dit("dit-xs", C, Words.dim)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    roles = build_roles(student, student_lr=3e-3, fake_score=False, ema=False)
    true = TrueReward(codec(), Brightness())
    lrm = surrogate()
    monitor = TuningMonitor(roles.module(STUDENT), true, ["a red circle", "a blue square"], Words(),
                            latent_shape=SHAPE, steps=2, per_prompt=3, surrogate=lrm)
    first, again = monitor(0), monitor(0)
    # fixed prompts and seeds (NaN: no ensemble disagreement); the gradient alignment sums a backward pass in
    # multi-threaded reductions whose order varies, so it repeats to float precision only
    assert again.gradient_alignment == pytest.approx(first.gradient_alignment, rel=1e-5)
    np.testing.assert_equal({**asdict(first), "gradient_alignment": None}, {**asdict(again), "gradient_alignment": None})
    assert first.distance == 0.0 and first.nonfinite == 0
    assert 1.0 <= first.diversity <= 3.0 and np.isfinite(first.proxy)
    assert monitor.last.pixels.shape == (6, 1, 3, 8 * H, 8 * W)
    assert first.gold == pytest.approx(float(Brightness()(codec().decode(monitor.last.latents)).mean()), rel=1e-5)
    with torch.no_grad():
        assert first.proxy == pytest.approx(float(lrm(monitor.last.latents).mean()), rel=1e-5)

    def prompt_batch(step):
        text = Words().encode(["a red circle", "a blue square"] * 2)
        return [Batch(text.emb, text.mask)]

    Distiller(roles, [DirectReward(true, SHAPE, steps=2)], DistillConfig(latent_shape=SHAPE, student_steps=2)
              ).fit(prompt_batch, num_steps=5)
    after = monitor(5)
    assert after.gold > first.gold and after.distance > 0 and len(monitor.records) == 3


def test_the_monitors_proxy_averages_the_samples_whose_gold_is_finite():
    # the proxy - gold gap (over-optimisation's signal) compared the proxy of N samples with the gold of fewer
    from lrm.tuning.monitor import TuningMonitor

    student, words = words_student()
    lrm = surrogate()
    monitor = TuningMonitor(student, TrueReward(codec(), Recording(Brightness(), nan_rows=[1])), ["a", "b"], words,
                            latent_shape=SHAPE, steps=2, per_prompt=2, surrogate=lrm, gradient_alignment=False)
    record = monitor(0)
    with torch.no_grad():
        scores = lrm(monitor.last.latents)  # (4,)
    assert record.nonfinite == 1
    assert record.proxy == pytest.approx(float(scores[[0, 2, 3]].mean()), rel=1e-5)
    assert record.proxy != pytest.approx(float(scores.mean()), rel=1e-5)


class PixelSurrogate(torch.nn.Module):
    """A "surrogate" that is `sign` times the pixel reward itself: its latent gradient is the gold's, times sign."""

    def __init__(self, reward, sign: float):
        super().__init__()
        self.path, self.sign = PixelPathReward(codec(), reward), sign
        self.weight = torch.nn.Parameter(torch.ones(()))  # the monitor finds the surrogate's device from it

    def forward(self, latents, text=None, text_mask=None):
        return self.sign * self.weight * self.path(latents)


def test_the_monitors_gradient_alignment_is_the_cosine_of_the_surrogate_and_gold_gradients():
    from lrm.tuning.monitor import TuningMonitor
    from test_sampling import Words

    student, words = words_student()
    prompts = ["a red circle", "a blue square"]

    def alignment(reward, lrm, **options):
        monitor = TuningMonitor(student, TrueReward(codec(), reward), prompts, words, latent_shape=SHAPE, steps=2,
                                per_prompt=2, surrogate=lrm, **options)
        return monitor(0).gradient_alignment, monitor

    assert alignment(Brightness(), PixelSurrogate(Brightness(), 1.0))[0] == pytest.approx(1.0, abs=1e-5)
    assert alignment(Brightness(), PixelSurrogate(Brightness(), -1.0))[0] == pytest.approx(-1.0, abs=1e-5)
    cnn = surrogate()
    value, monitor = alignment(Brightness(), cnn)
    x = monitor.last.latents.clone().requires_grad_(True)
    (a,) = torch.autograd.grad(cnn(x).sum(), x)
    x = x.detach().requires_grad_(True)
    (b,) = torch.autograd.grad(TrueReward(codec(), Brightness())(x, None).sum(), x)
    expected = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean()
    assert value == pytest.approx(float(expected), abs=1e-5) and abs(value) < 1
    assert not monitor.last.latents.requires_grad  # the samples are left as they were
    assert all(p.grad is None for p in [*cnn.parameters(), *student.parameters()])  # no parameter gets a gradient
    assert np.isnan(alignment(BrightFraction(), cnn)[0])  # a non-differentiable reward has no gradient to compare
    assert np.isnan(alignment(Brightness(), None)[0])  # no surrogate
    assert np.isnan(alignment(Brightness(), cnn, gradient_alignment=False)[0])  # switched off
    assert np.isnan(alignment(DetachedBrightness(), cnn)[0])  # says differentiable, but no gradient flows: no crash


class DetachedBrightness(Brightness):
    """A metric whose spec says differentiable while its code detaches (a user's mistake)."""

    def score(self, pixels, prompts):
        return super().score(pixels.detach(), prompts)


def test_the_monitors_diversity_is_nan_for_an_all_black_sample_instead_of_stopping_the_run():
    from lrm.evaluation.vendi import diversity, pixel_features
    from lrm.tuning.monitor import sample_diversity

    pixels = torch.rand(4, 1, 3, 8, 8)  # (N, T, 3, H, W)
    prompts = ["a", "a", "b", "b"]
    assert sample_diversity(pixels, prompts) == pytest.approx(diversity(pixel_features(pixels), prompts).mean)
    pixels[2] = 0.0  # a student collapsed to black
    assert np.isnan(sample_diversity(pixels, prompts))


# ---------------------------------------------------------------- the library runner


def words_student():
    from lrm.generators import build_dit
    from test_sampling import Words

    torch.manual_seed(0)
    student = build_dit("dit-xs", C, Words.dim)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, Words()


def test_a_concurrent_surrogate_is_built_on_the_students_device():
    """`lrm tune --concurrent` builds its surrogate beside the student (on an H200 it stayed on the CPU and the
    first step failed). "meta" stands in for the accelerator."""
    from lrm.tuning.tune import TuneConfig, tuning_roles

    student = words_student()[0].to("meta")
    config = TuneConfig(method="lrm", concurrent=True)
    roles = tuning_roles(student, config, SHAPE, None, TrueReward(codec(), Brightness()))
    assert {p.device.type for p in roles.module(LRM).parameters()} == {"meta"}


@pytest.mark.parametrize("method,concurrent", [("lrm", True), ("lrm", False), ("ddpo", False), ("direct", False)])
def test_tune_runs_each_method_and_records_at_fixed_seeds(method, concurrent):
    from lrm.tuning.tune import TuneConfig, tune

    student, words = words_student()
    reward = Brightness() if method == "direct" else BrightFraction()
    config = TuneConfig(method=method, concurrent=concurrent, steps=4, student_steps=2, batch_size=4, lr=1e-3,
                        eval_every=2, per_prompt=2, eval_prompts=2)
    fitted = surrogate() if method == "lrm" and not concurrent else None
    result = tune(student, TrueReward(codec(), reward), ["a red circle", "a blue square", "a green dot"], words,
                  config, latent_shape=SHAPE, surrogate=fitted)
    assert [r.step for r in result.records] == [0, 2, 4] and len(result.logs) == 4
    assert result.records[0].distance == 0 and result.records[-1].distance > 0
    assert np.isfinite(result.records[-1].proxy) == (method == "lrm")
    assert result.seconds_per_step > 0 and result.peak_memory_mb is None and result.peak_rss_mb > 0
    if concurrent:
        assert len(result.term.fidelities) == 4


@pytest.mark.parametrize("concurrent", [False, True])
def test_noise_aware_tuning_scores_the_students_samples_noised_and_the_monitor_clean(concurrent, monkeypatch):
    from lrm.models.surrogate import LatentRewardModel
    from lrm.tuning.tune import TuneConfig, tune

    seen = []  # (batch, t or None) per surrogate call
    forward = LatentRewardModel.forward

    def spy(self, latents, text=None, text_mask=None, t=None, standardised=False):
        seen.append((latents.shape[0], None if t is None else t.tolist()))
        return forward(self, latents, text, text_mask, t=t, standardised=standardised)

    monkeypatch.setattr(LatentRewardModel, "forward", spy)
    student, words = words_student()
    torch.manual_seed(0)
    fitted = None if concurrent else build_surrogate("image-cnn-stats", C, noise_aware=True)
    config = TuneConfig(concurrent=concurrent, noise_aware=True, steps=2, student_steps=2, batch_size=4, lr=1e-3,
                        eval_every=2, per_prompt=2, eval_prompts=1)
    tune(student, TrueReward(codec(), BrightFraction()), ["a red circle", "a blue square"], words, config,
         latent_shape=SHAPE, surrogate=fitted)
    training = [t for b, t in seen if b == 4]  # the student's batches (and the concurrent surrogate's)
    assert len(training) == (4 if concurrent else 2)
    assert all(t is not None and all(0 <= v <= 500 for v in t) for t in training) and any(any(t) for t in training)
    assert all(t is None for b, t in seen if b == 2)  # the monitor's proxy: clean x0 (t = 0)


@pytest.mark.parametrize("method", ["lrm", "direct"])
def test_tune_a_video_student_toward_a_video_reward(method):
    from lrm.generators import build_dit
    from lrm.tuning.tune import TuneConfig, tune
    from test_sampling import Words

    torch.manual_seed(0)
    student = build_dit("dit-xs", C, Words.dim, frames=3)
    config = TuneConfig(method=method, concurrent=method == "lrm", steps=2, student_steps=1, batch_size=2,
                        eval_every=2, per_prompt=3, eval_prompts=1, frames=2 if method == "direct" else None)
    recording = Recording(VideoReward())
    result = tune(student, TrueReward(codec(), recording), ["a red circle"], Words(), config,
                  latent_shape=(3, C, H, W))
    assert [r.step for r in result.records] == [0, 2] and result.records[-1].distance > 0
    # (samples, frames) scored: training batches of 2 (direct decodes 2 of the 3 frames), the monitor's 3 clips and,
    # with a surrogate, its gradient alignment's clips one at a time
    expected = {(2, 2), (3, 3)} if method == "direct" else {(2, 3), (3, 3), (1, 3)}
    assert {tuple(p.shape[:2]) for p in recording.seen} == expected
    if method == "lrm":
        assert result.term.trains == (LRM,) and len(result.term.fidelities) == 2


def test_tune_refuses_bad_setups_before_any_work():
    from lrm.tuning.tune import TuneConfig, tune

    student, words = words_student()
    start = copy.deepcopy(student.state_dict())
    with pytest.raises(ValueError, match="needs a fitted surrogate"):
        tune(student, TrueReward(codec(), Brightness()), ["a"], words, TuneConfig(), latent_shape=SHAPE)
    with pytest.raises(ValueError, match="'bright-fraction' is not"):
        tune(student, TrueReward(codec(), BrightFraction()), ["a"], words, TuneConfig(method="direct"),
             latent_shape=SHAPE)
    with pytest.raises(ValueError, match="only method 'lrm' uses"):
        TuneConfig(method="ddpo", concurrent=True)
    with pytest.raises(ValueError, match="noise_aware is about the latent surrogate"):
        TuneConfig(method="direct", noise_aware=True)
    with pytest.raises(ValueError, match="needs a noise-aware surrogate: fit it with `lrm fit REWARD --noise-aware`"):
        tune(student, TrueReward(codec(), BrightFraction()), ["a"], words, TuneConfig(noise_aware=True),
             latent_shape=SHAPE, surrogate=surrogate())
    with pytest.raises(ValueError, match="method must be one of"):
        TuneConfig(method="ppo")
    with pytest.raises(ValueError, match="frames selects the frames that method 'direct' decodes"):
        TuneConfig(method="ddpo", frames=2)
    # options the method would ignore
    with pytest.raises(ValueError, match="surrogate_lr 0.001 trains a concurrent surrogate: add concurrent"):
        TuneConfig(surrogate_lr=1e-3)
    with pytest.raises(ValueError, match="surrogate_lr 0.001 trains a concurrent surrogate"):
        TuneConfig(method="ddpo", surrogate_lr=1e-3)
    with pytest.raises(ValueError, match="method 'lrm' has none, got grad_steps=7"):
        TuneConfig(grad_steps=7)
    with pytest.raises(ValueError, match="grad_steps must be a positive integer, got 0"):
        TuneConfig(method="direct", grad_steps=0)
    with pytest.raises(ValueError, match="with batch_size 1 every advantage is 0"):
        TuneConfig(method="ddpo", batch_size=1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got inf"):
        TuneConfig(lr=float("inf"))
    assert TuneConfig(concurrent=True, surrogate_lr=1e-3).surrogate_lr == 1e-3
    assert TuneConfig(method="ddpo", grad_steps=1).grad_steps == 1
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in start.items())


# ---------------------------------------------------------------- lrm tune


def cli_app():
    import typer

    from lrm.cli.tune import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so that `tune` is a subcommand
    register(app)
    return app


@pytest.fixture
def words_runs(tmp_path, monkeypatch):
    """A tiny distilled student run (dct latents, the test-words encoder) and a teacher run."""
    from lrm import text as text_registry
    from lrm.codecs import load as load_codec
    from lrm.generators import build_dit, save_denoiser
    from test_sampling import Words

    monkeypatch.setitem(text_registry.ENCODERS, Words.id, Words)
    torch.manual_seed(0)
    model = build_dit("dit-xs", 32, Words.dim)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.codec_settings, model.text_encoder_id = load_codec("dct").settings(), Words.id
    save_denoiser(model, tmp_path / "student" / "model", extra={"student_steps": 1, "latent_shape": [1, 32, 8, 8]})
    save_denoiser(model, tmp_path / "teacher" / "model", extra={"latent_shape": [1, 32, 8, 8]})
    return tmp_path


TUNE_ARGS = ["--prompt", "a red circle", "--prompt", "a blue square", "--steps", "2", "--eval-every", "1",
             "--batch-size", "2", "--per-prompt", "2", "--lr", "1e-3"]


@pytest.mark.parametrize("reward,method", [("colorfulness", ["--method", "direct"]),
                                           ("colorfulness", ["--concurrent"]),
                                           ("jpeg-incompressibility", ["--concurrent"]),
                                           ("jpeg-incompressibility", ["--concurrent", "--noise-aware"]),
                                           ("jpeg-incompressibility", ["--concurrent", "--teacher"])])
def test_lrm_tune_writes_the_tuned_student_records_and_grids(words_runs, reward, method):
    from typer.testing import CliRunner

    from lrm.generators.runs import open_generator_run

    out = words_runs / "tuned"
    start = ["--teacher", str(words_runs / "teacher"), "--student-steps", "1"] if "--teacher" in method else \
        ["--student", str(words_runs / "student")]
    method = [m for m in method if m != "--teacher"]
    result = CliRunner().invoke(cli_app(), ["tune", reward, *start, *method, *TUNE_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{reward}: gold" in result.output
    facts = json.loads((out / "records.json").read_text())
    assert [r["step"] for r in facts["records"]] == [0, 1, 2] and facts["records"][-1]["distance"] > 0
    assert facts["nonfinite_rewards"] == 0 and facts["config"]["steps"] == 2
    assert facts["config"]["noise_aware"] == ("--noise-aware" in method)
    golds, best = [r["gold"] for r in facts["records"]], facts["best"]  # its rewards are higher-is-better
    assert best["gold"] == max(golds) and (out / best["checkpoint"] / "model.safetensors").is_file()
    assert ("best gold" in result.output) == (best["gold"] > golds[-1])
    assert (out / "before" / "grid.png").is_file() and (out / "after" / "grid.png").is_file()
    tuned = open_generator_run(out)
    assert tuned.student_steps == 1 and tuned.latent_shape() == (1, 32, 8, 8)
    if "--teacher" in start:  # DOLLAR's VSD + LRM: the fake score and the surrogate train beside the student
        assert set(facts["losses"][0]) == {"vsd", "fake_score", "lrm_ft", "lrm"}
    alignment = [r["gradient_alignment"] for r in facts["records"]]
    if reward == "colorfulness" and "--concurrent" in method:  # a surrogate and a differentiable reward
        assert all(-1 <= a <= 1 for a in alignment) and "gradient alignment" in result.output
    else:  # no surrogate (direct), or a reward with no gradient (jpeg size)
        assert all(a is None for a in alignment) and "gradient alignment" not in result.output  # NaN, written null


def test_lrm_tune_refuses_bad_input_with_one_line(words_runs):
    from typer.testing import CliRunner

    other = build_surrogate("image-cnn-stats", C)
    other.info.codec_settings = codec().settings()
    other.save_pretrained(words_runs / "other-lrm")
    of_brightness = build_surrogate("image-cnn-stats", 32)  # fits the student, imitates another reward
    of_brightness.info.codec_settings = json.loads((words_runs / "student" / "model" / "config.json").read_text())[
        "codec_settings"]
    of_brightness.info.reward_spec = {"name": "brightness", "kind": "image"}
    of_brightness.save_pretrained(words_runs / "brightness-lrm")
    student = ["--student", str(words_runs / "student")]
    teacher = ["--teacher", str(words_runs / "teacher")]
    cases = [
        (["colorfulness", "--student", str(words_runs / "teacher"), "--method", "direct"], "is a teacher run"),
        (["colorfulness", "--teacher", str(words_runs / "student"), "--method", "direct"], "is a distilled student"),
        (["colorfulness", *student, *teacher, "--method", "direct"], "give --student RUN"),
        (["colorfulness", *teacher, "--method", "direct", "--losses", "vsd,cd"], "CD needs real latents"),
        (["jpeg-incompressibility", *student, "--method", "direct"], "'jpeg-incompressibility' is not"),
        (["colorfulness", *student], "needs --surrogate DIR"),
        (["colorfulness", *student, "--surrogate", str(words_runs / "other-lrm")], "4-channel latents"),
        (["colorfulness", *student, "--surrogate", str(words_runs / "brightness-lrm")],
         "imitates 'brightness', not the tuned reward 'colorfulness'"),
        (["colorfulness", *student, "--method", "ddpo", "--concurrent"], "--concurrent: for --method lrm, not ddpo"),
        (["colorfulness", *student, "--method", "direct", "--noise-aware"], "--noise-aware: for --method lrm"),
        (["colorfulness", *student, "--method", "ddpo", "--gradient-weight", "1"], "--gradient-weight: for --meth"),
        (["colorfulness", *student, "--surrogate", str(words_runs / "other-lrm"), "--gradient-weight", "1"],
         "add concurrent"),
        (["jpeg-compressibility", *student, "--concurrent", "--gradient-weight", "1"], "not differentiable"),
        (["no-such-reward", *student, "--concurrent"], "unknown reward"),
        # options the run would ignore
        (["colorfulness", *student, "--concurrent", "--losses", "cd"], "Invalid value for --losses"),
        (["colorfulness", "--concurrent", "--losses", "vsd"], "Invalid value for --losses"),
        (["colorfulness", *student, "--concurrent", "--student-steps", "2"], "--student-steps: --student"),
        (["colorfulness", *teacher, "--concurrent", "--student-steps", "3"], "must be 1, 2 or 4"),
        (["colorfulness", *teacher, "--concurrent", "--losses", ""], "--losses is empty"),
        (["colorfulness", *student, "--method", "ddpo", "--surrogate-lr", "1e-3"], "trains a concurrent surrogate"),
        (["colorfulness", *student, "--concurrent", "--no-gradient-checkpointing"], "for --method ddpo or direct"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli_app(), ["tune", *args, *TUNE_ARGS])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_lrm_tune_refuses_to_resume_after_its_start_student_trained_further(words_runs):
    """The run records a digest of its start's weights: resumed after that student changed (a distill run extended),
    its distances and KL reference would be measured against other weights."""
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    student = words_runs / "student"
    args = ["tune", "colorfulness", "--student", str(student), "--method", "direct", *TUNE_ARGS, "--quiet",
            "--out", str(words_runs / "resumed")]
    assert CliRunner().invoke(cli_app(), args).exit_code == 0
    weights = student / "model" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}, weights)
    result = CliRunner().invoke(cli_app(), [*args, "--steps", "3"])
    assert result.exit_code == 2 and "start_weights: saved" in result.output, result.output


def test_lrm_tune_shows_a_progress_bar_with_the_gold_and_quiet_hides_it(words_runs, monkeypatch):
    from functools import partial

    from tqdm import tqdm
    from typer.testing import CliRunner

    monkeypatch.setattr("lrm.tuning.tune.tqdm", partial(tqdm, mininterval=0, miniters=1))  # draw every step
    args = ["tune", "colorfulness", "--student", str(words_runs / "student"), "--method", "direct", *TUNE_ARGS]
    shown = CliRunner().invoke(cli_app(), [*args, "--out", str(words_runs / "shown")])
    assert shown.exit_code == 0, shown.output
    assert "tune: " in shown.output and "2/2" in shown.output and "gold=" in shown.output and "direct=" in shown.output
    quiet = CliRunner().invoke(cli_app(), [*args, "--quiet", "--out", str(words_runs / "quiet")])
    assert quiet.exit_code == 0 and "tune: " not in quiet.output and "gold " in quiet.output, quiet.output


def test_gradient_checkpointing_is_the_ddpo_and_direct_terms_choice(words_runs):
    from typer.testing import CliRunner

    from lrm.tuning.tune import TuneConfig, build_term

    true = TrueReward(codec(), Brightness())
    for method in ("ddpo", "direct"):
        for on in (True, False):
            term = build_term(TuneConfig(method=method, gradient_checkpointing=on), true, SHAPE)
            assert term.gradient_checkpointing is on
    with pytest.raises(ValueError, match="method 'lrm' backpropagates through one"):
        TuneConfig(method="lrm", gradient_checkpointing=False)
    out = words_runs / "ddpo-plain"
    result = CliRunner().invoke(cli_app(), ["tune", "colorfulness", "--student", str(words_runs / "student"),
                                            "--method", "ddpo", "--no-gradient-checkpointing", *TUNE_ARGS,
                                            "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "records.json").read_text())["config"]["gradient_checkpointing"] is False


def test_lrm_tune_prompt_history_is_for_ddpo_and_recorded(words_runs):
    from typer.testing import CliRunner

    def tune(method, out):
        return CliRunner().invoke(cli_app(), ["tune", "colorfulness", "--student", str(words_runs / "student"),
                                              "--method", method, "--prompt-history", "2", *TUNE_ARGS,
                                              "--out", str(words_runs / out)])

    result = tune("ddpo", "tracked")
    assert result.exit_code == 0, result.output
    assert json.loads((words_runs / "tracked" / "records.json").read_text())["config"]["prompt_history"] == 2
    state = json.loads((words_runs / "tracked" / "checkpoints" / "step-00000002" / "tune.json").read_text())
    history = state["counters"]["reward_history"]  # checkpointed: each prompt's last 2 rewards
    assert history and set(history) <= {"a red circle", "a blue square"} and all(len(v) <= 2 for v in history.values())
    refused = tune("direct", "refused")
    assert refused.exit_code == 2 and "for --method ddpo" in refused.output and not (words_runs / "refused").exists()


def test_lrm_tune_bf16_tunes_in_mixed_precision_and_a_rerun_may_change_it(words_runs):
    """--bf16: the terms' forward passes under bf16 autocast (finite losses other than float32's), recorded in
    records.json; a float32 rerun with more steps resumes the run (an execution setting, like the device)."""
    import math

    from typer.testing import CliRunner

    def tune(name, *extra):
        return CliRunner().invoke(cli_app(), ["tune", "colorfulness", "--student", str(words_runs / "student"),
                                              "--concurrent", *TUNE_ARGS, *extra, "--out", str(words_runs / name)])

    for name, extra in (("fp32", ()), ("bf16", ("--bf16",))):
        result = tune(name, *extra)
        assert result.exit_code == 0, result.output
    fp32, bf16 = (json.loads((words_runs / name / "records.json").read_text()) for name in ("fp32", "bf16"))
    assert bf16["config"]["autocast"] == "bf16" and fp32["config"]["autocast"] is None
    assert all(math.isfinite(v) for losses in bf16["losses"] for v in losses.values())
    assert bf16["losses"] != fp32["losses"]  # the forward passes ran in bf16
    again = tune("bf16", "--steps", "3")
    assert again.exit_code == 0, again.output
    resumed = json.loads((words_runs / "bf16" / "records.json").read_text())
    assert resumed["losses"][:2] == bf16["losses"] and len(resumed["losses"]) == 3


def test_lrm_tune_defaults_restate_the_library():
    from lrm.cli import tune as cli
    from lrm.tuning import tune as library

    assert cli.METHODS == library.METHODS
    config = library.TuneConfig()
    assert cli.DEFAULTS == {k: getattr(config, k) for k in cli.DEFAULTS}


# ---------------------------------------------------------------- under torchrun
RANKS_WORKER = '''
import json, sys
import torch
from lrm import distributed
from lrm.models import build
from lrm.tuning.ddpo import advantages_over_ranks
from lrm.tuning.lrm_ft import initial_label_stats

distributed.init_from_env()
rank = distributed.rank()
rewards = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([4.0, 8.0, 5.0])][rank]  # rank 1's last row not kept
keys = [["a", "b", "b"], ["a", "b", "c"]][rank]
keep = [torch.tensor([True, True, True]), torch.tensor([True, True, False])][rank]
adv = advantages_over_ranks(rewards, keys, keep)
surrogate = build("image-cnn", 4)
initial_label_stats(surrogate, [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 10.0, 4.0])][rank])
with open(sys.argv[1] + f"/rank{{rank}}.json", "w") as f:
    json.dump({{"adv": adv.tolist(), "stats": [float(surrogate.label_mean), float(surrogate.label_std)]}}, f)
distributed.shutdown()
'''


def test_ranks_take_disjoint_slices_of_the_one_process_prompt_batch():
    from lrm.tuning.tune import prompt_batches

    prompts = ["a red circle", "a blue square", "a green dot"]
    rows = {p: torch.full((i + 1, 3), float(i)) for i, p in enumerate(prompts)}  # prompts of 1, 2 and 3 tokens
    one = prompt_batches(prompts, rows, 4, "cpu", rank=0, world=1)
    ranks = [prompt_batches(prompts, rows, 4, "cpu", rank=r, world=2) for r in range(2)]
    for step in range(3):
        whole, parts = one(step)[0], [batches(step)[0] for batches in ranks]
        assert [p.prompts for p in parts] == [whole.prompts[:2], whole.prompts[2:]]
        for part, rows_of in zip(parts, (slice(0, 2), slice(2, 4))):  # the same tokens, padded to the part's longest
            length = part.text.shape[1]
            assert torch.equal(part.text, whole.text[rows_of, :length])
            assert torch.equal(part.text_mask, whole.text_mask[rows_of, :length])
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        prompt_batches(prompts, rows, 3, "cpu", rank=0, world=2)


TUNE_WORKER = '''
import sys
from safetensors.torch import save_file

sys.path.insert(0, {tests!r})
import lrm.tuning.tune
from lrm import distributed, text
from lrm.cli.app import main
from test_sampling import Words

text.ENCODERS[Words.id] = Words  # the tests' word-embedding encoder, as the words_runs fixture registers it
library = sys.modules["lrm.tuning.tune"]
tune = library.tune


def tune_and_dump(*args, **kwargs):  # every rank's tuned student, to compare the ranks
    result = tune(*args, **kwargs)
    save_file(dict(result.student.state_dict()), f"{out}/student.rank{{distributed.rank()}}.safetensors")
    return result


library.tune = tune_and_dump
sys.argv = ["lrm", *{args!r}]
main()
'''


def test_lrm_tune_under_torchrun_splits_each_batch_and_rank_0_writes(words_runs):
    """Real torchrun, 2 CPU processes (gloo), through the CLI (about 45 s): each rank takes half of every update's
    batch and the gradients are averaged, so both ranks end with the same student; rank 0 alone evaluates, writes
    and reports; the counters are the ranks' together; a run stopped after 1 update and rerun under torchrun ends
    as the uninterrupted one; a one-process rerun is refused."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    from typer.testing import CliRunner

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tests.parent)}

    def args_of(out, steps):  # the later --batch-size and --steps win over TUNE_ARGS': 2 samples per rank
        return ["tune", "colorfulness", "--student", str(words_runs / "student"), "--method", "ddpo", *TUNE_ARGS,
                "--batch-size", "4", "--steps", str(steps), "--out", str(out), "--quiet"]

    def torchrun(out, steps) -> str:
        script = words_runs / "worker.py"
        script.write_text(TUNE_WORKER.format(tests=str(tests), out=str(out), args=args_of(out, steps)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
        result = subprocess.run(cmd, cwd=words_runs, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stderr

    out, resumed = words_runs / "ddp", words_runs / "ddp-resumed"
    assert torchrun(out, 2).count("colorfulness: gold") == 1  # one summary: rank 0's
    torchrun(resumed, 1)
    torchrun(resumed, 2)
    args = args_of(out, 2)
    ranks = [load_file(out / f"student.rank{r}.safetensors") for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    tuned, start = load_file(out / "model" / "model.safetensors"), load_file(words_runs / "student" / "model" /
                                                                            "model.safetensors")
    assert all(torch.equal(tuned[k], ranks[0][k]) for k in tuned)
    assert any(not torch.equal(tuned[k], start[k]) for k in start)  # it trained
    facts = json.loads((out / "records.json").read_text())
    assert facts["world_size"] == 2 and facts["config"]["batch_size"] == 4
    assert [r["step"] for r in facts["records"]] == [0, 1, 2] and len(facts["losses"]) == 2
    state = json.loads((out / "checkpoints" / "step-00000002" / "tune.json").read_text())
    assert state["counters"]["samples"] == 2 * 4  # every rank's samples: 2 updates of the global batch of 4
    rng = load_file(out / "checkpoints" / "step-00000002" / "rng.safetensors")
    assert not torch.equal(rng["trainer.rank0"], rng["trainer.rank1"])  # each rank its own noise
    rerun = json.loads((resumed / "records.json").read_text())
    assert rerun["records"] == facts["records"] and rerun["losses"] == facts["losses"]
    assert json.loads((resumed / "checkpoints" / "step-00000002" / "tune.json").read_text())["counters"] == \
        state["counters"]
    for rank in range(2):
        after = load_file(resumed / f"student.rank{rank}.safetensors")
        assert all(torch.equal(after[k], ranks[0][k]) for k in after)
    config = (out / "config.json").read_text()
    refused = CliRunner().invoke(cli_app(), [*args[:-1], "--steps", "3"])
    assert refused.exit_code == 2 and "written by 2 processes, this run has 1" in refused.output
    assert json.loads((out / "records.json").read_text()) == facts  # the refused rerun changed nothing
    assert (out / "config.json").read_text() == config


@pytest.mark.parametrize("case", ["uneven batch", "embedded student missing"])
def test_lrm_tune_under_torchrun_refuses_what_cannot_split_before_any_work(words_runs, tmp_path, monkeypatch, case):
    """Two processes (group_size stubbed, no real torchrun): a batch that does not split evenly over them, and
    an embedded student not distilled yet (the processes would race on its cache folder), get one line, exit 2."""
    from typer.testing import CliRunner

    from lrm import distributed

    monkeypatch.setattr(distributed, "group_size", lambda: 2)
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    start = ["--student", str(words_runs / "student")] if case == "uneven batch" else []
    result = CliRunner().invoke(cli_app(), ["tune", "colorfulness", *start, "--method", "ddpo", *TUNE_ARGS,
                                            "--batch-size", "3" if case == "uneven batch" else "4",
                                            "--out", str(tmp_path / "run")])
    message = ("a global batch of 3 does not split evenly over 2 processes" if case == "uneven batch" else
               "the embedded 4-step image student is not distilled yet, and lrm tune does not distil it under torchrun")
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_ddpo_advantages_and_the_concurrent_surrogates_label_stats_are_global_under_torchrun(tmp_path):
    """Real torchrun, 2 CPU processes (gloo): a prompt's advantage statistics count its samples on both ranks, and
    both ranks standardise a fresh concurrent surrogate's labels alike (about 7 s)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(RANKS_WORKER.format())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path)]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # the same as one process with the global batch of 6
    every = advantages(torch.tensor([1.0, 2.0, 0.0, 4.0, 8.0, 5.0]), group_ids(["a", "b", "b", "a", "b", "c"]),
                       torch.tensor([True, True, True, True, True, False]))
    torch.testing.assert_close(torch.tensor(ranks[0]["adv"] + ranks[1]["adv"]), every)
    labels = torch.tensor([1.0, 2.0, 3.0, 10.0, 4.0])
    for rank in ranks:
        assert rank["stats"] == pytest.approx([float(labels.mean()), float(labels.std())])
