"""The over-optimisation study's report: OUT/report.html (self-contained: figures inline as PNG, the verdict first)
and OUT/metrics.json (strict JSON: NaN and infinities written as null) with the keys METRIC_KEYS:

    run                  the tuning run folder
    reward, method       what the run was tuned toward and how (its records.json)
    higher_is_better     the reward's direction; "peak" and "gain" are in that direction
    distance_measure     the d of the Gao fit and the distance rule (lrm.studies.overopt.distance_axis: sqrt of
                         the monitor's eps distance, Gao et al.'s sqrt(KL); the parameter distance for older records)
    verdict              the one-line summary
    peak                 {"step", "gold"}: the evaluation with the best gold
    proxy_keeps_rising   proxy at the end beyond its value at the gold peak (null without a proxy)
    gao_fit              {"alpha", "beta", "rmse", "points", "d_star", "d", "fitted"}: gold(d) - gold(0) =
                         d (alpha - beta log d) in signed gold units; fitted: gold in reward units on the grid d
    stops                one row per rule (lrm.studies.overopt.RULES): {"rule", "condition", "applied", "fired",
                         "step", "gold", "share_of_gain", "share_of_peak", "steps_saved", "note"}
    diversity            {"start", "at_peak", "end"}: Vendi diversity (DOLLAR Eq. 27)
    surrogate_fidelity   the concurrent surrogate's running fidelity at the end of the run (null if none)
    eps_distance_end     KL-like distance of the tuned student from its start (lrm.studies.distance: mean
                         ||eps_theta - eps_init||^2 on shared noisy latents); null unless measured (--eps-distance)
    curves               {"steps", "gold", "proxy", "d", "distance", "diversity", "fidelity", "disagreement",
                         "eps_distance", "latent_l2", "frechet"}: per evaluation (null where not recorded); d: the
                         x of the Gao fit, distance: the relative parameter distance
    config               the StudyConfig the rules ran with
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lrm.io import atomic_write_json, atomic_write_text
from lrm.studies.overopt import Study, StudyConfig, distance_axis
from lrm.studies.runs import TuningRun, record_column, sample_grids

METRIC_KEYS = ("run", "reward", "method", "higher_is_better", "distance_measure", "verdict", "peak",
               "proxy_keeps_rising", "gao_fit", "stops", "diversity", "surrogate_fidelity", "eps_distance_end",
               "curves", "config")
MONITOR_DISTANCES = ("eps_distance", "latent_l2", "frechet")  # the monitor's distances beyond Curves' own
STOP_COLUMNS = ("rule", "condition", "applied", "fired", "step", "gold", "share_of_gain", "share_of_peak",
                "steps_saved", "note")


def study_metrics(run: TuningRun, study: Study, config: StudyConfig,
                  eps_distance_end: float | None = None) -> dict:
    """The metrics.json dict (module docstring), in METRIC_KEYS order; NaN stays NaN until written."""
    curves, fit, peak = run.curves, study.fit, study.peak
    return {
        "run": str(run.path),
        "reward": run.reward,
        "method": run.method,
        "higher_is_better": run.higher_is_better,
        "distance_measure": fit.distance,
        "verdict": study.verdict,
        "peak": {"step": peak.step, "gold": peak.gold},
        "proxy_keeps_rising": study.proxy_keeps_rising,
        "gao_fit": {"alpha": fit.alpha, "beta": fit.beta, "rmse": fit.rmse, "points": fit.points,
                    "d_star": fit.d_star, "d": fit.d.tolist(), "fitted": fit.fitted.tolist()},
        "stops": [{k: getattr(stop, k) for k in STOP_COLUMNS} for stop in study.stops],
        "diversity": {"start": float(curves.diversity[0]), "at_peak": float(curves.diversity[peak.index]),
                      "end": float(curves.diversity[-1])},
        "surrogate_fidelity": run.surrogate_fidelity,
        "eps_distance_end": eps_distance_end,
        "curves": {"steps": curves.steps.tolist(), "gold": curves.gold.tolist(), "proxy": curves.proxy.tolist(),
                   "d": distance_axis(curves).values.tolist(), "distance": curves.distance.tolist(), "diversity": curves.diversity.tolist(),
                   "fidelity": curves.fidelity.tolist(), "disagreement": curves.disagreement.tolist(),
                   **{key: record_column(run, key).tolist() for key in MONITOR_DISTANCES}},
        "config": asdict(config),
    }


def write_study(out: str | Path, run: TuningRun, study: Study, config: StudyConfig,
                eps_distance_end: float | None = None) -> Path:
    """Write OUT/report.html and OUT/metrics.json; returns OUT."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = study_metrics(run, study, config, eps_distance_end)
    atomic_write_json(out / "metrics.json", metrics, strict=True)
    atomic_write_text(out / "report.html", _page(run, study, eps_distance_end))
    return out


