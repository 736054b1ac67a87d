"""Over-optimisation studies (lrm.studies, `lrm study overopt`): the Gao fit, the peak, the stopping rules, the
KL-like distance, and the study of a tiny tuning run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_hooks import TUNE_ARGS, words_runs  # noqa: F401  (words_runs: a pytest fixture)
from typer.testing import CliRunner

from lrm.studies.overopt import (EPS_DISTANCE, PARAMETER_DISTANCE, RULES, Curves, StudyConfig, analyse, distance_axis,
                                 gao_curve, gao_fit, gold_peak)


def synthetic(n: int = 16, fidelity_drop: bool = True) -> Curves:
    """Gold on Gao's curve (alpha 2, beta 1.5: peak at d* = exp(1/3) ~ 1.40), the proxy rising with d, the
    fidelity falling linearly from 0.95 to 0.30; one evaluation every 20 steps."""
    d = np.linspace(0.0, 3.0, n)
    gold = 0.5 + gao_curve(d, 2.0, 1.5)
    fidelity = np.linspace(0.95, 0.30, n) if fidelity_drop else np.full(n, np.nan)
    disagreement = np.linspace(0.1, 0.4, n)  # an ensemble parting as the student moves: 0.1 + 0.02 i
    return Curves(np.arange(n) * 20, gold, 0.5 + 3.0 * d, d, np.linspace(5.0, 2.0, n), fidelity, disagreement)


# ---------------------------------------------------------------- analysis


def test_gao_curve_is_gao_et_als_rl_form_by_hand():
    """Gao et al. (2023), the RL form: R(d) = d (alpha - beta log d); at d = 1 it is alpha, at d = e e (alpha - beta),
    and its maximum sits at d* = exp(alpha / beta - 1) with value beta d*."""
    e = math.e
    np.testing.assert_allclose(gao_curve([0.0, 1.0, e, e**2], 2.0, 1.5), [0.0, 2.0, e * 0.5, e**2 * -1.0])
    d_star = math.exp(2.0 / 1.5 - 1)
    near = gao_curve(np.array([0.99, 1.0, 1.01]) * d_star, 2.0, 1.5)
    assert near[1] == pytest.approx(1.5 * d_star) and near[1] > max(near[0], near[2])


@pytest.mark.parametrize("alpha,beta", [(2.0, 1.5), (0.3, 0.1), (-0.5, 0.2)])
def test_gao_fit_recovers_alpha_and_beta(alpha, beta):
    rng = np.random.default_rng(0)
    d = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 4.0, 40))])
    gold = 1.0 + gao_curve(d, alpha, beta) + rng.normal(0, 1e-3, d.size)
    fit = gao_fit(d, gold, distance_name="d")
    assert fit.alpha == pytest.approx(alpha, abs=5e-3) and fit.beta == pytest.approx(beta, abs=5e-3)
    assert fit.points == 40 and fit.rmse < 3e-3
    assert fit.d_star == pytest.approx(math.exp(alpha / beta - 1), rel=0.05)
    assert fit.fitted[0] == pytest.approx(gold[0]) and fit.d[-1] == pytest.approx(d.max())


def gao_records(alpha: float, beta: float, with_eps: bool = True) -> dict:
    """records.json facts of 21 evaluations whose gold lies on Gao's curve in d = sqrt(eps_distance) (with_eps) or,
    for records written before the monitor measured eps_distance, in the parameter distance."""
    steps = np.arange(21) * 10
    d = np.linspace(0.0, 3.0, 21)  # the d the gold follows
    records = []
    for step, dd in zip(steps, d):
        record = {"step": int(step), "gold": 1.0 + float(gao_curve(np.array([dd]), alpha, beta)[0]), "proxy": 1.0,
                  "diversity": 2.0, "nonfinite": 0}
        if with_eps:  # the parameter distance grows otherwise (linearly in the step, not as d)
            record.update(distance=float(1e-4 * step), eps_distance=float(dd ** 2))
        else:
            record.update(distance=float(dd))
        records.append(record)
    return {"reward": "colorfulness", "method": "lrm", "records": records}


@pytest.mark.parametrize("alpha,beta", [(2.0, 1.5), (0.4, 0.3)])
def test_the_study_fits_gold_against_the_square_root_of_the_eps_distance(alpha, beta):
    curves = Curves.from_records(gao_records(alpha, beta))
    axis = distance_axis(curves)
    assert axis.measure == EPS_DISTANCE and np.allclose(axis.values, np.linspace(0.0, 3.0, 21))
    study = analyse(curves, StudyConfig(distance_budget=1.5))
    fit = study.fit
    assert fit.distance == EPS_DISTANCE and fit.points == 20
    assert fit.alpha == pytest.approx(alpha, abs=1e-6) and fit.beta == pytest.approx(beta, abs=1e-6)
    assert fit.d_star == pytest.approx(math.exp(alpha / beta - 1), rel=1e-6)
    # the distance rule reads the same d: sqrt(eps) = 0.15 i reaches 1.5 at i = 10 (step 100); the parameter
    # distance (1e-3 i) never would
    stop = {s.rule: s for s in study.stops}["distance"]
    assert stop.fired and stop.step == 100 and stop.condition == "distance d >= 1.5"


def test_records_without_eps_distance_fall_back_to_the_parameter_distance():
    old = Curves.from_records(gao_records(2.0, 1.5, with_eps=False))
    assert np.isnan(old.eps_distance).all() and distance_axis(old).measure == PARAMETER_DISTANCE
    fit = analyse(old).fit
    assert fit.distance == PARAMETER_DISTANCE
    assert fit.alpha == pytest.approx(2.0, abs=1e-6) and fit.beta == pytest.approx(1.5, abs=1e-6)
    # an evaluation without eps_distance among ones with it: one measure for the whole curve, the parameter one
    facts = gao_records(2.0, 1.5)
    del facts["records"][3]["eps_distance"]
    mixed = Curves.from_records(facts)
    assert distance_axis(mixed).measure == PARAMETER_DISTANCE
    assert np.array_equal(distance_axis(mixed).values, mixed.distance)


def test_gao_fit_of_a_lower_is_better_reward_and_of_too_few_points():
    d = np.linspace(0, 2, 9)
    fit = gao_fit(d, 3.0 - gao_curve(d, 1.0, 0.8), distance_name="d", higher_is_better=False)  # the gold falls: it improves
    assert fit.alpha == pytest.approx(1.0) and fit.beta == pytest.approx(0.8)
    assert np.allclose(fit.fitted, 3.0 - gao_curve(fit.d, 1.0, 0.8))
    few = gao_fit(np.array([0.0, 0.1]), np.array([1.0, 1.2]), distance_name="d")
    assert few.points == 1 and math.isnan(few.alpha) and np.isnan(few.fitted).all()


def test_the_peak_and_each_stopping_rule_on_a_synthetic_curve():
    curves = synthetic()
    study = analyse(curves, StudyConfig(fidelity_threshold=0.7, distance_budget=1.0))
    # the gold peaks at the evaluation nearest d* = 1.40: d = 1.4 (index 7, step 140)
    assert (study.peak.index, study.peak.step) == (7, 140)
    assert study.peak.gold == pytest.approx(curves.gold.max())
    assert study.proxy_keeps_rising is True
    stops = {s.rule: s for s in study.stops}
    assert list(stops) == list(RULES)
    # (a) fidelity 0.95 - 0.65 i / 15 < 0.7 first at i = 6 (0.69)
    assert stops["fidelity"].step == 120 and stops["fidelity"].fired
    # averaged over 3 evaluations: 0.95 - 0.65 (i - 1) / 15 < 0.7 first at i = 7
    assert {s.rule: s for s in analyse(curves, StudyConfig(fidelity_window=3)).stops}["fidelity"].step == 140
    # (b) gold falls from index 8 on; against 2 measurements before, the first fall is at index 9 (vs 7)
    assert stops["divergence"].step == 180
    # (c) d = 0.2 i reaches 1.0 at i = 5
    assert stops["distance"].step == 100
    # (d) 0.1 + 0.02 i reaches 1.5 x 0.1 at i = 3 (i = 2.5 exactly); 3 x 0.1 at i = 10
    assert stops["disagreement"].step == 60
    assert {s.rule: s for s in analyse(curves, StudyConfig(disagreement_factor=3)).stops}["disagreement"].step == 200
    for stop in study.stops:
        gold = curves.gold[stop.step // 20]
        assert stop.gold == pytest.approx(gold)
        assert stop.share_of_gain == pytest.approx((gold - curves.gold[0]) / (curves.gold.max() - curves.gold[0]))
        assert stop.share_of_peak == pytest.approx(gold / curves.gold.max())
        assert stop.steps_saved == 300 - stop.step
    best = max(study.stops, key=lambda s: s.gold)  # the fidelity rule: 99% of the peak
    assert study.verdict.startswith("gold peaks at step 140")
    assert "proxy keeps rising" in study.verdict
    assert f"keeps {best.share_of_peak:.0%} of the peak gold, {best.share_of_gain:.0%} of its gain" in study.verdict
    assert best.condition in study.verdict


def test_a_stop_below_the_start_is_said_so_not_as_a_huge_negative_share_of_a_tiny_gain():
    # a 3-step run gained 1e-4 and the verdict read "-2899% of its gain over the start"
    steps = np.array([0, 10, 20, 30])
    curves = Curves(steps, np.array([1.0, 1.0001, 0.5, 0.4]), np.array([1.0, 2.0, 3.0, 4.0]),
                    np.array([0.0, 0.1, 0.2, 0.3]), np.full(4, 2.0), np.array([0.9, 0.9, 0.5, 0.4]))
    study = analyse(curves, StudyConfig())
    fired = [s for s in study.stops if s.fired]
    assert fired and all(s.share_of_gain < -1000 for s in fired)
    assert "below the start" in study.verdict and "of its gain" not in study.verdict


def test_the_comparison_verdict_names_a_stopping_rule_for_a_reward_below_zero():
    # shares of the peak are undefined for gold <= 0 (ImageReward): the verdict named no rule
    from lrm.studies.compare import Arm, comparison_verdict

    curves = synthetic()
    shifted = Curves(curves.steps, curves.gold - 5.0, curves.proxy, curves.distance, curves.diversity,
                     curves.fidelity)
    study = analyse(shifted, StudyConfig())
    arm = Arm("none", [], [0], shifted, np.zeros_like(shifted.gold), {}, study, [study.peak])
    verdict = comparison_verdict([arm])
    assert "stop when" in verdict and "against the peak's" in verdict


def test_rules_that_never_fire_or_cannot_apply():
    curves = synthetic(fidelity_drop=False)
    rising = Curves(curves.steps, curves.distance.copy(), np.full_like(curves.gold, np.nan), curves.distance,
                    curves.diversity, curves.fidelity)  # gold rises to the end, no proxy, no fidelity
    study = analyse(rising, StudyConfig(distance_budget=99.0))
    assert study.peak.index == len(rising.steps) - 1 and study.proxy_keeps_rising is None
    stops = {s.rule: s for s in study.stops}
    assert not stops["fidelity"].applied and "no per-evaluation surrogate fidelity" in stops["fidelity"].note
    assert not stops["divergence"].applied and "no proxy" in stops["divergence"].note
    assert stops["distance"].applied and not stops["distance"].fired
    assert stops["distance"].step == 300 and stops["distance"].steps_saved == 0
    assert not stops["disagreement"].applied and "no ensemble" in stops["disagreement"].note
    assert "no peak within the run" in study.verdict and "no stopping rule fired" in study.verdict
    no_budget = {s.rule: s for s in analyse(rising).stops}["distance"]
    assert not no_budget.applied and no_budget.step is None


def test_a_lower_is_better_reward_peaks_at_its_lowest_gold():
    curves = synthetic()
    flipped = Curves(curves.steps, -curves.gold, -curves.proxy, curves.distance, curves.diversity, curves.fidelity,
                     curves.disagreement)
    assert gold_peak(flipped, higher_is_better=False).index == gold_peak(curves).index
    a, b = analyse(curves, StudyConfig()), analyse(flipped, StudyConfig(higher_is_better=False))
    assert [s.step for s in a.stops] == [s.step for s in b.stops]
    assert b.proxy_keeps_rising is True


def test_curves_from_records_sort_steps_and_read_missing_values_as_nan():
    facts = {"records": [{"step": 2, "gold": 1.0, "proxy": None, "distance": 0.1, "diversity": 2.0},
                         {"step": 0, "gold": 0.5, "proxy": float("nan"), "distance": 0.0, "diversity": 3.0,
                          "fidelity": 0.9}]}
    curves = Curves.from_records(facts)
    assert curves.steps.tolist() == [0, 2] and curves.gold.tolist() == [0.5, 1.0]
    assert np.isnan(curves.proxy).all() and curves.fidelity[0] == 0.9 and np.isnan(curves.fidelity[1])
    with pytest.raises(ValueError, match="no evaluation records"):
        Curves.from_records({"records": []})
    with pytest.raises(ValueError, match="integer 'step'"):
        Curves.from_records({"records": [{"gold": 1.0}, 3]})


def test_read_run_takes_the_direction_from_the_reward_spec(tmp_path):
    from lrm.studies.runs import read_run

    records = [{"step": s, "gold": g, "proxy": p, "distance": 0.1 * s, "diversity": 2.0, "nonfinite": 0}
               for s, g, p in [(0, 40.0, 40.0), (10, 30.0, 25.0), (20, 35.0, 10.0)]]
    (tmp_path / "records.json").write_text(json.dumps({"reward": "brisque", "method": "ddpo", "records": records,
                                                       "surrogate_fidelity": None}))
    run = read_run(tmp_path, "brisque")
    assert run.higher_is_better is False and run.surrogate_fidelity is None
    study = analyse(run.curves, StudyConfig(higher_is_better=False))
    assert study.peak.step == 10 and study.proxy_keeps_rising is True  # BRISQUE: lower is better
    stops = {s.rule: s for s in study.stops}
    assert stops["divergence"].step is not None and stops["divergence"].share_of_peak == pytest.approx(30 / 35)


def test_a_metric_tuned_lower_is_better_is_studied_and_reported_so(words_runs, tmp_path):  # noqa: F811
    """The direction is a fact of the run (records.json "higher_is_better", the loaded reward's, its options
    included): a user's metric tuned with -o higher_is_better=false was analysed as higher is better."""
    from lrm.studies.runs import read_run

    metric = tmp_path / "metric.py"
    metric.write_text("def brightness(pixels):\n    return pixels.float().mean(dim=(1, 2, 3, 4))\n")
    out = tmp_path / "tuned"
    tuned = CliRunner().invoke(cli_app(), ["tune", f"{metric}:brightness", "-o", "higher_is_better=false",
                                           "-o", "differentiable=true", "--method", "direct", "--student",
                                           str(words_runs / "student"), *TUNE_ARGS, "--out", str(out)])
    assert tuned.exit_code == 0, tuned.output
    facts = json.loads((out / "records.json").read_text())
    assert facts["higher_is_better"] is False
    assert "(lower is better)" in (out / "report.html").read_text()  # the tune report reads it too
    study = CliRunner().invoke(cli_app(), ["study", "overopt", "--run", str(out)])
    assert study.exit_code == 0, study.output
    metrics = json.loads((out / "study-overopt" / "metrics.json").read_text())
    golds = {r["step"]: r["gold"] for r in facts["records"]}
    assert metrics["higher_is_better"] is False and metrics["peak"]["gold"] == pytest.approx(min(golds.values()))
    # two evaluations after the start: the Gao fit's two parameters pass through both, and the page says so
    assert metrics["gao_fit"]["points"] == 2
    assert "Two points fit the two parameters exactly" in (out / "study-overopt" / "report.html").read_text()
    # the recorded fact wins over the registry; records without it keep the registry's (or a metric's default)
    (tmp_path / "brisque").mkdir()
    (tmp_path / "brisque" / "records.json").write_text(json.dumps({**facts, "reward": "brisque",
                                                                   "higher_is_better": True}))
    assert read_run(tmp_path / "brisque").higher_is_better is True
    del facts["higher_is_better"]
    (out / "records.json").write_text(json.dumps(facts))
    assert read_run(out).higher_is_better is True


