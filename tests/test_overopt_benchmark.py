"""benchmarks/overopt_study.py: the table it collects from the comparisons' metrics.json (a pure function, checked
on synthetic dicts written the way lrm.studies.compare writes them) and the launch command it runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("overopt_study")


def stop(rule, *, applied=True, fired=False, step=40, gold=1.0, gain=1.0, peak=1.0, saved=0):
    return {"rule": rule, "condition": f"{rule} condition", "applied": applied, "fired": fired,
            "step": step if applied else None, "gold": gold, "share_of_gain": gain, "share_of_peak": peak,
            "steps_saved": saved if applied else None, "note": "" if applied else "not recorded"}


def arm(gold, gold_std, proxy, peak_step, seed_peaks, stops, rising, fit=(0.5, 0.1, 0.2, 54.6)):
    alpha, beta, rmse, d_star = fit
    return {"runs": ["r0", "r1"], "peak": {"step": peak_step, "gold": gold[[0, 10, 20, 30, 40].index(peak_step)]},
            "seed_peaks": [{"seed": s, "step": st, "gold": g} for s, (st, g) in enumerate(seed_peaks)],
            "proxy_keeps_rising": rising,
            "gao_fit": {"alpha": alpha, "beta": beta, "rmse": rmse, "d_star": d_star}, "stops": stops,
            "curves": {"steps": [0, 10, 20, 30, 40], "gold": gold, "gold_std": gold_std, "proxy": proxy},
            "grids": {}}


def metrics(reward="jpeg-incompressibility"):
    """A two-arm comparison: 'none' peaks mid-run while its proxy keeps rising; 'kl' keeps rising to the end."""
    none = arm(gold=[2.0, 3.0, 4.0, 3.5, 3.0], gold_std=[0.1, 0.2, 0.4, 0.3, 0.5], proxy=[2.0, 3.0, 5.0, 7.0, 9.0],
               peak_step=20, seed_peaks=[(20, 4.2), (30, 3.8)], rising=True,
               stops=[stop("fidelity", fired=True, step=30, gold=3.5, gain=0.75, peak=0.875, saved=10),
                      stop("divergence", fired=True, step=30, gold=3.5, gain=0.75, peak=0.95, saved=10),
                      stop("distance", applied=False, gold=None, gain=None, peak=None),
                      stop("disagreement", applied=False, gold=None, gain=None, peak=None)])
    kl = arm(gold=[2.0, 2.5, 3.0, 3.2, 3.4], gold_std=[0.1, 0.1, 0.1, 0.1, 0.2], proxy=[2.0, 2.2, 2.4, 2.6, 2.8],
             peak_step=40, seed_peaks=[(40, 3.5), (40, 3.3)], rising=False, fit=(0.5, -0.1, 0.2, None),
             stops=[stop("fidelity", fired=True, step=10, gold=2.5, gain=1 / 2.8, peak=2.5 / 3.4, saved=30),
                    stop("divergence", step=40, gold=3.4), stop("distance", applied=False, gold=None, gain=None,
                                                               peak=None),
                    stop("disagreement", applied=False, gold=None, gain=None, peak=None)])
    return {"reward": reward, "method": "lrm", "higher_is_better": True, "regularisers": ["none", "kl"],
            "seeds": {"none": [0, 1], "kl": [0, 1]}, "distance_measure": "d", "verdict": "best gold peak: none",
            "arms": {"none": none, "kl": kl}, "launch": {}, "config": {}}


def test_collect_reads_peak_ends_stops_and_fit_of_each_arm(bench):
    # round-trip through strict JSON, as metrics.json is written (NaN -> null)
    rows = bench.collect({"jpeg-incompressibility": json.loads(json.dumps(metrics()))})
    assert [(r["reward"], r["regulariser"]) for r in rows] == [("jpeg-incompressibility", "none"),
                                                               ("jpeg-incompressibility", "kl")]
    none, kl = rows
    assert none["gold_start"] == {"mean": 2.0, "std": 0.1} and none["gold_end"] == {"mean": 3.0, "std": 0.5}
    assert none["peak"] == {"step": 20, "gold": 4.0, "std": 0.4}  # the std over seeds at the peak's evaluation
    assert none["seed_peaks"]["steps"] == [20, 30]
    assert (none["seed_peaks"]["gold_mean"], none["seed_peaks"]["gold_std"]) == pytest.approx((4.0, 0.2))
    assert (none["proxy_start"], none["proxy_end"], none["proxy_keeps_rising"]) == (2.0, 9.0, True)
    assert none["seeds"] == [0, 1] and none["steps"] == 40
    assert none["stops"]["divergence"] == {"applied": True, "fired": True, "step": 30, "gold": 3.5,
                                           "share_of_gain": 0.75, "share_of_peak": 0.95, "steps_saved": 10}
    assert not none["stops"]["distance"]["applied"] and math.isnan(none["stops"]["distance"]["share_of_peak"])
    # the best rule keeps the most of the peak: divergence (95%) over fidelity (87.5%); both goals met
    assert none["best_stop"] == "divergence"
    assert none["goal"] == {"peak_within_run_proxy_rising": True, "best_stop_keeps_90pct": True}
    assert none["gao_fit"] == {"alpha": 0.5, "beta": 0.1, "rmse": 0.2, "d_star": 54.6}
    # kl: the peak is the last evaluation (not within the run), the proxy does not keep rising, and its only fired
    # rule keeps 74% of the peak; an undefined d* (null) reads as NaN
    assert kl["peak"]["step"] == 40 and kl["best_stop"] == "fidelity"
    assert kl["goal"] == {"peak_within_run_proxy_rising": False, "best_stop_keeps_90pct": False}
    assert math.isnan(kl["gao_fit"]["d_star"])


def test_table_has_a_line_per_row_and_marks_rules_not_applied_or_not_fired(bench):
    rows = bench.collect({"jpeg-incompressibility": metrics(), "prompt-color": metrics("prompt-color")})
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + 4 and all(line.count("|") == len(bench.TABLE_HEADER) + 1 for line in lines)
    none = lines[2]
    assert "4 ± 0.4 (20)" in none and "step 30: 95% of peak, 75% of gain, 10 saved" in none and "| n/a |" in none
    assert "never (runs to the end)" in lines[3]  # kl's divergence rule did not fire
    goals = bench.goal_lines(rows)
    assert goals[0].endswith("best rule divergence keeps 95% of the peak: met")
    assert "while the proxy keeps rising: no (peak at step 40 of 40)" in goals[1]


def test_collect_refuses_a_study_of_another_reward(bench):
    with pytest.raises(ValueError, match="the study given for 'prompt-color' tuned toward 'jpeg-incompressibility'"):
        bench.collect({"prompt-color": metrics()})


def test_launch_command_passes_given_sizes_and_leaves_the_rest_to_the_cli(bench):
    args = bench.parse_args(["--student", "st", "--steps", "5", "--fit-steps", "3"])
    assert args.rewards == list(bench.REWARDS) and args.regularisers == "none,kl,concurrent,ensemble"
    assert args.seeds == "0,1,2"
    command = bench.launch_command("prompt-color", Path("runs/pc"), args)
    assert command[1:7] == ["-m", "lrm.cli.app", "study", "overopt", "prompt-color", "--launch"]
    flags = dict(zip(command[7::2], command[8::2]))  # every option after --launch takes one value
    assert flags == {"--out": "runs/pc", "--regularisers": "none,kl,concurrent,ensemble", "--seeds": "0,1,2",
                     "--device": "cpu", "--student": "st", "--steps": "5", "--eval-every": "10", "--batch-size": "8",
                     "--lr": "0.0001", "--fit-steps": "3"}  # None (per-prompt, rules' options): the CLI's defaults
