"""Tuning efficiency of the reward hooks on the embedded default students (DOLLAR Tab. 17, Fig. 11-12).

Each reward's student is the cached embedded 4-step student that makes what it scores (lrm.tuning.embedded): the
video student (AVDM2's ADM + SDM-2D distillation of the embedded video teacher) for a video reward, the image
student (VSD + CD) otherwise; --student RUN tunes that one distilled student toward every reward instead (a video
reward is then not run on an image student, and the row says why). The embedded students are never distilled
here: a reward whose embedded student is missing is not run (its row names the `lrm tune` command that distils
it), and the script stops before any run when no reward has its student. The student
is tuned toward each reward with each method that can run it (METHOD_NOTES):
- "lrm": LRM fine-tuning through a surrogate trained concurrently from scratch on the true reward of the student's
  samples (Alg. 1 lines 15-17), one row per --surrogate-lr ("lrm-slr<lr>");
- "lrm-frozen": LRM fine-tuning through a surrogate fitted beforehand (`lrm fit REWARD --label-pixels decoded` on the
  student's latent store, lrm.studies.surrogates) and frozen while tuning (`lrm tune --surrogate RUN/model`);
- "lrm-warm": that fitted surrogate as the start of the concurrent one (`lrm tune --surrogate RUN/model
  --concurrent`, DOLLAR's pretrained-then-concurrent LRM), one row per --surrogate-lr ("lrm-warm-slr<lr>"; with
  --surrogate-gradient-weight W the concurrent surrogate's updates match the reward's gradient too, rows "-cgw<W>");
- "ddpo": DDPO-SF (Alg. 2); "direct": direct reward gradients (ReFL / DRaFT-K; differentiable rewards only).
Every method gets the same prompts (the CLI's 16 procedural captions of the student's world), steps, batch size and
student learning rate. Each run is one fresh subprocess (this script with --worker) writing
--runs/<reward>-<label>-s<seed>/ (a `lrm tune` run folder: checkpoints, resumable); a finished run folder is reused.
The surrogate of "lrm-frozen" and "lrm-warm" is fitted once per reward, in its own subprocess (--fit-worker), into
--runs/surrogates/<reward>/ (<reward>-gw<W> with --fit-gradient-weight W: `lrm fit --gradient-weight W`, for a
differentiable reward; reused when finished), and serves every seed and row of both methods; the first fit
of a reward writes the label column REWARD@decoded into the student's store (for the embedded student, the store in
the lrm cache), which later fits read instead of labelling again. Per run:
- the gold (true) reward gain at fixed prompts and seeds (lrm.tuning.monitor) every --eval-every steps, against
  the training wall time (sum of the trainer's step seconds, evaluations excluded) and against the student
  samples generated for training (batch size x steps);
- peak memory: the worker process's peak RSS (os.wait4 and the worker's own record; CUDA max allocated too with
  --device cuda), and its two parts (lrm.tuning.memory.TrainingMemory, Linux): the resident set before the first
  step ("loaded": torch, text encoder, codec, models, alike for every method) and what the training steps added
  to it at their peak ("added": gradients, optimiser states, activations, graphs: what the method costs);
- diversity after tuning (DOLLAR Eq. 27, Vendi of the decoded pixels per prompt);
- the best point of the mean gain curve and its update (a run that over-optimises rises, then falls), and beside
  the JSON, <out>_grids/<reward>.png: the first seed's monitor samples (its prompts and seeds) remade from its
  snapshots at the start, at that best point and at the end, one row per method.
Gains are in the reward's better direction (for a lower-is-better reward, how far it fell).
The surrogate fit's cost is its own row: seconds of labelling the store with the reward of its decoded latents (only
when the store lacked that column) plus fitting and validating, the fit process's peak RSS, and its held-out
fidelity. The fitted rows report their training time without the fit, with the whole fit added ("+ fit"), and with
the fit's share when it is amortised over the runs that read it ("+ fit / n").
Goal (issue 24): LRM-FT reaches DDPO-SF's final mean gain in <= 1/5 of DDPO-SF's wall time at <= 1/3 of its
peak memory (checked for every lrm row; for the fitted rows also with the fit's time and memory counted). The goal
lines also give the ratio of the memory the training steps added (not the goal's measure: the part of it that
depends on the method).

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

from lrm.io import atomic_write_bytes, atomic_write_json

REWARDS = ("jpeg-compressibility", "prompt-color", "temporal-flickering")  # non-differentiable, text-image, video
METHODS = ("lrm", "lrm-frozen", "lrm-warm", "ddpo", "direct")
FITTED = ("lrm-frozen", "lrm-warm")  # start from the surrogate fitted beforehand
CONCURRENT = ("lrm", "lrm-warm")  # train the surrogate alongside the student
METHOD_NOTES = {
    "lrm": "LRM-FT, surrogate trained concurrently from scratch (lrm tune --concurrent)",
    "lrm-frozen": "LRM-FT, surrogate fitted beforehand and frozen (lrm tune --surrogate RUN/model)",
    "lrm-warm": "LRM-FT, surrogate fitted beforehand, then trained concurrently (lrm tune --surrogate RUN/model "
                "--concurrent)",
    "ddpo": "DDPO-SF (Alg. 2) on the true reward",
    "direct": "direct reward gradients through the decoder (ReFL / DRaFT-K, K = 1)",
}
RESULT = "result.json"  # what a finished worker leaves in its run folder
PROCESS = "process.json"  # the parent's measurement of the worker process (peak RSS, wall)
SURROGATE_FITS = "surrogates"  # --runs/surrogates/<fit_name>/: the fitted surrogate of "lrm-frozen" and "lrm-warm"
FIT_RESULT = "fit_result.json"  # what a finished fit worker leaves in its folder


# ---------------------------------------------------------------- workers: one tuning run or one fit in this process


def student_run(reward: str, args) -> Path:
    """The student run tuned toward `reward`: --student for every reward, else the cached embedded student of clips
    for a video reward and of images otherwise (never distilled here: a FileNotFoundError naming the fix)."""
    if args.student:
        return Path(args.student)
    from lrm.rewards import load as load_reward
    from lrm.tuning.embedded import embedded_student

    video = load_reward(reward).spec.is_video
    return Path(embedded_student(args.student_steps, video=video, train_if_missing=False))


def tuning_prompts(run) -> list[str]:
    """The prompts a run of `run`'s student tunes on (the CLI's procedural captions); the monitor takes the first."""
    from lrm.evaluation.report import TUNING_PROMPTS, procedural_prompts

    return procedural_prompts(TUNING_PROMPTS, run.latent_shape()[0], world=run.procedural_world)


def worker(args) -> None:
    """Tune the student with one (reward, method, seed) in args.run_dir; write RESULT there. args.surrogate: the
    fitted surrogate (RUN/model) that "lrm-frozen" keeps frozen and "lrm-warm" starts its concurrent one from."""
    from dataclasses import asdict

    import torch

    from lrm.codecs import from_settings
    from lrm.generators.runs import open_generator_run
    from lrm.models import LatentRewardModel
    from lrm.rewards import load as load_reward
    from lrm.text import load as load_text
    from lrm.tuning.true_reward import TrueReward
    from lrm.tuning.tune import TuneConfig, tune

    if (args.method in FITTED) != (args.surrogate is not None):
        raise ValueError(f"method {args.method!r}: a fitted --surrogate is for {list(FITTED)} only, and they need one")
    torch.set_num_threads(worker_threads())
    run = open_generator_run(student_run(args.reward, args))
    model = run.load(map_location=args.device)
    latent_shape = run.latent_shape()
    codec = from_settings(model.codec_settings).to(args.device)
    true_reward = TrueReward(codec, load_reward(args.reward))
    encoder = load_text(model.text_encoder_id)
    prompts = tuning_prompts(run)
    surrogate = None if args.surrogate is None else LatentRewardModel.from_pretrained(
        args.surrogate, codec_settings=model.codec_settings, map_location=args.device)
    surrogate_lr = args.surrogate_lr[0] if args.method in CONCURRENT else TuneConfig.surrogate_lr  # only it trains
    config = TuneConfig(method="lrm" if args.method.startswith("lrm") else args.method,
                        concurrent=args.method in CONCURRENT, steps=args.steps, student_steps=run.student_steps,
                        batch_size=args.batch_size, lr=args.lr, surrogate_lr=surrogate_lr,
                        eval_every=args.eval_every, per_prompt=args.per_prompt, eval_prompts=args.eval_prompts,
                        seed=args.seed,
                        gradient_weight=args.surrogate_gradient_weight if args.method in CONCURRENT else 0.0,
                        prompt_history=args.prompt_history if args.method == "ddpo" else 0,
                        grad_steps=args.grad_steps if args.method == "ddpo" else None)
    settings = {"reward": args.reward, "from": str(run.run_dir), "prompts": prompts,
                **({} if surrogate is None else {"surrogate": args.surrogate})}
    start = time.perf_counter()
    result = tune(model, true_reward, prompts, encoder, config, latent_shape=latent_shape, surrogate=surrogate,
                  run_dir=Path(args.run_dir), settings=settings)
    seconds = np.cumsum([0.0] + [log.seconds for log in result.logs])  # (steps + 1,) training seconds after step s
    records = [asdict(r) for r in result.records]
    out = {"reward": args.reward, "method": args.method, "seed": args.seed, "config": asdict(config),
           "device": args.device, "torch_threads": torch.get_num_threads(),
           "student": str(run.run_dir), "surrogate": args.surrogate, "records": records,
           "train_seconds": [float(seconds[r["step"]]) for r in records],
           "samples": [r["step"] * args.batch_size for r in records],
           "seconds_per_step": result.seconds_per_step, "cuda_peak_mb": result.peak_memory_mb,
           "worker_peak_rss_mb": result.peak_rss_mb, "loaded_rss_mb": result.loaded_rss_mb,
           "added_rss_mb": result.added_rss_mb,
           "nonfinite_rewards": true_reward.nonfinite, "process_seconds": time.perf_counter() - start,
           "surrogate_fidelity": getattr(result.term, "fidelity", None),  # a concurrent surrogate's, last updates
           "surrogate_gradient_cosine": getattr(result.term, "gradient_cosine", None)}
    atomic_write_json(Path(args.run_dir) / RESULT, out)


def fit_worker(args) -> None:
    """Fit the surrogate of args.reward on the student's store into args.run_dir with lrm.studies.surrogates (the
    fitter of `lrm study overopt --launch`: `lrm fit REWARD --label-pixels decoded`); write FIT_RESULT there with
    its seconds (labelling included when this fit labelled the store), held-out fidelity and size. A folder that
    already holds a finished fit is reused, and its cost is then unknown (None)."""
    from lrm.configs import FitJob
    from lrm.datasets.store import LatentStore
    from lrm.studies.surrogates import LABEL_PIXELS, generator_store, study_surrogates, surrogate_folder

    student = student_run(args.reward, args)
    store = generator_store(student)
    column = FitJob(reward=args.reward, label_pixels=LABEL_PIXELS).label_name()
    labelled_before = column in LatentStore.open(store).labels
    fitted_before = (surrogate_folder(args.run_dir, args.fit_seed) / "report.html").is_file()
    start = time.perf_counter()
    [model] = study_surrogates(args.reward, student, args.run_dir, [args.fit_seed], steps=args.fit_steps,
                               gradient_weight=args.fit_gradient_weight, device=args.device,
                               say=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - start
    metrics = json.loads((model.parent / "metrics.json").read_text())  # the fit's report (lrm.reports)
    out = {"reward": args.reward, "student": str(student), "store": str(store), "rows": len(LatentStore.open(store)),
           "label": column, "labelled_store": not labelled_before, "seed": args.fit_seed,
           "fit_steps": args.fit_steps, "gradient_weight": args.fit_gradient_weight, "device": args.device,
           "gradient_cosine": metrics.get("gradient_cosine"), "surrogate": str(model), "preset": metrics["preset"],
           "parameters": metrics["parameters"], "steps": metrics["steps"], "stopped_early": metrics["stopped_early"],
           "spearman": metrics["surrogate"]["spearman"], "trust": metrics["trust"],
           "fit_s": None if fitted_before else seconds, "fit_train_s": metrics["fit_seconds"],
           "fitted_before": fitted_before}
    atomic_write_json(Path(args.run_dir) / FIT_RESULT, out)


# ---------------------------------------------------------------- parent: runs, table, figure


def no_student(reward: str, student: Path) -> str | None:
    """Why the student cannot be tuned toward `reward`: a video reward for an image --student, or None when it
    can."""
    from lrm.generators.runs import open_generator_run
    from lrm.rewards import load as load_reward

    if load_reward(reward).spec.is_video and open_generator_run(student).latent_shape()[0] == 1:
        return (f"{reward} scores videos and the student {student} makes images; leave out --student (a video "
                "reward then gets the embedded video student) or pass a video student")
    return None


def refusal(reward: str, method: str, surrogate_gradient_weight: float = 0.0) -> str | None:
    """Why `method` cannot tune toward `reward`, or None when it can."""
    from lrm.rewards import load as load_reward

    differentiable = load_reward(reward).spec.differentiable
    if method == "direct" and not differentiable:
        return f"{reward} is not differentiable (direct backpropagates the pixel reward)"
    if method in CONCURRENT and surrogate_gradient_weight and not differentiable:
        return f"{reward} is not differentiable (--surrogate-gradient-weight matches the reward's gradient)"
    return None


def no_fit(reward: str, student: Path, gradient_weight: float = 0.0) -> str | None:
    """Why no surrogate of `reward` can be fitted on the student's store (none recorded, a reward that cannot
    label it, or gradient matching of a reward with no gradient), or None when one can."""
    from lrm.rewards import load as load_reward
    from lrm.studies.surrogates import check_can_label, generator_store

    if gradient_weight > 0 and not load_reward(reward).spec.differentiable:
        return f"{reward} is not differentiable (--fit-gradient-weight matches the reward's gradient)"

    try:
        check_can_label(reward, generator_store(student))
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    return None


def variants(methods: list[str], surrogate_lrs: list[float]) -> list[tuple[str, str, float | None]]:
    """(label, method, surrogate lr): one "<method>-slr<lr>" per concurrent surrogate learning rate for the
    concurrent methods ("lrm-slr1e-4", "lrm-warm-slr1e-4"), the others once."""
    return [row for method in methods for row in
            ([(f"{method}-slr{lr:g}", method, lr) for lr in surrogate_lrs] if method in CONCURRENT
             else [(method, method, None)])]


def worker_threads() -> int:
    """torch threads of a tuning worker: OMP_NUM_THREADS, default 1."""
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def finished(run_dir: Path, method: str, seed: int, surrogate_lr: float | None, surrogate: str | None,
             student: Path, args) -> bool:
    """True when run_dir holds a finished run with these settings, on this device and thread count (its times and
    memory are compared with the other runs'; results of earlier versions of this script, which recorded neither,
    are reused as before; a run without a concurrent surrogate ignores the surrogate lr; a run of an older version
    of this script recorded no fitted surrogate)."""
    if not ((run_dir / RESULT).is_file() and (run_dir / PROCESS).is_file()):
        return False
    result = json.loads((run_dir / RESULT).read_text())
    saved = result["config"]
    wanted = {"method": "lrm" if method.startswith("lrm") else method, "concurrent": method in CONCURRENT,
              "seed": seed, "steps": args.steps, "eval_every": args.eval_every, "batch_size": args.batch_size,
              "lr": args.lr, "per_prompt": args.per_prompt, "eval_prompts": args.eval_prompts,
              "student_steps": args.student_steps}
    if surrogate_lr is not None:
        wanted["surrogate_lr"] = surrogate_lr
    weight = args.surrogate_gradient_weight if method in CONCURRENT else 0.0
    recorded = "device" in result  # results of earlier versions recorded neither: reused as before
    same_machine = not recorded or (result["device"], result["torch_threads"]) == (args.device, worker_threads())
    return (same_machine and all(saved[k] == v for k, v in wanted.items())
            and saved.get("gradient_weight", 0.0) == weight
            and saved.get("prompt_history", 0) == (args.prompt_history if method == "ddpo" else 0)
            and saved.get("grad_steps") == (args.grad_steps if method == "ddpo" else None)
            and result.get("surrogate") == surrogate and Path(result["student"]).resolve() == student.resolve())


def measure(command: list[str], what: str) -> dict:
    """Run `command` as a child process; its peak RSS (MiB, os.wait4) and wall seconds; exit on failure."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{what} failed (exit {code}); rerun to resume it")
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - start}


