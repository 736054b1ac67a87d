"""The README's main job, timed: `lrm fit REWARD` on the embedded default, wall and CPU time, peak memory, verdict.

Runs `lrm fit REWARD --out FOLDER --quiet [--model PRESET] [--size N]` in a fresh process per run
(a new folder each time, so nothing resumes), and reads the run's metrics.json. Wall seconds are
the child's, CPU seconds its user + system time and peak memory its maximum resident set size
(wait4 of that child, what `/usr/bin/time -v` reports). A failed run is recorded with its last
error line. Prints a table, writes JSON after every run. Run it on an otherwise idle machine: the
times are what a user of these 2 cores would wait.

    python benchmarks/main_job.py                                    # lrm fit colorfulness, 3 runs
    python benchmarks/main_job.py --runs 1 --models image-cnn image-cnn-log-stats --out /tmp/presets.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "main_job.json"
METRICS = ("spearman", "kendall", "r2", "pairwise_accuracy", "mae")  # the README's main-job table
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, kB on Linux


def run_once(reward: str, preset: str | None, size: int | None, folder: Path) -> dict:
    """One `lrm fit` in a child process: its times, peak memory and the report's numbers (or why it failed)."""
    command = [sys.executable, "-m", "lrm.cli.app", "fit", reward, "--out", str(folder), "--quiet"]
    command += ["--model", preset] if preset else []
    command += ["--size", str(size)] if size else []
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU time and peak memory
    wall = time.perf_counter() - start
    row = {"preset": preset, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_gib": round(usage.ru_maxrss * RSS_UNIT / 2**30, 2)}
    if os.waitstatus_to_exitcode(status) != 0:
        return {**row, "error": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {status}"}
    metrics = json.loads((folder / "metrics.json").read_text())
    return {
        **row, "preset": metrics["preset"], "parameters": metrics["parameters"],
        "n_train": metrics["n_train"], "n_val": metrics["n_val"], "steps": metrics["steps"],
        "best_step": metrics["best_step"], "fit_s": metrics["fit_seconds"],
        "surrogate": {k: metrics["surrogate"][k] for k in METRICS},
        **{name: {k: baseline[k] for k in METRICS} for name, baseline in metrics["baselines"].items()},  # ridge, constant
        "verdict": metrics["verdict"],
    }


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'preset':34s} {'params':>8s} {'wall s':>7s} {'CPU s':>7s} {'peak GiB':>8s} {'best':>5s} "
             f"{'Spearman':>8s} {'R²':>6s} {'ridge Sp.':>9s}  verdict"]
    for r in rows:
        if "error" in r:
            lines.append(f"{str(r['preset']):34s} failed: {r['error']}")
            continue
        s = r["surrogate"]
        lines.append(f"{r['preset']:34s} {r['parameters']:8,d} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} "
                     f"{r['peak_rss_gib']:8.2f} {r['best_step']:5d} {number(s['spearman'], '8.3f')} "
                     f"{number(s['r2'], '6.3f')} {number(r['ridge']['spearman'], '9.3f')}  {r['verdict']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", default="colorfulness", help="reward of the job (default: colorfulness)")
    parser.add_argument("--models", nargs="+", default=[None], metavar="PRESET",
                        help="surrogate presets (default: the reward kind's default preset)")
    parser.add_argument("--size", type=int, help="frame side of the job's images (default: lrm fit's, 128 px)")
    parser.add_argument("--runs", type=int, default=3, help="runs per preset (the machine's speed varies)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from lrm.io import atomic_write_json

    command = " ".join(["lrm fit", args.reward, *([f"--size {args.size}"] if args.size else [])])
    setup = {"command": command, "runs": args.runs, "cpus": os.cpu_count(), "machine": platform.machine(),
             "python": platform.python_version()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="lrm-main-job-") as scratch:
        for preset in args.models:
            for run in range(args.runs):
                rows.append(run_once(args.reward, preset, args.size, Path(scratch) / f"{preset or 'default'}-{run}"))
                print(format_table(rows[-1:]), flush=True)
                atomic_write_json(args.out, {"setup": setup, "runs": rows}, strict=True)  # after every run
    print(format_table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
