"""Matplotlib figures of a fit: each function returns PNG bytes, nothing touches the screen."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig, tight: bool = True) -> bytes:
    """`fig` as PNG bytes; `tight`: lay it out with tight_layout unless it has a layout engine."""
    buf = io.BytesIO()
    if tight and fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def learning_curves(history: list[dict]) -> bytes:
    """Training loss (standardised units) and held-out Spearman against the step.

    history: lrm.fitting records, {"split": "train", "step", "loss"} and {"split": "val", "step", "spearman"}.
    """
    fig, (ax_loss, ax_rho) = plt.subplots(1, 2, figsize=(9, 3.4))
    train = [(h["step"], h["loss"]) for h in history if h.get("split") == "train"]
    val = [(h["step"], h["spearman"]) for h in history if h.get("split") == "val"]
    if train:
        ax_loss.plot(*zip(*train), color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="training loss (standardised units)", yscale="log", title="Training loss")
    if val:
        ax_rho.plot(*zip(*val), marker="o", ms=3, color="tab:green")
    ax_rho.set(xlabel="step", ylabel="Spearman", title="Held-out Spearman")
    ax_rho.set_ylim(top=1.02)
    ax_rho.grid(alpha=0.3)
    return _png(fig)


def scatter(pred: np.ndarray, true: np.ndarray, units: str = "") -> bytes:
    """Predicted vs true reward on the held-out split, with the identity line."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.scatter(true, pred, s=8, alpha=0.6, edgecolors="none")
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlabel=f"true reward {units}".strip(), ylabel=f"predicted {units}".strip(), title="Predicted vs true")
    ax.legend(loc="upper left")
    return _png(fig)


def calibration_curve(curve: list[dict]) -> bytes:
    """Mean true reward per quantile bin of the prediction; on the diagonal when calibrated."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    mp = [c["mean_pred"] for c in curve]
    mt = [c["mean_true"] for c in curve]
    ax.plot(mp, mt, marker="o", label="bins")
    lo, hi = min(mp + mt), max(mp + mt)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect calibration")
    ax.set(xlabel="mean predicted (bin)", ylabel="mean true (bin)", title="Calibration")
    ax.legend(loc="upper left")
    return _png(fig)


def residuals(pred: np.ndarray, true: np.ndarray) -> bytes:
    """Residual (pred - true) against the true reward, and its histogram."""
    res = pred - true
    fig, (ax_scatter, ax_hist) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_scatter.scatter(true, res, s=8, alpha=0.6, edgecolors="none")
    ax_scatter.axhline(0, color="k", lw=1, ls="--")
    ax_scatter.set(xlabel="true reward", ylabel="pred - true", title="Residuals")
    ax_hist.hist(res, bins=40, color="tab:orange")
    ax_hist.set(xlabel="pred - true", ylabel="count", title="Residual distribution")
    return _png(fig)


def noise_curve(rows: list[dict]) -> bytes:
    """Held-out Spearman and R² of a noise-aware surrogate against the diffusion timestep."""
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    t = [r["t"] for r in rows]
    ax.plot(t, [r["spearman"] for r in rows], marker="o", label="Spearman")
    ax.plot(t, [r["r2"] for r in rows], marker="s", label="R²")
    ax.set(xlabel="timestep t (0 = clean)", ylabel="score", title="Fidelity by noise level", ylim=(None, 1.02))
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def _value(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"  # 5,580 rather than 5.58e+03


CAPTION_CHARS = 30  # characters per caption line under a 2.2-inch thumbnail at 7 pt
CAPTION_POINTS = 7  # caption font size
SUPTITLE_INCHES = 0.3  # room for the figure's title above the captions


def examples(items: list[tuple[np.ndarray, str, float, float]], title: str) -> bytes:
    """A row of decoded thumbnails (uint8 HxWx3) with predicted and true reward and the whole caption,
    wrapped (long paths and prompts are broken into lines, never cut)."""
    import textwrap

    n = max(len(items), 1)
    captions = [textwrap.wrap(caption, CAPTION_CHARS) or [""] for _, caption, _, _ in items]
    lines = max((len(c) for c in captions), default=1) + 1  # + the pred / true line
    # Laid out by hand, in inches: constrained and tight layout both let a tall caption run into the
    # suptitle, since square thumbnails cannot shrink in height alone.
    width, margin, gap = 2.2 * n, 0.05, 0.1
    side = (width - 2 * margin - (n - 1) * gap) / n  # square thumbnail
    caption_height = lines * CAPTION_POINTS * 1.3 / 72 + 0.05
    height = margin + side + caption_height + SUPTITLE_INCHES
    fig, axes = plt.subplots(1, n, figsize=(width, height), squeeze=False, gridspec_kw=dict(
        left=margin / width, right=1 - margin / width, bottom=margin / height, top=(margin + side) / height,
        wspace=gap / side))
    for ax, (image, _, pred, true), caption in zip(axes[0], items, captions):
        ax.imshow(image)
        ax.set_title("\n".join([f"pred {_value(pred)} / true {_value(true)}", *caption]), fontsize=CAPTION_POINTS,
                     parse_math=False)  # a prompt's "$5 and $6" is text, not math markup (which may not parse)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9, y=1 - 0.04 / height, va="top", parse_math=False)
    return _png(fig, tight=False)
