"""`lrm study`: over-optimisation studies of reward-tuning runs (lrm.studies).

Importing this module imports no numpy, torch or matplotlib: the library is imported inside the command, and the
defaults below restate lrm.studies.overopt.StudyConfig's (tests/test_studies.py keeps them equal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.cli.options import check_device, check_positive
from lrm.config_diff import read_run_config, refuse_run_folder
from lrm.io import read_json

# lrm.studies.overopt.StudyConfig's defaults
DEFAULTS = {"fidelity_threshold": 0.7, "fidelity_window": 1, "every": 1, "divergence_window": 2,
            "disagreement_factor": 1.5}
# lrm.studies.launch.LaunchConfig's defaults (tests/test_study_launch.py keeps them equal)
LAUNCH_DEFAULTS = {"regularisers": "none,kl,concurrent,ensemble", "seeds": "0,1,2", "kl_weight": 0.1,
                   "disagreement_weight": 1.0, "ensemble_size": 2, "fit_steps": None}
# TuneConfig values a finished run must share to be reused by --launch: those the launch's options set, the rest
# of `lrm tune`'s defaults the launch runs with, and the arm's concurrent flag (records.json "config")
COMPARED = ("steps", "eval_every", "batch_size", "per_prompt", "lr", "kl_weight", "disagreement_weight", "method",
            "surrogate_lr", "eval_prompts", "gradient_alignment", "noise_aware", "gradient_weight", "concurrent")
HELP = "Over-optimisation studies of reward-tuning runs: proxy vs gold, the gold peak, early stopping."


def register(app: typer.Typer) -> None:
    study_app = typer.Typer(help=HELP, no_args_is_help=True)
    study_app.command("overopt")(overopt)
    app.add_typer(study_app, name="study")


def overopt(
    reward: Annotated[Optional[str], typer.Argument(help="The reward the run was tuned toward; checked against "
                                                         "the run when given. With --launch: the reward to tune.")]
    = None,
    run: Annotated[Optional[Path], typer.Option(help="Tuning run folder (the --out of `lrm tune`, with "
                                                     "records.json) to analyse.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/study-overopt; with --launch, "
                                                     "required).")] = None,
    fidelity_threshold: Annotated[float, typer.Option(help="Rule (a): stop when the surrogate's fidelity "
                                                           "(Spearman vs gold) falls below this.")]
    = DEFAULTS["fidelity_threshold"],
    fidelity_window: Annotated[int, typer.Option(min=1, help="Rule (a): evaluations averaged into the running "
                                                            "fidelity.")] = DEFAULTS["fidelity_window"],
    every: Annotated[int, typer.Option(min=1, help="Rule (b): compare proxy and gold every N evaluations.")]
    = DEFAULTS["every"],
    divergence_window: Annotated[int, typer.Option(min=1, help="Rule (b): measurements over which the proxy "
                                                              "rises while the gold falls.")]
    = DEFAULTS["divergence_window"],
    distance_budget: Annotated[Optional[float], typer.Option(
        help="Rule (c): stop when d, the distance from the initial student, reaches this; d is sqrt of the KL-like "
             "eps distance (Gao et al.'s sqrt(KL)), or the relative parameter distance for runs that did not record "
             "it (metrics.json's distance_measure says which).")] = None,
    disagreement_factor: Annotated[float, typer.Option(help="Rule (d): stop when an "
                                                       "ensemble's disagreement reaches this times its start.")]
    = DEFAULTS["disagreement_factor"],
    eps_distance: Annotated[bool, typer.Option("--eps-distance", help="Also measure the KL-like distance of the "
                                               "tuned student from its start (loads both models).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (for --eps-distance and --launch).",
                                        callback=check_device)] = "cpu",
    launch: Annotated[bool, typer.Option("--launch", help="Run the tuning runs the study compares, one per "
                                         "regulariser and seed, then compare them.")] = False,
    student: Annotated[Optional[Path], typer.Option(help="--launch: the distilled student run to tune (default, "
                                                         "without --teacher: the cached embedded student, of clips for a video reward).")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="--launch: a teacher run to distil (VSD) while tuning.")]
    = None,
    regularisers: Annotated[str, typer.Option(help="--launch: arms among none,kl,concurrent,ensemble.")]
    = LAUNCH_DEFAULTS["regularisers"],
    seeds: Annotated[str, typer.Option(help="--launch: seeds, one run per seed and arm.")] = LAUNCH_DEFAULTS["seeds"],
    steps: Annotated[Optional[int], typer.Option(min=1, help="--launch: generator updates per run (default: "
                                                            "`lrm tune`'s).")] = None,
    eval_every: Annotated[Optional[int], typer.Option(min=1, help="--launch: steps between evaluations (default: "
                                                                  "`lrm tune`'s).")] = None,
    surrogate: Annotated[Optional[Path], typer.Option(help="--launch: fitted surrogate (`lrm fit`'s RUN/model) of "
                                                           "the none and kl arms, warm-starting the concurrent one "
                                                           "(default: fitted by the study, seed 0).")] = None,
    ensemble: Annotated[Optional[list[Path]], typer.Option(help="--launch: a fitted surrogate of the ensemble arm; "
                                                                "repeat (2 or more; default: fitted by the study, "
                                                                "seeds 0..--ensemble-size - 1).")] = None,
    ensemble_size: Annotated[int, typer.Option(min=2, help="--launch without --ensemble: members the study fits.")]
    = LAUNCH_DEFAULTS["ensemble_size"],
    fit_steps: Annotated[Optional[int], typer.Option(min=1, help="--launch: optimizer steps of each surrogate the "
                                                                 "study fits (default: `lrm fit`'s).")]
    = LAUNCH_DEFAULTS["fit_steps"],
    kl_weight: Annotated[float, typer.Option(help="--launch: the kl arm's penalty weight.")]
    = LAUNCH_DEFAULTS["kl_weight"],
    disagreement_weight: Annotated[float, typer.Option(help="--launch: the ensemble arm's disagreement weight.")]
    = LAUNCH_DEFAULTS["disagreement_weight"],
    prompt: Annotated[Optional[list[str]], typer.Option(help="--launch: a prompt to tune on; repeatable (default: "
                                                             "procedural captions).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="--launch: prompts per update.")] = None,
    per_prompt: Annotated[Optional[int], typer.Option(min=2, help="--launch: evaluation samples per prompt.")] = None,
    lr: Annotated[Optional[float], typer.Option(callback=check_positive,
                                                help="--launch: the student's learning rate (> 0).")] = None,
) -> None:
    """Analyse a tuning run for over-optimisation, or (--launch) run and compare one per regulariser.

    Reads RUN/records.json (gold and proxy reward, diversity and distance from the start at fixed seeds, written
    by `lrm tune`) and writes OUT/report.html and OUT/metrics.json: the gold peak, gold against the distance
    d = sqrt(eps distance) with Gao et al.'s fit d (alpha - beta log d), and four early-stopping rules
    (fidelity threshold, proxy/gold divergence, distance budget, ensemble disagreement) with the gold each
    keeps and the steps each saves.

    With --launch, runs `lrm tune REWARD` (method lrm) for each regulariser and seed into
    OUT/runs/<regulariser>-seed<S> (none: a frozen --surrogate; kl: plus the KL-to-initial penalty;
    concurrent: the surrogate trained alongside; ensemble: two or more --ensemble surrogates with a
    disagreement penalty), analyses each (its study-overopt/), and writes OUT/report.html and
    OUT/metrics.json comparing the regularisers side by side. A run folder that already holds
    records.json of the same steps, evaluations, seed and weights is reused. Surrogates not given are
    fitted first (`lrm fit REWARD --label-pixels decoded` on the generator's latent store) into
    OUT/surrogates/seed<S> and reused by later launches. Without --student or --teacher it tunes the
    cached embedded student, of clips for a video reward (distilled first when missing).

    Examples:
      lrm study overopt --run runs/student/tune-jpeg-compressibility-lrm
      lrm study overopt colorfulness --run runs/tuned --fidelity-threshold 0.8
      lrm study overopt colorfulness --launch --student runs/st --out study \\
          --steps 200 --seeds 0,1
      lrm study overopt colorfulness --launch --student runs/st --out study \\
          --surrogate c0/model --ensemble c0/model --ensemble c1/model
    """
    if distance_budget is not None and not distance_budget > 0:
        raise typer.BadParameter(f"must be positive, got {distance_budget}",
                                 param_hint="--distance-budget")
    if not disagreement_factor > 0:
        raise typer.BadParameter(f"must be positive, got {disagreement_factor}", param_hint="--disagreement-factor")
    if launch and run is not None:
        raise typer.BadParameter("--run analyses an existing run; --launch runs new ones: give one of them")
    if not launch and run is None:
        raise typer.BadParameter("give --run RUN (a tuning run to analyse) or --launch (run the regularisers and "
                                 "compare them)")
    if launch and student is not None and teacher is not None:
        raise typer.BadParameter("--launch tunes one generator: give --student RUN (a distilled student) or "
                                 "--teacher RUN (distil while tuning), not both")
    if launch and (reward is None or out is None):
        raise typer.BadParameter("--launch needs the REWARD to tune toward and --out DIR for the runs and the report")
    config = dict(fidelity_threshold=fidelity_threshold, fidelity_window=fidelity_window, every=every,
                  divergence_window=divergence_window, distance_budget=distance_budget,
                  disagreement_factor=disagreement_factor)
    try:
        if launch:
            tune_args = {"student": student, "teacher": teacher, "steps": steps, "eval_every": eval_every,
                         "prompt": prompt, "batch_size": batch_size, "per_prompt": per_prompt, "lr": lr,
                         "device": device}
            launch_options = dict(kl_weight=kl_weight, disagreement_weight=disagreement_weight,
                                  ensemble_size=ensemble_size, fit_steps=fit_steps)
            summary, out_dir = _launch(reward, out, config, regularisers, seeds, launch_options, surrogate,
                                       ensemble or [], tune_args)
        else:
            summary, out_dir = _run(reward, run, out, config, eps_distance, device)
    except USER_ERRORS as error:
        exit_with_message(error)
    typer.echo(summary, err=True)
    typer.echo(f"report.html and metrics.json in {out_dir}", err=True)


def _run(reward, run_path, out, study_options, eps_distance, device):
    from lrm.studies.overopt import StudyConfig, analyse
    from lrm.studies.report import write_study
    from lrm.studies.runs import read_run

    run = read_run(run_path, reward)
    out = out if out is not None else run.path / "study-overopt"
    refuse_run_folder(out, "the study")
    config = StudyConfig(**study_options, higher_is_better=run.higher_is_better)
    study = analyse(run.curves, config)
    end = None
    if eps_distance:
        from lrm.studies.distance import run_eps_distance

        start = run.facts.get("from")
        if not isinstance(start, str):
            raise ValueError(f"{run.path}/records.json names no starting run ('from'); leave out --eps-distance")
        end = run_eps_distance(run.path, start, device=device)
    out_dir = write_study(out, run, study, config, end)
    return study.verdict, out_dir


def _launch(reward, out, study_options, regularisers, seeds, launch_options, surrogate, ensemble, tune_args):
    """The surrogates not given (fitted or reused), each arm's `lrm tune` runs (sequentially), each run's study,
    then the comparison; every input checked before the first fit or run."""
    from lrm.cli import tune as tune_cli
    from lrm.studies import launch as plan
    from lrm.studies.compare import build_arm, write_comparison
    from lrm.studies.overopt import StudyConfig, analyse
    from lrm.studies.report import write_study
    from lrm.studies.runs import higher_is_better, read_run

    config = plan.LaunchConfig(plan.parse_names(regularisers), plan.parse_seeds(seeds), **launch_options)
    plan.check_inputs(surrogate, ensemble)
    refuse_run_folder(out, "the study")
    study_config = StudyConfig(**study_options, higher_is_better=higher_is_better(reward))
    if tune_args["student"] is None and tune_args["teacher"] is None:  # the embedded student, as `lrm tune`'s: of
        from lrm.rewards import load as load_reward  # clips for a video reward, else of images
        from lrm.tuning.embedded import student_job

        video = load_reward(reward).spec.is_video  # an unknown reward: one line, before the minutes of distilling
        student_steps = student_job(video=video).student_steps
        student = tune_cli.embedded_student_run(student_steps, tune_args["device"], video=video)
        tune_args = {**tune_args, "student": student}
    fit_seeds = plan.seeds_to_fit(config, surrogate, ensemble)
    if fit_seeds:
        from lrm.studies.surrogates import study_surrogates

        fitted = study_surrogates(reward, tune_args["student"] or tune_args["teacher"], out, fit_seeds,
                                  steps=config.fit_steps, device=tune_args["device"],
                                  say=lambda line: typer.echo(line, err=True))
        by_seed = dict(zip(fit_seeds, fitted))
        surrogate = surrogate if surrogate is not None else by_seed.get(0)
        ensemble = ensemble or [by_seed[s] for s in range(config.ensemble_size) if s in by_seed]
    given = {k: v for k, v in tune_args.items() if v is not None}  # the rest: `lrm tune`'s defaults
    generator = tune_args["student"] or tune_args["teacher"]
    from lrm.cli.generate import _prompts
    from lrm.generators.runs import open_generator_run

    start = open_generator_run(generator)
    texts = tune_cli.tuning_prompts(_prompts(tune_args["prompt"], None) if tune_args["prompt"] else None, start)
    settings = {"reward": reward, "reward_options": {}, "prompts": tune_cli.prompts_digest(texts),
                "start_weights": tune_cli.weights_digest(start.model_dir)}
    options = {r: plan.tune_options(r, config, surrogate, ensemble) for r in config.regularisers}
    reuse = {}  # every run folder checked before the first run: a run of other settings refused up front
    for regulariser in config.regularisers:
        for seed in config.seeds:
            folder = plan.run_folder(out, regulariser, seed)
            made = {**tune_cli.DEFAULTS, "concurrent": False, **given, **options[regulariser], "method": "lrm"}
            expected = {**{k: v for k, v in made.items() if k in COMPARED}, "seed": seed}
            arm = options[regulariser]
            inputs = {"from": str(generator), "surrogate": str(arm["surrogate"]) if arm.get("surrogate") else None,
                      "ensemble": [str(p) for p in arm.get("ensemble") or ()]}
            reuse[folder] = _reusable(folder, expected, inputs, settings)
    arms = []
    for regulariser in config.regularisers:
        runs = []
        for seed in config.seeds:
            folder = plan.run_folder(out, regulariser, seed)
            if not reuse[folder]:
                typer.echo(f"[{regulariser}, seed {seed}] lrm tune {reward} -> {folder}", err=True)
                tune_cli.tune(reward=reward, method="lrm", seed=seed, out=folder, **given, **options[regulariser])
            run = read_run(folder, reward)
            write_study(folder / "study-overopt", run, analyse(run.curves, study_config), study_config)
            runs.append(run)
        arms.append(build_arm(regulariser, runs, list(config.seeds), study_config))
    launch = {"student": str(tune_args["student"]) if tune_args["student"] else None,
              "teacher": str(tune_args["teacher"]) if tune_args["teacher"] else None,
              "surrogate": str(surrogate) if surrogate else None, "ensemble": [str(p) for p in ensemble],
              "fitted_seeds": fit_seeds,
              "kl_weight": config.kl_weight, "disagreement_weight": config.disagreement_weight,
              "tune_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}}
    out_dir = write_comparison(out, arms, study_config, launch)
    return json.loads((out_dir / "metrics.json").read_text())["verdict"], out_dir


FIXES = {"prompts": "tuned on other --prompt texts", "reward": "tuned toward another reward",
         "reward_options": "tuned with other reward options",
         "start_weights": "tuned from the generator's earlier weights: it has trained further since"}


def _reusable(folder: Path, expected: dict, inputs: dict, settings: dict | None = None) -> bool:
    """True when `folder` already holds the records of a run with the `expected` TuneConfig values, tuned from the
    same generator with the same surrogate and ensemble (`inputs`, as records.json names them) and with the same
    reward and prompts (`settings`, as its config.json records them: the prompts by their hash); a key older
    records lack is not compared. False when it holds none; another run is refused in one line naming the run,
    the setting that differs and the fix. A run whose report.html is missing (stopped after writing records.json)
    is not reusable: tuning it again resumes at its end and writes its grids and report."""
    records = folder / "records.json"
    if not records.is_file():
        return False
    facts = read_json(records, f"delete {folder} to tune that arm again")
    config = folder / "config.json"
    made = read_run_config(config) if config.is_file() else {}
    saved = {**facts.get("config", {}), **{k: facts[k] for k in inputs if k in facts},
             **{k: made[k] for k in settings or {} if k in made}}
    compared = {**{k: v for k, v in expected.items() if k in facts.get("config", {})},
                **{k: v for k, v in inputs.items() if k in facts},
                **{k: v for k, v in (settings or {}).items() if k in made}}
    for key, value in compared.items():
        if saved.get(key) != value:
            what = f"{key} (hash)" if key in ("prompts", "start_weights") else key
            hint = f" ({FIXES[key]})" if key in FIXES else ""
            raise ValueError(f"{folder} holds a tuning run with {what} {saved.get(key)!r}, not {value!r}{hint}; "
                             "remove it or choose another --out")
    # `lrm tune` writes records.json, then the before / after grids, then report.html: a run stopped in between
    # is tuned again, which resumes at its end and writes the rest
    return (folder / "report.html").is_file()
