import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lrm.cli.app import app
from lrm.rewards import REWARDS, load

runner = CliRunner(env={"COLUMNS": "300"})  # no wrapping of error panels


@pytest.fixture()
def media(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "media"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / "flat.png")
    frames = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(folder / "fade.gif", save_all=True, append_images=frames[1:], duration=100)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_rewards_json_lists_every_registered_reward():
    result = runner.invoke(app, ["rewards", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(REWARDS)
    assert rows["jpeg-compressibility"]["ready"] and not rows["jpeg-compressibility"]["differentiable"]
    assert rows["sharpness"]["differentiable"]


def test_score_skips_bad_file_and_matches_library(media, tmp_path):
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", "jpeg-incompressibility", str(media), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "skipped 1" in result.output
    rows = {r["path"].rsplit("/", 1)[1]: float(r["score"]) for r in _csv(out.read_text())}
    assert set(rows) == {"noise.png", "flat.png", "fade.gif"}
    pixels = torch.from_numpy(np.array(Image.open(media / "noise.png"))).permute(2, 0, 1).float() / 255
    expected = load("jpeg-incompressibility")(pixels[None, None]).item()
    assert rows["noise.png"] == pytest.approx(expected, rel=1e-6)
    assert rows["noise.png"] > rows["flat.png"]


def test_score_json_output_and_frames(media, tmp_path):
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["score", "temporal-flickering", str(media / "fade.gif"), "--frames", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())
    assert row["frames"] == 3 and 0 < row["score"] < 1


def test_a_clip_too_small_for_optical_flow_is_skipped_by_name_and_the_others_scored(media, tmp_path):
    # OpenCV's DIS raised cv2.error (not a ValueError) on a 6x6 GIF: a traceback, and every other file's score lost
    tiny = [Image.fromarray(np.full((6, 6, 3), 60 * i, np.uint8)) for i in range(3)]
    tiny[0].save(tmp_path / "tiny.gif", save_all=True, append_images=tiny[1:], duration=100)
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", "dynamic-degree", str(media / "fade.gif"), str(tmp_path / "tiny.gif"),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny.gif" in result.output and "at least 12 pixels" in result.output and "skipped 1" in result.output
    assert [r["path"].rsplit("/", 1)[1] for r in _csv(out.read_text())] == ["fade.gif"]


def test_dynamic_degree_notes_media_read_at_another_frame_rate_than_its_fps_option(media, tmp_path):
    # VBench keeps every round(fps / 8)-th frame; a 25-fps clip scored as 8 fps compared consecutive frames
    frames = [Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)) for i in range(8)]
    frames[0].save(tmp_path / "fast.gif", save_all=True, append_images=frames[1:], duration=40)  # 25 fps
    result = runner.invoke(app, ["score", "dynamic-degree", str(tmp_path / "fast.gif"), str(media / "fade.gif")])
    assert result.exit_code == 0, result.output
    assert "note: dynamic-degree assumed 8 fps, but 1 file(s) were read at 25 fps; pass -o fps=25" in result.output
    # fade.gif (10 fps) keeps every frame at 8 fps too; with -o fps=25 the 25-fps clip keeps every 3rd
    quiet = runner.invoke(app, ["score", "dynamic-degree", str(tmp_path / "fast.gif"), "-o", "fps=25"])
    assert quiet.exit_code == 0 and "note:" not in quiet.output, quiet.output


def test_score_text_reward_needs_a_prompt(media):
    result = runner.invoke(app, ["score", "prompt-color", str(media / "flat.png")])
    assert result.exit_code != 0
    assert "--prompt" in result.output
    ok = runner.invoke(app, ["score", "prompt-color", str(media / "flat.png"), "--prompt", "a gray wall"])
    assert ok.exit_code == 0, ok.output


def test_score_exits_nonzero_when_nothing_scored(media):
    result = runner.invoke(app, ["score", "sharpness", str(media / "broken.png")])
    assert result.exit_code == 1
    assert "scored 0" in result.output


def test_score_rejects_bad_flags_up_front(media):
    bad_out = runner.invoke(app, ["score", "sharpness", str(media), "--out", "x.txt"])
    assert bad_out.exit_code != 0 and ".csv or .json" in bad_out.output
    both = runner.invoke(app, ["score", "prompt-color", str(media), "--prompt", "red", "--prompts", "p.txt"])
    assert both.exit_code != 0 and "not both" in both.output
    unknown = runner.invoke(app, ["score", "no-such-reward", str(media)])
    assert unknown.exit_code != 0 and "Known rewards" in unknown.output


def test_score_users_metric_file(media, tmp_path):
    metric = tmp_path / "brightness.py"
    metric.write_text("import numpy as np\n\ndef mean_level(frames):\n    return float(frames.mean())\n")
    result = runner.invoke(app, ["score", f"{metric}:mean_level", str(media / "flat.png"), "--kind", "image",
                                 "--input", "uint8"])
    assert result.exit_code == 0, result.output
    (row,) = _csv(result.stdout)
    assert float(row["score"]) == pytest.approx(128.0)


def test_the_lrm_command_prints_bad_input_as_one_message(media, monkeypatch, capsys):
    from lrm.cli.app import main
    from lrm.cli.errors import TRACEBACK_ENV

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.setattr("sys.argv", ["lrm", "score", "no-such-reward", str(media)])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: unknown reward 'no-such-reward'. Known rewards:") and "Traceback" not in err
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(KeyError, match="Known rewards"):
        main()


def test_named_files_that_are_not_media_are_skipped_and_counted(media, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# not an image\n")
    result = runner.invoke(app, ["score", "sharpness", str(media / "flat.png"), str(notes), str(media / "broken.png")])
    assert result.exit_code == 0, result.output
    assert "scored 1 file(s), skipped 2" in result.output
    assert f"skipped {notes}: unsupported extension '.md'" in result.output
    assert f"skipped {media / 'broken.png'}: cannot decode image" in result.output  # the path once, then why


@pytest.mark.parametrize("command", [["score", "sharpness", "MEDIA"], ["predict", "RUN", "MEDIA"],
                                     ["encode", "procedural:2", "--out", "STORE"], ["label", "STORE", "sharpness"],
                                     ["fit", "sharpness", "--dry-run"]])
def test_a_device_this_machine_lacks_is_refused_before_any_work(command, media, tmp_path, monkeypatch):
    import torch

    where = {"MEDIA": str(media), "RUN": str(tmp_path / "run"), "STORE": str(tmp_path / "store")}
    args = [where.get(a, a) for a in command]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = runner.invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU is visible here" in result.output and "--device cpu" in result.output
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, [*args, "--device", "cuda:1"])
    assert result.exit_code == 2 and "1 CUDA GPU(s), cuda:0 to cuda:0" in result.output
    result = runner.invoke(app, [*args, "--device", "gpu"])
    assert result.exit_code == 2 and "is not a torch device" in result.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "run").exists()
