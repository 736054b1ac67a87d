"""A user metric's label column is matched by the code that computes it (file, function, sha256 of the file), not
by how its reference is spelled; a video reward is refused on a store of single frames before any labelling."""

from __future__ import annotations

import json
import sys

from typer.testing import CliRunner

from lrm.cli.app import app
from lrm.datasets import store as st
from lrm.datasets.store import LatentStore

runner = CliRunner(env={"COLUMNS": "300"})  # no wrapping of error panels
LEVEL = "def level(frames):\n    return float(frames.mean())\n"
CHANGED = "changed since the column was computed"


def small_store(path, *extra: str) -> str:
    made = runner.invoke(app, ["encode", "procedural:8", "--frames", "1", "--size", "32", "--out", str(path),
                               "--quiet", *extra])
    assert made.exit_code == 0, made.output
    return str(path)


def label(store: str, reference: str):
    return runner.invoke(app, ["label", store, reference, "--kind", "image", "--input", "uint8", "--quiet"])


def fit(store: str, reference: str, *extra: str):
    return runner.invoke(app, ["fit", reference, "--kind", "image", "--input", "uint8", "--store", store, *extra])


def test_an_edited_metric_is_refused_where_its_old_column_was_reused(tmp_path):
    metric = tmp_path / "m.py"
    metric.write_text(LEVEL)
    store = small_store(tmp_path / "store")
    assert label(store, f"{metric}:level").exit_code == 0
    before = LatentStore.open(store).label("level")
    metric.write_text(LEVEL.replace("return ", "return 100 * "))
    for result in (label(store, f"{metric}:level"), fit(store, f"{metric}:level", "--dry-run"),
                   fit(store, f"{metric}:level", "--steps", "2", "--out", str(tmp_path / "run"))):
        assert result.exit_code != 0 and CHANGED in result.output, result.output
        assert f"column 'level' of {store}" in result.output and f"lrm store drop-label {store} level" in result.output
    assert (LatentStore.open(store).label("level") == before).all() and not (tmp_path / "run").exists()
    # a column labelled before the code was recorded (no "metric" in label.json) is reused as it always was
    info = tmp_path / "store" / "labels" / "level" / "label.json"
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != "metric"}))
    assert label(store, f"{metric}:level").exit_code == 0


def test_a_column_a_kill_left_unfinished_resumes_only_with_the_same_code(tmp_path, monkeypatch):
    metric = tmp_path / "m.py"
    metric.write_text(LEVEL)
    store = small_store(tmp_path / "store", "--shard-size", "4")  # 2 shards
    real = st.commit_label_shard

    def killed_at_shard_1(root, name, index, values, bad):
        if index == 1:
            raise KeyboardInterrupt  # stands for a kill once shard 0 of the column is committed
        real(root, name, index, values, bad)

    monkeypatch.setattr(st, "commit_label_shard", killed_at_shard_1)
    assert label(store, f"{metric}:level").exit_code != 0
    monkeypatch.setattr(st, "commit_label_shard", real)
    assert LatentStore.open(store).label_unfinished("level")
    metric.write_text(LEVEL.replace("return ", "return 100 * "))
    refused = label(store, f"{metric}:level")
    assert refused.exit_code != 0 and CHANGED in refused.output, refused.output
    assert LatentStore.open(store).manifest["labels"]["level"]["shards"] == 1  # no shard of the new code mixed in
    metric.write_text(LEVEL)
    assert label(store, f"{metric}:level").exit_code == 0  # the same code finishes the column
    assert LatentStore.open(store).manifest["labels"]["level"]["complete"]


