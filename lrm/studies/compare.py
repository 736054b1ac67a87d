"""Regularisers side by side: the tuning runs of one study launched by `lrm study overopt --launch`, one arm per
regulariser with one run per seed, analysed together into DIR/report.html and DIR/metrics.json.

    arms = [build_arm("none", [read_run(p) for p in none_runs], [0, 1, 2], config), ...]
    write_comparison("DIR", arms, config, launch={...})

Per arm the curves are the mean over its seeds at each evaluation (its runs must share their evaluation steps);
the gold peak, whether the proxy keeps rising and the early-stopping rules (lrm.studies.overopt.analyse) are
read on that mean curve, and each seed's own peak is listed beside it. The monitor's other distances (KL-like
eps distance, latent L2 and latent Frechet distance to the start's samples) and an ensemble's disagreement are
averaged likewise. metrics.json (strict JSON) holds COMPARE_KEYS:

    reward, method, higher_is_better   what the runs were tuned toward and how; the reward's direction
    regularisers, seeds                the arms in launch order and the seeds of each
    distance_measure                   the d of the Gao fit and the distance rule (lrm.studies.overopt.distance_axis:
                                       sqrt of the eps distance, or the parameter distance for older records;
                                       "<arm>: <measure>; ..." when the arms differ)
    verdict                            the one-line summary
    arms                               {regulariser: ARM_KEYS}: runs (folders), peak {"step", "gold"},
                                       seed_peaks [{"seed", "step", "gold"}], proxy_keeps_rising, gao_fit
                                       {"alpha", "beta", "rmse", "d_star"}, stops (lrm.studies.report.STOP_COLUMNS
                                       rows), curves {"steps", "gold", "gold_std", "proxy", "d", "distance",
                                       "diversity", "fidelity", "eps_distance", "latent_l2", "frechet",
                                       "disagreement"} (means over seeds), grids {"start", "peak", "end"} (paths:
                                       the first seed's samples; "peak" at the arm's peak step, as report.html)
    launch                             how the runs were launched (steps, eval_every, weights, surrogates)
    config                             the StudyConfig the rules ran with
"""

from __future__ import annotations

import html
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lrm.io import atomic_write_json, atomic_write_text
from lrm.studies.overopt import (Curves, Peak, Study, StudyConfig, analyse, best_stop, distance_axis, gold_peak,
                                 kept_gold)
from lrm.studies.report import MONITOR_DISTANCES, STOP_COLUMNS, grid_figures
from lrm.studies.runs import TuningRun, record_column, sample_grids

COMPARE_KEYS = ("reward", "method", "higher_is_better", "regularisers", "seeds", "distance_measure", "verdict", "arms",
                "launch", "config")
ARM_KEYS = ("runs", "peak", "seed_peaks", "proxy_keeps_rising", "gao_fit", "stops", "curves", "grids")


@dataclass(frozen=True)
class Arm:
    regulariser: str
    runs: list[TuningRun]  # one per seed
    seeds: list[int]
    curves: Curves  # (E,) columns: the mean over the seeds
    gold_std: np.ndarray  # (E,) std of the gold over the seeds (0 with one seed)
    extra: dict[str, np.ndarray]  # MONITOR_DISTANCES columns (E,), mean over the seeds; NaN where unrecorded
    study: Study  # of the mean curves
    seed_peaks: list[Peak]  # each seed's own gold peak


