"""The README's main job, timed: `lrm fit REWARD` on the embedded default, wall and CPU time, peak memory, verdict.

Runs `lrm fit REWARD --out FOLDER --quiet [--model PRESET]` in a fresh process per preset (a new
folder each time, so nothing resumes), and reads the run's metrics.json. Wall seconds are the
child's, CPU seconds its user + system time and peak memory its maximum resident set size
(getrusage of the finished child, what `/usr/bin/time -v` reports). Prints a table, writes JSON.
Run it on an otherwise idle machine: the times are what a user of these 2 cores would wait.

    python benchmarks/main_job.py                                    # lrm fit colorfulness, 3 runs
    python benchmarks/main_job.py --runs 1 --models image-cnn image-cnn-log-stats --out /tmp/presets.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "main_job.json"


def run_once(reward: str, preset: str | None, folder: Path) -> dict:
    """One `lrm fit` in a child process: its times, peak memory and the report's numbers."""
    command = [sys.executable, "-m", "lrm.cli.app", "fit", reward, "--out", str(folder), "--quiet"]
    if preset:
        command += ["--model", preset]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "LRM_TRACEBACK": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((folder / "metrics.json").read_text())
    ridge = metrics["baselines"]["ridge"]
    return {
        "preset": metrics["preset"], "parameters": metrics["parameters"],
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_gb": round(after.ru_maxrss / 1e6, 2),  # kB on Linux; the largest child so far
        "n_train": metrics["n_train"], "n_val": metrics["n_val"], "steps": metrics["steps"],
        "best_step": metrics["best_step"], "fit_s": metrics["fit_seconds"],
        "surrogate": {k: metrics["surrogate"][k] for k in ("spearman", "kendall", "r2", "pairwise_accuracy", "mae")},
        "ridge": {k: ridge[k] for k in ("spearman", "kendall", "r2", "pairwise_accuracy", "mae")},
        "verdict": metrics["verdict"],
    }


def format_table(rows: list[dict]) -> str:
    lines = [f"{'preset':22s} {'params':>8s} {'wall s':>7s} {'CPU s':>7s} {'peak GB':>8s} {'best':>5s} "
             f"{'Spearman':>8s} {'R²':>6s} {'ridge Sp.':>9s}  verdict"]
    for r in rows:
        s = r["surrogate"]
        lines.append(f"{r['preset']:22s} {r['parameters']:8,d} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} "
                     f"{r['peak_rss_gb']:8.2f} {r['best_step']:5d} {s['spearman']:8.3f} {s['r2']:6.3f} "
                     f"{r['ridge']['spearman']:9.3f}  {r['verdict']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", default="colorfulness", help="reward of the job (default: colorfulness)")
    parser.add_argument("--models", nargs="+", default=[None], metavar="PRESET",
                        help="surrogate presets (default: the reward kind's default preset)")
    parser.add_argument("--runs", type=int, default=3, help="runs per preset (the machine's speed varies)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from lrm.io import atomic_write_json

    rows = []
    with tempfile.TemporaryDirectory(prefix="lrm-main-job-") as scratch:
        for preset in args.models:
            for run in range(args.runs):
                rows.append(run_once(args.reward, preset, Path(scratch) / f"{preset or 'default'}-{run}"))
                print(format_table(rows[-1:]), flush=True)
    print(format_table(rows))
    atomic_write_json(args.out, {
        "setup": {"command": f"lrm fit {args.reward}", "runs": args.runs, "cpus": os.cpu_count(),
                  "machine": platform.machine(), "python": platform.python_version()},
        "runs": rows,
    }, strict=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
