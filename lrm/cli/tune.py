"""`lrm tune`: reward-tune a distilled student with one hook (lrm.tuning.tune): LRM fine-tuning through a fitted
or concurrently trained latent surrogate, DDPO-SF, or direct reward gradients.

Importing this module imports no torch: the library is imported inside the command, and the defaults below
restate lrm.tuning.tune.TuneConfig's (tests/test_hooks.py keeps them equal).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.cli.options import check_device, check_positive, parse_options, with_metric_options

METHODS = ("lrm", "ddpo", "direct")  # lrm.tuning.tune.METHODS
DEFAULTS = {"method": "lrm", "steps": 200, "batch_size": 8, "lr": 1e-5, "surrogate_lr": 1e-4, "eval_every": 20,
            "per_prompt": 4, "eval_prompts": 4, "seed": 0, "kl_weight": 0.0,
            "disagreement_weight": 1.0, "gradient_alignment": True, "noise_aware": False,
            "gradient_weight": 0.0, "gradient_checkpointing": True, "autocast": None,
            "prompt_history": 0}  # lrm.tuning.tune.TuneConfig


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)


def tune(
    reward: Annotated[str, typer.Argument(help="Reward name (`lrm rewards`) or your metric as path/to/file.py:fn.")],
    student: Annotated[Optional[Path], typer.Option(help="Distilled student run (its model/ records student_steps); "
                                                         "neither this nor --teacher: the cached embedded student "
                                                         "(of clips for a video reward).")]
    = None,
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher run to distil while tuning (with --losses).")] = None,
    losses: Annotated[Optional[str], typer.Option(help="With --teacher: distillation terms alongside the hook (vsd, "
                                                       "cd; default vsd).")] = None,
    student_steps: Annotated[Optional[int], typer.Option(min=1, help="With --teacher or the embedded student: the "
                                                                     "student's sampling steps, 1, 2 or 4 (default "
                                                                     "4).")] = None,
    store: Annotated[Optional[Path], typer.Option(help="Real latents for CD and the concurrent surrogate (default: "
                                                       "the store the start run's config.json records).")] = None,
    method: Annotated[str, typer.Option(help="lrm (latent surrogate), ddpo (DDPO-SF) or direct (ReFL / DRaFT-K).")]
    = DEFAULTS["method"],
    surrogate: Annotated[Optional[Path], typer.Option(help="Fitted surrogate folder (`lrm fit`) for --method lrm.")]
    = None,
    concurrent: Annotated[bool, typer.Option("--concurrent", help="--method lrm: train the surrogate alongside on the true reward "
                                                  "of the student's samples (warm-started from --surrogate).")] = False,
    noise_aware: Annotated[bool, typer.Option(
        "--noise-aware", help="--method lrm: the surrogate scores the student's samples noised to x_t, t ~ U{0..0.5 "
                              "T}, instead of x0 (a surrogate fitted with `lrm fit --noise-aware`; a concurrent one "
                              "from scratch is built noise-aware).")] = DEFAULTS["noise_aware"],
    gradient_weight: Annotated[float, typer.Option(
        min=0.0, help="--concurrent: the surrogate's updates also match the reward's latent gradient, weight of "
                      "1 - cos (a differentiable reward; 0: off).")] = DEFAULTS["gradient_weight"],
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Reward option KEY=VALUE; "
                                                                                "repeatable.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="For your own metric: image | text-image | video | "
                                                     "text-video.")] = None,
    input: Annotated[Optional[str], typer.Option(help="For your own metric: tensor or uint8.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(help="A prompt to tune on; repeatable.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file (default: procedural captions).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Generator updates.")] = DEFAULTS["steps"],
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per update.")] = DEFAULTS["batch_size"],
    lr: Annotated[float, typer.Option(callback=check_positive, help="The student's AdamW learning rate (> 0).")]
    = DEFAULTS["lr"],
    surrogate_lr: Annotated[float, typer.Option(callback=check_positive, help="The concurrent surrogate's learning "
                                                                             "rate (> 0).")]
    = DEFAULTS["surrogate_lr"],
    grad_steps: Annotated[Optional[int], typer.Option(min=1, help="ddpo: N steps with log-probs (default 2); "
                                                                  "direct: K steps with gradient (default 1).")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="direct on video: latent frames decoded per sample "
                                                              "(default: all).")] = None,
    prompt_history: Annotated[int, typer.Option(
        min=0, help="ddpo: normalise each reward by its prompt's last H rewards across updates once it has H "
                    "(ddpo-pytorch's per-prompt stat tracker, 16 there), by the batch's before; 0: within the "
                    "batch.")] = DEFAULTS["prompt_history"],
    eval_every: Annotated[int, typer.Option(min=1, help="Steps between evaluations at fixed seeds.")]
    = DEFAULTS["eval_every"],
    per_prompt: Annotated[int, typer.Option(min=2, help="Evaluation samples per prompt.")] = DEFAULTS["per_prompt"],
    seed: Annotated[int, typer.Option(help="Seed of the trainer's draws and the evaluation samples.")]
    = DEFAULTS["seed"],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/tune-REWARD-METHOD; your metric "
                                                     "file.py:fn as tune-file-fn-METHOD).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.", callback=check_device)] = "cpu",
    kl_weight: Annotated[float, typer.Option(min=0.0, help="Regulariser: weight of the KL-to-initial penalty "
                                                           "||eps_theta - eps_init||^2 (0: none).")]
    = DEFAULTS["kl_weight"],
    ensemble: Annotated[Optional[list[Path]], typer.Option(help="Regulariser, --method lrm: a fitted surrogate of "
                                                                "an ensemble; repeat for each (2 or more).")] = None,
    disagreement_weight: Annotated[float, typer.Option(min=0.0, help="With --ensemble: weight of the members' "
                                                                     "disagreement (std) penalty.")]
    = DEFAULTS["disagreement_weight"],
    no_gradient_checkpointing: Annotated[bool, typer.Option(
        "--no-gradient-checkpointing",
        help="ddpo, direct: keep the activations of the student calls with gradient instead of recomputing them in "
             "backward (checkpointing, the default, holds one step's at a time for one more forward each): faster, "
             "more memory.")] = not DEFAULTS["gradient_checkpointing"],
    no_gradient_alignment: Annotated[bool, typer.Option(
        "--no-gradient-alignment",
        help="Do not record the gradient alignment (with a surrogate and a differentiable reward, every evaluation "
             "records the cosine of the surrogate's and the gold reward's latent gradients: a backward pass of the "
             "pixel reward per evaluation sample, costly for large pixel rewards).")]
    = not DEFAULTS["gradient_alignment"],
    bf16: Annotated[bool, typer.Option(
        "--bf16", help="Mixed precision: the loss terms' forward passes under bf16 autocast (weights, optimisers, "
                       "samplers, the true reward and evaluations stay float32). For GPUs; a rerun may change it "
                       "(records.json keeps the last run's).")]
    = DEFAULTS["autocast"] == "bf16",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Reward-tune a distilled student with LRM fine-tuning, DDPO-SF or direct reward gradients.

    Starts from a distilled --student, from a --teacher whose copy is distilled (VSD, CD) while it is
    tuned (DOLLAR's VSD + LRM), or, with neither, from the embedded teacher's distilled student
    (cached; distilled first, a few minutes): for a video reward the embedded video teacher's (AVDM2's
    ADM + SDM-2D), else the image teacher's (VSD + CD). Writes OUT/model (the tuned student, a generator run),
    OUT/records.json (gold and proxy reward, the surrogate's fidelity and, for a differentiable reward,
    gradient alignment, diversity and distance from the start at fixed seeds, seconds per step, peak
    memory), OUT/checkpoints/step-N (at every evaluation: a rerun of the same command resumes there; the
    summary names the one with the best gold when that is not the last), sample grids OUT/before and
    OUT/after, and each evaluation's samples in OUT/evals/step-N. Regularisers: --kl-weight (KL-to-initial
    penalty), --ensemble (two or more fitted surrogates: their mean is tuned on, their disagreement penalised).
    Under torchrun the processes split each update's batch (--batch-size a multiple of their number) and average
    their gradients; rank 0 evaluates and writes (resume with the same number of processes; the embedded
    student must be distilled first, by one run without torchrun).

    Examples:
      lrm tune jpeg-compressibility --concurrent
      lrm tune temporal-flickering --concurrent
      lrm tune jpeg-compressibility --student runs/st --surrogate jpeg/model
      lrm tune prompt-color --student runs/st --surrogate pc/model --noise-aware
      lrm tune jpeg-compressibility --student runs/st --concurrent --steps 100
      lrm tune prompt-color --student runs/st --concurrent --gradient-weight 3
      lrm tune colorfulness --student runs/st --method direct
      lrm tune colorfulness --teacher runs/t --losses vsd,cd --concurrent
      lrm tune my_metric.py:score --student runs/st --method ddpo
      lrm tune my_metric.py:motion --kind video --input uint8 --method ddpo
      lrm tune colorfulness --student runs/st --surrogate c0 --kl-weight 0.1
      lrm tune colorfulness --student runs/st --ensemble c0 --ensemble c1
      torchrun --nproc_per_node 2 -m lrm.cli.app tune colorfulness --method ddpo
    """
    if student is not None and teacher is not None:
        raise typer.BadParameter("give --student RUN (a distilled student) or --teacher RUN (distil while tuning), "
                                 "not both")
    if method not in METHODS:
        raise typer.BadParameter(f"must be one of {', '.join(METHODS)}, got {method!r}", param_hint="--method")
    if losses is not None and teacher is None:
        raise typer.BadParameter("distillation terms alongside the hook need --teacher RUN; a --student (or the "
                                 "embedded student) is already distilled", param_hint="--losses")
    if student_steps is not None and student is not None:
        raise typer.BadParameter(f"--student {student} is already distilled and samples on its own grid; drop it",
                                 param_hint="--student-steps")
    if student_steps is not None and student_steps not in (1, 2, 4):  # lrm.tuning.run.STUDENT_STEPS, as lrm distill
        raise typer.BadParameter(f"must be 1, 2 or 4 (DOLLAR's student grids), got {student_steps}",
                                 param_hint="--student-steps")
    surrogate_flags = [flag for flag, given in (("--surrogate", surrogate is not None), ("--concurrent", concurrent),
                                                ("--noise-aware", noise_aware),
                                                ("--gradient-weight", gradient_weight > 0)) if given]
    if method != "lrm" and surrogate_flags:
        raise typer.BadParameter(f"{' and '.join(surrogate_flags)}: for --method lrm, not {method}")
    if prompt_history == 1:
        raise typer.BadParameter("must be 0 (off) or 2 or more: one reward has no spread to normalise by",
                                 param_hint="--prompt-history")
    if method != "ddpo" and prompt_history:
        raise typer.BadParameter(f"for --method ddpo (its per-prompt reward statistics), not {method}",
                                 param_hint="--prompt-history")
    if method == "lrm" and no_gradient_checkpointing:
        raise typer.BadParameter("for --method ddpo or direct, which backpropagate through several student calls; "
                                 "lrm backpropagates through one", param_hint="--no-gradient-checkpointing")
    if ensemble and (surrogate is not None or concurrent or method != "lrm" or len(ensemble) < 2):
        raise typer.BadParameter("give two or more fitted surrogates, with --method lrm and without --surrogate or "
                                 "--concurrent", param_hint="--ensemble")
    if method == "lrm" and surrogate is None and not concurrent and not ensemble:
        raise typer.BadParameter("--method lrm needs --surrogate DIR (fitted by `lrm fit`) or --concurrent")
    from lrm.cli.generate import _prompts

    texts = _prompts(prompt, prompts) if (prompt or prompts is not None) else None
    reward_options = with_metric_options(parse_options(option), [reward], kind, input)
    try:
        from lrm import distributed

        names = losses if losses is not None else "vsd"
        distill = tuple(n.strip() for n in names.split(",") if n.strip()) if teacher is not None else ()
        if teacher is not None and not distill:
            raise ValueError("--losses is empty; name the distillation terms, e.g. --losses vsd or vsd,cd")
        created_group = distributed.init_from_env(device)  # under torchrun: the ranks split each update's batch
        try:
            summary, out_dir, failure = _run(
                reward, reward_options, student or teacher, distill, student_steps or 4, store, method, surrogate,
                concurrent, texts, steps, batch_size, lr, surrogate_lr, grad_steps, frames, eval_every, per_prompt,
                seed, out, str(distributed.process_device(device)), kl_weight=kl_weight, ensemble=ensemble,
                disagreement_weight=disagreement_weight, gradient_alignment=not no_gradient_alignment,
                noise_aware=noise_aware, gradient_weight=gradient_weight,
                gradient_checkpointing=not no_gradient_checkpointing, autocast="bf16" if bf16 else None,
                prompt_history=prompt_history, progress=not quiet)
        finally:
            if created_group:
                distributed.shutdown()
    except USER_ERRORS as error:
        exit_with_message(error)
    if summary is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    typer.echo(summary, err=True)
    if failure is not None:  # every gold reward non-finite: nothing was tuned toward the reward
        exit_with_message(ValueError(failure))
    typer.echo(f"tuned student, records and grids in {out_dir}", err=True)


