"""Rank helpers, and rank-sharded encoding / labelling: 2 gloo processes under torchrun write
exactly the bytes one process writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from lrm import distributed
from lrm.codecs.dct import DCTCodec
from lrm.datasets.encoding import EncodeConfig, encode
from lrm.datasets.labelling import add_labels

REPO = Path(__file__).resolve().parents[1]


def test_rank_and_world_size_from_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.init_from_env() is False  # one process: no group, barrier is a no-op
    distributed.barrier()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (2, 3, False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_from_env()


def test_cuda_work_needs_a_gpu_per_process(monkeypatch):
    # 16 labelling processes on a one-GPU machine: CPU work opens a gloo group (covered by the
    # 2-process tests below); CUDA work refuses a process without a GPU of its own.
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="process 1 of this machine has no GPU of its own"):
        distributed.init_from_env("cuda")
    assert not distributed.is_initialized()


def test_owned_shards_are_disjoint_and_cover():
    shards = range(11)
    parts = [distributed.owned(shards, r, 3) for r in range(3)]
    assert parts[1] == [1, 4, 7, 10]
    assert sorted(sum(parts, [])) == list(shards)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CONFIG = EncodeConfig("procedural:10", frames=2, size=32, shard_size=3, batch_size=2, labels=("sharpness",))


def test_ranks_run_one_after_another_write_the_same_store_as_one_process(tmp_path, monkeypatch):
    """Each rank alone (barriers are no-ops without a process group) encodes only its own shards;
    rank 0 run last merges the manifest."""
    one = tmp_path / "one"
    encode(CONFIG, one, codec=DCTCodec(), progress=False)
    add_labels(one, ["colorfulness"], progress=False)

    two = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1", "0"):
        monkeypatch.setenv("RANK", rank)
        encode(CONFIG, two, codec=DCTCodec(), progress=False)
        if rank == "1":
            assert sorted(p.name for p in (two / "shards").glob("*.json")) == [
                f"shard-0000{i}.json" for i in range(4)]
    for rank in ("0", "1", "0"):
        monkeypatch.setenv("RANK", rank)
        add_labels(two, ["colorfulness"], progress=False)
    assert tree_bytes(two) == tree_bytes(one)


def cli(args: list[str], procs: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", "lrm.cli.data", *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_write_the_same_store_as_one(tmp_path):
    """Real torchrun, 2 CPU processes with gloo (about 30 s on 2 shared cores)."""
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the workers: the same float sums
    try:
        encode(CONFIG, one, codec=DCTCodec(), progress=False)
        add_labels(one, ["colorfulness"], progress=False)
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    cli(["encode", "procedural:10", "--codec", "dct", "--frames", "2", "--size", "32", "--shard-size", "3",
         "--batch-size", "2", "--label", "sharpness", "--quiet", "--out", str(two)], 2)
    cli(["label", str(two), "colorfulness", "--quiet"], 2)
    expected = tree_bytes(one)
    assert "shards/shard-00003.safetensors" in expected and "labels/colorfulness/shard-00003.npy" in expected
    assert tree_bytes(two) == expected


def test_local_slices_cover_a_global_batch_once():
    assert [distributed.local_slice(6, r, 3) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert distributed.local_slice(5, 0, 1) == slice(0, 5)
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        distributed.local_slice(5, 0, 2)
    assert distributed.process_device("cpu") == torch.device("cpu")