def test_other_spellings_of_the_same_metric_file_reuse_its_column(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text(LEVEL)
    store = small_store(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    assert label(store, "m.py:level").exit_code == 0
    for spelling in ("./m.py:level", f"{tmp_path}/m.py:level", "../" + tmp_path.name + "/m.py:level"):
        again = label(store, spelling)
        assert again.exit_code == 0, again.output
        dry = fit(store, spelling, "--dry-run")
        assert dry.exit_code == 0, dry.output
    (tmp_path / "other.py").write_text(LEVEL)  # the same code in another file is another metric
    other = label(store, "other.py:level")
    assert other.exit_code != 0 and "computed otherwise (metric.file: saved" in other.output, other.output


def test_a_module_metric_is_matched_by_its_source_file(tmp_path, monkeypatch):
    module = tmp_path / "lrm_test_provenance_metric.py"
    module.write_text(LEVEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module.stem, raising=False)
    store = small_store(tmp_path / "store")
    assert label(store, f"{module.stem}:level").exit_code == 0
    recorded = LatentStore.open(store).label_info("level")["metric"]
    assert recorded["file"] == str(module.resolve()) and recorded["module"] == module.stem
    module.write_text(LEVEL.replace("return ", "return 100 * "))
    refused = label(store, f"{module.stem}:level")
    assert refused.exit_code != 0 and CHANGED in refused.output, refused.output
    sys.modules.pop(module.stem, None)


def test_a_video_reward_on_a_store_of_single_frames_is_refused_before_labelling(tmp_path):
    store = small_store(tmp_path / "store")
    metric = tmp_path / "m.py"
    metric.write_text("def motion(pixels):\n    return (pixels[:, 1:] - pixels[:, :-1]).abs().mean(dim=(1, 2, 3, 4))\n")
    for args in (["label", store, "temporal-flickering", "--quiet"],
                 ["label", store, f"{metric}:motion", "--kind", "video", "--quiet"],
                 ["fit", "temporal-flickering", "--store", store, "--steps", "2", "--out", str(tmp_path / "run")],
                 ["fit", "temporal-flickering", "--store", store, "--dry-run"]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and "scores clips (video)" in result.output, result.output
        assert f"{store} holds 1 frame per clip" in result.output and "--frames 8" in result.output
    assert LatentStore.open(store).labels == [] and not any((tmp_path / "store" / "labels").glob("*"))
    out = tmp_path / "labelled-while-encoding"
    result = runner.invoke(app, ["encode", "procedural:4", "--frames", "1", "--size", "32", "--label",
                                 "temporal-flickering", "--out", str(out), "--quiet"])
    assert result.exit_code != 0 and f"{out} holds 1 frame per clip" in result.output, result.output
    assert not (out / "shards").exists() or not any((out / "shards").iterdir())  # refused before encoding


def test_clips_shorter_than_a_video_reward_needs_are_refused_before_labelling(tmp_path):
    """motion-smoothness needs 3 frames, dynamic-degree at -o fps=60 nine: on shorter clips every row would fail
    (each retried one by one), the column would be all NaN and need `lrm store drop-label` before a relabel."""
    store = small_store(tmp_path / "store", "--frames", "2")
    for args, needed in ((["motion-smoothness"], 3), (["dynamic-degree", "-o", "fps=60"], 9)):
        result = runner.invoke(app, ["label", store, *args, "--quiet"])
        assert result.exit_code != 0 and f"needs clips of at least {needed} frames" in result.output, result.output
        assert f"{store} holds 2 per clip" in result.output and f"--frames {needed}" in result.output
    assert LatentStore.open(store).labels == []
    result = runner.invoke(app, ["label", store, "temporal-flickering", "--quiet"])  # 2 frames: enough
    assert result.exit_code == 0 and LatentStore.open(store).labels == ["temporal-flickering"], result.output


def test_a_report_on_another_store_labels_it_with_the_code_the_run_was_fitted_on(tmp_path, monkeypatch):
    metric = tmp_path / "m.py"
    metric.write_text(LEVEL)
    store = small_store(tmp_path / "store")
    run = tmp_path / "run"
    fitted = fit(store, f"{metric}:level", "--steps", "2", "--out", str(run), "--quiet")
    assert fitted.exit_code == 0, fitted.output
    labelled = small_store(tmp_path / "other", "--seed", "5")
    monkeypatch.chdir(tmp_path / "store")  # another folder: the run's recorded file is found all the same
    result = runner.invoke(app, ["report", str(run), "--store", labelled, "--out", str(tmp_path / "r1"), "--quiet"])
    assert result.exit_code == 0, result.output
    metric.write_text(LEVEL.replace("return ", "return 100 * "))  # edited after the fit
    again = runner.invoke(app, ["report", str(run), "--store", labelled, "--out", str(tmp_path / "r2"), "--quiet"])
    assert again.exit_code == 0, again.output  # that store's column was computed by the run's code: it still judges
    fresh = small_store(tmp_path / "fresh", "--seed", "6")
    refused = runner.invoke(app, ["report", str(run), "--store", fresh, "--quiet"])
    assert refused.exit_code != 0 and "changed since" in refused.output and "restore that code" in refused.output
    assert LatentStore.open(fresh).labels == []  # refused before labelling it with the new code


def test_under_torchrun_every_process_refuses_changed_code_alike(tmp_path):
    """Real torchrun, 2 gloo processes: the first one used to refuse alone and the second die at the barrier."""
    import os
    import subprocess
    from pathlib import Path

    metric = tmp_path / "m.py"
    metric.write_text(LEVEL)
    store = small_store(tmp_path / "store")
    assert label(store, f"{metric}:level").exit_code == 0
    metric.write_text(LEVEL.replace("return ", "return 100 * "))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "lrm.cli.app", "label", store, f"{metric}:level", "--kind", "image", "--input", "uint8", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and output.count(CHANGED) == 2, output[-3000:]  # each process, one line
    # (torchrun's own launcher still reports the failed processes with its ChildFailedError traceback)
    assert "Connection closed" not in output and "RuntimeError" not in output, output[-3000:]
