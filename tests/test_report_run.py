"""`lrm report`: in distribution (the run's held-out rows) and out of distribution (every row of another
store), with the baselines fitted on the surrogate's own training rows; columns computed otherwise refused."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lrm.cli.app import app
from lrm.datasets.store import LatentStore
from lrm.fidelity import features_of, fidelity_metrics, fit_baselines
from lrm.fitting import predict
from lrm.models import LatentRewardModel
from lrm.report_run import open_run

runner = CliRunner(env={"COLUMNS": "300"})
TINY = ["--count", "48", "--steps", "12", "--size", "32", "--batch-size", "16"]
REWARD = "jpeg-incompressibility"


def error_line(result) -> str:
    """The one `Error: ...` line of a refused command (exit code 2, no traceback)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _encode(path, count, seed):
    result = runner.invoke(app, ["encode", f"procedural:{count}", "--frames", "1", "--size", "32", "--seed", str(seed),
                                 "--out", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "jpeg"
    result = runner.invoke(app, ["fit", REWARD, *TINY, "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    return run


def test_other_store_is_scored_on_every_row_with_baselines_from_the_runs_training_rows(run, tmp_path):
    other = _encode(tmp_path / "other", 30, seed=7)
    result = runner.invoke(app, ["report", str(run), "--store", str(other), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval-other" / "metrics.json").read_text())
    fitted = open_run(run)
    assert metrics["n_val"] == metrics["surrogate"]["n"] == 30  # every row, not a split of it
    assert metrics["n_train"] == len(fitted.train_rows) == json.loads((run / "metrics.json").read_text())["n_train"]
    assert metrics["fitted_on"] == str(fitted.store.path) and metrics["store"] == str(other)
    assert metrics["scope"].startswith(f"Out of distribution: scored on every row of {other} (30 rows)")
    assert "Out of distribution" in result.output and "trust —" in result.output

    # Independent wiring of the same judgement: ridge fitted on the run's training rows, scored on all 30 rows.
    target = LatentStore.open(other)
    true = target.label(REWARD)
    train_labels = fitted.store.label(REWARD)[fitted.train_rows]
    x_train = features_of([fitted.store.latents(fitted.train_rows)])
    x_other = features_of([target.latents(np.arange(len(target)))])
    model = LatentRewardModel.from_pretrained(run / "model")
    expected = fit_baselines(x_train, train_labels, x_other, true, model.label_transform)
    assert metrics["baselines"]["ridge"]["r2"] == pytest.approx(expected["ridge"]["r2"], rel=1e-6)
    assert metrics["baselines"]["constant"]["mae"] == pytest.approx(np.abs(true - train_labels.mean()).mean(), rel=1e-5)
    surrogate = fidelity_metrics(predict(model, target, np.arange(len(target))), true)
    assert metrics["surrogate"]["spearman"] == pytest.approx(surrogate["spearman"], abs=1e-9)
    page = (run / "eval-other" / "report.html").read_text()
    assert page.index("Verdict:") < page.index("Out of distribution") < page.index("<th>fact</th>")
    assert "another resolution" not in metrics["scope"]  # both stores are 32 px


def test_a_store_of_another_resolution_is_judged_and_says_so(run, tmp_path):
    """The surrogate reads latents of any size, so a 64-px store of a 32-px fit is scored; the scope says that this
    also changes the resolution (it passed silently)."""
    result = runner.invoke(app, ["encode", "procedural:12", "--frames", "1", "--size", "64", "--seed", "9",
                                 "--out", str(tmp_path / "big"), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(run), "--store", str(tmp_path / "big"), "--quiet"])
    assert result.exit_code == 0, result.output
    scope = json.loads((run / "eval-big" / "metrics.json").read_text())["scope"]
    assert scope.endswith("Its latents are 8 x 8, the fitted ones 4 x 4: this also judges the surrogate at another "
                          "resolution than it learnt.")


def test_without_a_store_the_report_is_the_fits_own_held_out_report(run, tmp_path):
    before = json.loads((run / "metrics.json").read_text())
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "again"), "--quiet"])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["n_val"] == before["n_val"] and again["n_train"] == before["n_train"]
    assert again["surrogate"]["spearman"] == pytest.approx(before["surrogate"]["spearman"], abs=1e-9)
    assert again["baselines"]["ridge"]["r2"] == pytest.approx(before["baselines"]["ridge"]["r2"], abs=1e-9)
    assert again["preset"] == before["preset"] and again["steps"] == before["steps"]  # the fit's facts are kept
    assert again["scope"].startswith("In distribution: scored on the")
    assert (tmp_path / "again" / "figures" / "learning_curves.png").is_file()  # history read from metrics.jsonl


@pytest.mark.parametrize("label_args, differs", [
    (["jpeg-incompressibility=colorfulness"], "reward: saved 'colorfulness', now 'jpeg-incompressibility'"),
    (["jpeg-incompressibility=jpeg-incompressibility", "-o", "frames=1"], "options.frames: saved 1, now None"),
    (["jpeg-incompressibility=jpeg-incompressibility", "--pixels", "decoded"], "pixels: saved 'decoded', now 'source'"),
])
def test_a_column_computed_otherwise_is_refused_with_the_fix(run, tmp_path, label_args, differs):
    other = _encode(tmp_path / "refused", 8, seed=3)
    labelled = runner.invoke(app, ["label", str(other), *label_args])
    assert labelled.exit_code == 0, labelled.output
    message = error_line(runner.invoke(app, ["report", str(run), "--store", str(other), "--quiet"]))
    assert f"column '{REWARD}' of {other} was computed otherwise" in message and differs in message
    assert f"lrm store drop-label {other} {REWARD}" in message
    assert not (run / "eval-refused").exists()


def test_the_runs_own_store_and_a_folder_that_is_no_run_are_refused(run, tmp_path):
    own = error_line(runner.invoke(app, ["report", str(run), "--store", str(run / "store")]))
    assert "is the store" in own and "without --store" in own
    # another folder of the same procedural clips (the seed, size and frames the fit's store took; fewer of them)
    copy = _encode(tmp_path / "same-clips", 16, seed=0)
    same = error_line(runner.invoke(app, ["report", str(run), "--store", str(copy), "--quiet"]))
    assert "holds the same procedural clips as the store" in same and "--seed 1" in same
    assert "not a run of `lrm fit`" in error_line(runner.invoke(app, ["report", str(tmp_path), "--quiet"]))
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("store"))
    config = json.loads((moved / "config.json").read_text())
    config["store"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    assert "put it back at that path" in error_line(runner.invoke(app, ["report", str(moved), "--quiet"]))


def test_a_store_of_clips_is_refused_before_labelling_for_a_surrogate_of_still_images(run, tmp_path):
    clips = tmp_path / "clips"
    result = runner.invoke(app, ["encode", "procedural:6", "--frames", "4", "--size", "32", "--seed", "7",
                                 "--out", str(clips), "--quiet"])
    assert result.exit_code == 0, result.output
    message = error_line(runner.invoke(app, ["report", str(run), "--store", str(clips), "--quiet"]))
    assert "holds clips of 4 frames" in message and "fitted on still images" in message and "--frames 1" in message
    assert not LatentStore.open(clips).labels  # refused before labelling (it used to fail inside sklearn after)


def test_a_text_surrogate_is_refused_on_a_store_without_its_text_embeddings(run, tmp_path):
    from lrm.models import build

    texty = tmp_path / "texty"
    shutil.copytree(run, texty, ignore=shutil.ignore_patterns("store", "eval-*"))
    saved = LatentRewardModel.from_pretrained(run / "model")
    model = build("text-image-xattn", saved.in_channels, text_dim=8)
    model.info.codec_settings, model.info.reward_name = saved.info.codec_settings, saved.info.reward_name
    model.info.text_encoder_id = "minilm-l6-v2"
    model.save_pretrained(texty / "model")
    other = _encode(tmp_path / "plain", 4, seed=5)  # no --text
    message = error_line(runner.invoke(app, ["report", str(texty), "--store", str(other), "--quiet"]))
    assert "reads prompts embedded by minilm-l6-v2" in message
    assert f"store {other} holds no text embeddings" in message and "--text minilm-l6-v2" in message


def test_other_commands_folders_say_what_they_are_and_where_their_report_is(run, tmp_path):
    distill = tmp_path / "student"
    distill.mkdir()
    (distill / "config.json").write_text(json.dumps({"job": {"teacher": "t", "steps": 2}}))
    (distill / "report.html").write_text("<html></html>")
    line = error_line(runner.invoke(app, ["report", str(distill)]))
    assert "a student run of `lrm distill`" in line and str(distill / "report.html") in line
    assert "takes the run folders of `lrm fit` and `lrm tune`" in line and "damaged" not in line
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"teacher": {"steps": 2}}))
    line = error_line(runner.invoke(app, ["report", str(teacher)]))
    assert "a teacher run of `lrm teacher train`" in line and "damaged" not in line
    line = error_line(runner.invoke(app, ["report", str(run / "model")]))  # the surrogate's own folder
    assert "saved surrogate" in line and f"lrm report {run}" in line
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "config.json").write_text(json.dumps({"format": "lrm-denoiser", "preset": "x"}))
    assert "saved generator" in error_line(runner.invoke(app, ["report", str(generator)]))


def test_an_unfinished_fit_is_named_with_the_command_that_resumes_it(run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    shutil.rmtree(unfinished / "model")  # killed before the model was saved
    line = error_line(runner.invoke(app, ["report", str(unfinished)]))
    assert "unfinished fit" in line and "re-run the same `lrm fit` to resume it" in line
