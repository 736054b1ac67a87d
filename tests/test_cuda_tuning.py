"""The tuning half gives the CPU's results on a GPU: teacher training, sampling, distillation (image and video
terms, bf16 autocast) and the three tuning methods (with their options, and on a video student), each run through
the CLI on CUDA and on the CPU from the same tiny runs (dit-xs, 64-px procedural images and clips, dct latents,
MiniLM tokens) and compared.

Skipped without CUDA (CI has none); run on a GPU machine with `python -m pytest tests/test_cuda_tuning.py`.
LRM_TEST_DEVICE=cpu runs the same comparisons CPU against CPU, which checks the tests themselves where there is no
GPU. TF32 is off so that the devices differ only by summation order; every random draw of lrm's trainers comes
from CPU generators, so both devices see the same noise, timesteps and batches.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lrm.cli.app import app

DEVICE = os.environ.get("LRM_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("one_thread", "exact_float32")]  # tests/conftest.py
runner = CliRunner(env={"COLUMNS": "300"})
TEACHER = ("--preset", "dit-xs", "--size", "64", "--steps", "4", "--batch-size", "4")
# (run folder, device) of each comparison: distinct folders, so that with LRM_TEST_DEVICE=cpu the second is a run of
# its own and not a rerun of the first (which would find it finished and compare the CPU run with itself)
RUNS = (("cpu", "cpu"), ("device", DEVICE))


@pytest.fixture
def denoiser_devices(monkeypatch) -> list[str]:
    """The device type of every call of lrm's DiT during the test: where the work ran, not only what was asked."""
    from lrm.generators.dit import LatentDiT

    seen, forward = [], LatentDiT.forward

    def spy(self, x_t, *args, **kwargs):
        seen.append(x_t.device.type)
        return forward(self, x_t, *args, **kwargs)

    monkeypatch.setattr(LatentDiT, "forward", spy)
    return seen


