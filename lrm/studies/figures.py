"""Figures of an over-optimisation study: each function returns PNG bytes (lrm.reports.figures' conventions)."""

from __future__ import annotations

import numpy as np

from lrm.reports.figures import _png, plt
from lrm.studies.overopt import Curves, GaoFit, Peak, distance_axis


def rewards_by_step(curves: Curves, peak: Peak, stops: dict[str, int]) -> bytes:
    """Gold and proxy (reward units) against the step; the gold peak marked, each rule's stop a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(curves.steps, curves.gold, "o-", color="C0", label="gold (pixel reward)")
    ax.plot([peak.step], [peak.gold], "*", markersize=14, color="k", label=f"gold peak (step {peak.step})")
    for i, (rule, step) in enumerate(stops.items()):
        ax.axvline(step, linestyle="--", color=f"C{i + 2}", label=f"stop: {rule} (step {step})")
    ax.set_xlabel("step")
    ax.set_ylabel("gold reward", color="C0")
    _proxy_axis(ax, curves.steps, curves.proxy)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _proxy_axis(ax, x: np.ndarray, proxy: np.ndarray) -> None:
    """The proxy on its own right-hand axis (same units, but it can run far beyond the gold)."""
    if not np.isfinite(proxy).any():
        return
    right = ax.twinx()
    right.plot(x, proxy, "s-", color="C1", alpha=0.8)
    right.set_ylabel("proxy (surrogate) reward", color="C1")


def gold_by_distance(curves: Curves, fit: GaoFit) -> bytes:
    """Measured gold against the distance d from the initial student (distance_axis), with Gao et al.'s fitted
    curve."""
    d = distance_axis(curves).values  # (E,)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(d, curves.gold, "o", color="C0", label="gold (measured)")
    if np.isfinite(fit.fitted).any():
        ax.plot(fit.d, fit.fitted, "-", color="k",
                label=f"gold(0) + d ({fit.alpha:.3g} - {fit.beta:.3g} log d)")
    ax.set_xlabel(f"d: {fit.distance}")
    ax.set_ylabel("gold reward", color="C0")
    _proxy_axis(ax, d, curves.proxy)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def fidelity_and_diversity(curves: Curves) -> bytes:
    """Surrogate fidelity (Spearman vs gold, when recorded) and Vendi diversity against the step."""
    fig, (ax_fid, ax_div) = plt.subplots(1, 2, figsize=(9, 3.4))
    if np.isfinite(curves.fidelity).any():
        ax_fid.plot(curves.steps, curves.fidelity, "o-")
    else:
        ax_fid.text(0.5, 0.5, "not recorded per evaluation", ha="center", va="center", transform=ax_fid.transAxes)
    ax_fid.set_xlabel("step")
    ax_fid.set_ylabel("surrogate Spearman vs gold")
    ax_div.plot(curves.steps, curves.diversity, "o-")
    ax_div.set_xlabel("step")
    ax_div.set_ylabel("Vendi diversity")
    return _png(fig)


def regularisers_by_step(arms) -> bytes:
    """Seed-mean gold (with a +- std band) and proxy of each regulariser (lrm.studies.compare.Arm) against the step."""
    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, arm in enumerate(arms):
        c = arm.curves
        ax_gold.plot(c.steps, c.gold, "o-", color=f"C{i}", label=arm.regulariser)
        ax_gold.fill_between(c.steps, c.gold - arm.gold_std, c.gold + arm.gold_std, color=f"C{i}", alpha=0.2)
        ax_gold.plot([arm.study.peak.step], [arm.study.peak.gold], "*", markersize=12, color=f"C{i}")
        if np.isfinite(c.proxy).any():
            ax_proxy.plot(c.steps, c.proxy, "s-", color=f"C{i}", label=arm.regulariser)
    ax_gold.set_title("gold (pixel reward); *: peak")
    ax_proxy.set_title("proxy (surrogate)")
    for ax in (ax_gold, ax_proxy):
        ax.set_xlabel("step")
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


def regularisers_distances(arms) -> bytes:
    """Per regulariser: gold against d (distance_axis) with its Gao fit dashed, and latent L2, latent FD and
    disagreement by step."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    panels = [("d", "gold against d, Gao fit dashed"),
              ("latent_l2", "latent RMS distance to the start's samples"),
              ("frechet", "latent Frechet distance to the start's samples"),
              ("disagreement", "ensemble disagreement (std, reward units)")]
    for ax, (key, title) in zip(axes.flat, panels):
        for i, arm in enumerate(arms):
            if key == "d":
                ax.plot(distance_axis(arm.curves).values, arm.curves.gold, "o", color=f"C{i}", label=arm.regulariser)
                if np.isfinite(arm.study.fit.fitted).any():
                    ax.plot(arm.study.fit.d, arm.study.fit.fitted, "--", color=f"C{i}")
                continue
            y = arm.curves.disagreement if key == "disagreement" else arm.extra[key]
            if np.isfinite(y).any():
                ax.plot(arm.curves.steps, y, "o-", color=f"C{i}", label=arm.regulariser)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"d: {arms[0].study.fit.distance}" if key == "d" else "step", fontsize=7)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    return _png(fig)
