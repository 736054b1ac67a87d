"""A corpus of damaged and unusual inputs, across every command.

Each case makes its damaged input in tmp_path and checks what a user sees: exit code 2 with a
one-line message that names the item and the fix, or a skipped item that is named, counted and
never written as a value; never a traceback, never a success on a store that silently lost rows.
"""

import csv
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lrm.cli.app import app

runner = CliRunner(env={"COLUMNS": "400"})  # error panels on one line

# A user's metric file: one function per way a metric goes wrong. uint8 frames (T, H, W, 3) in, one value out.
METRICS = """
import math
def mean(frames):
    return float(frames.mean())
def nan_if_dark(frames):
    return float("nan") if frames.mean() < 128 else float(frames.mean())
def inf_if_dark(frames):
    return math.inf if frames.mean() < 128 else 1.0
def none_if_dark(frames):
    return None if frames.mean() < 128 else 1.0
def text_if_dark(frames):
    return "dark" if frames.mean() < 128 else 1.0
def raises_if_dark(frames):
    if frames.mean() < 128:
        raise ZeroDivisionError("dark frame")
    return 1.0
def always_nan(frames):
    return float("nan")
def always_raises(frames):
    raise RuntimeError("model not loaded")
def three_values(pixels):
    return pixels.new_zeros(3)
"""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def run(*args, code: int = 2):
    """Invoke `lrm ARGS`; no crash, no traceback, the expected exit code."""
    result = runner.invoke(app, [str(a) for a in args])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    return result


