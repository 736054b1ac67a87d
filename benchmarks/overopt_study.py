"""Over-optimisation by regulariser on the embedded default (issue 25's benchmark; DOLLAR Sec. 9.3, Gao et al. 2022).

For each reward (default: jpeg-incompressibility, non-differentiable, and prompt-color, text-image) it runs

    lrm study overopt REWARD --launch --regularisers none,kl,concurrent,ensemble --seeds 0,1,2 \\
        --steps 100 --eval-every 10 --batch-size 8 --lr 1e-4 --out RUNS/REWARD

in a subprocess (the surrogates fitted on the student's store, one `lrm tune` run per regulariser and seed; a
second invocation reuses every finished fit and run, so an interrupted benchmark resumes), then collects from each
study's metrics.json one row per reward x regulariser (`collect`): gold at the start, the gold peak of the
seed-mean curve (+- the std over seeds at that step) and its step, each seed's own peak (mean +- std), gold and
proxy at the end, whether the proxy kept rising past the gold peak, each early-stopping rule's stop step, the gold
it keeps (share of the peak and of the gain over the start) and the steps it saves, and Gao et al.'s fit
gold(d) - gold(0) = d (alpha - beta log d) with d* = exp(alpha / beta - 1). It prints the table and writes OUT
(strict JSON, atomic), OUT with .md (a markdown snippet for docs/studies.md: command, settings, table, verdicts,
goal check, curves) and OUT with .png (seed-mean gold +- std and proxy against the step, per reward and arm).

Goal (issue 25, DOLLAR's observation in direction): the gold peaks within the run while the proxy keeps rising,
and the best early-stopping rule keeps >= 90% of the peak gold.

    PYTHONPATH=. python benchmarks/overopt_study.py --runs runs/overopt_study \\
        --out benchmarks/results/overopt_study.json

Without --student it tunes the cached embedded 4-step student (distilled first when missing, ~4-8 minutes, plus
the embedded teacher's training when that is missing too). For a smoke run in minutes:

    python benchmarks/tiny_student.py --out /tmp/tiny_student
    python benchmarks/overopt_study.py --student /tmp/tiny_student --rewards jpeg-incompressibility \\
        --regularisers none,kl --seeds 0 --steps 3 --eval-every 1 --batch-size 2 --per-prompt 2 --fit-steps 3 \\
        --runs /tmp/overopt_smoke --out /tmp/overopt_smoke/overopt_study.json
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lrm.studies.launch import LaunchConfig
from lrm.studies.overopt import RULES

REWARDS = ("jpeg-incompressibility", "prompt-color")  # one non-differentiable, one text-image (issue 25: >= 2)
GOAL_SHARE_OF_PEAK = 0.9  # issue 25: the best early-stopping rule keeps at least 90% of the peak gold


# ---------------------------------------------------------------- running the studies


def launch_command(reward: str, out: Path, args: argparse.Namespace) -> list[str]:
    """The `lrm study overopt REWARD --launch` command line of one reward's study; options left at None are the
    CLI's defaults (one source of truth)."""
    command = [sys.executable, "-m", "lrm.cli.app", "study", "overopt", reward, "--launch", "--out", str(out),
               "--regularisers", args.regularisers, "--seeds", args.seeds, "--device", args.device]
    options = {"--student": args.student, "--steps": args.steps, "--eval-every": args.eval_every,
               "--batch-size": args.batch_size, "--per-prompt": args.per_prompt, "--lr": args.lr,
               "--fit-steps": args.fit_steps, "--fidelity-threshold": args.fidelity_threshold,
               "--distance-budget": args.distance_budget}
    for flag, value in options.items():
        if value is not None:
            command += [flag, str(value)]
    return command


