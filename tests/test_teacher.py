"""Teacher training (lrm.generators.training, lrm.generators.embedded, `lrm teacher train`): a tiny dit-xs on
8x8 dct latents of 16 procedural 64-px images with MiniLM tokens."""

from __future__ import annotations

import json
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

from lrm.datasets.encoding import EncodeConfig, encode
from lrm.diffusion.parameterisations import training_target
from lrm.diffusion.schedules import schedule_from_config
from lrm.generators import DenoiserMismatchError, build_dit, load_denoiser, save_denoiser
from lrm.generators.training import (TeacherConfig, denoising_batch, drop_text, ema_decay, initial_model,
                                     is_finished, learning_rate, sample_latents, snapshot_path, snapshot_steps,
                                     train_teacher)

REPO = Path(__file__).resolve().parents[1]
TINY = TeacherConfig(preset="dit-xs", steps=20, batch_size=8, warmup_steps=5, log_every=5, checkpoint_every=10,
                     snapshots=2, report_samples=2)
runner = CliRunner(env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    return encode(EncodeConfig("procedural:16", frames=1, size=64, text="minilm-l6-v2", text_length=32), root / "store",
                  progress=False)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """One uninterrupted tiny run (20 steps)."""
    out = tmp_path_factory.mktemp("run") / "run"
    return train_teacher(store, TINY, out), out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_loss_decreases_over_a_short_fit(store, tmp_path):
    result = train_teacher(store, replace(TINY, steps=80, checkpoint_every=80, snapshots=0, lr=2e-3), tmp_path / "run")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_run_folder_layout_and_saved_teacher_loads_back(store, trained):
    result, out = trained
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoints", "snapshots", "model",
                                               "report.html", "figures"}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [5, 10, 15, 20] and lines == result.history
    assert snapshot_steps(TINY) == [10, 20] and (snapshot_path(out, 10) / "model.safetensors").exists()
    assert "data:image/png;base64," in (out / "report.html").read_text()

    loaded = load_denoiser(out / "model", codec_settings=store.codec_settings, text_encoder_id=store.text_encoder_id)
    assert loaded.preset == "dit-xs" and loaded.prediction == "conjugate-v" and loaded.frames == 1
    x = torch.randn(2, 1, 32, 8, 8)
    t = torch.tensor([10, 900])
    text, mask = store.text_embeddings([0, 1])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text, mask), result.model(x, t, text, mask))
    with pytest.raises(DenoiserMismatchError, match="text encoder"):
        load_denoiser(out / "model", text_encoder_id="clip-vit-b-32")
    assert torch.equal(weights(out / "model")["final.weight"], result.model.final.weight)
    # the EMA is the teacher: the saved model is the last checkpoint's EMA ("best."), not its raw weights ("model.")
    saved, last = weights(out / "model"), load_file(out / "checkpoints" / "step-0000020.safetensors")
    assert saved and all(torch.equal(saved[k], last[f"best.{k}"]) for k in saved)
    assert any(not torch.equal(saved[k], last[f"model.{k}"]) for k in saved)  # 20 steps: EMA and raw differ


