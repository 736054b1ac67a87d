"""benchmarks/avdm2.py: one model's metrics from its evaluation and training log, the table rows over seeds (mean and
sample std per arm, the teacher one row) and the printed table, on synthetic metrics written the way
lrm.evaluation.evaluate_run and lrm.tuning.distill_log write them; the argument checks."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("avdm2")


def evaluation(frechet, color, shape, flicker, prompt_color, vendi=1.5, sampler="few-step", steps=4, cfg=1.0):
    """The keys of evaluate_run's metrics that the benchmark reads, as metrics.json holds them."""
    return {"sampler": sampler, "steps": steps, "cfg": cfg,
            "frechet": {"value": frechet, "per_frame": frechet / 2, "features": "pooled", "reference": "procedural",
                        "n_generated": 24, "n_reference": 128},
            "alignment": {"color": color, "shape": shape},
            "rewards": {"prompt-color": {"mean": prompt_color, "std": 0.1, "scored": 24},
                        "temporal-flickering": {"mean": flicker, "std": 0.01, "scored": 24}},
            "diversity": None if vendi is None else {"mean": vendi, "std": 0.1, "features": "pixels"}}


def train(*seconds):
    return [{"split": "train", "step": i + 1, "losses": {}, "skipped": False, "seconds": s}
            for i, s in enumerate(seconds)]


def test_run_metrics_reads_each_metric_and_the_median_seconds_per_step(bench):
    m = bench.run_metrics(evaluation(50.0, 0.8, 0.3, 0.96, 0.25, vendi=1.1), train(2.0, 9.0, 3.0, 2.5))
    assert m == {"sampler": "few-step", "steps": 4, "cfg": 1.0, "frechet": 50.0, "frame_frechet": 25.0, "alignment_color": 0.8,
                 "alignment_shape": 0.3, "temporal_flickering": 0.96, "prompt_color": 0.25, "vendi": 1.1,
                 "train_s_per_step": 2.75}  # the median: a slow first step does not count double
    teacher = bench.run_metrics(evaluation(20.0, 0.99, 0.28, 0.95, 0.45, vendi=None, sampler="ddim", steps=50,
                                           cfg=4.0), None)
    assert teacher["train_s_per_step"] is None and teacher["vendi"] is None and teacher["cfg"] == 4.0
    assert set(teacher) == set(m) and set(bench.METRICS) <= set(m)


def test_collect_gives_mean_and_sample_std_over_seeds_per_arm_then_the_teacher(bench):
    adm = [(54.0, 0.80, 0.30, 0.96, 0.25, 2.5), (58.0, 0.86, 0.26, 0.97, 0.27, 2.7),
           (50.0, 0.84, 0.29, 0.95, 0.20, 2.6)]
    both = [(29.0, 0.98, 0.25, 0.95, 0.50, 4.2), (31.0, 0.99, 0.24, 0.96, 0.49, 4.1)]
    per_run = {}
    for arm, runs in (("adm-sdm2d", both), ("adm", adm)):  # arms in any order, seeds out of order
        for seed, (fd, color, shape, flicker, pc, sec) in reversed(list(enumerate(runs))):
            per_run[f"{arm}-seed{seed}"] = {"arm": arm, "seed": seed, **bench.run_metrics(
                evaluation(fd, color, shape, flicker, pc, vendi=1.0 + seed / 10), train(sec, sec))}
    teacher = bench.run_metrics(evaluation(19.9, 0.99, 0.28, 0.956, 0.455, vendi=1.127, sampler="ddim", steps=50,
                                           cfg=4.0), None)
    rows = json.loads(json.dumps(bench.collect(per_run, teacher)))  # JSON-able, as avdm2.json is written
    assert [r["model"] for r in rows] == ["adm", "adm-sdm2d", "teacher"]
    assert [r["losses"] for r in rows] == ["adm", "adm,sdm2d", None]
    assert rows[0]["seeds"] == [0, 1, 2] and rows[1]["seeds"] == [0, 1] and rows[2]["seeds"] == []

    fd = rows[0]["frechet"]
    assert fd["values"] == [54.0, 58.0, 50.0] and fd["n"] == 3
    assert fd["mean"] == pytest.approx(54.0) and fd["std"] == pytest.approx(4.0)  # ddof 1: sqrt((0+16+16)/2)
    assert rows[1]["alignment_color"]["mean"] == pytest.approx(0.985)
    assert rows[1]["alignment_color"]["std"] == pytest.approx(statistics.stdev([0.98, 0.99]))
    assert rows[0]["train_s_per_step"]["values"] == [2.5, 2.7, 2.6]
    assert rows[1]["vendi"]["values"] == [1.0, 1.1]
    t = rows[2]
    assert t["frechet"] == {"mean": 19.9, "std": None, "n": 1, "values": [19.9]}
    assert t["train_s_per_step"] == {"mean": None, "std": None, "n": 0, "values": [None]}


def test_unmeasured_values_are_left_out_of_the_spread_and_one_seed_has_no_std(bench):
    s = bench.spread([1.0, None, float("nan"), 3.0])
    assert (s["mean"], s["std"], s["n"]) == (2.0, pytest.approx(math.sqrt(2.0)), 2)
    assert bench.spread([0.7]) == {"mean": 0.7, "std": None, "n": 1, "values": [0.7]}
    assert bench.spread([None]) == {"mean": None, "std": None, "n": 0, "values": [None]}


def test_the_table_shows_mean_and_std_per_arm_and_a_single_value_for_the_teacher(bench):
    per_run = {f"adm-seed{s}": {"arm": "adm", "seed": s, **bench.run_metrics(
        evaluation(50.0 + 2 * s, 0.8, 0.3, 0.96, 0.25), train(2.0))} for s in range(2)}
    teacher = bench.run_metrics(evaluation(19.9, 0.99, 0.28, 0.956, 0.455, vendi=None, sampler="ddim", steps=50,
                                           cfg=4.0), None)
    lines = bench.format_table(bench.collect(per_run, teacher)).splitlines()
    assert len(lines) == 3 and all(h in lines[0] for h in ("clip FD", "colour", "flicker", "s/step"))
    assert lines[1].split()[:8] == ["adm", "2", "25.500", "+-", "0.707", "51.000", "+-", "1.414"]  # frame FD, clip FD
    teacher_cells = lines[2].split()
    assert teacher_cells[:4] == ["teacher", "-", "9.950", "19.900"] and "+-" not in teacher_cells
    assert teacher_cells[-2:] == ["-", "-"]  # no Vendi (one sample per prompt), no training step


@pytest.mark.parametrize("argv, message", [(["--seeds", "0", "0"], "--seeds must be distinct"),
                                           (["--seeds", "-1"], "--seeds must be distinct"),
                                           (["--steps", "0"], "--steps must be >= 1"),
                                           (["--samples-per-prompt", "0"], "--samples-per-prompt must be >= 1")])
def test_bad_arguments_get_one_line_and_exit_2(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_defaults_are_last_sessions_hand_run(bench):
    args = bench.parse_args([])
    assert (args.seeds, args.steps, args.batch_size, args.eval_every) == ([0, 1, 2], 60, 8, 30)
    assert (args.prompts, args.samples_per_prompt) == (12, 2)
    assert bench.parse_args(["--steps", "2", "--seeds", "0"]).eval_every == 1