def run_study(command: list[str]) -> float:
    """Run one study (its progress lines go to this process's stderr); its wall seconds. A failed study ends the
    benchmark with its exit code (the CLI has printed the one-line reason)."""
    print("$ " + shlex.join(command[1:]).replace("-m lrm.cli.app", "lrm", 1), file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run(command)
    if result.returncode != 0:
        sys.exit(result.returncode)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the table (pure, on metrics.json dicts)


def _number(value) -> float:
    """A metrics.json number: strict JSON writes NaN as null; None -> NaN."""
    return float("nan") if value is None else float(value)


def _mean_std(values: list) -> tuple[float, float]:
    finite = [v for v in map(_number, values) if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite))  # std over seeds, as the study's gold_std (ddof 0)


def arm_row(reward: str, regulariser: str, arm: dict, metrics: dict) -> dict:
    """One table row from a comparison's metrics.json (`metrics`) and its arm `arm` (metrics["arms"][regulariser]).
    Curves are the seed means the study recorded; the std at the peak is the std over seeds at that evaluation."""
    curves = arm["curves"]
    steps = [int(s) for s in curves["steps"]]
    gold, gold_std, proxy = (list(map(_number, curves[k])) for k in ("gold", "gold_std", "proxy"))
    peak_step = int(arm["peak"]["step"])
    at_peak = steps.index(peak_step)
    seed_peak_gold = _mean_std([p["gold"] for p in arm["seed_peaks"]])
    stops = {stop["rule"]: {"applied": bool(stop["applied"]), "fired": bool(stop["fired"]), "step": stop["step"],
                            "gold": _number(stop["gold"]), "share_of_gain": _number(stop["share_of_gain"]),
                            "share_of_peak": _number(stop["share_of_peak"]), "steps_saved": stop["steps_saved"]}
             for stop in arm["stops"]}
    fired = [rule for rule, stop in stops.items() if stop["fired"] and math.isfinite(stop["share_of_peak"])]
    best = max(fired, key=lambda r: (stops[r]["share_of_peak"], stops[r]["steps_saved"] or 0), default=None)
    fit = arm["gao_fit"]
    peak_inside = steps[0] < peak_step < steps[-1]
    return {
        "reward": reward,
        "regulariser": regulariser,
        "seeds": list(metrics["seeds"][regulariser]),
        "higher_is_better": bool(metrics["higher_is_better"]),
        "steps": steps[-1],
        "gold_start": {"mean": gold[0], "std": gold_std[0]},
        "peak": {"step": peak_step, "gold": _number(arm["peak"]["gold"]), "std": gold_std[at_peak]},
        "seed_peaks": {"steps": [p["step"] for p in arm["seed_peaks"]], "gold_mean": seed_peak_gold[0],
                       "gold_std": seed_peak_gold[1]},
        "gold_end": {"mean": gold[-1], "std": gold_std[-1]},
        "proxy_start": proxy[0],
        "proxy_end": proxy[-1],
        "proxy_keeps_rising": arm["proxy_keeps_rising"],
        "stops": stops,
        "best_stop": best,
        "gao_fit": {key: _number(fit[key]) for key in ("alpha", "beta", "rmse", "d_star")},
        "goal": {
            "peak_within_run_proxy_rising": peak_inside and arm["proxy_keeps_rising"] is True,
            "best_stop_keeps_90pct": best is not None and stops[best]["share_of_peak"] >= GOAL_SHARE_OF_PEAK,
        },
    }


def collect(studies: dict[str, dict]) -> list[dict]:
    """Rows per reward x regulariser, in the rewards' and each study's arm order; `studies`: reward -> the
    comparison metrics.json dict of its `lrm study overopt --launch`."""
    rows = []
    for reward, metrics in studies.items():
        if metrics.get("reward") != reward:
            raise ValueError(f"the study given for {reward!r} tuned toward {metrics.get('reward')!r}; its --out "
                             "belongs to another reward")
        rows += [arm_row(reward, name, metrics["arms"][name], metrics) for name in metrics["regularisers"]]
    return rows


# ---------------------------------------------------------------- rendering