def test_resume_equals_the_uninterrupted_run(store, trained, tmp_path):
    _, uninterrupted = trained
    out = tmp_path / "run"
    train_teacher(store, TINY, out)
    # a run killed after its step-10 checkpoint: later checkpoints, snapshot and model never written
    for path in [out / "checkpoints" / "step-0000020.json", out / "checkpoints" / "step-0000020.safetensors"]:
        path.unlink()
    for folder in (out / "model", snapshot_path(out, 20)):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    resumed = train_teacher(store, TINY, out)
    assert resumed.steps == 20
    for name in ("model", "snapshots/step-0000020", "snapshots/step-0000010"):
        a, b = weights(uninterrupted / name), weights(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = load_file(uninterrupted / "checkpoints" / "step-0000020.safetensors")
    b = load_file(out / "checkpoints" / "step-0000020.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, EMA, AdamW moments, RNG state
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in lines]  # noqa: E731
    assert strip((out / "metrics.jsonl").read_text().splitlines()) == strip(
        (uninterrupted / "metrics.jsonl").read_text().splitlines())


def test_a_resumed_run_logs_what_the_uninterrupted_one_does_between_checkpoints_and_loss_lines(store, tmp_path):
    # checkpoints every 6 steps, loss lines every 4: the step-8 line averages steps 5-8, two of them before the kill
    config = replace(TINY, steps=12, log_every=4, checkpoint_every=6, snapshots=0)
    train_teacher(store, config, tmp_path / "straight")
    out = tmp_path / "resumed"
    train_teacher(store, config, out)
    for path in [out / "checkpoints" / "step-0000012.json", out / "checkpoints" / "step-0000012.safetensors"]:
        path.unlink()  # killed after its step-6 checkpoint
    resumed = train_teacher(store, config, out)
    assert resumed.steps == 12
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"}  # noqa: E731
                         for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(tmp_path / "straight") and len(strip(out)) == 3


class PoisonedStore:
    """A store whose row 0 has a NaN latent (a codec that failed on it)."""

    def __init__(self, store):
        self.store = store

    def latents(self, indices):
        z = self.store.latents(indices).clone()
        z[[i for i, row in enumerate(indices) if row == 0]] = float("nan")
        return z

    def __len__(self):
        return len(self.store)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_nan_latent_or_an_infinite_lr_stops_training_with_one_line_and_no_nan_teacher(store, tmp_path):
    with pytest.raises(ValueError, match=r"the loss is not finite at step \d+: a row of that batch holds NaN"):
        train_teacher(PoisonedStore(store), replace(TINY, snapshots=0), tmp_path / "poisoned")
    assert not (tmp_path / "poisoned" / "model").exists()  # no teacher with NaN weights to reuse
    with pytest.raises(ValueError, match="TeacherConfig.lr must be a finite number > 0"):
        train_teacher(store, replace(TINY, lr=float("inf")), tmp_path / "inf")


def test_a_video_teacher_trains_on_clips_and_samples_them(tmp_path):
    clips = encode(EncodeConfig("procedural:4", frames=4, size=32, text="minilm-l6-v2", text_length=32),
                   tmp_path / "clips", progress=False)
    result = train_teacher(clips, replace(TINY, steps=2, batch_size=2, snapshots=0, report_samples=1), tmp_path / "run")
    assert result.model.frames == 4 and result.model.temporal
    text, mask = clips.text_embeddings([0])
    x = sample_latents(result.model, text, mask, tuple(clips.latent_shape), guidance=2.0, steps=3, seed=0)
    assert x.shape == (1, 4, 32, 4, 4) and torch.isfinite(x).all()
    assert torch.equal(x, sample_latents(result.model, text, mask, tuple(clips.latent_shape), 2.0, 3, seed=0))
    assert (tmp_path / "run" / "figures" / "samples.png").exists()


def test_a_video_teacher_starts_from_an_image_teacher(store, trained, tmp_path):
    """--init: the image teacher, inflated, is the video run's step 0 (equal to it on every frame); the run trains
    from there and records where it started. Refusals: another preset, a video model on images."""
    _, image_run = trained
    clips = encode(EncodeConfig("procedural:4", frames=4, size=64, text="minilm-l6-v2", text_length=32),
                   tmp_path / "clips", progress=False)
    image = load_denoiser(image_run / "model")
    video = initial_model(image_run, clips, TINY)
    assert video.frames == 4 and video.temporal and video.preset == "dit-xs"
    x, t = torch.randn(2, 4, 32, 8, 8), torch.tensor([100, 700])
    text, mask = clips.text_embeddings([0, 1])
    with torch.no_grad():
        assert torch.allclose(video(x, t, text, mask), image(x, t, text, mask), atol=1e-5)
    config = replace(TINY, steps=2, batch_size=2, snapshots=0, report_samples=1, init=str(image_run))
    result = train_teacher(clips, config, tmp_path / "run")
    assert result.model.temporal
    assert json.loads((tmp_path / "run" / "config.json").read_text())["teacher"]["init"] == str(image_run)
    moved = replace(config, init=str(tmp_path / "elsewhere"))  # init only sets step 0: a moved cache still resumes
    assert train_teacher(clips, moved, tmp_path / "run").steps == 2 and is_finished(tmp_path / "run", moved)
    # an init of another schedule: a resumed run keeps it (it was rebuilt from the preset's default schedule)
    flow = build_dit("dit-xs", 32, image.text_dim, schedule_config={"type": "flow", "shift": 3.0})
    flow.codec_settings, flow.text_encoder_id = image.codec_settings, image.text_encoder_id
    save_denoiser(flow, tmp_path / "flow" / "model")
    flowing = replace(config, steps=4, checkpoint_every=2, init=str(tmp_path / "flow"))
    train_teacher(clips, flowing, tmp_path / "flow-run")
    for name in ("step-0000004.json", "step-0000004.safetensors"):
        (tmp_path / "flow-run" / "checkpoints" / name).unlink()  # killed after its step-2 checkpoint
    train_teacher(clips, flowing, tmp_path / "flow-run")
    assert load_denoiser(tmp_path / "flow-run" / "model").schedule_config == {"type": "flow", "shift": 3.0}
    # --out holding another command's run (with checkpoints): named before its config is read as a teacher's
    fit_run = tmp_path / "fit-run"
    (fit_run / "checkpoints").mkdir(parents=True)
    (fit_run / "config.json").write_text(json.dumps({"fit": {"steps": 3}, "label": "x"}))
    for suffix in (".json", ".safetensors"):
        (fit_run / "checkpoints" / f"step-0000002{suffix}").write_text("{}")
    with pytest.raises(ValueError, match="holds a surrogate run of `lrm fit`, not a teacher run"):
        train_teacher(clips, flowing, fit_run)
    with pytest.raises(ValueError, match="is not a dit-s .*pass --preset dit-xs"):
        initial_model(image_run, clips, replace(TINY, preset="dit-s"))
    with pytest.raises(ValueError, match="is a 4-frame model and store .* holds 1-frame latents"):
        initial_model(tmp_path / "run", store, TINY)


def test_resume_with_other_settings_is_refused(store, trained):
    _, out = trained
    with pytest.raises(ValueError, match="cannot resume .*teacher.lr: saved 0.001, now 0.01"):
        train_teacher(store, replace(TINY, lr=1e-2), out)
    with pytest.raises(FileExistsError, match="already holds a teacher run"):
        train_teacher(store, TINY, out, resume=False)


def test_cfg_dropout_clears_the_drawn_rows():
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 3] = False
    drop = torch.tensor([True, False, False, True, False, False])
    dropped = drop_text(mask, drop)
    assert not dropped[drop].any() and torch.equal(dropped[~drop], mask[~drop])

    # denoising_batch draws t, eps, then the dropout from its generator: replay the same draws
    model = build_dit("dit-xs", 32, 384)
    x0 = torch.randn(64, 1, 32, 4, 4)
    x_t, t, out_mask, target = denoising_batch(model, x0, torch.ones(64, 5, dtype=torch.bool), 0.25,
                                               torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    t_ref = torch.randint(0, 1000, (64,), generator=replay)
    eps = torch.randn(x0.shape, generator=replay)
    expected_drop = torch.rand(64, generator=replay) < 0.25
    assert torch.equal(t, t_ref) and 0 < int(expected_drop.sum()) < 64
    assert torch.equal(out_mask.any(dim=1), ~expected_drop)
    alpha, sigma = model.schedule.alpha_sigma(t, x0)
    assert torch.equal(x_t, alpha * x0 + sigma * eps)
    assert torch.equal(target, training_target("conjugate-v", x0, eps, alpha, sigma))
    assert torch.allclose(target, x0 - eps)  # DOLLAR Eq. 13
    _, _, kept, _ = denoising_batch(model, x0, torch.ones(64, 5, dtype=torch.bool), 0.0, torch.Generator())
    assert kept.all()


def test_schedule_property_learning_rate_and_ema_decay():
    model = build_dit("dit-xs", 32, 384, schedule_config={"type": "flow", "shift": 3.0})
    assert model.schedule == schedule_from_config({"type": "flow", "shift": 3.0})
    assert build_dit("dit-xs", 32, 384).schedule.config() == {"type": "vp", "betas": "linear", "num_timesteps": 1000}
    config = TeacherConfig(lr=1e-3, warmup_steps=10)
    assert [learning_rate(s, config) for s in (0, 4, 9, 10, 5000)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert ema_decay(1, 0.995) == pytest.approx(2 / 11) and ema_decay(10_000, 0.995) == 0.995


@pytest.mark.parametrize("bad, message", [(dict(steps=-3), "steps must be a positive integer"),
                                          (dict(preset="dit-xxl"), "unknown DiT preset"),
                                          (dict(cfg_dropout=1.0), "cfg_dropout must be in"),
                                          (dict(prediction="score"), "unknown prediction type")])
def test_bad_settings_are_refused_before_any_work(store, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        train_teacher(store, replace(TINY, **bad), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_embedded_teacher_is_cached_by_settings(tmp_path, monkeypatch):
    from lrm.generators import embedded

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    run, default = embedded.embedded_run_dir(), embedded.EMBEDDED["image"].teacher
    assert run.parent == tmp_path / "teachers" and run.name.startswith("image-dit-s1-64px-")
    video_run = embedded.embedded_run_dir(video=True)
    assert video_run.name.startswith("video-dit-s1-64px-")
    assert embedded.embedded_config(video=True).init == str(run / "model")  # it starts from the image teacher
    with pytest.raises(FileNotFoundError, match="lrm teacher train --video"):
        embedded.embedded_teacher(video=True, train_if_missing=False)
    monkeypatch.setitem(embedded.EMBEDDED, "image", replace(embedded.EMBEDDED["image"],
                                                            teacher=replace(default, steps=10)))
    assert embedded.embedded_run_dir() != run  # another setting, another cached teacher
    assert embedded.embedded_run_dir(video=True) != video_run  # ... and another video teacher started from it
    monkeypatch.setitem(embedded.EMBEDDED, "image", replace(embedded.EMBEDDED["image"],
                                                            teacher=replace(default, keep_checkpoints=5)))
    assert embedded.embedded_run_dir() == run  # logging and checkpoint cadence do not change the weights
    from lrm.codecs import pae

    store = embedded.embedded_store_dir()
    assert embedded.EMBEDDED["image"].store.codec == "pae" and not (tmp_path / "codecs").exists()  # nothing trained
    monkeypatch.setattr(pae, "PAE_DEFAULT", replace(pae.PAE_DEFAULT, steps=10))
    assert embedded.embedded_store_dir() != store and embedded.embedded_run_dir() != run  # another autoencoder


def test_embedded_teacher_trains_once_then_reuses_or_resumes(tmp_path, monkeypatch):
    from lrm.generators import embedded

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    tiny = embedded.EmbeddedTeacher(EncodeConfig("procedural:8", frames=1, size=32, text="minilm-l6-v2",
                                                 text_length=32), replace(TINY, steps=4, checkpoint_every=2))
    monkeypatch.setitem(embedded.EMBEDDED, "image", tiny)
    run = embedded.embedded_teacher()
    assert run == embedded.embedded_run_dir() and load_denoiser(run / "model").preset == "dit-xs"
    assert (embedded.embedded_store_dir() / "manifest.json").exists()
    saved = (run / "model" / "model.safetensors").stat().st_mtime_ns
    assert embedded.embedded_teacher(train_if_missing=False) == run  # cached: nothing retrained
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == saved
    # a cached teacher killed after its step-2 checkpoint resumes from it
    for path in [run / "checkpoints" / "step-0000004.json", run / "model" / "config.json"]:
        path.unlink()
    assert embedded.embedded_teacher() == run
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4] and (run / "model" / "config.json").exists()


# ---------------------------------------------------------------- CLI

def cli_app() -> typer.Typer:
    from lrm.cli.teacher import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_trains_on_a_store_and_prints_where(store, tmp_path):
    out = tmp_path / "run"
    args = ["teacher", "train", "--store", str(store.path), "--steps", "3", "--batch-size", "4", "--preset", "dit-xs",
            "--out", str(out), "--quiet"]
    plan = runner.invoke(cli_app(), args + ["--dry-run"])
    assert plan.exit_code == 0, plan.output
    resolved = json.loads(plan.output)
    assert resolved["run"] == str(out) and resolved["teacher"]["steps"] == 3 and resolved["teacher"]["lr"] == 1e-3
    assert not out.exists()
    result = runner.invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    assert f"teacher: {out / 'model'}" in result.output
    assert load_denoiser(out / "model").preset == "dit-xs"


def test_cli_embedded_dry_run_uses_the_cache(tmp_path, monkeypatch):
    from lrm.generators import embedded

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    result = runner.invoke(cli_app(), ["teacher", "train", "--video", "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["embedded"] and plan["run"].startswith(str(tmp_path / "teachers" / "video-dit-s1-64px-"))
    video = embedded.EMBEDDED["video"].teacher
    assert plan["teacher"]["steps"] == video.steps and plan["teacher"]["batch_size"] == video.batch_size == 8
    assert plan["teacher"]["init"] == str(embedded.embedded_run_dir() / "model")
    assert not (tmp_path / "codecs").exists() and not (tmp_path / "stores").exists()  # a plan trains nothing


def test_cli_bad_input_is_one_line(store, trained, tmp_path):
    no_text = encode(EncodeConfig("procedural:2", frames=1, size=32), tmp_path / "no_text", progress=False)
    cases = [
        (["--video", "--preset", "dit-s"], "starts from the embedded image teacher (dit-s1); with --preset dit-s pass"),
        (["--store", str(store.path), "--init", str(trained[1]), "--preset", "dit-s"], "is not a dit-s (depth 2 vs 6"),
        (["--store", str(store.path), "--init", str(tmp_path / "nowhere")], "--init"),
        (["--steps", "-5"], "teacher --steps must be a positive integer"),
        (["--store", str(tmp_path / "missing")], "no latent store at"),
        (["--store", str(store.path), "--video"], "holds images, not clips: drop --video"),
        (["--store", str(no_text.path)], "has no text embeddings"),
        (["--store", str(store.path), "--data", "procedural:4"], "either --store or --data"),
        (["--size", "128"], "pass --data FOLDER"),
    ]
    for args, message in cases:
        result = runner.invoke(cli_app(), ["teacher", "train", *args, "--out", str(tmp_path / "r"), "--dry-run"])
        assert result.exit_code == 2, (args, result.output)
        first = result.output.strip().splitlines()[0]
        assert first.startswith("Error: ") and message in first, (args, result.output)


@pytest.mark.slow
def test_two_gloo_processes_train_with_ddp(store, tmp_path):
    """Real torchrun, 2 CPU processes (gloo), through `python -m lrm.cli.teacher`."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lrm.cli.teacher", "teacher", "train", "--store", str(store.path), "--steps", "6", "--batch-size", "8",
           "--preset", "dit-xs", "--out", str(out), "--quiet"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["effective_batch_size"] == 8
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert load_denoiser(out / "model").preset == "dit-xs"


def test_the_benchmarks_standardised_variant_trains_on_unit_channels_and_maps_samples_back(store, tmp_path):
    from benchmark_scripts import load_benchmark

    bench = load_benchmark("teacher")
    scaled = bench.StandardisedStore(store)
    z, raw = scaled.latents(list(range(len(store)))), store.latents(list(range(len(store))))
    torch.testing.assert_close(z.mean(dim=(0, 1, 3, 4)), torch.zeros(z.shape[2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 1, 3, 4)), torch.ones(z.shape[2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.to_codec(z), raw, atol=1e-5, rtol=1e-5)
    assert len(scaled) == len(store) and scaled.codec_settings == store.codec_settings  # the rest: the store's
    result = train_teacher(scaled, replace(TINY, steps=2, snapshots=0), tmp_path / "run")
    assert result.steps == 2
    assert bench.variant_name(None, None) is None and bench.variant_name(4500, "all") == "standardised-steps4500"
    luma = bench.StandardisedStore(store, "luma")  # the dct split's 26 luma channels; the 6 chroma ones as they are
    assert bench.variant_name(None, "luma") == "standardised-luma"
    assert bench.variant_name(None, None, images=8192) == "images8192"
    assert bench.variant_name(4500, None, preset="dit-m1") == "dit-m1-steps4500"
    assert bench.variant_store_config(8192).data == "procedural:8192:simple"  # the embedded world, more images
    assert bench.variant_store_config(None) == bench.EMBEDDED["image"].store
    assert bench.variant_name(None, None, codec="taef2") == "taef2"  # the same images in another latent space
    assert bench.variant_name(None, None, prediction="x0") == "x0"  # trained in another output parameterisation
    assert bench.variant_name(None, None, world="blocks") == "blocks"  # images of another procedural world
    assert bench.variant_store_config(None, None, "blocks").data == "procedural:2048:blocks"
    assert bench.variant_store_config(None, "taef2") == replace(bench.EMBEDDED["image"].store, codec="taef2")
    # the dct teacher's variants (the embedded default until 2026-12-05): `--codec dct` and one setting, each
    # recorded in benchmarks/results under the name the benchmark gives it
    dct_variants = [bench.variant_name(None, None, codec="dct"), bench.variant_name(4500, None, codec="dct"),
                    bench.variant_name(None, "all", codec="dct"), bench.variant_name(None, "luma", codec="dct"),
                    bench.variant_name(None, None, 8192, codec="dct"), bench.variant_name(None, None, preset="dit-m1", codec="dct"),
                    bench.variant_name(None, None, codec="dct", prediction="x0"),
                    bench.variant_name(None, None, codec="dct", world="blocks")]
    assert dct_variants == ["dct", "dct-steps4500", "dct-standardised", "dct-standardised-luma", "dct-images8192",
                            "dit-m1-dct", "dct-x0", "dct-blocks"]
    assert all((bench.RESULTS / f"teacher_{name}.json").is_file() for name in dct_variants)
    torch.testing.assert_close(luma.latents([0, 1])[:, :, 26:], raw[:2, :, 26:])
    torch.testing.assert_close(luma.latents([0, 1])[:, :, :26], z[:2, :, :26])
