"""Tuning efficiency of the reward hooks at toy scale (DOLLAR Tab. 17's comparison, on a CPU in minutes).

A dit-xs student (random weights perturbed, not distilled) in the dct latent space at 64x64 pixels is tuned
with each hook toward a non-differentiable reward (jpeg-incompressibility) and a differentiable one
(colorfulness): LRM fine-tuning through a surrogate trained concurrently (no fitted surrogate, no real data),
DDPO-SF (N = 2 of 4 steps), and direct reward gradients (K = 1, differentiable rewards only). Every method
gets the same steps, batch size and learning rate; the gold reward is measured at fixed prompts and seeds
(lrm.tuning.monitor) every `--eval-every` steps. One row per (reward, method): the mean over seeds of the
gold-reward gain, the wall time, the samples scored by the true reward, and the time at which the mean gain
first reached DDPO-SF's final mean gain (blank when it never did).
This is a toy: tiny untrained models and a few dozen steps, not the embedded default student.

    python benchmarks/tune_hooks_tiny.py --steps 40 --seeds 0 1 2 --out benchmarks/results/tune_hooks_tiny.json
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import numpy as np
import torch

from lrm.codecs import load as load_codec
from lrm.generators import build_dit
from lrm.rewards import load as load_reward
from lrm.text import TextEncoder
from lrm.tuning.true_reward import TrueReward
from lrm.tuning.tune import TuneConfig, tune

SHAPE = (1, 32, 8, 8)  # one 64x64 dct image
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a white ring"]


class HashWords(TextEncoder):
    """One seeded random 12-d vector per word: a text encoder with no model."""

    id, dim, max_length = "hash-words", 12, 16

    def embed_tokens(self, prompts):
        return [torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                             for w in p.split()]) for p in prompts]


def student(seed: int):
    torch.manual_seed(seed)
    model = build_dit("dit-xs", SHAPE[1], HashWords.dim)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def run(reward: str, method: str, seed: int, args) -> dict:
    surrogate_lr = args.surrogate_lr if method == "lrm" else TuneConfig.surrogate_lr  # only the concurrent one trains
    config = TuneConfig(method=method, concurrent=method == "lrm", steps=args.steps, student_steps=4,
                        batch_size=args.batch_size, lr=args.lr, surrogate_lr=surrogate_lr,
                        eval_every=args.eval_every, per_prompt=4, eval_prompts=len(PROMPTS), seed=seed)
    true = TrueReward(load_codec("dct"), load_reward(reward))
    start = time.perf_counter()
    result = tune(student(seed), true, PROMPTS, HashWords(), config, latent_shape=SHAPE)
    wall = time.perf_counter() - start
    gains = np.array([r.gold - result.records[0].gold for r in result.records])
    per_step = wall / args.steps
    scored = getattr(result.term, "samples", None)
    if scored is None:  # the concurrent surrogate labels the student's samples once per update
        scored = args.batch_size * args.steps
    return {"steps": np.array([r.step for r in result.records]), "gains": gains, "wall": wall,
            "per_step": per_step, "scored": scored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--surrogate-lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="Also write the rows as JSON (e.g. benchmarks/results/tune_hooks_tiny.json).")
    args = parser.parse_args()
    rows = []
    torch.set_num_threads(1)
    print(f"| reward | method | gold gain (mean +- sd over {len(args.seeds)} seeds) | wall s | samples scored | "
          "s to DDPO's final gain |")
    print("|---|---|---|---|---|---|")
    for reward in ("jpeg-incompressibility", "colorfulness"):
        spec = load_reward(reward).spec
        methods = ["ddpo", "lrm"] + (["direct"] if spec.differentiable else [])
        results = {m: [run(reward, m, s, args) for s in args.seeds] for m in methods}
        target = np.mean([r["gains"][-1] for r in results["ddpo"]])
        for method, runs in results.items():
            finals = np.array([r["gains"][-1] for r in runs])
            mean_curve = np.mean([r["gains"] for r in runs], axis=0)
            reached = np.flatnonzero(mean_curve >= target) if target > 0 else np.array([], int)
            per_step = np.mean([r["per_step"] for r in runs])
            when = f"{runs[0]['steps'][reached[0]] * per_step:.1f}" if reached.size else ""
            wall = float(np.mean([r["wall"] for r in runs]))
            print(f"| {reward} | {method} | {finals.mean():+.4g} +- {finals.std():.2g} | {wall:.1f} | "
                  f"{runs[0]['scored']} | {when} |", flush=True)
            rows.append({"reward": reward, "units": spec.units, "method": method, "gain_mean": float(finals.mean()),
                         "gain_sd": float(finals.std()), "gains": finals.tolist(), "wall_s": wall,
                         "samples_scored": int(runs[0]["scored"]), "s_to_ddpo_gain": float(when) if when else None})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/tune_hooks_tiny.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k != "out"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