def _g(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "—"


def _pm(mean: float, std: float) -> str:
    return f"{_g(mean)} ± {_g(std)}" if math.isfinite(std) else _g(mean)


def _pct(share: float) -> str:
    return f"{share:.0%}" if math.isfinite(share) else "—"


def stop_cell(stop: dict) -> str:
    if not stop["applied"]:
        return "n/a"
    if not stop["fired"]:
        return "never (runs to the end)"
    return (f"step {stop['step']}: {_pct(stop['share_of_peak'])} of peak, {_pct(stop['share_of_gain'])} of gain, "
            f"{stop['steps_saved']} saved")


TABLE_HEADER = ["reward", "regulariser", "gold at start", "gold peak ± sd (step)", "seed peaks (mean ± sd)",
                "gold at end", "proxy start → end", "proxy rises past peak", *(f"stop: {rule}" for rule in RULES),
                "Gao α, β, d*"]


def table(rows: list[dict]) -> str:
    """A markdown table, one line per row."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for row in rows:
        fit = row["gao_fit"]
        cells = [row["reward"], row["regulariser"], _pm(row["gold_start"]["mean"], row["gold_start"]["std"]),
                 f"{_pm(row['peak']['gold'], row['peak']['std'])} ({row['peak']['step']})",
                 _pm(row["seed_peaks"]["gold_mean"], row["seed_peaks"]["gold_std"]),
                 _pm(row["gold_end"]["mean"], row["gold_end"]["std"]),
                 f"{_g(row['proxy_start'])} → {_g(row['proxy_end'])}",
                 {True: "yes", False: "no", None: "—"}[row["proxy_keeps_rising"]],
                 *(stop_cell(row["stops"][rule]) if rule in row["stops"] else "n/a" for rule in RULES),
                 f"{_g(fit['alpha'])}, {_g(fit['beta'])}, {_g(fit['d_star'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    """Per reward x arm: the issue's two goal conditions, in words."""
    lines = []
    for row in rows:
        goal, best = row["goal"], row["best_stop"]
        kept = (f"best rule {best} keeps {_pct(row['stops'][best]['share_of_peak'])} of the peak" if best
                else "no rule fired with a defined share of the peak")
        inside = "yes" if goal["peak_within_run_proxy_rising"] else "no"
        lines.append(f"- {row['reward']}, {row['regulariser']}: gold peaks within the run while the proxy keeps "
                     f"rising: {inside} (peak at step {row['peak']['step']} of {row['steps']}); {kept}: "
                     f"{'met' if goal['best_stop_keeps_90pct'] else 'not met'}")
    return lines


def snippet(rows: list[dict], result: dict, figure_name: str) -> str:
    """The markdown the docs include: command, settings, table, verdicts, goal check, curves."""
    settings = result["settings"]
    walls = ", ".join(f"{reward} {study['wall_s']:.0f} s" for reward, study in result["studies"].items())
    verdicts = [f"- {reward}: {study['verdict']}" for reward, study in result["studies"].items()]
    lr = settings["lr"] if settings["lr"] is not None else "`lrm tune`'s default"
    return "\n".join([
        "<!-- written by benchmarks/overopt_study.py; rerun it instead of editing -->",
        "```bash", result["command"], "```", "",
        f"Student: {settings['student']}; regularisers {settings['regularisers']}, seeds {settings['seeds']}; "
        f"{settings['steps']} steps, evaluations every {settings['eval_every']}, batch {settings['batch_size']}, "
        f"student lr {lr}; "
        f"study wall time (this invocation, reused runs take seconds): {walls}. "
        "Gold and proxy are seed means at fixed prompts and seeds; ± is the std over seeds.", "",
        table(rows), "", "Verdicts:", *verdicts, "", "Goal check (issue 25):", *goal_lines(rows), "",
        f"![seed-mean gold and proxy by regulariser]({figure_name})", ""])


def figure(studies: dict[str, dict]) -> bytes:
    """PNG: per reward a column, gold (seed mean +- std band) above and proxy below, one line per arm."""
    from lrm.reports.figures import _png, plt

    fig, axes = plt.subplots(2, len(studies), figsize=(5.5 * len(studies), 6.4), squeeze=False, sharex="col")
    for column, (reward, metrics) in enumerate(studies.items()):
        gold_ax, proxy_ax = axes[0, column], axes[1, column]
        for i, name in enumerate(metrics["regularisers"]):
            curves = metrics["arms"][name]["curves"]
            steps = np.array(curves["steps"])
            gold, std, proxy = (np.array([_number(v) for v in curves[k]]) for k in ("gold", "gold_std", "proxy"))
            gold_ax.plot(steps, gold, "o-", color=f"C{i}", label=name)
            gold_ax.fill_between(steps, gold - std, gold + std, color=f"C{i}", alpha=0.15)
            proxy_ax.plot(steps, proxy, "s--", color=f"C{i}", label=name)
        gold_ax.set(title=reward, ylabel="gold (pixel reward)")
        proxy_ax.set(xlabel="step", ylabel="proxy (surrogate)")
        gold_ax.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    launch = LaunchConfig()  # the arms and seeds are the launch's defaults
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rewards", nargs="+", default=list(REWARDS), help="rewards to study, one study each")
    parser.add_argument("--regularisers", default=",".join(launch.regularisers), help="arms, comma-separated")
    parser.add_argument("--seeds", default=",".join(map(str, launch.seeds)), help="seeds, comma-separated")
    parser.add_argument("--student", type=Path, default=None,
                        help="student run to tune (default: the cached embedded student, distilled when missing)")
    # sizes: ~25 CPU minutes for 2 rewards x 4 arms x 3 seeds plus 4 fits (docs/studies.md "Benchmark": how estimated)
    parser.add_argument("--steps", type=int, default=100, help="generator updates per run")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between evaluations")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per update")
    parser.add_argument("--per-prompt", type=int, default=None, help="evaluation samples per prompt (None: tune's)")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="the student's learning rate (1e-4: tune_efficiency.py's, at which a jpeg-compressibility "
                             "gold peaked after 30 updates and then fell, docs/tuning.md)")
    parser.add_argument("--fit-steps", type=int, default=None, help="steps per fitted surrogate (None: lrm fit's)")
    parser.add_argument("--fidelity-threshold", type=float, default=None, help="rule (a) (None: the study's)")
    parser.add_argument("--distance-budget", type=float, default=None, help="rule (c) (None: the rule is not applied)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=Path("runs/overopt_study"), help="studies go to RUNS/<reward>")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overopt_study.json"),
                        help="the JSON; the markdown snippet and the figure go beside it (.md, .png)")
    args = parser.parse_args(argv)
    if len(set(args.rewards)) != len(args.rewards):
        parser.error(f"--rewards must not repeat, got {args.rewards}")
    return args


