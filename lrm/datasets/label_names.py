"""Label columns by name: "REWARD" or "NAME=REWARD", "@decoded" for decoded pixels, and what a manifest
says about a column's failures. No tensors here, so commands can name columns before loading a reward."""

from __future__ import annotations

from collections import Counter

LABEL_PIXELS = ("source", "decoded")  # what a label scores: the media itself, or what the latents decode to
DECODED_SUFFIX = "@decoded"  # default name of a decoded label column: "niqe@decoded"


def parse_label(text: str) -> tuple[str, str]:
    """"NAME=REWARD" -> (NAME, REWARD); "REWARD" -> (REWARD, REWARD)."""
    name, sep, reward = text.partition("=")
    if sep and name and reward and ":" not in name:
        return name, reward
    return text, text


def label_column(name: str, pixels: str) -> str:
    """The default column of a label `name` scored on `pixels`: "niqe", or "niqe@decoded"."""
    return name + DECODED_SUFFIX if pixels == "decoded" else name


def column_name(text: str, pixels: str) -> str:
    """The column a label argument fills: NAME of "NAME=REWARD"; else the reward's name (a user
    metric "path/m.py:fn" by its function "fn"), with "@decoded" for decoded pixels."""
    name, reference = parse_label(text)
    if text != reference:
        return name
    from lrm.rewards import REWARDS

    return label_column(reference if reference in REWARDS else reference.rsplit(":", 1)[-1], pixels)


def most_common_failure(entry: dict) -> str | None:
    """"N rows failed, K of them with: REASON" for a manifest label entry; None when no row failed."""
    reasons = Counter(item["reason"] for item in entry["bad"]["items"])
    if not reasons:
        return None
    reason, times = reasons.most_common(1)[0]
    return f"{entry['bad']['count']} rows failed, {times} of them with: {reason}"


def check_distinct_columns(texts, pixels: str) -> None:
    """Refuse label arguments that would fill one column twice ("sharpness sharpness", "x=a x=b")."""
    names = [column_name(text, pixels) for text in texts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"column {', '.join(repeated)} is named more than once in {list(texts)}; name each "
                         "column once (NAME=REWARD gives another name)")


def as_matched(info: dict, other: dict) -> dict:
    """A column's label.json (or what a command asks of the column), `info`, as it is compared with `other`: where
    both record a user metric's code ("metric": file, function, sha256), by that code and not by how its reference
    is spelled (the reference, and the spec's name and description that repeat it, are left out); else as columns
    labelled before the code was recorded always were, by the reference as spelled."""
    if "metric" not in info or "metric" not in other:
        return {k: v for k, v in info.items() if k != "metric"}
    matched = {k: v for k, v in info.items() if k != "reward"}
    if "spec" in info:
        matched["spec"] = {k: v for k, v in info["spec"].items() if k not in ("name", "description")}
    return matched


def metric_code_changed(store, column: str, old: dict, new: dict) -> str | None:
    """The refusal, one line, when column `column` of `store` was computed by the same file and function of a user
    metric as `new` asks for (label.json's "metric"), but that code has changed since; else None."""
    saved, now = old.get("metric"), new.get("metric")
    if not (saved and now) or saved["sha256"] == now["sha256"] or {**saved, "sha256": 0} != {**now, "sha256": 0}:
        return None
    return (f"column {column!r} of {store}: the code of metric {now['function']} ({now['file'] or now['module']}) "
            f"changed since the column was computed; remove the column with `lrm store drop-label {store} {column}`, "
            "or give the new values a new column (lrm fit --label NAME, lrm label STORE NAME=REWARD)")