def message(result) -> str:
    """The one line that reports the error: `Error: ...`, or the line in typer's error panel."""
    lines = [line.strip().strip("│").strip() for line in result.output.splitlines()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if errors:
        return errors[0]
    panel = lines.index(next(line for line in lines if line.startswith("╭─ Error")))
    body = lines[panel + 1:lines.index(next(line for line in lines[panel:] if line.startswith("╰")))]
    assert len(body) == 1, f"the error takes {len(body)} lines:\n{result.output}"
    return body[0]


def fails(*args, names: str | Path, fix: str):
    """Exit 2 with one line naming `names` and saying `fix`."""
    line = message(run(*args, code=2))
    assert str(names) in line, line
    assert fix in line, line
    return line


def scores(result) -> list[dict]:
    return list(csv.DictReader(io.StringIO(result.stdout)))


# ---------------------------------------------------------------------------------------------
# fixtures: built once per module, copied before damage
# ---------------------------------------------------------------------------------------------

ENCODE_BASE = ("encode", "procedural:8", "--size", 32, "--frames", 1, "--shard-size", 4, "--label", "colorfulness",
               "--quiet")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny procedural store (8 images, 32 px) with a colorfulness column."""
    out = tmp_path_factory.mktemp("stores") / "base"
    run(*ENCODE_BASE, "--out", out, code=0)
    return out


@pytest.fixture()
def store(base, tmp_path) -> Path:
    """A copy of the base store, to damage."""
    return Path(shutil.copytree(base, tmp_path / "store"))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A white and a black image (a metric fails on the dark one) and nothing else."""
    folder = tmp_path_factory.mktemp("media")
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(folder / "white.png")
    Image.fromarray(np.full((32, 32, 3), 5, np.uint8)).save(folder / "black.png")
    return folder


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("metrics") / "metrics.py"
    path.write_text(METRICS)
    return path


@pytest.fixture(scope="module")
def broken_media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("broken")
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 cut short")
    return folder


@pytest.fixture(scope="module")
def base_run(base, tmp_path_factory) -> Path:
    """A run folder with a small (untrained) surrogate of colorfulness in the base store's latent space."""
    from lrm.datasets.store import LatentStore
    from lrm.models import SurrogateInfo, build
    from lrm.rewards import REWARDS

    settings = LatentStore.open(base).codec_settings
    torch.manual_seed(0)
    model = build("image-cnn", settings["channels"])
    model.info = SurrogateInfo(codec_settings=settings, reward_name="colorfulness",
                               reward_spec=asdict(REWARDS["colorfulness"].spec),
                               extra={"label": "colorfulness", "label_pixels": "source", "frames": 1, "size": 32})
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    model.save_pretrained(run_dir / "model")
    return run_dir


@pytest.fixture()
def damaged_run(base_run, tmp_path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """A real `lrm fit` run (config.json, its own store, a 2-step surrogate): what `lrm report` judges. Fitted on
    the base store's settings at another seed, so that the base store and its copies are other stores to report on
    (a store of the same clips is refused)."""
    folder = tmp_path_factory.mktemp("fitted")
    run(*ENCODE_BASE, "--seed", 1, "--out", folder / "store", code=0)
    run("fit", "colorfulness", "--store", folder / "store", "--steps", 2, "--batch-size", 4, "--out", folder / "run",
        "--quiet", code=0)
    return folder / "run"


@pytest.fixture()
def damaged_fitted_run(fitted_run, tmp_path) -> Path:
    return Path(shutil.copytree(fitted_run, tmp_path / "run"))


def non_utf8_prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_bytes("a caf\u00e9\nthe sea\n".encode("latin-1"))
    return path


# ---------------------------------------------------------------------------------------------
# names and options: the closest name, the options a reward takes
# ---------------------------------------------------------------------------------------------

def test_score_unknown_reward_suggests_the_closest(media):
    fails("score", "colourfulness", media, names="colourfulness", fix="did you mean 'colorfulness'?")


def test_label_unknown_reward_suggests_the_closest(store):
    fails("label", store, "sharpnes", names="sharpnes", fix="did you mean 'sharpness'?")


def test_fit_unknown_reward_suggests_the_closest(tmp_path):
    fails("fit", "jpeg-compresibility", "--out", tmp_path / "r", names="jpeg-compresibility",
          fix="did you mean 'jpeg-compressibility'?")


def test_encode_unknown_label_reward(tmp_path):
    fails("encode", "procedural:4", "--size", 32, "--frames", 1, "--label", "brisq", "--out", tmp_path / "s",
          names="brisq", fix="did you mean 'brisque'?")


@pytest.mark.parametrize("command", [("encode", "procedural:4"), ("teacher", "train", "--data", "procedural:4")])
def test_a_size_whose_pixels_cannot_fit_is_refused_before_any_work(command, tmp_path):
    # 4 clips at 100000 px: 447 GiB of pixels or more; it used to run out of memory
    fails(*command, "--size", 100000, "--out", tmp_path / "s", names="--size 100000", fix="lower --size")
    assert not (tmp_path / "s").exists()


def test_the_size_check_counts_only_the_clips_a_batch_can_hold(monkeypatch, tmp_path):
    from lrm.datasets import encoding

    asked = []

    def record(frames, size, batch_size):
        asked.append(batch_size)
        raise KeyboardInterrupt  # stop before any encoding

    with monkeypatch.context() as patched:  # one image with --batch-size 16: a batch holds 1 clip
        patched.setattr(encoding, "refuse_oversized_batch", record)
        with pytest.raises(KeyboardInterrupt):
            encoding.encode(encoding.EncodeConfig("procedural:1", frames=1, size=32, batch_size=16), tmp_path / "s")
    assert asked == [1]
    monkeypatch.setattr(encoding, "available_memory_bytes", lambda: 4 * 2**30)
    encoding.refuse_oversized_batch(frames=1, size=16384, batch_size=1)  # one 3 GiB image fits
    with pytest.raises(ValueError, match="--size 16384: one batch of 2 clip"):
        encoding.refuse_oversized_batch(frames=1, size=16384, batch_size=2)


def test_encode_unknown_codec_suggests_the_closest(tmp_path):
    fails("encode", "procedural:4", "--codec", "tae2f", "--out", tmp_path / "s", names="tae2f",
          fix="did you mean 'taef2'?")


def test_fit_unknown_preset_suggests_the_closest(tmp_path):
    fails("fit", "colorfulness", "--model", "image-cnn-stat", "--out", tmp_path / "r", names="image-cnn-stat",
          fix="did you mean 'image-cnn-stats'?")


@pytest.mark.parametrize("preset, replacement", [("image-cnn-m", "image-cnn with width=2.0"),
                                                 ("image-nss-pixels", "the pixel path")])
def test_fit_removed_preset_names_its_replacement(preset, replacement, tmp_path):
    fails("fit", "colorfulness", "--model", preset, "--out", tmp_path / "r", names=f"{preset!r} was removed",
          fix=f"use {replacement}")


@pytest.mark.parametrize("flag, fix", [("--steps", "teacher --steps must be a positive integer"),
                                       ("--batch-size", "teacher --batch-size must be a positive integer"),
                                       ("--size", "greater than or equal to 1")])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_teacher_train_refuses_counts_below_one(flag, fix, value, tmp_path):
    # --size 0 passed --dry-run as a plan to encode 0-pixel frames
    extra = ["--data", "procedural:4"] if flag == "--size" else []
    fails("teacher", "train", flag, value, *extra, "--out", tmp_path / "t", "--dry-run",
          names="--size" if flag == "--size" else f"got {value}", fix=fix)


def test_dry_run_refuses_what_the_run_would(fitted_run, tmp_path):
    """--dry-run prints the plan only for input the real run accepts: no clips, no such folder or codec, an --out
    holding another command's run or other files are refused as the run refuses them (it printed a plan, exit 0)."""
    (tmp_path / "empty").mkdir()
    for data, names, fix in (("procedural:0", "procedural:N", "needs N >= 1, got 0"),
                             (tmp_path / "empty", tmp_path / "empty", "no images or videos"),
                             (tmp_path / "missing", tmp_path / "missing", "no such file or folder")):
        fails("fit", "colorfulness", "--data", data, "--out", tmp_path / "r", "--dry-run", names=names, fix=fix)
        fails("teacher", "train", "--data", data, "--out", tmp_path / "t", "--dry-run", names=names, fix=fix)
    fails("teacher", "train", "--data", "procedural:8", "--codec", "nosuch", "--dry-run", names="nosuch",
          fix="Known codecs: dct, pae, taef2")
    fails("teacher", "train", "--data", "procedural:8", "--out", fitted_run, "--dry-run", names=fitted_run,
          fix="holds a surrogate run of `lrm fit`, not a teacher run")
    fails("fit", "colorfulness", "--data", "procedural:8", "--out", fitted_run.parent, "--dry-run",
          names=fitted_run.parent, fix="holds files that are not a run of `lrm fit`")


@pytest.mark.parametrize("flag, value, guess", [("--loss", "rank", "ranking"), ("--label-transform", "logg", "log"),
                                                ("--label-pixels", "decode", "decoded"), ("--augment", "hflp", "hflip")])
def test_fit_choice_typo_suggests_the_closest(flag, value, guess, tmp_path):
    fails("fit", "colorfulness", flag, value, "--out", tmp_path / "r", names=f"got {value!r}",
          fix=f"did you mean {guess!r}?")


def test_label_pixels_typo_suggests_the_closest(store):
    fails("label", store, "sharpness", "--pixels", "decode", names="got 'decode'", fix="did you mean 'decoded'?")


@pytest.mark.parametrize("argv, named", [(["rewards", "--jsn"], "--jsn"), (["rewards", "colorfulness"], "colorfulness")])
def test_rewards_with_an_unknown_option_or_argument(argv, named):
    assert named in message(run(*argv, code=2))


def test_unknown_command_names_the_known_ones():
    line = message(run("scroe", code=2))
    assert "'scroe'" in line and "score" in line


def test_score_unknown_option_names_the_reward_and_its_options(media):
    fails("score", "colorfulness", media, "-o", "frame=2", names="colorfulness has no option 'frame'",
          fix="did you mean 'frames'?")


def test_score_option_for_a_reward_without_options(tmp_path):
    clip = tmp_path / "clip.gif"
    frames = [Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)) for i in range(3)]
    frames[0].save(clip, save_all=True, append_images=frames[1:])
    fails("score", "temporal-flickering", clip, "-o", "fps=8", names="temporal-flickering has no option 'fps'",
          fix="leave out -o")


