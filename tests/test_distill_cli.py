"""`lrm distill` (lrm.cli.distill, lrm.tuning.run, lrm.tuning.distill_log) end to end on tiny dit-xs teachers trained
a few steps on tiny procedural stores (8x8 dct latents, MiniLM tokens): an image student (VSD + CD), a video
student (ADM + SDM-2D with an image teacher), exact resume, sampling the exported student, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from lrm.configs import DistillJob
from lrm.datasets.encoding import EncodeConfig, encode
from lrm.generators import build_dit, load_denoiser, save_denoiser
from lrm.generators.training import TeacherConfig, train_teacher

REPO = Path(__file__).resolve().parents[1]
TINY = TeacherConfig(preset="dit-xs", steps=3, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3,
                     snapshots=0, report_samples=1)
runner = CliRunner(env={"COLUMNS": "300"})


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """{"image": RUN, "video": RUN}: dit-xs trained 3 steps on 8 procedural 64-px images / 4 clips of 3 frames."""
    root = tmp_path_factory.mktemp("teachers")
    runs = {}
    for kind, data, frames in (("image", "procedural:8", 1), ("video", "procedural:4", 3)):
        store = encode(EncodeConfig(data, frames=frames, size=64, text="minilm-l6-v2", text_length=32),
                       root / f"{kind}-store", progress=False)
        train_teacher(store, TINY, root / kind)
        runs[kind] = root / kind
    return runs


def cli() -> typer.Typer:
    from lrm.cli.distill import register
    from lrm.cli.generate import register as register_generate

    app = typer.Typer()
    register(app)
    register_generate(app)
    return app


def distill(*args: str):
    return runner.invoke(cli(), ["distill", *args, "--quiet"])


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ---------------------------------------------------------------- students


def test_an_image_student_distils_logs_and_exports(teachers, tmp_path):
    out = tmp_path / "student"
    result = distill("--teacher", str(teachers["image"]), "--losses", "vsd,cd", "--student-steps", "2", "--steps",
                     "3", "--eval-every", "2", "--batch-size", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"student: {out / 'model'}" in result.output
    train = records(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(set(r["losses"]) == {"vsd", "cd", "fake_score"} for r in train)
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 and r["peak_memory_mb"] is None for r in train)
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [0, 2, 3]  # the initial student, every 2 steps, the last
    for r in evals:
        assert r["frechet"] >= 0 and 1 <= r["vendi"] <= 2 and 0 <= r["alignment"]["color"] <= 1
        assert r["alignment"]["motion"] is None  # images: no motion to read
        assert (out / r["grid"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evals[0]["frechet"] != evals[-1]["frechet"]  # the student moved
    page = (out / "report.html").read_text()
    assert "alignment shape" in page and "alignment motion" not in page
    assert page.count("data:image/png;base64,") == 2 + 3 and "Samples over training" in page
    saved = json.loads((out / "model" / "config.json").read_text())["extra"]
    assert saved["student_steps"] == 2 and saved["latent_shape"] == [1, 32, 8, 8] and saved["step"] == 3
    student, teacher = (load_file(p / "model" / "model.safetensors") for p in (out, teachers["image"]))
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)


def test_a_log_of_non_finite_samples_is_recorded_not_raised(teachers, tmp_path, monkeypatch):
    """A student that makes NaN at one fixed-seed log: the run goes on, that log records NaN measures and how many
    samples were non-finite (its measures would raise, and a resume would die at the same log again)."""
    import lrm.tuning.distill_log as distill_log

    real = distill_log.student_latents

    calls: list[int] = []

    def nan_at_step_1(*args):  # the second log: step 1
        calls.append(1)
        latents = real(*args)
        return latents.fill_(float("nan")) if len(calls) == 2 else latents

    monkeypatch.setattr(distill_log, "student_latents", nan_at_step_1)
    out = tmp_path / "student"
    result = distill("--teacher", str(teachers["image"]), "--losses", "vsd", "--student-steps", "1", "--steps",
                     "3", "--eval-every", "1", "--batch-size", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [0, 1, 2, 3]
    bad = evals[1]
    job = DistillJob()
    assert bad["nonfinite"] == job.eval_prompts * job.eval_seeds  # every sample of that log
    assert math.isnan(bad["frechet"]) and math.isnan(bad["vendi"]) and math.isnan(bad["alignment"]["shape"])
    assert bad["alignment"]["motion"] is None  # images
    assert all(r["nonfinite"] == 0 and r["frechet"] >= 0 for r in evals if r is not bad)
    assert (out / bad["grid"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nan" in (out / "report.html").read_text().lower()


def test_bf16_distils_in_mixed_precision_and_a_rerun_may_change_it(teachers, tmp_path):
    """--bf16: the terms' forward passes under bf16 autocast (finite losses other than float32's), recorded in
    config.json; a float32 rerun with more steps resumes the run (an execution setting, like the device)."""
    args = ["--teacher", str(teachers["image"]), "--losses", "vsd,cd", "--student-steps", "2", "--eval-every", "0",
            "--batch-size", "2"]
    for name, extra in (("fp32", ()), ("bf16", ("--bf16",))):
        result = distill(*args, "--steps", "2", *extra, "--out", str(tmp_path / name))
        assert result.exit_code == 0, result.output
    fp32, bf16 = ([r["losses"] for r in records(tmp_path / name, "train")] for name in ("fp32", "bf16"))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["job"]["autocast"] == "bf16"
    assert all(math.isfinite(v) for losses in bf16 for v in losses.values())
    assert bf16 != fp32  # the forward passes ran in bf16
    again = distill(*args, "--steps", "3", "--out", str(tmp_path / "bf16"))
    assert again.exit_code == 0, again.output
    assert [r["losses"] for r in records(tmp_path / "bf16", "train")][:2] == bf16
    assert [r["step"] for r in records(tmp_path / "bf16", "train")] == [1, 2, 3]


def test_the_exported_student_samples_through_lrm_sample_as_the_log_did(teachers, tmp_path):
    from lrm.text import load as load_text
    from lrm.tuning.distill_log import student_latents

    out = tmp_path / "student"
    assert distill("--teacher", str(teachers["image"]), "--student-steps", "4", "--steps", "1", "--eval-every", "0",
                   "--batch-size", "2", "--out", str(out)).exit_code == 0
    prompt = "a large red circle over a blue plain background"
    result = runner.invoke(cli(), ["sample", str(out), "--prompt", prompt, "--per-prompt", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "samples" / "index.json").read_text())
    assert (index["sampler"], index["steps"], index["cfg"], index["timesteps"]) == ("few-step", 4, 1.0,
                                                                                  [999, 749, 499, 249])
    model = load_denoiser(out / "model")
    text, mask = load_text(model.text_encoder_id).encode([prompt, prompt])
    expected = student_latents(model, text, mask, [0, 1], (1, 32, 8, 8), 4)
    torch.testing.assert_close(load_file(out / "samples" / "latents.safetensors")["latents"], expected)


def test_a_video_student_distils_with_adm_and_sdm2d(teachers, tmp_path):
    out = tmp_path / "video"
    result = distill("--teacher", str(teachers["video"]), "--losses", "adm,sdm2d", "--image-teacher",
                     str(teachers["image"]), "--student-steps", "1", "--steps", "2", "--eval-every", "1",
                     "--batch-size", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert all(set(r["losses"]) == {"adm", "sdm2d", "discriminator", "fake_2d"} for r in records(out, "train"))
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert all(0 <= r["alignment"]["motion"] <= 1 for r in evals)  # a caption names "pink square moving left"
    assert "alignment motion" in (out / "report.html").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["latent_shape"] == [3, 32, 8, 8] and "teacher_2d" in config["roles"]
    assert load_denoiser(out / "model").frames == 3


def test_a_rerun_resumes_and_equals_the_uninterrupted_run(teachers, tmp_path):
    common = ["--teacher", str(teachers["image"]), "--losses", "vsd,cd", "--student-steps", "2", "--batch-size", "2",
              "--eval-every", "2", "--checkpoint-every", "1"]
    assert distill(*common, "--steps", "4", "--out", str(tmp_path / "straight")).exit_code == 0
    assert distill(*common, "--steps", "3", "--out", str(tmp_path / "resumed")).exit_code == 0
    # as if killed after its step-3 checkpoint, before the final evaluation, having logged a line for step 4: the
    # rerun drops that line and does not evaluate at step 3, which the uninterrupted run (eval every 2) never does
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    lines = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] != 3
             or json.loads(line)["split"] != "eval"]
    # ... and a line the kill cut in half, which used to stop every rerun with a JSON error
    metrics.write_text("\n".join(lines + [json.dumps({"split": "train", "step": 4, "losses": {}})]) + "\n"
                       + '{"split": "train", "step": 5, "losses": {"vsd": 0.0')
    result = distill(*common, "--steps", "4", "--out", str(tmp_path / "resumed"))
    assert result.exit_code == 0, result.output
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = (records(tmp_path / run, "train") for run in ("straight", "resumed"))
    assert [r["losses"] for r in straight] == [r["losses"] for r in resumed] and len(resumed) == 4
    assert [(r["step"], r["frechet"]) for r in records(tmp_path / "straight", "eval")] == \
           [(r["step"], r["frechet"]) for r in records(tmp_path / "resumed", "eval")]
    changed = distill(*common, "--steps", "5", "--batch-size", "3", "--out", str(tmp_path / "resumed"))
    assert changed.exit_code == 2 and "cannot resume student run" in changed.output and "batch_size" in changed.output
    # fewer steps than the run holds: it used to export the 4-step student as a 2-step run's
    fewer = distill(*common, "--steps", "2", "--out", str(tmp_path / "resumed"))
    assert fewer.exit_code == 2 and "has already trained 4 steps" in fewer.output and "--steps 4 or" in fewer.output


def test_a_teacher_whose_folder_tree_was_copied_finds_its_store_there(teachers, tmp_path):
    """A copied cache (or project folder) keeps the teacher's store beside it, while its config.json records the
    store's old absolute path: distillation finds the copy instead of saying the store is gone."""
    import shutil

    root = teachers["image"].parent  # <tmp>/teachers0: image/ and image-store/ side by side
    moved = tmp_path / "copied" / "teachers-old"  # a name of its own: the original tree is still there
    shutil.copytree(root, moved, ignore=shutil.ignore_patterns("video*"))
    for config in (moved / "image").rglob("config.json"):  # the run's and its model's record the old place, gone
        config.write_text(config.read_text().replace(str(root), str(tmp_path / "gone" / "teachers-old")))
    result = distill("--teacher", str(moved / "image"), "--losses", "vsd", "--student-steps", "1", "--steps", "1",
                     "--batch-size", "2", "--eval-every", "0", "--out", str(tmp_path / "student"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "student" / "config.json").read_text())["store"] == str(moved / "image-store")
    shutil.rmtree(moved / "image-store")  # now it is gone, and a folder of that bare name is not taken for it
    (tmp_path / "copied" / "image-store").mkdir()
    (tmp_path / "copied" / "image-store" / "manifest.json").write_text("{}")
    gone = distill("--teacher", str(moved / "image"), "--losses", "vsd", "--steps", "1", "--out", str(tmp_path / "s2"))
    assert gone.exit_code == 2, gone.output
    assert f"is gone ({tmp_path / 'gone' / 'teachers-old' / 'image-store'})" in gone.output, gone.output