def default_out_name(reward: str, method: str) -> str:
    """The default output folder's name: tune-REWARD-METHOD, a metric path/to/file.py:fn as tune-file-fn-METHOD
    (two functions of one file, or a name with a dot such as hpsv2.1, keep folders of their own)."""
    from lrm.rewards.custom import is_reference

    if is_reference(reward):
        target, _, function = reward.rpartition(":")
        stem = Path(target).stem if target.endswith(".py") else target.rsplit(".", 1)[-1]
        return f"tune-{stem}-{function}-{method}"
    return f"tune-{reward.replace('/', '-')}-{method}"


def default_out(parent: Path, reward: str, method: str) -> Path:
    """parent / default_out_name, or the folder earlier versions named tune-<stem>-METHOD when it holds a run of
    this reward that the new name does not (so such a run still resumes)."""
    out, earlier = parent / default_out_name(reward, method), parent / f"tune-{Path(reward).stem}-{method}"
    if earlier == out or out.exists() or not (earlier / "config.json").is_file():
        return out
    try:
        recorded = json.loads((earlier / "config.json").read_text()).get("reward")
    except (OSError, ValueError, AttributeError):
        return out
    return earlier if recorded == reward else out


def _real_store(run, store_path, distill, concurrent):
    """The LatentStore of real latents, or None: --store, else the store the run's config.json records; needed by
    CD (an error without one), used by the concurrent surrogate when there is one."""
    from lrm.datasets.store import LatentStore

    wanted = "cd" in distill or concurrent
    if store_path is not None:
        if not wanted:
            raise ValueError("--store feeds CD (--losses cd) and the concurrent surrogate (--concurrent); add one of "
                             "them or drop --store")
        return LatentStore.open(store_path)
    recorded, found = run.setting("store"), run.store_path()
    if wanted and found is not None:
        return LatentStore.open(found)
    if "cd" in distill:
        where = f"its store {recorded} is gone" if recorded is not None else "its config.json records no store"
        raise ValueError(f"--losses cd: CD needs real latents and teacher {run.run_dir}: {where}; pass --store STORE "
                         "(latents of the teacher's codec and text encoder)")
    return None