def test_clips_shorter_than_frames_are_named_with_their_frame_count(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for k in range(2):  # 3-frame clips, --frames 5
        frames = [Image.fromarray(np.full((16, 16, 3), 30 * i + k, np.uint8)) for i in range(3)]
        frames[0].save(folder / f"c{k}.gif", save_all=True, append_images=frames[1:])
    fails("encode", folder, "--frames", "5", "--size", "16", "--out", tmp_path / "store", "--quiet",
          names="3 frames, fewer than the 5 of each clip of this store", fix="--frames 3 or fewer")


def test_label_unknown_option(store):
    fails("label", store, "sharpness", "-o", "size=3", names="sharpness has no option 'size'", fix="Its options: frames")


def test_fit_unknown_option_before_any_work(tmp_path):
    fails("fit", "colorfulness", "-o", "colour=1", "--out", tmp_path / "r", names="colorfulness has no option 'colour'",
          fix="Its options")
    assert not (tmp_path / "r").exists()


def test_option_that_is_not_key_value(media):
    fails("score", "colorfulness", media, "-o", "frames", names="'frames' is not KEY=VALUE", fix="--option frames=8")


def test_metric_options_on_a_built_in_reward(media):
    fails("score", "sharpness", media, "--kind", "video", names="sharpness", fix="leave them out for built-in rewards")


def test_metric_with_an_unknown_kind(media, metrics):
    fails("score", f"{metrics}:mean", media, "--kind", "picture", names="'picture'", fix="kind must be one of")


def test_metric_with_an_unknown_input(media, metrics):
    fails("score", f"{metrics}:mean", media, "--input", "float", names="'float'", fix="input must be one of")


# ---------------------------------------------------------------------------------------------
# a user's metric: syntax errors, failures at import, missing functions
# ---------------------------------------------------------------------------------------------

def test_metric_file_with_a_syntax_error(media, tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("def score(frames):\n    return frames.mean(\n")
    fails("score", f"{path}:score", media, "--input", "uint8", names=path, fix="syntax error at line")


def test_metric_file_that_fails_at_import(media, tmp_path):
    path = tmp_path / "needs.py"
    path.write_text("import no_such_module_here\ndef score(frames):\n    return 0.0\n")
    fails("score", f"{path}:score", media, names=path, fix="ModuleNotFoundError")


def test_metric_file_without_the_function(media, metrics):
    fails("score", f"{metrics}:missing", media, names="has no function 'missing'", fix="it defines: ")


def test_metric_file_that_does_not_exist(media, tmp_path):
    fails("score", f"{tmp_path / 'nope.py'}:fn", media, names="nope.py", fix="does not exist")


def test_metric_module_that_does_not_exist(media):
    fails("score", "no_such_pkg.metrics:fn", media, names="no_such_pkg", fix="PYTHONPATH")


def test_label_with_a_metric_file_with_a_syntax_error(store, tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("def score(frames) return 1\n")
    fails("label", store, f"{path}:score", "--input", "uint8", names=path, fix="syntax error")


def test_fit_with_a_metric_file_with_a_syntax_error(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("def score(frames):\n  return (\n")
    fails("fit", f"{path}:score", "--out", tmp_path / "r", names=path, fix="syntax error")


# ---------------------------------------------------------------------------------------------
# a metric's bad values: skipped, counted and named, never written as scores
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, reason", [
    ("nan_if_dark", "gave nan, not a score"),
    ("inf_if_dark", "gave inf, not a score"),
    ("none_if_dark", "returned None for a clip; return one number per clip"),
    ("text_if_dark", "returned 'dark' for a clip"),
    ("raises_if_dark", "raised ZeroDivisionError: dark frame"),
])
def test_score_skips_and_names_a_clip_the_metric_cannot_score(media, metrics, fn, reason):
    result = run("score", f"{metrics}:{fn}", media, "--input", "uint8", code=0)
    rows = scores(result)
    assert [Path(r["path"]).name for r in rows] == ["white.png"]  # the dark one is not written
    assert all(np.isfinite(float(r["score"])) for r in rows)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "black.png" in skipped[0] and reason in skipped[0], result.stderr
    assert "scored 1 file(s), skipped 1" in result.stderr


def test_a_numpy_metric_given_tensors_is_told_about_input_uint8(media, tmp_path):
    metric = tmp_path / "level.py"
    metric.write_text("def level(frames):\n    return float(frames.astype('float32').mean())\n")
    result = run("score", f"{metric}:level", media, code=1)
    assert "has no attribute 'astype'" in result.stderr and "pass --input uint8" in result.stderr, result.stderr
    assert run("score", f"{metric}:level", media, "--input", "uint8", code=0)


def test_score_json_output_holds_no_nan(media, metrics, tmp_path):
    out = tmp_path / "scores.json"
    run("score", f"{metrics}:nan_if_dark", media, "--input", "uint8", "--out", out, code=0)
    assert [Path(r["path"]).name for r in json.loads(out.read_text())] == ["white.png"]


def test_an_out_path_that_cannot_be_written_is_named_not_its_temporary_file(media, metrics, tmp_path):
    folder = tmp_path / "scores.csv"
    folder.mkdir()  # a folder where the CSV should go
    error = message(run("score", f"{metrics}:mean", media, "--input", "uint8", "--out", folder))
    assert error == f"Error: cannot write {folder}: Is a directory; pass a file path in a folder you can write"
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    error = message(run("score", f"{metrics}:mean", media, "--input", "uint8", "--out", blocker / "s.csv"))
    assert error.startswith(f"Error: cannot write {blocker / 's.csv'}: {blocker} is a file, not a folder")


def test_score_exits_1_when_the_metric_scores_nothing(media, metrics):
    result = run("score", f"{metrics}:always_raises", media, "--input", "uint8", code=1)
    assert result.stderr.count("raised RuntimeError: model not loaded") == 2
    assert "scored 0 file(s), skipped 2" in result.stderr


def test_score_tensor_metric_with_the_wrong_count(media, metrics):
    result = run("score", f"{metrics}:three_values", media, code=1)
    assert "returned 3 values for 1 clips" in result.stderr


def test_label_counts_and_names_the_rows_a_metric_fails_on(store, metrics):
    result = run("label", store, f"dark={metrics}:none_if_dark", "--input", "uint8", "--quiet", code=0)
    manifest = json.loads((store / "manifest.json").read_text())
    entry = manifest["labels"]["dark"]
    values = np.concatenate([np.load(p) for p in sorted((store / "labels" / "dark").glob("*.npy"))])
    assert entry["bad"]["count"] == int(np.isnan(values).sum()) > 0  # every failure is counted and NaN...
    assert np.isfinite(values).sum() == entry["stats"]["count"] > 0  # ...and only finite values are counted
    assert all("returned None" in item["reason"] and item["source"] for item in entry["bad"]["items"])
    named = [line for line in result.stderr.splitlines() if line.strip().startswith("row ")]
    assert len(named) == entry["bad"]["count"]  # each failed row named with its source and reason
    assert all("procedural:" in line and "returned None" in line for line in named), result.stderr


def test_encode_names_the_rows_a_label_fails_on(metrics, tmp_path):  # tensor input: None for the batch
    result = run("encode", "procedural:4", "--size", 32, "--frames", 1, "--label", f"dark={metrics}:none_if_dark",
                 "--out", tmp_path / "s", "--quiet", code=2)
    assert "dark: 0 values" in result.stderr
    assert sum(line.strip().startswith("row ") and "returned None" in line for line in result.stderr.splitlines()) == 4


def test_encode_with_a_label_that_fails_on_every_row(metrics, tmp_path):
    fails("encode", "procedural:4", "--size", 32, "--frames", 1, "--label", f"bad={metrics}:always_raises",
          "--out", tmp_path / "s", "--quiet", names="label bad", fix="lrm store drop-label")


@pytest.mark.parametrize("fn, reason", [("always_nan", "non-finite reward value nan"),
                                        ("always_raises", "RuntimeError: model not loaded")])
def test_label_that_fails_on_every_row(store, metrics, fn, reason):
    line = fails("label", store, f"bad={metrics}:{fn}", "--input", "uint8", "--quiet", names="label bad",
                 fix=f"lrm store drop-label {store} bad")
    assert "failed on every row" in line


def test_fit_on_a_metric_that_fails_on_every_row(base, metrics, tmp_path):
    store = Path(shutil.copytree(base, tmp_path / "store"))
    line = fails("fit", f"{metrics}:always_nan", "--input", "uint8", "--store", store, "--out", tmp_path / "r",
                 "--quiet", names="always_nan", fix="drop-label")
    assert "non-finite reward value nan" in line


# ---------------------------------------------------------------------------------------------
# media and prompt files
# ---------------------------------------------------------------------------------------------

def test_score_prompts_file_not_utf8(media, tmp_path):
    path = non_utf8_prompts(tmp_path)
    fails("score", "prompt-color", media, "--prompts", path, names=path, fix="save the file as UTF-8")


def test_predict_prompts_file_not_utf8(base_run, media, tmp_path):
    path = non_utf8_prompts(tmp_path)
    fails("predict", base_run, media, "--prompts", path, names=path, fix="save the file as UTF-8")


def test_a_score_that_is_nan_by_design_is_skipped_with_its_reason(media):
    """prompt-color is NaN for a prompt that names none of its colours: say so, not only "gave nan"."""
    result = run("score", "prompt-color", media, "--prompt", "a car", code=1)
    assert "prompt-color gave nan, not a score: the prompt names none of red, orange, yellow" in result.stderr
    from lrm.datasets.labelling import score_batch
    from lrm.rewards import load

    rows = [{"_pos": i, "unit": i, "source": f"clip {i}"} for i in range(2)]
    values, bad = score_batch(load("prompt-color"), torch.rand(2, 1, 3, 16, 16), ["a red car", "a car"], rows)
    assert np.isfinite(values[0]) and np.isnan(values[1]) and [b["source"] for b in bad] == ["clip 1"]
    assert bad[0]["reason"] == "non-finite reward value nan (the prompt names none of red, orange, yellow, green, " \
                               "blue, purple, pink, brown, black, white, gray)"


def test_an_empty_prompt_is_refused_as_lrm_sample_refuses_it(media):
    fails("score", "prompt-color", media, "--prompt", " ", names="--prompt", fix="--prompt is empty")


def test_predict_refuses_a_prompt_a_surrogate_of_pixels_would_ignore(base_run, media):
    fails("predict", base_run, media, "--prompt", "a red car", names="--prompt", fix="reads no text")


def test_encode_prompts_file_not_utf8(media, tmp_path):
    path = non_utf8_prompts(tmp_path)
    fails("encode", media, "--prompts", path, "--size", 32, "--out", tmp_path / "s", names=path,
          fix="save the file as UTF-8")


def test_prompts_file_with_another_count(media, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red car\n")
    fails("score", "prompt-color", media, "--prompts", path, names=path, fix="give one per file")


def test_prompts_file_without_prompts(media, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n  \n")
    fails("score", "prompt-color", media, "--prompts", path, names=path, fix="contains no prompts")


def test_score_a_path_that_does_not_exist(tmp_path):
    fails("score", "colorfulness", tmp_path / "nowhere", names=tmp_path / "nowhere", fix="no such file or folder")


def test_score_folder_of_unreadable_images(broken_media):
    result = run("score", "colorfulness", broken_media, code=1)
    assert "a.png" in result.stderr and "b.jpg" in result.stderr and "skipped 2" in result.stderr


def test_predict_folder_of_unreadable_images(base_run, broken_media):
    result = run("predict", base_run, broken_media, code=1)
    assert "a.png" in result.stderr and "b.jpg" in result.stderr and "skipped 2" in result.stderr


def test_score_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    fails("score", "colorfulness", tmp_path / "empty", names=tmp_path / "empty", fix="pass images, videos or GIFs")


def test_score_skips_an_empty_file_and_a_truncated_gif(media, tmp_path):
    folder = Path(shutil.copytree(media, tmp_path / "m"))
    (folder / "empty.png").write_bytes(b"")
    frames = [Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)) for i in range(4)]
    frames[0].save(folder / "cut.gif", save_all=True, append_images=frames[1:])
    (folder / "cut.gif").write_bytes((folder / "cut.gif").read_bytes()[:30])
    result = run("score", "colorfulness", folder, code=0)
    assert sorted(Path(r["path"]).name for r in scores(result)) == ["black.png", "white.png"]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and any("empty.png" in s for s in skipped) and any("cut.gif" in s for s in skipped)


def test_score_skips_an_image_too_small_for_the_reward(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(folder / "tiny.png")
    result = run("score", "brisque", folder, code=0)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "tiny.png" in skipped[0] and "at least 14x14" in skipped[0]
    assert [Path(r["path"]).name for r in scores(result)] == ["noise.png"]


def test_label_a_store_whose_media_moved(media, tmp_path):
    store = tmp_path / "s"
    run("encode", Path(shutil.copytree(media, tmp_path / "photos")), "--size", 32, "--out", store, "--quiet", code=0)
    shutil.move(tmp_path / "photos", tmp_path / "photos-moved")
    fails("label", store, "sharpness", names=tmp_path / "photos",
          fix="the store was encoded from it: pass --media-root FOLDER where its files are now, or label the decoded "
              "latents (--label-pixels decoded)")
    run("label", store, "sharpness", "--label-pixels", "decoded", "--quiet", code=0)  # the fix given works
    fails("label", store, "sharpness", "--media-root", tmp_path / "moved", names="moved", fix="no such file or folder")
    (tmp_path / "moved").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "moved" / "other.png")
    fails("label", store, "sharpness", "--media-root", tmp_path / "moved", names="moved",
          fix="point --media-root at a copy")
    shutil.rmtree(tmp_path / "moved")
    shutil.copytree(media, tmp_path / "moved")  # the same files, one of them damaged since: that row is named
    (tmp_path / "moved" / "white.png").write_bytes(b"damaged")
    result = run("label", store, "sharpness", "--media-root", tmp_path / "moved", "--quiet", code=0)
    named = [line for line in result.stderr.splitlines() if line.strip().startswith("row ")]
    assert len(named) == 1 and "white.png" in named[0] and "cannot recompute pixels" in named[0], result.stderr


def test_a_run_folder_moved_or_copied_whole_keeps_its_own_store(tmp_path):
    """A fit or teacher run that encoded its own store (RUN/store) recorded that path; moved or copied with it, the run
    is judged and resumed on RUN/store where it is now, not refused for the path it was encoded at."""
    run("fit", "colorfulness", "--data", "procedural:8", "--size", 32, "--steps", 2, "--batch-size", 4,
        "--out", tmp_path / "fit", "--quiet", code=0)
    shutil.move(tmp_path / "fit", tmp_path / "fit-moved")
    run("report", tmp_path / "fit-moved", "--out", tmp_path / "judged", code=0)
    run("fit", "colorfulness", "--data", "procedural:8", "--size", 32, "--steps", 2, "--batch-size", 4,
        "--out", tmp_path / "fit-moved", "--quiet", code=0)
    teacher = ["teacher", "train", "--data", "procedural:4", "--size", 32, "--preset", "dit-xs", "--steps", 1,
               "--batch-size", 2]
    run(*teacher, "--out", tmp_path / "teacher", code=0)
    shutil.copytree(tmp_path / "teacher", tmp_path / "teacher-copy")
    run(*teacher, "--out", tmp_path / "teacher-copy", code=0)


def test_encode_where_no_file_can_be_read(broken_media, tmp_path):
    line = fails("encode", broken_media, "--size", 32, "--out", tmp_path / "s", "--quiet",
                 names=broken_media / "a.png", fix="fix or remove those files")
    assert "b.jpg" in line and "none of the 2 items" in line


def test_fit_where_no_file_can_be_read(broken_media, tmp_path):
    line = fails("fit", "colorfulness", "--data", broken_media, "--size", 32, "--out", tmp_path / "r", "--quiet",
                 names=broken_media / "a.png", fix="fix or remove those files")
    assert "label" not in line.split("could be read")[0]  # the files are blamed, not the label column


def test_encode_names_the_files_it_skips(media, broken_media, tmp_path):
    folder = Path(shutil.copytree(media, tmp_path / "mixed"))
    shutil.copy(broken_media / "a.png", folder / "a.png")
    result = run("encode", folder, "--size", 32, "--out", tmp_path / "s", "--quiet", code=0)
    assert "2 rows" in result.stderr and "1 items skipped" in result.stderr
    assert any(line.startswith("skipped") and "a.png" in line and "cannot decode" in line
               for line in result.stderr.splitlines()), result.stderr


@pytest.mark.parametrize("data, names, fix", [("procedural:many", "'procedural:many'", "e.g. procedural:256"),
                                               ("procedural:0", "got 0", "procedural:N needs N >= 1")])
def test_encode_a_bad_procedural_count(data, names, fix, tmp_path):
    fails("encode", data, "--out", tmp_path / "s", names=names, fix=fix)


def test_encode_data_that_does_not_exist(tmp_path):
    fails("encode", tmp_path / "nowhere", "--out", tmp_path / "s", names=tmp_path / "nowhere",
          fix="no such file or folder")


def test_encode_into_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    fails("encode", "procedural:4", "--out", tmp_path / "s", names=tmp_path / "s", fix="choose an empty or new folder")


def test_encode_resumed_with_other_settings(store):
    fails("encode", "procedural:8", "--size", 64, "--frames", 1, "--shard-size", 4, "--out", store, names=store,
          fix="resume with the same command or use a new folder")


# ---------------------------------------------------------------------------------------------
# damaged stores: every command refuses them by file, and none shrinks them
# ---------------------------------------------------------------------------------------------

def corrupt_manifest(store):
    path = store / "manifest.json"
    path.write_text(path.read_text()[:40])
    return path


def manifest_without_keys(store):
    path = store / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["shards"], manifest["latent_shape"]
    path.write_text(json.dumps(manifest))
    return path


def manifest_not_an_object(store):
    path = store / "manifest.json"
    path.write_text("[]")
    return path


def manifest_with_a_bad_shard_entry(store):
    path = store / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][1] = {"index": 1}
    path.write_text(json.dumps(manifest))
    return path


def deleted_tensors(store):
    path = store / "shards" / "shard-00001.safetensors"
    path.unlink()
    return path


def truncated_tensors(store):
    path = store / "shards" / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def foreign_tensors(store):
    from safetensors.torch import save_file

    path = store / "shards" / "shard-00000.safetensors"
    save_file({"weights": torch.zeros(4, 3)}, path)
    return path


def deleted_commit_record(store):
    path = store / "shards" / "shard-00001.json"
    path.unlink()
    return path


def deleted_rows(store):
    path = store / "shards" / "shard-00000.jsonl"
    path.unlink()
    return path


def truncated_label_values(store):
    path = store / "labels" / "colorfulness" / "shard-00001.npy"
    path.write_bytes(path.read_bytes()[:-6])
    return path


def deleted_label_values(store):
    path = store / "labels" / "colorfulness" / "shard-00000.npy"
    path.unlink()
    return path


def deleted_label_info(store):
    path = store / "labels" / "colorfulness" / "label.json"
    path.unlink()
    return path


def truncated_commit_record(store):  # `lrm store info` said "done yes" of a store `lrm label` refused
    path = store / "shards" / "shard-00001.json"
    path.write_bytes(path.read_bytes()[:5])
    return path


def truncated_label_info(store):
    path = store / "labels" / "colorfulness" / "label.json"
    path.write_bytes(path.read_bytes()[:5])
    return path


DAMAGE = [corrupt_manifest, manifest_without_keys, manifest_not_an_object, manifest_with_a_bad_shard_entry,
          deleted_tensors, truncated_tensors, foreign_tensors, deleted_commit_record, truncated_commit_record,
          deleted_rows, truncated_label_values, deleted_label_values, deleted_label_info, truncated_label_info]
FIX = {"shards": "run the `lrm encode` command that made the store again", "labels": "lrm store drop-label",
       "manifest.json": "encode the data again into a new folder"}


def fix_for(path: Path) -> str:
    return FIX[path.name] if path.name == "manifest.json" else FIX[path.parent.name if path.parent.name == "shards"
                                                                  else "labels"]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: d.__name__)
