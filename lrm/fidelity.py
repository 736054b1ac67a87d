"""How far to trust a surrogate: held-out agreement with the pixel reward, next to baselines.

Everything here takes plain arrays so it can score any predictor (a fitted LRM, a baseline, a
reward computed another way). The two baselines are fitted on the surrogate's own training rows
and scored on the same rows as the surrogate: a constant (train mean) and ridge regression on pooled
latent statistics. A surrogate that does not beat ridge learned nothing a handful of channel
statistics could not tell. The verdict judges ranking, level and range together (`assess`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from scipy import stats

from lrm import labels
from lrm.models.surrogate import channel_stats

PAIR_SAMPLE = 2000  # pairwise accuracy is exact up to this many samples, then on a seeded subsample
LOW_SPEARMAN = 0.8  # below this a surrogate ranks too poorly to steer a tuner reliably
HIGH_SPEARMAN = 0.95  # at or above this about 9 pairs in 10 are ordered right (main job: 0.957, pairwise 0.916)
MIN_R2 = 0.8  # below this its RMSE exceeds 45% of the reward's spread: its values are not the reward's values
CALIBRATION_SHARE = 0.25  # calibration bins may miss by at most this share of the constant predictor's mean error
RIDGE_CALIBRATION_FACTOR = 2.0  # calibrated more than this many times worse than ridge: mis-levelled where ridge is not
RANGE_OVERSHOOT = 0.25  # predictions beyond the true range by more than this share of its span are values the
#                         reward never takes, which a tuner climbing the surrogate would chase
FEW_HELD_OUT = 50  # below this many held-out samples the verdict warns how uncertain Spearman is
GROUP_BIAS_STDS = 0.5  # a held-out group whose mean error exceeds this many reward stds is mis-levelled
CALIBRATION_BINS = 10


# ---------------------------------------------------------------- metrics


def pairwise_accuracy(pred: np.ndarray, true: np.ndarray, seed: int = 0) -> float:
    """Fraction of pairs with different true values that the prediction orders the same way.

    Ties in the prediction count one half. Exact for n <= PAIR_SAMPLE, else on a seeded subsample.
    """
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if len(pred) > PAIR_SAMPLE:
        keep = np.random.default_rng(seed).choice(len(pred), PAIR_SAMPLE, replace=False)
        pred, true = pred[keep], true[keep]
    dt = np.sign(true[:, None] - true[None, :])  # (n, n)
    dp = np.sign(pred[:, None] - pred[None, :])
    upper = np.triu(np.ones_like(dt, dtype=bool), k=1) & (dt != 0)
    if not upper.any():
        return float("nan")
    agree = (dt == dp) & upper
    tie = (dp == 0) & upper
    return float((agree.sum() + 0.5 * tie.sum()) / upper.sum())


def calibration(pred: np.ndarray, true: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Quantile bins of the prediction: mean predicted vs mean true reward in each bin."""
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in np.unique(which):
        sel = which == b
        out.append({"mean_pred": float(pred[sel].mean()), "mean_true": float(true[sel].mean()),
                    "count": int(sel.sum())})
    return out


def calibration_error(curve: list[dict]) -> float:
    """Count-weighted mean |mean_pred - mean_true| over calibration bins (reward units)."""
    counts = np.array([c["count"] for c in curve], np.float64)
    gaps = np.array([abs(c["mean_pred"] - c["mean_true"]) for c in curve])
    return float((counts * gaps).sum() / counts.sum())


def _spearman(a, b) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


MIN_INTERVAL_N = 10  # below it Fisher's z misstates a rank correlation's spread (4 perfect pairs gave "1.00 to 1.00")