def common_flags(args) -> list[str]:
    return ["--student-steps", str(args.student_steps), "--device", args.device,
            *(["--student", str(args.student)] if args.student else [])]


def matched_label(label: str, method: str, gradient_weight: float, surrogate_gradient_weight: float = 0.0,
                  prompt_history: int = 0, grad_steps: int | None = None) -> str:
    """A row's label (its runs' folders too), with "-gw<weight>" for a fitted method whose fit matches gradients,
    "-cgw<weight>" for a concurrent method whose surrogate's updates do, and for DDPO-SF "-h<H>" with a per-prompt
    reward history and "-n<N>" with N steps carrying log-probs (not the default 2)."""
    if method in FITTED and gradient_weight:
        label = f"{label}-gw{gradient_weight:g}"
    if method in CONCURRENT and surrogate_gradient_weight:
        label = f"{label}-cgw{surrogate_gradient_weight:g}"
    if method == "ddpo" and prompt_history:
        label = f"{label}-h{prompt_history}"
    if method == "ddpo" and grad_steps is not None:
        label = f"{label}-n{grad_steps}"
    return label


def fit_name(reward: str, gradient_weight: float) -> str:
    """The fit's folder under --runs/surrogates: the reward, and "-gw<weight>" for a gradient-matched fit (so the
    runs tuned with it, which record its path, are told apart from those tuned with a plain fit)."""
    return reward if not gradient_weight else f"{reward}-gw{gradient_weight:g}"