def tuning_prompts(texts: list[str] | None, run) -> list[str]:
    """The prompts `lrm tune` tunes the GeneratorRun `run` on: `texts` (--prompt / --prompts), else the procedural
    captions of its frames and world."""
    from lrm.evaluation.report import TUNING_PROMPTS, procedural_prompts

    return texts or procedural_prompts(TUNING_PROMPTS, run.latent_shape()[0], world=run.procedural_world)


def prompts_digest(texts: list[str]) -> str:
    """The first 12 hex digits of the sha256 of the prompts, one per line: how config.json records them."""
    import hashlib

    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def weights_digest(model_dir: Path) -> str:
    """The first 12 hex digits of the sha256 of a generator run's model.safetensors (its weights' identity)."""
    from lrm.weights import sha256_of

    return sha256_of(model_dir / "model.safetensors")[:12]


def embedded_student_run(student_steps: int, device: str, video: bool = False) -> Path:
    """The cached embedded student's run, of clips for a video reward (video=True), else of images; distilled first
    (saying so) when missing; under torchrun a missing one is refused (the processes would race on its folder)."""
    from lrm import distributed
    from lrm.tuning.embedded import embedded_student, embedded_student_dir, is_cached, kind

    cached = is_cached(student_steps, video)
    if not cached and distributed.group_size() > 1:
        raise ValueError(f"the embedded {student_steps}-step {kind(video)} student is not distilled yet, and lrm tune "
                         "does not distil it under torchrun; run the same lrm tune once without torchrun (it "
                         "distils the student in a few minutes, then tunes), or pass --student RUN")
    if not cached:
        where = embedded_student_dir(student_steps, video)
        typer.echo(f"distilling the embedded {student_steps}-step {kind(video)} student into {where} (a few minutes, "
                   "once)", err=True)
    return embedded_student(student_steps, video=video, device=device)


