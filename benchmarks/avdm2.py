"""AVDM2 Fig. 4 on the embedded video teacher: 4-step video students distilled with ADM alone vs ADM + SDM-2D,
over trainer seeds, against the teacher's 50-step DDIM at CFG 4.

For each seed of --seeds and each arm (`adm`; `adm,sdm2d` with the embedded IMAGE teacher as the 2D teacher),
`lrm.tuning.run.distill` trains a 4-step student from the embedded video teacher into RUNS/<arm>-seed<k> (a
finished run is only re-exported, an unfinished one resumed), batch --batch-size clips per step. The seed is
DistillJob.seed: the trainer's noise, timesteps, SDM-2D frames, the batch order and the initial weights of ADM's
discriminator head (every student starts from the teacher's weights). Then every student (its own 4-step sampler, cfg 1) and the teacher (50-step DDIM, CFG
4) are evaluated by `lrm.evaluation.report.evaluate_run` on the same --prompts held-out procedural captions x
--samples-per-prompt seeds:
  frame FD    Frechet distance of pooled latent statistics of single frames (per latent channel mean, std and
              mean |spatial gradient|; every frame of every clip a sample) to the reference clips' frames:
              AVDM2's per-frame quality, in the dct latent space (not FID)
  clip FD     the same of whole clips (+ mean |frame difference|) to 128 procedural reference clips: a clip-level
              distance, not FVD
  colour      share of frames whose object colour is the caption's (shape likewise; per frame, pixels)
  flicker     the temporal-flickering reward of the decoded clips (VBench's definition; 1: no flicker)
  prompt-color, Vendi (per prompt, 1 .. samples per prompt)
  s/step      median seconds per training step, from the run's metrics.jsonl (the teacher has none)
Prints mean +- sample std over the seeds per arm (the teacher one row) and writes benchmarks/results/avdm2.json.

    OMP_NUM_THREADS=1 python benchmarks/avdm2.py --steps 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lrm.configs import DistillJob
from lrm.evaluation.report import FRECHET_FEATURES, EvaluationConfig, evaluate_run
from lrm.generators.embedded import embedded_teacher
from lrm.io import atomic_write_json
from lrm.tuning.run import distill

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {"adm": ("adm",), "adm-sdm2d": ("adm", "sdm2d")}  # run-folder name -> loss terms
STUDENT_STEPS = 4  # AVDM2 Fig. 4: 4-step generation
TEACHER_CFG = 4.0  # the guidance of the teacher's own report (docs/teacher.md)
REWARDS = ("prompt-color", "temporal-flickering")
# metric key -> table header, in table order
METRICS = {"frame_frechet": "frame FD", "frechet": "clip FD", "alignment_color": "colour", "alignment_shape": "shape",
           "temporal_flickering": "flicker", "prompt_color": "prompt-color", "vendi": "Vendi",
           "train_s_per_step": "s/step"}


# ---------------------------------------------------------------------------------------------------
# pure parts: one run's metrics, the table rows over seeds, the printed table
# ---------------------------------------------------------------------------------------------------

def run_metrics(evaluation: dict, train_log: list[dict] | None) -> dict:
    """The METRICS of one model from its evaluate_run metrics and, for a student, the "train" records of its
    metrics.jsonl (None for the teacher: no training step); a metric that could not be measured is None."""
    diversity = evaluation["diversity"]
    seconds = [r["seconds"] for r in train_log or []]
    return {"sampler": evaluation["sampler"], "steps": evaluation["steps"], "cfg": evaluation["cfg"],
            "frechet": evaluation["frechet"]["value"], "frame_frechet": evaluation["frechet"].get("per_frame"),
            "alignment_color": evaluation["alignment"]["color"], "alignment_shape": evaluation["alignment"]["shape"],
            "temporal_flickering": evaluation["rewards"]["temporal-flickering"]["mean"],
            "prompt_color": evaluation["rewards"]["prompt-color"]["mean"],
            "vendi": diversity["mean"] if diversity else None,
            "train_s_per_step": statistics.median(seconds) if seconds else None}


def spread(values: list) -> dict:
    """{mean, std, n, values}: mean and sample standard deviation (ddof 1) of the finite values (None and NaN,
    "not measured", are left out; n counts the rest); the mean is None with no value, the std with fewer than 2."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(kept) if kept else None, "std": statistics.stdev(kept) if len(kept) > 1 else None,
            "n": len(kept), "values": values}


