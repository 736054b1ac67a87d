"""Regularisers of reward tuning (lrm.tuning.kl_penalty, lrm.tuning.ensemble) and the monitor's distances."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lrm.tuning import Step, TrueReward
from lrm.tuning.ensemble import Disagreement, SurrogateEnsemble, spread
from lrm.tuning.kl_penalty import INITIAL, KLPenalty
from lrm.tuning.lrm_ft import LRM
from lrm.tuning.roles import STUDENT, Role, Roles, build_roles, frozen_copy
from test_hooks import (C, SHAPE, BrightFraction, build_surrogate, codec, has_grad, surrogate, words_runs,  # noqa: F401
                        words_student)
from test_tuning import batch, tiny_dit


def kl_step(student, initial, seed=0) -> Step:
    roles = build_roles(student, fake_score=False, ema=False)
    roles.add(Role(INITIAL, initial))
    b = batch(b=3, seed=seed)
    x_hat = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(seed + 1), requires_grad=True)
    return Step(roles, b, x_hat, torch.Generator().manual_seed(seed + 2))


def test_kl_penalty_is_zero_with_zero_gradient_at_the_initial_model():
    model = tiny_dit(seed=3)
    step = kl_step(model, frozen_copy(model))
    loss = KLPenalty().generator_loss(step)  # (B,)
    assert loss.shape == (3,) and torch.count_nonzero(loss) == 0
    loss.sum().backward()
    student = step.roles.module(STUDENT)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in student.parameters())


def test_kl_penalty_grows_off_the_initial_model_and_its_gradient_reaches_only_the_student():
    model = tiny_dit(seed=3)
    initial = frozen_copy(model)
    step = kl_step(model, initial)
    with torch.no_grad():
        for p in step.roles.module(STUDENT).parameters():
            p.add_(0.02 * torch.randn_like(p))
    loss = KLPenalty().generator_loss(step)
    assert bool((loss > 0).all())
    loss.sum().backward()
    assert has_grad(step.roles.module(STUDENT))
    assert step.x_hat.grad is None  # the student's samples are detached: it is a penalty on eps_theta only
    assert all(p.grad is None for p in initial.parameters())
    # independent reference, by hand from the schedule's betas: the term's draws t ~ U{20..980} (T_LOW, T_HIGH of
    # T = 1000), then eps; x_t = sqrt(abar) x_hat + sqrt(1 - abar) eps; each model's conjugate-v output v gives
    # x0 = (x_t + s v) / (a + s) (DOLLAR Eq. 15) and eps = (x_t - a x0) / s
    from lrm.diffusion.schedule import alphas_cumprod

    assert initial.prediction == "conjugate-v" and initial.schedule_config["betas"] == "linear"
    g = torch.Generator().manual_seed(2)
    t = torch.randint(20, 981, (3,), generator=g)
    eps = torch.randn(step.x_hat.shape, generator=g)
    abar = alphas_cumprod("linear", 1000).float()[t].view(3, 1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = a * step.x_hat.detach() + s * eps
    b = step.batch

    def eps_of(model):
        x0 = (x_t + s * model(x_t, t, b.text, b.text_mask)) / (a + s)
        return (x_t - a * x0) / s

    with torch.no_grad():
        gap = eps_of(step.roles.module(STUDENT)) - eps_of(initial)
    torch.testing.assert_close(loss.detach(), gap.pow(2).flatten(1).mean(1), rtol=1e-4, atol=1e-7)


def ensemble_step(members) -> Step:
    roles = Roles()
    roles.add(Role(LRM, SurrogateEnsemble(members)))
    x_hat = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(5), requires_grad=True)
    return Step(roles, batch(b=4), x_hat, torch.Generator().manual_seed(0))


def test_ensemble_penalty_is_zero_with_zero_gradient_when_members_agree():
    first = surrogate(seed=0)
    step = ensemble_step([first, copy.deepcopy(first)])
    loss = Disagreement().generator_loss(step)
    assert loss.shape == (4,) and torch.count_nonzero(loss) == 0
    loss.sum().backward()
    assert torch.count_nonzero(step.x_hat.grad) == 0 and torch.isfinite(step.x_hat.grad).all()


def test_ensemble_penalty_is_the_members_std_and_its_gradient_reaches_only_the_samples():
    members = [surrogate(seed=s) for s in range(3)]
    for m, mean in zip(members, (0.0, 1.0, -1.0)):  # members of the same reward, fitted apart
        m.set_label_stats(mean, 2.0)
    step = ensemble_step(members)
    loss = Disagreement().generator_loss(step)
    with torch.no_grad():
        z = torch.stack([m(step.x_hat, standardised=True) for m in members])  # (K, B)
    assert torch.allclose(loss.detach(), z.std(0, correction=0), atol=1e-5) and bool((loss > 0).all())
    loss.sum().backward()
    assert step.x_hat.grad is not None and torch.count_nonzero(step.x_hat.grad) > 0
    assert all(p.grad is None for m in members for p in m.parameters())
    # the ensemble reads as one surrogate: the mean of its members, in reward units or standardised
    with torch.no_grad():
        units = torch.stack([m(step.x_hat) for m in members]).mean(0)
        assert torch.allclose(step.roles.module(LRM)(step.x_hat), units, atol=1e-5)
    assert float(spread(torch.ones(3, 2))[0]) == 0.0


def test_an_ensemble_needs_two_members_and_the_penalty_an_ensemble():
    with pytest.raises(ValueError, match="at least 2 surrogates"):
        SurrogateEnsemble([surrogate()])
    roles = Roles()
    roles.add(Role(LRM, surrogate()))
    step = Step(roles, batch(b=2), torch.randn(2, *SHAPE), torch.Generator())
    with pytest.raises(ValueError, match="reads an ensemble"):
        Disagreement().generator_loss(step)


def test_tune_with_a_kl_penalty_and_an_ensemble_records_every_distance_and_the_disagreement():
    from lrm.tuning.tune import TuneConfig, tune

    student, words = words_student()
    members = [surrogate(seed=s) for s in range(2)]
    config = TuneConfig(method="lrm", steps=3, student_steps=2, batch_size=2, lr=3e-3, eval_every=1, per_prompt=2,
                        eval_prompts=2, kl_weight=0.5, disagreement_weight=2.0)
    evaluated = {}
    result = tune(student, TrueReward(codec(), BrightFraction()), ["a red circle", "a blue square"], words, config,
                  latent_shape=SHAPE, surrogate=members, on_evaluation=lambda step, s: evaluated.setdefault(step, s))
    assert set(result.logs[0].losses) == {"lrm_ft", "kl", "disagreement"}
    first, last = result.records[0], result.records[-1]
    assert first.eps_distance == 0 and first.latent_l2 == 0 and first.frechet == pytest.approx(0, abs=1e-6)
    assert last.eps_distance > 0 and last.latent_l2 > 0 and last.frechet > 0
    assert first.disagreement > 0 and np.isfinite(last.disagreement)
    assert sorted(evaluated) == [0, 1, 2, 3] and evaluated[3] is result.samples_after  # every evaluation's samples
    # the monitor's KL-like distance is lrm.studies.distance's measure, on its samples' prompts and its seed
    from lrm.studies.distance import eps_distance

    initial, _ = words_student()  # the same seeded start
    text = words.encode(result.samples_after.prompts)
    assert last.eps_distance == pytest.approx(eps_distance(result.student, initial, text.emb, text.mask,
                                                           latent_shape=SHAPE, samples_per_text=1), rel=1e-5)


def test_tune_refuses_bad_regulariser_setups():
    from lrm.tuning.tune import TuneConfig, tune

    student, words = words_student()
    with pytest.raises(ValueError, match="kl_weight and disagreement_weight must be >= 0"):
        TuneConfig(kl_weight=-1.0)
    reward = TrueReward(codec(), BrightFraction())
    with pytest.raises(ValueError, match="an ensemble of surrogates is frozen"):
        tune(student, reward, ["a"], words, TuneConfig(concurrent=True), latent_shape=SHAPE,
             surrogate=[surrogate(), surrogate(seed=1)])
    noisy = [build_surrogate("image-cnn-stats", C, noise_aware=True) for _ in range(2)]
    with pytest.raises(ValueError, match="disagreement penalty scores clean samples; leave out noise_aware"):
        tune(student, reward, ["a"], words, TuneConfig(noise_aware=True), latent_shape=SHAPE, surrogate=noisy)


# ---------------------------------------------------------------- lrm tune flags


def saved_surrogates(folder, seeds=(0, 1)) -> list[str]:
    """Surrogates of the words runs' 32-channel dct latents, saved as `lrm fit` writes them."""
    from lrm.codecs import load as load_codec
    from lrm.models import build as build_surrogate

    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_surrogate("image-cnn-stats", 32)
        model.info.codec_settings = load_codec("dct").settings()
        paths.append(str(model.save_pretrained(folder / f"lrm-{seed}")))
    return paths


