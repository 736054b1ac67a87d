"""LoRA students (lrm.tuning.lora, build_roles(lora_rank=...)) on the tiny random-init diffusers denoisers of
test_diffusers_adapters and on lrm's dit-xs: only adapter weights train, the base stays the teacher's,
checkpoints hold the adapters alone and resume exactly, the merged copy is the adapted model."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

pytest.importorskip("peft")

from lrm.tuning import CD, VSD, Batch, DistillConfig, Distiller, build_roles  # noqa: E402
from lrm.tuning.lora import (DIFFUSERS_TARGETS, DIT_TARGETS, add_lora, adapter_state, has_lora,  # noqa: E402
                             merged_copy)
from lrm.tuning.roles import EMA, FAKE_SCORE, STUDENT, TEACHER  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
RANK = 2


def diffusers_teacher(family: str):
    """The family's tiny diffusers denoiser behind lrm's adapter, with zero null text for CFG."""
    pytest.importorskip("diffusers")
    from test_diffusers_adapters import adapter, build_pipeline

    teacher = adapter(build_pipeline(family), family)
    teacher.null_text = torch.zeros(1, 4, teacher.text_dim)
    return teacher


def dit_teacher():
    from test_tuning import tiny_dit

    return tiny_dit(seed=5)


def batch_for(teacher, frames: int = 1) -> tuple[Batch, tuple]:
    from test_diffusers_adapters import C, SIZE

    shape = (frames, C, SIZE, SIZE)
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(2, 4, teacher.text_dim, generator=g), torch.ones(2, 4, dtype=torch.bool),
                 torch.randn(2, *shape, generator=g)), shape


def base_state(module: nn.Module) -> dict:
    """The adapted module's non-adapter weights under the names they had before add_lora."""
    return {k.replace(".base_layer", ""): v for k, v in module.state_dict().items() if "lora_" not in k}


def distiller_of(teacher, shape, seed=0):
    roles = build_roles(teacher, student_lr=1e-2, fake_lr=1e-2, lora_rank=RANK)
    return Distiller(roles, [VSD(), CD()], DistillConfig(latent_shape=shape, student_steps=2, seed=seed))


# ---------------------------------------------------------------- what trains


def test_flux_adapters_cover_both_block_kinds_and_not_the_output_layer():
    student = add_lora(diffusers_teacher("flux"), RANK)
    adapted = {n.split(".lora_")[0] for n, _ in student.named_parameters() if "lora_" in n}
    for kind in ("transformer_blocks", "single_transformer_blocks"):
        for proj in ("to_q", "to_k", "to_v"):
            assert any(f".{kind}.0.attn.{proj}" in name for name in adapted), (kind, proj)
    assert any(".transformer_blocks.0.attn.add_q_proj" in name for name in adapted)
    assert not any(name.endswith("proj_out") or "proj_mlp" in name for name in adapted)  # diffusers' script too