def spearman_interval(rho: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Approximate 95% interval of a Spearman correlation from n samples: Fisher's z with the
    standard error 1.06 / sqrt(n - 3) of Fieller, Hartley and Pearson (1957). NaN where that approximation says
    nothing: fewer than MIN_INTERVAL_N samples, or a perfect |rho| = 1 (its interval would collapse to a point)."""
    if not np.isfinite(rho) or n < MIN_INTERVAL_N or abs(rho) >= 1:
        return float("nan"), float("nan")
    centre, half = np.arctanh(np.clip(rho, -0.999999, 0.999999)), z * 1.06 / np.sqrt(n - 3)
    return float(np.tanh(centre - half)), float(np.tanh(centre + half))


def fidelity_metrics(pred, true, groups=None) -> dict:
    """Agreement of predictions with the true reward on held-out samples (NaN true values dropped)."""
    pred = np.asarray(pred, np.float64).reshape(-1)
    true = np.asarray(true, np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"pred has {pred.shape[0]} values but true has {true.shape[0]}")
    keep = np.isfinite(true)
    n_nan = int((~keep).sum())
    pred, true = pred[keep], true[keep]
    if len(true) < 2:
        raise ValueError(f"need at least 2 finite held-out labels to assess fidelity, got {len(true)}")
    if not np.isfinite(pred).all():
        raise ValueError("predictions contain NaN or Inf: the surrogate diverged")
    err = pred - true
    var = true.var()
    const_pred = np.ptp(pred) == 0
    out = {
        "n": int(len(true)),
        "n_nan_dropped": n_nan,
        "true_std": float(np.sqrt(var)),
        "mse": float(np.mean(err**2)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - np.mean(err**2) / var) if var > 0 else float("nan"),
        "pearson": float("nan") if const_pred else float(stats.pearsonr(pred, true).statistic),
        "spearman": float("nan") if const_pred else _spearman(pred, true),
        "kendall": float("nan") if const_pred else float(stats.kendalltau(pred, true).statistic),
        "pairwise_accuracy": pairwise_accuracy(pred, true),
        "calibration": calibration(pred, true),
    }
    out["calibration_error"] = calibration_error(out["calibration"])
    out.update(range_of(pred, true))
    if groups is not None:
        groups = np.asarray(groups)[keep]
        out["per_group"] = per_group(pred, true, groups)
    return out


def range_of(pred: np.ndarray, true: np.ndarray) -> dict:
    """Ranges of prediction and truth, and how far the prediction leaves the true range (range_overshoot:
    the larger overshoot at either end, as a share of the true span; NaN when the truth is constant)."""
    span = float(np.ptp(true))
    beyond = max(float(pred.max() - true.max()), float(true.min() - pred.min()), 0.0)
    return {"pred_min": float(pred.min()), "pred_max": float(pred.max()), "true_min": float(true.min()),
            "true_max": float(true.max()), "range_overshoot": beyond / span if span > 0 else float("nan")}


def per_group(pred: np.ndarray, true: np.ndarray, groups: np.ndarray) -> list[dict]:
    """Per source group: size, mean true reward, bias (mean of prediction - truth: a group the surrogate
    under- or over-rates as a whole), MAE and (n >= 3) Spearman within the group; worst MAE first."""
    rows = []
    for g in np.unique(groups):
        sel = groups == g
        err = pred[sel] - true[sel]
        rows.append({"group": str(g), "n": int(sel.sum()), "true_mean": float(true[sel].mean()),
                     "bias": float(err.mean()), "mae": float(np.abs(err).mean()),
                     "spearman": _spearman(pred[sel], true[sel]) if sel.sum() >= 3 else float("nan")})
    return sorted(rows, key=lambda r: -r["mae"])


def fidelity_by_noise(pred_by_t: dict[int, np.ndarray], true) -> list[dict]:
    """Spearman, R² and MAE of a noise-aware surrogate at each diffusion timestep t."""
    rows = []
    for t in sorted(pred_by_t):
        m = fidelity_metrics(pred_by_t[t], true)
        rows.append({"t": int(t), "spearman": m["spearman"], "r2": m["r2"], "mae": m["mae"]})
    return rows


# ---------------------------------------------------------------- baselines


def pooled_latent_features(latents: torch.Tensor) -> np.ndarray:
    """(N, T, c, h, w) -> (N, 3c [+ c]) per-channel mean, std, mean |spatial gradient| [, mean |temporal diff|]:
    the raw part of the -stats heads' lrm.models.surrogate.channel_stats, over all frames."""
    x = latents.float()
    return channel_stats(x.transpose(1, 2) if x.shape[1] > 1 else x[:, 0], logs=False).numpy()


def features_of(batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Pooled features of a stream of latent batches, so a store is never loaded whole."""
    return np.concatenate([pooled_latent_features(b) for b in batches])


def fit_baselines(x_train: np.ndarray, y_train, x_val: np.ndarray, y_val,
                  label_transform: str = "none") -> dict[str, dict]:
    """Constant (train mean) and RidgeCV on standardised pooled features, scored on the val split.

    `label_transform` (lrm.labels: "none", "log" or "auto") is the scale ridge is fitted on; pass the
    surrogate's, so that both fit the same targets."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train, y_val = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
    tr = np.isfinite(y_train)
    constant = np.full(len(y_val), y_train[tr].mean())
    transform, _, _, shift = labels.label_statistics(y_train[tr], label_transform)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    ridge.fit(x_train[tr], labels.forward(y_train[tr], transform, shift))
    return {"constant": fidelity_metrics(constant, y_val),
            "ridge": fidelity_metrics(labels.inverse(ridge.predict(x_val), transform, shift), y_val)}


# ---------------------------------------------------------------- verdict


@dataclass
class FidelityReport:
    surrogate: dict  # fidelity_metrics of the surrogate on the scored rows
    baselines: dict  # name -> fidelity_metrics of each baseline on the same rows
    flags: list[str] = field(default_factory=list)  # plain-language warnings, one sentence each
    verdict: str = ""  # one line: "high / moderate / low trust — what passed and what failed"
    by_noise: list[dict] | None = None  # fidelity_by_noise rows for noise-aware surrogates
    trust: str = ""  # "high", "moderate" or "low": the verdict's first words, for styling and scripts
    checks: dict = field(default_factory=dict)  # "ranking", "level", "range" -> why it failed, or None

    def other_warnings(self) -> list[str]:
        """The flags the verdict line does not already say, to list beneath it."""
        return [f for f in self.flags if f not in self.verdict]


def _num(value: float) -> str:
    """A reward value for a sentence: 3 significant digits, thousands separated."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def ranking_problem(surrogate: dict, ridge: dict | None) -> str | None:
    """Why the surrogate cannot be trusted to order samples (what a tuner climbs), or None."""
    s = surrogate["spearman"]
    if not np.isfinite(s):
        return (f"ranking unmeasured: Spearman is undefined on these {surrogate['n']} rows (too few, or constant "
                "labels or predictions); judge it on more rows")
    if s < LOW_SPEARMAN:
        return f"misranks: Spearman {s:.3f} < {LOW_SPEARMAN}"
    if ridge is not None and np.isfinite(ridge["spearman"]) and not s > ridge["spearman"]:
        return (f"ranks no better than ridge on pooled latent statistics (Spearman {s:.3f} vs "
                f"{ridge['spearman']:.3f}): its gradient adds nothing a handful of channel statistics could not tell")
    return None


def level_problem(surrogate: dict, baselines: dict) -> str | None:
    """Why the surrogate's values are not the reward's values (R², and calibration against the constant
    predictor's error and ridge's calibration), or None."""
    r2, cal = surrogate["r2"], surrogate["calibration_error"]
    ridge, constant = baselines.get("ridge"), baselines.get("constant")
    if not np.isfinite(r2):
        return (f"level unmeasured: R² is undefined on these {surrogate['n']} rows (too few, or constant labels); "
                "judge it on more rows")
    if r2 < MIN_R2:
        return f"mis-levelled: R² {r2:.3f} < {MIN_R2}"
    if ridge is not None and np.isfinite(ridge["r2"]) and not r2 > ridge["r2"]:
        return f"mis-levelled: R² {r2:.3f} not above ridge's {ridge['r2']:.3f}"
    if constant is not None and cal > CALIBRATION_SHARE * constant["mae"]:
        return (f"mis-levelled: calibration error {_num(cal)} is {cal / constant['mae']:.0%} of the constant "
                f"predictor's mean error ({_num(constant['mae'])}; at most {CALIBRATION_SHARE:.0%})")
    if ridge is not None and 0 < RIDGE_CALIBRATION_FACTOR * ridge["calibration_error"] < cal:
        return (f"mis-levelled: calibration error {_num(cal)} is {cal / ridge['calibration_error']:.1f}x "
                f"ridge's ({_num(ridge['calibration_error'])})")
    return None


def range_problem(surrogate: dict) -> str | None:
    """Why the surrogate's predictions leave the reward's range (values a tuner could chase), or None."""
    over = surrogate["range_overshoot"]
    if not np.isfinite(over) or over <= RANGE_OVERSHOOT:
        return None
    low, high = surrogate["true_min"], surrogate["true_max"]
    side = "reach" if surrogate["pred_max"] - high >= low - surrogate["pred_min"] else "fall to"
    end = surrogate["pred_max"] if side == "reach" else surrogate["pred_min"]
    return (f"out of range: predictions {side} {_num(end)} where true values span {_num(low)} to {_num(high)} "
            f"({over:.0%} of that span beyond it; at most {RANGE_OVERSHOOT:.0%})")


def assess(surrogate: dict, baselines: dict, by_noise: list[dict] | None = None) -> FidelityReport:
    """Judge ranking, level and range together; flag what should worry a user; one-line verdict.

    low: it misorders samples (Spearman below LOW_SPEARMAN or not above ridge's). moderate: it ranks,
    but its level or range is off, its Spearman is short of HIGH_SPEARMAN, or a warning stands
    (few scored rows, mis-levelled groups, a noise level it cannot read). high: none of these.
    """
    s, r2 = surrogate["spearman"], surrogate["r2"]
    ridge = baselines.get("ridge")
    checks = {"ranking": ranking_problem(surrogate, ridge), "level": level_problem(surrogate, baselines),
              "range": range_problem(surrogate)}
    flags = [problem for problem in checks.values() if problem]
    if surrogate["n"] < FEW_HELD_OUT:
        low, high = spearman_interval(s, surrogate["n"])
        spread = (f"Spearman's 95% interval is about {low:.2f} to {high:.2f}" if np.isfinite(low)
                  else "too few to estimate Spearman's uncertainty")
        flags.append(f"only {surrogate['n']} scored samples: {spread}; score at least {FEW_HELD_OUT} "
                     "for a firm verdict")
    mislevelled = [g for g in surrogate.get("per_group", [])
                   if g["n"] >= 3 and abs(g["bias"]) > GROUP_BIAS_STDS * surrogate["true_std"]]
    if mislevelled:
        named = ", ".join(f"{g['group']} {'under' if g['bias'] < 0 else 'over'}-rated by {_num(abs(g['bias']))}"
                          for g in sorted(mislevelled, key=lambda g: -abs(g["bias"]))[:3])
        flags.append(f"mis-levels whole groups ({named}; the reward's spread is "
                     f"{_num(surrogate['true_std'])}): content unlike the training data, so check what it covers")
    if by_noise:
        worst = min(by_noise, key=lambda r: r["spearman"] if np.isfinite(r["spearman"]) else -1)
        if not np.isfinite(worst["spearman"]) or worst["spearman"] < LOW_SPEARMAN:
            flags.append(f"at noise level t={worst['t']} Spearman drops to {worst['spearman']:.3f}")

    versus = f", ridge {ridge['spearman']:.3f}" if ridge is not None else ""
    failed = [checks[k] for k in ("level", "range") if checks[k]]
    if checks["ranking"]:
        trust, why = "low", checks["ranking"] + (f"; also {' and '.join(p.split(':')[0] for p in failed)}" if failed else "")
    elif s < HIGH_SPEARMAN:
        trust, why = "moderate", (f"ranks fairly (Spearman {s:.3f} < {HIGH_SPEARMAN}{versus})"
                                  + (f" and {'; '.join(failed)}" if failed else "; level and range right"))
    elif failed:
        trust, why = "moderate", f"ranks well (Spearman {s:.3f}{versus}) but {'; '.join(failed)}"
    elif flags:
        trust, why = "moderate", f"ranks well, right level and range (Spearman {s:.3f}, R² {r2:.3f}), but {flags[0]}"
    else:
        trust = "high"
        why = (f"ranks well (Spearman {s:.3f}{versus}), right level (R² {r2:.3f}"
               + (f", ridge {ridge['r2']:.3f}" if ridge is not None else "") + ") and range")
    return FidelityReport(surrogate, baselines, flags, f"{trust} trust — {why}", by_noise, trust, checks)