def test_lrm_tune_with_an_ensemble_and_a_kl_penalty_writes_every_evaluation(words_runs):  # noqa: F811
    import json

    from typer.testing import CliRunner

    from test_hooks import TUNE_ARGS, cli_app

    a, b = saved_surrogates(words_runs)
    out = words_runs / "tuned"
    result = CliRunner().invoke(cli_app(), ["tune", "jpeg-incompressibility", "--student", str(words_runs / "student"),
                                            "--ensemble", a, "--ensemble", b, "--kl-weight", "0.1", *TUNE_ARGS,
                                            "--out", str(out)])
    assert result.exit_code == 0, result.output
    facts = json.loads((out / "records.json").read_text())
    assert facts["config"]["kl_weight"] == 0.1 and facts["ensemble"] == [a, b]
    assert set(facts["losses"][0]) == {"lrm_ft", "kl", "disagreement"}
    assert all(r["disagreement"] > 0 for r in facts["records"])
    assert facts["records"][-1]["eps_distance"] > 0 and facts["records"][-1]["frechet"] > 0
    for step in (0, 1, 2):
        assert (out / "evals" / f"step-{step}" / "grid.png").is_file()
        assert (out / "evals" / f"step-{step}" / "latents.safetensors").is_file()
    for args in (["--ensemble", a], ["--ensemble", a, "--ensemble", b, "--concurrent"]):
        bad = CliRunner().invoke(cli_app(), ["tune", "jpeg-incompressibility", "--student",
                                             str(words_runs / "student"), *args, *TUNE_ARGS])
        assert bad.exit_code == 2 and "give two or more fitted surrogates" in bad.output, bad.output