@pytest.mark.parametrize("family", ["sd", "sd3", "wan"])
def test_only_adapters_of_the_attention_projections_train_on_a_diffusers_student(family):
    teacher = diffusers_teacher(family)
    b, shape = batch_for(teacher, frames=2 if family == "wan" else 1)
    distiller = distiller_of(teacher, shape)
    roles = distiller.roles
    for name in (STUDENT, FAKE_SCORE):
        trained = [n for n, p in roles.module(name).named_parameters() if p.requires_grad]
        assert trained and all("lora_" in n for n in trained), name
        allowed = {"to_q", "to_k", "to_v", "0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained} <= allowed
        assert any(".to_out.0.lora_" in n for n in trained) and any(".to_q.lora_" in n for n in trained)
        if family == "sd3":  # the joint blocks' text stream as well, as diffusers' SD3 LoRA script adapts it
            assert any(".add_q_proj.lora_" in n for n in trained) and any(".add_v_proj.lora_" in n for n in trained)
        assert roles[name].optimizer.param_groups[0]["params"] == [p for p in roles.module(name).parameters()
                                                                   if p.requires_grad]
    assert not has_lora(roles.module(TEACHER))
    # one copy of the base weights in memory: student, EMA and fake score hold the frozen teacher's tensors
    teacher_tensors = {p.data_ptr() for p in roles.module(TEACHER).parameters()}
    for name in (STUDENT, EMA, FAKE_SCORE):
        base = [p for n, p in roles.module(name).named_parameters() if "lora_" not in n]
        assert len(base) == len(teacher_tensors) and {p.data_ptr() for p in base} == teacher_tensors, name
    full = build_roles(teacher)  # without LoRA every role has its own weights
    full_teacher = {p.data_ptr() for p in full.module(TEACHER).parameters()}
    assert full_teacher.isdisjoint(p.data_ptr() for p in full.module(STUDENT).parameters())
    # gradients of the generator loss reach the adapters alone
    student = roles.module(STUDENT)
    sum(w * loss for w, loss, _ in distiller._generator_losses(b).values()).backward()
    assert all(p.grad is None for n, p in student.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n)
    student.zero_grad(set_to_none=True)

    start = {name: {k: v.clone() for k, v in adapter_state(roles.module(name)).items()}
             for name in (STUDENT, FAKE_SCORE)}
    teacher_state = {k: v.clone() for k, v in roles.module(TEACHER).state_dict().items()}  # not the live tensors
    log = distiller.train_step([b])
    assert not log.skipped and set(log.losses) == {"vsd", "cd", FAKE_SCORE}
    for name in (STUDENT, FAKE_SCORE, EMA):
        base = base_state(roles.module(name))
        assert set(base) == set(teacher_state) and all(torch.equal(base[k], teacher_state[k]) for k in base), name
    for name in (STUDENT, FAKE_SCORE):
        now = adapter_state(roles.module(name))
        assert any(not torch.equal(now[k], start[name][k]) for k in now), name  # the adapters moved


def test_a_fresh_adapter_leaves_the_model_unchanged_and_merging_keeps_the_adapted_output():
    teacher = diffusers_teacher("sd")
    b, shape = batch_for(teacher)
    student = add_lora(copy.deepcopy(teacher), RANK)
    t = torch.tensor([100, 700])
    assert torch.equal(student(b.x0, t, b.text, b.text_mask), teacher(b.x0, t, b.text, b.text_mask))  # B = 0
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapted = student(b.x0, t, b.text, b.text_mask)
    assert not torch.allclose(adapted, teacher(b.x0, t, b.text, b.text_mask))
    plain = merged_copy(student)
    assert not has_lora(plain) and set(plain.state_dict()) == set(teacher.state_dict())
    torch.testing.assert_close(plain(b.x0, t, b.text, b.text_mask), adapted, rtol=1e-4, atol=1e-5)
    assert has_lora(student)  # the copy was merged, not the student


def test_the_dit_gets_adapters_on_its_attention_projections():
    student = add_lora(dit_teacher(), RANK)
    trained = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in student.named_parameters() if p.requires_grad}
    assert trained == set(DIT_TARGETS)
    assert set(DIFFUSERS_TARGETS).isdisjoint(trained)
    with pytest.raises(ValueError, match="already carries LoRA adapters"):
        add_lora(student, RANK)
    plain, plain_other = dit_teacher(), dit_teacher()  # built first: tiny_dit reseeds the global RNG
    state = torch.get_rng_state()
    again, other = add_lora(plain, RANK), add_lora(plain_other, RANK, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the adapters' draws leave the global RNG alone
    a, b, c = (adapter_state(m) for m in (student, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_lora_requests_are_one_line_errors(monkeypatch):
    with pytest.raises(ValueError, match="LoRA applies to diffusers denoisers and lrm's LatentDiT, not a Linear"):
        add_lora(nn.Linear(2, 2), RANK)
    with pytest.raises(ValueError, match="--lora-rank must be a positive integer"):
        add_lora(dit_teacher(), 0)
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(ImportError, match="needs the peft package: pip install peft"):
        add_lora(dit_teacher(), RANK)
    with pytest.raises(ImportError, match="needs the peft package"):
        build_roles(dit_teacher(), lora_rank=RANK)


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_hold_the_adapters_alone_and_resume_exactly(tmp_path):
    teacher = diffusers_teacher("sd")
    b, shape = batch_for(teacher)
    straight = distiller_of(teacher, shape)
    straight.fit(lambda step: [b], num_steps=2)

    first = distiller_of(teacher, shape)
    first.fit(lambda step: [b], num_steps=1, run_dir=tmp_path)
    folder = tmp_path / "checkpoints" / "step-00000001"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "ema.safetensors", "fake_score.optimizer.safetensors", "fake_score.safetensors", "rng.safetensors",
        "student.optimizer.safetensors", "student.safetensors"]  # no copy of the frozen teacher
    for role in (STUDENT, FAKE_SCORE, EMA):
        saved = load_file(folder / f"{role}.safetensors")
        assert saved and all("lora_" in k for k in saved)
        assert set(saved) == set(adapter_state(first.roles.module(role)))
    size = sum(v.numel() for v in load_file(folder / "student.safetensors").values())
    assert size < sum(p.numel() for p in teacher.parameters()) / 10

    resumed = distiller_of(teacher, shape)
    assert resumed.resume(tmp_path) and resumed.step == 1
    for role in (STUDENT, FAKE_SCORE, EMA):
        a, c = first.roles.module(role).state_dict(), resumed.roles.module(role).state_dict()
        assert all(torch.equal(a[k], c[k]) for k in a), role
    resumed.fit(lambda step: [b], num_steps=2)
    for role in (STUDENT, FAKE_SCORE, EMA):
        a, c = straight.roles.module(role).state_dict(), resumed.roles.module(role).state_dict()
        assert all(torch.equal(a[k], c[k]) for k in a), role

    full = Distiller(build_roles(teacher), [VSD(), CD()], DistillConfig(latent_shape=shape, student_steps=2))
    with pytest.raises(ValueError, match="does not hold this run's LoRA adapters|another --lora-rank"):
        distiller_of(teacher, shape).resume(_full_checkpoint(full, b, tmp_path / "full"))


def _full_checkpoint(distiller, b, run_dir):
    distiller.fit(lambda step: [b], num_steps=1, run_dir=run_dir)
    return run_dir


# ---------------------------------------------------------------- a diffusers student exported as diffusers files


def test_a_distilled_diffusers_student_exports_as_a_diffusers_folder(tmp_path):
    """Teacher loaded from a save_pretrained folder as a user would; the LoRA student, after one step, is written
    as unet/ + scheduler/ that diffusers' from_pretrained and lrm's load_diffusers_denoiser read back."""
    import json

    from diffusers import UNet2DConditionModel
    from test_diffusers_adapters import build_pipeline

    from lrm.generators.diffusers_adapters import load_diffusers_denoiser

    pipe = build_pipeline("sd")
    pipe.save_pretrained(tmp_path / "teacher")
    teacher = load_diffusers_denoiser(str(tmp_path / "teacher"))
    teacher.null_text = torch.zeros(1, 4, teacher.text_dim)
    b, shape = batch_for(teacher)
    distiller = distiller_of(teacher, shape)
    distiller.train_step([b])
    folder = distiller.export_student(tmp_path / "run")
    assert folder == tmp_path / "run" / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["lrm.json", "scheduler", "unet"]

    student = distiller.roles.module(STUDENT)
    t = torch.tensor([999, 499])
    expected = student(b.x0, t, b.text, b.text_mask)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")  # plain diffusers, no peft layers
    assert not has_lora(unet)
    direct = unet(b.x0[:, 0], t, encoder_hidden_states=b.text).sample[:, None]
    torch.testing.assert_close(direct, expected, rtol=1e-4, atol=1e-5)
    back = load_diffusers_denoiser(str(folder))
    back.null_text = teacher.null_text
    assert (back.prediction, back.schedule_config) == (teacher.prediction, teacher.schedule_config)
    torch.testing.assert_close(back(b.x0, t, b.text, b.text_mask), expected, rtol=1e-4, atol=1e-5)

    exported, original = unet.state_dict(), pipe.unet.state_dict()
    attention = [k for k in original if any(f".{n}." in k for n in ("to_q", "to_k", "to_v", "to_out"))]
    assert any(not torch.equal(exported[k], original[k]) for k in attention)
    assert all(torch.equal(exported[k], original[k]) for k in original if k not in attention)
    extra = json.loads((folder / "lrm.json").read_text())["extra"]
    assert extra["student_steps"] == 2 and extra["timesteps"] == [999, 499] and extra["step"] == 1
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text()) == \
        json.loads((tmp_path / "teacher" / "scheduler" / "scheduler_config.json").read_text())