def collect(per_run: dict, teacher: dict) -> list[dict]:
    """Table rows: one per arm of ARMS present in per_run ({run name: {"arm", "seed", <METRICS>}}), each metric's
    spread over that arm's seeds, then the teacher's row (its one evaluation: n 1, std None)."""
    rows = []
    for arm in ARMS:
        runs = sorted((r for r in per_run.values() if r["arm"] == arm), key=lambda r: r["seed"])
        if runs:
            rows.append({"model": arm, "losses": ",".join(ARMS[arm]), "seeds": [r["seed"] for r in runs],
                         **{k: spread([r[k] for r in runs]) for k in METRICS}})
    rows.append({"model": "teacher", "losses": None, "seeds": [],
                 **{k: spread([teacher[k]]) for k in METRICS}})
    return rows


def _cell(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f}" if s["std"] is None else f"{s['mean']:.3f} +- {s['std']:.3f}"


def format_table(rows: list[dict]) -> str:
    """The rows of `collect` as a fixed-width text table: mean +- std over seeds (a single value: its mean)."""
    width = {k: max(len(h), *(len(_cell(r[k])) for r in rows)) + 2 for k, h in METRICS.items()}
    lines = [f"{'model':<11}{'seeds':>6}" + "".join(f"{h:>{width[k]}}" for k, h in METRICS.items())]
    for r in rows:
        lines.append(f"{r['model']:<11}{len(r['seeds']) or '-':>6}"
                     + "".join(f"{_cell(r[k]):>{width[k]}}" for k in METRICS))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------------

def train_records(run: Path) -> list[dict]:
    """The "train" records of RUN/metrics.jsonl (lrm.tuning.distill_log), one per training step."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r["split"] == "train"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer seeds (DistillJob.seed)")
    parser.add_argument("--steps", type=int, default=60, help="distillation steps per student")
    parser.add_argument("--batch-size", type=int, default=DistillJob.batch_size, help="clips per training step")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between the runs' fixed-seed logs (default: half the steps)")
    parser.add_argument("--prompts", type=int, default=12, help="held-out procedural captions evaluated")
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-avdm2"))
    parser.add_argument("--out", type=Path, default=RESULTS / "avdm2.json")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    for name in ("steps", "batch_size", "prompts", "samples_per_prompt"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eval_every is None:
        args.eval_every = max(1, args.steps // 2)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    image_teacher = embedded_teacher(video=False, progress=True)  # SDM-2D's 2D teacher
    video_teacher = embedded_teacher(video=True, progress=True)
    config = EvaluationConfig(procedural=args.prompts, samples_per_prompt=args.samples_per_prompt, rewards=REWARDS)

    per_run = {}
    for seed in args.seeds:
        for arm, losses in ARMS.items():
            run = args.runs / f"{arm}-seed{seed}"
            job = DistillJob(video=True, losses=losses, student_steps=STUDENT_STEPS, steps=args.steps,
                             batch_size=args.batch_size, seed=seed, eval_every=args.eval_every,
                             image_teacher=str(image_teacher) if "sdm2d" in losses else None)
            distill(job, run)  # a finished run is only re-exported
            evaluation = evaluate_run(run, config, run / "eval")
            per_run[run.name] = {"arm": arm, "seed": seed, "run": str(run),
                                 **run_metrics(evaluation, train_records(run))}
    teacher_eval = evaluate_run(video_teacher, replace(config, cfg=TEACHER_CFG), args.runs / "teacher-eval")
    teacher = {"run": str(video_teacher), **run_metrics(teacher_eval, None)}

    rows = collect(per_run, teacher)
    print(format_table(rows))
    atomic_write_json(args.out, {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "settings": {**vars(args), "runs": str(args.runs), "out": str(args.out), "student_steps": STUDENT_STEPS,
                     "teacher_cfg": TEACHER_CFG, "rewards": list(REWARDS)},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "video_teacher": str(video_teacher), "image_teacher": str(image_teacher),
        "frechet": {"features": FRECHET_FEATURES, "reference": teacher_eval["frechet"]["reference"]},
        "per_run": per_run, "teacher": teacher, "rows": rows}, strict=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
