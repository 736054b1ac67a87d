"""`lrm report` as a library call: judge a fitted surrogate again, in or out of distribution.

    report_run("runs/brisque")                        # its held-out rows, as `lrm fit` reported them
    report_run("runs/brisque", store="stores/other")  # every row of another store

Either way the constant and ridge baselines are fitted on the surrogate's own training rows (the
rows of the run's store that its recorded split trained on), so surrogate and baselines are judged
on the same rows: out of distribution all three meet the other store's content for the first time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrm.config_diff import own_store
from lrm.datasets.store import LatentStore
from lrm.fidelity import FidelityReport


@dataclass
class FittedRun:
    run_dir: Path  # what `lrm fit` wrote
    config: dict  # its config.json: {"fit": FitConfig fields, "label", "store", ...}
    store: LatentStore  # the store the surrogate was fitted on
    label: str  # the label column it imitates
    train_rows: np.ndarray  # rows of `store` it was fitted on (finite labels)
    val_rows: np.ndarray  # rows of `store` it was validated on (finite labels)


@dataclass
class ReportOutcome:
    out_dir: Path  # where report.html, metrics.json and figures/ were written
    fidelity: FidelityReport  # metrics, baselines, flags, verdict
    scope: str  # the sentence saying which rows were scored and where the baselines were fitted


def resolution_note(shape, fitted_shape) -> str:
    """A sentence when the judged latents (T, c, h, w) are of another size than the fitted ones: the surrogate reads
    any size, so it scores them, but what it learnt at one resolution is then judged at another."""
    (h, w), (fh, fw) = tuple(shape[-2:]), tuple(fitted_shape[-2:])
    if (h, w) == (fh, fw):
        return ""
    return (f" Its latents are {h} x {w}, the fitted ones {fh} x {fw}: this also judges the surrogate at another "
            "resolution than it learnt.")


def open_run(run_dir: str | Path) -> FittedRun:
    """The run's store, label and split, recomputed from its config.json exactly as the fit drew them."""
    from lrm.fitting import FitConfig, split_rows

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json: it is not a run of `lrm fit`; pass the folder "
                                "`lrm fit` wrote (its --out, default runs/<label>)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is damaged ({error}); re-run `lrm fit` into a new --out folder") from None
    other = not_a_fit_run(run_dir, config)
    if other:
        raise ValueError(other)
    try:
        label, store_path, fit = config["label"], Path(own_store(config["store"], run_dir)), config["fit"]
    except (KeyError, TypeError) as error:
        missing = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{config_path} is damaged ({missing}); re-run `lrm fit` into a new --out folder") from None
    if not (run_dir / "model" / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is an unfinished fit (no model/ yet): re-run the same `lrm fit` to "
                                f"resume it, then `lrm report {run_dir}`")
    if not (store_path / "manifest.json").is_file():
        raise FileNotFoundError(f"the store {store_path} that run {run_dir} was fitted on is missing; the baselines "
                                "are fitted on its training rows, so put it back at that path")
    store = LatentStore.open(store_path)
    known = {f.name for f in dataclasses.fields(FitConfig)}
    split_config = dataclasses.replace(FitConfig(), **{k: v for k, v in fit.items() if k in known})
    train_rows, val_rows, _ = split_rows(store, store.label(label), split_config)
    recorded = (config.get("train_size"), config.get("val_size"))
    if None not in recorded and recorded != (len(train_rows), len(val_rows)):
        raise ValueError(f"store {store_path} no longer gives the split run {run_dir} was fitted on ({recorded[0]} "
                         f"training and {recorded[1]} held-out rows recorded, {len(train_rows)} and {len(val_rows)} "
                         "now): its rows or label changed; report on the store the run was fitted on")
    return FittedRun(run_dir, config, store, label, train_rows, val_rows)


TAKES = "`lrm report` takes the run folders of `lrm fit` and `lrm tune`"