def test_the_comparison_shows_and_records_the_first_seeds_grid_at_the_arms_peak_step(tmp_path):
    """metrics.json "peak" and the page's caption name the seed-mean curve's peak step; the grids (page and
    metrics.json) must be of that step too, not of the first seed's own peak."""
    import base64
    import io
    import re

    from PIL import Image

    from lrm.studies.compare import build_arm, write_comparison
    from lrm.studies.runs import read_run

    golds = {0: [1.0, 3.0, 2.0, 1.5, 1.0], 1: [1.0, 1.2, 1.4, 5.0, 1.0]}  # seed 0 peaks at 1; the mean at 3
    runs = []
    for seed, gold in golds.items():
        run = tmp_path / f"none-seed{seed}"
        records = [{"step": s, "gold": g, "proxy": g, "distance": 0.1 * s, "diversity": 1.0}
                   for s, g in enumerate(gold)]
        for step in range(len(gold)):
            (run / "evals" / f"step-{step}").mkdir(parents=True)
            png = io.BytesIO()
            Image.new("RGB", (2, 2), (seed * 100, step * 50, 0)).save(png, format="PNG")
            (run / "evals" / f"step-{step}" / "grid.png").write_bytes(png.getvalue())
        (run / "records.json").write_text(json.dumps({"reward": "colorfulness", "method": "lrm", "records": records}))
        runs.append(read_run(run))
    config = StudyConfig()
    out = write_comparison(tmp_path / "study", [build_arm("none", runs, [0, 1], config)], config, {})
    arm = json.loads((out / "metrics.json").read_text())["arms"]["none"]
    assert arm["peak"]["step"] == 3 and arm["seed_peaks"][0]["step"] == 1
    assert arm["grids"]["peak"] == str(tmp_path / "none-seed0" / "evals" / "step-3" / "grid.png")
    page = (out / "report.html").read_text()
    assert re.findall(r"gold peak \(step (\d+)\)", page)[0] == "3"
    shown = {step for step in range(5) if base64.b64encode((tmp_path / "none-seed0" / "evals" / f"step-{step}" /
                                                            "grid.png").read_bytes()).decode() in page}
    assert shown == {0, 3, 4}  # start, the arm's peak, end


