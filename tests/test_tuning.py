"""lrm.tuning: roles, the four distillation terms and the trainer, on tiny in-process DiTs (CPU, offline)."""

from __future__ import annotations

import copy

import pytest
import torch

from lrm.diffusion.samplers import STUDENT_TIMESTEPS, TEACHER_TIMESTEPS
from lrm.diffusion.schedule import alphas_cumprod
from lrm.generators import build_dit
from lrm.tuning import (ADM, CD, SDM2D, VSD, Batch, DistillConfig, Distiller, Step, build_roles,
                        discriminator_for, student_sample)
from lrm.tuning.roles import DISCRIMINATOR, EMA, FAKE_2D, FAKE_SCORE, STUDENT, TEACHER, TEACHER_2D
from lrm.tuning.sdm2d import random_frames

C, H, W, D, L = 4, 8, 8, 8, 3  # latent channels, size, text width, text tokens


def tiny_dit(frames: int = 1, seed: int = 0):
    """dit-xs with every weight perturbed, so that outputs and gradients are non-trivial (an untrained
    DiT outputs exactly 0 through its zero-initialised last layer)."""
    torch.manual_seed(seed)
    model = build_dit("dit-xs", in_channels=C, text_dim=D, frames=frames)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(b: int = 2, frames: int = 1, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[0, -1] = False
    return Batch(torch.randn(b, L, D, generator=g), mask, torch.randn(b, frames, C, H, W, generator=g))


def video_roles():
    """Roles for every term: a video teacher (3 latent frames), a discriminator head, an image teacher."""
    teacher = tiny_dit(frames=3, seed=1)
    return build_roles(teacher, discriminator=discriminator_for(teacher, levels=2, hidden=16),
                       teacher_2d=tiny_dit(frames=1, seed=2), student_lr=1e-3, fake_lr=1e-3)


def grads(module):
    return [p.grad for p in module.parameters()]


# ---------------------------------------------------------------- the features hook


def test_forward_features_leave_outputs_unchanged():
    model = tiny_dit(frames=3)
    b = batch(frames=3)
    t = torch.tensor([10, 700])
    out = model(b.x0, t, b.text, b.text_mask)
    features = model.forward_features(b.x0, t, b.text, b.text_mask)
    assert torch.equal(model(b.x0, t, b.text, b.text_mask), out)
    assert len(features) == model.depth
    assert all(f.shape == (2, 3, (H // 2) * (W // 2), model.width) for f in features)
    assert not model.blocks[0]._forward_hooks  # hooks removed


# ---------------------------------------------------------------- VSD


def test_vsd_gradient_is_zero_when_fake_score_equals_real_score():
    roles = build_roles(tiny_dit())
    b = batch()
    x_hat = torch.randn(2, 1, C, H, W, requires_grad=True)
    # fake score == teacher and no guidance: the real and fake scores agree everywhere
    VSD(guidance=1.0).generator_loss(Step(roles, b, x_hat, torch.Generator().manual_seed(0))).sum().backward()
    assert torch.count_nonzero(x_hat.grad) == 0
    # a fake score that differs gives a gradient: the test can fail
    with torch.no_grad():
        for p in roles.module(FAKE_SCORE).parameters():
            p.add_(0.05 * torch.randn_like(p))
    x_hat.grad = None
    VSD(guidance=1.0).generator_loss(Step(roles, b, x_hat, torch.Generator().manual_seed(0))).sum().backward()
    assert torch.count_nonzero(x_hat.grad) > 0


def test_vsd_gradient_is_dmds_normalised_score_difference():
    """d loss / d x_hat = (x0_fake - x0_real) / mean|x_hat - x0_real| / D, with x0 by DOLLAR Eq. 15."""
    roles = build_roles(tiny_dit())
    with torch.no_grad():
        for p in roles.module(FAKE_SCORE).parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = batch()
    x_hat = torch.randn(2, 1, C, H, W, requires_grad=True)
    VSD(guidance=3.5).generator_loss(Step(roles, b, x_hat, torch.Generator().manual_seed(3))).sum().backward()

    g = torch.Generator().manual_seed(3)  # the same draws as the term: t ~ U{20..980}, then eps
    t = torch.randint(20, 981, (2,), generator=g)
    eps = torch.randn(x_hat.shape, generator=g)
    abar = alphas_cumprod("linear", 1000).float()[t].view(2, 1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = a * x_hat.detach() + s * eps
    teacher, fake = roles.module(TEACHER), roles.module(FAKE_SCORE)
    with torch.no_grad():
        v_real = teacher(x_t, t, b.text, b.text_mask)
        v_null = teacher(x_t, t, b.text, torch.zeros_like(b.text_mask))
        v_real = v_null + 3.5 * (v_real - v_null)
        v_fake = fake(x_t, t, b.text, b.text_mask)
    x0_real, x0_fake = (x_t + s * v_real) / (a + s), (x_t + s * v_fake) / (a + s)
    scale = (x_hat.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = (x0_fake - x0_real) / scale / x_hat[0].numel()
    torch.testing.assert_close(x_hat.grad, expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- CD


def test_cd_with_one_teacher_step_equals_the_plain_cd_target_by_hand():
    roles = build_roles(tiny_dit())
    with torch.no_grad():  # an EMA that differs from the student, so the target really is the EMA's
        for p in roles.module(EMA).parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = batch()
    step = Step(roles, b, torch.empty(0), torch.Generator().manual_seed(5))
    loss = CD(teacher_steps=1, guidance=7.5).generator_loss(step)

    g = torch.Generator().manual_seed(5)
    ascending = torch.arange(19, 1000, 20)  # DOLLAR's 50-step grid t_1 < ... < t_50
    n = torch.randint(0, 49, (2,), generator=g)
    eps = torch.randn(b.x0.shape, generator=g)
    t_hi, t_lo = ascending[n + 1], ascending[n]
    abar = alphas_cumprod("linear", 1000).float()
    a_hi, s_hi = abar[t_hi].sqrt().view(2, 1, 1, 1, 1), (1 - abar[t_hi]).sqrt().view(2, 1, 1, 1, 1)
    a_lo, s_lo = abar[t_lo].sqrt().view(2, 1, 1, 1, 1), (1 - abar[t_lo]).sqrt().view(2, 1, 1, 1, 1)
    x_hi = a_hi * b.x0 + s_hi * eps
    teacher, ema, student = roles.module(TEACHER), roles.module(EMA), roles.module(STUDENT)
    with torch.no_grad():
        v_c = teacher(x_hi, t_hi, b.text, b.text_mask)
        v_u = teacher(x_hi, t_hi, b.text, torch.zeros_like(b.text_mask))
        v = v_u + 7.5 * (v_c - v_u)
        x0 = (x_hi + s_hi * v) / (a_hi + s_hi)  # Eq. 15
        eps_hat = (x_hi - a_hi * x0) / s_hi
        x_lo = a_lo * x0 + s_lo * eps_hat  # DDIM, eta = 0 (Eq. 14)
        v_ema = ema(x_lo, t_lo, b.text, b.text_mask)
        target = (x_lo + s_lo * v_ema) / (a_lo + s_lo)
        v_s = student(x_hi, t_hi, b.text, b.text_mask)
        x0_student = (x_hi + s_hi * v_s) / (a_hi + s_hi)
    torch.testing.assert_close(loss, ((x0_student - target) ** 2).mean(dim=(1, 2, 3, 4)), rtol=1e-4, atol=1e-7)


def test_cd_draws_m_consecutive_steps_of_the_50_step_grid():
    path = CD(teacher_steps=5).draw(tiny_dit(), 64, torch.Generator().manual_seed(0))
    assert path.shape == (64, 6)
    assert torch.equal(path[:, :-1] - path[:, 1:], torch.full((64, 5), 20))
    assert set(path.flatten().tolist()) <= set(TEACHER_TIMESTEPS)
    with pytest.raises(ValueError, match="teacher_steps"):
        CD(teacher_steps=50)


# ---------------------------------------------------------------- the student's sampler


class Recorder(torch.nn.Module):
    """A denoiser that records the timesteps it is called at."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []
        self.prediction, self.schedule_config = model.prediction, model.schedule_config

    def forward(self, x_t, t, text, text_mask):
        self.calls.append(int(t[0]))
        return self.model(x_t, t, text, text_mask)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_samples_on_dollars_timesteps(steps):
    assert STUDENT_TIMESTEPS == {1: (999,), 2: (999, 499), 4: (999, 749, 499, 249)}
    student = Recorder(tiny_dit())
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(12):
        student.calls = []
        x_hat = student_sample(student, batch(), (1, C, H, W), steps, g)
        assert x_hat.shape == (2, 1, C, H, W) and x_hat.requires_grad
        assert tuple(student.calls) == STUDENT_TIMESTEPS[steps][: len(student.calls)]  # a prefix of the grid
        seen.add(len(student.calls))
    assert seen == set(range(1, steps + 1))  # backward simulation stops at every step of the grid


# ---------------------------------------------------------------- gradients reach only their roles


TERMS = {"vsd": lambda: VSD(), "cd": lambda: CD(teacher_steps=2), "adm": lambda: ADM(),
         "sdm2d": lambda: SDM2D(frames=2)}


@pytest.mark.parametrize("name", list(TERMS))
def test_each_term_trains_only_its_roles(name):
    roles, term = video_roles(), TERMS[name]()
    b = batch(frames=3)
    g = torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, (3, C, H, W), 4, g)
    term.generator_loss(Step(roles, b, x_hat, g)).sum().backward()
    for role in roles.names():
        got = grads(roles.module(role))
        if role == STUDENT:
            assert any(x is not None and torch.count_nonzero(x) for x in got), name
        else:
            assert all(x is None for x in got), (name, role)
    roles.module(STUDENT).zero_grad(set_to_none=True)
    for trained in term.trains:
        term.auxiliary_loss(trained, Step(roles, b, x_hat.detach(), g)).sum().backward()
        for role in roles.names():
            got = grads(roles.module(role))
            if role == trained:
                assert any(x is not None and torch.count_nonzero(x) for x in got), (name, role)
            else:
                assert all(x is None for x in got), (name, trained, role)
        roles.module(trained).zero_grad(set_to_none=True)
    assert set(term.trains) == {"vsd": {FAKE_SCORE}, "cd": set(), "adm": {DISCRIMINATOR},
                                "sdm2d": {FAKE_2D}}[name]


def test_random_frames_picks_distinct_frames_of_each_sample():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1, 1, 1).expand(2, 5, C, 2, 2)
    frames = random_frames(x, 3, torch.Generator().manual_seed(0)).view(2, 3, C, 2, 2)
    for i in range(2):
        ids = frames[i, :, 0, 0, 0].tolist()
        assert len(set(ids)) == 3 and all(5 * i <= v < 5 * i + 5 for v in ids)
    with pytest.raises(ValueError, match="K = 6"):
        random_frames(x, 6, torch.Generator())


# ---------------------------------------------------------------- the trainer


def adam_steps(role) -> set[int]:
    return {int(s["step"]) for s in role.optimizer.state.values()}


def test_update_ratios_are_respected():
    roles = video_roles()
    distiller = Distiller(roles, [VSD(), ADM(), SDM2D(frames=2)], DistillConfig(latent_shape=(3, C, H, W)))
    for step in range(2):
        distiller.train_step([batch(frames=3, seed=step)])
    assert adam_steps(roles[STUDENT]) == {2}
    assert adam_steps(roles[FAKE_SCORE]) == {10}  # DOLLAR: 5 fake-score updates per generator update
    assert adam_steps(roles[DISCRIMINATOR]) == {4}  # AVDM2: twice per generator step
    assert adam_steps(roles[FAKE_2D]) == {4}
    assert distiller.updates == {STUDENT: 2, FAKE_SCORE: 10, DISCRIMINATOR: 4, FAKE_2D: 4}
    assert roles[TEACHER].optimizer is None and roles[TEACHER_2D].optimizer is None


def eval_losses(roles):
    """Term losses at fixed draws and a fixed batch: CD's, the fake score's (VSD) and the discriminator's (ADM)."""
    b = batch(b=4, seed=99)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        x_hat = student_sample(roles.module(STUDENT), b, (1, C, H, W), 1, g, grad=False)
        step = Step(roles, b, x_hat, g)
        losses = {"cd": CD().generator_loss(step)}
        if FAKE_SCORE in roles:
            losses[FAKE_SCORE] = VSD().auxiliary_loss(FAKE_SCORE, step)
        if DISCRIMINATOR in roles:
            losses[DISCRIMINATOR] = ADM().auxiliary_loss(DISCRIMINATOR, step)
    return {k: float(v.mean()) for k, v in losses.items()}


def perturbed_student(roles):
    """Start the student (and its EMA) away from the teacher, so that there is something to distil."""
    with torch.no_grad():
        for p, q in zip(roles.module(STUDENT).parameters(), roles.module(EMA).parameters()):
            p.add_(0.05 * torch.randn_like(p))
            q.copy_(p)


# terms -> the losses that must fall in 12 steps. The VSD generator loss is not among them: its value is
# the squared normalised score difference of the surrogate, which grows while the fake score learns the
# student; what VSD minimises shows in the fake score's own loss and in the student's move.
DISTILLATIONS = {"cd": (lambda: [CD()], ["cd"]), "vsd+cd": (lambda: [VSD(), CD()], [FAKE_SCORE])}


@pytest.mark.parametrize("case", list(DISTILLATIONS))
def test_short_distillation_lowers_the_losses_and_changes_the_student(case):
    make_terms, falling = DISTILLATIONS[case]
    terms = make_terms()
    teacher = tiny_dit(seed=4)
    roles = build_roles(teacher, student_lr=3e-4, fake_lr=1e-3, fake_score=case == "vsd+cd")
    perturbed_student(roles)
    before = eval_losses(roles)
    student0 = copy.deepcopy(roles.module(STUDENT).state_dict())
    distiller = Distiller(roles, terms, DistillConfig(latent_shape=(1, C, H, W), student_steps=1))
    logs = distiller.fit(lambda step: [batch(b=4, seed=step)], num_steps=12)
    after = eval_losses(roles)
    assert len(logs) == 12 and all(set(log.losses) == {t.name for t in terms} | {r for t in terms for r in t.trains}
                                   for log in logs)
    assert all(after[k] < before[k] for k in falling), (before, after)
    assert any(not torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in student0.items())
    for p, q in zip(roles.module(TEACHER).parameters(), teacher.parameters()):  # the teacher is untouched
        assert torch.equal(p, q)


def test_a_video_student_distils_with_adm_and_sdm2d():
    """AVDM2 (Eq. 9): ADM + SDM-2D on a 3-frame video student with an image teacher; the 2D fake score
    learns the student's frames and the student moves."""
    teacher = tiny_dit(frames=3, seed=1)
    roles = build_roles(teacher, discriminator=discriminator_for(teacher, levels=2, hidden=16),
                        teacher_2d=tiny_dit(frames=1, seed=2), fake_score=False, student_lr=3e-4, fake_2d_lr=1e-3)
    perturbed_student(roles)

    def fake_2d_loss():
        b = batch(b=4, frames=3, seed=99)
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            x_hat = student_sample(roles.module(STUDENT), b, (3, C, H, W), 1, g, grad=False)
            return float(SDM2D(frames=2).auxiliary_loss(FAKE_2D, Step(roles, b, x_hat, g)).mean())

    before, student0 = fake_2d_loss(), copy.deepcopy(roles.module(STUDENT).state_dict())
    distiller = Distiller(roles, [ADM(), SDM2D(frames=2)], DistillConfig(latent_shape=(3, C, H, W), student_steps=1))
    logs = distiller.fit(lambda step: [batch(b=4, frames=3, seed=step)], num_steps=8)
    assert all(set(log.losses) == {"adm", "sdm2d", DISCRIMINATOR, FAKE_2D} for log in logs)
    after = fake_2d_loss()
    assert after < before
    assert any(not torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in student0.items())


def test_every_role_of_a_distill_job_lives_on_the_teachers_device():
    """build_distiller's roles join the teachers on their device, the head it builds itself too (on an H200 ADM's
    head stayed on the CPU and `lrm distill --losses adm --device cuda` failed). "meta" stands in for the
    accelerator: a module left behind here stays on the CPU."""
    from lrm.configs import DistillJob
    from lrm.tuning.run import build_distiller

    teacher, image_teacher = tiny_dit(frames=3, seed=1).to("meta"), tiny_dit(frames=1, seed=2).to("meta")
    job = DistillJob(losses=("vsd", "cd", "adm", "sdm2d"), image_teacher="an image run", seed=0)
    distiller = build_distiller(job, teacher, (3, C, H, W), image_teacher)
    devices = {name: {p.device.type for p in distiller.roles.module(name).parameters()}
               for name in (STUDENT, EMA, FAKE_SCORE, DISCRIMINATOR, TEACHER_2D, FAKE_2D)}
    assert devices == dict.fromkeys(devices, {"meta"})


def test_a_distill_job_keeps_an_ema_student_only_for_cd():
    """Only CD reads the EMA student (its target network): a job without CD (AVDM2's adm,sdm2d, VSD alone) neither
    holds nor updates nor checkpoints a copy of the student."""
    from lrm.configs import DistillJob
    from lrm.tuning.run import build_distiller

    teacher = tiny_dit(frames=1, seed=1).to("meta")
    for losses, has_ema in ((("vsd", "cd"), True), (("cd",), True), (("vsd",), False), (("adm",), False)):
        distiller = build_distiller(DistillJob(losses=losses), teacher, (1, C, H, W))
        assert (EMA in distiller.roles) is has_ema, losses


def test_the_distill_jobs_discriminator_head_is_drawn_from_its_seed_not_the_global_rng():
    """lrm.tuning.run.build_distiller: the same job.seed builds the same head whatever the caller's RNG did
    before (benchmarks rerun over seeds in one process), another seed another head; the global RNG is untouched."""
    from lrm.configs import DistillJob
    from lrm.tuning.run import build_distiller

    teacher = tiny_dit(frames=3, seed=1)

    def head(seed: int) -> list[torch.Tensor]:
        distiller = build_distiller(DistillJob(losses=("adm",), seed=seed), teacher, (3, C, H, W))
        return [p.detach().clone() for p in distiller.roles.module(DISCRIMINATOR).parameters()]

    torch.manual_seed(5)
    first = head(0)
    torch.randn(100)  # the global RNG moves on, as it does between runs of a benchmark
    state = torch.get_rng_state()
    again, other = head(0), head(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def adm_generator_loss(roles):
    b = batch(b=4, seed=99)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        x_hat = student_sample(roles.module(STUDENT), b, (1, C, H, W), 1, g, grad=False)
        return float(ADM().generator_loss(Step(roles, b, x_hat, g)).mean())


@pytest.mark.parametrize("side", ["discriminator", "student"])
def test_adm_each_side_of_the_game_lowers_its_loss_against_a_fixed_opponent(side):
    """With both sides learning, the tiny game has no monotone loss; each side alone must win."""
    teacher = tiny_dit(seed=4)
    head = discriminator_for(teacher, levels=2, hidden=16)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    roles = build_roles(teacher, discriminator=head, fake_score=False,
                        student_lr=3e-4 if side == "student" else 0.0,
                        discriminator_lr=3e-3 if side == "discriminator" else 0.0)
    perturbed_student(roles)
    if side == "discriminator":
        loss = lambda: eval_losses(roles)[DISCRIMINATOR]  # noqa: E731
    else:
        loss = lambda: adm_generator_loss(roles)  # noqa: E731
    before = loss()
    Distiller(roles, [ADM()], DistillConfig(latent_shape=(1, C, H, W), student_steps=1)).fit(
        lambda step: [batch(b=4, seed=step)], num_steps=12)
    assert loss() < 0.9 * before


def make_distiller(seed_roles=7):
    roles = build_roles(tiny_dit(seed=seed_roles), discriminator=discriminator_for(tiny_dit(), levels=2, hidden=16),
                        student_lr=1e-3, fake_lr=1e-3)
    return Distiller(roles, [VSD(), CD(teacher_steps=2), ADM()],
                     DistillConfig(latent_shape=(1, C, H, W), student_steps=2, accumulation=2, seed=11))


def micro_batches(step):
    return [batch(seed=2 * step), batch(seed=2 * step + 1)]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = make_distiller()
    straight.fit(micro_batches, 4)

    first = make_distiller()
    first.fit(micro_batches, 2, run_dir=tmp_path)
    resumed = make_distiller()
    assert resumed.resume(tmp_path) and resumed.step == 2
    resumed.fit(micro_batches, 4)

    for name in straight.roles.names():
        a, b = straight.roles.module(name).state_dict(), resumed.roles.module(name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert straight.updates == resumed.updates
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary folders left
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_each_checkpoint_is_written_once(tmp_path, monkeypatch):
    written = []
    original = Distiller.save
    monkeypatch.setattr(Distiller, "save", lambda self, run_dir, extra=None: written.append(self.step)
                        or original(self, run_dir, extra))
    distiller = make_distiller()
    distiller.fit(micro_batches, 2, run_dir=tmp_path, checkpoint_every=1)
    assert written == [1, 2]  # step 2 was saved in the loop: not again at the end
    distiller.fit(micro_batches, 3, run_dir=tmp_path, checkpoint_every=2)
    assert written == [1, 2, 3]  # the end, which no checkpoint_every reached
    finished = make_distiller()
    assert finished.resume(tmp_path) and finished.step == 3
    finished.fit(micro_batches, 3, run_dir=tmp_path, checkpoint_every=2)
    assert written == [1, 2, 3]  # a finished run re-run trains nothing and rewrites nothing
    make_distiller().fit(micro_batches, 0, run_dir=tmp_path / "untrained")
    assert written == [1, 2, 3, 0] and (tmp_path / "untrained" / "checkpoints" / "step-00000000").is_dir()


def test_a_checkpoint_written_again_replaces_the_old_one_and_leaves_no_folder_behind(tmp_path):
    distiller = make_distiller()
    distiller.fit(micro_batches, 0, run_dir=tmp_path)
    distiller.fit(micro_batches, 0, run_dir=tmp_path)  # step 0 again: the untrained student saved twice
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000000"]


def test_the_next_save_removes_what_a_killed_save_left_behind(tmp_path):
    """SIGKILL skips a save's cleanup: its half-written folder, and an older copy of a step set aside for
    rewriting, stay. The next save removes them, except a set-aside copy of a step whose folder is missing (then
    the only copy of that checkpoint)."""
    distiller = make_distiller()
    distiller.fit(micro_batches, 1, run_dir=tmp_path, checkpoint_every=1)
    root = tmp_path / "checkpoints"
    half = root / ".step-00000002.abc123"  # a save of step 2 killed while writing
    set_aside = root / ".step-00000001.replaced.def456"  # step 1 rewritten, killed after the second rename
    only_copy = root / ".step-00000007.replaced.ghi789"  # step 7 killed between the two renames
    for folder in (half, set_aside, only_copy):
        folder.mkdir()
        (folder / "student.safetensors").write_bytes(b"x" * 1000)
    distiller.fit(micro_batches, 2, run_dir=tmp_path, checkpoint_every=1)
    assert sorted(p.name for p in root.iterdir()) == [only_copy.name, "latest", "step-00000001", "step-00000002"]


@pytest.mark.parametrize("name", ["student.safetensors", "student.optimizer.safetensors", "rng.safetensors",
                                  "trainer.json"])
def test_resuming_from_a_checkpoint_cut_short_names_the_file_and_the_fix(tmp_path, name):
    make_distiller().fit(micro_batches, 1, run_dir=tmp_path, checkpoint_every=1)
    path = tmp_path / "checkpoints" / "step-00000001" / name
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ValueError) as caught:
        make_distiller().resume(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path} is damaged") and "\n" not in message
    assert f"delete {tmp_path / 'checkpoints'} to start the run over" in message


def test_the_student_exports_as_a_few_step_generator_run(tmp_path):
    from lrm.generators.runs import open_generator_run

    distiller = make_distiller()
    distiller.train_step(micro_batches(0))
    distiller.export_student(tmp_path / "student")
    run = open_generator_run(tmp_path / "student")
    assert run.student_steps == 2 and run.latent_shape() == (1, C, H, W)
    loaded, student = run.load().state_dict(), distiller.roles.module(STUDENT).state_dict()
    assert all(torch.equal(loaded[k], student[k]) for k in student)


class NaNAt:
    """A term whose generator loss is NaN at the given trainer steps."""

    name, reads, trains, needs_real, needs_sample = "nan", (STUDENT,), (), False, True

    def __init__(self, distiller_steps):
        self.at, self.distiller = distiller_steps, None

    def generator_loss(self, step):
        loss = (step.x_hat ** 2).flatten(1).mean(1)
        return loss * float("nan") if self.distiller.step in self.at else loss

    def auxiliary_loss(self, role, step):
        raise AssertionError("trains nothing")


def test_training_memory_counts_what_the_steps_add_and_leaves_evaluations_out():
    from lrm.tuning.memory import TrainingMemory, peak_rss_mb

    mib = 2**20 // 4  # float32 elements per MiB
    memory = TrainingMemory()
    memory.start()
    if not memory.supported:
        pytest.skip("needs Linux's /proc/self/status and /proc/self/clear_refs")
    kept = torch.ones(64 * mib)  # a step keeps 64 MiB (an optimiser's state) ...
    activations = torch.ones(128 * mib)  # ... and frees 128 MiB before it ends
    del activations
    memory.update()
    memory.pause()
    evaluation = torch.ones(512 * mib)  # an evaluation between steps: left out ...
    samples = torch.ones(32 * mib)  # ... with what it keeps (its samples)
    del evaluation
    memory.resume()
    step = torch.ones(16 * mib)  # a later step: its peak is loaded + 64 + 32 + 16, of which 32 is the evaluation's
    del step
    memory.update()
    assert 64 + 128 - 4 <= memory.added_mb < 64 + 128 + 32  # allocator slack; a few MiB of resident-set jitter
    assert peak_rss_mb() >= memory.loaded_mb + 64 + 512  # the whole process's peak keeps the evaluation
    assert kept.sum() == 64 * mib and samples.sum() == 32 * mib
    memory.pause()
    samples = torch.ones(256 * mib)  # an evaluation that leaves 256 MiB more behind ...
    memory.resume()
    step = torch.ones(150 * mib)  # ... does not count in a later step's 64 + 150 MiB
    del step
    memory.update()
    assert 64 + 150 - 4 <= memory.added_mb < 64 + 150 + 32


def test_a_non_finite_loss_skips_the_step_and_is_counted():
    roles = build_roles(tiny_dit(), student_lr=1e-3)
    term = NaNAt({1})
    distiller = Distiller(roles, [VSD(), term], DistillConfig(latent_shape=(1, C, H, W)))
    term.distiller = distiller
    distiller.train_step([batch(seed=0)])
    before = copy.deepcopy(roles.module(STUDENT).state_dict())
    ema_before = copy.deepcopy(roles.module(EMA).state_dict())
    log = distiller.train_step([batch(seed=1)])
    assert log.skipped == [STUDENT] and distiller.skipped[STUDENT] == 1
    assert all(torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, roles.module(EMA).state_dict()[k]) for k, v in ema_before.items())
    assert all(p.grad is None for p in roles.module(STUDENT).parameters())
    distiller.train_step([batch(seed=2)])
    assert distiller.updates[STUDENT] == 2 and distiller.updates[FAKE_SCORE] == 15  # the fake score kept going
    assert adam_steps(roles[STUDENT]) == {2}


class InfGradientAt(NaNAt):
    """A finite loss (0) whose gradient is not finite (d sqrt(u) / du at u = 0) at the given steps."""

    def generator_loss(self, step):
        if self.distiller.step in self.at:
            return torch.sqrt((step.x_hat * 0).abs()).flatten(1).mean(1)
        return (step.x_hat ** 2).flatten(1).mean(1)


def test_a_non_finite_gradient_skips_the_step_too():
    roles = build_roles(tiny_dit(), student_lr=1e-3, fake_score=False)
    term = InfGradientAt({0})
    distiller = Distiller(roles, [term], DistillConfig(latent_shape=(1, C, H, W)))
    term.distiller = distiller
    before = copy.deepcopy(roles.module(STUDENT).state_dict())
    log = distiller.train_step([batch()])
    assert log.skipped == [STUDENT] and distiller.updates[STUDENT] == 0
    assert all(torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in before.items())
    assert not distiller.train_step([batch()]).skipped


def test_bf16_autocast_runs_and_fp16_is_refused():
    roles = build_roles(tiny_dit(), student_lr=1e-3)
    distiller = Distiller(roles, [VSD(), CD()], DistillConfig(latent_shape=(1, C, H, W), autocast="bf16"))
    log = distiller.train_step([batch()])
    assert not log.skipped and all(torch.isfinite(torch.tensor(v)) for v in log.losses.values())
    with pytest.raises(ValueError, match="fp16 is not supported"):
        DistillConfig(latent_shape=(1, C, H, W), autocast="fp16")
    with pytest.raises(ValueError, match="float16 weights are not supported"):
        build_roles(tiny_dit(), dtype=torch.float16)


def test_bf16_roles_keep_their_trained_weights_float32_so_small_updates_land():
    """dtype=bfloat16: the frozen teacher is bf16, the weights AdamW updates (student, fake score) and the EMA that
    follows them stay float32; in bf16 most updates at lr 1e-5 rounded away (4% of the student's weights moved)."""
    roles = build_roles(tiny_dit(), dtype=torch.bfloat16)
    assert {p.dtype for p in roles.module(TEACHER).parameters()} == {torch.bfloat16}
    for name in (STUDENT, EMA, FAKE_SCORE):
        assert {p.dtype for p in roles.module(name).parameters()} == {torch.float32}, name
    before = {name: [p.detach().clone() for p in roles.module(name).parameters()] for name in (STUDENT, EMA)}
    distiller = Distiller(roles, [VSD(), CD()], DistillConfig(latent_shape=(1, C, H, W), autocast="bf16"))
    for _ in range(2):
        assert not distiller.train_step([batch()]).skipped
    for name, old in before.items():
        moved = sum(int((a != b).sum()) for a, b in zip(old, roles.module(name).parameters()))
        assert moved > 0.9 * sum(a.numel() for a in old), name


def test_bad_setups_fail_before_any_work():
    roles = build_roles(tiny_dit(), fake_score=False)
    with pytest.raises(ValueError, match=r"loss term 'vsd' needs the roles \['fake_score'\]"):
        Distiller(roles, [VSD()], DistillConfig(latent_shape=(1, C, H, W)))
    with pytest.raises(ValueError, match="loss term 'sdm2d' needs the roles"):
        Distiller(roles, [SDM2D()], DistillConfig(latent_shape=(1, C, H, W)))
    with pytest.raises(ValueError, match="distinct names"):
        Distiller(build_roles(tiny_dit()), [VSD(), VSD()], DistillConfig(latent_shape=(1, C, H, W)))
    with pytest.raises(ValueError, match="weights given for terms"):
        Distiller(build_roles(tiny_dit()), [VSD()], DistillConfig(latent_shape=(1, C, H, W)), weights={"cd": 1.0})
    other_codec = build_roles(tiny_dit(frames=3), teacher_2d=build_dit("dit-xs", in_channels=8, text_dim=D))
    b = batch(frames=3)
    with pytest.raises(ValueError, match="image teacher expects 8 latent channels"):
        SDM2D(frames=2).generator_loss(Step(other_codec, b, b.x0, torch.Generator()))
    with pytest.raises(ValueError, match="needs real latents"):
        CD().generator_loss(Step(build_roles(tiny_dit()), Batch(b.text, b.text_mask), b.x0, torch.Generator()))


# ---------------------------------------------------------------- data parallel

DDP_WORKER = '''
import sys, torch
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from lrm import distributed
from test_tuning import C, H, W, batch, build_roles, tiny_dit, VSD, CD, Distiller, DistillConfig, STUDENT
distributed.init_from_env("cpu")
rank = distributed.rank()
roles = build_roles(tiny_dit(seed=4), student_lr=1e-3, fake_lr=1e-3)
distiller = Distiller(roles, [VSD(), CD()], DistillConfig(latent_shape=(1, C, H, W), seed=3))
logs = distiller.fit(lambda step: [batch(seed=10 * step + rank)], num_steps=2, run_dir={run!r})
save_file(dict(roles.module(STUDENT).state_dict()), {run!r} + f"/student.rank{{rank}}.safetensors")
print("losses", rank, logs[-1].losses["cd"], flush=True)
distributed.shutdown()
'''


def test_two_gloo_processes_keep_every_role_in_sync(tmp_path):
    """2 CPU processes (gloo): each draws its own batches and noise, gradients and logged losses are averaged,
    so the student ends identical on both ranks and different from its start; the checkpoint keeps both ranks'
    RNG (different streams)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=str(Path(__file__).parent), run=str(tmp_path / "run")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    losses = [line.split()[2] for out in outputs for line in out.splitlines() if line.startswith("losses")]
    assert len(losses) == 2 and losses[0] == losses[1]  # each rank logs the global batch's loss (mean over ranks)
    a, b = (load_file(tmp_path / "run" / f"student.rank{r}.safetensors") for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = build_roles(tiny_dit(seed=4)).module(STUDENT).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)
    rng = load_file(tmp_path / "run" / "checkpoints" / "step-00000002" / "rng.safetensors")
    assert {"trainer.rank0", "trainer.rank1"} <= set(rng)
    assert not torch.equal(rng["trainer.rank0"], rng["trainer.rank1"])


# ---------------------------------------------------------------- another model family


def test_a_diffusers_flow_teacher_distils_through_the_same_terms():
    """SD3 (rectified flow, shift 3, "flow" prediction) through lrm's adapter: the terms only see
    (x0_hat, eps_hat) on (alpha, sigma), so VSD and CD run unchanged; ADM needs forward_features."""
    pytest.importorskip("diffusers")
    from test_diffusers_adapters import C as SD3_C, SIZE, adapter, build_pipeline

    teacher = adapter(build_pipeline("sd3"), "sd3")
    teacher.null_text = torch.zeros(1, 4, teacher.text_dim)  # the unconditional branch of CFG
    assert teacher.prediction == "flow" and teacher.schedule_config["type"] == "flow"
    g = torch.Generator().manual_seed(0)
    b = Batch(torch.randn(2, 4, teacher.text_dim, generator=g), torch.ones(2, 4, dtype=torch.bool),
              torch.randn(2, 1, SD3_C, SIZE, SIZE, generator=g))
    roles = build_roles(teacher, student_lr=1e-3)
    start = copy.deepcopy(roles.module(STUDENT).state_dict())
    distiller = Distiller(roles, [VSD(), CD()], DistillConfig(latent_shape=(1, SD3_C, SIZE, SIZE), student_steps=2))
    log = distiller.train_step([b])
    assert not log.skipped and set(log.losses) == {"vsd", "cd", FAKE_SCORE}
    assert any(not torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in start.items())
    with pytest.raises(ValueError, match="has no forward_features"):
        discriminator_for(teacher)
