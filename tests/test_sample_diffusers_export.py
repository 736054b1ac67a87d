"""`lrm sample` / `lrm evaluate` on a diffusers student exported by the distillation trainer
(lrm.generators.diffusers_export, lrm.generators.runs): the tiny random-init SD pipeline of test_diffusers_adapters
(saved with save_pretrained) and the tiny AutoencoderKL of conftest's tiny_vaes as its codec, distilled one VSD step,
exported, then sampled through the CLI; the samples equal the in-memory student's at the same seeds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from test_diffusers_adapters import C, SIZE, build_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
runner = CliRunner(env={"COLUMNS": "300"})
PROMPTS = ["a red circle", "blue cat on a square"]  # words of the tiny tokenizer
STUDENT_STEPS = 2


def cli() -> typer.Typer:
    from lrm.cli.generate import register

    app = typer.Typer()
    register(app)
    return app


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_vaes):
    """(the student in memory, its teacher pipeline's prompt encoder, its codec, RUN): the SD teacher loaded with
    load_diffusers from its save_pretrained folder, the tiny KL VAE as codec, one VSD step, export_student(RUN)."""
    from lrm.codecs import load as load_codec
    from lrm.generators import load_diffusers
    from lrm.tuning import VSD, Batch, DistillConfig, Distiller, build_roles
    from lrm.tuning.roles import STUDENT

    root = tmp_path_factory.mktemp("diffusers-student")
    build_pipeline("sd").save_pretrained(root / "teacher")
    teacher, prompts = load_diffusers(str(root / "teacher"))
    codec = load_codec(f"diffusers:{tiny_vaes['kl']}")
    assert codec.channels == C
    teacher.codec_settings = codec.settings()
    roles = build_roles(teacher, student_lr=1e-2, fake_lr=1e-2)
    distiller = Distiller(roles, [VSD()], DistillConfig(latent_shape=(1, C, SIZE, SIZE), student_steps=STUDENT_STEPS))
    text = prompts.encode(PROMPTS)
    distiller.train_step([Batch(text.emb, text.mask)])
    run = root / "run"
    distiller.export_student(run)
    return distiller.roles.module(STUDENT).eval(), prompts, codec, run


def test_the_export_records_what_sampling_needs(exported):
    student, prompts, codec, run = exported
    record = json.loads((run / "model" / "lrm.json").read_text())
    assert record["codec_settings"] == codec.settings() and record["text_encoder_id"] == prompts.id
    assert record["in_channels"] == C and record["options"] == {"dtype": "float32"}
    extra = record["extra"]
    assert extra["student_steps"] == STUDENT_STEPS and extra["timesteps"] == [999, 499]
    assert extra["latent_shape"] == [1, C, SIZE, SIZE]


def test_lrm_sample_on_the_export_equals_the_in_memory_student(exported, tmp_path):
    from lrm.generators.sampling import generate_few_step

    student, prompts, codec, run = exported
    out = tmp_path / "samples"
    result = runner.invoke(cli(), ["sample", str(run), *[a for p in PROMPTS for a in ("--prompt", p)],
                                   "--per-prompt", "2", "--seed", "3", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert (index["sampler"], index["steps"], index["cfg"], index["timesteps"]) == ("few-step", STUDENT_STEPS, 1.0,
                                                                                  [999, 499])
    pngs = sorted((out / "samples").glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    requests = ([p for p in PROMPTS for _ in range(2)], [3, 4, 3, 4])
    expected = generate_few_step(student, *requests, latent_shape=(1, C, SIZE, SIZE), steps=STUDENT_STEPS,
                                 codec=codec, text_encoder=prompts)
    latents = load_file(out / "latents.safetensors")["latents"]
    torch.testing.assert_close(latents, expected.latents, rtol=0, atol=1e-5)
    assert latents.shape == (4, 1, C, SIZE, SIZE) and latents.std() > 0


def test_guidance_uses_the_teacher_pipelines_negative_prompt(exported, tmp_path):
    """cfg 2 on the export: the unconditional branch is the encoding of "" (null_text from the prompt encoder)."""
    from lrm.generators.sampling import generate_few_step

    student, prompts, codec, run = exported
    out = tmp_path / "cfg"
    result = runner.invoke(cli(), ["sample", str(run / "model"), "--prompt", PROMPTS[0], "--per-prompt", "1",
                                   "--cfg", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = generate_few_step(student, PROMPTS[:1], [0], latent_shape=(1, C, SIZE, SIZE), steps=STUDENT_STEPS,
                                 cfg=2.0, codec=codec, text_encoder=prompts)
    torch.testing.assert_close(load_file(out / "latents.safetensors")["latents"], expected.latents, rtol=0, atol=1e-5)
    unguided = generate_few_step(student, PROMPTS[:1], [0], latent_shape=(1, C, SIZE, SIZE), steps=STUDENT_STEPS,
                                 codec=codec, text_encoder=prompts)
    assert not torch.allclose(expected.latents, unguided.latents)


def test_lrm_evaluate_on_the_export(exported, tmp_path):
    run = exported[3]
    out = tmp_path / "eval"
    result = runner.invoke(cli(), ["evaluate", str(run), "--procedural", "2", "--samples-per-prompt", "2",
                                   "--reference-count", "4", "--rewards", "jpeg-compressibility", "--out", str(out),
                                   "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["sampler"], metrics["steps"], metrics["n_samples"]) == ("few-step", STUDENT_STEPS, 4)
    assert metrics["latent_shape"] == [1, C, SIZE, SIZE] and metrics["frechet"]["value"] >= 0
    assert metrics["rewards"]["jpeg-compressibility"]["scored"] == 4
    assert (out / "report.html").is_file()


def test_folders_of_neither_kind_get_one_line_naming_what_is_missing(exported, tmp_path):
    run = exported[3]

    def refused(folder) -> str:
        result = runner.invoke(cli(), ["sample", str(folder), "--prompt", PROMPTS[0], "--quiet"])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output
        return errors[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no model/config.json, config.json nor lrm.json" in refused(empty)
    pipeline = run.parent / "teacher"
    assert "diffusers pipeline folder without lrm.json" in refused(pipeline)

    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(run / "model", unrecorded)
    record = json.loads((unrecorded / "lrm.json").read_text())
    (unrecorded / "lrm.json").write_text(json.dumps({**record, "codec_settings": None}))
    assert "records no codec_settings" in refused(unrecorded)

    no_scheduler = tmp_path / "no-scheduler"
    shutil.copytree(run / "model", no_scheduler)
    shutil.rmtree(no_scheduler / "scheduler")
    assert "scheduler_config.json is missing" in refused(no_scheduler)

    no_unet = tmp_path / "no-unet"
    shutil.copytree(run / "model", no_unet)
    shutil.rmtree(no_unet / "unet")
    assert "neither unet/config.json nor transformer/config.json" in refused(no_unet)


def test_the_prompt_encoder_id_rebuilds_the_encoder(exported):
    """lrm.text.load(id) of a pipeline's prompt encoder gives the same tokens; a non-default T5 length is in the id."""
    from lrm.generators.diffusers_adapters import prompt_encoder_id
    from lrm.text import load

    prompts = exported[1]
    again = load(prompts.id)
    torch.testing.assert_close(again.encode(PROMPTS).emb, prompts.encode(PROMPTS).emb, rtol=0, atol=0)
    assert prompt_encoder_id("/p", "sd", 6) == "diffusers:/p"  # CLIP only: no T5 length
    assert prompt_encoder_id("/p", "sd3", 6) == "diffusers:/p@6"
    assert prompt_encoder_id("/p", "sd3", 256) == prompt_encoder_id("/p", "sd3") == "diffusers:/p"


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_an_export_loads_back_with_its_options_codec_and_prompt_encoder(family, tmp_path):
    """The adapter's family options (FLUX's latent_size, which sets its dynamic shift; SDXL's vae_scale_factor)
    come back from lrm.json, and with them the schedule and the outputs."""
    from test_diffusers_adapters import OPTIONS, adapter, inputs

    from lrm.diffusion.schedules import FlowSchedule
    from lrm.generators.diffusers_adapters import load_diffusers_denoiser
    from lrm.generators.diffusers_export import save_diffusers_denoiser

    original = adapter(build_pipeline(family), family)
    if family == "sdxl":
        original.vae_scale_factor = 4
    original.codec_settings, original.text_encoder_id = {"name": "a codec", "channels": C}, "diffusers:/a/pipeline"
    save_diffusers_denoiser(original, tmp_path)
    back = load_diffusers_denoiser(str(tmp_path))
    assert back.options() == original.options() and back.in_channels == original.in_channels == C
    assert back.schedule_config == original.schedule_config
    assert (back.codec_settings, back.text_encoder_id) == (original.codec_settings, original.text_encoder_id)
    if family == "flux":
        assert back.options()["latent_size"] == list(OPTIONS["flux"]["latent_size"])
        assert load_diffusers_denoiser(str(tmp_path), latent_size=(64, 64)).schedule_config != back.schedule_config
        # FluxPipeline's grid; a student exported before lrm.json recorded the grid keeps the one it was distilled on
        assert back.schedule_config["grid"] == "flux"
        record = json.loads((tmp_path / "lrm.json").read_text())
        del record["schedule_config"]["grid"]
        (tmp_path / "lrm.json").write_text(json.dumps(record))
        older = load_diffusers_denoiser(str(tmp_path))
        assert older.schedule_config == {**back.schedule_config, "grid": "scheduler"}
        assert torch.equal(older.schedule.timesteps(4), FlowSchedule(back.schedule.shift).timesteps(4))
    x, t = inputs(original)
    text = torch.randn(x.shape[0], 5, original.text_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, text), original(x, t, text), rtol=0, atol=1e-6)