# ---------------------------------------------------------------- page


def _page(run: TuningRun, study: Study, eps_distance_end: float | None) -> str:
    from lrm.reports.html import CSS, _fmt, _img, _section, _table
    from lrm.studies import figures

    curves, fit = run.curves, study.fit
    direction = "higher is better" if run.higher_is_better else "lower is better"
    stop_steps = {s.rule: s.step for s in study.stops if s.fired}
    rows = [[s.rule, s.condition, s.applied, s.fired, s.step, s.gold, _percent(s.share_of_gain),
             _percent(s.share_of_peak), s.steps_saved, s.note] for s in study.stops]
    fit_note = (f"gold(d) - gold(0) = d (alpha - beta log d) with d the {fit.distance}; alpha {_fmt(fit.alpha)}, "
                f"beta {_fmt(fit.beta)}, RMSE {_fmt(fit.rmse)} over {fit.points} evaluations with d > 0; the fitted "
                f"gold peaks at d* = {_fmt(fit.d_star)}.")
    if fit.points == 2:  # two parameters through two points: no residual, whatever the curve
        fit_note += " Two points fit the two parameters exactly, so the RMSE says nothing: evaluate more often."
    if eps_distance_end is not None:
        fit_note += (f" At the end, the KL-like distance mean ||eps_theta - eps_init||^2 on shared noisy latents is "
                     f"{_fmt(eps_distance_end)}.")
    fidelity_note = ("Spearman of the surrogate against the gold reward on each evaluation's samples."
                     if np.isfinite(curves.fidelity).any() else
                     "The records hold no per-evaluation fidelity; the run's running fidelity at the end "
                     f"(concurrent surrogate, on its fresh training batches) was {_fmt(run.surrogate_fidelity)}.")
    grids = grid_figures(sample_grids(run, study.peak.step), study.peak.step, int(curves.steps[-1]))
    body = [
        f"<h1>Over-optimisation: {html.escape(run.reward)} ({html.escape(run.method)})</h1>",
        f"<div class='verdict moderate'>{html.escape(study.verdict)}</div>",
        f"<p class='note'>Run {html.escape(str(run.path))}; {direction}; {len(curves.steps)} evaluations at fixed "
        "prompts and seeds. Gold: the pixel reward of decoded samples; proxy: the surrogate's score of the same "
        "latents.</p>",
        _section("Early stopping", "Each rule's stop against the gold peak: the gold kept as a share of the peak's "
                 "gain over the start and of the peak itself, and the steps saved against running to the end. A rule "
                 "that never fires runs to the end.",
                 _table(["rule", "condition", "applied", "fired", "step", "gold", "share of gain", "share of peak",
                         "steps saved", "note"], rows)),
        _section("Gold and proxy over training", f"Gold peak at step {study.peak.step} ({_fmt(study.peak.gold)}); "
                 "dashed lines: where each rule stops.",
                 _img(figures.rewards_by_step(curves, study.peak, stop_steps), "gold and proxy against steps")),
        _section("Gold against distance (Gao et al. 2022)", fit_note,
                 _img(figures.gold_by_distance(curves, fit), "gold against distance with the fit")),
        _section("Surrogate fidelity and diversity", fidelity_note + " Diversity: Vendi score per prompt, averaged "
                 "(DOLLAR Eq. 27).", _img(figures.fidelity_and_diversity(curves), "fidelity and diversity")),
    ]
    if grids:
        body.append(_section("Samples", "At fixed prompts and seeds: at the start, at the gold peak and at the end.",
                             grids))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>lrm study overopt: {html.escape(run.reward)}"
            f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def grid_figures(grids: dict[str, Path], peak_step: int, last_step: int) -> str:
    """HTML figures of the start / peak / end grids (lrm.studies.runs.sample_grids), captioned with their steps."""
    from lrm.reports.html import _img

    captions = {"start": "start (step 0)", "peak": f"gold peak (step {peak_step})", "end": f"end (step {last_step})"}
    return "".join(f"<figure>{_img(path.read_bytes(), captions[when])}<figcaption>{captions[when]}</figcaption>"
                   "</figure>" for when, path in grids.items())


def _percent(share: float) -> str:
    return f"{share:.0%}" if math.isfinite(share) else "—"

