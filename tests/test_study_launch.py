"""`lrm study overopt --launch`: the regularisers' tuning runs, each run's study and one comparison."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from lrm.studies.compare import ARM_KEYS, COMPARE_KEYS
from lrm.studies.launch import REGULARISERS, LaunchConfig, parse_seeds
from lrm.studies.overopt import EPS_DISTANCE
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
    # every run recorded the eps distance, so the Gao fit's d is its square root
    assert metrics["distance_measure"] == EPS_DISTANCE
    assert metrics["arms"]["kl"]["curves"]["d"] == pytest.approx([e ** 0.5 for e in
                                                                  metrics["arms"]["kl"]["curves"]["eps_distance"]])
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
    # ... and tunes again (resuming at its end) one stopped after records.json, before its grids and report
    stopped = out / "runs" / "kl-seed3"
    shutil.rmtree(stopped / "after")
    (stopped / "report.html").unlink()
    finished = CliRunner().invoke(cli_app(), args)
    assert finished.exit_code == 0 and "[kl, seed 3] lrm tune" in finished.output, finished.output
    assert "[ensemble, seed 3] lrm tune" not in finished.output
    assert (stopped / "after" / "grid.png").is_file() and (stopped / "report.html").is_file()
    # and refuses one of other settings instead of mixing it in
    other = CliRunner().invoke(cli_app(), [*args, "--steps", "3"])
    assert other.exit_code == 2 and "holds a tuning run with steps 2, not 3" in other.output, other.output
    # ... or one tuned on other prompts (config.json records their hash), refused before a run of a new seed
    # is tuned: an interrupted launch resumed with other prompts mixed them into one arm
    other_prompts = [{"a red circle": "a green triangle", "3": "3,4"}.get(a, a) for a in args]
    prompts = CliRunner().invoke(cli_app(), other_prompts)
    assert prompts.exit_code == 2, prompts.output
    assert f"{out / 'runs' / 'kl-seed3'} holds a tuning run with prompts (hash) " in prompts.output
    assert "(tuned on other --prompt texts); remove it or choose another --out" in prompts.output
    assert "lrm tune" not in prompts.output and not (out / "runs" / "kl-seed4").exists()
    # ... or one tuned from another generator
    records = out / "runs" / "kl-seed3" / "records.json"
    records.write_text(json.dumps({**json.loads(records.read_text()), "from": "elsewhere"}))
    moved = CliRunner().invoke(cli_app(), args)
    assert moved.exit_code == 2 and "holds a tuning run with from 'elsewhere'" in moved.output, moved.output


def test_launch_refuses_bad_input_with_one_line(words_runs, tmp_path):  # noqa: F811
    student = ["--student", str(words_runs / "student")]
    a, b = saved_surrogates(words_runs)
    base = ["study", "overopt", "jpeg-incompressibility", "--launch"]
    cases = [
        ([*base, *student, "--regularisers", "none,l2", "--surrogate", a, "--out", str(tmp_path)],
         "unknown regulariser(s) ['l2']; choose from none,kl,concurrent,ensemble"),
        ([*base, *student, "--teacher", str(words_runs / "teacher"), "--out", str(tmp_path)],
         "--launch tunes one generator: give --student RUN"),
        # no --surrogate: the study would fit one on the student's store, and this student records none
        ([*base, *student, "--regularisers", "none", "--out", str(tmp_path)],
         f"the latents of {words_runs / 'student'}: it records no latent store; pass --surrogate DIR"),
        ([*base, *student, "--regularisers", "ensemble", "--ensemble", a, "--out", str(tmp_path)],
         "two or more fitted surrogates"),
        ([*base, *student, "--regularisers", "ensemble", "--ensemble-size", "1", "--out", str(tmp_path)],
         "--ensemble-size"),
        ([*base, *student, "--regularisers", "concurrent", "--seeds", "0,x", "--out", str(tmp_path)],
         "seeds must be integers"),
        ([*base, *student, "--regularisers", "concurrent"], "--out DIR"),
        ([*base, *student, "--regularisers", "concurrent", "--lr", "0", "--out", str(tmp_path)],
         "Invalid value for '--lr': must be a finite number > 0"),  # by typer, not by the first arm's tune
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
                                   "disagreement_weight": config.disagreement_weight,
                                   "ensemble_size": config.ensemble_size, "fit_steps": config.fit_steps}
    assert config.regularisers == REGULARISERS and parse_seeds(" 0, 2 ") == (0, 2)
    with pytest.raises(ValueError, match="must not repeat"):
        LaunchConfig(seeds=(1, 1))


# ---------------------------------------------------------------- surrogates fitted by the study


@pytest.fixture
def student_with_store(words_runs):  # noqa: F811
    """The words student, recording (as a distilled student does) a small store of 64-px procedural images in its
    dct latent space."""
    from lrm.configs import EncodeConfig
    from lrm.datasets.encoding import encode

    store = encode(EncodeConfig("procedural:40", codec="dct", frames=1, size=64, shard_size=20), words_runs / "store",
                   progress=False)
    config_path = words_runs / "student" / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["extra"]["store"] = str(store.path)
    config_path.write_text(json.dumps(config))
    return words_runs


def test_launch_without_surrogates_fits_them_on_the_student_store_once(student_with_store):
    from lrm.datasets.store import LatentStore

    root = student_with_store
    out = root / "study"
    args = ["study", "overopt", "jpeg-incompressibility", "--launch", "--student", str(root / "student"),
            "--regularisers", "none,ensemble", "--seeds", "0", "--fit-steps", "3", *TINY, "--out", str(out)]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    fitted = [out / "surrogates" / f"seed{s}" for s in (0, 1)]  # seed 0: the none arm and member 0; seed 1: member 1
    for seed, folder in enumerate(fitted):
        assert f"[surrogate seed {seed}] lrm fit jpeg-incompressibility --store {root / 'store'}" in result.output
        assert f"[surrogate seed {seed}] held-out Spearman" in result.output
        config = json.loads((folder / "config.json").read_text())
        assert config["label"] == "jpeg-incompressibility@decoded" and config["fit"]["seed"] == seed
        assert config["fit"]["steps"] == 3 and (folder / "model" / "model.safetensors").is_file()
    assert not (out / "surrogates" / "seed2").exists()
    # the store was labelled with the reward of its decoded latents
    assert "jpeg-incompressibility@decoded" in LatentStore.open(root / "store").labels
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["launch"]["surrogate"] == str(fitted[0] / "model")
    assert metrics["launch"]["ensemble"] == [str(f / "model") for f in fitted]
    assert metrics["launch"]["fitted_seeds"] == [0, 1]
    assert json.loads((out / "runs" / "ensemble-seed0" / "records.json").read_text())["ensemble"] == \
        [str(f / "model") for f in fitted]
    # a second launch reuses the fitted surrogates (and the runs): nothing is fitted or written again
    weights = [f / "model" / "model.safetensors" for f in fitted]
    stamps = [w.stat().st_mtime_ns for w in weights]
    again = CliRunner().invoke(cli_app(), args)
    assert again.exit_code == 0, again.output
    assert "lrm fit" not in again.output and "lrm tune" not in again.output, again.output
    assert "[surrogate seed 0] reusing" in again.output and "[surrogate seed 1] reusing" in again.output
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    # a fitted surrogate of other settings is refused instead of being mixed in
    other = CliRunner().invoke(cli_app(), [*args, "--fit-steps", "4"])
    assert other.exit_code == 2 and "holds a surrogate fitted with steps 3, not 4" in other.output, other.output


def test_a_launch_killed_while_labelling_the_store_finishes_the_column_when_relaunched(student_with_store,
                                                                                     monkeypatch):
    """A kill after the store's first label shard stopped every relaunch with "covers 1 of 2 shards; finish it
    with `lrm label STORE jpeg-incompressibility@decoded`", a command that fails for a decoded column."""
    from lrm.datasets import store as st
    from lrm.datasets.store import LatentStore

    root = student_with_store
    args = ["study", "overopt", "jpeg-incompressibility", "--launch", "--student", str(root / "student"),
            "--regularisers", "none", "--seeds", "0", "--fit-steps", "3", *TINY, "--out", str(root / "study")]
    real = st.commit_label_shard

    def killed_at_shard_1(root_, name, index, values, bad):
        if index == 1:
            raise KeyboardInterrupt  # Ctrl-C once shard 0 is committed
        real(root_, name, index, values, bad)

    monkeypatch.setattr(st, "commit_label_shard", killed_at_shard_1)
    assert isinstance(CliRunner().invoke(cli_app(), args).exception, (KeyboardInterrupt, SystemExit))
    assert LatentStore.open(root / "store").manifest["labels"]["jpeg-incompressibility@decoded"]["shards"] == 1
    monkeypatch.setattr(st, "commit_label_shard", real)
    again = CliRunner().invoke(cli_app(), args)
    assert again.exit_code == 0, again.output
    assert LatentStore.open(root / "store").manifest["labels"]["jpeg-incompressibility@decoded"]["complete"]


