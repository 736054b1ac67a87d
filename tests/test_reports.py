import json
import re

import numpy as np

from lrm.fidelity import assess, fidelity_by_noise, fidelity_metrics, fit_baselines
from lrm.reports import write_report


def _fit_like_inputs():
    rng = np.random.default_rng(0)
    true = rng.normal(size=120)
    pred = true + 0.2 * rng.normal(size=120)
    groups = np.repeat(np.arange(30), 4).astype(str)
    x = np.stack([true + rng.normal(size=120), rng.normal(size=120)], axis=1)
    baselines = fit_baselines(x[:60], true[:60], x, true)
    noise = fidelity_by_noise({0: pred, 250: pred + rng.normal(size=120)}, true)
    fidelity = assess(fidelity_metrics(pred, true, groups), baselines, noise)
    history = [{"split": "train", "step": s, "loss": 1 / (s + 1)} for s in range(10, 100, 10)]
    history += [{"split": "val", "step": s, "spearman": 1 - 1 / (s + 2)} for s in range(20, 100, 20)]
    thumb = (np.zeros((16, 16, 3), np.uint8), "a red circle", 0.5, 0.4)
    return dict(fidelity=fidelity, history=history, pred=pred, true=true, groups=groups,
                thumbnails={"best": [thumb] * 3, "worst": [thumb] * 2},
                config={"steps": 100, "model": "image-cnn"},
                summary={"reward": "sharpness", "label": "sharpness", "codec": "dct-v1", "n_train": 400, "n_val": 120})


def _refuse_nan(token: str):
    raise ValueError(f"metrics.json holds {token}, which JSON parsers other than Python's refuse")


def test_report_files_sections_and_metrics_keys(tmp_path):
    html_path = write_report(tmp_path, **_fit_like_inputs())
    page = html_path.read_text()
    for heading in ("Held-out fidelity and baselines", "Learning curves", "Predicted vs true", "Calibration",
                    "Residuals", "Fidelity by noise level", "Best-predicted examples", "Worst-predicted examples",
                    "Worst groups", "Run configuration", "Verdict"):
        assert heading in page, heading
    # Self-contained: no external resources, every image inlined.
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert page.count("data:image/png;base64,") == 7
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=_refuse_nan)  # strict JSON
    assert metrics["baselines"]["constant"]["spearman"] is None  # a constant has no rank correlation: null, not NaN
    for key in ("reward", "label", "codec", "n_train", "n_val", "surrogate", "baselines", "flags", "verdict",
                "per_group", "by_noise"):
        assert key in metrics, key
    assert set(metrics["baselines"]) == {"constant", "ridge"}
    for key in ("spearman", "r2", "kendall", "pearson", "pairwise_accuracy", "calibration", "mse"):
        assert key in metrics["surrogate"], key
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == ["best_examples.png", "calibration.png", "learning_curves.png", "noise.png",
                    "residuals.png", "scatter.png", "worst_examples.png"]
    assert all((tmp_path / "figures" / p).stat().st_size > 1000 for p in pngs)


def test_report_without_optional_parts(tmp_path):
    inputs = _fit_like_inputs()
    inputs.update(thumbnails=None, groups=None)
    inputs["fidelity"].by_noise = None
    write_report(tmp_path, **inputs)
    page = (tmp_path / "report.html").read_text()
    assert "Fidelity by noise level" not in page and "Best-predicted" not in page
    assert not (tmp_path / "figures" / "noise.png").exists()