def test_store_info_names_the_damaged_file(store, damage):
    path = damage(store)
    fails("store", "info", store, names=path, fix=fix_for(path))


@pytest.mark.parametrize("damage", [deleted_commit_record, deleted_tensors, corrupt_manifest],
                         ids=lambda d: d.__name__)
def test_drop_label_and_label_refuse_a_damaged_store_without_shrinking_it(store, damage):
    path = damage(store)
    manifest = (store / "manifest.json").read_text()
    fails("store", "drop-label", store, "colorfulness", names=path, fix=fix_for(path))
    fails("label", store, "sharpness", "--quiet", names=path, fix=fix_for(path))
    assert (store / "manifest.json").read_text() == manifest  # nothing rebuilt from what is left


@pytest.mark.parametrize("damage", [corrupt_manifest, truncated_tensors, deleted_rows], ids=lambda d: d.__name__)
def test_fit_and_report_refuse_a_damaged_store(store, fitted_run, damage, tmp_path):
    path = damage(store)
    fails("fit", "colorfulness", "--store", store, "--out", tmp_path / "r", "--quiet", names=path, fix=fix_for(path))
    fails("report", fitted_run, "--store", store, "--out", tmp_path / "e", names=path, fix=fix_for(path))


def test_following_the_fix_for_a_damaged_shard_restores_the_store(base, store):
    from lrm.datasets.store import LatentStore

    path = truncated_tensors(store)
    line = fails("store", "info", store, names=path, fix=FIX["shards"])
    assert f"remove {store / 'shards' / 'shard-00001'}.*" in line
    for leftover in (store / "shards").glob("shard-00001.*"):
        leftover.unlink()
    run(*ENCODE_BASE, "--out", store, code=0)  # the command that made the store, again
    run("store", "info", store, code=0)
    torch.testing.assert_close(LatentStore.open(store).latents(range(8)), LatentStore.open(base).latents(range(8)))
    np.testing.assert_array_equal(LatentStore.open(store).label("colorfulness"),
                                  LatentStore.open(base).label("colorfulness"))


