"""Fixed-seed logging of a distillation run (the trainer's on_step hook) and the run's report.html.

RUN/metrics.jsonl gets one record per generator step and one per fixed-seed log:

    {"split": "train", "step", "losses": {term or role: unweighted loss}, "skipped", "seconds",
     "peak_memory_mb" (CUDA peak of the step, null on the CPU), "peak_rss_mb" (the process's peak resident set)}
    {"split": "eval", "step", "frechet", "alignment": {color, shape, motion} | null, "vendi" | null, "grid",
     "nonfinite", "seconds"}

A log (at step 0 of a fresh run, every `eval_every` steps and after the last) samples the student with its
few-step sampler (cfg 1) for the teacher store's first `eval_prompts` distinct prompts (their stored text
embeddings) at seeds 0 .. eval_seeds - 1, decodes them into RUN/grids/step-NNNNNNN.png and measures
(lrm.evaluation): the Frechet distance of pooled latent statistics to reference latents spread over the
store, prompt alignment (procedural captions only; motion only for clips whose captions name a direction,
else null) and Vendi per prompt over the decoded pixels. The same seeds, prompts and sampler at every log,
so the curves and grids compare across training. Logging draws from its own generators only, so it does
not change the run (exact resume holds). A student whose samples hold NaN or Inf ("nonfinite": how many) gets
NaN measures, recorded, not raised: the run goes on (the trainer skips and counts non-finite updates) and its
resume does not die at the same log again.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import torch

from lrm import distributed
from lrm.io import atomic_write_bytes, atomic_write_text
from lrm.tuning.memory import peak_rss_mb

METRICS = "metrics.jsonl"
GRIDS = "grids"
GRIDS_SHOWN = 8  # grids in report.html: spread over training, the last included


@torch.no_grad()
def student_latents(student, text: torch.Tensor, mask: torch.Tensor, seeds: list[int], latent_shape,
                    steps: int) -> torch.Tensor:
    """(N, T, c, h, w) few-step samples (cfg 1) for text (N, L, D) / mask (N, L), x_T and the re-noising drawn
    from each sample's own seeded generator: the samples `lrm sample` makes of the exported student."""
    from lrm.diffusion import samplers
    from lrm.diffusion.schedules import schedule_from_config
    from lrm.generators.sampling import guided, per_sample_noise

    device = next(student.parameters()).device
    schedule = schedule_from_config(student.schedule_config)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x_T = torch.stack([torch.randn(tuple(latent_shape), generator=g) for g in generators]).to(device)
    denoise = guided(student, text.to(device), mask.to(device).bool(), 1.0)
    x0 = samplers.sample_few_step(denoise, x_T, schedule.timesteps(steps), schedule, student.prediction,
                                  noise=per_sample_noise(generators))
    return x0.float().cpu()


