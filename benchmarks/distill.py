"""Few-step speed and quality (DOLLAR Tab. 4 / 12): 1-, 2- and 4-step students distilled from the embedded
image teacher with VSD + CD, against that teacher's 50-step DDIM sampler at CFG 7.5 (DOLLAR's teacher
guidance; also at CFG 4, the guidance of the teacher's own report).

For each student `lrm.tuning.run.distill` trains (or resumes) RUNS/student-<k> for --steps steps; then the
teacher and every student are measured the same way:
  time        end-to-end sampling wall time, prompts -> decoded pixels (text encoding, the sampler, the dct
              decode; models loaded beforehand), for the prompts and seeds quality is measured on, batch 16, one thread;
              after a warm-up call of each model, --repeats interleaved rounds time every model once (`timings`);
              times are medians over rounds, "speed-up" is the median over rounds of the teacher's time over
              the model's, with its range; also the same with every prompt's embedding already cached ("cached
              prompts": the sampler and the decode) and the text encoding of the distinct prompts ("text")
  FD          Frechet distance of pooled latent statistics to procedural reference latents (lrm evaluate's)
  alignment   colour / shape named by the caption, read from the decoded pixels (procedural captions)
  Vendi       per-prompt Vendi of pixel features over --samples-per-prompt seeds
through `lrm.evaluation.report.evaluate_run` (the students with their own few-step sampler at cfg 1). Each student's
starting point, the teacher's weights under the same k-step sampler (a 0-step `distill`), is measured
too ("untrained-k"; its time is the student's). Each student's fixed-seed log (metrics.jsonl) gives its
own FD at step 0 and after training on the store's prompts.
Writes benchmarks/results/distill.json and prints a table.

    OMP_NUM_THREADS=1 python benchmarks/distill.py --steps 200

--speed-only times the teacher (cfg 7.5 and 4) and the finished students already in RUNS, and nothing else (no
training, no quality metrics); it writes benchmarks/results/distill_speed.json unless --out is given:

    OMP_NUM_THREADS=1 python benchmarks/distill.py --speed-only --runs /tmp/bench-distill
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from lrm.configs import DistillJob
from lrm.evaluation.report import EvaluationConfig, evaluate_run, evaluation_prompts
from lrm.generators.embedded import embedded_teacher
from lrm.generators.runs import open_generator_run
from lrm.configs import DEFAULT_CFG
from lrm.generators.sampling import expand_requests, generate, generate_few_step
from lrm.io import atomic_write_json
from lrm.tuning.run import STUDENT_STEPS, distill

RESULTS = Path(__file__).resolve().parent / "results"
TIMING_KEYS = ("sampling_s", "sampling_cached_s", "text_s", "speedup", "speedup_range", "speedup_cached",
               "speedup_cached_range")  # what `timings` gives each model besides its rounds


class TimedSampler:
    """One model's end-to-end sampling call on fixed (prompts, seeds) with the run's own sampler (the teacher at
    `cfg`), its denoiser, text encoder and codec loaded once (loading is not timed)."""

    def __init__(self, run_path: Path, prompts: list[str], seeds: list[int], encoders: dict,
                 cfg: float | None = None):
        from lrm.codecs import from_settings
        from lrm.text import load as load_text

        self.run = open_generator_run(run_path)
        self.model = self.run.load()
        self.prompts, self.seeds, self.cfg = prompts, seeds, DEFAULT_CFG if cfg is None else cfg
        if self.model.text_encoder_id not in encoders:  # shared by the models of one encoder
            encoders[self.model.text_encoder_id] = load_text(self.model.text_encoder_id)
        self.encoder = encoders[self.model.text_encoder_id]
        self.options = {"latent_shape": self.run.latent_shape(), "codec": from_settings(self.model.codec_settings),
                        "text_encoder": self.encoder, "batch_size": 16}

    def sample(self) -> None:
        if self.run.student_steps is not None:
            generate_few_step(self.model, self.prompts, self.seeds, steps=self.run.student_steps, **self.options)
        else:
            generate(self.model, self.prompts, self.seeds, cfg=self.cfg, **self.options)

    def seconds(self, cached: bool) -> float:
        """One timed call: text encoding (unless `cached`: every prompt's embedding already in the encoder's
        cache), the sampler and the decode."""
        if not cached:
            self.encoder.clear_cache()
        else:
            self.encoder.token_rows(self.prompts)
        start = time.perf_counter()
        self.sample()
        return time.perf_counter() - start

    def text_seconds(self) -> float:
        """Encoding the distinct prompts alone, on a cleared cache."""
        self.encoder.clear_cache()
        start = time.perf_counter()
        self.encoder.token_rows(self.prompts)
        return time.perf_counter() - start


def timings(samplers: dict[str, TimedSampler], repeats: int) -> dict[str, dict]:
    """After one warm-up call of each sampler, `repeats` interleaved rounds that time every sampler once end to end
    ("sampling_s": prompt cache cleared first), once with every prompt's embedding cached ("sampling_cached_s": a
    training loop's fixed evaluation prompts, a prompt sampled again) and its text encoding alone ("text_s").
    Interleaving makes each round's ratios share the machine's state of the moment: the speed-ups over "teacher"
    are medians of per-round ratios, with their range over rounds. Times are medians over rounds."""
    for sampler in samplers.values():
        sampler.sample()
    rounds = {name: {"sampling_s": [], "sampling_cached_s": [], "text_s": []} for name in samplers}
    for _ in range(repeats):
        for name, sampler in samplers.items():
            rounds[name]["sampling_s"].append(sampler.seconds(cached=False))
            rounds[name]["sampling_cached_s"].append(sampler.seconds(cached=True))
            rounds[name]["text_s"].append(sampler.text_seconds())
    rows = {}
    for name, times in rounds.items():
        rows[name] = {key: statistics.median(values) for key, values in times.items()}
        for key, speedup in (("sampling_s", "speedup"), ("sampling_cached_s", "speedup_cached")):
            ratios = [t / m for t, m in zip(rounds["teacher"][key], times[key])]
            rows[name][speedup] = statistics.median(ratios)
            rows[name][f"{speedup}_range"] = [min(ratios), max(ratios)]
        rows[name]["rounds"] = times
    return rows


def quality(run_path: Path, out: Path, args, cfg: float | None = None) -> dict:
    config = EvaluationConfig(procedural=args.prompts, samples_per_prompt=args.samples_per_prompt,
                              rewards=("prompt-color",), cfg=cfg)
    m = evaluate_run(run_path, config, out)
    return {"sampler": m["sampler"], "steps": m["steps"], "cfg": m["cfg"], "frechet": m["frechet"]["value"],
            "alignment_color": m["alignment"]["color"], "alignment_shape": m["alignment"]["shape"],
            "vendi": m["diversity"]["mean"], "prompt_color": m["rewards"]["prompt-color"]["mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="distillation steps per student")
    parser.add_argument("--students", default="1,2,4", help="student step counts")
    parser.add_argument("--losses", default="vsd,cd")
    parser.add_argument("--batch-size", type=int, default=DistillJob.batch_size)
    parser.add_argument("--prompts", type=int, default=16, help="procedural prompts evaluated")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved timing rounds (each times every model once)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-distill"))
    parser.add_argument("--out", type=Path, default=None, help="default: results/distill.json "
                        "(results/distill_speed.json with --speed-only)")
    parser.add_argument("--speed-only", action="store_true",
                        help="only time the teacher and the finished students in --runs (no training, no quality)")
    args = parser.parse_args()
    args.out = args.out or RESULTS / ("distill_speed.json" if args.speed_only else "distill.json")
    student_steps = [s.strip() for s in args.students.split(",")]
    if not all(s in {str(k) for k in STUDENT_STEPS} for s in student_steps):
        parser.error(f"--students takes step counts among {STUDENT_STEPS}, comma-separated, got {args.students!r}")
    student_steps = [int(s) for s in student_steps]
    torch.set_num_threads(1)

    if args.speed_only:
        students = {k: args.runs / f"student-{k}" for k in student_steps}
        missing = [str(run) for run in students.values() if not (run / "model").is_dir()]
        if missing:
            parser.error(f"--speed-only times finished students, but {', '.join(missing)} has no model/; "
                         "train them first (the same command without --speed-only), or pass their --runs folder")
        try:
            teacher = embedded_teacher(train_if_missing=False)
        except FileNotFoundError as exc:
            parser.error(str(exc))
        models = {"teacher": (teacher, None), "teacher-cfg4": (teacher, 4.0),
                  **{f"student-{k}": (run, None) for k, run in students.items()}}
        prompts, seeds = timed_requests(teacher, args)
        rows = speed_rows(models, prompts, seeds, args.repeats)
        print(f"{'model':<13}{'time (s)':>10}{'speed-up':>10}{'range':>16}{'cached prompts (s)':>20}{'speed-up':>10}"
              f"{'text (s)':>10}")
        for name, r in rows.items():
            low, high = r["speedup_range"]
            print(f"{name:<13}{r['sampling_s']:>10.3f}{r['speedup']:>9.1f}x{f'{low:.1f}-{high:.1f}x':>16}"
                  f"{r['sampling_cached_s']:>20.3f}{r['speedup_cached']:>9.1f}x{r['text_s']:>10.3f}")
        write(args, rows, len(prompts))
        return

    teacher = embedded_teacher(progress=True)
    rows = {"teacher": quality(teacher, args.runs / "teacher-eval", args),
            "teacher-cfg4": quality(teacher, args.runs / "teacher-eval-cfg4", args, 4.0)}
    for k in student_steps:
        run = args.runs / f"student-{k}"
        job = DistillJob(losses=tuple(args.losses.split(",")), student_steps=k, steps=args.steps,
                         batch_size=args.batch_size, eval_every=max(1, args.steps // 4))
        distill(job, run, progress=False)  # a finished run is only re-exported
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r["split"] == "train"]
        logs = [r for r in records if r["split"] == "eval"]
        rows[f"student-{k}"] = {
            **quality(run, run / "eval", args),
            "distill_steps": len(train), "distill_s": round(sum(r["seconds"] for r in train), 1),  # steps only
            "log_frechet_first_last": [logs[0]["frechet"], logs[-1]["frechet"]] if logs else None}
        untrained = args.runs / f"untrained-{k}"  # the teacher's weights under the k-step sampler: the start
        distill(replace(job, steps=0, eval_every=0), untrained, progress=False)
        rows[f"untrained-{k}"] = {"run": str(untrained), **quality(untrained, untrained / "eval", args)}
    models = {"teacher": (teacher, None), "teacher-cfg4": (teacher, 4.0),
              **{f"student-{k}": (args.runs / f"student-{k}", None) for k in student_steps}}
    prompts, seeds = timed_requests(teacher, args)
    for name, timed in speed_rows(models, prompts, seeds, args.repeats).items():
        rows[name].update(timed)
    for k in student_steps:  # the untrained student: the same network under the same sampler, so the same times
        timed = rows[f"student-{k}"]
        rows[f"untrained-{k}"].update({key: timed[key] for key in TIMING_KEYS})

    print(f"{'model':<13}{'sampler':>16}{'time (s)':>10}{'speed-up':>10}{'FD':>9}{'colour':>8}{'shape':>7}"
          f"{'Vendi':>7}")
    for name, r in rows.items():
        sampler = f"{r['sampler']} {r['steps']} cfg {r['cfg']:g}"
        print(f"{name:<13}{sampler:>16}{r['sampling_s']:>10.3f}{r['speedup']:>9.1f}x{r['frechet']:>9.2f}"
              f"{r['alignment_color']:>8.3f}{r['alignment_shape']:>7.3f}{r['vendi']:>7.3f}")
    write(args, rows, len(prompts))


def timed_requests(teacher: Path, args) -> tuple[list[str], list[int]]:
    """The (prompt, seed) pairs every model is timed on: the prompts its quality is measured on (`lrm evaluate`'s
    held-out captions of the teacher's world) x --samples-per-prompt seeds."""
    prompts = evaluation_prompts(open_generator_run(teacher), args.prompts, 1)
    return expand_requests(prompts, args.samples_per_prompt)


def speed_rows(models: dict[str, tuple[Path, float | None]], prompts: list[str], seeds: list[int],
               repeats: int) -> dict[str, dict]:
    """name -> (run, teacher cfg or None) -> `timings` of each, with its run; "teacher" is the reference."""
    encoders: dict = {}
    samplers = {name: TimedSampler(run, prompts, seeds, encoders, cfg) for name, (run, cfg) in models.items()}
    measured = timings(samplers, repeats)
    return {name: {"run": str(run), **measured[name]} for name, (run, _) in models.items()}


def write(args, rows: dict, samples: int) -> None:
    result = {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "settings": vars(args) | {
                  "runs": str(args.runs), "out": str(args.out)},
              "samples": samples, "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                           "torch_threads": torch.get_num_threads()},
              "rows": rows}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