def test_launch_refuses_a_reward_that_cannot_label_the_store(student_with_store):
    root = student_with_store
    base = ["study", "overopt", "--launch", "--student", str(root / "student"), "--regularisers", "none",
            "--out", str(root / "study")]
    cases = [("no-such-reward", "'no-such-reward' is no pixel reward that can label"),
             ("temporal-flickering", "scores videos and store")]
    for reward, message in cases:
        result = CliRunner().invoke(cli_app(), [base[0], base[1], reward, *base[2:]])
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and message in flat and "Traceback" not in result.output, result.output
    assert not (root / "study" / "surrogates").exists()  # refused before any fit


def test_the_store_to_fit_on_is_found_where_recorded_or_in_a_moved_cache(words_runs, tmp_path, monkeypatch):  # noqa: F811
    from lrm.studies.surrogates import generator_store

    config_path = words_runs / "student" / "model" / "config.json"
    config = json.loads(config_path.read_text())
    recorded = words_runs / "stores" / "image-64px-abc"
    config["extra"]["store"] = str(recorded)
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=f"its store {recorded} is gone; pass --surrogate DIR"):
        generator_store(words_runs / "student")
    moved = tmp_path / "cache" / "stores" / "image-64px-abc"  # the cache moved under another $LRM_CACHE
    moved.mkdir(parents=True)
    (moved / "manifest.json").write_text("{}")  # a store is a folder with its manifest
    assert generator_store(words_runs / "student") == moved
    recorded.mkdir(parents=True)  # where the run recorded it comes first
    (recorded / "manifest.json").write_text("{}")
    assert generator_store(words_runs / "student") == recorded


def test_launch_without_a_generator_takes_the_embedded_student_that_makes_what_the_reward_scores(tmp_path,
                                                                                                 monkeypatch):
    from lrm.cli import tune as tune_cli

    asked = []

    def not_distilled(student_steps, device, video=False):  # the minutes of distilling, left out
        asked.append((student_steps, device, video))
        raise FileNotFoundError("stopped before distilling")

    monkeypatch.setattr(tune_cli, "embedded_student_run", not_distilled)
    for reward, video in (("temporal-flickering", True), ("jpeg-incompressibility", False)):
        result = CliRunner().invoke(cli_app(), ["study", "overopt", reward, "--launch", "--regularisers", "none",
                                                "--out", str(tmp_path / "study")])
        assert result.exit_code == 2 and "stopped before distilling" in result.output, result.output
        assert asked.pop() == (4, "cpu", video) and not asked
    unknown = CliRunner().invoke(cli_app(), ["study", "overopt", "no-such-reward", "--launch", "--out",
                                             str(tmp_path / "study")])
    assert unknown.exit_code == 2 and "no-such-reward" in unknown.output and not asked  # refused before distilling
    assert "Traceback" not in unknown.output
