"""`lrm study`: over-optimisation studies of reward-tuning runs (lrm.studies).

Importing this module imports no numpy, torch or matplotlib: the library is imported inside the command, and the
defaults below restate lrm.studies.overopt.StudyConfig's (tests/test_studies.py keeps them equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.cli.options import check_device

# lrm.studies.overopt.StudyConfig's defaults
DEFAULTS = {"fidelity_threshold": 0.7, "fidelity_window": 1, "every": 1, "divergence_window": 2}
HELP = "Over-optimisation studies of reward-tuning runs: proxy vs gold, the gold peak, early stopping."


def register(app: typer.Typer) -> None:
    study_app = typer.Typer(help=HELP, no_args_is_help=True)
    study_app.command("overopt")(overopt)
    app.add_typer(study_app, name="study")


def overopt(
    run: Annotated[Path, typer.Option(help="Tuning run folder (the --out of `lrm tune`, with records.json).")],
    reward: Annotated[Optional[str], typer.Argument(help="The reward the run was tuned toward; checked against "
                                                         "the run when given.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/study-overopt).")] = None,
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
                                                             help="Rule (c): stop at this relative parameter "
                                                                  "distance from the initial student.")] = None,
    eps_distance: Annotated[bool, typer.Option("--eps-distance", help="Also measure the KL-like distance of the "
                                               "tuned student from its start (loads both models).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (for --eps-distance).", callback=check_device)] = "cpu",
) -> None:
    """Analyse an existing tuning run for over-optimisation.

    Reads RUN/records.json (gold and proxy reward, diversity and distance from the start at fixed seeds, written
    by `lrm tune`) and writes OUT/report.html and OUT/metrics.json: the gold peak, gold against the distance
    with Gao et al.'s fit d (alpha - beta log d), and three early-stopping rules (fidelity threshold, proxy/gold
    divergence, distance budget) with the gold each keeps and the steps each saves. Launching the runs a study
    compares (no regulariser, KL penalty, concurrent surrogate, ensembles) is a later step: tune them with
    `lrm tune` and study each.

    Examples:
      lrm study overopt --run runs/student/tune-jpeg-compressibility-lrm
      lrm study overopt colorfulness --run runs/tuned --fidelity-threshold 0.8
    """
    if distance_budget is not None and not distance_budget > 0:
        raise typer.BadParameter(f"must be positive, got {distance_budget}",
                                 param_hint="--distance-budget")
    try:
        summary, out_dir = _run(reward, run, out, fidelity_threshold, fidelity_window, every, divergence_window,
                                distance_budget, eps_distance, device)
    except USER_ERRORS as error:
        exit_with_message(error)
    typer.echo(summary, err=True)
    typer.echo(f"report.html and metrics.json in {out_dir}", err=True)


def _run(reward, run_path, out, fidelity_threshold, fidelity_window, every, divergence_window, distance_budget,
         eps_distance, device):
    from lrm.studies.overopt import StudyConfig, analyse
    from lrm.studies.report import write_study
    from lrm.studies.runs import read_run

    run = read_run(run_path, reward)
    config = StudyConfig(fidelity_threshold=fidelity_threshold, fidelity_window=fidelity_window, every=every,
                         divergence_window=divergence_window, distance_budget=distance_budget,
                         higher_is_better=run.higher_is_better)
    study = analyse(run.curves, config)
    end = None
    if eps_distance:
        from lrm.studies.distance import run_eps_distance

        start = run.facts.get("from")
        if not isinstance(start, str):
            raise ValueError(f"{run.path}/records.json names no starting run ('from'); leave out --eps-distance")
        end = run_eps_distance(run.path, start, device=device)
    out_dir = write_study(out if out is not None else run.path / "study-overopt", run, study, config, end)
    return study.verdict, out_dir
