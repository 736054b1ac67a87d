"""Over-optimisation of a tuning run (DOLLAR Sec. 9.3; Gao et al. 2022), as pure analysis on its records.

    curves = Curves.from_records(json.loads(Path("RUN/records.json").read_text()))
    study = analyse(curves, StudyConfig(fidelity_threshold=0.7, distance_budget=0.05))
    study.verdict   # "gold peaks at step 340 (0.81) while the proxy keeps rising; ..."

A tuning run (lrm.tuning.tune, `lrm tune`) records at fixed prompts and seeds, every eval_every steps: the gold
reward (the pixel reward of the decoded samples), the proxy reward (the surrogate's score of the same latents),
the diversity (Vendi, DOLLAR Eq. 27) and the student's distance from its start, among them the relative parameter
distance ||theta - theta_0|| / ||theta_0|| and the DRaFT+-style KL-like eps distance mean ||eps_theta - eps_init||^2
(lrm.tuning.monitor). The distance d of the Gao fit and of the distance rule is Gao et al.'s d = sqrt(KL): the
square root of the eps distance, when every evaluation recorded one (every run of `lrm tune` since the monitor
measures it); older records fall back to the parameter distance. `distance_axis` makes that choice, and names
the measure it used (EPS_DISTANCE or PARAMETER_DISTANCE) for the report. Rewards where lower is better are
analysed on sign * gold, so "peak" is always the best gold.

- the gold peak: the evaluation with the best gold;
- Gao et al.'s fit: gold(d) - gold(0) = d (alpha - beta log d), linear least squares in (alpha, beta) on the
  evaluations with d > 0 (in sign * gold units); the fitted gold peaks at d* = exp(alpha / beta - 1) when
  beta > 0;
- early-stopping rules, each giving the step it stops at, the gold there as a share of the peak gain
  ((gold_stop - gold_0) / (gold_peak - gold_0)) and of the peak itself (gold_stop / gold_peak; its inverse when
  lower is better), and the steps saved against running to the end (a rule that never fires runs to the end):
  (a) "fidelity": the surrogate's fidelity on fresh samples (Spearman vs gold), averaged over the last
      `fidelity_window` evaluations, falls below `fidelity_threshold`;
  (b) "divergence": over the last `divergence_window` measurements, taken every `every` evaluations, the proxy
      rises while the gold falls;
  (c) "distance": d reaches `distance_budget` (in d's units: sqrt of the eps distance, or the parameter distance);
  (d) "disagreement": an ensemble of surrogates (lrm.tuning.ensemble) disagrees, on the fixed-seed samples, by
      `disagreement_factor` times its disagreement at the start (the members agree on what they were fitted on
      and part where the student leaves it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

RULES = ("fidelity", "divergence", "distance", "disagreement")  # the early-stopping rules, in table order
# the two measures d can be (distance_axis): Gao et al.'s sqrt(KL) where recorded, else the parameter distance
EPS_DISTANCE = "sqrt of the KL-like eps distance, sqrt(mean ||eps_theta - eps_init||^2) (Gao et al.'s d = sqrt(KL))"
PARAMETER_DISTANCE = "relative parameter distance ||theta - theta_0|| / ||theta_0|| (records without eps_distance)"


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Curves:
    """One tuning run's evaluations, in step order; NaN where a value was not measured."""

    steps: np.ndarray  # (E,) int, the generator step of each evaluation (0: before tuning)
    gold: np.ndarray  # (E,) mean true reward at fixed seeds, reward units
    proxy: np.ndarray  # (E,) mean surrogate score of the same latents; NaN without a surrogate
    distance: np.ndarray  # (E,) relative parameter distance ||theta - theta_0|| / ||theta_0|| from the initial student
    diversity: np.ndarray  # (E,) DOLLAR Eq. 27 Vendi diversity
    fidelity: np.ndarray  # (E,) surrogate Spearman vs gold on that evaluation's samples; NaN where unrecorded
    disagreement: np.ndarray | None = None  # (E,) an ensemble's std of member scores; None: all NaN (no ensemble)
    eps_distance: np.ndarray | None = None  # (E,) KL-like mean ||eps_theta - eps_init||^2; None: all NaN (older runs)

    def __post_init__(self) -> None:
        for name in ("disagreement", "eps_distance"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(len(self.steps), np.nan))

    @classmethod
    def from_records(cls, facts: dict) -> "Curves":
        """From the dict of a run's records.json: its "records" list (lrm.tuning.monitor.TuningRecord fields;
        an optional per-record "fidelity")."""
        records = facts.get("records") if isinstance(facts, dict) else None
        if not records:
            raise ValueError("records.json holds no evaluation records; write it with `lrm tune`")
        if not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in records):
            raise ValueError("records.json: every record needs an integer 'step'; write it with `lrm tune`")
        records = sorted(records, key=lambda r: r["step"])

        def column(key: str) -> np.ndarray:
            return np.array([_number(r.get(key)) for r in records], dtype=float)

        steps = np.array([r["step"] for r in records])
        return cls(steps, column("gold"), column("proxy"), column("distance"), column("diversity"),
                   column("fidelity"), column("disagreement"), column("eps_distance"))


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