# ---------------------------------------------------------------- distance


def test_eps_distance_is_zero_for_the_initial_model_and_grows_with_a_perturbation():
    from lrm.generators import build_dit
    from lrm.studies.distance import eps_distance

    torch.manual_seed(0)
    initial = build_dit("dit-xs", 4, 8)
    with torch.no_grad():
        for p in initial.parameters():
            p.add_(0.05 * torch.randn_like(p))
    text, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    shape = (1, 4, 8, 8)
    copy = build_dit("dit-xs", 4, 8)
    copy.load_state_dict(initial.state_dict())
    assert eps_distance(initial, initial, text, mask, latent_shape=shape) == 0.0
    assert eps_distance(copy, initial, text, mask, latent_shape=shape) == 0.0
    distances = []
    for scale in (1e-3, 1e-2):
        moved = build_dit("dit-xs", 4, 8)
        moved.load_state_dict(initial.state_dict())
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(scale * torch.randn_like(p))
        distances.append(eps_distance(moved, initial, text, mask, latent_shape=shape))
    assert 0 < distances[0] < distances[1]
    # the same shared latents whatever the model: the distance is symmetric
    assert eps_distance(initial, moved, text, mask, latent_shape=shape) == pytest.approx(distances[1], rel=1e-5)


# ---------------------------------------------------------------- lrm study overopt