class Monitor:
    """on_step hook of Distiller.fit: writes metrics.jsonl, the grids and report.html (see the module docstring)."""

    def __init__(self, run_dir: str | Path, distiller, store, job, progress: bool = False):
        from lrm.codecs import from_settings
        from lrm.evaluation.alignment import caption_objects
        from lrm.evaluation.report import store_reference
        from lrm.generators.report import report_prompts

        self.run_dir, self.distiller, self.job = Path(run_dir), distiller, job
        self.latent_shape = tuple(store.latent_shape)
        rows = report_prompts(store, job.eval_prompts) or list(range(min(job.eval_prompts, len(store))))
        prompts = [store.prompts[i] if store.prompts else f"store row {i}" for i in rows]
        text, mask = store.text_embeddings(rows)  # (P, L, D), (P, L)
        seeds = list(range(job.eval_seeds))
        self.prompts = [p for p in prompts for _ in seeds]  # prompt-major, as lrm sample's grid
        self.seeds = seeds * len(prompts)
        self.text, self.mask = text.repeat_interleave(len(seeds), 0), mask.repeat_interleave(len(seeds), 0)
        self.procedural = all(caption_objects(p) for p in prompts)
        self.codec = from_settings(store.codec_settings)
        self.reference = store_reference(store.path, store.codec_settings, self.latent_shape, job.reference_count)
        self.reference_name = f"{self.reference.shape[0]} latents spread over the teacher's store {store.path}"
        self.records: list[dict] = []
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=job.steps, initial=min(distiller.step, job.steps), desc="distill", unit="step",
                            leave=False, dynamic_ncols=True)

    # ---------------------------------------------------------------- the hook

    def start(self) -> None:
        """Keep the records up to the trainer's step (a resumed run drops what a killed run wrote after its last
        checkpoint); log the initial student of a fresh run, and a resumed run's evaluation at its step when that
        step is one the uninterrupted run evaluates (step 0 or a multiple of eval_every) and its record is missing."""
        path = self.run_dir / METRICS
        if path.is_file():
            old = []
            for line in path.read_text().splitlines():
                try:
                    old.append(json.loads(line))
                except json.JSONDecodeError:  # cut by a killed run, after its last checkpoint: dropped below
                    break
            self.records = [r for r in old if r["step"] <= self.distiller.step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.records))
        step = self.distiller.step
        if self.job.eval_every and step % self.job.eval_every == 0 and not self._evaluated(step):
            self.evaluate()

    def __call__(self, log) -> None:
        step = self.distiller.step  # steps done, log.step + 1
        self._append({"split": "train", "step": step, "losses": log.losses, "skipped": log.skipped,
                      "seconds": log.seconds, "peak_memory_mb": log.peak_memory_mb, "peak_rss_mb": peak_rss_mb()})
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in log.losses.items()}, refresh=False)
        if self.job.eval_every and step % self.job.eval_every == 0:
            self.evaluate()

    def finish(self) -> Path:
        """Log the final student (unless just logged) and write report.html."""
        if self.bar is not None:
            self.bar.close()
        if self.job.eval_every and not self._evaluated(self.distiller.step):
            self.evaluate()
        return self.write_report()

    # ---------------------------------------------------------------- measuring

    def _evaluated(self, step: int) -> bool:
        return any(r["split"] == "eval" and r["step"] == step for r in self.records)

    def _append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict:
        """Sample, decode, measure and log the student now; returns the eval record."""
        from lrm.evaluation.alignment import alignment
        from lrm.evaluation.frechet import latent_frechet_distance
        from lrm.evaluation.vendi import pixel_diversity
        from lrm.generators.writing import grid_png
        from lrm.tuning.roles import STUDENT

        start = time.perf_counter()
        step = self.distiller.step
        student = self.distiller.roles.module(STUDENT)
        latents = student_latents(student, self.text, self.mask, self.seeds, self.latent_shape,
                                  self.distiller.config.student_steps)
        with torch.no_grad():
            pixels = self.codec.decode(latents).clamp(0, 1).float()  # (N, T', 3, H, W)
        nonfinite = int((~torch.isfinite(latents.flatten(1)).all(1)).sum())
        grid = Path(GRIDS) / f"step-{step:07d}.png"
        atomic_write_bytes(self.run_dir / grid, grid_png(pixels.nan_to_num(0.0), self.prompts, self.seeds))
        nan = float("nan")
        if nonfinite:  # measures of such samples raise: recorded as NaN instead
            frechet, vendi = nan, nan
            shown = ({"color": nan, "shape": nan, "motion": nan if self.latent_shape[0] > 1 else None}
                     if self.procedural else None)
        else:
            aligned = alignment(pixels, self.prompts) if self.procedural else None
            shown = {"color": aligned.color, "shape": aligned.shape, "motion": aligned.motion} if aligned else None
            frechet = latent_frechet_distance(latents, self.reference)
            diversity = pixel_diversity(pixels, self.prompts)
            vendi = None if diversity is None else diversity.mean  # None: a sample is all black
        record = {"split": "eval", "step": step, "frechet": frechet, "alignment": shown, "vendi": vendi,
                  "grid": str(grid), "nonfinite": nonfinite, "seconds": time.perf_counter() - start}
        self._append(record)
        if step:  # the page follows the run
            self.write_report()
        return record

    # ---------------------------------------------------------------- report.html

    def write_report(self) -> Path:
        from lrm.reports.html import CSS, _img, _section, _table

        train = [r for r in self.records if r["split"] == "train"]
        evals = [r for r in self.records if r["split"] == "eval"]
        job, config = self.job, self.distiller.config
        last = train[-1] if train else {}
        facts = [["losses", ", ".join(job.losses)], ["weights", self.distiller.weights],
                 ["student steps", config.student_steps], ["steps done", self.distiller.step],
                 ["batch size (global)", job.batch_size], ["processes", distributed.world_size()],
                 ["LoRA rank", job.lora_rank if job.lora_rank is not None else "none: every weight trains"],
                 ["latent shape", str(self.latent_shape)],
                 ["updates per role", self.distiller.updates], ["skipped updates", self.distiller.skipped],
                 ["mean seconds per step", float(np.mean([r["seconds"] for r in train])) if train else None],
                 ["peak RSS (MB)", last.get("peak_rss_mb")], ["peak CUDA memory (MB)", last.get("peak_memory_mb")]]
        parts = [f"<h1>Distillation: {html.escape(str(self.run_dir))}</h1>", _table(["fact", "value"], facts)]
        if train:
            parts.append(_section("Losses per term", "Each term's generator loss and each auxiliary role's loss "
                                  "(unweighted, its last update of the step), and seconds per step.",
                                  _img(loss_curves(train), "loss curves")))
        if evals:
            motion = any((r["alignment"] or {}).get("motion") is not None for r in evals)
            rows = [[r["step"], r["frechet"], (r["alignment"] or {}).get("color"), (r["alignment"] or {}).get("shape"),
                     *([(r["alignment"] or {}).get("motion")] if motion else []), r["vendi"]] for r in evals]
            parts.append(_section(
                "Fixed-seed quality", f"The student's {config.student_steps}-step samples (cfg 1) of "
                f"{len(set(self.prompts))} prompts x {job.eval_seeds} seeds at each log: Frechet distance of pooled "
                f"latent statistics to {self.reference_name} (lower is closer; not FID), prompt alignment (share "
                "of frames whose object colour / shape the caption names" + ("; motion: share of the clips whose "
                "object moves the way the caption says" if motion else "") + ") and Vendi per prompt (pixels).",
                _img(eval_curves(evals), "quality curves") + _table(
                    ["step", "Frechet distance", "alignment colour", "alignment shape",
                     *(["alignment motion"] if motion else []), "Vendi"], rows)))
            shown = spread(evals, GRIDS_SHOWN)
            grids = "".join(f"<h3>step {r['step']}</h3>" + _img((self.run_dir / r["grid"]).read_bytes(),
                                                                  f"samples at step {r['step']}") for r in shown)
            parts.append(_section("Samples over training", "Rows are prompts, columns seeds; the same noise at "
                                  "every step (a clip shows its middle frame).", grids))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Distillation report</title>"
                f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
        return atomic_write_text(self.run_dir / "report.html", page)


