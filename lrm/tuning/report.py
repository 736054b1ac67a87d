"""The report of a reward-tuning run: OUT/report.html (self-contained: figures inline as PNG, also written to
OUT/figures/*.png), read from what `lrm tune` writes (OUT/records.json, OUT/before/grid.png, OUT/after/grid.png).

    write_tune_report("runs/student/tune-colorfulness-lrm")   # -> that folder's report.html
    lrm report runs/student/tune-colorfulness-lrm             # the same from the command line

Sections: the run's facts (reward and its direction, method, seconds per step, peak memory), gold and proxy
reward against the step, diversity and distance from the start against the step, the surrogate's fidelity
when recorded, each loss term against the step, and the decoded sample grids at fixed seeds before and after
(and at the best gold's evaluation when the run ended below it).
A folder without records.json is refused with one line (lrm.studies.runs.read_run reads the folder).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from lrm.io import atomic_write_bytes, atomic_write_text

REPORT = "report.html"
GRIDS = ("before", "after")  # sample folders `lrm tune` writes, each with grid.png


def write_tune_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html and RUN/figures/*.png for the tuning run at `run_dir`; returns the HTML path."""
    from lrm.reports.html import CSS, _img, _section, _table
    from lrm.studies.runs import read_run

    run = read_run(run_dir)
    pngs = figures_of(run)
    for name, png in pngs.items():
        atomic_write_bytes(run.path / "figures" / f"{name}.png", png)
    config = run.facts.get("config") if isinstance(run.facts.get("config"), dict) else {}
    body = [f"<h1>Reward tuning: {html.escape(run.reward)} ({html.escape(run.method)})</h1>",
            f"<div class='verdict moderate'>{html.escape(summary(run.curves, run.reward))}</div>",
            f"<p class='note'>Run {html.escape(str(run.path))}. Every evaluation samples the student at the same "
            "prompts and seeds. Gold: the pixel reward of the decoded samples; proxy: the surrogate's score of the "
            "same latents (only a run through a surrogate has one).</p>",
            _table(["fact", "value"], facts_rows(run, config)),
            _section("Gold and proxy reward", "Mean over the fixed-seed samples at each evaluation, in the reward's "
                     "units; the proxy on its own axis, since it can run far from the gold (over-optimisation).",
                     _img(pngs["rewards"], "gold and proxy reward against the step")),
            _section("Diversity and distance", "Diversity: Vendi score of each prompt's decoded samples, averaged "
                     "over prompts (DOLLAR Eq. 27). Distance: ||theta - theta_0|| / ||theta_0|| of the student's "
                     "parameters from the start.", _img(pngs["diversity_distance"], "diversity and distance"))]
    note = fidelity_note(run)
    if note:
        figure = _img(pngs["fidelity"], "surrogate fidelity against the step") if "fidelity" in pngs else ""
        body.append(_section("Surrogate fidelity", note, figure))
    if "losses" in pngs:
        body.append(_section("Losses per term", "Each term's generator loss and each auxiliary role's loss at every "
                             "step (unweighted).", _img(pngs["losses"], "loss per term against the step")))
    shown = [(name, run.path / name / "grid.png") for name in GRIDS]
    best = best_grid(run)
    if best is not None:
        shown.insert(1, best)
    grids = "".join(f"<figure>{_img(path.read_bytes(), f'samples: {name}')}<figcaption>{name}</figcaption>"
                    "</figure>" for name, path in shown if path.is_file())
    if grids:
        body.append(_section("Samples before and after", "Decoded samples at fixed seeds, before tuning, at the "
                             "evaluation with the best gold when that was not the last (an over-optimised run's "
                             "best student is its checkpoint there), and after the last step (rows: prompts, "
                             "columns: seeds; a clip shows its middle frame).", grids))
    if config:
        body.append(_section("Configuration", "The resolved TuneConfig of this run (records.json).",
                             _table(["option", "value"], [[k, v] for k, v in config.items()])))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lrm tune: {html.escape(run.reward)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    return atomic_write_text(run.path / REPORT, page)


def best_grid(run) -> tuple[str, Path] | None:
    """(caption, OUT/evals/step-N/grid.png) of the evaluation records.json names best ("best") when its gold differs
    from the last evaluation's; None otherwise, or when `lrm tune` kept no samples of it."""
    best, curves = run.facts.get("best"), run.curves
    if not isinstance(best, dict) or best.get("step") == int(curves.steps[-1]) or best.get("gold") == curves.gold[-1]:
        return None
    path = run.path / "evals" / f"step-{best['step']}" / "grid.png"
    return (f"best gold {best['gold']:.4g}, update {best['step']}", path) if path.is_file() else None


def figures_of(run) -> dict[str, bytes]:
    """PNGs by name: rewards and diversity_distance always; fidelity and losses when the run recorded them."""
    curves = run.curves
    pngs = {"rewards": rewards_figure(curves.steps, curves.gold, curves.proxy, run.reward),
            "diversity_distance": diversity_distance_figure(curves.steps, curves.diversity, curves.distance)}
    alignment = gradient_alignment(run)
    if np.isfinite(curves.fidelity).any() or np.isfinite(alignment).any():
        pngs["fidelity"] = fidelity_figure(curves.steps, curves.fidelity, alignment)
    losses = [step for step in run.facts.get("losses") or [] if isinstance(step, dict)]
    if any(losses):  # a run whose every update was skipped logged no loss
        pngs["losses"] = losses_figure(losses)
    return pngs


def facts_rows(run, config: dict) -> list[list]:
    """The facts table: reward and direction, method, the run's size, seconds per step, peak memory, counters."""
    facts = run.facts
    peak = facts.get("peak_memory_mb")
    return [["reward", f"{run.reward} ({'higher' if run.higher_is_better else 'lower'} is better)"],
            ["method", run.method], ["concurrent surrogate", facts.get("concurrent")],
            ["started from", facts.get("from")], ["steps", config.get("steps")],
            ["batch size", config.get("batch_size")], ["learning rate", config.get("lr")],
            ["student sampling steps", config.get("student_steps")], ["evaluations", len(run.curves.steps)],
            ["seconds per step", facts.get("seconds_per_step")],
            ["peak memory (MB)", peak if peak is not None else "not recorded (lrm.tuning.tune records CUDA's max "
                                                               "allocated; none on CPU)"],
            ["peak RSS of the process (MB; in a launched study it includes the earlier runs and fits: compare the "
             "runs' added memory)", facts.get("peak_rss_mb", "not recorded (a run of an earlier lrm)")],
            ["resident before the first step (MB)", _recorded(facts, "loaded_rss_mb")],
            ["added by the training steps at their peak (MB)", _recorded(facts, "added_rss_mb")],
            ["non-finite rewards", facts.get("nonfinite_rewards")], ["skipped updates", facts.get("skipped_updates")]]


def _recorded(facts: dict, key: str):
    """facts[key], or why it is missing: a run of an earlier lrm, or a system without /proc (not Linux)."""
    if key not in facts:
        return "not recorded (a run of an earlier lrm)"
    return facts[key] if facts[key] is not None else "not measured (no training step in this process, or no " \
        "/proc/self: not Linux)"


def gradient_alignment(run) -> np.ndarray:
    """(E,) the monitor's gradient alignment per evaluation (NaN where not recorded: no surrogate, a
    non-differentiable reward, or a run of an earlier lrm)."""
    from lrm.studies.runs import record_column

    return record_column(run, "gradient_alignment")


def fidelity_note(run) -> str:
    """What the fidelity section says, or "" when the run recorded no fidelity (no surrogate)."""
    from lrm.reports.html import _fmt

    per_eval = bool(np.isfinite(run.curves.fidelity).any())
    alignment = gradient_alignment(run)
    running = run.surrogate_fidelity  # the concurrent surrogate's at the end; NaN before its first scored batch
    running = running if running is not None and math.isfinite(running) else None
    if not per_eval and running is None and not np.isfinite(alignment).any():
        return ""
    note = ("Spearman of the surrogate's scores against the gold reward of the same fixed-seed samples."
            if per_eval else "No per-evaluation fidelity was recorded.")
    if running is not None:
        note += (" The concurrent surrogate's running fidelity (Spearman on its fresh training batch before each "
                 f"update) at the end: {_fmt(running)}.")
    matched = run.facts.get("surrogate_gradient_cosine")  # with `lrm tune --concurrent --gradient-weight`
    if matched is not None and math.isfinite(matched):
        note += (f" Its updates matched the reward's latent gradient (gradient weight "
                 f"{_fmt((run.facts.get('config') or {}).get('gradient_weight'))}); their running gradient cosine "
                 f"(on the fresh batch, before each update) at the end: {_fmt(matched)}.")
    if np.isfinite(alignment).any():
        recorded = np.flatnonzero(np.isfinite(alignment))
        first, last = (recorded[0], recorded[-1])
        note += (" Gradient alignment: the cosine between the surrogate's and the gold reward's gradients with "
                 f"respect to each sample's latents, averaged ({_fmt(float(alignment[first]))} at step "
                 f"{int(run.curves.steps[first])}, {_fmt(float(alignment[last]))} at step "
                 f"{int(run.curves.steps[last])}). Near 0, following the surrogate does not move the gold reward, "
                 "however well it ranks the samples.")
    return note


def summary(curves, reward: str) -> str:
    """One line: gold, proxy and diversity at the first and last evaluation, and the final distance."""
    def change(values: np.ndarray, fmt: str) -> str:
        first, last = float(values[0]), float(values[-1])
        return f"{_number(first, fmt)} -> {_number(last, fmt)}"

    parts = [f"{reward}: gold {change(curves.gold, '.4g')}"]
    if np.isfinite(curves.proxy).any():
        parts.append(f"proxy {change(curves.proxy, '.4g')}")
    parts.append(f"diversity {change(curves.diversity, '.3f')}")
    parts.append(f"distance {_number(float(curves.distance[-1]), '.3g')} after step {int(curves.steps[-1])}")
    return ", ".join(parts)


def _number(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "—"


# ---------------------------------------------------------------- figures (PNG bytes)


def _step_axis(ax) -> None:
    """Integer step ticks and a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def rewards_figure(steps: np.ndarray, gold: np.ndarray, proxy: np.ndarray, reward: str) -> bytes:
    """Gold (left axis) and, when measured, proxy (right axis) against the step."""
    from lrm.reports.figures import _png, plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(steps, gold, "o-", color="C0", label="gold (pixel reward)")
    ax.set(xlabel="step", title=reward)
    ax.set_ylabel("gold", color="C0")
    _step_axis(ax)
    if np.isfinite(proxy).any():
        right = ax.twinx()
        right.plot(steps, proxy, "s--", color="C1", label="proxy (surrogate)")
        right.set_ylabel("proxy", color="C1")
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="best")
    return _png(fig)


def diversity_distance_figure(steps: np.ndarray, diversity: np.ndarray, distance: np.ndarray) -> bytes:
    from lrm.reports.figures import _png, plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(steps, diversity, "o-", color="C2")
    left.set(xlabel="step", ylabel="Vendi per prompt", title="Diversity")
    right.plot(steps, distance, "o-", color="C3")
    right.set(xlabel="step", ylabel="relative L2", title="Distance from the start")
    for ax in (left, right):
        _step_axis(ax)
    return _png(fig)


def fidelity_figure(steps: np.ndarray, fidelity: np.ndarray, alignment: np.ndarray) -> bytes:
    """Spearman (ranking) and gradient cosine of the surrogate against the gold, per evaluation (NaN: not drawn)."""
    from lrm.reports.figures import _png, plt

    fig, ax = plt.subplots(figsize=(6, 3.0))
    for values, label, color in ((fidelity, "Spearman of the scores", "C4"),
                                 (alignment, "cosine of the gradients", "C2")):
        if np.isfinite(values).any():
            ax.plot(steps, values, "o-", color=color, label=label)
    ax.legend(fontsize=8)
    ax.set(xlabel="step", ylabel="agreement", title="Surrogate vs gold on the fixed-seed samples", ylim=(-1.05, 1.05))
    ax.axhline(0, color="k", lw=0.8)
    _step_axis(ax)
    return _png(fig)


def losses_figure(losses: list[dict]) -> bytes:
    """One panel per loss name; losses[i] holds step i + 1's losses."""
    from lrm.reports.figures import _png, plt

    names = list(dict.fromkeys(k for step in losses for k in step))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(i + 1, float(step[name])) for i, step in enumerate(losses)
                  if isinstance(step.get(name), (int, float))]
        if points:
            ax.plot(*zip(*points), color="C0", lw=1, marker="." if len(points) < 30 else None)
        ax.set(title=name, xlabel="step")
        _step_axis(ax)
    return _png(fig)