def not_a_fit_run(folder: Path, config) -> str | None:
    """The one-line refusal for a folder whose config.json belongs to something other than a run of `lrm fit`
    (a student run of `lrm distill`, a teacher run, a tuning run without records.json, a saved model folder):
    what the folder is and where its report is; None for a run of `lrm fit` (or a config.json of unknown
    shape, which open_run calls damaged)."""
    from lrm.config_diff import run_kind

    if not isinstance(config, dict) or "fit" in config:
        return None
    own_report = folder / "report.html"
    if "job" in config or "teacher" in config:
        command = "lrm distill" if "job" in config else "lrm teacher train"
        where = (f"its report is {own_report}, written by `{command}` as it trains" if own_report.is_file() else
                 f"`{command}` writes its report.html as it trains; re-run the same command to resume it")
        return f"{folder} holds {run_kind(config)}, not a surrogate run: {where} ({TAKES})"
    if "tune" in config:
        return (f"{folder} holds {run_kind(config)} that has not written records.json yet (unfinished): re-run the "
                f"same `lrm tune` to resume it, then `lrm report {folder}`")
    kind = config.get("format")
    if kind == "lrm-surrogate":
        parent = folder.resolve().parent
        return (f"{folder} is a saved surrogate (the model/ folder of a `lrm fit` run); pass the run folder that "
                f"holds it" + (f": lrm report {folder.parent}" if (parent / "config.json").is_file() else "")
                + f" ({TAKES})")
    if kind == "lrm-denoiser":
        return (f"{folder} is a saved generator (a teacher's or student's model folder), which lrm report does not "
                f"judge: the `lrm teacher train` or `lrm distill` run that wrote it has its own report.html ({TAKES})")
    return None


def label_other_store(run: FittedRun, target: LatentStore, progress: bool = True) -> LatentStore:
    """Make sure `target` holds the run's label column, computed as the run's was (reward, options and
    pixels); label it when missing, refuse a column computed otherwise (lrm.pipeline.check_label_column)."""
    from lrm.datasets.labelling import add_labels
    from lrm.pipeline import FitJob, check_label_column
    from lrm.rewards.custom import metric_identity

    info = run.store.label_info(run.label)
    options = info.get("options") or None
    fitted = info.get("metric")  # a user metric's code the run's own column was computed by
    reward = info["reward"]
    if fitted:  # labelled by that code, wherever the command runs from, and refused if it has changed since
        reward = f"{fitted['module'] or fitted['file']}:{fitted['function']}"
        where = fitted["file"] or fitted["module"]
        if run.label not in target.labels:
            if fitted["file"] and not Path(fitted["file"]).is_file():
                raise ValueError(f"metric file {where}, whose labels {run.run_dir} was fitted on, is gone; put it "
                                 "back to label another store")
            if metric_identity(reward)["sha256"] != fitted["sha256"]:
                raise ValueError(f"the code of metric {fitted['function']} ({where}) changed since {run.run_dir} was "
                                 "fitted on its labels; labels of the new code would judge the surrogate against "
                                 "another metric: restore that code, or fit a new surrogate")
    if run.label not in target.labels:
        target = add_labels(target.path, [f"{run.label}={reward}"], options=options, pixels=info["pixels"],
                            progress=progress)
    check_label_column(target, run.label, FitJob(reward=reward, reward_options=options, label_pixels=info["pixels"]),
                       metric=fitted)
    return target


