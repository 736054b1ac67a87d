"""Tuning efficiency of the reward hooks on the embedded default student (DOLLAR Tab. 17, Fig. 11-12).

The cached embedded 4-step student (lrm.tuning.embedded) is tuned toward each reward with each method that can
run it: LRM fine-tuning through a surrogate trained concurrently on the true reward of the student's samples
("lrm", Alg. 1 lines 15-17), DDPO-SF ("ddpo", Alg. 2) and direct reward gradients ("direct", ReFL / DRaFT-K;
differentiable rewards only). Every method gets the same prompts (the CLI's 16 procedural captions), steps,
batch size and student learning rate. Each run is one fresh subprocess (this script with --worker) writing
--runs/<reward>-<method>-s<seed>/ (a `lrm tune` run folder: checkpoints, resumable); a finished run
folder is reused. Per run:
- the gold (true) reward gain at fixed prompts and seeds (lrm.tuning.monitor) every --eval-every steps, against
  the training wall time (sum of the trainer's step seconds, evaluations excluded) and against the student
  samples generated for training (batch size x steps);
- peak memory: the worker process's peak RSS (os.wait4; CUDA max allocated too with --device cuda);
- diversity after tuning (DOLLAR Eq. 27, Vendi of the decoded pixels per prompt).
Goal (issue 24): LRM-FT reaches DDPO-SF's final mean gain in <= 1/5 of DDPO-SF's wall time at <= 1/3 of its
peak memory. Video rewards need a video student, which the embedded default has only when the embedded video
teacher is cached (otherwise the row says why it did not run).

    python benchmarks/tune_efficiency.py --steps 40 --eval-every 10 --seeds 0 1 2 \
        --out benchmarks/results/tune_efficiency.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REWARDS = ("jpeg-compressibility", "prompt-color", "temporal-flickering")  # non-differentiable, text-image, video
METHODS = ("lrm", "ddpo", "direct")
PROMPTS = 16  # procedural captions tuned on (lrm.cli.tune.PROCEDURAL_PROMPTS)
RESULT = "result.json"  # what a finished worker leaves in its run folder
PROCESS = "process.json"  # the parent's measurement of the worker process (peak RSS, wall)


# ---------------------------------------------------------------- worker: one tuning run in this process


def worker(args) -> None:
    """Tune the embedded student with one (reward, method, seed) in args.run_dir; write RESULT there."""
    from dataclasses import asdict

    import torch

    from lrm.codecs import from_settings
    from lrm.evaluation.report import procedural_prompts
    from lrm.generators.runs import open_generator_run
    from lrm.rewards import load as load_reward
    from lrm.text import load as load_text
    from lrm.tuning.embedded import embedded_student
    from lrm.tuning.true_reward import TrueReward
    from lrm.tuning.tune import TuneConfig, tune

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = open_generator_run(embedded_student(args.student_steps, train_if_missing=False))
    model = run.load(map_location=args.device)
    latent_shape = run.latent_shape()
    codec = from_settings(model.codec_settings).to(args.device)
    true_reward = TrueReward(codec, load_reward(args.reward))
    encoder = load_text(model.text_encoder_id)
    prompts = procedural_prompts(PROMPTS, latent_shape[0])
    config = TuneConfig(method=args.method, concurrent=args.method == "lrm", steps=args.steps,
                        student_steps=run.student_steps, batch_size=args.batch_size, lr=args.lr,
                        surrogate_lr=args.surrogate_lr[0], eval_every=args.eval_every, per_prompt=args.per_prompt,
                        eval_prompts=args.eval_prompts, seed=args.seed)
    settings = {"reward": args.reward, "from": str(run.run_dir), "prompts": prompts}
    start = time.perf_counter()
    result = tune(model, true_reward, prompts, encoder, config, latent_shape=latent_shape,
                  run_dir=Path(args.run_dir), settings=settings)
    seconds = np.cumsum([0.0] + [log.seconds for log in result.logs])  # (steps + 1,) training seconds after step s
    records = [asdict(r) for r in result.records]
    out = {"reward": args.reward, "method": args.method, "seed": args.seed, "config": asdict(config),
           "student": str(run.run_dir), "records": records,
           "train_seconds": [float(seconds[r["step"]]) for r in records],
           "samples": [r["step"] * args.batch_size for r in records],
           "seconds_per_step": result.seconds_per_step, "cuda_peak_mb": result.peak_memory_mb,
           "nonfinite_rewards": true_reward.nonfinite, "process_seconds": time.perf_counter() - start}
    (Path(args.run_dir) / RESULT).write_text(json.dumps(out, indent=1, default=float))


# ---------------------------------------------------------------- parent: runs, table, figure


def no_student(reward: str) -> str | None:
    """Why the embedded default has no student for `reward` (a video reward without a cached video teacher)."""
    from lrm.generators.embedded import embedded_run_dir
    from lrm.rewards import load as load_reward

    if load_reward(reward).spec.is_video and not (embedded_run_dir(video=True) / "model").is_dir():
        return ("the embedded student is image-only and the embedded video teacher is not cached "
                f"({embedded_run_dir(video=True)}), so there is no video student to tune")
    return None


def refusal(reward: str, method: str) -> str | None:
    """Why `method` cannot tune toward `reward`, or None when it can."""
    from lrm.rewards import load as load_reward

    if method == "direct" and not load_reward(reward).spec.differentiable:
        return f"{reward} is not differentiable (direct backpropagates the pixel reward)"
    return None


def variants(methods: list[str], surrogate_lrs: list[float]) -> list[tuple[str, str, float]]:
    """(label, method, surrogate lr): one "lrm-slr<lr>" per concurrent surrogate learning rate, the others once."""
    return [row for method in methods for row in
            ([(f"lrm-slr{lr:g}", method, lr) for lr in surrogate_lrs] if method == "lrm" else [(method, method, None)])]


def finished(run_dir: Path, method: str, seed: int, surrogate_lr: float | None, args) -> bool:
    """True when run_dir holds a finished run with these settings (a ddpo or direct run ignores the surrogate lr)."""
    if not ((run_dir / RESULT).is_file() and (run_dir / PROCESS).is_file()):
        return False
    saved = json.loads((run_dir / RESULT).read_text())["config"]
    wanted = {"method": method, "seed": seed, "steps": args.steps, "eval_every": args.eval_every,
              "batch_size": args.batch_size, "lr": args.lr, "per_prompt": args.per_prompt,
              "eval_prompts": args.eval_prompts, "student_steps": args.student_steps}
    if surrogate_lr is not None:
        wanted["surrogate_lr"] = surrogate_lr
    return all(saved[k] == v for k, v in wanted.items())


def run_one(reward: str, label: str, method: str, surrogate_lr: float | None, seed: int, args, root: Path) -> dict:
    """The finished run's RESULT and PROCESS, running the worker first unless its folder already finished."""
    run_dir = root / f"{reward}-{label}-s{seed}"
    result_path, process_path = run_dir / RESULT, run_dir / PROCESS
    if finished(run_dir, method, seed, surrogate_lr, args):
        print(f"  {run_dir.name}: finished earlier, reused", flush=True)
        return {**json.loads(result_path.read_text()), **json.loads(process_path.read_text())}
    command = [sys.executable, __file__, "--worker", "--reward", reward, "--method", method, "--seed", str(seed),
               "--run-dir", str(run_dir), "--steps", str(args.steps), "--eval-every", str(args.eval_every),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--surrogate-lr", str(surrogate_lr if surrogate_lr is not None else args.surrogate_lr[0]),
               "--per-prompt", str(args.per_prompt), "--eval-prompts", str(args.eval_prompts),
               "--student-steps", str(args.student_steps), "--device", args.device]
    print(f"  {run_dir.name}: running ({args.steps} steps)", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run {run_dir} failed (exit {os.waitstatus_to_exitcode(status)}); rerun to resume it")
    measured = {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - start}
    process_path.write_text(json.dumps(measured))
    result = json.loads(result_path.read_text())
    gains = [r["gold"] - result["records"][0]["gold"] for r in result["records"]]
    print(f"  {run_dir.name}: gain {gains[-1]:+.4g} in {result['train_seconds'][-1]:.0f} s training, "
          f"{measured['wall_s']:.0f} s wall, peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
    return {**result, **measured}


def summarise(runs: list[dict]) -> dict:
    """Mean curves and final numbers over the seeds of one (reward, method)."""
    gains = np.array([[r["gold"] - run["records"][0]["gold"] for r in run["records"]] for run in runs])  # (S, E)
    seconds = np.array([run["train_seconds"] for run in runs])  # (S, E)
    final = gains[:, -1]
    return {"seeds": [run["seed"] for run in runs], "steps": [r["step"] for r in runs[0]["records"]],
            "samples": runs[0]["samples"], "gain_curve_mean": gains.mean(0).tolist(),
            "gain_curve_min": gains.min(0).tolist(), "gain_curve_max": gains.max(0).tolist(),
            "seconds_curve_mean": seconds.mean(0).tolist(),
            "gold_start": float(np.mean([r["records"][0]["gold"] for r in runs])),
            "gain_mean": float(final.mean()), "gain_sd": float(final.std()), "gains": final.tolist(),
            "train_s_mean": float(seconds[:, -1].mean()), "wall_s_mean": float(np.mean([r["wall_s"] for r in runs])),
            "peak_rss_mb_mean": float(np.mean([r["peak_rss_mb"] for r in runs])),
            "peak_rss_mb_max": float(np.max([r["peak_rss_mb"] for r in runs])),
            "cuda_peak_mb": runs[0]["cuda_peak_mb"],
            "diversity_before": float(np.mean([r["records"][0]["diversity"] for r in runs])),
            "diversity_after": float(np.mean([r["records"][-1]["diversity"] for r in runs])),
            "nonfinite_rewards": int(sum(r["nonfinite_rewards"] for r in runs))}


def goal(lrm: dict, ddpo: dict) -> dict:
    """Issue 24's goal: LRM-FT's mean curve reaches DDPO-SF's final mean gain within 1/5 of DDPO-SF's training
    time, at <= 1/3 of its peak memory."""
    target = ddpo["gain_mean"]
    curve = np.array(lrm["gain_curve_mean"])
    reached = np.flatnonzero(curve >= target)
    seconds = lrm["seconds_curve_mean"][reached[0]] if reached.size else None
    time_ratio = seconds / ddpo["train_s_mean"] if seconds is not None else None
    memory = "cuda_peak_mb" if ddpo["cuda_peak_mb"] else "peak_rss_mb_mean"
    memory_ratio = lrm[memory] / ddpo[memory]
    # a DDPO-SF run that gained nothing sets no bar: the time goal is then undecided (None), not met
    return {"ddpo_final_gain": target, "ddpo_gain_positive": target > 0, "lrm_seconds_to_ddpo_gain": seconds,
            "lrm_samples_to_ddpo_gain": lrm["samples"][reached[0]] if reached.size else None,
            "time_ratio": time_ratio, "memory": memory, "memory_ratio": memory_ratio,
            "time_goal_met": (time_ratio is not None and time_ratio <= 0.2) if target > 0 else None,
            "memory_goal_met": memory_ratio <= 1 / 3}


def plot(rows: dict, units: dict, path: Path) -> None:
    """Gold gain against training seconds and against generated samples, one line per method, seed min-max
    shaded; one row of panels per reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = list(rows)
    fig, axes = plt.subplots(len(rewards), 2, figsize=(10, 3.6 * len(rewards)), squeeze=False)
    for row, reward in zip(axes, rewards):
        for method, summary in rows[reward].items():
            for ax, x in zip(row, (summary["seconds_curve_mean"], summary["samples"])):
                ax.plot(x, summary["gain_curve_mean"], marker="o", ms=3, label=method)
                ax.fill_between(x, summary["gain_curve_min"], summary["gain_curve_max"], alpha=0.2)
        label = f"gold gain ({units[reward]})" if units[reward] else "gold gain"
        row[0].set(xlabel="training wall time (s)", ylabel=label, title=f"{reward} vs time")
        row[1].set(xlabel="student samples generated", ylabel=label, title=f"{reward} vs samples")
        for ax in row:
            ax.axhline(0, color="grey", lw=0.5)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", nargs="+", default=list(REWARDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="student updates per run")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5, help="the student's AdamW (lrm tune's default)")
    parser.add_argument("--surrogate-lr", type=float, nargs="+", default=[1e-4],
                        help="the concurrent surrogate's AdamW (lrm tune's default 1e-4); one lrm row per value")
    parser.add_argument("--per-prompt", type=int, default=4, help="monitor samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=4, help="monitor prompts")
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/tune_efficiency.json",
                        help="JSON; the figure goes beside it (.png)")
    parser.add_argument("--runs", default="runs/tune_efficiency",
                        help="run folders (checkpoints, ~10 MB per evaluation; a finished one is reused)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reward", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    out = Path(args.out)
    root = Path(args.runs)
    rows, skipped = {}, []
    for reward in args.rewards:
        why = no_student(reward)
        if why is not None:
            skipped.append({"reward": reward, "method": "all", "reason": why})
            print(f"{reward}: not run: {why}", flush=True)
            continue
        for label, method, surrogate_lr in variants(args.methods, args.surrogate_lr):
            why = refusal(reward, method)
            if why is not None:
                skipped.append({"reward": reward, "method": method, "reason": why})
                print(f"{reward} / {method}: not run: {why}", flush=True)
                continue
            print(f"{reward} / {label}: seeds {args.seeds}", flush=True)
            runs = [run_one(reward, label, method, surrogate_lr, seed, args, root) for seed in args.seeds]
            rows.setdefault(reward, {})[label] = summarise(runs)
    goals = {f"{reward} / {label}": goal(methods[label], methods["ddpo"]) for reward, methods in rows.items()
             if "ddpo" in methods for label in methods if label.startswith("lrm")}
    print(f"\n| reward | method | gold start | gold gain (mean ± sd, {len(args.seeds)} seeds) | training s | "
          "samples | peak RSS MB | Vendi before -> after |")
    print("|---|---|---|---|---|---|---|---|")
    for reward, methods in rows.items():
        for method, s in methods.items():
            print(f"| {reward} | {method} | {s['gold_start']:.4g} | {s['gain_mean']:+.3g} ± {s['gain_sd']:.2g} | "
                  f"{s['train_s_mean']:.0f} | {s['samples'][-1]} | {s['peak_rss_mb_mean']:.0f} | "
                  f"{s['diversity_before']:.3f} -> {s['diversity_after']:.3f} |")
    for item in skipped:
        print(f"| {item['reward']} | {item['method']} | not run: {item['reason']} |")
    for name, g in goals.items():
        when = "never" if g["lrm_seconds_to_ddpo_gain"] is None else f"{g['lrm_seconds_to_ddpo_gain']:.0f} s"
        ratio = g["time_ratio"] if g["time_ratio"] is None else round(g["time_ratio"], 3)
        met = "undecided, DDPO-SF gained nothing" if g["time_goal_met"] is None else g["time_goal_met"]
        print(f"goal {name}: DDPO-SF final gain {g['ddpo_final_gain']:+.3g}; LRM-FT reaches it at {when} "
              f"(time ratio {ratio}, goal <= 0.2: {met}); memory ratio {g['memory_ratio']:.2f} "
              f"(goal <= 0.33: {g['memory_goal_met']})")
    hidden = ("worker", "reward", "method", "seed", "run_dir", "runs")
    settings = {k: v for k, v in vars(args).items() if k not in hidden}
    command = "python benchmarks/tune_efficiency.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in settings.items())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "settings": settings, "rows": rows, "not_run": skipped,
                               "goal": goals}, indent=1, default=float))
    if rows:
        from lrm.rewards import load as load_reward

        plot(rows, {reward: load_reward(reward).spec.units for reward in rows}, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if rows else ""))


if __name__ == "__main__":
    main()