def test_following_the_fix_for_a_damaged_label_restores_the_column(base, store):
    from lrm.datasets.store import LatentStore

    path = truncated_label_values(store)
    fails("store", "info", store, names=path, fix=f"lrm store drop-label {store} colorfulness")
    run("store", "drop-label", store, "colorfulness", code=0)  # the damage is inside the column it drops
    run("label", store, "colorfulness", "--quiet", code=0)
    # the same reward on the same pixels; only summation order may differ between batchings (float32 rounding)
    np.testing.assert_allclose(LatentStore.open(store).label("colorfulness"),
                               LatentStore.open(base).label("colorfulness"), rtol=1e-5)


def test_store_info_on_a_missing_store(tmp_path):
    fails("store", "info", tmp_path / "nowhere", names="manifest.json is missing", fix="lrm encode DATA --out STORE")


def test_store_of_another_format_version(store):
    path = store / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))
    fails("store", "info", store, names="format version 99", fix="Re-encode it")


def test_rows_file_with_a_line_missing(store):
    path = store / "shards" / "shard-00000.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    fails("store", "info", store, names=path, fix=FIX["shards"])


def test_rows_file_that_is_not_json(store):
    path = store / "shards" / "shard-00001.jsonl"
    path.write_bytes(b"\x00\xff garbage\n" * 4)
    fails("store", "info", store, names=path, fix=FIX["shards"])


