import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import r2_score

from lrm.fidelity import (CALIBRATION_SHARE, HIGH_SPEARMAN, LOW_SPEARMAN, MIN_R2, assess, calibration, features_of,
                          fidelity_by_noise, fidelity_metrics, fit_baselines, pairwise_accuracy,
                          pooled_latent_features, range_of, spearman_interval)


def brute_pairwise(pred, true):
    good = total = 0.0
    for i, j in itertools.combinations(range(len(pred)), 2):
        if true[i] == true[j]:
            continue
        total += 1
        dp = np.sign(pred[i] - pred[j])
        good += 1.0 if dp == np.sign(true[i] - true[j]) else (0.5 if dp == 0 else 0.0)
    return good / total


def test_metrics_match_independent_references():
    rng = np.random.default_rng(0)
    true = rng.normal(size=200)
    pred = true + 0.5 * rng.normal(size=200)
    m = fidelity_metrics(pred, true)
    assert m["r2"] == pytest.approx(r2_score(true, pred), abs=1e-9)
    assert m["spearman"] == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-12)
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, true)[0, 1], abs=1e-9)
    assert m["kendall"] == pytest.approx(stats.kendalltau(pred, true).statistic, abs=1e-12)
    assert m["mse"] == pytest.approx(np.mean((pred - true) ** 2))


def test_pairwise_accuracy_equals_brute_force_with_ties():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 5, size=40).astype(float)
    pred = rng.integers(0, 4, size=40).astype(float)
    assert pairwise_accuracy(pred, true) == pytest.approx(brute_pairwise(pred, true))