def cli_app():
    import typer

    from lrm.cli.study import register
    from lrm.cli.tune import register as register_tune

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    register_tune(app)
    return app


@pytest.fixture
def tuned(words_runs):  # noqa: F811
    """A 4-step concurrent LRM tuning run of the tiny student (records at steps 0..4; the student moves from step 1
    on: step 0's update waits for the fresh surrogate's first step on finite labels)."""
    out = words_runs / "tuned"
    args = [*TUNE_ARGS, "--steps", "4"]  # the last --steps counts
    result = CliRunner().invoke(cli_app(), ["tune", "jpeg-incompressibility", "--student",
                                            str(words_runs / "student"), "--concurrent", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_lrm_study_overopt_writes_the_report_and_metrics_with_the_documented_keys(tuned, monkeypatch):
    from lrm.studies.report import METRIC_KEYS, STOP_COLUMNS

    out = tuned / "study"
    result = CliRunner().invoke(cli_app(), ["study", "overopt", "jpeg-incompressibility", "--run", str(tuned),
                                            "--out", str(out), "--distance-budget", "1e-9", "--eps-distance"])
    assert result.exit_code == 0, result.output
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text  # strict JSON
    metrics = json.loads(text)
    assert tuple(metrics) == METRIC_KEYS
    records = json.loads((tuned / "records.json").read_text())["records"]
    assert metrics["curves"]["steps"] == [r["step"] for r in records] == [0, 1, 2, 3, 4]
    # the monitor records the surrogate's fidelity on its own samples (Spearman vs gold), which the fidelity rule reads
    assert all(-1.0 <= r["fidelity"] <= 1.0 for r in records), records
    assert metrics["reward"] == "jpeg-incompressibility" and metrics["method"] == "lrm"
    golds = [r["gold"] for r in records]
    assert metrics["peak"]["gold"] == pytest.approx(max(golds))
    assert metrics["peak"]["step"] == records[int(np.argmax(golds))]["step"]
    assert [s["rule"] for s in metrics["stops"]] == list(RULES)
    assert all(tuple(s) == STOP_COLUMNS for s in metrics["stops"])
    distance = {s["rule"]: s for s in metrics["stops"]}["distance"]
    # the first student update (step 1: step 0's waits for the fresh concurrent surrogate's first step on finite
    # labels) moves the student past 1e-9
    assert distance["applied"] and distance["step"] == 2
    assert metrics["distance_measure"] == EPS_DISTANCE  # the monitor recorded eps_distance at every evaluation
    assert metrics["curves"]["d"] == pytest.approx([math.sqrt(r["eps_distance"]) for r in records])
    assert metrics["eps_distance_end"] > 0  # the tuned student's noise predictions left its start's
    for key in ("eps_distance", "latent_l2", "frechet"):  # and the monitor measured it along the way
        assert metrics["curves"][key][0] == pytest.approx(0, abs=1e-6) and metrics["curves"][key][-1] > 0, key
    assert metrics["verdict"] in result.output
    page = (out / "report.html").read_text()
    assert page.index(metrics["verdict"].split(";")[0]) < page.index("Early stopping")  # the verdict first
    assert page.count("data:image/png;base64,") == 6  # three figures and the start / gold peak / end grids
    assert f"gold peak (step {metrics['peak']['step']})" in page
    assert metrics["gao_fit"]["points"] == 3 and "Two points fit" not in page

    from lrm.cli import app as lazy  # through `lrm`'s lazy command table, as the lead registers it
    from lrm.cli.study import HELP

    monkeypatch.setitem(lazy.COMMANDS, "study", lazy.Command("lrm.cli.study", HELP))
    default = CliRunner().invoke(lazy.app, ["study", "overopt", "--run", str(tuned)])
    assert default.exit_code == 0, default.output
    assert json.loads((tuned / "study-overopt" / "metrics.json").read_text())["eps_distance_end"] is None


def test_lrm_study_overopt_refuses_a_folder_without_records_or_of_another_reward(tuned, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "records.json").write_text("{not json")
    for step in (0, 20, 40):  # a run of `lrm tune` stopped (Ctrl-C) before it wrote records.json
        (tmp_path / "stopped" / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
    (tmp_path / "stopped" / "config.json").write_text(json.dumps({"tune": {"steps": 300}, "reward": "jpeg-size"}))
    cases = [
        (["--run", str(tmp_path / "empty")], "holds no records.json"),
        (["--run", str(tmp_path / "missing")], "is not a folder"),
        (["--run", str(tmp_path / "broken")], "is not valid JSON"),
        (["jpeg-compressibility", "--run", str(tuned)], "tuned toward 'jpeg-incompressibility', not "
                                                         "'jpeg-compressibility'"),
        (["--run", str(tuned), "--distance-budget", "0"], "must be positive, got 0.0"),
        (["--run", str(tuned), "--fidelity-threshold", "5"], "give one in [-1, 1], got 5.0"),
        (["--run", str(tuned), "--out", str(tuned)], "holds a tuning run of `lrm tune`: the study would overwrite"),
        (["--run", str(tmp_path / "stopped")], "is an unfinished `lrm tune` run (newest checkpoint: step 40); finish "
                                               "it by re-running its `lrm tune` command, or end it there with the "
                                               "same command and --steps 40"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli_app(), ["study", "overopt", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_lrm_study_defaults_restate_the_library_and_import_no_torch():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from lrm.cli import study as cli

    config = StudyConfig()
    assert cli.DEFAULTS == {k: getattr(config, k) for k in cli.DEFAULTS}
    code = "import sys, lrm.cli.study; print(any(m in sys.modules for m in ('torch', 'numpy', 'matplotlib')))"
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": root, "PATH": os.environ.get("PATH", "")})
    assert done.stdout.strip() == "False"
