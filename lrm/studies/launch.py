"""The runs an over-optimisation study compares (`lrm study overopt REWARD --launch`): one `lrm tune` run per
regulariser and seed, each in DIR/runs/<regulariser>-seed<S>, all with the same steps, evaluations and prompts.

Regularisers (REGULARISERS), all LRM fine-tuning (DOLLAR Eq. 11) of the same start:
- "none": through a fitted surrogate, frozen (--surrogate);
- "kl": the same, plus the KL-to-initial penalty lambda ||eps_theta - eps_init||^2 (lrm.tuning.kl_penalty);
- "concurrent": the same surrogate, trained alongside on the true reward of the student's samples;
- "ensemble": two or more fitted surrogates (--ensemble), tuned on their mean with their disagreement penalised
  (lrm.tuning.ensemble).
Surrogates that are not given are fitted by the study itself (lrm.studies.surrogates: `lrm fit REWARD` on the
generator's latent store, cached in DIR/surrogates/seed<S>): seed 0 stands in for --surrogate, seeds
0..ensemble_size-1 for the ensemble's members, so when the study fits both, every arm starts from the same seed-0
surrogate; a given --surrogate or --ensemble is used as given (the other arms' surrogates are then other fits).
Every input an arm needs is checked before the first fit or run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REGULARISERS = ("none", "kl", "concurrent", "ensemble")
RUNS = "runs"  # DIR/runs/<regulariser>-seed<S>


@dataclass(frozen=True)
class LaunchConfig:
    regularisers: tuple[str, ...] = REGULARISERS  # the arms, in report order
    seeds: tuple[int, ...] = (0, 1, 2)  # one run per seed and arm (issue 25's benchmark: 3 seeds)
    kl_weight: float = 0.1  # the "kl" arm's lambda (in the units of mean ||eps gap||^2 against L_FT's std units)
    disagreement_weight: float = 1.0  # the "ensemble" arm's weight of the members' std (reward std units)
    ensemble_size: int = 2  # members the study fits for the "ensemble" arm when none are given (seeds 0..K-1)
    fit_steps: int | None = None  # optimizer steps of each surrogate the study fits; None: `lrm fit`'s default

    def __post_init__(self) -> None:
        unknown = [r for r in self.regularisers if r not in REGULARISERS]
        if unknown or not self.regularisers:
            raise ValueError(f"unknown regulariser(s) {unknown or '(none given)'}; choose from "
                             f"{','.join(REGULARISERS)}")
        if len(set(self.regularisers)) != len(self.regularisers) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"regularisers and seeds must not repeat, got {list(self.regularisers)} and "
                             f"{list(self.seeds)}")
        if not self.seeds:
            raise ValueError("give at least one seed, e.g. --seeds 0,1,2")
        if not self.kl_weight > 0:
            raise ValueError(f"the kl arm needs a positive --kl-weight, got {self.kl_weight}")
        if not self.disagreement_weight >= 0:
            raise ValueError(f"--disagreement-weight must be >= 0, got {self.disagreement_weight}")
        if self.ensemble_size < 2:
            raise ValueError(f"an ensemble needs two or more members: --ensemble-size >= 2, got {self.ensemble_size}")
        if self.fit_steps is not None and self.fit_steps < 1:
            raise ValueError(f"--fit-steps must be a positive integer, got {self.fit_steps}")


def parse_names(text: str) -> tuple[str, ...]:
    """'none, kl' -> ('none', 'kl')."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2), with a one-line error for anything but integers."""
    try:
        return tuple(int(s) for s in parse_names(text))
    except ValueError:
        raise ValueError(f"seeds must be integers separated by commas, e.g. 0,1,2; got {text!r}") from None


def run_folder(out: str | Path, regulariser: str, seed: int) -> Path:
    return Path(out) / RUNS / f"{regulariser}-seed{seed}"


def check_inputs(surrogate: Path | None, ensemble: Sequence[Path]) -> None:
    """Refuse, before any fit or run, surrogates that are given but missing, and an ensemble of one (one line
    naming the flag)."""
    if len(ensemble) == 1:
        raise ValueError("regulariser 'ensemble' needs two or more fitted surrogates: repeat --ensemble DIR, or give "
                         "none and the study fits --ensemble-size of them")
    for path in [*([surrogate] if surrogate is not None else []), *ensemble]:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"surrogate folder {path} does not exist; pass the model/ folder of an `lrm fit` "
                                    "run (RUN/model), or leave it out and the study fits one")


def seeds_to_fit(config: LaunchConfig, surrogate: Path | None, ensemble: Sequence[Path]) -> list[int]:
    """The seeds of the surrogates the study fits itself: 0 in place of a missing --surrogate (arms none, kl,
    concurrent), 0..ensemble_size-1 in place of missing --ensemble members."""
    seeds = set()
    if surrogate is None and {"none", "kl", "concurrent"} & set(config.regularisers):
        seeds.add(0)
    if not ensemble and "ensemble" in config.regularisers:
        seeds.update(range(config.ensemble_size))
    return sorted(seeds)


def tune_options(regulariser: str, config: LaunchConfig, surrogate: Path | None,
                 ensemble: Sequence[Path]) -> dict:
    """The `lrm tune` options (its keyword names) that make the arm `regulariser`."""
    if regulariser == "none":
        return {"surrogate": surrogate}
    if regulariser == "kl":
        return {"surrogate": surrogate, "kl_weight": config.kl_weight}
    if regulariser == "concurrent":
        return {"surrogate": surrogate, "concurrent": True}
    return {"ensemble": list(ensemble), "disagreement_weight": config.disagreement_weight}