def _over_seeds(stat, stack: np.ndarray) -> np.ndarray:
    """(S, E) -> (E,) np.nanmean / np.nanstd over the seeds' finite values; NaN where none is (quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return stat(stack, axis=0)


def build_arm(regulariser: str, runs: list[TuningRun], seeds: list[int], config: StudyConfig) -> Arm:
    """One arm from its runs (one per seed, same evaluation steps)."""
    if not runs or len(runs) != len(seeds):
        raise ValueError(f"arm {regulariser!r}: give one run per seed ({len(seeds)} seeds, {len(runs)} runs)")
    steps = runs[0].curves.steps
    for run in runs[1:]:
        if not np.array_equal(run.curves.steps, steps):
            raise ValueError(f"{run.path} and {runs[0].path} evaluate at different steps; launch them with the same "
                             "--steps and --eval-every")
    fields = ("gold", "proxy", "distance", "diversity", "fidelity", "disagreement")
    means = {f: _over_seeds(np.nanmean, np.stack([getattr(r.curves, f) for r in runs])) for f in fields}
    # a plain mean: NaN where a seed lacks it, so an arm mixing older records falls back to the parameter distance
    eps = np.stack([r.curves.eps_distance for r in runs]).mean(0)  # (E,)
    curves = Curves(steps, **means, eps_distance=eps)
    gold_std = _over_seeds(np.nanstd, np.stack([r.curves.gold for r in runs]))  # as the mean
    extra = {key: _over_seeds(np.nanmean, np.stack([record_column(r, key) for r in runs])) for key in MONITOR_DISTANCES}
    peaks = [gold_peak(r.curves, config.higher_is_better) for r in runs]
    return Arm(regulariser, runs, list(seeds), curves, gold_std, extra, analyse(curves, config), peaks)


def comparison_verdict(arms: list[Arm], higher_is_better: bool = True) -> str:
    """One line: the arm with the best gold peak, each arm's peak (and whether its proxy kept rising), and the
    stopping rule that keeps the most of the best arm's peak."""
    sign = 1.0 if higher_is_better else -1.0
    best = max(arms, key=lambda a: sign * a.study.peak.gold)
    last = int(best.curves.steps[-1])
    peaks = ", ".join(f"{a.regulariser} {a.study.peak.gold:.4g} at step {a.study.peak.step}"
                      + (" (proxy keeps rising)" if a.study.proxy_keeps_rising else "") for a in arms)
    line = f"best gold peak: {best.regulariser} ({best.study.peak.gold:.4g} at step {best.study.peak.step} of {last})"
    line += f"; peaks by regulariser: {peaks}"
    rule = best_stop(best.study.stops, higher_is_better)  # as a single run's verdict chooses it
    if rule is not None:
        line += (f"; in {best.regulariser}, stop when {rule.condition} keeps {kept_gold(rule, best.study.peak)} "
                 f"(step {rule.step})")
    return line


def comparison_metrics(arms: list[Arm], config: StudyConfig, launch: dict) -> dict:
    """The metrics.json dict (module docstring), in COMPARE_KEYS order; NaN stays NaN until written."""
    first = arms[0].runs[0]
    return {
        "reward": first.reward,
        "method": first.method,
        "higher_is_better": first.higher_is_better,
        "regularisers": [a.regulariser for a in arms],
        "seeds": {a.regulariser: a.seeds for a in arms},
        "distance_measure": _distance_measure(arms),
        "verdict": comparison_verdict(arms, config.higher_is_better),
        "arms": {a.regulariser: _arm_metrics(a) for a in arms},
        "launch": launch,
        "config": asdict(config),
    }


def _distance_measure(arms: list[Arm]) -> str:
    """The arms' shared d (their Gao fits' measure), or each arm's when they differ."""
    measures = {a.regulariser: a.study.fit.distance for a in arms}
    if len(set(measures.values())) == 1:
        return next(iter(measures.values()))
    return "; ".join(f"{arm}: {measure}" for arm, measure in measures.items())


def _arm_metrics(arm: Arm) -> dict:
    study, curves, fit = arm.study, arm.curves, arm.study.fit
    values = {
        "runs": [str(r.path) for r in arm.runs],
        "peak": {"step": study.peak.step, "gold": study.peak.gold},
        "seed_peaks": [{"seed": s, "step": p.step, "gold": p.gold} for s, p in zip(arm.seeds, arm.seed_peaks)],
        "proxy_keeps_rising": study.proxy_keeps_rising,
        "gao_fit": {"alpha": fit.alpha, "beta": fit.beta, "rmse": fit.rmse, "d_star": fit.d_star},
        "stops": [{k: getattr(stop, k) for k in STOP_COLUMNS} for stop in study.stops],
        "curves": {"steps": curves.steps.tolist(), "gold": curves.gold.tolist(), "gold_std": arm.gold_std.tolist(),
                   "proxy": curves.proxy.tolist(), "d": distance_axis(curves).values.tolist(),
                   "distance": curves.distance.tolist(),
                   "diversity": curves.diversity.tolist(), "fidelity": curves.fidelity.tolist(),
                   "disagreement": curves.disagreement.tolist(), **{key: arm.extra[key].tolist() for key in MONITOR_DISTANCES}},
        # the first seed's samples at the arm's gold peak (the seed-mean curve's "peak" step), as report.html shows
        # them under the caption "gold peak (step N)"
        "grids": {when: str(path) for when, path in sample_grids(arm.runs[0], study.peak.step).items()},
    }
    return {key: values[key] for key in ARM_KEYS}