def _fit_facts(run: FittedRun) -> dict:
    """The facts `lrm fit` showed at the top of its report (metrics.json less the results)."""
    from lrm.reports.html import RESULT_KEYS

    try:
        saved = json.loads((run.run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in saved.items() if k not in RESULT_KEYS} if isinstance(saved, dict) else {}


def _history(run: FittedRun) -> list[dict]:
    """The fit's training and validation records (metrics.jsonl) for the learning curves."""
    path = run.run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted fit: the curves go without it
    return records


def same_procedural_clips(a: LatentStore, b: LatentStore) -> bool:
    """True when both stores encode procedural clips of one configuration (seed, world, frames, size) in one latent
    space: clip i of a seed is the same clip whatever the count, so their first rows are the same data."""
    source_a, source_b = a.manifest.get("source") or {}, b.manifest.get("source") or {}
    return (source_a.get("kind") == source_b.get("kind") == "procedural" and source_a.get("config") is not None
            and source_a.get("config") == source_b.get("config") and a.codec_settings == b.codec_settings)


def report_run(run_dir: str | Path, store: str | Path | None = None, out: str | Path | None = None,
               progress: bool = True) -> ReportOutcome:
    """Score the run's surrogate and write report.html, metrics.json and figures/.

    Without `store`: its held-out rows, next to baselines fitted on its training rows, written into the run
    itself (by default), as `lrm fit` does. With `store`: every row of that store with a label, written into
    RUN/eval-<store name> (by default), the baselines still fitted on the run's own training rows.
    """
    from lrm.models import LatentRewardModel
    from lrm.pipeline import evaluate
    from lrm.reports.html import in_distribution

    run = open_run(run_dir)
    fit = run.config["fit"]
    timesteps = tuple(fit.get("eval_timesteps", ())) if fit.get("noise_aware") else ()
    if store is None:
        model = LatentRewardModel.from_pretrained(run.run_dir / "model", codec_settings=run.store.codec_settings)
        out_dir = Path(out) if out else run.run_dir
        scope = in_distribution(len(run.val_rows), len(run.train_rows), run.store.path)
        summary = {**_fit_facts(run), "n_train": len(run.train_rows), "n_val": len(run.val_rows)}
        summary.setdefault("reward", model.info.reward_name)
        fidelity = evaluate(model, run.store, run.label, run.train_rows, run.val_rows, out_dir,
                            history=_history(run), config={**fit, "label": run.label, "store": str(run.store.path)},
                            summary=summary, noise_timesteps=timesteps, noise_seed=int(fit.get("seed", 0)),
                            scope=scope)
        return ReportOutcome(out_dir, fidelity, scope)

    target = LatentStore.open(store)
    if target.path.resolve() == run.store.path.resolve():
        raise ValueError(f"--store {store} is the store {run.run_dir} was fitted on, so every row would include its "
                         f"training rows; run `lrm report {run.run_dir}` without --store for its held-out report")
    if same_procedural_clips(target, run.store):
        other_seed = int(run.store.manifest["source"]["config"].get("seed", 0)) + 1
        raise ValueError(f"--store {store} holds the same procedural clips as the store {run.run_dir} was fitted on "
                         f"(one seed, world, frames and size: clip i is the same clip in both), so its rows include "
                         f"training rows; encode another seed (`lrm encode procedural:N --seed {other_seed} ...`)")
    frames, fitted_frames = target.latent_shape[0], run.store.latent_shape[0]
    if frames != fitted_frames:  # the baselines read pooled features whose length depends on the frame count
        kind = lambda t: f"clips of {t} frames" if t > 1 else "still images"  # noqa: E731
        raise ValueError(f"--store {store} holds {kind(frames)} (latent frames), but {run.run_dir} was fitted on "
                         f"{kind(fitted_frames)}; judge it on a store of {kind(fitted_frames)} (`lrm encode ... "
                         f"--frames {fitted_frames}`)")
    model = LatentRewardModel.from_pretrained(run.run_dir / "model", codec_settings=target.codec_settings)
    if model.text_dim is not None and target.text_encoder_id != model.info.text_encoder_id:
        raise ValueError(f"surrogate {run.run_dir / 'model'} reads prompts embedded by {model.info.text_encoder_id}, "
                         f"but store {target.path} holds {target.text_encoder_id or 'no'} text embeddings; encode it "
                         f"again with `lrm encode ... --text {model.info.text_encoder_id}`")
    target = label_other_store(run, target, progress)
    labels = target.label(run.label)
    rows = np.flatnonzero(np.isfinite(labels))
    if not len(rows):
        from lrm.datasets.label_names import most_common_failure

        failure = most_common_failure(target.manifest["labels"][run.label]) or "every row is NaN"
        raise ValueError(f"column {run.label!r} of {target.path} has no finite value to judge the surrogate on "
                         f"({failure}); remove it with `lrm store drop-label {target.path} {run.label}` and run "
                         "lrm report again to relabel it")
    unlabelled = len(target) - len(rows)
    scope = (f"Out of distribution: scored on every row of {target.path} ({len(rows)} rows"
             + (f"; {unlabelled} whose reward failed skipped" if unlabelled else "")
             + f"), a store the surrogate never trained on; the surrogate and both baselines were fitted on the "
             f"{len(run.train_rows)} training rows of {run.store.path}, so all three are judged on the same rows."
             + resolution_note(target.latent_shape, run.store.latent_shape))
    spec = model.info.reward_spec or {}
    summary = {"reward": model.info.reward_name, "label": run.label, "label_pixels": target.label_pixels(run.label),
               "units": spec.get("units", ""), "codec": target.codec_id, "store": str(target.path),
               "fitted_on": str(run.store.path), "surrogate": str(run.run_dir / "model"), "preset": model.preset,
               "n_train": len(run.train_rows), "n_val": len(rows), "unlabelled_rows": unlabelled}
    out_dir = Path(out) if out else run.run_dir / f"eval-{target.path.name}"
    fidelity = evaluate(model, target, run.label, run.train_rows, rows, out_dir, history=[],
                        config={"run": str(run.run_dir), "store": str(target.path), "rows": "every row with a label"},
                        summary=summary, noise_timesteps=timesteps, noise_seed=int(fit.get("seed", 0)),
                        train_store=run.store, scope=scope,
                        title=f"Surrogate of {model.info.reward_name} on {target.path.name}")
    return ReportOutcome(out_dir, fidelity, scope)
