"""benchmarks/tune_efficiency.py (DOLLAR Tab. 17): the surrogate fitted once per reward on the student's store, the
rows that read it ("lrm-frozen": frozen; "lrm-warm": the start of the concurrent surrogate) and the fit's cost in
the table. The script's workers run in this process on a tiny student (its test-words text encoder exists only
here, so no subprocess could load it)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmark_scripts import load_benchmark
from test_hooks import words_runs  # noqa: F401  (a pytest fixture)
from test_study_launch import student_with_store  # noqa: F401  (a pytest fixture)

REWARD = "jpeg-incompressibility"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("tune_efficiency")


def tiny_args(bench, root: Path, *extra: str):
    return bench.parse(["--student", str(root / "student"), "--student-steps", "1", "--steps", "2",
                        "--eval-every", "1", "--batch-size", "2", "--per-prompt", "2", "--eval-prompts", "2",
                        "--lr", "1e-3", "--surrogate-lr", "1e-3", "--fit-steps", "3", "--runs", str(root / "bench"),
                        *extra])


def tune(bench, root: Path, method: str, surrogate: str | None = None) -> tuple[dict, Path]:
    run_dir = root / "bench" / f"{REWARD}-{method}-s0"
    args = tiny_args(bench, root, "--worker", "--reward", REWARD, "--method", method, "--seed", "0",
                     "--run-dir", str(run_dir), *(["--surrogate", surrogate] if surrogate else []))
    bench.worker(args)
    return json.loads((run_dir / bench.RESULT).read_text()), run_dir


def latest_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def test_the_fitted_surrogate_is_frozen_or_warm_starts_the_concurrent_one(bench, student_with_store,  # noqa: F811
                                                                            monkeypatch):
    from lrm.datasets.store import LatentStore

    root = student_with_store
    folder = root / "bench" / bench.SURROGATE_FITS / REWARD
    bench.fit_worker(tiny_args(bench, root, "--fit-worker", "--reward", REWARD, "--run-dir", str(folder)))
    fit = json.loads((folder / bench.FIT_RESULT).read_text())
    assert fit["surrogate"] == str(folder / "surrogates" / "seed0" / "model")  # lrm.studies.surrogates' layout
    assert Path(fit["surrogate"], "model.safetensors").is_file()
    assert fit["store"] == str(root / "store") and fit["rows"] == 40 and fit["steps"] == 3
    assert fit["label"] == f"{REWARD}@decoded" and fit["label"] in LatentStore.open(root / "store").labels
    assert fit["labelled_store"] and not fit["fitted_before"] and fit["fit_s"] > 0
    assert fit["preset"] == "image-cnn-stats" and fit["parameters"] > 0 and -1 <= fit["spearman"] <= 1

    # the parent reuses a finished fit of the same settings (no subprocess) and records who shares it
    (folder / bench.PROCESS).write_text(json.dumps({"peak_rss_mb": 500.0, "wall_s": 9.0}))
    again = bench.fit_surrogate(REWARD, root / "student", tiny_args(bench, root), root / "bench")
    assert again == {**fit, "peak_rss_mb": 500.0, "wall_s": 9.0}
    # a fit worker on a folder that holds the fit refits nothing and does not pass the reuse off as a fit's cost
    bench.fit_worker(tiny_args(bench, root, "--fit-worker", "--reward", REWARD, "--run-dir", str(folder)))
    reused = json.loads((folder / bench.FIT_RESULT).read_text())
    assert reused["fitted_before"] and reused["fit_s"] is None and not reused["labelled_store"]

    frozen, frozen_dir = tune(bench, root, "lrm-frozen", fit["surrogate"])
    warm, warm_dir = tune(bench, root, "lrm-warm", fit["surrogate"])
    scratch, scratch_dir = tune(bench, root, "lrm")
    assert (frozen["config"]["concurrent"], warm["config"]["concurrent"], scratch["config"]["concurrent"]) == \
        (False, True, True)
    assert frozen["surrogate"] == warm["surrogate"] == fit["surrogate"] and scratch["surrogate"] is None
    assert [r["step"] for r in frozen["records"]] == [0, 1, 2] and frozen["train_seconds"][-1] > 0
    # at step 0 the monitor scores the same starting samples: the warm run's surrogate is the fitted one, the
    # scratch run's a fresh one
    assert warm["records"][0]["proxy"] == pytest.approx(frozen["records"][0]["proxy"], rel=1e-6)
    assert scratch["records"][0]["proxy"] != pytest.approx(frozen["records"][0]["proxy"], rel=1e-3)
    # the frozen surrogate is no trained role (not checkpointed); the warm one trained away from the fitted weights
    assert not (latest_checkpoint(frozen_dir) / "lrm.safetensors").exists()
    fitted = load_file(Path(fit["surrogate"]) / "model.safetensors")
    trained = load_file(latest_checkpoint(warm_dir) / "lrm.safetensors")
    shared = set(fitted) & set(trained)
    assert shared and any(not torch.equal(fitted[k], trained[k]) for k in shared)

    # a finished run is reused only with its own method, surrogate and student
    args = tiny_args(bench, root)
    for run_dir in (frozen_dir, warm_dir):
        (run_dir / bench.PROCESS).write_text(json.dumps({"peak_rss_mb": 1.0, "wall_s": 1.0}))
    student = root / "student"
    assert bench.finished(frozen_dir, "lrm-frozen", 0, None, fit["surrogate"], student, args)
    assert bench.finished(warm_dir, "lrm-warm", 0, 1e-3, fit["surrogate"], student, args)
    assert not bench.finished(frozen_dir, "lrm-warm", 0, 1e-3, fit["surrogate"], student, args)
    assert not bench.finished(frozen_dir, "lrm-frozen", 0, None, str(root / "other"), student, args)
    assert not bench.finished(frozen_dir, "lrm-frozen", 0, None, fit["surrogate"], root / "teacher", args)
    # nor on another device or thread count: its time and memory sit beside the other runs'
    assert not bench.finished(frozen_dir, "lrm-frozen", 0, None, fit["surrogate"], student,
                              argparse.Namespace(**{**vars(args), "device": "cuda"}))
    monkeypatch.setenv("OMP_NUM_THREADS", str(bench.worker_threads() + 1))
    assert not bench.finished(frozen_dir, "lrm-frozen", 0, None, fit["surrogate"], student, args)


def test_a_worker_refuses_a_surrogate_the_method_does_not_read(bench, words_runs):  # noqa: F811
    for method, surrogate in (("lrm-frozen", None), ("lrm", str(words_runs / "lrm")), ("ddpo", "x")):
        args = tiny_args(bench, words_runs, "--worker", "--reward", REWARD, "--method", method, "--seed", "0",
                         "--run-dir", str(words_runs / "run"), *(["--surrogate", surrogate] if surrogate else []))
        with pytest.raises(ValueError, match="a fitted --surrogate is for"):
            bench.worker(args)
    assert not (words_runs / "run").exists()


def test_the_sample_grids_show_each_method_at_its_start_highest_point_and_end(bench, words_runs):  # noqa: F811
    import io

    from PIL import Image, ImageChops

    from lrm.generators.runs import open_generator_run

    result, run_dir = tune(bench, words_runs, "ddpo")
    summary = bench.summarise([{**result, "wall_s": 1.0, "peak_rss_mb": 1.0}])
    sheet = Image.open(io.BytesIO(bench.sample_grids(REWARD, {"ddpo": summary}, words_runs / "bench", 2, 2)))
    prompts = bench.tuning_prompts(open_generator_run(words_runs / "student"))[:2]
    start = bench.snapshot_grid(run_dir, 0, prompts, 2, 0)  # the monitor's: 2 prompts x seeds 0, 1 of seed-0 run
    # one row of three titled grids: update 0, the mean curve's highest point, the last update
    assert sheet.size == (3 * start.width, start.height + 18)
    tiles = [sheet.crop((i * start.width, 18, (i + 1) * start.width, 18 + start.height)) for i in range(3)]
    assert ImageChops.difference(tiles[0], start).getbbox() is None  # the start is the untuned student's samples
    assert ImageChops.difference(tiles[2], tiles[0]).getbbox() is not None  # two updates at lr 1e-3 changed them
    peak = summary["peak_step"]
    assert ImageChops.difference(tiles[1], bench.snapshot_grid(run_dir, peak, prompts, 2, 0)).getbbox() is None
    # a run seeded 1 is pictured with its own monitor seeds (1, 2), not 0 and 1
    assert ImageChops.difference(bench.snapshot_grid(run_dir, 0, prompts, 2, 1), start).getbbox() is not None
    # a run whose snapshots were removed gets its titles and a blank tile, not a traceback at the end of the script
    shutil.rmtree(run_dir / "checkpoints")
    assert bench.snapshot_grid(run_dir, 0, prompts, 2, 0) is None
    blank = Image.open(io.BytesIO(bench.sample_grids(REWARD, {"ddpo": summary}, words_runs / "bench", 2, 2)))
    assert blank.height < sheet.height


def test_rows_that_cannot_run_say_why(bench, words_runs):  # noqa: F811
    student = words_runs / "student"  # records no latent store
    assert "it records no latent store" in bench.no_fit(REWARD, student)
    assert "is not differentiable (--fit-gradient-weight" in bench.no_fit(REWARD, student, gradient_weight=1.0)
    assert "scores videos and the student" in bench.no_student("temporal-flickering", student)
    assert "leave out --student (a video reward then gets the embedded video student)" in \
        bench.no_student("temporal-flickering", student)
    assert bench.no_student(REWARD, student) is None


def test_each_reward_gets_the_embedded_student_of_its_kind_unless_student_is_given(bench, tmp_path, monkeypatch):
    from lrm.tuning import embedded as students

    asked = []

    def cached(student_steps=4, video=False, train_if_missing=True, **options):
        asked.append((student_steps, video, train_if_missing))
        return tmp_path / ("video" if video else "image")

    monkeypatch.setattr(students, "embedded_student", cached)
    args = bench.parse(["--student-steps", "2"])
    assert bench.student_run("temporal-flickering", args) == tmp_path / "video"
    assert bench.student_run("jpeg-compressibility", args) == tmp_path / "image"
    assert bench.student_run("prompt-color", args) == tmp_path / "image"
    assert asked == [(2, True, False), (2, False, False), (2, False, False)]  # never distilled by the benchmark
    given = bench.parse(["--student", str(tmp_path / "mine")])
    for reward in ("temporal-flickering", "jpeg-compressibility"):
        assert bench.student_run(reward, given) == tmp_path / "mine"
    assert len(asked) == 3


def test_a_missing_embedded_student_stops_the_script_before_any_run(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))  # no student distilled there
    out, runs = tmp_path / "result.json", tmp_path / "runs"
    monkeypatch.setattr("sys.argv", ["tune_efficiency.py", "--rewards", "temporal-flickering", "--out", str(out),
                                     "--runs", str(runs)])
    with pytest.raises(SystemExit, match=r"4-step video student is not distilled yet .*`lrm tune temporal-flickering "
                                         r"--concurrent`"):
        bench.main()
    assert not out.exists() and not runs.exists()


def test_variants_fit_cost_and_goal_arithmetic(bench):
    assert bench.variants(["lrm", "lrm-frozen", "lrm-warm", "ddpo"], [1e-4, 1e-3]) == [
        ("lrm-slr0.0001", "lrm", 1e-4), ("lrm-slr0.001", "lrm", 1e-3), ("lrm-frozen", "lrm-frozen", None),
        ("lrm-warm-slr0.0001", "lrm-warm", 1e-4), ("lrm-warm-slr0.001", "lrm-warm", 1e-3), ("ddpo", "ddpo", None)]
    summary = {"gain_curve_mean": [0.0, 0.5, 1.0], "seconds_curve_mean": [0.0, 5.0, 10.0], "samples": [0, 8, 16],
               "train_s_mean": 10.0, "peak_rss_mb_mean": 100.0, "cuda_peak_mb": None, "gain_mean": 1.0}
    fit = {"surrogate": "s/model", "fit_s": 30.0, "peak_rss_mb": 500.0}
    row = bench.with_fit(summary, fit, shared_by=6)
    assert (row["train_s_with_fit"], row["train_s_with_fit_share"], row["fit_shared_by"]) == (40.0, 15.0, 6)
    ddpo = {"gain_mean": 0.8, "train_s_mean": 100.0, "peak_rss_mb_mean": 1000.0, "cuda_peak_mb": None}
    g = bench.goal(row, ddpo)
    # the curve first reaches 0.8 at step 2 (10 s); with the whole 30 s fit: 40 s of DDPO-SF's 100 s
    assert g["lrm_seconds_to_ddpo_gain"] == 10.0 and g["lrm_samples_to_ddpo_gain"] == 16
    assert g["time_ratio"] == pytest.approx(0.1) and g["time_goal_met"]
    assert g["time_ratio_with_fit"] == pytest.approx(0.4) and g["time_goal_met_with_fit"] is False
    assert g["memory_ratio"] == pytest.approx(0.1) and g["memory_ratio_with_fit"] == pytest.approx(0.5)
    assert g["memory_goal_met"] and g["memory_goal_met_with_fit"] is False
    assert "time_ratio_with_fit" not in bench.goal(summary, ddpo)  # no fit, no fit columns
    unknown = bench.with_fit(summary, {**fit, "fit_s": None}, shared_by=6)
    assert unknown["train_s_with_fit"] is None and bench.goal(unknown, ddpo)["time_goal_met_with_fit"] is None
    nothing = bench.goal(row, {**ddpo, "gain_mean": -0.1})  # DDPO-SF gained nothing: undecided either way
    assert nothing["time_goal_met"] is None and nothing["time_goal_met_with_fit"] is None
    assert g["added_memory_ratio"] is None  # the steps' share of the memory was not measured
    parts = bench.goal({**row, "added_rss_mb_mean": 30.0}, {**ddpo, "added_rss_mb_mean": 600.0})
    assert parts["added_memory_ratio"] == pytest.approx(0.05) and parts["memory_ratio"] == g["memory_ratio"]


def test_the_table_shows_the_fit_as_its_own_row_and_the_fitted_times_with_and_without_it(bench):
    base = {"gold_start": 1.0, "gain_mean": 0.5, "gain_sd": 0.1, "train_s_mean": 10.0, "samples": [0, 16],
            "peak_rss_mb_mean": 900.0, "diversity_before": 1.2, "diversity_after": 1.1, "peak_gain_mean": 0.7,
            "peak_step": 20}
    rows = {REWARD: {"lrm-slr0.0001": {**base, "loaded_rss_mb_mean": 850.0, "added_rss_mb_mean": 42.4},
                     "lrm-frozen": {**base, "fit_s": 30.0, "train_s_with_fit": 40.0, "train_s_with_fit_share": 15.0,
                                    "fit_shared_by": 6, "gradient_alignment_before": 0.1,
                                    "gradient_alignment_after": -0.05}}}
    fits = {REWARD: {"preset": "image-cnn-stats", "parameters": 230561, "steps": 2000, "rows": 2048,
                     "labelled_store": True, "fit_s": 30.0, "fit_train_s": 25.0, "wall_s": 41.0,
                     "peak_rss_mb": 700.0, "spearman": 0.9123, "shared_by": 6},
            "prompt-color": {"preset": "text-image-xattn", "parameters": 1000, "steps": 900, "rows": 2048,
                             "labelled_store": False, "fit_s": 60.0, "fit_train_s": 55.0, "wall_s": 70.0,
                             "peak_rss_mb": 800.0, "spearman": 0.92, "shared_by": 3, "gradient_weight": 1.0,
                             "gradient_cosine": 0.2497}}
    skipped = [{"reward": "temporal-flickering", "method": "all", "reason": "no video student"}]
    text = bench.table(rows, skipped, fits, {}, 3).splitlines()
    assert text[2].split(" | ")[3:6] == ["+0.5 ± 0.1", "+0.7 (20)", "10"]  # final gain, then the curve's peak
    assert text[2].split(" | ")[6] == "no fit"
    assert text[3].split(" | ")[5:7] == ["10", "40 / 15 (n = 6)"]
    assert text[2].endswith("| 900 | 850 + 42 | 1.200 -> 1.100 | - |")  # no gradient alignment recorded
    assert text[3].endswith("| 900 | - | 1.200 -> 1.100 | +0.100 -> -0.050 |")  # nor the memory's parts
    assert text[4] == "| temporal-flickering | all | not run: no video student |"
    assert "| image-cnn-stats (230561 parameters), 2000 steps | 2048 | True | 30.0 | 25.0 | 41.0 | 700 | 0.912 | 6 |" \
        in text[-2]
    assert "| text-image-xattn (1000 parameters), 900 steps, gradient weight 1 (held-out gradient cosine 0.250) |" \
        in text[-1]
    fits["prompt-color"]["gradient_cosine"] = None  # no held-out row had a reward gradient
    assert "gradient weight 1 (held-out gradient cosine n/a) |" in bench.table(rows, skipped, fits, {}, 3)
    assert bench.fit_name("prompt-color", 1.0) == "prompt-color-gw1" and bench.fit_name(REWARD, 0.0) == REWARD
    assert [bench.matched_label(label, method, 1.0) for label, method in
            (("lrm-frozen", "lrm-frozen"), ("lrm-warm-slr0.001", "lrm-warm"), ("ddpo", "ddpo"))] == \
        ["lrm-frozen-gw1", "lrm-warm-slr0.001-gw1", "ddpo"]
    assert bench.matched_label("lrm-frozen", "lrm-frozen", 0.0) == "lrm-frozen"
    assert [bench.matched_label(label, method, 3.0, 3.0) for label, method in
            (("lrm-frozen", "lrm-frozen"), ("lrm-warm-slr0.001", "lrm-warm"), ("lrm-slr0.001", "lrm"))] == \
        ["lrm-frozen-gw3", "lrm-warm-slr0.001-gw3-cgw3", "lrm-slr0.001-cgw3"]
    assert [bench.matched_label(label, label, 0.0, 0.0, 16) for label in ("ddpo", "lrm-frozen")] == \
        ["ddpo-h16", "lrm-frozen"]  # DDPO-SF with a per-prompt reward history (lrm tune --prompt-history 16)
    assert bench.matched_label("ddpo", "ddpo", 0.0, 0.0, 16, 4) == "ddpo-h16-n4"  # and log-probs of 4 steps
    assert "not differentiable" in bench.refusal("jpeg-compressibility", "lrm-warm", 3.0)
    assert bench.refusal("jpeg-compressibility", "lrm-warm", 0.0) is None
    assert bench.refusal("prompt-color", "lrm", 3.0) is None


def test_the_summary_keeps_the_peak_of_a_curve_that_rises_and_falls(bench):
    def run(seed, golds):
        records = [{"step": 50 * i, "gold": g, "diversity": 1.0} for i, g in enumerate(golds)]
        return {"seed": seed, "records": records, "train_seconds": [7.0 * i for i in range(len(golds))],
                "samples": [400 * i for i in range(len(golds))], "wall_s": 30.0, "peak_rss_mb": 1000.0,
                "cuda_peak_mb": None, "nonfinite_rewards": 0}

    s = bench.summarise([run(0, [1.0, 3.0, 0.0]), run(1, [1.0, 2.0, 0.2])])  # over-optimised: up, then down
    assert s["gain_mean"] == pytest.approx(-0.9) and s["gain_curve_mean"] == pytest.approx([0.0, 1.5, -0.9])
    assert (s["peak_gain_mean"], s["peak_step"]) == (pytest.approx(1.5), 50)
    rising = bench.summarise([run(0, [1.0, 1.2, 1.5])])
    assert (rising["peak_gain_mean"], rising["peak_step"]) == (pytest.approx(0.5), 100)
    # an evaluation with no finite gold is not the peak; an all-NaN curve peaks nowhere but at the start
    gap = bench.summarise([run(0, [1.0, 3.0, float("nan"), 2.0])])
    assert (gap["peak_gain_mean"], gap["peak_step"]) == (pytest.approx(2.0), 50)
    assert bench.summarise([run(0, [float("nan")] * 3)])["peak_step"] == 0
    # a lower-is-better reward (niqe, brisque) gains by falling
    falling = bench.summarise([run(0, [3.0, 2.5, 0.5])], sign=-1.0)
    assert falling["gain_mean"] == pytest.approx(2.5) and falling["peak_step"] == 100


def test_gradient_alignment_means_leave_out_runs_that_recorded_none(bench):
    assert bench.nan_mean([None, float("nan"), 0.2, 0.4]) == pytest.approx(0.3)
    assert math.isnan(bench.nan_mean([None, float("nan")]))
