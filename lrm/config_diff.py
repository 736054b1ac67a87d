"""Which settings differ between a saved run or store and the command resuming it, by key path."""

from __future__ import annotations


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
