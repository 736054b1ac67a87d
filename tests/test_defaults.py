"""One default per option: `lrm fit`, `lrm encode`, FitJob, FitConfig and EncodeConfig agree, and
fit_surrogate with a default FitConfig trains what `lrm fit` trains. Also the frame size a new store
of a media folder gets (its own short side up to a cap, or the reward's preferred size) and says why."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrm.cli import data as cli_data
from lrm.cli import fit as cli_fit
from lrm.cli.app import app
from lrm.datasets.encoding import EncodeConfig
from lrm.datasets.sources import MEDIA_SIZE_CAP, PROCEDURAL_SIZE, choose_frame_size
from lrm.datasets.store import LatentStore
from lrm.fitting import FitConfig, with_preset
from lrm.models.presets import DEFAULT_PRESETS
from lrm.pipeline import FitJob, new_store_size, resolved_job, run_fit

runner = CliRunner(env={"COLUMNS": "300"})
CLI_FIT_NAMES = {"model": "preset", "option": "reward_options"}  # `lrm fit` parameter -> FitJob field


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def cli_defaults(command) -> dict:
    return {name: p.default for name, p in inspect.signature(command).parameters.items()
            if p.default is not inspect.Parameter.empty}


# ---------------------------------------------------------------- one default per option

def test_lrm_fit_defaults_are_fitjobs_and_fitjobs_are_fitconfigs():
    job = defaults(FitJob)
    cli = {CLI_FIT_NAMES.get(k, k): v for k, v in cli_defaults(cli_fit.fit).items()}
    shared = set(cli) & set(job)
    assert {"codec", "size", "preset", "steps", "lr", "batch_size", "loss", "noise_aware", "seed", "device",
            "patience", "warmup_steps"} <= shared
    assert {k: cli[k] for k in shared} == {k: job[k] for k in shared}
    fit = defaults(FitConfig)
    both = set(job) & set(fit)
    assert len(both) == 14  # preset steps batch_size lr loss label_transform noise_aware gradient_weight augment seed
    #                         eval_every patience warmup_steps device
    assert {k: job[k] for k in both} == {k: fit[k] for k in both}
    encode = defaults(EncodeConfig)
    assert {k: job[k] for k in ("codec", "size")} == {k: encode[k] for k in ("codec", "size")}


def test_lrm_encode_defaults_are_encodeconfigs():
    cli = cli_defaults(cli_data.encode)
    config = defaults(EncodeConfig)
    shared = set(cli) & set(config)
    assert {"codec", "frames", "size", "text", "text_length", "prompts", "shard_size", "seed", "batch_size",
            "device"} <= shared
    assert {k: cli[k] for k in shared} == {k: config[k] for k in shared}


def test_the_configs_and_the_commands_reading_them_import_no_torch():
    """The CLI reads its defaults from lrm.configs at start-up: that must stay cheap (no torch, pipeline, fitting)."""
    import subprocess
    import sys

    code = ("import sys, lrm.configs, lrm.cli.fit, lrm.cli.data; "
            "print([m for m in ('torch', 'scipy', 'lrm.pipeline', 'lrm.fitting', 'lrm.models') if m in sys.modules])")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)}, timeout=120).stdout
    assert out.strip() == "[]"


def test_fit_surrogate_with_a_default_config_trains_what_lrm_fit_trains(tmp_path, monkeypatch):
    """run_fit hands fit_surrogate exactly FitConfig() (preset filled in by the reward's kind)."""
    import lrm.fitting

    seen = {}

    class Stop(Exception):
        pass

    def capture(store, label, config, out_dir, **kwargs):
        seen.update(store=store, label=label, config=config)
        raise Stop

    monkeypatch.setattr(lrm.fitting, "fit_surrogate", capture)
    with pytest.raises(Stop):
        run_fit(FitJob("colorfulness", count=6, size=32, out=str(tmp_path / "run")), progress=False)
    default = with_preset(FitConfig(), seen["store"], seen["label"])
    assert seen["config"] == default
    assert (default.preset, default.steps, default.lr) == (DEFAULT_PRESETS["image"], FitJob.steps, FitJob.lr)
    assert resolved_job(FitJob("colorfulness"))["preset"] == default.preset


def test_a_default_config_on_a_column_without_a_reward_kind_says_what_to_pass(tmp_path):
    store = SimpleNamespace(manifest={"labels": {"y": {"spec": {}}}}, path=tmp_path)
    with pytest.raises(ValueError, match=r"records no reward kind.*FitConfig\(preset=...\)"):
        with_preset(FitConfig(), store, "y")
    assert with_preset(FitConfig(preset="image-cnn"), store, "y").preset == "image-cnn"


# ---------------------------------------------------------------- the frame size of a new store

def images(folder: Path, shapes) -> Path:
    """PNG files of the given (h, w) shapes, random pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture()
def folder_96x160(tmp_path) -> Path:
    return images(tmp_path / "media", [(96, 160)] * 6)


def test_a_media_folder_keeps_its_short_side_up_to_the_cap(tmp_path, folder_96x160):
    assert choose_frame_size(str(folder_96x160), None, 8) == (96, "size 96: the media's short side (cap 512)")
    assert choose_frame_size(str(folder_96x160), 64, 8) == (64, "size 64: as asked (--size)")
    assert choose_frame_size("procedural:10", None, 8).size == PROCEDURAL_SIZE == 128
    # Down to a multiple of the codec's spatial factor; the smallest file decides; an unreadable file is skipped.
    mixed = images(tmp_path / "mixed", [(100, 150), (300, 200)])
    (mixed / "broken.png").write_bytes(b"not a png")
    size, reason = choose_frame_size(str(mixed), None, 16)
    assert size == 96 and "smallest short side of 2 files" in reason and "multiple of 16" in reason
    large = images(tmp_path / "large", [(600, 700)])
    assert choose_frame_size(str(large), None, 8) == (MEDIA_SIZE_CAP,
                                                      "size 512: the cap 512 (the media's short side is 600)")
    # A reward that prefers a size gets it (rounded to the codec), a procedural store keeps its own.
    assert choose_frame_size(str(folder_96x160), None, 16, preferred=224) == (224,
                                                                              "size 224: the reward's preferred size")
    assert new_store_size(FitJob("clip-score", data=str(folder_96x160)), SimpleNamespace(size=210)).size == 208
    assert new_store_size(FitJob("clip-score"), SimpleNamespace(size=224)).size == 128


def test_lrm_encode_of_a_media_folder_keeps_its_size(folder_96x160, tmp_path):
    result = runner.invoke(app, ["encode", str(folder_96x160), "--out", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "frames of size 96: the media's short side (cap 512)" in result.output  # the log says why
    store = LatentStore.open(tmp_path / "store")
    assert store.manifest["source"]["size"] == 96 and store.latent_shape == (1, 32, 12, 12)  # dct: 1/8


def test_lrm_fit_on_a_media_folder_says_which_size_and_why(folder_96x160, tmp_path):
    dry = runner.invoke(app, ["fit", "colorfulness", "--data", str(folder_96x160), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    resolved = json.loads(dry.stdout)
    assert resolved["size"] == 96 and resolved["size_reason"] == "size 96: the media's short side (cap 512)"
    procedural = json.loads(runner.invoke(app, ["fit", "colorfulness", "--dry-run"]).stdout)
    assert procedural["size"] == 128 and procedural["size_reason"] == "size 128: the procedural clips' default"

    outcome = run_fit(FitJob("colorfulness", data=str(folder_96x160), steps=4, batch_size=4, eval_every=2,
                             out=str(tmp_path / "run")), progress=False)
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text())
    assert json.dumps(metrics).count("size 96: the media's short side (cap 512)") >= 1
    assert LatentStore.open(outcome.store).manifest["source"]["size"] == 96


def test_frame_size_reads_headers_of_images_gifs_and_videos(tmp_path):
    from lrm.datasets.media import MediaError, frame_size

    image = images(tmp_path, [(96, 160)]) / "img0.png"
    assert frame_size(image) == (96, 160)
    frames = [Image.new("RGB", (40, 24), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert frame_size(tmp_path / "a.gif") == (24, 40)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match="broken.png"):
        frame_size(tmp_path / "broken.png")
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "v.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert frame_size(tmp_path / "v.mp4", backend="pyav") == (48, 64)
    # Of the image (96), GIF (24) and video (48), the smallest short side decides; the broken file is skipped.
    assert choose_frame_size(str(tmp_path), None, 8) == (24, "size 24: the smallest short side of 3 files (cap 512)")