@pytest.mark.parametrize("relative", ["labels/colorfulness/label.json", "labels/colorfulness/shard-00001.json",
                                      "shards/shard-00000.json"])
def test_a_json_record_cut_short_is_named_when_the_store_is_rebuilt(store, relative):
    path = store / relative
    path.write_text(path.read_text()[:10])
    fails("label", store, "sharpness", "--quiet", names=path, fix=fix_for(path))


def test_fit_on_a_store_whose_label_record_is_damaged(store, tmp_path):
    path = store / "labels" / "colorfulness" / "label.json"
    path.write_bytes(b"\xff\xfe")
    fails("fit", "colorfulness", "--store", store, "--out", tmp_path / "r", "--quiet", names=path,
          fix="lrm store drop-label")


def test_drop_label_of_a_column_the_store_lacks(store):
    fails("store", "drop-label", store, "colourfulness", names="'colourfulness'", fix="nothing was removed")


def test_label_with_unknown_pixels(store):
    fails("label", store, "sharpness", "--pixels", "raw", names="'raw'", fix="must be one of source, decoded")


# ---------------------------------------------------------------------------------------------
# damaged runs: predict and report name the file
# ---------------------------------------------------------------------------------------------

def truncated_weights(run_dir):
    path = run_dir / "model" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    return path, "cannot be read as safetensors"