def fit_surrogate(reward: str, student: Path, args, root: Path) -> dict:
    """The surrogate fit of `reward` shared by the fitted rows: FIT_RESULT and the fit process's peak RSS and wall,
    running the fit worker first unless --runs/surrogates/<fit_name> holds a finished fit of these settings."""
    folder = root / SURROGATE_FITS / fit_name(reward, args.fit_gradient_weight)
    result_path, process_path = folder / FIT_RESULT, folder / PROCESS
    if result_path.is_file() and process_path.is_file():
        saved = json.loads(result_path.read_text())
        if (saved["fit_steps"], saved["seed"], saved.get("gradient_weight", 0.0), Path(saved["student"]).resolve(),
                saved.get("device", args.device)) == (args.fit_steps, args.fit_seed, args.fit_gradient_weight, student.resolve(),
                                         args.device):
            print(f"  surrogate of {reward}: fitted earlier, reused ({saved['surrogate']})", flush=True)
            return {**saved, **json.loads(process_path.read_text())}
    command = [sys.executable, __file__, "--fit-worker", "--reward", reward, "--run-dir", str(folder),
               "--fit-seed", str(args.fit_seed), *common_flags(args),
               "--fit-gradient-weight", str(args.fit_gradient_weight),
               *(["--fit-steps", str(args.fit_steps)] if args.fit_steps is not None else [])]
    print(f"  surrogate of {reward}: fitting on the student's store into {folder}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    measured = measure(command, f"surrogate fit {folder}")
    atomic_write_json(process_path, measured)
    result = json.loads(result_path.read_text())
    spent = "cost unknown (fitted earlier)" if result["fit_s"] is None else f"{result['fit_s']:.0f} s"
    print(f"  surrogate of {reward}: {result['preset']}, {result['steps']} steps, held-out Spearman "
          f"{result['spearman']:.3f}, {spent}, peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
    return {**result, **measured}


def run_one(reward: str, label: str, method: str, surrogate_lr: float | None, seed: int, student: Path, args,
            root: Path, surrogate: str | None = None) -> dict:
    """The finished run's RESULT and PROCESS, running the worker first unless its folder already finished."""
    run_dir = root / f"{reward}-{label}-s{seed}"
    result_path, process_path = run_dir / RESULT, run_dir / PROCESS
    if finished(run_dir, method, seed, surrogate_lr, surrogate, student, args):
        print(f"  {run_dir.name}: finished earlier, reused", flush=True)
        return {**json.loads(result_path.read_text()), **json.loads(process_path.read_text())}
    command = [sys.executable, __file__, "--worker", "--reward", reward, "--method", method, "--seed", str(seed),
               "--run-dir", str(run_dir), "--steps", str(args.steps), "--eval-every", str(args.eval_every),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--surrogate-lr", str(surrogate_lr if surrogate_lr is not None else args.surrogate_lr[0]),
               "--per-prompt", str(args.per_prompt), "--eval-prompts", str(args.eval_prompts), *common_flags(args),
               "--surrogate-gradient-weight", str(args.surrogate_gradient_weight),
               "--prompt-history", str(args.prompt_history),
               *(["--grad-steps", str(args.grad_steps)] if args.grad_steps is not None else []),
               *(["--surrogate", surrogate] if surrogate is not None else [])]
    print(f"  {run_dir.name}: running ({args.steps} steps)", flush=True)
    measured = measure(command, f"run {run_dir}")
    result = json.loads(result_path.read_text())
    # the worker restarts the kernel's peak mark to isolate its steps, which can lower what os.wait4 reports
    measured["peak_rss_mb"] = max(measured["peak_rss_mb"], result.get("worker_peak_rss_mb") or 0.0)
    atomic_write_json(process_path, measured)
    gains = [r["gold"] - result["records"][0]["gold"] for r in result["records"]]
    print(f"  {run_dir.name}: gain {gains[-1]:+.4g} in {result['train_seconds'][-1]:.0f} s training, "
          f"{measured['wall_s']:.0f} s wall, peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
    return {**result, **measured}


def summarise(runs: list[dict], sign: float = 1.0) -> dict:
    """Mean curves and final numbers over the seeds of one (reward, method). Gains are in the reward's better
    direction (sign: +1 higher is better, -1 lower): a lower-is-better reward's gain is how far it fell."""
    gains = np.array([[sign * (r["gold"] - run["records"][0]["gold"]) for r in run["records"]]
                      for run in runs])  # (S, E)
    seconds = np.array([run["train_seconds"] for run in runs])  # (S, E)
    final, curve = gains[:, -1], gains.mean(0)
    # the mean curve's best point (a run that over-optimises peaks and falls); NaN evaluations left out
    peak = int(np.nanargmax(curve)) if np.isfinite(curve).any() else 0
    return {"seeds": [run["seed"] for run in runs], "steps": [r["step"] for r in runs[0]["records"]],
            "samples": runs[0]["samples"], "gain_curve_mean": curve.tolist(),
            "peak_gain_mean": float(curve[peak]), "peak_step": runs[0]["records"][peak]["step"],
            "gain_curve_min": gains.min(0).tolist(), "gain_curve_max": gains.max(0).tolist(),
            "seconds_curve_mean": seconds.mean(0).tolist(),
            "gold_start": float(np.mean([r["records"][0]["gold"] for r in runs])),
            "gain_mean": float(final.mean()), "gain_sd": float(final.std()), "gains": final.tolist(),
            "train_s_mean": float(seconds[:, -1].mean()), "wall_s_mean": float(np.mean([r["wall_s"] for r in runs])),
            "peak_rss_mb_mean": float(np.mean([r["peak_rss_mb"] for r in runs])),
            "peak_rss_mb_max": float(np.max([r["peak_rss_mb"] for r in runs])),
            # its parts (NaN: not Linux, or a run of an older lrm)
            "loaded_rss_mb_mean": all_mean([r.get("loaded_rss_mb") for r in runs]),
            "added_rss_mb_mean": all_mean([r.get("added_rss_mb") for r in runs]),
            "cuda_peak_mb": runs[0]["cuda_peak_mb"],
            "diversity_before": float(np.mean([r["records"][0]["diversity"] for r in runs])),
            "diversity_after": float(np.mean([r["records"][-1]["diversity"] for r in runs])),
            # the monitor's gradient alignment (NaN: no surrogate, a non-differentiable reward, a run of an older lrm)
            "gradient_alignment_before": nan_mean([r["records"][0].get("gradient_alignment") for r in runs]),
            "gradient_alignment_after": nan_mean([r["records"][-1].get("gradient_alignment") for r in runs]),
            # a concurrent surrogate's own running fidelity and gradient cosine (lrm.tuning.lrm_ft; NaN: none)
            "surrogate_fidelity": nan_mean([r.get("surrogate_fidelity") for r in runs]),
            "surrogate_gradient_cosine": nan_mean([r.get("surrogate_gradient_cosine") for r in runs]),
            "nonfinite_rewards": int(sum(r["nonfinite_rewards"] for r in runs))}


def nan_mean(values: list) -> float:
    """Mean of the finite numbers among `values` (None and NaN left out); NaN when there is none."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def all_mean(values: list) -> float:
    """Mean of `values` when every one is a finite number, else NaN (no mean over a subset of the seeds)."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else float("nan")


def with_fit(summary: dict, fit: dict, shared_by: int) -> dict:
    """A fitted row's summary with the fit's cost: its training time with the whole fit added ("+ fit"), and with
    the fit amortised over the `shared_by` runs that read it ("+ fit / n"); None where the fit's cost is unknown."""
    fit_s = fit["fit_s"]
    return {**summary, "surrogate": fit["surrogate"], "fit_s": fit_s, "fit_shared_by": shared_by,
            "fit_peak_rss_mb": fit["peak_rss_mb"],
            "train_s_with_fit": None if fit_s is None else summary["train_s_mean"] + fit_s,
            "train_s_with_fit_share": None if fit_s is None else summary["train_s_mean"] + fit_s / shared_by}


def goal(lrm: dict, ddpo: dict) -> dict:
    """Issue 24's goal: LRM-FT's mean curve reaches DDPO-SF's final mean gain within 1/5 of DDPO-SF's training
    time, at <= 1/3 of its peak memory; for a row with a fitted surrogate also with the whole fit's seconds added
    and the larger of the fit's and the tuning's peak RSS."""
    target = ddpo["gain_mean"]
    curve = np.array(lrm["gain_curve_mean"])
    reached = np.flatnonzero(curve >= target)
    seconds = lrm["seconds_curve_mean"][reached[0]] if reached.size else None
    time_ratio = seconds / ddpo["train_s_mean"] if seconds is not None else None
    memory = "cuda_peak_mb" if ddpo["cuda_peak_mb"] else "peak_rss_mb_mean"
    memory_ratio = lrm[memory] / ddpo[memory]
    lrm_added, ddpo_added = lrm.get("added_rss_mb_mean", np.nan), ddpo.get("added_rss_mb_mean", np.nan)
    added_ratio = lrm_added / ddpo_added if ddpo_added > 0 else np.nan  # NaN also when either is NaN
    # a DDPO-SF run that gained nothing sets no bar: the time goal is then undecided (None), not met
    out = {"ddpo_final_gain": target, "ddpo_gain_positive": target > 0, "lrm_seconds_to_ddpo_gain": seconds,
           "lrm_samples_to_ddpo_gain": lrm["samples"][reached[0]] if reached.size else None,
           "time_ratio": time_ratio, "memory": memory, "memory_ratio": memory_ratio,
           "time_goal_met": (time_ratio is not None and time_ratio <= 0.2) if target > 0 else None,
           "memory_goal_met": memory_ratio <= 1 / 3,
           # not the goal's measure: the ratio of what the training steps added to the loaded process (CPU)
           "added_memory_ratio": float(added_ratio) if np.isfinite(added_ratio) else None}
    if "fit_s" in lrm:
        fit_s = lrm["fit_s"]
        with_fit_ratio = None if seconds is None or fit_s is None else (seconds + fit_s) / ddpo["train_s_mean"]
        # the fit's CUDA peak is not measured: with --device cuda the memory ratio with the fit stays unknown
        # ... and a reused fit (fit_s None) measured no fit: its process's RSS is not the fit's
        fit_memory = (max(lrm[memory], lrm["fit_peak_rss_mb"]) / ddpo[memory]) \
            if memory == "peak_rss_mb_mean" and fit_s is not None else None
        out.update({"time_ratio_with_fit": with_fit_ratio,
                    "time_goal_met_with_fit": (with_fit_ratio is not None and with_fit_ratio <= 0.2)
                    if target > 0 and fit_s is not None else None,
                    "memory_ratio_with_fit": fit_memory,
                    "memory_goal_met_with_fit": None if fit_memory is None else fit_memory <= 1 / 3})
    return out


def snapshot_grid(run_dir: Path, step: int, prompts: list[str], per_prompt: int, seed: int):
    """(PIL image) the student's samples from the run's snapshot at `step`, the monitor's (lrm sample's grid: rows
    are prompts, columns seeds seed..seed + per_prompt - 1; clips show their middle frame); None when the run kept
    no snapshot there."""
    import io

    from PIL import Image

    from lrm.generators.runs import open_generator_run, sample_run
    from lrm.generators.sampling import expand_requests
    from lrm.generators.writing import grid_png

    snapshot = run_dir / "checkpoints" / f"step-{step:08d}"
    if not snapshot.is_dir():
        return None
    run = open_generator_run(snapshot)
    model = run.load()
    requested, seed_list = expand_requests(prompts, per_prompt, seed)
    samples, _ = sample_run(run, model, requested, seed_list, run.latent_shape())
    return Image.open(io.BytesIO(grid_png(samples.pixels, samples.prompts, samples.seeds))).convert("RGB")


def sample_grids(reward: str, methods: dict, root: Path, prompts: int, per_prompt: int) -> bytes:
    """PNG: for each method (a row), its first seed's monitor samples (`prompts` prompts x `per_prompt` seeds) at
    update 0, at the mean curve's best point and at the last update, each grid titled with its update and that
    seed's gold gain there (a snapshot the run no longer holds: a blank tile saying so)."""
    import io

    from PIL import Image, ImageDraw

    from lrm.generators.runs import open_generator_run

    rows = []
    for label, summary in methods.items():
        run_dir = root / f"{reward}-{label}-s{summary['seeds'][0]}"
        result = json.loads((run_dir / RESULT).read_text())
        records, gold = result["records"], {r["step"]: r["gold"] for r in result["records"]}
        words = tuning_prompts(open_generator_run(result["student"]))[:prompts]  # the monitor's
        tiles = []
        for name, step in (("start", 0), ("best mean gain", summary["peak_step"]), ("end", records[-1]["step"])):
            grid = snapshot_grid(run_dir, step, words, per_prompt, result["seed"])
            title = f"{label}, {name}: update {step}, gold gain {gold[step] - gold[0]:+.3g} (seed {result['seed']})"
            if grid is None:
                grid, title = Image.new("RGB", (256, 64), "white"), f"{title}: no snapshot kept"
            tile = Image.new("RGB", (grid.width, grid.height + 18), "white")
            tile.paste(grid, (0, 18))
            ImageDraw.Draw(tile).text((4, 3), title, fill="black")
            tiles.append(tile)
        row = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
        for i, tile in enumerate(tiles):
            row.paste(tile, (sum(t.width for t in tiles[:i]), 0))
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, sum(r.height for r in rows[:i])))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def plot(rows: dict, units: dict, path: Path) -> None:
    """Gold gain against training seconds and against generated samples, one line per method, seed min-max
    shaded; a fitted row also dashed against training seconds after its whole surrogate fit; one row of panels
    per reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = list(rows)
    fig, axes = plt.subplots(len(rewards), 2, figsize=(10, 3.6 * len(rewards)), squeeze=False)
    for row, reward in zip(axes, rewards):
        for method, summary in rows[reward].items():
            for ax, x in zip(row, (summary["seconds_curve_mean"], summary["samples"])):
                line, = ax.plot(x, summary["gain_curve_mean"], marker="o", ms=3, label=method)
                ax.fill_between(x, summary["gain_curve_min"], summary["gain_curve_max"], alpha=0.2)
            if summary.get("fit_s") is not None:
                row[0].plot(np.array(summary["seconds_curve_mean"]) + summary["fit_s"], summary["gain_curve_mean"],
                            ls="--", color=line.get_color(), label=f"{method} + fit")
        label = f"gold gain ({units[reward]})" if units[reward] else "gold gain"
        row[0].set(xlabel="training wall time (s)", ylabel=label, title=f"{reward} vs time")
        row[1].set(xlabel="student samples generated", ylabel=label, title=f"{reward} vs samples")
        for ax in row:
            ax.axhline(0, color="grey", lw=0.5)
            ax.legend(fontsize=7)
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
                        help="the concurrent surrogate's AdamW (lrm tune's default 1e-4); one row per value for "
                             "lrm and lrm-warm")
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="optimizer steps of the surrogate fit of lrm-frozen / lrm-warm (default: lrm fit's)")
    parser.add_argument("--fit-seed", type=int, default=0, help="seed of that fit (one fit per reward)")
    parser.add_argument("--fit-gradient-weight", type=float, default=0.0,
                        help="that fit's `lrm fit --gradient-weight` (0: off; differentiable rewards only)")
    parser.add_argument("--surrogate-gradient-weight", type=float, default=0.0,
                        help="lrm and lrm-warm: the concurrent surrogate's `lrm tune --gradient-weight` (0: off; "
                             "differentiable rewards only); rows labelled -cgw<W>")
    parser.add_argument("--grad-steps", type=int, default=None,
                        help="ddpo: `lrm tune --grad-steps` N, the sampling steps with log-probs (default: 2, DOLLAR's)")
    parser.add_argument("--prompt-history", type=int, default=0,
                        help="ddpo: `lrm tune --prompt-history` (ddpo-pytorch's per-prompt stat tracker; 0: off)")
    parser.add_argument("--per-prompt", type=int, default=4, help="monitor samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=4, help="monitor prompts")
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--student", default=None, help="a distilled student run tuned toward every reward "
                        "(default: the embedded video student for a video reward, the embedded image student "
                        "otherwise)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/tune_efficiency.json",
                        help="JSON; the figure goes beside it (.png)")
    parser.add_argument("--runs", default="runs/tune_efficiency",
                        help="run folders (checkpoints, ~10 MB per evaluation; a finished one is reused) and "
                             "surrogates/<reward> (the fitted surrogates)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fit-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reward", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--surrogate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prompt_history < 0 or args.prompt_history == 1:
        parser.error(f"--prompt-history must be 0 (off) or 2 or more, got {args.prompt_history}")
    return args


def cosines(summary: dict) -> str:
    """The gradient alignment before -> after of a row, or "-" where none was recorded."""
    ends = [summary.get(f"gradient_alignment_{when}") for when in ("before", "after")]
    if not any(isinstance(v, float) and np.isfinite(v) for v in ends):
        return "-"
    return " -> ".join(f"{v:+.3f}" if isinstance(v, float) and np.isfinite(v) else "-" for v in ends)


def parts(summary: dict) -> str:
    """"loaded + added" of a row's resident set (MiB), or "-" where not measured."""
    loaded, added = summary.get("loaded_rss_mb_mean"), summary.get("added_rss_mb_mean")
    if not all(isinstance(v, float) and np.isfinite(v) for v in (loaded, added)):
        return "-"
    return f"{loaded:.0f} + {added:.0f}"


def table(rows: dict, skipped: list[dict], fits: dict, goals: dict, seeds: int) -> str:
    """The markdown tables of the measured rows, the rows not run, the surrogate fits, and the goal lines."""
    lines = [f"| reward | method | gold start | gold gain (mean ± sd, {seeds} seeds) | best mean gain (update) | "
             "training s | training s + fit / + fit per run | samples | peak RSS MB | loaded + added by the steps MB | "
             "Vendi before -> after | gradient cosine before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for reward, methods in rows.items():
        for method, s in methods.items():
            if "fit_s" not in s:
                plus = "no fit"
            elif s["fit_s"] is None:
                plus = "fit cost unknown (fitted earlier)"
            else:
                plus = f"{s['train_s_with_fit']:.0f} / {s['train_s_with_fit_share']:.0f} (n = {s['fit_shared_by']})"
            lines.append(f"| {reward} | {method} | {s['gold_start']:.4g} | {s['gain_mean']:+.3g} ± {s['gain_sd']:.2g} "
                         f"| {s['peak_gain_mean']:+.3g} ({s['peak_step']}) | {s['train_s_mean']:.0f} | {plus} | "
                         f"{s['samples'][-1]} | {s['peak_rss_mb_mean']:.0f} | {parts(s)} | "
                         f"{s['diversity_before']:.3f} -> {s['diversity_after']:.3f} | {cosines(s)} |")
    for item in skipped:
        lines.append(f"| {item['reward']} | {item['method']} | not run: {item['reason']} |")
    if fits:
        lines += ["", "| reward | surrogate fit (lrm fit --label-pixels decoded) | store rows | labelled the store | "
                  "fit s (labelling + fit) | of which training s | process wall s | peak RSS MB | "
                  "held-out Spearman | shared by runs |", "|---|---|---|---|---|---|---|---|---|---|"]
        for reward, f in fits.items():
            fit_s = "unknown (fitted earlier)" if f["fit_s"] is None else f"{f['fit_s']:.1f}"
            cosine = "n/a" if f.get("gradient_cosine") is None else f"{f['gradient_cosine']:.3f}"
            matched = "" if not f.get("gradient_weight") else \
                f", gradient weight {f['gradient_weight']:g} (held-out gradient cosine {cosine})"
            lines.append(f"| {reward} | {f['preset']} ({f['parameters']} parameters), {f['steps']} steps{matched} | "
                         f"{f['rows']} | {f['labelled_store']} | {fit_s} | {f['fit_train_s']:.1f} | "
                         f"{f['wall_s']:.1f} | {f['peak_rss_mb']:.0f} | {f['spearman']:.3f} | {f['shared_by']} |")
    for name, g in goals.items():
        when = "never" if g["lrm_seconds_to_ddpo_gain"] is None else f"{g['lrm_seconds_to_ddpo_gain']:.0f} s"
        ratio = g["time_ratio"] if g["time_ratio"] is None else round(g["time_ratio"], 3)
        met = "undecided, DDPO-SF gained nothing" if g["time_goal_met"] is None else g["time_goal_met"]
        line = (f"goal {name}: DDPO-SF final gain {g['ddpo_final_gain']:+.3g}; LRM-FT reaches it at {when} "
                f"(time ratio {ratio}, goal <= 0.2: {met}); memory ratio {g['memory_ratio']:.2f} "
                f"(goal <= 0.33: {g['memory_goal_met']})")
        if g.get("added_memory_ratio") is not None:
            line += f", of what the training steps added {g['added_memory_ratio']:.2f}"
        if "time_ratio_with_fit" in g:
            fit_ratio = g["time_ratio_with_fit"] if g["time_ratio_with_fit"] is None else \
                round(g["time_ratio_with_fit"], 3)
            fit_memory = g["memory_ratio_with_fit"] if g["memory_ratio_with_fit"] is None else \
                round(g["memory_ratio_with_fit"], 2)
            line += (f"; with the whole fit: time ratio {fit_ratio} (goal met: {g['time_goal_met_with_fit']}), "
                     f"memory ratio {fit_memory} (goal met: {g['memory_goal_met_with_fit']})")
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    if args.fit_worker:
        try:
            fit_worker(args)
        except (ValueError, FileNotFoundError) as error:  # lrm.studies.surrogates' one-line refusals
            raise SystemExit(f"error: {error}") from None
        return
    from lrm.rewards import load as load_reward

    out = Path(args.out)
    root = Path(args.runs)
    students, missing = {}, {}  # every reward's student before the first run
    for reward in args.rewards:
        try:
            students[reward] = student_run(reward, args)
        except FileNotFoundError as error:  # its embedded student is not distilled yet: that reward is not run
            missing[reward] = str(error)
    if not students:
        raise SystemExit(f"error: {next(iter(missing.values()))}")
    rows, skipped, fits = {}, [], {}
    for reward in args.rewards:
        if reward in missing:
            skipped.append({"reward": reward, "method": "all", "reason": missing[reward]})
            print(f"{reward}: not run: {missing[reward]}", flush=True)
            continue
        student = students[reward]
        why = no_student(reward, student)
        if why is not None:
            skipped.append({"reward": reward, "method": "all", "reason": why})
            print(f"{reward}: not run: {why}", flush=True)
            continue
        chosen = [(matched_label(label, method, args.fit_gradient_weight, args.surrogate_gradient_weight,
                                 args.prompt_history, args.grad_steps), method, lr)
                  for label, method, lr in variants(args.methods, args.surrogate_lr)]
        fitted = [label for label, method, _ in chosen if method in FITTED]
        fit_refused = no_fit(reward, student, args.fit_gradient_weight) if fitted else None
        for label, method, surrogate_lr in chosen:
            why = (refusal(reward, method, args.surrogate_gradient_weight)
                   or (fit_refused if method in FITTED else None))
            if why is not None:
                skipped.append({"reward": reward, "method": label, "reason": why})
                print(f"{reward} / {label}: not run: {why}", flush=True)
                continue
            if method in FITTED and reward not in fits:
                fits[reward] = {**fit_surrogate(reward, student, args, root),
                                "shared_by": len(fitted) * len(args.seeds)}
            surrogate = fits[reward]["surrogate"] if method in FITTED else None
            print(f"{reward} / {label}: seeds {args.seeds}", flush=True)
            runs = [run_one(reward, label, method, surrogate_lr, seed, student, args, root, surrogate)
                    for seed in args.seeds]
            summary = summarise(runs, 1.0 if load_reward(reward).spec.higher_is_better else -1.0)
            if method in FITTED:
                summary = with_fit(summary, fits[reward], fits[reward]["shared_by"])
            rows.setdefault(reward, {})[label] = summary
    ddpo = matched_label("ddpo", "ddpo", 0.0, 0.0, args.prompt_history, args.grad_steps)  # LRM-FT is held to it
    goals = {f"{reward} / {label}": goal(methods[label], methods[ddpo]) for reward, methods in rows.items()
             if ddpo in methods for label in methods if label.startswith("lrm")}
    print("\n" + table(rows, skipped, fits, goals, len(args.seeds)))
    hidden = ("worker", "fit_worker", "reward", "method", "seed", "run_dir", "runs", "surrogate")
    settings = {k: v for k, v in vars(args).items() if k not in hidden}
    command = "python benchmarks/tune_efficiency.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in settings.items()
        if v is not None)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"command": command, "settings": settings,  # NaN written as null
                            "students": {reward: str(path) for reward, path in students.items()},
                            "methods": {m: METHOD_NOTES[m] for m in args.methods}, "rows": rows,
                            "surrogate_fits": fits, "not_run": skipped, "goal": goals}, strict=True)
    if rows:
        plot(rows, {reward: load_reward(reward).spec.units for reward in rows}, out.with_suffix(".png"))
        grids = out.with_name(f"{out.stem}_grids")
        for reward, methods in rows.items():
            atomic_write_bytes(grids / f"{reward}.png",
                               sample_grids(reward, methods, root, args.eval_prompts, args.per_prompt))
    print(f"wrote {out}" + (f", {out.with_suffix('.png')} and {out.stem}_grids/" if rows else ""))


if __name__ == "__main__":
    main()