def test_perfect_and_constant_predictors():
    true = np.linspace(0, 1, 50)
    perfect = fidelity_metrics(true.copy(), true)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["r2"] == pytest.approx(1.0)
    assert perfect["pairwise_accuracy"] == pytest.approx(1.0)
    const = fidelity_metrics(np.full(50, true.mean()), true)
    assert const["r2"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(const["spearman"])
    assert const["pairwise_accuracy"] == pytest.approx(0.5)


def test_nan_labels_dropped_and_counted():
    true = np.array([0.0, 1.0, np.nan, 2.0, 3.0])
    m = fidelity_metrics(np.array([0.0, 1.0, 9.0, 2.0, 3.0]), true)
    assert m["n"] == 4 and m["n_nan_dropped"] == 1 and m["r2"] == pytest.approx(1.0)


def test_calibration_bins_cover_all_samples():
    rng = np.random.default_rng(2)
    pred = rng.uniform(size=103)
    curve = calibration(pred, pred * 2)
    assert sum(c["count"] for c in curve) == 103
    assert all(c["mean_true"] == pytest.approx(2 * c["mean_pred"]) for c in curve)


def test_per_group_breakdown():
    true = np.arange(12, dtype=float)
    pred = true.copy()
    pred[:4] += 5  # group "a" badly predicted
    groups = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    rows = fidelity_metrics(pred, true, groups)["per_group"]
    assert rows[0]["group"] == "a" and rows[0]["mae"] == pytest.approx(5.0)
    assert rows[0]["bias"] == pytest.approx(5.0) and rows[0]["true_mean"] == pytest.approx(1.5)
    assert rows[1]["bias"] == pytest.approx(0.0)
    assert {r["group"] for r in rows} == {"a", "b", "c"}


def test_pooled_features_shape_and_streaming():
    lat = torch.randn(6, 3, 4, 5, 5)
    f = pooled_latent_features(lat)
    assert f.shape == (6, 4 * 4)  # mean, std, spatial grad, temporal diff per channel
    assert pooled_latent_features(lat[:, :1]).shape == (6, 12)
    np.testing.assert_allclose(features_of(lat.split(4)), f, rtol=1e-6)


def test_ridge_beats_constant_when_a_pooled_statistic_explains_the_label():
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(300, 1, 4, 8, 8, generator=g) * torch.rand(300, 1, 4, 1, 1, generator=g)
    y = lat[:, :, 0].std(dim=(1, 2, 3)).numpy()  # the label is channel 0's spread
    x = pooled_latent_features(lat)
    b = fit_baselines(x[:200], y[:200], x[200:], y[200:])
    assert b["ridge"]["r2"] > 0.8 > b["constant"]["r2"]


def test_ridge_fits_log_labels_when_told_and_predicts_in_reward_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.exp(1.5 * x[:, 0] + 0.5 * x[:, 1])  # log-linear: heavy-tailed in reward units
    raw = fit_baselines(x[:300], y[:300], x[300:], y[300:])
    logs = fit_baselines(x[:300], y[:300], x[300:], y[300:], label_transform="log")
    assert logs["ridge"]["spearman"] > 0.999 > raw["ridge"]["spearman"]
    assert logs["ridge"]["r2"] > 0.8 > 0.3 > raw["ridge"]["r2"]  # scored in reward units, not in logs
    assert fit_baselines(x[:300], y[:300], x[300:], y[300:], label_transform="auto")["ridge"] == logs["ridge"]


def _judged(pred, true, ridge_pred):
    """assess() with the two baselines as lrm fits them: a constant (here the true mean) and a ridge."""
    constant = fidelity_metrics(np.full(len(true), true.mean()), true)
    return assess(fidelity_metrics(pred, true), {"constant": constant, "ridge": fidelity_metrics(ridge_pred, true)})


@pytest.fixture
def reward():
    """400 true values and two independent noise draws (seeded)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=400), rng.normal(size=400), rng.normal(size=400)


def test_good_on_ranking_level_and_range_is_high_trust(reward):
    # The main job's kind of result: Spearman ~0.96 and R² ~0.93, ridge clearly behind on both.
    true, noise, other = reward
    report = _judged(true + 0.25 * noise, true, true + 0.5 * other)
    assert report.trust == "high" and report.verdict.startswith("high trust — ranks well (Spearman 0.96")
    assert report.checks == {"ranking": None, "level": None, "range": None} and not report.flags


def test_misranking_is_low_trust_and_names_what_else_failed(reward):
    true, noise, other = reward
    report = _judged(true + 2 * noise, true, true + 3 * other)
    assert report.trust == "low"
    assert report.verdict.startswith(f"low trust — misranks: Spearman 0.4") and f"< {LOW_SPEARMAN}" in report.verdict
    assert "also mis-levelled and out of range" in report.verdict
    assert report.checks["level"].startswith("mis-levelled: R² -") and report.checks["range"] in report.flags


def test_an_undefined_spearman_is_named_unmeasured_not_misranked(reward):
    true, noise, other = reward
    report = _judged(np.full_like(true, 2.0), true, true + other)  # constant predictions: Spearman is NaN
    assert report.trust == "low" and "nan" not in report.verdict
    assert report.verdict.startswith(f"low trust — ranking unmeasured: Spearman is undefined on these {len(true)} rows")


def test_ranking_no_better_than_ridge_is_low_trust(reward):
    true, noise, other = reward
    report = _judged(true + 0.25 * noise, true, true + 0.2 * other)
    assert report.trust == "low" and "ranks no better than ridge" in report.verdict
    assert "R² 0.93" in report.checks["level"] and "not above ridge's 0.96" in report.checks["level"]


def test_ranks_well_but_low_r2_is_moderate_and_says_so(reward):
    true, noise, other = reward
    report = _judged(true + 0.6 + 0.1 * noise, true, true + 0.5 * other)  # every value 0.6 std too high
    assert report.verdict.startswith("moderate trust — ranks well (Spearman 0.99")
    assert f"but mis-levelled: R² 0.6" in report.verdict and f"< {MIN_R2}" in report.verdict
    assert report.checks["range"] is None and "out of range" not in report.verdict


def test_calibration_worse_than_the_constants_error_allows_is_mis_levelled(reward):
    true, noise, other = reward
    report = _judged(true + 0.3 + 0.1 * noise, true, true + 0.5 * other)  # R² 0.9, but bins miss by 0.3 std
    assert report.surrogate["r2"] > MIN_R2 and report.trust == "moderate"
    assert "mis-levelled: calibration error 0.29" in report.verdict and "of the constant predictor's mean error" in report.verdict


def test_calibration_far_worse_than_ridges_is_mis_levelled(reward):
    true, noise, other = reward
    ridge = 0.8 * (true + 0.5 * other)  # the conditional mean given a noisy feature: calibrated, R² ~0.8
    report = _judged(true + 0.15 + 0.1 * noise, true, ridge)
    assert report.surrogate["calibration_error"] < CALIBRATION_SHARE * 0.79  # within the constant's allowance
    assert report.trust == "moderate" and "x ridge's" in report.checks["level"]
    assert report.checks["level"] in report.verdict


def test_predictions_far_outside_the_true_range_are_out_of_range(reward):
    true, noise, other = reward
    pred = true + 0.1 * noise
    pred[np.argmax(true)] += 6  # one prediction a span above the largest true value
    report = _judged(pred, true, true + 0.5 * other)
    assert report.checks["ranking"] is None and report.checks["level"] is None
    assert report.verdict.startswith("moderate trust — ranks well") and "but out of range: predictions reach 9.2" in report.verdict
    assert report.surrogate["range_overshoot"] == pytest.approx((pred.max() - true.max()) / np.ptp(true))


def test_sharpness_like_surrogate_is_not_high_trust():
    # `lrm fit sharpness --steps 300` (issue 21): a heavy-tailed reward fitted in logs ranks as well as ridge
    # and better, but exp() of its log-errors puts predictions far above the largest true value.
    rng = np.random.default_rng(1)
    log_true = rng.normal(5, 2, size=800)
    true = np.exp(log_true)
    pred = np.exp(log_true + 0.25 * rng.normal(size=800) + 0.1 * np.maximum(log_true - 7, 0) ** 2)
    ridge = np.exp(log_true + 0.4 * rng.normal(size=800))
    report = _judged(pred, true, ridge)
    assert report.trust == "moderate" and report.surrogate["spearman"] > HIGH_SPEARMAN
    assert report.checks["level"] and report.checks["range"]
    assert "but mis-levelled" in report.verdict and "out of range: predictions reach" in report.verdict


def test_range_of_reports_both_ends_and_the_larger_overshoot():
    r = range_of(np.array([-1.0, 0.5, 2.0]), np.array([0.0, 1.0, 2.0]))
    assert (r["pred_min"], r["pred_max"], r["true_min"], r["true_max"]) == (-1.0, 2.0, 0.0, 2.0)
    assert r["range_overshoot"] == pytest.approx(0.5)
    assert np.isnan(range_of(np.array([1.0, 2.0]), np.array([3.0, 3.0]))["range_overshoot"])


def test_warnings_beyond_the_verdict_are_not_repeated(reward):
    true, noise, other = reward
    report = _judged(true + 0.6 + 0.1 * noise, true, true + 0.5 * other)
    assert report.checks["level"] in report.flags and report.other_warnings() == []


def test_few_held_out_samples_are_flagged_with_an_interval():
    rng = np.random.default_rng(6)
    true = rng.normal(size=12)
    report = assess(fidelity_metrics(true + 0.05 * rng.normal(size=12), true), {})
    assert len(report.flags) == 1 and report.flags[0].startswith("only 12 scored samples")
    assert report.verdict.startswith("moderate trust — ranks well, right level and range") and "but only 12 scored" in report.verdict


def test_spearman_interval_matches_simulated_sampling_spread():
    # Independent reference: Spearman's spread over 4,000 samples of 30 bivariate normal pairs.
    rng = np.random.default_rng(7)
    r, n = 0.6, 30
    x = rng.normal(size=(4000, n))
    y = r * x + np.sqrt(1 - r**2) * rng.normal(size=(4000, n))
    rhos = np.array([stats.spearmanr(a, b).statistic for a, b in zip(x, y)])
    population = 6 / np.pi * np.arcsin(r / 2)  # Spearman of a bivariate normal
    low, high = spearman_interval(population, n)
    q_low, q_high = np.quantile(rhos, [0.025, 0.975])
    assert abs(low - q_low) < 0.03 and abs(high - q_high) < 0.03, (low, q_low, high, q_high)
    for rho, n in ((1.0, 4), (0.5, 6), (-1.0, 40)):  # too few, or a perfect rho: no point interval
        assert all(np.isnan(spearman_interval(rho, n))), (rho, n)


def test_flags_a_held_out_group_the_surrogate_mis_levels():
    rng = np.random.default_rng(4)
    true = rng.normal(size=120)
    groups = np.repeat(["a", "b", "c", "d"], 30)
    pred = true + 0.05 * rng.normal(size=120)
    level = assess(fidelity_metrics(pred, true, groups), {})
    assert not level.flags and level.verdict.startswith("high trust")
    pred[groups == "c"] -= 1.5  # group "c" under-rated as a whole, still ranked right within it
    shifted = assess(fidelity_metrics(pred, true, groups), {})
    assert [f for f in shifted.flags if "mis-levels" in f and "c under-rated by 1.5" in f]
    assert not any(g in f for f in shifted.flags for g in ("a under", "b under", "d under"))
    assert not shifted.verdict.startswith("high trust")


def test_fidelity_by_noise_and_flag():
    true = np.linspace(0, 1, 30)
    rows = fidelity_by_noise({0: true, 500: true[::-1].copy()}, true)
    assert [r["t"] for r in rows] == [0, 500]
    assert rows[0]["spearman"] == pytest.approx(1.0) and rows[1]["spearman"] == pytest.approx(-1.0)
    report = assess(fidelity_metrics(true, true), {}, by_noise=rows)
    assert any("t=500" in f for f in report.flags)


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="pred has 3 values but true has 2"):
        fidelity_metrics([1, 2, 3], [1, 2])