def foreign_weights(run_dir):
    from safetensors.torch import save_file

    path = run_dir / "model" / "model.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, path)
    return path, "does not hold the weights of this image-cnn surrogate"


def corrupt_config(run_dir):
    path = run_dir / "model" / "config.json"
    path.write_text(path.read_text()[:-30])
    return path, "not valid JSON"


def config_without_keys(run_dir):
    path = run_dir / "model" / "config.json"
    config = json.loads(path.read_text())
    del config["in_channels"]
    path.write_text(json.dumps(config))
    return path, "lacks in_channels"


def missing_model(run_dir):
    shutil.rmtree(run_dir / "model")
    return run_dir / "model" / "config.json", "not found"


def nan_weights(run_dir):
    from safetensors.torch import load_file, save_file

    path = run_dir / "model" / "model.safetensors"
    weights = load_file(path)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, path)
    return path, "holds NaN or infinite values"


RUN_DAMAGE = [truncated_weights, foreign_weights, corrupt_config, config_without_keys, missing_model, nan_weights]


@pytest.mark.parametrize("damage", RUN_DAMAGE, ids=lambda d: d.__name__)
def test_predict_names_the_damaged_run_file(damaged_run, media, damage):
    path, problem = damage(damaged_run)
    fails("predict", damaged_run, media, names=path, fix=problem)


