"""The runs an over-optimisation study compares (`lrm study overopt REWARD --launch`): one `lrm tune` run per
regulariser and seed, each in DIR/runs/<regulariser>-seed<S>, all with the same steps, evaluations and prompts.

Regularisers (REGULARISERS), all LRM fine-tuning (DOLLAR Eq. 11) of the same start:
- "none": through a fitted surrogate, frozen (--surrogate);
- "kl": the same, plus the KL-to-initial penalty lambda ||eps_theta - eps_init||^2 (lrm.tuning.kl_penalty);
- "concurrent": the surrogate trained alongside on the true reward of the student's samples (warm-started from
  --surrogate when given, else fresh);
- "ensemble": two or more fitted surrogates (--ensemble), tuned on their mean with their disagreement penalised
  (lrm.tuning.ensemble).
The surrogates are given, fitted beforehand by `lrm fit REWARD` in the student's latent space (an ensemble: the
same command with other --seed values); the study does not fit them itself, so every arm starts from the same
surrogate and the study's runs are the tuning runs only. Every input an arm needs is checked before the first run.
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


def check_inputs(config: LaunchConfig, surrogate: Path | None, ensemble: Sequence[Path]) -> None:
    """Refuse, before any run, an arm whose surrogates are missing (one line naming the flag)."""
    for arm in ("none", "kl"):
        if arm in config.regularisers and surrogate is None:
            raise ValueError(f"regulariser {arm!r} tunes through a fitted surrogate: give --surrogate DIR (fitted by "
                             "`lrm fit REWARD`)")
    if "ensemble" in config.regularisers and len(ensemble) < 2:
        raise ValueError("regulariser 'ensemble' needs two or more fitted surrogates: repeat --ensemble DIR")
    for path in [*([surrogate] if surrogate is not None else []), *ensemble]:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"surrogate folder {path} does not exist; pass the --out folder of `lrm fit`")


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
