import json
import re

import numpy as np

from lrm.fidelity import assess, fidelity_by_noise, fidelity_metrics, fit_baselines
from lrm.reports import figures, write_report
from lrm.reports.html import GROUPS_IN_METRICS, RESULT_KEYS, in_distribution

SCOPE = in_distribution(120, 400, "stores/proc")


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
                scope=SCOPE, summary={"reward": "sharpness", "label": "sharpness", "codec": "dct-v1", "n_train": 400, "n_val": 120})


def _refuse_nan(token: str):
    raise ValueError(f"metrics.json holds {token}, which JSON parsers other than Python's refuse")


def test_report_files_sections_and_metrics_keys(tmp_path):
    inputs = _fit_like_inputs()
    html_path = write_report(tmp_path, **inputs)
    page = html_path.read_text()
    for heading in ("Fidelity and baselines", "Learning curves", "Predicted vs true", "Calibration",
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
    assert set(metrics) == set(inputs["summary"]) | set(RESULT_KEYS)  # what `lrm report` strips to keep the facts
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


def _text(page: str) -> str:
    """The page's visible text: tags and inlined images removed."""
    return re.sub(r"<[^>]+>", " ", re.sub(r"data:image/png;base64,[^'\"]+", "", page))


def test_verdict_comes_first_then_scope_then_facts(tmp_path):
    page = write_report(tmp_path, **_fit_like_inputs()).read_text()
    verdict, scope, facts = page.index("Verdict:"), page.index("In distribution: scored on the 120 held-out rows of stores/proc"), page.index("<th>fact</th>")
    assert page.index("<h1>") < verdict < scope < facts
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scope"] == SCOPE and metrics["trust"] in ("high", "moderate", "low")
    assert set(metrics["checks"]) == {"ranking", "level", "range"}
    assert f"class='verdict {metrics['trust']}'" in page


def test_missing_metrics_read_as_a_dash_and_flags_as_words(tmp_path):
    inputs = _fit_like_inputs()
    inputs["summary"].update(stopped_early=False, noise_aware=True, data="", runs_codec_decoder=None, options={})
    text = _text(write_report(tmp_path, **inputs).read_text())
    assert "nan" not in text.lower().split() and "None" not in text and "False" not in text and "True" not in text
    assert re.search(r"spearman\s+[\d.]+\s+—\s+[\d.]+", text)  # the constant has no rank correlation
    assert re.search(r"stopped_early\s+no\b", text) and re.search(r"noise_aware\s+yes\b", text)
    for key in ("data", "runs_codec_decoder", "options"):
        assert re.search(rf"{key}\s+none\b", text), key


def test_one_row_groups_are_not_listed_and_many_groups_are_capped(tmp_path):
    inputs = _fit_like_inputs()
    true, pred = inputs["true"], inputs["pred"]
    singletons = np.arange(len(true)).astype(str)
    inputs["fidelity"] = assess(fidelity_metrics(pred, true, singletons), inputs["fidelity"].baselines)
    page = write_report(tmp_path / "one", **inputs).read_text()
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["per_group"] == [] and metrics["per_group_note"] == "not listed: each of the 120 scored groups holds one row"
    assert "Worst groups" not in page
    pairs = np.repeat(np.arange(len(true) // 2), 2).astype(str)
    inputs["fidelity"] = assess(fidelity_metrics(pred, true, pairs), inputs["fidelity"].baselines)
    write_report(tmp_path / "two", **inputs)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert len(metrics["per_group"]) == GROUPS_IN_METRICS
    assert metrics["per_group_note"] == f"the {GROUPS_IN_METRICS} worst of 60 groups by MAE"
    maes = [g["mae"] for g in metrics["per_group"]]
    assert maes == sorted(maes, reverse=True)


def test_example_captions_are_wrapped_whole(monkeypatch):
    shown = {}
    monkeypatch.setattr(figures, "_png", lambda fig, **_: shown.setdefault("fig", fig))
    caption = "/data/photos/holiday-2019/a-very-long-file-name-of-a-photo-from-the-beach.jpg"
    prompt = "a small red circle moving slowly to the left over a striped blue background at dusk"
    thumb = np.zeros((8, 8, 3), np.uint8)
    figures.examples([(thumb, caption, 1.0, 2.0), (thumb, prompt, 3.0, 4.0)], "best")
    titles = [ax.get_title() for ax in shown["fig"].axes]
    assert titles[0].split("\n", 1)[1].replace("\n", "") == caption  # a path is broken, not cut
    assert titles[1].split("\n", 1)[1].replace("\n", " ") == prompt
    assert all(len(line) <= figures.CAPTION_CHARS for t in titles for line in t.split("\n")[1:])


def test_prompts_with_dollar_signs_are_drawn_as_text_in_the_report_figures():
    """matplotlib reads $...$ as math: "price $x^$ here" raised a parse error and stopped the report."""
    from lrm.generators.report import sample_grid

    thumb = np.zeros((8, 8, 3), np.uint8)
    for prompt in ("price $x^$ here", "a $5 and $6 bill"):
        assert figures.examples([(thumb, prompt, 1.0, 2.0)], f"best of {prompt}")[:8] == b"\x89PNG\r\n\x1a\n"
        assert sample_grid(np.stack([thumb, thumb]), [prompt, prompt], 2)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tall_example_caption_stays_below_the_title_and_inside_the_figure(monkeypatch):
    # a six-line caption next to a two-line one ran into the figure's title (main job, worst examples)
    shown = {}
    monkeypatch.setattr(figures, "_png", lambda fig, **_: shown.setdefault("fig", fig))
    long = "a medium gray triangle and a small green triangle over a white gradient background, blurry, noisy, JPEG"
    thumb = np.zeros((8, 8, 3), np.uint8)
    figures.examples([(thumb, long, 1.0, 2.0), (thumb, "short", 3.0, 4.0), (thumb, long, 5.0, 6.0)], "worst")
    fig = shown["fig"]
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    figure = fig.bbox
    for ax in fig.axes:
        caption = ax.title.get_window_extent(renderer)
        assert caption.y1 <= title.y0, (caption, title)  # below the figure's title
        assert caption.y0 >= ax.get_window_extent(renderer).y1 - 1  # above its thumbnail
        assert figure.x0 <= caption.x0 and caption.x1 <= figure.x1  # not cut at the sides
    assert title.y1 <= figure.y1
