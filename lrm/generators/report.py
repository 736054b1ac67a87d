"""The teacher run's report.html: the training loss and samples of the EMA teacher at fixed seeds and prompts.

Self-contained HTML (figures inlined, also written to figures/*.png), in the style of the fit report
(lrm.reports.html). Samples are decoded with the store's codec; a video teacher shows each clip's
first, middle and last frames.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from lrm.io import atomic_write_bytes, atomic_write_text
from lrm.reports.html import CSS, _img, _section, _table

SEEDS = (0, 1)  # noise seeds per prompt in the report's grid


def report_prompts(store, count: int) -> list[int]:
    """Rows of the store's first `count` distinct prompts (fixed, so every report shows the same ones)."""
    seen, rows = set(), []
    for i, prompt in enumerate(store.prompts or []):
        if prompt not in seen:
            seen.add(prompt)
            rows.append(i)
        if len(rows) == count:
            break
    return rows


def loss_curve(history: list[dict]) -> bytes:
    """PNG of the training loss (the prediction's MSE) against the step."""
    import matplotlib.pyplot as plt

    from lrm.reports.figures import _png

    fig, ax = plt.subplots(figsize=(6, 3.4))
    points = [(h["step"], h["loss"]) for h in history if h.get("split") == "train"]
    if points:
        ax.plot(*zip(*points), color="tab:blue")
    ax.set(xlabel="step", ylabel="denoising loss (MSE)", yscale="log", title="Training loss")
    ax.grid(alpha=0.3)
    return _png(fig)


def sample_grid(frames: np.ndarray, captions: list[str], columns: int) -> bytes:
    """PNG grid of uint8 frames (N, H, W, 3), `columns` per row, each titled by its caption (wrapped)."""
    import textwrap

    import matplotlib.pyplot as plt

    from lrm.reports.figures import _png

    rows = int(np.ceil(len(frames) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, frame, caption in zip(axes.flat, frames, captions):
        ax.imshow(frame, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(caption, 28)[:3]), fontsize=5.5, parse_math=False)  # "$5" is text
    return _png(fig)


def decoded_frames(latents: torch.Tensor, codec_settings: dict) -> np.ndarray:
    """Latents (N, T, c, h, w) -> uint8 frames (N, K, H, W, 3): every frame of images, first/middle/last of clips."""
    from lrm.codecs import from_settings

    codec = from_settings(codec_settings)
    with torch.no_grad():
        pixels = codec.decode(latents.cpu()).clamp(0, 1)  # (N, T, 3, H, W)
    t = pixels.shape[1]
    keep = sorted({0, t // 2, t - 1})
    return (pixels[:, keep] * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


def teacher_samples(model, store, rows: list[int], guidance: float, steps: int = 50,
                    seeds=SEEDS) -> tuple[np.ndarray, list[str]]:
    """Decoded samples of `model` for the prompts of store rows `rows` at each of `seeds`: (frames (N, K, H, W, 3),
    captions (N,)), ordered prompt-major."""
    from lrm.generators.training import sample_latents

    text, mask = store.text_embeddings(rows)
    prompts = [store.prompts[i] for i in rows]
    shape = tuple(store.latent_shape)
    latents = [sample_latents(model, text, mask, shape, guidance, steps, seed) for seed in seeds]  # S x (P, ...)
    stacked = torch.stack(latents, dim=1).flatten(0, 1)  # (P * S, T, c, h, w)
    return decoded_frames(stacked, store.codec_settings), [p for p in prompts for _ in seeds]


def write_teacher_report(out_dir: str | Path, model, store, history: list[dict], config) -> Path:
    """Write report.html and figures/{loss,samples}.png into out_dir; returns the HTML path."""
    out_dir = Path(out_dir)
    loss_png = loss_curve(history)
    rows = report_prompts(store, config.report_samples)
    frames, captions = teacher_samples(model, store, rows, config.report_guidance)
    n, k = frames.shape[:2]
    grid_png = sample_grid(frames.reshape(n * k, *frames.shape[2:]), [c for c in captions for _ in range(k)],
                           columns=2 * k if k > 1 else 8)
    atomic_write_bytes(out_dir / "figures" / "loss.png", loss_png)
    atomic_write_bytes(out_dir / "figures" / "samples.png", grid_png)
    last = history[-1] if history else {}
    facts = [["preset", config.preset], ["parameters", sum(p.numel() for p in model.parameters())],
             ["prediction", model.prediction], ["schedule", str(model.schedule_config)],
             ["store", str(store.path)], ["rows", len(store)], ["latent shape", str(tuple(store.latent_shape))],
             ["codec", store.codec_id], ["text encoder", store.text_encoder_id],
             ["steps", last.get("step", 0)], ["batch size", config.batch_size],
             ["final loss", last.get("loss", float("nan"))], ["training time (s)", last.get("elapsed_s", 0.0)]]
    body = "".join([
        f"<h1>Teacher: {html.escape(config.preset)}</h1>",
        _table(["", ""], facts),
        _section("Training loss", "Mean squared error of the prediction against its target (Eq. 13 for "
                 "conjugate-v), averaged over each logging interval.", _img(loss_png, "loss curve")),
        _section("Samples", f"The EMA teacher's 50-step DDIM samples at CFG {config.report_guidance}, seeds "
                 f"{', '.join(map(str, SEEDS))}, for the store's first {len(rows)} distinct prompts "
                 "(clips: first, middle and last frame).", _img(grid_png, "sample grid")),
    ])
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>Teacher report</title><style>{CSS}</style>" \
           f"</head><body>{body}</body></html>"
    return atomic_write_text(out_dir / "report.html", page)
