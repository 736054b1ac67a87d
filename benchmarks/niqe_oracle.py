"""How well can NIQE be learned from these labels by a surrogate that sees exact pixels?

The latent surrogates of NIQE stop short of the 0.9 goal (README, "Fidelity on real data"). This
separates the two things a surrogate must learn: the pixel-level statistics (from latents) and
NIQE's map from those statistics to a score (from ~5,000 labels of 24 subjects). It decodes every
row of a store exactly as its `niqe@decoded` labels were made (codec decode, clamp, uint8, skvideo
grey), computes per-96-px-patch features of those exact pixels, and fits only the patch-Gaussian
head of the surrogates on them (per-patch MLP, the patches' Gaussian and its learned distance, a
linear head: lrm.models.patch_gaussian), on the same split as benchmarks/fidelity.py:

    nss-moments        the 40 means NIQE's AGGD fits read (lrm.models.aggd): log patch means of
                       s^2, |s|, relu(-s)^2, [s < 0] of the MSCN coefficients and their 4 paired
                       products, at full and half scale; what image-mscn-gaussian-stats computes on
                       its learned pixel planes (with a 2x2 mean for the half scale)
    aggd(nss-moments)  NIQE's 36 features computed from those moments by lrm.models.aggd's
                       differentiable AGGD fits (what image-nss-pixels computes)
    niqe-features      NIQE's own 36 features per patch (grid-search AGGD fits;
                       lrm.rewards.quality.niqe_features)

The NIQE formula with its pristine model on `niqe-features`, and on `aggd(nss-moments)`, gives the
labels back (checked: the Spearman printed as "formula"), so `niqe-features` shows how much of NIQE
the head learns from these labels when the features are exact, and `nss-moments` how much a head
loses that must learn the AGGD fits itself. Each set is fitted once per number of patch features
F (`--patch-features`), `--batch-sizes` entry and seed, for `--steps` steps: the head's F and how
many rows a fit sees decide how far it gets. Features are cached
(benchmarks/.cache/niqe_oracle/STORE.npz, about 8 CPU min to make); a fit takes 5-30 CPU s.

    python benchmarks/niqe_oracle.py benchmarks/.cache/stores/images-large-384-dct
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrm.models.patch_gaussian import PatchGaussianDistance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variant_breakdown import breakdown, view_and_variant  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "niqe_oracle.json"
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache" / "niqe_oracle"
LABEL = "niqe@decoded"
FEATURE_SETS = ("nss-moments", "niqe-features")  # cached per row
FIT_SETS = ("nss-moments", "aggd(nss-moments)", "niqe-features")  # what the head is fitted on


def patch_features(gray: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W) float32 0-255 grey image -> {"nss-moments": (P, 40) log, "niqe-features": (P, 36)} for
    its 96-px patches. The moments are NIQE's exactly: MSCN of the cropped image and of its PIL-bicubic
    half, paired products within each patch."""
    from PIL import Image

    from lrm.models.mscn_gaussian import NIQE_PATCH_PIXELS, nss_patch_moments
    from lrm.models.patch_gaussian import MOMENT_EPS
    from lrm.rewards.quality import niqe_features

    h, w = gray.shape
    full = gray[: h - h % NIQE_PATCH_PIXELS, : w - w % NIQE_PATCH_PIXELS]
    half = np.asarray(Image.fromarray(full, mode="F").resize((full.shape[1] // 2, full.shape[0] // 2), Image.BICUBIC))
    c = torch.ones(1, dtype=torch.float64)  # NIQE's MSCN stabiliser on 0-255 pixels
    moments = torch.cat([nss_patch_moments(torch.tensor(image, dtype=torch.float64)[None, None], c, patch)
                         for image, patch in ((full, NIQE_PATCH_PIXELS), (half, NIQE_PATCH_PIXELS // 2))], dim=2)
    return {"nss-moments": torch.log(moments[0] + MOMENT_EPS).numpy(), "niqe-features": niqe_features(gray)}


def aggd_of_moments(log_moments: np.ndarray) -> np.ndarray:
    """(..., 40) log patch moments -> (..., 36) NIQE features by the differentiable AGGD fits (lrm.models.aggd)."""
    from lrm.models.aggd import niqe_patch_features
    from lrm.models.patch_gaussian import MOMENT_EPS

    return niqe_patch_features(torch.from_numpy(np.exp(log_moments.astype(np.float64)) - MOMENT_EPS)).numpy()


def store_features(store_path: Path, cache: Path) -> dict[str, np.ndarray]:
    """{feature set: (n, P, K)} for every row of the store, cached in `cache`/STORE.npz."""
    from tqdm import tqdm

    from lrm.codecs import from_settings
    from lrm.datasets.store import LatentStore
    from lrm.io import atomic_write_bytes
    from lrm.models.nss_pixels import grey_frames

    path = cache / f"{store_path.name}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in FEATURE_SETS}
    store = LatentStore.open(store_path)
    codec = from_settings(store.codec_settings).eval()
    out = {k: [] for k in FEATURE_SETS}
    for start in tqdm(range(0, len(store), 64), desc=f"features {store_path.name}", unit="batch"):
        with torch.no_grad():
            latents = store.latents(np.arange(start, min(start + 64, len(store))))  # (b, 1, c, h, w)
            grey = grey_frames(codec.decode(latents)[:, 0])[:, 0]  # (b, H, W), as the decoded labels saw them
        for image in grey.numpy():
            for k, v in patch_features(image).items():
                out[k].append(v)
    arrays = {k: np.stack(v).astype(np.float32) for k, v in out.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


def formula_scores(features: np.ndarray) -> np.ndarray:
    """NIQE of each row from its (P, 36) features with the pristine model (lrm.rewards.quality.niqe_of_features)."""
    from lrm.rewards.quality import niqe_of_features

    return np.array([niqe_of_features(f) for f in features.astype(np.float64)])


class PatchGaussianHead(PatchGaussianDistance):
    """(M, P, K) patch features -> (M,): the patch-Gaussian backbones' end and a linear read-out."""

    def __init__(self, inputs: int, patch_features: int = 16):
        super().__init__()
        self.add_distance(inputs, patch_features)
        self.read_out = nn.Linear(self.feature_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.read_out(self.distance_features(features))[:, 0]


def fit_head(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, patch_features: int, steps: int,
             batch_size: int, lr: float, seed: int, eval_every: int = 100) -> tuple[nn.Module, list[dict], torch.Tensor]:
    """The fitting loop of lrm.fitting in small: AdamW with its warm-up and cosine schedule and gradient
    clipping, its batch order, MSE on standardised log labels. Each feature is standardised over the
    training rows' patches (the two sets' features differ in scale by orders of magnitude). Returns the
    model, the curve of validation Spearman and the standardised features (n, P, K) the model reads."""
    from scipy.stats import spearmanr

    from lrm.fitting import FitConfig, batch_positions, learning_rate

    config = FitConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    torch.manual_seed(seed)
    target = np.log(y)
    mean, std = target[train].mean(), target[train].std()
    centre, scale = x[train].mean(axis=(0, 1)), x[train].std(axis=(0, 1)) + 1e-6
    xs = torch.from_numpy(((x - centre) / scale).astype(np.float32))
    ys = torch.from_numpy(((target - mean) / std).astype(np.float32))
    model = PatchGaussianHead(x.shape[-1], patch_features)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    curve = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        batch = train[batch_positions(step, len(train), batch_size, seed)]
        loss = (model(xs[batch]) - ys[batch]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if (step + 1) % eval_every == 0:
            with torch.no_grad():
                curve.append({"step": step + 1, "spearman": float(spearmanr(model(xs[val]).numpy(), y[val])[0])})
    return model.eval(), curve, xs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help=f"a benchmarks/fidelity.py image store with a {LABEL} column")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per fit (default 3000)")
    parser.add_argument("--patch-features", nargs="+", type=int, default=[16, 36],
                        help="features per patch (the Gaussian's dimension), one series each (default 16, the "
                             "patch-Gaussian presets' default, and 36, NIQE's own)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128],
                        help="rows per step, one series of fits each (default 32, fidelity.py's default, and 128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="fit seeds (default 0 1 2)")
    parser.add_argument("--feature-sets", nargs="+", choices=FIT_SETS, default=list(FIT_SETS),
                        help="what the head is fitted on (default: all three)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT.name})")
    args = parser.parse_args(argv)
    from scipy.stats import spearmanr
    from tqdm import tqdm

    from lrm.datasets.store import LatentStore
    from lrm.fitting import FitConfig, split_rows
    from lrm.io import atomic_write_json

    torch.set_num_threads(1)
    store = LatentStore.open(args.store)
    if LABEL not in store.labels:
        raise SystemExit(f"{args.store} has no {LABEL!r} label column: run benchmarks/fidelity.py --rewards niqe "
                         "--label-pixels decoded on it first")
    labels = store.label(LABEL)
    features = store_features(args.store, args.cache)
    train, val, _ = split_rows(store, labels, FitConfig())  # fidelity.py's split (seed 0)
    views, variants = view_and_variant([r["source"] for r in store.rows()])
    features["aggd(nss-moments)"] = aggd_of_moments(features["nss-moments"])
    formulas = {name: formula_scores(features[name]) for name in ("niqe-features", "aggd(nss-moments)")}
    results = {"command": "python benchmarks/niqe_oracle.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "store": str(args.store), "n_train": int(len(train)), "n_val": int(len(val)), "steps": args.steps,
               "lr": args.lr,
               "formula": {name: {"spearman": float(spearmanr(scores, labels)[0]),
                                  "max_abs_error": float(np.max(np.abs(scores - labels)))}
                           for name, scores in formulas.items()}, "fits": []}
    grid = list(itertools.product(args.feature_sets, args.patch_features, args.batch_sizes, args.seeds))
    for name, patch_features, batch_size, seed in tqdm(grid, desc="fits", unit="fit"):
        model, curve, inputs = fit_head(features[name], labels, train, val, patch_features, args.steps, batch_size,
                                        args.lr, seed)
        with torch.no_grad():
            pred = model(inputs).numpy()
        results["fits"].append({
            "features": name, "patch_features": patch_features, "batch_size": batch_size, "seed": seed, "final": curve[-1]["spearman"],
            "best": max(c["spearman"] for c in curve), "curve": curve,
            "train": breakdown(pred[train], labels[train], views[train], variants[train]),
            "val": breakdown(pred[val], labels[val], views[val], variants[val])})
    results["table"] = tables(results)
    print(results["table"])
    atomic_write_json(args.out, results)


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def tables(results: dict) -> str:
    """The formula check, one row per fit, then the range over seeds of each (features, F, batch)."""
    fits = results["fits"]
    per_fit = [[f["features"], str(f["patch_features"]), str(f["batch_size"]), str(f["seed"])]
               + [f"{f[split][key]:.3f}" for split, key in (("train", "spearman"), ("train", "within_view"),
                                                            ("val", "spearman"), ("val", "within_view"),
                                                            ("val", "within_variant"))] for f in fits]
    series = {}
    for f in fits:
        series.setdefault((f["features"], f["patch_features"], f["batch_size"]), []).append(f)

    def span(group: list[dict], split: str, key: str) -> str:
        values = [f[split][key] for f in group]
        return f"{min(values):.3f}-{max(values):.3f}"

    summary = [[name, str(features), str(batch), str(len(group)), span(group, "val", "spearman"),
                span(group, "val", "within_view"), span(group, "train", "spearman")]
               for (name, features, batch), group in series.items()]
    formula = [f"formula (NIQE's pristine model on {name}) vs labels: Spearman {check['spearman']:.4f}, "
               f"max |error| {check['max_abs_error']:.2g}" for name, check in results["formula"].items()]
    return "\n".join(formula + [""]
                     + markdown(["features", "F", "batch", "seed", "train Spearman", "train within view",
                                 "val Spearman", "val within view", "val within variant"], per_fit)
                     + ["", "Over seeds (min-max):", ""]
                     + markdown(["features", "F", "batch", "seeds", "val Spearman", "val within view",
                                 "train Spearman"], summary))


if __name__ == "__main__":
    main()