def _run(reward_name, reward_options, run_path, distill, student_steps, store_path, method, surrogate_path,
         concurrent, texts, steps, batch_size, lr, surrogate_lr, grad_steps, frames, eval_every, per_prompt, seed,
         out, device, *, kl_weight=DEFAULTS["kl_weight"], ensemble=None,
         disagreement_weight=DEFAULTS["disagreement_weight"], gradient_alignment=DEFAULTS["gradient_alignment"],
         noise_aware=DEFAULTS["noise_aware"], gradient_weight=DEFAULTS["gradient_weight"],
         gradient_checkpointing=DEFAULTS["gradient_checkpointing"], autocast=DEFAULTS["autocast"],
         prompt_history=DEFAULTS["prompt_history"], progress=False):
    from dataclasses import asdict

    from lrm import distributed
    from lrm.codecs import from_settings
    from lrm.generators.io import save_denoiser
    from lrm.generators.runs import LRM, open_generator_run
    from lrm.generators.writing import save_samples
    from lrm.io import atomic_write_json
    from lrm.rewards import load as load_reward
    from lrm.text import load as load_text
    from lrm.tuning.lrm_ft import check_gradient_weight
    from lrm.tuning.report import write_tune_report
    from lrm.tuning.true_reward import TrueReward
    from lrm.tuning.tune import TuneConfig
    from lrm.tuning.tune import tune as run_tuning
    from lrm.tuning.tune_run import best_evaluation, checkpoint_steps

    def tune_config(student_steps: int) -> TuneConfig:  # checks the options
        return TuneConfig(method=method, concurrent=concurrent, steps=steps, student_steps=student_steps,
                          batch_size=batch_size, lr=lr, surrogate_lr=surrogate_lr, grad_steps=grad_steps,
                          frames=frames, distill=distill, eval_every=eval_every, per_prompt=per_prompt, seed=seed,
                          kl_weight=kl_weight, disagreement_weight=disagreement_weight,
                          gradient_alignment=gradient_alignment, noise_aware=noise_aware,
                          gradient_weight=gradient_weight, gradient_checkpointing=gradient_checkpointing,
                          autocast=autocast, prompt_history=prompt_history)

    distributed.local_slice(batch_size, 0, distributed.group_size())  # before any work: an equal share per process
    pixel_reward = load_reward(reward_name, **reward_options)
    from lrm.rewards.custom import is_reference

    if method == "direct" and is_reference(reward_name) and not pixel_reward.spec.differentiable:
        raise ValueError(f"direct reward gradients need a differentiable reward, and your metric {reward_name!r} is "
                         "not declared differentiable; if it computes its score from the pixel tensor with torch "
                         "operations (input tensor), declare it with -o differentiable=true, else tune it through a "
                         "latent surrogate (--concurrent) or with --method ddpo")
    check_gradient_weight(gradient_weight, concurrent, noise_aware, pixel_reward.spec)  # before a distillation
    embedded = run_path is None
    planned = Path(out) if out is not None else default_out(Path("runs"), reward_name, method) if embedded else None
    if planned is not None:  # before the embedded student distils (minutes)
        from lrm.config_diff import refuse_other_run_in

        refuse_other_run_in(planned, "tune")
    if embedded:  # the cached embedded student of clips or images, as the reward scores; distilled first when
        tune_config(student_steps)  # missing (every check before)
        if store_path is not None:
            _real_store(None, store_path, distill, concurrent)
        run_path = embedded_student_run(student_steps, device, video=pixel_reward.spec.is_video)
    run = open_generator_run(run_path)
    if run.kind != LRM:
        raise ValueError(f"{run_path} is a diffusers student exported by lrm; `lrm tune` tunes runs of lrm's DiT "
                         "(sample or evaluate this one with `lrm sample` / `lrm evaluate`)")
    if not distill and run.student_steps is None:
        raise ValueError(f"{run_path} is a teacher run (its model records no student_steps); pass it as --teacher "
                         "to distil while tuning, or a distilled student as --student")
    if distill and run.student_steps is not None:
        raise ValueError(f"{run_path} is a distilled student; pass it as --student")
    latent_shape = run.latent_shape()
    student_steps = run.student_steps or student_steps
    config = tune_config(student_steps)
    real = _real_store(run, store_path, distill, concurrent)
    model = run.load(map_location=device)
    if model.codec_settings is None or model.text_encoder_id is None:
        raise ValueError(f"{run_path} records no codec or text encoder, so its samples cannot be decoded and "
                         "scored; tune a run written by lrm")
    codec = from_settings(model.codec_settings).to(device)
    true_reward = TrueReward(codec, pixel_reward)
    surrogate = None
    if surrogate_path is not None:
        from lrm.models import LatentRewardModel

        surrogate = LatentRewardModel.from_pretrained(surrogate_path, codec_settings=model.codec_settings,
                                                      map_location=device)
    if ensemble:
        from lrm.models import LatentRewardModel

        surrogate = [LatentRewardModel.from_pretrained(path, codec_settings=model.codec_settings, map_location=device)
                     for path in ensemble]
    encoder = load_text(model.text_encoder_id)
    texts = tuning_prompts(texts, run)
    default_parent = Path("runs") if embedded else run.run_dir
    out_dir = Path(out) if out is not None else default_out(default_parent, reward_name, method)
    grid_settings = {"run": str(out_dir / "model"), "sampler": "few-step", "steps": student_steps, "cfg": 1.0}

    def write_evaluation(step, samples):  # every evaluation's samples, as they come (a study's grid at its peak)
        save_samples(samples, out_dir / "evals" / f"step-{step}", grid_settings)

    settings = {"reward": reward_name, "reward_options": reward_options, "from": str(run.run_dir),
                # the start's weights: a rerun after that run trained further would measure distances against them
                "start_weights": weights_digest(run.model_dir),
                "store": str(real.path) if real is not None else None,
                "surrogate": str(surrogate_path) if surrogate_path is not None else None,
                "ensemble": [str(path) for path in ensemble or ()],
                "prompts": prompts_digest(texts)}
    result = run_tuning(model, true_reward, texts, encoder, config, latent_shape=latent_shape, surrogate=surrogate,
                        store=real, run_dir=out_dir, settings=settings, on_evaluation=write_evaluation,
                        progress=progress)
    if not distributed.is_main():  # rank 0 holds the records and writes every file
        return None, out_dir, None
    extra = {"student_steps": student_steps, "latent_shape": list(latent_shape),
             "procedural_world": run.procedural_world,
             "tuned_with": {"reward": reward_name, "method": method, "distill": list(distill), "steps": steps,
                            "from": str(run_path)}}
    save_denoiser(result.student, out_dir / "model", extra=extra)
    term = result.term
    best = best_evaluation(result.records, true_reward.sign, out_dir)
    facts = {"reward": reward_name, "method": method, "concurrent": concurrent, "from": str(run_path),
             # the direction it was tuned in, its options' included (-o higher_is_better=false): what a study reads
             "higher_is_better": bool(true_reward.spec.higher_is_better),
             "surrogate": settings["surrogate"], "ensemble": settings["ensemble"],
             "config": asdict(config), "world_size": distributed.world_size(),
             "records": [asdict(r) for r in result.records],
             "seconds_per_step": result.seconds_per_step, "peak_memory_mb": result.peak_memory_mb,
             "peak_rss_mb": result.peak_rss_mb, "loaded_rss_mb": result.loaded_rss_mb,
             "added_rss_mb": result.added_rss_mb,
             "nonfinite_rewards": true_reward.nonfinite,
             "skipped_updates": sum(len(log.skipped) for log in result.logs),
             "surrogate_fidelity": getattr(term, "fidelity", None),
             "surrogate_gradient_cosine": getattr(term, "gradient_cosine", None),
             "losses": [log.losses for log in result.logs],
             "store": settings["store"], "real_rows": getattr(term, "real_rows", 0),
             "checkpoints": [f"checkpoints/step-{s:08d}" for s in checkpoint_steps(out_dir)],
             # the evaluation with the best gold and its student's checkpoint (null: none kept at that step)
             "best": None if best is None else {"step": best[0].step, "gold": best[0].gold,
                                                "checkpoint": None if best[1] is None else
                                                str(best[1].relative_to(out_dir))}}
    # strict JSON (NaN as null) that every parser reads; lrm's readers take null as NaN (lrm.studies.overopt.Curves)
    atomic_write_json(out_dir / "records.json", json.loads(json.dumps(facts, default=float)), strict=True)
    for name, samples in (("before", result.samples_before), ("after", result.samples_after)):
        save_samples(samples, out_dir / name, grid_settings)
    write_tune_report(out_dir)
    first, last = result.records[0], result.records[-1]
    proxy = (f", proxy {first.proxy:.4g} -> {last.proxy:.4g}"  # ddpo and direct have no surrogate
             if math.isfinite(first.proxy) or math.isfinite(last.proxy) else "")
    summary = (f"{true_reward.name}: gold {first.gold:.4g} -> {last.gold:.4g}{proxy}, "
               f"diversity {first.diversity:.3f} -> {last.diversity:.3f}, distance "
               f"{last.distance:.3g}; {result.seconds_per_step:.3g} s/step, "
               f"process peak RSS {result.peak_rss_mb:.0f} MB")
    if result.added_rss_mb is not None:
        summary += f" (loaded {result.loaded_rss_mb:.0f} MB, the steps added {result.added_rss_mb:.0f} MB)"
    if math.isfinite(first.gradient_alignment) or math.isfinite(last.gradient_alignment):
        ends = " -> ".join(f"{a:.3f}" if math.isfinite(a) else "-" for a in (first.gradient_alignment,
                                                                              last.gradient_alignment))
        summary += f"; gradient alignment {ends} (cosine of the surrogate's and the gold's latent gradients)"
    if gradient_weight > 0:
        summary += (f"; the concurrent surrogate's gradient cosine {term.gradient_cosine:.3f} (last updates, before "
                    "each)")
    if real is not None and concurrent:
        summary += f"; the surrogate trained on {facts['real_rows']} real latents of {real.path}"
    if best is not None and best[0].step != last.step and best[0].gold != last.gold:
        record, folder = best
        where = f"its student: {folder}" if folder is not None else "no checkpoint was kept at that update"
        summary += (f"\nbest gold {record.gold:.4g} at update {record.step}, not at the end ({last.gold:.4g}); "
                    f"{where}")
    evaluated = sum(r.nonfinite for r in result.records)
    notes = []
    if true_reward.nonfinite or evaluated:
        notes.append(f"non-finite rewards (NaN or Inf, left out): {true_reward.nonfinite} in training, {evaluated} in "
                     "the evaluations")
    if facts["skipped_updates"]:
        skipped = {}
        for log in result.logs:
            for role in log.skipped:
                skipped[role] = skipped.get(role, 0) + 1
        why = ("non-finite, nothing to learn from, or, for the student, a concurrent surrogate that has not yet taken "
               "a step on finite labels" if concurrent else "non-finite, or nothing to learn from")
        notes.append(f"updates skipped ({why}): {facts['skipped_updates']} "
                     f"({', '.join(f'{role} {count}' for role, count in skipped.items())})")
    if notes:
        summary += "\n" + "; ".join(notes)
    failure = None
    if all(r.nonfinite > 0 and not math.isfinite(r.gold) for r in result.records):
        training = f", and on {true_reward.nonfinite} training samples" if true_reward.nonfinite else ""
        failure = (f"reward {reward_name!r} was non-finite (NaN or Inf) on every sample the evaluations scored "
                   f"({evaluated}){training}, so nothing was tuned toward it; fix the metric (or its -o/--kind/--input "
                   f"options) and tune again (the run's outputs are in {out_dir})")
    return summary, out_dir, failure