def write_comparison(out: str | Path, arms: list[Arm], config: StudyConfig, launch: dict) -> Path:
    """Write OUT/report.html and OUT/metrics.json; returns OUT."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = comparison_metrics(arms, config, launch)
    atomic_write_json(out / "metrics.json", metrics, strict=True)
    atomic_write_text(out / "report.html", _page(arms, metrics))
    return out


# ---------------------------------------------------------------- page


def _page(arms: list[Arm], metrics: dict) -> str:
    from lrm.reports.html import CSS, _fmt, _img, _section, _table
    from lrm.studies import figures
    from lrm.studies.report import _percent

    direction = "higher is better" if metrics["higher_is_better"] else "lower is better"
    peak_rows = [[a.regulariser, ", ".join(map(str, a.seeds)), a.study.peak.step, a.study.peak.gold,
                  a.curves.gold[-1], a.study.proxy_keeps_rising,
                  "; ".join(f"seed {s}: {_fmt(p.gold)} at {p.step}" for s, p in zip(a.seeds, a.seed_peaks)),
                  a.extra["eps_distance"][-1], a.curves.disagreement[-1]] for a in arms]
    stop_rows = [[a.regulariser, s.rule, s.condition, s.fired, s.step, s.gold, _percent(s.share_of_gain),
                  _percent(s.share_of_peak), s.steps_saved, s.note] for a in arms for s in a.study.stops]
    grids = "".join(f"<h3>{html.escape(a.regulariser)} (seed {a.seeds[0]})</h3>"
                    + grid_figures(sample_grids(a.runs[0], a.study.peak.step), a.study.peak.step,
                                   int(a.curves.steps[-1])) for a in arms)
    body = [
        f"<h1>Over-optimisation by regulariser: {html.escape(metrics['reward'])} ({html.escape(metrics['method'])})"
        "</h1>",
        f"<div class='verdict moderate'>{html.escape(metrics['verdict'])}</div>",
        f"<p class='note'>{len(arms)} regularisers x seeds {', '.join(map(str, arms[0].seeds))}; {direction}. Each "
        "arm's curves are the mean over its seeds at fixed prompts and seeds; gold: the pixel reward of decoded "
        "samples, proxy: the surrogate's score of the same latents.</p>",
        _section("Gold peak by regulariser", "Peak and end of the seed-mean gold; each seed's own peak; the KL-like "
                 "distance mean ||eps_theta - eps_init||^2 and the ensemble's disagreement at the end.",
                 _table(["regulariser", "seeds", "peak step", "peak gold", "gold at end", "proxy keeps rising",
                         "peaks per seed", "eps distance at end", "disagreement at end"], peak_rows)),
        _section("Early stopping by regulariser", "Each rule on the seed-mean curves: the gold kept as a share of the "
                 "arm's peak gain and of its peak, and the steps saved against running to the end.",
                 _table(["regulariser", "rule", "condition", "fired", "step", "gold", "share of gain",
                         "share of peak", "steps saved", "note"], stop_rows)),
        _section("Gold and proxy over training", "Seed means; the band is +- one std of the gold over the seeds.",
                 _img(figures.regularisers_by_step(arms), "gold and proxy by regulariser")),
        _section("Distance from the initial student", f"Gold against d ({html.escape(metrics['distance_measure'])}) "
                 "with each arm's Gao fit; latent RMS distance and latent Frechet distance of the fixed-seed samples "
                 "to the start's; ensemble disagreement.",
                 _img(figures.regularisers_distances(arms), "distances by regulariser")),
        _section("Samples", "The first seed of each regulariser at fixed prompts and seeds: start, gold peak, end.",
                 grids),
    ]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>lrm study overopt: "
            f"{html.escape(metrics['reward'])} by regulariser</title><style>{CSS}</style></head><body>"
            f"{''.join(body)}</body></html>")
