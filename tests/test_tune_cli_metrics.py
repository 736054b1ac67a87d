"""`lrm tune` with users' metrics and non-finite rewards: --kind/--input, the summary's counts of non-finite rewards and
skipped updates, an error when every gold reward was non-finite, a concurrent surrogate that moves the student only
once it has learnt from a finite label, default output folders and the learning rates' range (tiny in-process
models, CPU, offline)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lrm.tuning import LRM, Distiller, DistillConfig, LRMFineTune, Step, TrueReward, student_sample, surrogate_role
from lrm.tuning.roles import STUDENT
from test_hooks import SHAPE, TUNE_ARGS, Brightness, Recording, batch, cli_app, codec, student_roles, surrogate
from test_hooks import words_runs  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
runner = CliRunner(env={"COLUMNS": "300"})

METRICS = '''
import torch


def all_nan(pixels):
    return torch.full((pixels.shape[0],), float("nan"))


def sometimes_nan(pixels):
    out = pixels.mean(dim=(1, 2, 3, 4)).clone()
    out[::2] = float("nan")
    return out


def bright(pixels):
    return pixels.mean(dim=(1, 2, 3, 4))


def bright_uint8(frames):  # (T, H, W, 3) uint8: numpy only
    return float(frames.astype(float).mean())
'''


@pytest.fixture
def metric(words_runs):  # noqa: F811
    path = words_runs / "my_metric.py"
    path.write_text(METRICS)
    return lambda fn: f"{path}:{fn}"


def tune(words_runs, *args):  # noqa: F811
    return runner.invoke(cli_app(), ["tune", *args, "--student", str(words_runs / "student"), *TUNE_ARGS])


# ---------------------------------------------------------------- non-finite rewards


@pytest.mark.parametrize("method", [["--method", "ddpo"], ["--concurrent"]])
def test_a_metric_non_finite_everywhere_ends_with_an_error_and_never_moves_the_student(words_runs, metric, method):
    out = words_runs / "tuned"
    result = tune(words_runs, metric("all_nan"), *method, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "non-finite rewards (NaN or Inf, left out): 4 in training, 12 in the evaluations" in result.output
    assert "Error: reward" in result.output and "all_nan' was non-finite (NaN or Inf) on every sample" in result.output
    assert "tuned student" not in result.output
    facts = json.loads((out / "records.json").read_text())
    assert facts["skipped_updates"] == (2 if method == ["--method", "ddpo"] else 4)  # student 2 (and lrm 2)
    assert "updates skipped" in result.output and "student 2" in result.output
    # the untrained surrogate's gradient never reached the student: no update, no loss logged
    assert [r["distance"] for r in facts["records"]] == [0.0, 0.0, 0.0]
    assert facts["losses"] == [{}, {}]


def test_the_summary_counts_non_finite_rewards_when_there_are_some(words_runs, metric):
    result = tune(words_runs, metric("sometimes_nan"), "--method", "ddpo", "--out", str(words_runs / "tuned"))
    assert result.exit_code == 0, result.output
    assert "non-finite rewards (NaN or Inf, left out): 2 in training, 6 in the evaluations" in result.output
    assert "tuned student" in result.output
    # a finite metric: nothing to say
    result = tune(words_runs, metric("bright"), "--method", "ddpo", "--out", str(words_runs / "bright"))
    assert result.exit_code == 0, result.output
    assert "non-finite" not in result.output and "skipped" not in result.output


def test_a_concurrent_surrogate_moves_the_student_only_after_a_step_on_finite_labels():
    roles = student_roles()
    lrm = surrogate()
    roles.add(surrogate_role(lrm, roles.module(STUDENT), SHAPE, concurrent=True))
    term = LRMFineTune(TrueReward(codec(), Brightness()))
    b, g = batch(), torch.Generator().manual_seed(0)
    x_hat = student_sample(roles.module(STUDENT), b, SHAPE, 1, g)
    assert term.generator_loss(Step(roles, b, x_hat, g)).shape == (0,)  # never trained: nothing to follow
    aux = term.auxiliary_loss(LRM, Step(roles, b, x_hat.detach(), g))
    aux.mean().backward()
    roles[LRM].optimizer.step()
    assert term.generator_loss(Step(roles, b, x_hat, g)).shape == (2,)
    # a surrogate warm-started from a fit, and a frozen fitted one, are followed from the start
    for concurrent in (True, False):
        roles = student_roles()
        fitted = surrogate()
        fitted.set_label_stats(0.5, 0.1)
        roles.add(surrogate_role(fitted, roles.module(STUDENT), SHAPE, concurrent=concurrent))
        term = LRMFineTune(TrueReward(codec(), Brightness()) if concurrent else None)
        assert term.generator_loss(Step(roles, b, x_hat, g)).shape == (2,)


def test_the_trainer_skips_and_counts_student_updates_on_a_surrogate_never_trained_on_a_finite_label():
    roles = student_roles()
    roles.add(surrogate_role(surrogate(), roles.module(STUDENT), SHAPE, concurrent=True))
    term = LRMFineTune(TrueReward(codec(), Recording(Brightness(), nan_rows=range(6))))
    distiller = Distiller(roles, [term], DistillConfig(latent_shape=SHAPE, student_steps=1))
    start = {k: v.clone() for k, v in roles.module(STUDENT).state_dict().items()}
    for s in range(2):
        distiller.train_step([batch(b=3, seed=s)])
    assert distiller.updates == {STUDENT: 0, LRM: 0} and distiller.skipped == {STUDENT: 2, LRM: 2}
    assert all(torch.equal(v, roles.module(STUDENT).state_dict()[k]) for k, v in start.items())


# ---------------------------------------------------------------- a user's metric: --kind / --input, direct


def test_kind_and_input_describe_a_users_metric(words_runs, metric):
    out = words_runs / "tuned"
    plain = tune(words_runs, metric("bright_uint8"), "--method", "ddpo", "--out", str(words_runs / "plain"))
    assert plain.exit_code == 2 and "astype" in plain.output, plain.output  # a tensor reached a numpy metric
    result = tune(words_runs, metric("bright_uint8"), "--method", "ddpo", "--kind", "image", "--input", "uint8",
                  "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "records.json").read_text())["nonfinite_rewards"] == 0
    built_in = tune(words_runs, "colorfulness", "--method", "ddpo", "--kind", "image", "--out", str(out))
    assert built_in.exit_code == 2 and "--kind/--input describe your own metric" in built_in.output
    shown = runner.invoke(cli_app(), ["tune", "--help"]).output
    assert "--kind" in shown and "--input" in shown and "For your own metric: tensor or uint8." in shown


def test_direct_with_an_undeclared_user_metric_says_how_to_declare_it(words_runs, metric):
    result = tune(words_runs, metric("bright"), "--method", "direct", "--out", str(words_runs / "tuned"))
    assert result.exit_code == 2
    assert "-o differentiable=true" in result.output


# ---------------------------------------------------------------- default folders, learning rates


def test_default_out_folders_keep_the_function_and_the_full_reward_name():
    from lrm.cli.tune import default_out_name

    names = {default_out_name(r, "ddpo") for r in ("my_metric.py:bright", "my_metric.py:scalar", "hpsv2", "hpsv2.1")}
    assert names == {"tune-my_metric-bright-ddpo", "tune-my_metric-scalar-ddpo", "tune-hpsv2-ddpo",
                     "tune-hpsv2.1-ddpo"}
    assert default_out_name("path/to/my_metric.py:bright", "lrm") == "tune-my_metric-bright-lrm"
    assert default_out_name("jpeg-compressibility", "lrm") == "tune-jpeg-compressibility-lrm"  # as before: resumes


def test_a_run_in_the_folder_earlier_versions_named_still_resumes(tmp_path):
    from lrm.cli.tune import default_out

    assert default_out(tmp_path, "hpsv2.1", "lrm") == tmp_path / "tune-hpsv2.1-lrm"  # nothing there yet
    earlier = tmp_path / "tune-my_metric-lrm"  # tune-<stem>-METHOD: every function of my_metric.py shared it
    earlier.mkdir()
    (earlier / "config.json").write_text(json.dumps({"reward": "my_metric.py:bright"}))
    assert default_out(tmp_path, "my_metric.py:bright", "lrm") == earlier  # its run: resumed where it is
    assert default_out(tmp_path, "my_metric.py:scalar", "lrm") == tmp_path / "tune-my_metric-scalar-lrm"
    (tmp_path / "tune-my_metric-bright-lrm").mkdir()
    assert default_out(tmp_path, "my_metric.py:bright", "lrm") == tmp_path / "tune-my_metric-bright-lrm"


def test_learning_rates_must_be_positive_as_the_help_says(words_runs):
    shown = runner.invoke(cli_app(), ["tune", "--help"]).output
    for flag in ("--lr ", "--surrogate-lr"):
        (line,) = [line for line in shown.splitlines() if f"{flag}" in line]
        assert "x>=0.0" not in line and "rate (> 0)" in line
    for flag in ("--lr", "--surrogate-lr"):
        result = runner.invoke(cli_app(), ["tune", "colorfulness", "--student", str(words_runs / "student"),
                                           "--concurrent", flag, "0"])
        assert result.exit_code == 2 and "must be a finite number > 0, got 0.0" in result.output
