"""Encode and label pipelines: media folders (groups, prompts, bad files), labels added later equal
labels computed at encode time, text embeddings, the CLI, and resume after `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lrm.codecs.dct import DCTCodec
from lrm.datasets.encoding import EncodeConfig, encode
from lrm.datasets.labelling import add_labels
from lrm.datasets.sources import file_group, make_source
from lrm.datasets.media import read_clip
from lrm.datasets.store import LatentStore, StoreError

REPO = Path(__file__).resolve().parents[1]
# Labels computed in other batch groupings agree to this relative tolerance, not bit for bit: a batched
# convolution or reduction may add float32 terms in another order for another batch shape (the kernel
# chosen depends on the shape, the thread count and the CPU), which moves the last bits of a sum.
LABEL_RTOL = 1e-5


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_file_group_rule(tmp_path):
    root = tmp_path
    assert file_group(root / "dog__03.jpg", root) == "dog"
    assert file_group(root / "pets" / "dog__03.jpg", root) == "pets/dog"
    assert file_group(root / "walk_video" / "clip_002.png", root) == "walk_video"
    assert file_group(root / "lonely.png", root) == "lonely.png"


@pytest.fixture()
def media_folder(tmp_path) -> Path:
    """9 images in 4 groups (DreamBooth-style subjects, a sub-folder of one video's frames, a loner)
    plus one unreadable file."""
    root = tmp_path / "media"
    (root / "walk").mkdir(parents=True)
    rng = np.random.default_rng(0)

    def image(path: Path, h=20, w=28):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)

    for subject in ("cat", "dog"):
        for i in range(3):
            image(root / f"{subject}__{i:02d}.png")
    for i in range(2):
        image(root / "walk" / f"frame_{i}.png")
    image(root / "lonely.jpg", 32, 17)
    (root / "broken.png").write_bytes(b"this is not a png")
    return root


def test_media_folder_groups_prompts_and_bad_files(media_folder, tmp_path):
    files = ["broken.png", "cat__00.png", "cat__01.png", "cat__02.png", "dog__00.png", "dog__01.png",
             "dog__02.png", "lonely.jpg", "walk/frame_0.png", "walk/frame_1.png"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt for {f}\n" for f in files))
    config = EncodeConfig(str(media_folder), prompts=str(prompts), size=16, shard_size=4, batch_size=2,
                          labels=("sharpness",))
    store = encode(config, tmp_path / "store", codec=DCTCodec(), progress=False)

    assert store.latent_shape == (1, 32, 2, 2)  # a folder of images: T = 1 by default
    assert len(store) == 9
    skipped = store.manifest["skipped"]
    assert skipped["count"] == 1 and skipped["items"][0]["source"].endswith("broken.png")
    assert "cannot decode" in skipped["items"][0]["reason"]
    rows = store.rows()
    assert [Path(r["source"]).relative_to(media_folder).as_posix() for r in rows] == files[1:]
    assert [r["prompt"] for r in rows] == [f"prompt for {f}" for f in files[1:]]
    assert store.groups.tolist() == ["cat"] * 3 + ["dog"] * 3 + ["lonely.jpg", "walk", "walk"]

    # Latents equal the codec applied to the same files read directly (units 8, 9: one batch of shard 2).
    pixels = torch.stack([read_clip(media_folder / "walk" / f"frame_{i}.png", frames=1, size=16).pixels
                          for i in range(2)])  # (2, 1, 3, 16, 16)
    torch.testing.assert_close(store.latents([7, 8]), DCTCodec().encode(pixels), rtol=0, atol=0)

    for seed in range(5):
        train, val = store.split(0.3, seed)
        assert len(train) and len(val)
        assert not set(store.groups[train]) & set(store.groups[val])

    # Relabelling re-reads the files: the values of encode time. Not bit for bit: the unreadable file made
    # encode-time batches of 1 and 2 clips where relabelling batches 2 rows, and batched convolutions and
    # reductions may sum in another order for another batch shape (float32 rounding, machine dependent).
    again = add_labels(store.path, ["again=sharpness"], batch_size=2, progress=False)
    np.testing.assert_allclose(again.label("again"), again.label("sharpness"), rtol=LABEL_RTOL)

    # Labels are computed from the files by position: a changed folder is refused, not mislabelled.
    (media_folder / "cat__03.png").write_bytes((media_folder / "cat__00.png").read_bytes())
    with pytest.raises(StoreError, match="not the files the store was encoded from"):
        add_labels(store.path, ["colorfulness"], progress=False)


def test_label_added_later_equals_label_at_encode_time(tmp_path):
    config = EncodeConfig("procedural:12", frames=3, size=32, shard_size=5, batch_size=4,
                          labels=("sharpness", "jpeg-compressibility"))
    store = encode(config, tmp_path / "store", codec=DCTCodec(), progress=False)
    later = add_labels(store.path, ["sharp_later=sharpness", "jpeg_later=jpeg-compressibility"],
                       batch_size=4, progress=False)
    # Same batches as at encode time (4 + 1 rows per shard of 5): the same float operations, bit for bit.
    np.testing.assert_array_equal(later.label("sharp_later"), later.label("sharpness"))
    np.testing.assert_array_equal(later.label("jpeg_later"), later.label("jpeg-compressibility"))
    assert np.std(later.label("sharpness")) > 0
    # Another batch size changes only the batching, not the values (up to float32 summation order, LABEL_RTOL).
    other = add_labels(store.path, ["sharp_b3=sharpness"], batch_size=3, progress=False)
    np.testing.assert_allclose(other.label("sharp_b3"), other.label("sharpness"), rtol=LABEL_RTOL)
    assert other.manifest["labels"]["sharpness"]["stats"] == other.manifest["labels"]["sharp_later"]["stats"]


def test_decoded_labels_score_what_the_latents_decode_to(tmp_path, monkeypatch):
    from lrm.rewards import load

    codec = DCTCodec()
    config = EncodeConfig("procedural:10", frames=2, size=32, shard_size=4, batch_size=3, labels=("sharpness",))
    store = encode(config, tmp_path / "store", codec=codec, progress=False)
    decoded_rows = []
    decode = DCTCodec.decode
    monkeypatch.setattr(DCTCodec, "decode", lambda self, z: decoded_rows.append(len(z)) or decode(self, z))
    store = add_labels(store.path, ["sharpness", "jpeg-compressibility"], batch_size=3, progress=False,
                       pixels="decoded")
    assert decoded_rows == [3, 1, 3, 1, 2]  # each batch of each shard (4, 4, 2 rows) decoded once for both rewards
    monkeypatch.undo()
    assert store.label_pixels("sharpness@decoded") == "decoded" and store.label_pixels("sharpness") == "source"
    rows = np.arange(len(store))
    with torch.no_grad():
        decoded = codec.decode(store.latents(rows)).clamp(0, 1)  # independent of the store's readers
    for name in ("sharpness", "jpeg-compressibility"):
        np.testing.assert_allclose(store.label(f"{name}@decoded"), load(name)(decoded).numpy(), rtol=1e-5)
    # dct keeps 32 of 192 coefficients per block: the decoded images are blurrier than the source ones.
    assert np.mean(store.label("sharpness@decoded")) < 0.9 * np.mean(store.label("sharpness"))
    # A column keeps the pixels it was computed on: relabelling it from the source is refused.
    with pytest.raises(StoreError, match="another name"):
        add_labels(store.path, ["sharpness@decoded=sharpness"], progress=False)
    with pytest.raises(ValueError, match="source, decoded"):
        add_labels(store.path, ["sharpness"], progress=False, pixels="latents")


def test_clear_errors(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    with pytest.raises(ValueError, match="holds no pixels"):
        make_source(EncodeConfig(str(prompts)), 8)
    with pytest.raises(ValueError, match="procedural:N"):
        make_source(EncodeConfig("procedural:many"), 8)
    store = encode(EncodeConfig("procedural:2", frames=1, size=16), tmp_path / "s", codec=DCTCodec(), progress=False)
    with pytest.raises(KeyError, match="unknown reward 'no-such-reward'"):
        add_labels(store.path, ["no-such-reward"], progress=False)


def _data_app():
    from lrm.cli.data import register
    from lrm.cli.options import standalone_app

    return standalone_app(register)


def cli(*args: str):
    return CliRunner().invoke(_data_app(), list(args))


def test_cli_encode_label_info(tmp_path):
    out = tmp_path / "store"
    result = cli("encode", "procedural:6", "--codec", "dct", "--frames", "2", "--size", "32", "--shard-size", "4",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    result = cli("label", str(out), "sharpness", "--quiet")
    assert result.exit_code == 0, result.output
    result = cli("store", "info", str(out), "--json")
    assert result.exit_code == 0, result.output
    import json

    info = json.loads(result.stdout)
    assert info["rows"] == 6 and info["codec"] == "dct-v1" and info["latent_shape"] == [2, 32, 4, 4]
    assert info["labels"]["sharpness"]["count"] == 6 and info["labels"]["sharpness"]["nan"] == 0
    assert info["split"]["train"] + info["split"]["val"] == 6
    assert info["labels"]["sharpness"]["pixels"] == "source"
    table = CliRunner(env={"COLUMNS": "80"}).invoke(_data_app(), ["store", "info", str(out)])
    assert table.exit_code == 0 and "dct-v1" in table.stdout
    row = next(line for line in table.stdout.splitlines() if "sharpness" in line)  # unfolded in 80 columns
    stats = info["labels"]["sharpness"]
    assert len(row) <= 80 and all(f"{stats[k]:.4g}" in row for k in ("mean", "std", "min", "max")), table.stdout
    result = cli("label", str(out), "sharpness", "--pixels", "decoded", "--quiet")
    assert result.exit_code == 0 and "sharpness@decoded: 6 values" in result.output, result.output
    info = json.loads(cli("store", "info", str(out), "--json").stdout)
    assert info["labels"]["sharpness@decoded"]["pixels"] == "decoded"

    for args, message in (
        (("encode", "procedural:6", "--codec", "no-such-codec", "--out", str(tmp_path / "x"), "--quiet"),
         "unknown codec 'no-such-codec'"),
        (("label", str(out), "no-such-reward", "--quiet"), "unknown reward"),
        (("store", "info", str(tmp_path / "nowhere")), "no latent store"),
        (("encode", "procedural:6", "--codec", "dct", "--size", "64", "--frames", "2", "--shard-size", "4",
          "--out", str(out), "--quiet"), "other settings"),
        (("encode", "procedural:6", "--codec", "dct", "--size", "64", "--frames", "2", "--shard-size", "4",
          "--out", str(out), "--quiet"), "latent_shape: saved [2, 32, 4, 4], now [2, 32, 8, 8]"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    args = ["encode", "procedural:16", "--codec", "dct", "--frames", "4", "--size", "64", "--shard-size", "2",
            "--batch-size", "2", "--label", "sharpness", "--quiet"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lrm.cli.data", *args, "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_commit = killed / "shards" / "shard-00000.json"
    deadline = time.monotonic() + 120
    while not first_commit.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard committed within 120 s"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    committed = len(list((killed / "shards").glob("shard-*.json")))
    assert 1 <= committed < 8, "the run finished before it could be killed"

    result = cli(*args, "--out", str(killed))  # the same command again resumes
    assert result.exit_code == 0, result.output
    reference = tmp_path / "reference"
    assert cli(*args, "--out", str(reference)).exit_code == 0
    assert tree_bytes(killed) == tree_bytes(reference)


class WordEncoder:
    """Fake text encoder: one token per word, embedding = (word length, index of first letter, 1)."""

    id = "test-words"

    def encode(self, prompts):
        tokens = [p.split() for p in prompts]
        length = max(len(t) for t in tokens)
        emb = torch.zeros(len(prompts), length, 3)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, words in enumerate(tokens):
            for j, w in enumerate(words):
                emb[i, j] = torch.tensor([len(w), ord(w[0]) - 96, 1.0])
                mask[i, j] = True
        return emb, mask


def test_text_embeddings_are_padded_or_truncated_per_row(tmp_path, monkeypatch):
    import lrm.text

    monkeypatch.setattr(lrm.text, "load", lambda name: WordEncoder(), raising=False)
    config = EncodeConfig("procedural:5", frames=1, size=16, text="words", text_length=12, batch_size=2)
    store = encode(config, tmp_path / "store", codec=DCTCodec(), progress=False)
    assert store.text_encoder_id == "test-words" and store.manifest["text"]["dim"] == 3
    prompts = store.prompts
    assert prompts == [r["prompt"] for r in store.rows()] and all(prompts)
    emb, mask = store.text_embeddings([4, 0, 2])  # (3, 12, 3), (3, 12)
    assert emb.shape == (3, 12, 3) and mask.dtype == torch.bool
    for k, i in enumerate([4, 0, 2]):
        alone, alone_mask = WordEncoder().encode([prompts[i]])
        n = min(alone.shape[1], 12)
        assert mask[k].sum() == n and mask[k, :n].all()
        torch.testing.assert_close(emb[k, :n], alone[0, :n])
        assert not emb[k, n:].any()
    assert any(len(p.split()) > 12 for p in prompts), "some caption should be truncated in this test"


def test_label_says_why_rows_failed_and_refuses_an_all_nan_column(tmp_path):
    out = tmp_path / "small"
    assert cli("encode", "procedural:4", "--frames", "1", "--size", "64", "--out", str(out), "--quiet").exit_code == 0
    result = cli("label", str(out), "niqe", "sharpness", "--quiet")  # NIQE needs 192-px frames
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "niqe: 0 values" in text and "4 rows failed, 4 of them with: InputError: niqe: frames must be at least" in text
    assert "sharpness: 4 values" in text and "label niqe of" in text and "failed on every row" in text
    assert f"lrm store drop-label {out} niqe" in text


def test_drop_label_removes_one_column_so_it_can_be_computed_again(tmp_path):
    out = tmp_path / "store"
    assert cli("encode", "procedural:4", "--frames", "1", "--size", "32", "--out", str(out), "--label", "sharpness",
               "--label", "q=colorfulness", "--quiet").exit_code == 0
    sharp = LatentStore.open(out).label("sharpness")
    again = cli("label", str(out), "q=jpeg-compressibility", "--quiet")
    assert again.exit_code == 2 and "drop-label" in " ".join(again.output.split())  # q was computed by another reward
    (out / ".dropped-old").mkdir()  # what a drop killed between its rename and its removal leaves
    dropped = cli("store", "drop-label", str(out), "q")
    assert dropped.exit_code == 0 and "removed label q" in " ".join(dropped.output.split())
    store = LatentStore.open(out)
    assert store.labels == ["sharpness"] and not (out / "labels" / "q").exists() and not (out / ".dropped-old").exists()
    np.testing.assert_array_equal(store.label("sharpness"), sharp)
    assert cli("label", str(out), "q=jpeg-compressibility", "--quiet").exit_code == 0
    assert LatentStore.open(out).label_stats("q")["count"] == 4
    unknown = cli("store", "drop-label", str(out), "nope")
    assert unknown.exit_code == 2 and "has no label 'nope' (labels: q, sharpness)" in " ".join(unknown.output.split())


def test_label_takes_kind_and_input_for_your_own_metric_as_score_and_fit_do(tmp_path):
    out = tmp_path / "store"
    assert cli("encode", "procedural:4", "--frames", "2", "--size", "32", "--out", str(out), "--quiet").exit_code == 0
    metric = tmp_path / "metric.py"
    metric.write_text("def motion(frames):\n    return float(abs(frames[1:].astype(float) - frames[:-1]).mean())\n")
    result = cli("label", str(out), f"m={metric}:motion", "--kind", "video", "--input", "uint8", "--quiet")
    assert result.exit_code == 0, result.output
    store = LatentStore.open(out)
    assert store.manifest["labels"]["m"]["spec"]["kind"] == "video" and store.label_stats("m")["count"] == 4
    mixed = cli("label", str(out), "sharpness", f"{metric}:motion", "--kind", "video", "--quiet")
    assert mixed.exit_code == 2 and "sharpness built in" in " ".join(mixed.output.split())
    alias = cli("label", str(out), "sharpness", "--label-pixels", "decoded", "--quiet")  # lrm fit's spelling
    assert alias.exit_code == 0 and "sharpness@decoded" in LatentStore.open(out).labels


def test_a_column_named_twice_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "store"
    twice = cli("encode", "procedural:4", "--frames", "1", "--size", "32", "--out", str(out), "--label", "sharpness",
                "--label", "sharpness", "--quiet")
    assert twice.exit_code == 2 and "column sharpness is named more than once" in " ".join(twice.output.split())
    assert cli("encode", "procedural:4", "--frames", "1", "--size", "32", "--out", str(out), "--quiet").exit_code == 0
    for args in (["colorfulness", "colorfulness"], ["x=colorfulness", "x=sharpness"]):
        result = cli("label", str(out), *args, "--quiet")
        assert result.exit_code == 2 and "is named more than once" in " ".join(result.output.split())
    assert LatentStore.open(out).labels == [] and not any((out / "labels").iterdir())


def test_drop_label_checks_every_name_first_and_finds_columns_by_name_not_folder(tmp_path):
    out = tmp_path / "store"
    assert cli("encode", "procedural:4", "--frames", "1", "--size", "32", "--out", str(out), "--label", "sharpness",
               "--quiet").exit_code == 0
    assert cli("label", str(out), "sharpness", "--pixels", "decoded", "--quiet").exit_code == 0
    typo = cli("store", "drop-label", str(out), "sharpness", "sharpnes")
    assert typo.exit_code == 2 and "nothing was removed" in " ".join(typo.output.split())
    folder_name = cli("store", "drop-label", str(out), "sharpness_decoded")  # the folder of sharpness@decoded
    assert folder_name.exit_code == 2
    assert LatentStore.open(out).labels == ["sharpness", "sharpness@decoded"]
    clash = cli("label", str(out), "sharpness_decoded=colorfulness", "--quiet")
    assert clash.exit_code == 2 and "would share the folder" in " ".join(clash.output.split())
    twice = cli("store", "drop-label", str(out), "sharpness@decoded", "sharpness@decoded")
    assert twice.exit_code == 0 and LatentStore.open(out).labels == ["sharpness"]


def test_label_judges_only_the_columns_it_was_asked_for_and_names_user_metrics_by_function(tmp_path):
    out = tmp_path / "store"
    assert cli("encode", "procedural:4", "--frames", "1", "--size", "32", "--out", str(out), "--quiet").exit_code == 0
    metric = tmp_path / "m.py"
    metric.write_text("def boom(frames):\n    raise RuntimeError('no')\n\n"
                      "def mean_level(frames):\n    return float(frames.mean())\n\n"
                      "def two(frames, extra):\n    return 0.0\n")
    assert cli("label", str(out), f"{metric}:boom", "--kind", "image", "--quiet").exit_code == 2
    later = cli("label", str(out), f"{metric}:mean_level", "--kind", "image", "--input", "uint8", "--quiet")
    assert later.exit_code == 0, later.output
    assert set(LatentStore.open(out).labels) == {"boom", "mean_level"}  # a user metric's column: its function
    arity = cli("label", str(out), f"{metric}:two", "--kind", "image", "--quiet")
    assert arity.exit_code == 2 and "is called with 1 argument(s) (pixels), but it requires 2" in arity.output