def main(argv: list[str] | None = None) -> None:
    import json

    from lrm.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    args = parse_args(argv)
    studies, metrics = {}, {}
    for reward in args.rewards:
        folder = args.runs / reward
        wall = run_study(launch_command(reward, folder, args))
        metrics[reward] = json.loads((folder / "metrics.json").read_text())
        studies[reward] = {"out": str(folder), "wall_s": wall, "verdict": metrics[reward]["verdict"],
                           "launch": metrics[reward]["launch"], "distance_measure": metrics[reward]["distance_measure"]}
    rows = collect(metrics)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    settings["student"] = settings["student"] or {reward: f"embedded ({metrics[reward]['launch']['student']})"
                                                  for reward in args.rewards}
    environment = "".join(f"{name}={os.environ[name]} " for name in ("LRM_CACHE", "OMP_NUM_THREADS")
                          if name in os.environ)
    command = environment + "PYTHONPATH=. python benchmarks/overopt_study.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(), "settings": settings, "studies": studies, "rows": rows}
    print(table(rows))
    print("\n".join(goal_lines(rows)))
    atomic_write_json(args.out, result, strict=True)
    atomic_write_bytes(args.out.with_suffix(".png"), figure(metrics))
    atomic_write_text(args.out.with_suffix(".md"), snippet(rows, result, args.out.with_suffix(".png").name))
    print(f"wrote {args.out} and its .md and .png", file=sys.stderr)


if __name__ == "__main__":
    main()
