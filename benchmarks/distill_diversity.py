"""Diversity of VSD alone vs VSD + CD students (DOLLAR Tab. 3, Fig. 28: VSD alone collapses, CD restores it).

Distils the embedded image teacher into --student-steps students with `--losses vsd` and `--losses vsd,cd`,
each with --seeds trainer seeds (noise, timesteps and batch order; every student starts from the teacher),
then evaluates each with `lrm.evaluation.report.evaluate_run` (its few-step sampler, cfg 1) on --prompts procedural
captions x --samples-per-prompt seeds: Vendi per prompt (pixels), Frechet distance of pooled latent
statistics to procedural reference latents, colour / shape alignment. Prints mean and std over the
trainer seeds and the ratio of the Vendi means; writes benchmarks/results/distill_diversity.json.

    OMP_NUM_THREADS=1 python benchmarks/distill_diversity.py --steps 150
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lrm.configs import DistillJob
from lrm.evaluation.report import EvaluationConfig, evaluate_run
from lrm.generators.embedded import embedded_teacher
from lrm.io import atomic_write_json
from lrm.tuning.run import distill

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("vsd", "vsd,cd")
METRICS = ("vendi", "frechet", "alignment_color", "alignment_shape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--student-steps", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-diversity"))
    parser.add_argument("--out", type=Path, default=RESULTS / "distill_diversity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    embedded_teacher(progress=True)
    config = EvaluationConfig(procedural=args.prompts, samples_per_prompt=args.samples_per_prompt,
                              rewards=("prompt-color",))
    per_run = {}
    for losses in VARIANTS:
        for seed in range(args.seeds):
            run = args.runs / f"{losses.replace(',', '-')}-seed{seed}"
            distill(DistillJob(losses=tuple(losses.split(",")), student_steps=args.student_steps, steps=args.steps,
                               seed=seed, eval_every=args.steps), run)
            m = evaluate_run(run, config, run / "eval")
            per_run[run.name] = {"losses": losses, "seed": seed, "vendi": m["diversity"]["mean"],
                                 "frechet": m["frechet"]["value"], "alignment_color": m["alignment"]["color"],
                                 "alignment_shape": m["alignment"]["shape"]}
    summary = {}
    print(f"{'losses':<8}" + "".join(f"{name:>24}" for name in METRICS))
    for losses in VARIANTS:
        rows = [r for r in per_run.values() if r["losses"] == losses]
        summary[losses] = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows])),
                               "values": [r[k] for r in rows]} for k in METRICS}
        print(f"{losses:<8}" + "".join(f"{summary[losses][k]['mean']:>15.3f} +- {summary[losses][k]['std']:<5.3f}"
                                       for k in METRICS))
    ratio = summary["vsd,cd"]["vendi"]["mean"] / summary["vsd"]["vendi"]["mean"]
    print(f"Vendi ratio (vsd,cd / vsd): {ratio:.3f}")
    atomic_write_json(args.out, {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
                                 "settings": {**vars(args), "runs": str(args.runs), "out": str(args.out)},
                                 "per_run": per_run, "summary": summary, "vendi_ratio": ratio})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