def lrm(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def close(a, b, rel: float = 1e-3, abs_: float = 1e-5) -> bool:
    """Numbers, lists and dicts of them equal up to summation order; NaN equals NaN, None equals None."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel, abs_) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, rel, abs_) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    return a == b


def train_losses(run: Path) -> list[dict]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["losses"] for r in records if r["split"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """CPU runs every comparison starts from: image and video teachers, a 1-step student."""
    root = tmp_path_factory.mktemp("cpu")
    lrm("teacher", "train", "--data", "procedural:8", *TEACHER, "--device", "cpu", "--out", root / "image", "--quiet")
    lrm("teacher", "train", "--video", "--data", "procedural:4", *TEACHER, "--device", "cpu", "--out", root / "video",
        "--quiet")
    for kind in ("image", "video"):
        lrm("distill", "--teacher", root / kind, "--student-steps", "1", "--steps", "2", "--batch-size", "2",
            "--device", "cpu", "--out", root / f"{kind}-student", "--quiet")
    return {"image": root / "image", "video": root / "video", "student": root / "image-student",
            "video-student": root / "video-student"}


def test_teacher_training_on_the_device_gives_the_cpu_teacher(runs, tmp_path, denoiser_devices):
    denoiser_devices.clear()
    lrm("teacher", "train", "--data", "procedural:8", *TEACHER, "--device", DEVICE, "--out", tmp_path / "t", "--quiet")
    assert denoiser_devices and set(denoiser_devices) == {torch.device(DEVICE).type}  # it trained there
    assert json.loads((tmp_path / "t" / "config.json").read_text())["teacher"]["device"] == DEVICE
    logged = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (runs["image"], tmp_path / "t")]
    assert len(logged[0]) == 1 and close(*logged), logged
    cpu, dev = load_file(runs["image"] / "model" / "model.safetensors"), load_file(tmp_path / "t" / "model" /
                                                                                    "model.safetensors")
    assert cpu.keys() == dev.keys()
    assert all(torch.allclose(cpu[k], dev[k], rtol=1e-3, atol=1e-4) for k in cpu)  # 4 AdamW steps at lr 1e-3


def test_sampling_on_the_device_gives_the_cpu_latents(runs, tmp_path, denoiser_devices):
    for name, device in RUNS:  # index.json does not record the device: the DiT's inputs show where it ran
        denoiser_devices.clear()
        lrm("sample", runs["image"], "--prompt", "a red circle on a blue background", "--steps", "5",
            "--per-prompt", "2", "--device", device, "--out", tmp_path / name, "--quiet")
        assert denoiser_devices and set(denoiser_devices) == {torch.device(device).type}, device
    cpu, dev = (load_file(tmp_path / name / "latents.safetensors") for name, _ in RUNS)
    assert cpu.keys() and cpu.keys() == dev.keys()
    assert all(torch.allclose(cpu[k], dev[k], rtol=1e-4, atol=1e-4) for k in cpu)


@pytest.mark.parametrize("kind, losses", [("image", "vsd,cd"), ("video", "adm,sdm2d")])
def test_distillation_on_the_device_logs_the_cpu_losses(runs, kind, losses, tmp_path):
    extra = ("--video", "--image-teacher", runs["image"]) if kind == "video" else ()
    for name, device in RUNS:
        lrm("distill", "--teacher", runs[kind], *extra, "--losses", losses, "--student-steps", "2", "--steps", "2",
            "--batch-size", "2", "--eval-every", "2", "--device", device, "--out", tmp_path / name, "--quiet")
    cpu, dev = (train_losses(tmp_path / name) for name, _ in RUNS)
    assert len(cpu) == 2 and close(cpu, dev), (cpu, dev)
    records = [json.loads(line) for line in (tmp_path / "device" / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["peak_memory_mb"] for r in records if r["split"] == "train"]
    assert all(p > 0 for p in peaks) if DEVICE.startswith("cuda") else all(p is None for p in peaks)


TUNE_VARIANTS = {  # id: (reward, generator: "--student" or "--teacher" and its run, method and its options)
    "lrm": ("colorfulness", ("--student", "student"), ("--method", "lrm", "--concurrent")),
    "ddpo": ("colorfulness", ("--student", "student"), ("--method", "ddpo")),
    "ddpo-prompt-history": ("colorfulness", ("--student", "student"), ("--method", "ddpo", "--prompt-history", "2")),
    "direct": ("colorfulness", ("--student", "student"), ("--method", "direct")),
    "lrm-matched-kl": ("colorfulness", ("--student", "student"),
                       ("--method", "lrm", "--concurrent", "--gradient-weight", "1", "--kl-weight", "0.1")),
    "lrm-noise-aware": ("colorfulness", ("--student", "student"), ("--method", "lrm", "--concurrent", "--noise-aware")),
    "lrm-distilling": ("colorfulness", ("--teacher", "image"),
                       ("--method", "lrm", "--concurrent", "--losses", "vsd,cd", "--student-steps", "1")),
    "video-lrm": ("temporal-flickering", ("--student", "video-student"), ("--method", "lrm", "--concurrent")),
    "video-ddpo": ("temporal-flickering", ("--student", "video-student"), ("--method", "ddpo")),
    "video-direct": ("colorfulness", ("--student", "video-student"), ("--method", "direct", "--frames", "2")),
}  # (no weight-free video reward is differentiable: direct tunes a video student on an image reward's frames)


@pytest.mark.parametrize("variant", list(TUNE_VARIANTS))
def test_each_tuning_method_on_the_device_gives_the_cpu_run(runs, variant, tmp_path):
    reward, (flag, generator), method = TUNE_VARIANTS[variant]
    for name, device in RUNS:
        lrm("tune", reward, flag, runs[generator], *method, "--steps", "2", "--batch-size", "2", "--lr", "1e-3",
            "--eval-every", "2", "--per-prompt", "2", "--device", device, "--out", tmp_path / name)
    cpu, dev = (json.loads((tmp_path / name / "records.json").read_text()) for name, _ in RUNS)
    assert len(cpu["losses"]) == 2 and len(cpu["records"]) == 2  # so that close() compares something
    # DDPO's loss, -sum(A * lp) over a batch whose advantages cancel within each prompt, is a small difference of
    # O(1) terms: on 8-frame clips it kept 1e-5 of the devices' rounding (-0.000701 vs -0.000715 on an H200)
    tolerance = {"abs_": 1e-4} if "ddpo" in method else {}
    assert close(cpu["losses"], dev["losses"], **tolerance), (cpu["losses"], dev["losses"])
    keys = ("step", "gold", "proxy", "diversity", "nonfinite")
    assert close([{k: r[k] for k in keys} for r in cpu["records"]], [{k: r[k] for k in keys} for r in dev["records"]])
    assert dev["records"][-1]["distance"] > 0  # the student moved
    assert (dev["peak_memory_mb"] > 0) if DEVICE.startswith("cuda") else dev["peak_memory_mb"] is None


def test_bf16_autocast_distils_with_finite_losses_on_the_device():
    """bf16 autocast is the trainer's mixed-precision option (fp16 is refused): on the device it runs every term."""
    from test_tuning import batch, tiny_dit

    from lrm.tuning import CD, VSD, DistillConfig, Distiller, build_roles

    device = torch.device(DEVICE)
    roles = build_roles(tiny_dit().to(device), student_lr=1e-3, fake_lr=1e-3)
    distiller = Distiller(roles, [VSD(), CD(teacher_steps=2)],
                          DistillConfig(latent_shape=(1, 4, 8, 8), student_steps=2, autocast="bf16"))

    def on_device(step):
        b = batch(seed=step)
        return [type(b)(b.text.to(device), b.text_mask.to(device), b.x0.to(device))]

    logs = distiller.fit(on_device, 2)
    assert all(math.isfinite(v) for log in logs for v in log.losses.values()), [log.losses for log in logs]
    assert distiller.skipped == {name: 0 for name in distiller.skipped} and distiller.updates["student"] == 2


def test_bf16_tuning_on_the_device_starts_from_the_float32_evaluation_with_finite_losses(runs, tmp_path):
    """`lrm tune --bf16` autocasts the training steps only, not the run: its first evaluation (sampling, decoding and
    the true reward of the untuned student, before any step) is the float32 CPU run's, and its losses are finite.
    (Later records follow weights trained in bf16, so they differ from the float32 run's by design.)"""
    for (name, device), extra in zip(RUNS, ((), ("--bf16",))):
        lrm("tune", "prompt-color", "--student", runs["student"], "--method", "lrm", "--concurrent", *extra,
            "--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--eval-every", "2", "--per-prompt", "2",
            "--device", device, "--out", tmp_path / name)
    cpu, dev = (json.loads((tmp_path / name / "records.json").read_text()) for name, _ in RUNS)
    keys = ("step", "gold", "proxy", "diversity")
    assert close({k: cpu["records"][0][k] for k in keys}, {k: dev["records"][0][k] for k in keys})
    finite = all(math.isfinite(v) for log in dev["losses"] for v in log.values())
    assert len(dev["losses"]) == 2 and finite, dev["losses"]
