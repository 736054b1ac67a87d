"""`lrm study overopt --launch`: the regularisers' tuning runs, each run's study and one comparison."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lrm.studies.compare import ARM_KEYS, COMPARE_KEYS
from lrm.studies.launch import REGULARISERS, LaunchConfig, parse_seeds
from lrm.studies.report import MONITOR_DISTANCES, STOP_COLUMNS
from test_hooks import words_runs  # noqa: F401  (a pytest fixture)
from test_regularisers import saved_surrogates
from test_studies import cli_app

TINY = ["--prompt", "a red circle", "--prompt", "a blue square", "--steps", "2", "--eval-every", "1",
        "--batch-size", "2", "--per-prompt", "2", "--lr", "1e-3"]


def test_launch_two_regularisers_writes_each_run_its_study_and_one_comparison(words_runs):  # noqa: F811
    a, b = saved_surrogates(words_runs)
    out = words_runs / "study"
    args = ["study", "overopt", "jpeg-incompressibility", "--launch", "--student", str(words_runs / "student"),
            "--regularisers", "kl,ensemble", "--seeds", "3", "--surrogate", a, "--ensemble", a, "--ensemble", b,
            "--kl-weight", "0.5", *TINY, "--out", str(out)]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    for arm in ("kl", "ensemble"):
        run = out / "runs" / f"{arm}-seed3"
        facts = json.loads((run / "records.json").read_text())
        assert facts["config"]["seed"] == 3 and facts["config"]["steps"] == 2
        assert (run / "study-overopt" / "metrics.json").is_file()
    kl = json.loads((out / "runs" / "kl-seed3" / "records.json").read_text())
    assert kl["config"]["kl_weight"] == 0.5 and "kl" in kl["losses"][0]
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert tuple(metrics) == COMPARE_KEYS and metrics["regularisers"] == ["kl", "ensemble"]
    assert metrics["seeds"] == {"kl": [3], "ensemble": [3]} and metrics["launch"]["kl_weight"] == 0.5
    for arm, values in metrics["arms"].items():
        assert tuple(values) == ARM_KEYS
        records = json.loads((out / "runs" / f"{arm}-seed3" / "records.json").read_text())["records"]
        golds = [r["gold"] for r in records]
        # one seed: the arm's curve is that run's, and so is its peak
        assert values["curves"]["gold"] == pytest.approx(golds) and values["curves"]["steps"] == [0, 1, 2]
        assert values["peak"]["gold"] == pytest.approx(max(golds)) == values["seed_peaks"][0]["gold"]
        assert values["curves"]["gold_std"] == [0.0, 0.0, 0.0]
        assert set(MONITOR_DISTANCES) <= set(values["curves"]) and values["curves"]["eps_distance"][0] == 0
        assert values["curves"]["eps_distance"][-1] > 0
        assert all(tuple(s) == STOP_COLUMNS for s in values["stops"])
        assert set(values["grids"]) == {"start", "peak", "end"}
    assert metrics["arms"]["ensemble"]["curves"]["disagreement"][0] > 0
    assert metrics["arms"]["kl"]["curves"]["disagreement"] == [None, None, None]  # no ensemble: not measured
    # the disagreement rule reads the ensemble arm's recorded disagreement and is not applied without one
    rule = {arm: {s["rule"]: s for s in values["stops"]}["disagreement"] for arm, values in metrics["arms"].items()}
    assert rule["ensemble"]["applied"] and not rule["kl"]["applied"]
    assert metrics["verdict"].startswith("best gold peak: ") and metrics["verdict"] in result.output
    page = (out / "report.html").read_text()
    assert page.index("best gold peak") < page.index("Early stopping by regulariser")
    assert page.count("data:image/png;base64,") == 2 + 2 * 3  # two figures, start / peak / end grids per arm
    # a second launch reuses the finished runs
    again = CliRunner().invoke(cli_app(), args)
    assert again.exit_code == 0 and "lrm tune" not in again.output, again.output
    # and refuses one of other settings instead of mixing it in
    other = CliRunner().invoke(cli_app(), [*args, "--steps", "3"])
    assert other.exit_code == 2 and "holds a tuning run with steps 2, not 3" in other.output, other.output


def test_launch_refuses_bad_input_with_one_line(words_runs, tmp_path):  # noqa: F811
    student = ["--student", str(words_runs / "student")]
    a, b = saved_surrogates(words_runs)
    base = ["study", "overopt", "jpeg-incompressibility", "--launch"]
    cases = [
        ([*base, *student, "--regularisers", "none,l2", "--surrogate", a, "--out", str(tmp_path)],
         "unknown regulariser(s) ['l2']; choose from none,kl,concurrent,ensemble"),
        ([*base, "--out", str(tmp_path)], "--launch needs a generator to tune: give --student RUN"),
        ([*base, *student, "--teacher", str(words_runs / "teacher"), "--out", str(tmp_path)],
         "--launch needs a generator to tune"),
        ([*base, *student, "--regularisers", "none", "--out", str(tmp_path)], "give --surrogate DIR"),
        ([*base, *student, "--regularisers", "ensemble", "--ensemble", a, "--out", str(tmp_path)],
         "two or more fitted surrogates"),
        ([*base, *student, "--regularisers", "concurrent", "--seeds", "0,x", "--out", str(tmp_path)],
         "seeds must be integers"),
        ([*base, *student, "--regularisers", "concurrent"], "--out DIR"),
        ([*base, *student, "--run", str(tmp_path), "--out", str(tmp_path)], "give one of them"),
        (["study", "overopt"], "give --run RUN"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli_app(), args)
        assert result.exit_code == 2, (args, result.output)
        flat = " ".join(result.output.replace("│", " ").split())  # typer boxes and wraps usage errors
        assert message in flat and "Traceback" not in result.output, (args, result.output)
    assert not (tmp_path / "runs").exists()  # refused before any run


def test_launch_config_and_cli_defaults_agree():
    from lrm.cli import study as cli

    config = LaunchConfig()
    assert cli.LAUNCH_DEFAULTS == {"regularisers": ",".join(config.regularisers),
                                   "seeds": ",".join(map(str, config.seeds)), "kl_weight": config.kl_weight,
                                   "disagreement_weight": config.disagreement_weight}
    assert config.regularisers == REGULARISERS and parse_seeds(" 0, 2 ") == (0, 2)
    with pytest.raises(ValueError, match="must not repeat"):
        LaunchConfig(seeds=(1, 1))
