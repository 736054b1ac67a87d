"""The tuning run's report.html (lrm.tuning.report): written by `lrm tune`, rewritten by `lrm report RUN` or
write_tune_report(RUN), refused with one line for a folder that is no tuning run."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from lrm.reports.html import _fmt
from test_hooks import TUNE_ARGS, cli_app, words_runs  # noqa: F401  (words_runs: a pytest fixture)

SECTIONS = ("Gold and proxy reward", "Diversity and distance", "Surrogate fidelity", "Losses per term",
            "Samples before and after", "Configuration")


@pytest.fixture
def tuned(words_runs):  # noqa: F811
    """A 2-step concurrent LRM tuning run of the tiny student (records at steps 0..2)."""
    out = words_runs / "tuned"
    result = CliRunner().invoke(cli_app(), ["tune", "jpeg-incompressibility", "--student",
                                            str(words_runs / "student"), "--concurrent", *TUNE_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def lazy_app():
    """`lrm` itself, through its lazy command table (bad input: one line, exit code 2)."""
    from lrm.cli import app as lazy

    return lazy.app


def test_lrm_tune_writes_a_report_with_every_section(tuned):
    page = (tuned / "report.html").read_text()
    text = (tuned / "records.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: JavaScript's JSON.parse reads it too
    facts = json.loads(text)
    first, last = facts["records"][0], facts["records"][-1]
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page, section
    # the summary line states the records' numbers: gold and proxy first -> last, the final distance
    assert f"gold {first['gold']:.4g} -&gt; {last['gold']:.4g}" in page
    assert f"proxy {first['proxy']:.4g} -&gt; {last['proxy']:.4g}" in page
    assert f"distance {last['distance']:.3g} after step 2" in page
    assert "seconds per step" in page and f"{facts['seconds_per_step']:.4g}" in page
    assert "peak memory (MB)" in page and "not recorded" in page  # a CPU run records no CUDA peak memory
    assert facts["peak_rss_mb"] > 0  # the process's peak, labelled as such
    assert f"compare the runs&#x27; added memory)</td><td>{_fmt(facts['peak_rss_mb'])}</td>" in page
    if facts["added_rss_mb"] is not None:  # Linux: the resident set before the steps and what they added
        assert 0 < facts["loaded_rss_mb"] <= facts["loaded_rss_mb"] + facts["added_rss_mb"] <= facts["peak_rss_mb"]
        assert f"<td>added by the training steps at their peak (MB)</td><td>{_fmt(facts['added_rss_mb'])}" in page
    # four figures and the two grids (three when the best gold came before the end), inline: the page stands alone
    best_shown = facts["best"]["gold"] != last["gold"]
    assert page.count("data:image/png;base64,") == 6 + best_shown
    assert (f"best gold {facts['best']['gold']:.4g}, update {facts['best']['step']}</figcaption>" in page) == best_shown
    assert "src='figures/" not in page and "src=\"figures/" not in page
    assert {p.name for p in (tuned / "figures").iterdir()} == {"rewards.png", "diversity_distance.png",
                                                                 "fidelity.png", "losses.png"}


def test_a_run_without_a_surrogate_gets_no_proxy_or_fidelity(tuned, tmp_path):
    from lrm.tuning.report import write_tune_report

    run = tmp_path / "direct"
    shutil.copytree(tuned, run)
    facts = json.loads((run / "records.json").read_text())
    for record in facts["records"]:
        record["proxy"] = record["fidelity"] = float("nan")
    facts.update(method="direct", concurrent=False, surrogate_fidelity=None, losses=[], best=None)
    (run / "records.json").write_text(json.dumps(facts))
    shutil.rmtree(run / "after")
    page = write_tune_report(run).read_text()
    assert "Surrogate fidelity" not in page and "Losses per term" not in page and "proxy -" not in page
    assert "(direct)" in page and page.count("data:image/png;base64,") == 3  # two figures, the grid before


def test_a_run_whose_every_update_was_skipped_gets_its_report_without_a_losses_figure(tuned, tmp_path):
    from lrm.tuning.report import write_tune_report

    run = tmp_path / "skipped"
    shutil.copytree(tuned, run)
    facts = json.loads((run / "records.json").read_text())
    facts["losses"] = [{} for _ in facts["losses"]]  # no step logged a loss (e.g. a student whose weights went NaN)
    (run / "records.json").write_text(json.dumps(facts))
    page = write_tune_report(run).read_text()
    assert "<h2>Gold and proxy reward</h2>" in page and "Losses per term" not in page


def test_the_samples_at_the_best_gold_join_the_grids_only_when_the_run_ended_below_it(tuned, tmp_path):
    from lrm.tuning.report import write_tune_report

    run = tmp_path / "peaked"
    shutil.copytree(tuned, run)
    facts = json.loads((run / "records.json").read_text())
    golds = [r["gold"] for r in facts["records"]]
    for best_step, shown in ((1, True), (2, False)):  # update 1 best (the run ended below it), or the last
        facts["records"][best_step]["gold"] = max(golds) + 1.0
        facts["best"] = {"step": best_step, "gold": max(golds) + 1.0, "checkpoint": f"checkpoints/step-{best_step:08d}"}
        (run / "records.json").write_text(json.dumps(facts))
        page = write_tune_report(run).read_text()
        assert (f"best gold {max(golds) + 1.0:.4g}, update 1</figcaption>" in page) == shown
        assert page.count("data:image/png;base64,") == 6 + shown
        facts["records"][best_step]["gold"] = golds[best_step]
    facts["best"] = {"step": 1, "gold": max(golds) + 1.0, "checkpoint": "checkpoints/step-00000001"}
    (run / "records.json").write_text(json.dumps(facts))
    shutil.rmtree(run / "evals")  # no samples kept of that evaluation: nothing more to show
    assert write_tune_report(run).read_text().count("data:image/png;base64,") == 6


def test_lrm_report_rewrites_a_tuning_runs_report(tuned):
    (tuned / "report.html").unlink()
    result = CliRunner().invoke(lazy_app(), ["report", str(tuned)])
    assert result.exit_code == 0, result.output
    assert "<h2>Gold and proxy reward</h2>" in (tuned / "report.html").read_text()
    refused = CliRunner().invoke(lazy_app(), ["report", str(tuned), "--store", str(tuned)])
    assert refused.exit_code == 2 and "is a tuning run" in refused.output, refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) <= 2  # the error + hint


def test_a_folder_without_records_is_refused_with_one_line(tmp_path):
    from lrm.tuning.report import write_tune_report

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no records.json, so it is not a tuning run"):
        write_tune_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()
    result = CliRunner().invoke(lazy_app(), ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1


def test_only_the_running_fidelity_is_shown_without_a_figure(tuned, tmp_path):
    from lrm.tuning.report import write_tune_report

    run = tmp_path / "running"
    shutil.copytree(tuned, run)
    facts = json.loads((run / "records.json").read_text())
    for record in facts["records"]:
        record.pop("fidelity")  # records of a run that logged only the concurrent surrogate's running fidelity
    facts["surrogate_fidelity"] = 0.75
    facts.pop("best")  # as a run of an earlier lrm wrote it: no best evaluation named, so no grid of it
    (run / "records.json").write_text(json.dumps(facts))
    page = write_tune_report(run).read_text()
    assert "No per-evaluation fidelity was recorded" in page and "at the end: 0.75." in page
    assert page.count("data:image/png;base64,") == 5  # rewards, diversity, losses and the two grids


def test_the_gradient_alignment_joins_the_fidelity_section(tuned, tmp_path):
    from lrm.tuning.report import write_tune_report

    run = tmp_path / "aligned"
    shutil.copytree(tuned, run)
    facts = json.loads((run / "records.json").read_text())
    for record, cosine in zip(facts["records"], [float("nan"), 0.25, -0.125]):  # not recorded at step 0
        record["gradient_alignment"] = cosine
    (run / "records.json").write_text(json.dumps(facts))
    page = write_tune_report(run).read_text()
    assert f"averaged ({_fmt(0.25)} at step 1, {_fmt(-0.125)} at step 2)" in page
    assert "Gradient alignment" not in write_tune_report(tuned).read_text()  # jpeg size has no gradient: none recorded


def test_a_concurrent_surrogate_matching_gradients_records_and_reports_its_running_cosine(words_runs):  # noqa: F811
    out = words_runs / "matched"
    result = CliRunner().invoke(cli_app(), ["tune", "colorfulness", "--student", str(words_runs / "student"),
                                            "--concurrent", "--gradient-weight", "2", *TUNE_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    facts = json.loads((out / "records.json").read_text())
    cosine = facts["surrogate_gradient_cosine"]
    assert facts["config"]["gradient_weight"] == 2.0 and -1 <= cosine <= 1
    assert f"the concurrent surrogate's gradient cosine {cosine:.3f}" in result.output
    page = (out / "report.html").read_text()
    assert f"latent gradient (gradient weight {_fmt(2.0)}); their running gradient cosine" in page
    assert f"at the end: {_fmt(cosine)}." in page