def test_a_lora_student_trains_adapters_and_exports_merged_weights_that_lrm_sample_reads(teachers, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    common = ["--teacher", str(teachers["image"]), "--losses", "vsd,cd", "--student-steps", "2", "--batch-size", "2",
              "--eval-every", "2", "--lr", "1e-2", "--out", str(out)]
    result = distill(*common, "--steps", "2", "--lora-rank", "2")
    assert result.exit_code == 0, result.output
    checkpoint = load_file(out / "checkpoints" / "step-00000002" / "student.safetensors")
    assert checkpoint and all(".lora_" in k for k in checkpoint)  # the adapters alone
    student, teacher = (load_file(p / "model" / "model.safetensors") for p in (out, teachers["image"]))
    assert set(student) == set(teacher)  # merged: the plain DiT's weights
    attention = [k for k in teacher if k.split(".")[-2:-1] in (["query"], ["key_value"], ["out"])]
    assert attention and any(not torch.equal(student[k], teacher[k]) for k in attention)
    assert all(torch.equal(student[k], teacher[k]) for k in teacher if k not in attention)
    assert json.loads((out / "config.json").read_text())["job"]["lora_rank"] == 2
    sampled = runner.invoke(cli(), ["sample", str(out), "--prompt", "a red circle", "--per-prompt", "2", "--quiet"])
    assert sampled.exit_code == 0, sampled.output
    again = distill(*common, "--steps", "3", "--lora-rank", "4")
    assert again.exit_code == 2 and "cannot resume student run" in again.output and "lora_rank" in again.output


def test_lora_without_peft_is_refused_before_any_work(teachers, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    for args, message in ((["--lora-rank", "2"], "needs the peft package: pip install peft"),
                          (["--lora-rank", "0"], "--lora-rank must be a positive integer")):
        result = distill("--teacher", str(teachers["image"]), *args, "--out", str(tmp_path / "run"))
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[0].startswith("Error: ") and message in result.output
        assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- data parallel (torchrun)


def test_ranks_read_disjoint_slices_that_make_up_the_one_process_batch(teachers):
    from lrm.datasets.store import LatentStore
    from lrm.generators.runs import open_generator_run
    from lrm.tuning.run import store_batches

    store = LatentStore.open(open_generator_run(teachers["image"]).setting("store"))
    one = store_batches(store, 4, seed=3, device="cpu", rank=0, world=1)
    ranks = [store_batches(store, 4, seed=3, device="cpu", rank=r, world=2) for r in range(2)]
    for step in range(3):
        whole = one(step)[0]
        parts = [batches(step)[0] for batches in ranks]
        assert all(p.x0.shape[0] == 2 for p in parts)
        assert torch.equal(torch.cat([p.x0 for p in parts]), whole.x0)
        assert torch.equal(torch.cat([p.text for p in parts]), whole.text)
        assert not torch.equal(parts[0].x0, parts[1].x0)
    with pytest.raises(ValueError, match="does not split evenly over 2 processes; pass a multiple of 2"):
        store_batches(store, 3, seed=3, device="cpu", rank=0, world=2)


DDP_WORKER = '''
import sys
from safetensors.torch import save_file
from lrm import distributed
from lrm.configs import DistillJob
from lrm.tuning import trainer
from lrm.tuning.roles import STUDENT
from lrm.tuning.run import distill

export = trainer.Distiller.export_student


def export_and_dump(self, run_dir):  # every rank's student, to compare the ranks
    for role in (STUDENT, "fake_score", "ema"):
        path = f"{{run_dir}}/{{role}}.rank{{distributed.rank()}}.safetensors"
        save_file(dict(self.roles.module(role).state_dict()), path)
    return export(self, run_dir)


trainer.Distiller.export_student = export_and_dump
job = DistillJob(teacher={teacher!r}, losses=("vsd", "cd"), student_steps=2, steps=2, batch_size=4, eval_every=1,
                 checkpoint_every=1, out={out!r})
result = distill(job)
with open(f"{{result.run_dir}}/done.rank{{distributed.rank()}}", "w") as f:  # a file: stdout lines of ranks interleave
    f.write(str(result.steps))
'''


@pytest.mark.slow
def test_two_gloo_processes_distil_in_sync_and_rank_0_writes(teachers, tmp_path):
    """Real torchrun, 2 CPU processes (gloo), through the library call (about 40 s on 2 shared cores): each
    rank takes half of the global batch, gradients are averaged, so every trained role ends identical on both
    ranks; files are written once."""
    out = tmp_path / "ddp"
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(teacher=str(teachers["image"]), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [(out / f"done.rank{r}").read_text() for r in range(2)] == ["2", "2"]
    for role in ("student", "fake_score", "ema"):
        a, b = (load_file(out / f"{role}.rank{r}.safetensors") for r in range(2))
        assert all(torch.equal(a[k], b[k]) for k in a), role
    student = load_file(out / "student.rank0.safetensors")
    teacher = load_file(teachers["image"] / "model" / "model.safetensors")
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained
    exported = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(exported[k], student[k]) for k in exported)
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["job"]["batch_size"] == 4
    assert [r["step"] for r in records(out, "train")] == [1, 2]  # one line per step: rank 0 alone writes
    assert [r["step"] for r in records(out, "eval")] == [0, 1, 2]
    rng = load_file(out / "checkpoints" / "step-00000002" / "rng.safetensors")
    assert not torch.equal(rng["trainer.rank0"], rng["trainer.rank1"])  # each rank its own noise
    one = distill("--teacher", str(teachers["image"]), "--losses", "vsd,cd", "--student-steps", "2", "--steps", "2",
                  "--batch-size", "4", "--eval-every", "0", "--out", str(out))
    assert one.exit_code == 2 and "written by 2 processes" in one.output  # resume needs the same process count
    assert json.loads((out / "config.json").read_text()) == config  # the refused rerun changed nothing


# ---------------------------------------------------------------- before any work


def test_dry_run_names_the_embedded_teacher_without_training_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(cli(), ["distill", "--dry-run", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["embedded"] and not plan["trained"] and plan["teacher"].startswith(str(tmp_path / "cache"))
    assert plan["job"]["losses"] == ["vsd", "cd"] and plan["job"]["student_steps"] == 4
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_an_out_holding_another_run_is_refused_before_the_embedded_default_trains(tmp_path, monkeypatch):
    """`lrm distill` / `lrm tune` with no generator train the embedded teacher or student first (minutes): an --out
    that holds another command's run is refused before that, not after."""
    from lrm.cli.app import app

    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    fit_run = tmp_path / "fit-run"
    fit_run.mkdir()
    (fit_run / "config.json").write_text(json.dumps({"fit": {"steps": 2}, "label": "colorfulness"}))
    for args, wanted in ((["distill"], "not a student run of `lrm distill`"),
                         (["tune", "colorfulness", "--concurrent"], "not a tuning run of `lrm tune`")):
        result = CliRunner().invoke(app, [*args, "--out", str(fit_run)])
        assert result.exit_code == 2 and wanted in result.output, result.output
    assert not (tmp_path / "cache").exists()  # nothing was trained


def test_bad_input_gets_one_line_and_exit_2_before_any_work(teachers, tmp_path):
    student = tmp_path / "student"
    (student / "model").mkdir(parents=True)
    save_denoiser(load_denoiser(teachers["image"] / "model"), student / "model",
                  extra={"student_steps": 2, "latent_shape": [1, 32, 8, 8]})
    surrogate = tmp_path / "fit"
    (surrogate / "model").mkdir(parents=True)
    (surrogate / "model" / "config.json").write_text(json.dumps({"format": "lrm-surrogate", "format_version": 1}))
    other = build_dit("dit-xs", 32, 384, frames=1)
    other.codec_settings = {"name": "taesd", "version": "1", "channels": 32}
    other.text_encoder_id = "minilm-l6-v2"
    save_denoiser(other, tmp_path / "other" / "model")
    image, video = str(teachers["image"]), str(teachers["video"])
    pipeline = tmp_path / "sd"  # the layout of a diffusers save_pretrained folder
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    cases = [
        (["--teacher", str(student)], "is a distilled 2-step student, not a teacher"),
        (["--teacher", image, "--losses", "vsd,vds"], "unknown loss 'vds'; did you mean 'vsd'?"),
        (["--teacher", image, "--student-steps", "3"], "--student-steps must be 1, 2 or 4"),
        (["--teacher", video, "--losses", "adm,sdm2d"], "loss sdm2d needs an image teacher"),
        (["--teacher", video, "--losses", "adm,sdm2d", "--image-teacher", str(tmp_path / "other")],
         "sdm2d needs an image teacher of the same codec"),
        (["--teacher", video, "--losses", "sdm2d", "--image-teacher", video], "sdm2d needs an image teacher (1 frame)"),
        (["--teacher", image, "--losses", "sdm2d", "--image-teacher", image], "the teacher is an image model"),
        (["--teacher", image, "--image-teacher", image], "--image-teacher is read only by sdm2d"),
        (["--teacher", str(surrogate)], "is a surrogate run (lrm fit), not a generator"),
        (["--teacher", image, "--steps", "-1"], "--steps must be >= 0"),
        (["--teacher", image, "--video"], "drop --video"),
        (["--teacher", str(tmp_path / "nowhere")], "not found"),
        (["--teacher", str(pipeline)], "is a diffusers pipeline folder; `lrm distill` takes runs of `lrm teacher"),
    ]
    for args, message in cases:
        result = distill(*args, "--out", str(tmp_path / "run"))
        assert result.exit_code == 2, (args, result.output)
        first = result.output.strip().splitlines()[0]
        assert first.startswith("Error: ") and message in first, (args, result.output)
        assert not (tmp_path / "run").exists(), args


def test_the_command_module_imports_no_torch_and_its_defaults_are_the_configs():
    import inspect

    from lrm.cli.distill import distill as command

    code = "import sys, lrm.cli.distill; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    given = {name: p.default for name, p in inspect.signature(command).parameters.items()}  # what typer passes
    assert given.pop("quiet") is False and given.pop("dry_run") is False and given.pop("bf16") is False
    fields = {"lr": "student_lr"}  # `lrm distill` option -> DistillJob field
    given["losses"] = tuple(given["losses"].split(","))
    job = DistillJob()
    assert {fields.get(k, k): v for k, v in given.items()} == {fields.get(k, k): getattr(job, fields.get(k, k))
                                                                for k in given}
    assert job.autocast is None  # --bf16 off
    from lrm.tuning.run import LOSSES, build_terms

    terms = build_terms(replace(DistillJob(), losses=tuple(LOSSES), cd_teacher_steps=3), latent_frames=2)
    assert [t.name for t in terms] == list(LOSSES) and terms[1].teacher_steps == 3 and terms[3].frames == 2
