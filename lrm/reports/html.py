"""The fit report: report.html (self-contained, figures inlined), figures/*.png and metrics.json.

Written for someone who did not run the fit: each section says in one sentence what it shows.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from lrm.fidelity import FidelityReport
from lrm.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lrm.reports import figures

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p.note{color:#555;margin:.3em 0 .8em} img{max-width:100%;border:1px solid #eee}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f6f6f6} td:first-child,th:first-child{text-align:left}
.verdict{font-size:1.1em;padding:.6em .9em;border-radius:6px;margin:1em 0}
.high{background:#e6f4ea}.moderate{background:#fff4e0}.low{background:#fde8e8}
ul.flags li{color:#a33}
"""

METRIC_ROWS = ("spearman", "kendall", "pearson", "r2", "pairwise_accuracy", "mae", "rmse", "calibration_error",
               "pred_min", "pred_max", "true_min", "true_max", "range_overshoot")


MISSING = "—"  # a metric that does not exist (a constant predictor's Spearman), never "nan"
GROUPS_IN_METRICS = 50  # worst groups kept in metrics.json; the rest are counted, not listed
GROUPS_ON_PAGE = 10  # worst groups shown in report.html
RESULT_KEYS = ("scope", "verdict", "trust", "checks", "flags", "surrogate", "baselines", "per_group",
               "per_group_note", "by_noise")  # what write_report adds to the summary's facts in metrics.json


