"""The surrogates an over-optimisation study fits itself (`lrm study overopt REWARD --launch` without --surrogate or
--ensemble): `lrm fit REWARD` on the latent store of the generator it tunes, cached in the study's folder.

    paths = study_surrogates("jpeg-incompressibility", Path("runs/student"), Path("study"), seeds=[0, 1],
                             say=print)   # study/surrogates/seed0, study/surrogates/seed1

The store is the one the generator run records (its config.json "store": the teacher's training store, which a
distilled student records too), else its teacher run's, found where recorded or under the lrm cache's stores/. Each surrogate is
`lrm fit`'s job (lrm.pipeline.run_fit) with that store, its seed and `lrm fit`'s defaults otherwise: the reward's
default preset (image-cnn-stats for an image reward, ~0.2M parameters), up to FitConfig.steps steps with early
stopping, labels of the decoded latents (`--label-pixels decoded`: what a tuned generator is scored on). The store
gets the label column REWARD@decoded the first time (labelling decodes every row once); a store that already holds
it whole is not labelled again (one a kill left partial is finished, shard by shard). A surrogate folder that
holds a finished fit (report.html) of the same store, label, seed
and steps is reused without refitting; a finished fit of other settings is refused, and an interrupted one resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

SURROGATES = "surrogates"  # OUT/surrogates/seed<S>
LABEL_PIXELS = "decoded"  # a tuned generator's samples are scored on their decoded pixels (docs/main_job.md)


def surrogate_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / SURROGATES / f"seed{seed}"


def generator_store(generator: str | Path) -> Path:
    """The latent store the generator run (a distilled student or a teacher) was trained on: its recorded store,
    else its teacher run's, each as GeneratorRun.store_path finds it (also in a moved folder tree) or by folder name
    in the lrm cache's stores/ (a cache moved to another $LRM_CACHE keeps its folder names); a one-line error naming
    the fix when none exists."""
    from lrm.cache import cache_root
    from lrm.generators.runs import open_generator_run

    run = open_generator_run(generator)
    runs = [run]
    teacher = run.setting("teacher_run")
    if teacher is not None and Path(teacher).is_dir():
        runs.append(open_generator_run(teacher))
    found = next(filter(None, (r.store_path() for r in runs)), None)  # as recorded, or in a moved folder tree
    if found is not None:
        return found
    recorded = [r.setting("store") for r in runs]
    for store in filter(None, recorded):  # a cache moved to another $LRM_CACHE keeps its folder names
        candidate = cache_root() / "stores" / Path(store).name
        if (candidate / "manifest.json").is_file():
            return candidate
    where = f"its store {recorded[0]} is gone" if recorded[0] is not None else "it records no latent store"
    raise FileNotFoundError(f"cannot fit the study's surrogates on the latents of {run.run_dir}: {where}; pass "
                            "--surrogate DIR and --ensemble DIR (repeat) fitted by `lrm fit REWARD`")


def check_can_label(reward: str, store: Path) -> None:
    """Refuse, in one line, a REWARD that is no pixel reward lrm can load, or one that scores videos for a store of
    images: neither can label the store's decoded latents."""
    from lrm.datasets.store import LatentStore

    check_reward(reward, LatentStore.open(store).latent_shape[0] > 1, f"store {store}")


def check_reward(reward: str, video: bool, what: str) -> None:
    """Refuse, in one line, a REWARD that is no pixel reward lrm can load, or a video reward when `what` (the
    store, or the generator, named in the message) holds images."""
    from lrm.rewards import load

    fix = "pass --surrogate DIR and --ensemble DIR (repeat) fitted by `lrm fit`"
    try:
        spec = load(reward).spec
    except (KeyError, ValueError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)  # no KeyError quotes
        raise ValueError(f"cannot fit the study's surrogates: {reward!r} is no pixel reward that can label "
                         f"{what} ({message}); {fix}") from None
    if spec.is_video and not video:
        raise ValueError(f"cannot fit the study's surrogates: reward {reward!r} scores videos and {what} holds "
                         f"images, so it cannot label them; tune a video generator or {fix}")


def study_surrogates(reward: str, generator: str | Path, out: str | Path, seeds: Sequence[int], *,
                     steps: int | None = None, gradient_weight: float = 0.0, device: str = "cpu",
                     say: Callable[[str], None] = lambda line: None) -> list[Path]:
    """The saved surrogates (RUN/model of `lrm fit` runs: what `lrm tune --surrogate` reads) of REWARD on the
    generator's store, one per seed, fitted into OUT/surrogates/seed<S> or reused from there; one line to `say`
    per surrogate. steps: optimizer steps of each fit (None: `lrm fit`'s default); gradient_weight: `lrm fit
    --gradient-weight` (0: off)."""
    from lrm.configs import FitJob
    from lrm.fitting import MODEL_DIR
    from lrm.pipeline import run_fit

    store = generator_store(generator)
    check_can_label(reward, store)
    folders = []
    for seed in seeds:
        folder = surrogate_folder(out, seed)
        job = FitJob(reward=reward, store=str(store), out=str(folder), label_pixels=LABEL_PIXELS, seed=seed,
                     gradient_weight=gradient_weight, device=device, **({} if steps is None else {"steps": steps}))
        if finished_fit(folder, job):
            say(f"[surrogate seed {seed}] reusing {folder}")
        else:
            matched = f" --gradient-weight {gradient_weight:g}" if gradient_weight else ""
            say(f"[surrogate seed {seed}] lrm fit {reward} --store {store} --label-pixels {LABEL_PIXELS} --seed {seed} "
                f"--steps {job.steps}{matched} -> {folder}")
            fidelity = run_fit(job, progress=False).fidelity
            say(f"[surrogate seed {seed}] held-out Spearman {fidelity.surrogate['spearman']:.3f}: {fidelity.verdict}")
        folders.append(folder / MODEL_DIR)
    return folders


def finished_fit(folder: Path, job) -> bool:
    """True when `folder` holds a finished `lrm fit` run (report.html, model/) of the job's store, label, seed,
    steps and gradient weight; False when it holds none or an unfinished one (run_fit resumes it); a finished run
    of other settings is refused (one line naming the first difference)."""
    from lrm.config_diff import read_run_config

    config = folder / "config.json"
    if not ((folder / "report.html").is_file() and (folder / "model").is_dir() and config.is_file()):
        return False
    saved = read_run_config(config)
    fit = saved.get("fit") or {}
    found = {"store": str(Path(saved.get("store", "")).resolve()), "label": saved.get("label"),
             "seed": fit.get("seed"), "steps": fit.get("steps"), "gradient_weight": fit.get("gradient_weight", 0.0)}
    expected = {"store": str(Path(job.store).resolve()), "label": job.label_name(), "seed": job.seed,
                "steps": job.steps, "gradient_weight": job.gradient_weight}
    for key, value in expected.items():
        if found[key] != value:
            raise ValueError(f"{folder} holds a surrogate fitted with {key} {found[key]!r}, not {value!r}; remove it "
                             "or choose another --out")
    return True
