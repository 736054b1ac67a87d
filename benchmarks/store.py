"""Latent-store throughput: writing shards and reading rows back, for procedural clips at 64 / 128 px.

Measures, per resolution (DCT codec latents, float32):
  encode   end to end `lrm encode procedural:N` (render clips + DCT encode + atomic shard commits)
  write    atomic shard commits of ready latents alone (safetensors + rows + commit record, fsynced)
  read     `LatentStore.latents` in random batches of 64 rows (memory-mapped, per-shard) and in
           sequential batches of 256 rows
Rows/s and MB/s of latents; writes JSON (--out) and prints a table.

    python benchmarks/store.py                       # 256 clips of 8 frames at 64 and 128 px
    python benchmarks/store.py --rows 1024 --sizes 64 --out store.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lrm.codecs.dct import DCTCodec
from lrm.datasets import store as st
from lrm.datasets.encoding import EncodeConfig, encode


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_size(size: int, rows: int, frames: int, shard_size: int, work: Path) -> dict:
    store_dir = work / f"encode{size}"
    config = EncodeConfig(f"procedural:{rows}", frames=frames, size=size, shard_size=shard_size, batch_size=16)
    encode_s = timed(lambda: encode(config, store_dir, codec=DCTCodec(), progress=False))
    store = st.LatentStore.open(store_dir)
    row_mb = np.prod(store.latent_shape) * 4 / 1e6

    # Raw writes: commit the same latents again into a fresh store folder, shard by shard.
    latents = store.latents(np.arange(len(store)))  # (N, T', c, h, w)
    meta = store.rows()
    write_dir = work / f"write{size}"
    (write_dir / "shards").mkdir(parents=True)

    def write_all():
        for i, start in enumerate(range(0, rows, shard_size)):
            stop = min(start + shard_size, rows)
            st.commit_shard(write_dir, i, (start, stop), latents[start:stop], meta[start:stop], [])

    write_s = timed(write_all)

    rng = np.random.default_rng(0)
    random_batches = [rng.choice(len(store), size=min(64, len(store)), replace=False) for _ in range(20)]
    read_random_s = timed(lambda: [store.latents(b) for b in random_batches])
    random_rows = sum(len(b) for b in random_batches)
    sequential = [np.arange(s, min(s + 256, len(store))) for s in range(0, len(store), 256)]
    read_seq_s = timed(lambda: [store.latents(b) for b in sequential])

    def rate(n: int, seconds: float) -> dict:
        return {"seconds": seconds, "rows_per_s": n / seconds, "mb_per_s": n * row_mb / seconds}

    return {"size": size, "frames": frames, "rows": rows, "shard_size": shard_size,
            "latent_shape": list(store.latent_shape), "row_mb": row_mb,
            "encode": rate(rows, encode_s), "write": rate(rows, write_s),
            "read_random64": rate(random_rows, read_random_s), "read_sequential256": rate(rows, read_seq_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="clip sides in pixels")
    parser.add_argument("--rows", type=int, default=256, help="procedural clips per store")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--shard-size", type=int, default=64, help="clips per shard")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"), help="JSON results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="lrm-store-bench-", dir=args.dir))
    try:
        results = [bench_size(s, args.rows, args.frames, args.shard_size, work) for s in args.sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "store", "machine": platform.platform(), "cpu_threads": args.threads,
              "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print("| size | latent (T',c,h,w) | MB/row | phase | rows/s | MB/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for phase in ("encode", "write", "read_random64", "read_sequential256"):
            m = r[phase]
            print(f"| {r['size']} | {tuple(r['latent_shape'])} | {r['row_mb']:.3f} | {phase} | "
                  f"{m['rows_per_s']:.0f} | {m['mb_per_s']:.1f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