def _fmt(value) -> str:
    """A cell as a reader says it: yes/no, none for empty values, — for a metric that does not exist."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        return "none"
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        return f"{value:,.0f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"  # 75,503 rather than 7.55e+04
    if isinstance(value, dict):
        return html.escape(", ".join(f"{k}={v}" for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(str(v) for v in value))
    return html.escape(str(value))


def groups_worth_listing(per_group: list[dict]) -> tuple[list[dict], str]:
    """The per-group rows worth writing (worst first, at most GROUPS_IN_METRICS) and a note saying what was
    left out. Groups say something only when some group has two or more scored rows; a store whose every
    row is its own group (procedural clips) gets no list."""
    if not any(r["n"] >= 2 for r in per_group):
        return [], f"not listed: each of the {len(per_group)} scored groups holds one row" if per_group else ""
    if len(per_group) > GROUPS_IN_METRICS:
        return per_group[:GROUPS_IN_METRICS], f"the {GROUPS_IN_METRICS} worst of {len(per_group)} groups by MAE"
    return per_group, f"all {len(per_group)} groups, worst MAE first"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, note: str, content: str) -> str:
    return f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p>{content}"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def in_distribution(n_scored: int, n_train: int, store) -> str:
    """The report's scope sentence for a surrogate scored on its own store's held-out rows."""
    return (f"In distribution: scored on the {n_scored} held-out rows of {store} (groups the fit never trained on, "
            f"but the ones its validations picked the best checkpoint and early stopping on, so its numbers are "
            f"slightly optimistic; for rows nothing was chosen on, `lrm report RUN --store OTHER`); the constant and "
            f"ridge baselines were fitted on its {n_train} training rows, the surrogate's own.")


def write_report(run_dir: str | Path, *, fidelity: FidelityReport, history: list[dict], pred, true,
                 config: dict, summary: dict, scope: str, groups=None, thumbnails=None,
                 title: str = "Surrogate fit") -> Path:
    """Write report.html, figures/*.png and metrics.json into run_dir; returns the HTML path.

    thumbnails: {"best": [(uint8 HxWx3, caption, pred, true), ...], "worst": [...]} or None.
    summary: facts shown under the verdict and stored in metrics.json (reward, label, codec, n_train, ...).
    scope: one sentence saying which rows were scored and where the baselines were fitted.
    """
    run_dir = Path(run_dir)
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    keep = np.isfinite(true)
    pred, true = pred[keep], true[keep]
    units = summary.get("units", "")

    pngs = {"learning_curves": figures.learning_curves(history) if history else None,
            "scatter": figures.scatter(pred, true, units),
            "calibration": figures.calibration_curve(fidelity.surrogate["calibration"]),
            "residuals": figures.residuals(pred, true),
            "noise": figures.noise_curve(fidelity.by_noise) if fidelity.by_noise else None}
    for which in ("best", "worst"):
        if thumbnails and thumbnails.get(which):
            pngs[f"{which}_examples"] = figures.examples(thumbnails[which], f"{which}-predicted scored samples")
    for name, png in pngs.items():
        if png is not None:
            atomic_write_bytes(run_dir / "figures" / f"{name}.png", png)

    per_group, groups_note = groups_worth_listing(fidelity.surrogate.get("per_group") or [])
    metrics = {**summary, "scope": scope, "verdict": fidelity.verdict, "trust": fidelity.trust,
               "checks": fidelity.checks, "flags": fidelity.flags,
               "surrogate": {k: v for k, v in fidelity.surrogate.items() if k != "per_group"},
               "baselines": fidelity.baselines, "per_group": per_group, "per_group_note": groups_note,
               "by_noise": fidelity.by_noise}
    atomic_write_json(run_dir / "metrics.json", metrics, strict=True)  # NaN (e.g. a constant's Spearman) as null

    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<div class='verdict {html.escape(fidelity.trust)}'><b>Verdict:</b> {html.escape(fidelity.verdict)}</div>",
             f"<p class='note'>{html.escape(scope)}</p>"]
    if fidelity.other_warnings():
        parts.append("<ul class='flags'>" + "".join(f"<li>{html.escape(f)}</li>" for f in fidelity.other_warnings())
                     + "</ul>")
    parts.append(_table(["fact", "value"], [[k, v] for k, v in summary.items()]))
    names = ["surrogate", *fidelity.baselines]
    rows = [[m, fidelity.surrogate[m], *[fidelity.baselines[b][m] for b in fidelity.baselines]] for m in METRIC_ROWS]
    parts.append(_section("Fidelity and baselines",
                          "Agreement with the true reward on the scored rows, next to a constant predictor (the "
                          "training mean) and ridge regression on pooled latent statistics, both fitted on the "
                          "surrogate's training rows; the surrogate should beat both. range_overshoot: how far the "
                          "predictions leave the true range, as a share of its span. — marks a metric that does not "
                          "exist (a constant has no rank correlation).", _table(["metric", *names], rows)))
    figure_notes = [
        ("learning_curves", "Learning curves", "Training loss (standardised units) and held-out Spearman over steps; falling training loss with flat or falling Spearman means over-fitting."),
        ("scatter", "Predicted vs true", "Each dot is a scored sample; points on the dashed line are predicted exactly."),
        ("calibration", "Calibration", "Samples binned by predicted reward; the mean true reward of each bin should sit on the diagonal."),
        ("residuals", "Residuals", "Prediction errors against the true reward; a trend means the surrogate compresses or stretches the reward's range."),
        ("noise", "Fidelity by noise level", "Agreement on noised latents x_t of the scored rows, for tuning on intermediate or one-step-predicted latents."),
        ("best_examples", "Best-predicted examples", "Scored samples with the smallest error, decoded from their latents."),
        ("worst_examples", "Worst-predicted examples", "Scored samples with the largest error: what the surrogate gets wrong."),
    ]
    for key, heading, note in figure_notes:
        if pngs.get(key) is not None:
            parts.append(_section(heading, note, _img(pngs[key], heading)))
    if per_group:
        parts.append(_section("Worst groups", f"Source groups with the largest mean absolute error ({groups_note}; "
                              f"{min(GROUPS_ON_PAGE, len(per_group))} shown).",
                              _table(["group", "n", "true mean", "bias (pred - true)", "MAE", "Spearman"],
                                     [[r["group"], r["n"], r["true_mean"], r["bias"], r["mae"], r["spearman"]]
                                      for r in per_group[:GROUPS_ON_PAGE]])))
    parts.append(_section("Run configuration", "The resolved options of this run (also in config.json).",
                          _table(["option", "value"], [[k, v] for k, v in config.items()])))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    return atomic_write_text(run_dir / "report.html", page)