@dataclass(frozen=True)
class StudyConfig:
    fidelity_threshold: float = 0.7  # rule (a): stop when the running fidelity falls below this Spearman
    fidelity_window: int = 1  # rule (a): evaluations averaged into the running fidelity
    every: int = 1  # rule (b): measure proxy and gold every N evaluations
    divergence_window: int = 2  # rule (b): measurements the proxy must rise and the gold fall over
    distance_budget: float | None = None  # rule (c): the largest d allowed (distance_axis' units); None: not applied
    disagreement_factor: float = 1.5  # rule (d): stop when an ensemble's disagreement reaches this x its start
    higher_is_better: bool = True  # the reward's direction (its spec)

    def __post_init__(self) -> None:
        for name in ("fidelity_window", "every", "divergence_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not -1 <= self.fidelity_threshold <= 1:
            raise ValueError(f"fidelity_threshold is a Spearman correlation: give one in [-1, 1], got "
                             f"{self.fidelity_threshold!r}")
        if not self.disagreement_factor > 0:
            raise ValueError(f"disagreement_factor must be positive, got {self.disagreement_factor!r}")
        if self.distance_budget is not None and not self.distance_budget > 0:
            raise ValueError(f"distance_budget must be positive, got {self.distance_budget!r}")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Peak:
    index: int  # evaluation index
    step: int
    gold: float  # reward units


@dataclass(frozen=True)
class GaoFit:
    """gold(d) - gold(0) = d (alpha - beta log d) in sign * gold units; NaN when fewer than 2 points with d > 0."""

    alpha: float
    beta: float
    distance: str  # which d: the measure on the x axis
    points: int  # evaluations used (d > 0, finite gold)
    rmse: float  # of the fit on those points, reward units
    d_star: float  # where the fitted curve peaks: exp(alpha / beta - 1) for beta > 0; NaN otherwise
    d: np.ndarray = field(repr=False)  # (G,) grid from 0 to the largest measured d
    fitted: np.ndarray = field(repr=False)  # (G,) fitted gold in reward units (gold(0) + sign * d (alpha - ...))


@dataclass(frozen=True)
class Stop:
    rule: str  # one of RULES
    condition: str  # what the rule checks, in words
    applied: bool  # False: the run lacks what the rule reads (then step is None)
    fired: bool  # the condition was met; False: the run goes to the end
    step: int | None  # where training stops
    gold: float  # gold at that step, reward units
    share_of_gain: float  # (gold_stop - gold_0) / (gold_peak - gold_0); NaN when the peak is the start
    share_of_peak: float  # gold_stop / gold_peak (lower is better: gold_peak / gold_stop); NaN unless both > 0
    steps_saved: int | None  # last step - stop step
    note: str  # why the rule was not applied, or ""


@dataclass(frozen=True)
class Study:
    peak: Peak
    proxy_keeps_rising: bool | None  # proxy at the end above its value at the gold peak; None without a proxy
    fit: GaoFit
    stops: list[Stop]
    verdict: str  # one line


# ---------------------------------------------------------------- analysis


class Trigger(NamedTuple):
    """Where a stopping rule fires on a run."""

    index: int | None  # evaluation index at which it fires; None: it never fires (or is not applied)
    applied: bool  # False: the run lacks what the rule reads
    note: str = ""  # why it was not applied


class DistanceAxis(NamedTuple):
    """The d of the Gao fit and of the distance rule."""

    values: np.ndarray  # (E,) d at each evaluation
    measure: str  # EPS_DISTANCE or PARAMETER_DISTANCE


def distance_axis(curves: Curves) -> DistanceAxis:
    """d = sqrt(eps distance) (Gao et al.'s sqrt(KL)) when every evaluation recorded a finite eps distance, else
    the relative parameter distance (records written before the monitor measured the eps distance)."""
    eps = curves.eps_distance
    if eps.size and np.isfinite(eps).all():
        return DistanceAxis(np.sqrt(np.clip(eps, 0.0, None)), EPS_DISTANCE)
    return DistanceAxis(curves.distance, PARAMETER_DISTANCE)


def gold_peak(curves: Curves, higher_is_better: bool = True) -> Peak:
    """The evaluation with the best finite gold (the first of ties)."""
    signed = _signed(curves.gold, higher_is_better)
    if not np.isfinite(signed).any():
        raise ValueError("the run's records hold no finite gold reward, so it has no peak")
    index = int(np.nanargmax(signed))
    return Peak(index, int(curves.steps[index]), float(curves.gold[index]))


def gao_fit(distance: np.ndarray, gold: np.ndarray, *, distance_name: str, higher_is_better: bool = True,
            grid: int = 100) -> GaoFit:
    """Least squares of y = sign (gold - gold(0)) on the design [d, -d log d] over the points with d > 0 and finite
    gold; gold(0) is the gold where d == 0 (the first such point), else the first point's gold."""
    distance, gold = np.asarray(distance, float), np.asarray(gold, float)
    sign = 1.0 if higher_is_better else -1.0
    at_zero = np.flatnonzero(distance == 0)
    base = gold[at_zero[0]] if at_zero.size else gold[0]
    keep = (distance > 0) & np.isfinite(distance) & np.isfinite(gold)
    d, y = distance[keep], sign * (gold[keep] - base)
    top = float(d.max()) if d.size else 0.0
    d_grid = np.linspace(0.0, top, grid)
    if d.size < 2 or not math.isfinite(base):
        nan = float("nan")
        return GaoFit(nan, nan, distance_name, int(d.size), nan, nan, d_grid, np.full(grid, nan))
    design = np.stack([d, -d * np.log(d)], axis=1)  # (P, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    rmse = float(np.sqrt(np.mean((design @ np.array([alpha, beta]) - y) ** 2)))
    d_star = float(math.exp(alpha / beta - 1.0)) if beta > 0 and alpha / beta - 1.0 < 700 else float("nan")
    return GaoFit(float(alpha), float(beta), distance_name, int(d.size), rmse, d_star, d_grid,
                  base + sign * gao_curve(d_grid, float(alpha), float(beta)))


def gao_curve(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """d (alpha - beta log d), with its limit 0 at d = 0."""
    d = np.asarray(d, float)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


def stop_on_fidelity(curves: Curves, threshold: float, window: int = 1) -> Trigger:
    """First evaluation (after the start) whose fidelity, averaged over the last `window` recorded ones, is below
    `threshold`; not applied when no evaluation recorded a fidelity."""
    if not np.isfinite(curves.fidelity).any():
        return Trigger(None, False, "the records hold no per-evaluation surrogate fidelity")
    for i in range(1, len(curves.steps)):
        recent = curves.fidelity[: i + 1][np.isfinite(curves.fidelity[: i + 1])][-window:]
        if np.isfinite(curves.fidelity[i]) and recent.mean() < threshold:
            return Trigger(i, True)
    return Trigger(None, True)


def stop_on_divergence(curves: Curves, every: int = 1, window: int = 2,
                       higher_is_better: bool = True) -> Trigger:
    """First measured evaluation k (every `every`-th) at which, against the measurement `window` before it, the
    (signed) proxy rose and the gold fell."""
    if not np.isfinite(curves.proxy).any():
        return Trigger(None, False, "the run has no proxy reward (no surrogate)")
    measured = np.arange(0, len(curves.steps), every)
    gold, proxy = _signed(curves.gold, higher_is_better), _signed(curves.proxy, higher_is_better)
    for j in range(window, len(measured)):
        now, then = measured[j], measured[j - window]
        if proxy[now] > proxy[then] and gold[now] < gold[then]:
            return Trigger(int(now), True)
    return Trigger(None, True)


def stop_on_distance(curves: Curves, budget: float | None) -> Trigger:
    """First evaluation whose d (distance_axis) reaches `budget`."""
    if budget is None:
        return Trigger(None, False, "no distance budget given")
    reached = np.flatnonzero(np.nan_to_num(distance_axis(curves).values, nan=-np.inf) >= budget)
    return Trigger(int(reached[0]) if reached.size else None, True)


def stop_on_disagreement(curves: Curves, factor: float) -> Trigger:
    """First evaluation (after the start) whose ensemble disagreement reaches `factor` times the start's."""
    start = curves.disagreement[0]
    if not (math.isfinite(start) and start > 0):
        return Trigger(None, False, "the run has no ensemble of surrogates (no disagreement at the start)")
    reached = np.flatnonzero(np.nan_to_num(curves.disagreement[1:], nan=-np.inf) >= factor * start)
    return Trigger(int(reached[0]) + 1 if reached.size else None, True)


def analyse(curves: Curves, config: StudyConfig = StudyConfig()) -> Study:
    """Peak, Gao fit, the three stopping rules and the verdict of one run."""
    hib = config.higher_is_better
    peak = gold_peak(curves, hib)
    axis = distance_axis(curves)
    fit = gao_fit(axis.values, curves.gold, distance_name=axis.measure, higher_is_better=hib)
    found = {
        "fidelity": (stop_on_fidelity(curves, config.fidelity_threshold, config.fidelity_window),
                     f"running fidelity < {config.fidelity_threshold:g}"),
        "divergence": (stop_on_divergence(curves, config.every, config.divergence_window, hib),
                       f"proxy up, gold down over {config.divergence_window} measurement(s) every "
                       f"{config.every} evaluation(s)"),
        "distance": (stop_on_distance(curves, config.distance_budget),
                     f"distance d >= {config.distance_budget:g}" if config.distance_budget is not None
                     else "distance budget"),
        "disagreement": (stop_on_disagreement(curves, config.disagreement_factor),
                         f"ensemble disagreement >= {config.disagreement_factor:g} x its start"),
    }
    stops = [_stop(curves, peak, rule, trigger, condition, hib) for rule, (trigger, condition) in found.items()]
    signed_proxy = _signed(curves.proxy, hib)
    rising = None
    if math.isfinite(signed_proxy[peak.index]) and math.isfinite(signed_proxy[-1]):
        rising = bool(signed_proxy[-1] > signed_proxy[peak.index])
    return Study(peak, rising, fit, stops, _verdict(curves, peak, rising, stops, hib))


def _stop(curves: Curves, peak: Peak, rule: str, trigger: Trigger, condition: str, higher_is_better: bool) -> Stop:
    if not trigger.applied:
        nan = float("nan")
        return Stop(rule, condition, False, False, None, nan, nan, nan, None, trigger.note)
    last = len(curves.steps) - 1
    index = last if trigger.index is None else trigger.index
    gold, start = float(curves.gold[index]), float(curves.gold[0])
    gain = peak.gold - start
    share_of_gain = (gold - start) / gain if gain != 0 and math.isfinite(gain) else float("nan")
    ratio = gold / peak.gold if higher_is_better else peak.gold / gold
    share_of_peak = ratio if gold > 0 and peak.gold > 0 else float("nan")
    return Stop(rule, condition, True, trigger.index is not None, int(curves.steps[index]), gold, share_of_gain,
                share_of_peak, int(curves.steps[last] - curves.steps[index]), trigger.note)


def _signed(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    return np.asarray(values, float) * (1.0 if higher_is_better else -1.0)


def best_stop(stops: list[Stop], higher_is_better: bool = True) -> Stop | None:
    """The fired rule that keeps the most gold (then saves the most steps); None when none fired at a finite gold."""
    fired = [s for s in stops if s.fired and math.isfinite(s.gold)]
    sign = 1.0 if higher_is_better else -1.0
    return max(fired, key=lambda s: (sign * s.gold, s.steps_saved)) if fired else None


def kept_gold(stop: Stop, peak: Peak) -> str:
    """What stopping there keeps: its share of the peak gold, or both golds where a share is undefined (gold <= 0)."""
    return (f"{stop.share_of_peak:.0%} of the peak gold" if math.isfinite(stop.share_of_peak)
            else f"gold {stop.gold:.4g} against the peak's {peak.gold:.4g}")


def _verdict(curves: Curves, peak: Peak, rising: bool | None, stops: list[Stop], higher_is_better: bool) -> str:
    """One line: the peak, whether the proxy keeps rising, and the fired rule that keeps the most gold."""
    last = len(curves.steps) - 1
    if peak.index == last:
        head = (f"gold still improving at the last evaluation (step {peak.step}, {peak.gold:.4g}): no peak within "
                "the run")
    else:
        head = f"gold peaks at step {peak.step} ({peak.gold:.4g}) of {int(curves.steps[last])}"
    if rising is True:
        head += ", proxy keeps rising"
    elif rising is False:
        head += ", proxy does not keep rising"
    best = best_stop(stops, higher_is_better)
    if best is None:
        return head + "; no stopping rule fired before the end"
    kept = kept_gold(best, peak)
    share = best.share_of_gain
    gain = ("" if not math.isfinite(share) else f", {share:.0%} of its gain over the start" if share >= 0
            else ", below the start")  # a share under 0 says only that: the gain may be noise-sized
    return f"{head}; stop when {best.condition} keeps {kept}{gain} (step {best.step}, {best.steps_saved} steps saved)"