def test_a_bf16_export_comes_back_bf16_and_an_older_lrm_json_float32(tmp_path):
    """The exported weights' dtype is recorded in lrm.json (options.dtype) and GeneratorRun.load, the path of
    `lrm sample` / `lrm evaluate`, loads them in it; an lrm.json written before it records none: float32."""
    from test_diffusers_adapters import adapter

    from lrm.generators.diffusers_export import save_diffusers_denoiser
    from lrm.generators.runs import open_generator_run

    student = adapter(build_pipeline("sd"), "sd")
    student.model.to(torch.bfloat16)
    student.codec_settings, student.text_encoder_id = {"name": "a codec", "channels": C}, "diffusers:/a/pipeline"
    save_diffusers_denoiser(student, tmp_path / "model", extra={"student_steps": 2, "latent_shape": [1, C, SIZE, SIZE]})
    back = open_generator_run(tmp_path).load("cpu")
    assert {p.dtype for p in back.parameters()} == {torch.bfloat16}
    for name, weight in student.model.state_dict().items():  # the same weights, not a round trip through float32
        assert torch.equal(back.model.state_dict()[name], weight), name
    record = json.loads((tmp_path / "model" / "lrm.json").read_text())
    assert record["options"] == {"dtype": "bfloat16"} and back.options() == student.options()

    del record["options"]["dtype"]  # as lrm.json was written before it recorded the dtype
    (tmp_path / "model" / "lrm.json").write_text(json.dumps(record))
    assert {p.dtype for p in open_generator_run(tmp_path).load("cpu").parameters()} == {torch.float32}


def test_lrm_tune_and_lrm_distill_refuse_an_exported_diffusers_denoiser(exported, tmp_path):
    from lrm.cli import app as lazy

    def error(*args) -> str:
        result = runner.invoke(lazy.app, list(args))
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, result.output
        return errors[0]

    run = exported[3]
    assert "diffusers student exported by lrm" in error("tune", "jpeg-compressibility", "--concurrent", "--student", str(run),
                                                        "--out", str(tmp_path / "tuned"))
    assert "distilled 2-step student" in error("distill", "--teacher", str(run), "--out", str(tmp_path / "d"))
    no_steps = tmp_path / "no-steps"
    shutil.copytree(run, no_steps)
    record = json.loads((no_steps / "model" / "lrm.json").read_text())
    (no_steps / "model" / "lrm.json").write_text(json.dumps({**record, "extra": {}}))
    assert "diffusers denoiser exported by lrm" in error("distill", "--teacher", str(no_steps), "--out",
                                                         str(tmp_path / "d"))
    assert not (tmp_path / "tuned").exists() and not (tmp_path / "d").exists()