def spread(items: list, count: int) -> list:
    """At most `count` items evenly spread over `items`, the first and last included."""
    if len(items) <= count:
        return items
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, count).round().astype(int)))]


def loss_curves(train: list[dict]) -> bytes:
    """PNG: one panel per logged loss against the step, and one of seconds per step."""
    import matplotlib.pyplot as plt

    from lrm.reports.figures import _png

    names = list(dict.fromkeys(k for r in train for k in r["losses"]))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3 * (len(names) + 1), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(r["step"], r["losses"][name]) for r in train if name in r["losses"]]
        ax.plot(*zip(*points), color="tab:blue", lw=1)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    ax.plot([r["step"] for r in train], [r["seconds"] for r in train], color="tab:gray", lw=1)
    ax.set(title="seconds per step", xlabel="step")
    ax.grid(alpha=0.3)
    return _png(fig)


def eval_curves(evals: list[dict]) -> bytes:
    """PNG: Frechet distance, alignment (colour, shape; motion when measured) and Vendi against the step."""
    import matplotlib.pyplot as plt

    from lrm.reports.figures import _png

    steps = [r["step"] for r in evals]
    fig, (fd, al, ve) = plt.subplots(1, 3, figsize=(10, 2.8))
    fd.plot(steps, [r["frechet"] for r in evals], marker="o", color="tab:red")
    fd.set(title="Frechet distance (lower is closer)", xlabel="step")
    if any(r["alignment"] for r in evals):
        for key, color in (("color", "tab:green"), ("shape", "tab:purple"), ("motion", "tab:orange")):
            values = [(r["alignment"] or {}).get(key) for r in evals]
            if any(v is not None for v in values):
                al.plot(steps, [np.nan if v is None else v for v in values], marker="o", color=color, label=key)
        al.legend(fontsize=7)
    al.set(title="prompt alignment", xlabel="step", ylim=(-0.02, 1.02))
    ve.plot(steps, [r["vendi"] for r in evals], marker="o", color="tab:blue")
    ve.set(title="Vendi per prompt", xlabel="step")
    for ax in (fd, al, ve):
        ax.grid(alpha=0.3)
    return _png(fig)
