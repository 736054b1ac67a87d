"""Which settings differ between a saved run or store and the command resuming it, by key path; and whether a
folder holds another command's run."""

from __future__ import annotations

from pathlib import Path

# the key of each command's settings in its run's config.json -> what such a run is
RUN_KINDS = {"fit": "a surrogate run of `lrm fit`", "teacher": "a teacher run of `lrm teacher train`",
             "job": "a student run of `lrm distill`", "tune": "a tuning run of `lrm tune`"}


def read_run_config(path):
    """A run's config.json (`path`); a damaged one is one ValueError naming it and the fix."""
    from lrm.io import read_json

    return read_json(path, f"start the run over in another --out, or delete {path.parent}")


def own_store(recorded, run_dir) -> str | None:
    """The store path a run recorded, as it is now: run_dir/store, resolved, when the run encoded its own store there
    (it recorded "<its folder then>/store") and run_dir holds it, so a run folder moved or copied whole keeps its
    store; else the recorded path as is (None when none)."""
    own = Path(run_dir) / "store"
    if recorded is not None and Path(recorded).name == "store" and (own / "manifest.json").is_file():
        return str(own.resolve())
    return recorded


def run_kind(saved) -> str | None:
    """What run a config.json's content (`saved`) belongs to (RUN_KINDS' wording); None for anything else."""
    return next((kind for name, kind in RUN_KINDS.items() if name in saved), None) if isinstance(saved, dict) else None


def refuse_run_folder(folder, writes: str) -> None:
    """One-line ValueError when `folder` holds a run of any command (its config.json names one): a command that
    writes `writes` (its report, metrics.json, ...) there would overwrite that run's own files."""
    import json

    try:
        saved = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return
    what = run_kind(saved)
    if what is not None:
        raise ValueError(f"--out {folder} holds {what}: {writes} would overwrite its files; pass another --out")


def refuse_other_run(folder, saved, key: str) -> None:
    """One-line ValueError when `saved` (a run folder's config.json) is another command's run than the one whose
    settings live under `key`: resuming it would compare unrelated settings."""
    if not isinstance(saved, dict) or key in saved:
        return
    what = run_kind(saved)
    if what is not None:
        raise ValueError(f"{folder} holds {what}, not {RUN_KINDS[key]}; pass a new --out")


def refuse_other_run_in(folder, key: str) -> None:
    """refuse_other_run on `folder`'s config.json when it has one: before a command does any work for its run."""
    config = Path(folder) / "config.json"
    if config.is_file():
        refuse_other_run(folder, read_run_config(config), key)


def differences(saved, now, path: str = "") -> list[str]:
    """['fit.steps: saved 2000, now 500', ...]: the leaves of two JSON-like records that differ.

    Nested dicts are compared key by key, so a message names only what changed instead of
    printing both whole records; other values (lists included) are compared whole.
    """
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in list(saved) + [k for k in now if k not in saved]:
            found += differences(saved.get(key), now.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [] if saved == now else [f"{path or 'value'}: saved {saved!r}, now {now!r}"]