@pytest.mark.parametrize("damage", [truncated_weights, corrupt_config], ids=lambda d: d.__name__)
def test_report_names_the_damaged_run_file(damaged_fitted_run, base, damage, tmp_path):
    path, problem = damage(damaged_fitted_run)
    fails("report", damaged_fitted_run, "--store", base, "--out", tmp_path / "e", names=path, fix=problem)


def test_fit_refuses_an_out_folder_that_holds_other_files(base, media, tmp_path):
    """A fit writes report.html, figures/ and checkpoints/ into --out: not into a media folder (whose next `lrm
    score` would read the figures as media) nor into a latent store."""
    folder = Path(shutil.copytree(media, tmp_path / "photos"))
    fails("fit", "colorfulness", "--store", base, "--out", folder, "--steps", 2, names=folder,
          fix="holds files that are not a run of `lrm fit` (black.png, white.png); pass a new or empty --out")
    fails("fit", "colorfulness", "--store", base, "--out", base, "--steps", 2, names=base, fix="is a latent store")
    assert sorted(p.name for p in folder.iterdir()) == ["black.png", "white.png"]


@pytest.mark.parametrize("damaged", ["checkpoint tensors", "checkpoint record", "run config"])
def test_resuming_a_fit_whose_files_were_cut_short_names_the_file(fitted_run, damaged_fitted_run, damaged):
    """A full disk or a hand edit: the resumed run says which file and what to do, not safetensors' or json's own
    error (a traceback, or "Expecting value: line 1 column 1" with no file)."""
    checkpoint = sorted((damaged_fitted_run / "checkpoints").glob("step-*.json"))[-1]
    path = {"checkpoint tensors": checkpoint.with_suffix(".safetensors"), "checkpoint record": checkpoint,
            "run config": damaged_fitted_run / "config.json"}[damaged]
    path.write_bytes(path.read_bytes()[:40])
    fails("fit", "colorfulness", "--store", fitted_run.parent / "store", "--steps", 2, "--batch-size", 4,
          "--out", damaged_fitted_run, "--quiet", names=path, fix="another --out")


def test_a_run_saved_with_a_preset_this_lrm_lacks(damaged_run, media):
    path = damaged_run / "model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "preset": "patch-gaussian-retired"}))
    fails("predict", damaged_run, media, names="patch-gaussian-retired", fix="image-cnn")


def test_report_on_a_column_that_is_all_nan(store, fitted_run, tmp_path):
    for path in (store / "labels" / "colorfulness").glob("*.npy"):
        np.save(path, np.full(4, np.nan, np.float32))
    fails("report", fitted_run, "--store", store, "--out", tmp_path / "e", names="column 'colorfulness'",
          fix=f"lrm store drop-label {store} colorfulness")


def test_predict_with_a_bad_output_suffix(base_run, media, tmp_path):
    fails("predict", base_run, media, "--out", tmp_path / "scores.txt", names="scores.txt", fix=".csv or .json")


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ("true", "True"), ("1.5", "1.5")])
def test_option_of_the_wrong_type_is_refused_by_name(media, value, shown):
    # -o frames=abc failed with a TypeError traceback from inside the frame sampler
    fails("score", "colorfulness", media, "-o", f"frames={value}", names=f"option 'frames' takes int, got {shown}",
          fix="e.g. -o frames=8")


def test_store_info_on_a_run_folder_says_it_is_a_run(tmp_path):
    # a run folder (model/, config.json) was reported as "an encode was started here"
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    line = fails("store", "info", run_dir, names="it is a run folder", fix="its store is named in its config.json")
    assert "encode was started" not in line
