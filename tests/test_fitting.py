"""Fitting surrogates: convergence, resume = uninterrupted, checkpoints, errors, noise-aware, DDP,
and a real store (procedural clips + dct codec + colorfulness) fitted to held-out Spearman > 0.9."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from lrm.codecs.dct import DCTCodec
from lrm.datasets import store as st
from lrm.diffusion.schedule import add_noise, alphas_cumprod, betas
from lrm.fitting import (FitConfig, RowSource, _training_inputs, batch_positions, fit_surrogate, latent_mirror,
                         latest_checkpoint, learning_rate, predict, ranking_loss)
from lrm.labels import LOG_SHIFT_FRACTION, label_statistics
from lrm.models import CodecMismatchError, LatentRewardModel

REPO = Path(__file__).resolve().parents[1]
CODEC = {"name": "fake", "version": "1", "channels": 4, "spatial_factor": 8, "temporal_factor": 1, "scale": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------- a tiny real store on disk

def synthetic(n: int, frames: int = 1, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Latents (n, frames, 4, size, size) whose channels 0 and 1 carry offsets a, b ~ U(-1, 1);
    label a + 0.5 b^2 (nonlinear in the latents)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, frames, 4, size, size, generator=g)
    a, b = torch.rand(n, generator=g) * 2 - 1, torch.rand(n, generator=g) * 2 - 1
    x[:, :, 0] += a[:, None, None, None]
    x[:, :, 1] += b[:, None, None, None]
    return x, (a + 0.5 * b**2).numpy().astype(np.float32)


def write_store(root: Path, latents: torch.Tensor, labels: dict[str, np.ndarray], group_size: int = 4,
                text: torch.Tensor | None = None, mask: torch.Tensor | None = None, shard_size: int = 64,
                codec: dict = CODEC):
    """A store written through lrm.datasets.store's writer (rows of `group_size` share a group)."""
    n = latents.shape[0]
    num_shards = math.ceil(n / shard_size)
    text_header = None if text is None else {"encoder": "fake-encoder", "length": text.shape[1], "dim": text.shape[2]}
    header = {"format_version": st.FORMAT_VERSION, "codec": codec, "latent_shape": list(latents.shape[1:]),
              "text": text_header, "source": {"description": "synthetic"}, "shard_size": shard_size,
              "units": n, "num_shards": num_shards}
    st.create_or_check(root, header, write=True)
    for name in labels:
        st.write_label_info(root, name, {"reward": name, "spec": {"name": name, "kind": "image"}})
    for i in range(num_shards):
        lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
        rows = [{"unit": u, "source": f"synthetic:{u}", "frame_indices": [0], "group": f"g{u // group_size}",
                 "prompt": None if text is None else f"prompt {u}"} for u in range(lo, hi)]
        st.commit_shard(root, i, (lo, hi), latents[lo:hi], rows, [],
                        None if text is None else text[lo:hi], None if mask is None else mask[lo:hi])
        for name, values in labels.items():
            st.commit_label_shard(root, name, i, values[lo:hi], [])
    st.refresh_manifest(root)
    return st.LatentStore.open(root)


@pytest.fixture()
def store(tmp_path):
    latents, label = synthetic(240)
    return write_store(tmp_path / "store", latents, {"synth": label})


@pytest.fixture()
def dct_store(tmp_path):
    """dct-space latents labelled with the offset of channel 1, horizontal frequency 1: a mirror negates it."""
    g = torch.Generator().manual_seed(0)
    latents = 0.3 * torch.randn(240, 1, 32, 8, 8, generator=g)
    offset = torch.rand(240, generator=g) * 2 - 1
    latents[:, :, 1] += offset[:, None, None, None]
    return write_store(tmp_path / "dct", latents, {"odd": offset.numpy()}, codec=DCTCodec().settings())


def quick(**overrides) -> FitConfig:
    base = dict(steps=60, batch_size=16, lr=2e-3, warmup_steps=5, eval_every=20, checkpoint_every=20, log_every=5)
    return FitConfig(**{**base, **overrides})


# ---------------------------------------------------------------- pure pieces

def test_learning_rate_warmup_then_cosine():
    c = FitConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_fraction=0.1)
    assert [learning_rate(s, c) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(10, c) == pytest.approx(1.0)
    assert learning_rate(60, c) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert learning_rate(110, c) == pytest.approx(0.1)


def test_batch_order_is_a_seeded_permutation_per_epoch():
    n, b = 23, 5
    epoch0 = np.concatenate([batch_positions(s, n, b, seed=3) for s in range(4)])
    assert len(set(epoch0)) == 20  # 4 disjoint batches, the remainder of 3 dropped
    epoch1 = np.concatenate([batch_positions(s, n, b, seed=3) for s in range(4, 8)])
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(batch_positions(6, n, b, seed=3), batch_positions(6, n, b, seed=3))
    assert not np.array_equal(batch_positions(6, n, b, seed=3), batch_positions(6, n, b, seed=4))


def test_ranking_loss_equals_pairwise_logistic_by_hand():
    pred = torch.tensor([0.3, -1.0, 2.0, 0.5])
    true = torch.tensor([1.0, 0.0, 1.0, 3.0])  # one tie (rows 0 and 2) is skipped
    terms = [math.log1p(math.exp(-(pred[i] - pred[j]).item()))
             for i in range(4) for j in range(4) if true[i] > true[j]]
    assert ranking_loss(pred, true).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    assert ranking_loss(pred, torch.ones(4)).item() == 0.0


def test_ddpm_schedule_against_closed_form():
    beta = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(alphas_cumprod("linear").numpy(), np.cumprod(1 - beta), rtol=1e-12)
    sd = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(betas("scaled-linear").numpy(), sd, rtol=1e-12)
    abar = alphas_cumprod()
    assert abar[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM: x_999 is almost pure noise
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    xt = add_noise(x0, eps, t, abar)
    for i in range(3):
        a = abar[t[i]].item()
        torch.testing.assert_close(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i])


def test_label_statistics_none_and_log_by_hand():
    y = np.array([0.0, 1.0, 3.0, 96.0])
    transform, *stats = label_statistics(y, "none")
    assert transform == "none" and stats == pytest.approx([y.mean(), y.std(), 0.0])
    shift = 0.0 - LOG_SHIFT_FRACTION * 96.0
    logs = np.log(y - shift)
    transform, *stats = label_statistics(y, "log")
    assert transform == "log" and stats == pytest.approx([logs.mean(), logs.std(), shift])


def test_auto_label_transform_picks_log_for_right_skewed_labels():
    rng = np.random.default_rng(0)
    assert label_statistics(rng.lognormal(0, 1, 500), "auto")[0] == "log"  # skewness ~ 4, log: ~ 0
    assert label_statistics(rng.normal(0, 1, 500), "auto")[0] == "none"  # symmetric already
    assert label_statistics(1 - rng.lognormal(0, 1, 500), "auto")[0] == "none"  # left-skewed: log makes it worse


# ---------------------------------------------------------------- fitting on a store

def test_fit_converges_and_writes_its_run(store, tmp_path):
    out = tmp_path / "run"
    result = fit_surrogate(store, "synth", quick(steps=150, eval_every=50, checkpoint_every=50), out)
    assert result.val_metrics["spearman"] > 0.9, result.val_metrics
    train_losses = [h["loss"] for h in result.history if h["split"] == "train"]
    assert np.mean(train_losses[-5:]) < 0.5 * np.mean(train_losses[:3])
    # the split is group-aware and the model is the best validation step
    groups = store.groups
    assert not set(groups[result.train_indices]) & set(groups[result.val_indices])
    val_lines = [h for h in result.history if h["split"] == "val"]
    assert result.best_step == max(val_lines, key=lambda h: h["spearman"])["step"]
    # files
    assert json.loads((out / "config.json").read_text())["fit"]["steps"] == 150
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    assert {"step", "split", "loss", "lr", "elapsed_s"} <= set(lines[0])
    assert {"spearman", "pearson", "mse", "rmse", "n"} <= set(val_lines[0])
    assert len(list((out / "checkpoints").glob("step-*.json"))) == 2  # keep_checkpoints
    # the saved model is the returned one; predict() is in reward units and matches validation
    loaded = LatentRewardModel.from_pretrained(result.paths["model"], codec_settings=store.codec_settings)
    pred = predict(loaded, store, result.val_indices)
    np.testing.assert_allclose(pred, predict(result.model, store, result.val_indices), rtol=0, atol=0)
    true = store.label("synth")[result.val_indices]
    assert stats.spearmanr(pred, true).statistic == pytest.approx(result.val_metrics["spearman"])
    assert loaded.info.reward_name == "synth" and loaded.info.codec_settings == CODEC
    assert float(loaded.label_mean) == pytest.approx(store.label("synth")[result.train_indices].mean())


def test_auto_label_transform_fits_a_heavy_tailed_label_in_logs(tmp_path):
    latents, label = synthetic(240)
    heavy = np.exp(3 * label).astype(np.float32)  # skewed: a few rows are 20x the median
    store = write_store(tmp_path / "store", latents, {"heavy": heavy})
    result = fit_surrogate(store, "heavy", quick(steps=150), tmp_path / "run")  # label_transform="auto"
    assert result.label_transform == "log" and result.label_shift < heavy[result.train_indices].min()
    assert result.val_metrics["spearman"] > 0.9, result.val_metrics
    # the network is fitted on standardised log labels; the outputs come back in reward units
    model = result.model
    z_train = model.standardise(torch.as_tensor(heavy[result.train_indices]))
    assert float(z_train.mean()) == pytest.approx(0, abs=1e-5)
    assert float(z_train.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    pred = predict(model, store, result.val_indices)
    assert (pred > result.label_shift).all()
    assert result.val_metrics["mse"] == pytest.approx(np.mean((pred - heavy[result.val_indices]) ** 2), rel=1e-5)
    loaded = LatentRewardModel.from_pretrained(result.paths["model"])
    np.testing.assert_array_equal(predict(loaded, store, result.val_indices), pred)


class CrashingStore:
    """Delegates to a store, and dies (like a killed process) on the first latents read after
    `marker` appears (e.g. once a given checkpoint is on disk)."""

    def __init__(self, store, marker: Path):
        self.store, self.marker = store, marker

    def latents(self, indices):
        if self.marker.exists():
            raise KeyboardInterrupt("simulated crash")
        return self.store.latents(indices)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("store_name, label, options", [
    ("store", "synth", dict(log_every=4)),  # the resume at step 10 falls inside a loss line's window (9-12)
    ("store", "synth", dict(noise_aware=True, loss="ranking", t_max=500)),
    ("dct_store", "odd", dict(augment="hflip")),
])
def test_resume_equals_uninterrupted(request, tmp_path, store_name, label, options):
    store = request.getfixturevalue(store_name)
    # cache_limit_gb=0: every step reads its batch from the store, so the crash lands mid-run
    config = quick(steps=30, eval_every=5, checkpoint_every=10, cache_limit_gb=0.0, **options)
    straight = fit_surrogate(store, label, config, tmp_path / "straight")

    checkpoints = tmp_path / "resumed" / "checkpoints"
    with pytest.raises(KeyboardInterrupt):  # dies in step 21, after metrics lines of steps 1-20 were written
        fit_surrogate(CrashingStore(store, checkpoints / "step-0000020.json"), label, config, tmp_path / "resumed")
    tensors, _ = latest_checkpoint(checkpoints)
    assert tensors.name == "step-0000020.safetensors"
    (checkpoints / "step-0000020.json").unlink()  # a crash between the two files of a checkpoint
    assert latest_checkpoint(checkpoints)[0].name == "step-0000010.safetensors"
    with pytest.raises(FileExistsError, match="resume=True"):
        fit_surrogate(store, label, config, tmp_path / "resumed")
    resumed = fit_surrogate(store, label, config, tmp_path / "resumed", resume=True)

    final = lambda run: load_file(tmp_path / run / "checkpoints" / "step-0000030.safetensors")  # noqa: E731
    a, b = final("straight"), final("resumed")
    assert a.keys() == b.keys()
    for key in a:  # weights, AdamW moments, best weights: bit-identical
        assert torch.equal(a[key], b[key]), key
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    strip = lambda h: [{k: v for k, v in x.items() if k != "elapsed_s"} for x in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    metrics = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert strip(metrics) == strip(straight.history)  # lines past the checkpoint were not duplicated


def test_a_nan_latent_stops_the_fit_with_one_line_instead_of_returning_untrained_weights(store, tmp_path):
    class NaNLatents(CrashingStore):  # a codec that failed on the store's rows
        def latents(self, indices):
            return self.store.latents(indices) * float("nan")

    with pytest.raises(ValueError, match=r"the training loss is not finite at step 1: a row of that batch holds NaN"):
        fit_surrogate(NaNLatents(store, tmp_path / "never"), "synth", quick(steps=5), tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


def test_hflip_mirrors_about_half_of_each_batch_exactly(dct_store):
    config = quick(augment="hflip")
    mirror = latent_mirror(dct_store.codec_settings)
    rows = np.arange(64)
    original = dct_store.latents(rows)
    source = RowSource(dct_store, rows, with_text=False, cache=True)
    flipped = []
    for step in range(4):
        latents = _training_inputs(source, rows, config, step, 0, None, mirror, torch.device("cpu"))[0]
        same = (latents == original).flatten(1).all(1)
        assert torch.equal(latents[~same], DCTCodec().mirror_latents(original[~same]))  # the rest: exact mirrors
        flipped.append(int((~same).sum()))
    assert all(16 < n < 48 for n in flipped), flipped  # Binomial(64, 1/2)
    again = _training_inputs(source, rows, config, 3, 0, None, mirror, torch.device("cpu"))[0]
    assert torch.equal(again, latents)  # the flips of a step are seeded


def test_hflip_augmentation_hides_mirror_sensitive_signals(dct_store, tmp_path):
    # a mirror negates channel 1, so with hflip half the samples carry the opposite sign for the same label
    plain = fit_surrogate(dct_store, "odd", quick(), tmp_path / "plain")
    augmented = fit_surrogate(dct_store, "odd", quick(augment="hflip"), tmp_path / "augmented")
    assert plain.val_metrics["spearman"] > 0.9, plain.val_metrics
    # measured 0.22; over 3 data x 3 fit seeds -0.14 to 0.66 (the best of 3 noisy validations), plain 0.98
    assert augmented.val_metrics["spearman"] < plain.val_metrics["spearman"] - 0.3, augmented.val_metrics


def test_hflip_is_refused_for_codecs_without_an_exact_mirror(tiny_vaes, tmp_path):
    from lrm import codecs

    settings = codecs.load(f"diffusers:{tiny_vaes['kl']}").settings()
    latents, label = synthetic(40)
    store = write_store(tmp_path / "kl", latents, {"synth": label}, codec=settings)
    with pytest.raises(ValueError, match="no exact latent-space mirror"):
        fit_surrogate(store, "synth", quick(augment="hflip"), tmp_path / "run")
    with pytest.raises(ValueError, match="augment must be one of"):
        fit_surrogate(store, "synth", quick(augment="vflip"), tmp_path / "run")


def test_resume_accepts_runs_from_before_a_setting_existed_and_refuses_changed_settings(store, tmp_path):
    config = quick(steps=10, checkpoint_every=5)
    fit_surrogate(store, "synth", config, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["fit"]["augment"]  # as written by an lrm without FitConfig.augment
    path.write_text(json.dumps(saved))
    assert fit_surrogate(store, "synth", config, tmp_path / "run", resume=True).steps == 10
    with pytest.raises(ValueError, match=r"other settings \(fit\.lr: saved 0\.002, now 0\.01\)\. Fix") as info:
        fit_surrogate(store, "synth", quick(steps=10, checkpoint_every=5, lr=1e-2), tmp_path / "run", resume=True)
    assert "steps" not in str(info.value)  # names what changed, not the whole config


def test_a_fit_on_an_unfinished_store_is_refused(tmp_path):
    """A killed encode leaves a store whose rows will still grow: its split would change under a resumed fit."""
    latents, label = synthetic(240)
    root = tmp_path / "store"
    write_store(root, latents, {"synth": label})
    st.shard_paths(root, 3)["commit"].unlink()  # the last shard not committed, as after a kill
    st.refresh_manifest(root)
    with pytest.raises(ValueError, match=r"not completely encoded \(3 of 4 shards\); finish it by re-running the "
                                         r"same `lrm encode`"):
        fit_surrogate(st.LatentStore.open(root), "synth", quick(steps=5), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_resume_on_a_store_whose_rows_changed_is_refused(tmp_path):
    """The split is recorded (rows, a digest of the train / validation rows): a resume on other rows would hold
    out rows the model trained on."""
    latents, label = synthetic(240)
    root = tmp_path / "store"
    config = quick(steps=10, checkpoint_every=5)
    fit_surrogate(write_store(root, latents[:192], {"synth": label[:192]}), "synth", config, tmp_path / "run")
    split = json.loads((tmp_path / "run" / "config.json").read_text())["split"]
    assert split["rows"] == 192 and len(split["train_val_sha256"]) == 16
    import shutil
    shutil.rmtree(root)
    grown = write_store(root, latents, {"synth": label})  # the same path, more rows
    with pytest.raises(ValueError, match=r"cannot resume .*split was made on other rows of .* \(192 rows then, 240 "
                                         r"now\).* Fix: write to a new --out folder"):
        fit_surrogate(grown, "synth", config, tmp_path / "run", resume=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["split"] == split  # left as it was


def test_progress_bar_shows_steps_loss_and_best_spearman(store, tmp_path, capsys, monkeypatch):
    fit_surrogate(store, "synth", quick(steps=20, eval_every=10), tmp_path / "quiet")
    assert "fit " not in capsys.readouterr().err  # a library call is silent by default
    from functools import partial

    from tqdm import tqdm

    monkeypatch.setattr("lrm.fitting.tqdm", partial(tqdm, mininterval=0, miniters=1))  # draw every step
    fit_surrogate(store, "synth", quick(steps=20, eval_every=10), tmp_path / "shown", progress=True)
    last = [line for line in capsys.readouterr().err.split("\r") if line.strip()][-1]  # before it is cleared
    assert "20/20" in last and "loss=" in last and "best held-out Spearman=" in last, last


def test_early_stopping_on_validation_spearman(store, tmp_path):
    result = fit_surrogate(store, "synth", quick(steps=100, lr=0.0, eval_every=10, patience=2), tmp_path / "run")
    assert result.stopped_early and result.steps == 30 and result.best_step == 10  # lr 0: never improves


def test_noise_aware_fit_reports_fidelity_by_timestep(store, tmp_path):
    config = quick(steps=40, noise_aware=True, t_max=300, eval_timesteps=(0, 100, 900))
    result = fit_surrogate(store, "synth", config, tmp_path / "run")
    assert set(result.val_by_timestep) == {0, 100, 900}
    assert result.model.noise_aware and result.model.info.noise_schedule == "linear"
    noisy, clean = result.val_by_timestep[900]["spearman"], result.val_by_timestep[0]["spearman"]
    assert clean > noisy  # at t = 900 the latents are mostly noise
    pred = predict(result.model, store, result.val_indices, t=100)
    true = store.label("synth")[result.val_indices]
    assert np.mean((pred - true) ** 2) == pytest.approx(result.val_by_timestep[100]["mse"], rel=1e-5)


def offset_gradients(latents: torch.Tensor, prompts) -> torch.Tensor:
    """The latent gradient of the synthetic label a + 0.5 b^2, with a and b read as the means of channels 0 and 1."""
    x = latents.detach().requires_grad_(True)
    a, b = x[:, :, 0].mean(dim=(1, 2, 3)), x[:, :, 1].mean(dim=(1, 2, 3))
    (grad,) = torch.autograd.grad((a + 0.5 * b**2).sum(), x)
    return grad


def test_gradient_matching_aligns_the_surrogates_latent_gradient_with_the_rewards(store, tmp_path):
    config = quick(steps=150, eval_every=50, checkpoint_every=50)
    plain = fit_surrogate(store, "synth", config, tmp_path / "plain", gradients=offset_gradients)
    computed = []  # rows whose reward gradient was computed: each once, then kept

    def counted(latents, prompts):
        computed.append(latents.shape[0])
        return offset_gradients(latents, prompts)

    matched = fit_surrogate(store, "synth", replace(config, gradient_weight=1.0), tmp_path / "matched",
                            gradients=counted)
    assert sum(computed) == len(matched.train_indices) + len(matched.val_indices)
    val = [h for h in matched.history if h["split"] == "val"]
    assert len(val) == 3 and all(-1 <= h["gradient_cosine"] <= 1 for h in val)
    assert matched.val_metrics["gradient_cosine"] > plain.val_metrics["gradient_cosine"] + 0.2, \
        (plain.val_metrics, matched.val_metrics)
    assert matched.val_metrics["spearman"] > 0.8  # it still ranks
    assert "gradient_cosine" not in fit_surrogate(store, "synth", replace(config, steps=20), tmp_path / "none").val_metrics


def test_gradient_matching_hands_each_rows_own_prompt_and_recomputes_mirrored_batches(dct_store, tmp_path):
    latents, label = synthetic(64)
    store = write_store(tmp_path / "text", latents, {"synth": label}, text=torch.randn(64, 3, 8),
                        mask=torch.ones(64, 3, dtype=torch.bool))
    seen = []

    def by_prompt(latents, prompts):  # "prompt {unit}": each row must come with its own prompt
        for row, prompt in zip(latents, prompts):
            seen.append(torch.equal(row, store.latents([int(prompt.split()[1])])[0]))
        return offset_gradients(latents, prompts)

    fit_surrogate(store, "synth", quick(steps=10, preset="text-image-xattn", gradient_weight=1.0), tmp_path / "t",
                  gradients=by_prompt)
    assert seen and all(seen)
    computed = []

    def mirrored(latents, prompts):
        computed.append(latents.shape[0])
        x = latents.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(x[:, :, 1].mean(dim=(1, 2, 3)).sum(), x)
        return grad

    result = fit_surrogate(dct_store, "odd", quick(steps=20, augment="hflip", gradient_weight=1.0), tmp_path / "m",
                           gradients=mirrored)
    assert sum(computed) == 20 * 16 + len(result.val_indices)  # every training batch anew; validation rows once


def test_gradient_matching_refuses_what_it_cannot_match(store, tmp_path):
    with pytest.raises(ValueError, match="pass gradients="):
        fit_surrogate(store, "synth", quick(gradient_weight=1.0), tmp_path / "a")
    with pytest.raises(ValueError, match="leave out gradient_weight or noise_aware"):
        fit_surrogate(store, "synth", quick(gradient_weight=1.0, noise_aware=True), tmp_path / "b",
                      gradients=offset_gradients)
    with pytest.raises(ValueError, match="gradient_weight must be >= 0"):
        fit_surrogate(store, "synth", quick(gradient_weight=-1.0), tmp_path / "c")


def test_text_preset_fits_on_a_store_with_text(tmp_path):
    latents, label = synthetic(64)
    text = torch.randn(64, 3, 8)
    mask = torch.tensor([[True, True, False]] * 64)
    store = write_store(tmp_path / "store", latents, {"synth": label}, text=text, mask=mask)
    result = fit_surrogate(store, "synth", quick(steps=10, preset="text-image-xattn"), tmp_path / "run")
    assert result.model.text_dim == 8 and result.model.info.text_encoder_id == "fake-encoder"
    assert predict(result.model, store).shape == (64,)


def test_nan_labels_are_dropped_and_counted(tmp_path):
    latents, label = synthetic(80)
    label[[3, 10, 50]] = np.nan
    store = write_store(tmp_path / "store", latents, {"synth": label})
    result = fit_surrogate(store, "synth", quick(steps=5), tmp_path / "run")
    assert result.nan_labels == 3
    assert len(result.train_indices) + len(result.val_indices) == 77
    assert not {3, 10, 50} & (set(result.train_indices) | set(result.val_indices))


def test_train_groups_fit_nested_subsets_against_the_same_validation_rows(store, tmp_path):
    # the store holds 60 groups of 4 rows; validation takes 12 of them (val_fraction 0.2)
    groups = store.groups
    full = fit_surrogate(store, "synth", quick(steps=2), tmp_path / "all")
    subsets = [fit_surrogate(store, "synth", quick(steps=2, train_groups=n), tmp_path / f"n{n}") for n in (5, 20)]
    for n, result in zip((5, 20), subsets):
        np.testing.assert_array_equal(result.val_indices, full.val_indices)
        assert len(np.unique(groups[result.train_indices])) == n and len(result.train_indices) == 4 * n
        assert set(result.train_indices) <= set(full.train_indices)
    assert set(subsets[0].train_indices) < set(subsets[1].train_indices)  # nested: 20 groups include the 5
    other = fit_surrogate(store, "synth", quick(steps=2, train_groups=5, train_groups_seed=1), tmp_path / "other")
    np.testing.assert_array_equal(other.val_indices, full.val_indices)
    assert set(other.train_indices) != set(subsets[0].train_indices)  # another seed, other groups
    with pytest.raises(ValueError, match="train_groups=49, but the training split holds only 48 groups"):
        fit_surrogate(store, "synth", quick(train_groups=49), tmp_path / "too-many")
    with pytest.raises(ValueError, match="train_groups must be >= 1"):
        fit_surrogate(store, "synth", quick(train_groups=0), tmp_path / "zero")
    with pytest.raises(ValueError, match="train_groups_seed picks the groups of train_groups"):  # it was ignored
        fit_surrogate(store, "synth", quick(train_groups_seed=1), tmp_path / "seed-alone")
    with pytest.raises(ValueError, match="patience must be >= 0"):  # -1 silently meant "never stop early"
        fit_surrogate(store, "synth", quick(patience=-1), tmp_path / "patience")
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):  # it used to start the cosine early
        fit_surrogate(store, "synth", quick(warmup_steps=-5), tmp_path / "warm-up")
    latents, label = synthetic(240)
    label[np.isin(groups, groups[full.train_indices][:8])] = np.nan  # the first 2 training groups: no finite label
    holed = write_store(tmp_path / "holed", latents, {"synth": label})
    with pytest.raises(ValueError, match="only 46 groups with a finite label"):
        fit_surrogate(holed, "synth", quick(train_groups=47), tmp_path / "holed-too-many")
    result = fit_surrogate(holed, "synth", quick(steps=2, train_groups=46), tmp_path / "holed-all")
    assert len(np.unique(groups[result.train_indices])) == 46 and result.nan_labels == 8


def test_clear_errors(store, tmp_path):
    with pytest.raises(KeyError, match="no label 'jpeg'.*synth"):
        fit_surrogate(store, "jpeg", quick(), tmp_path / "a")
    with pytest.raises(ValueError, match="no text embeddings"):
        fit_surrogate(store, "synth", quick(preset="text-image-xattn"), tmp_path / "b")
    with pytest.raises(ValueError, match="FitConfig.loss must be one of .*got 'l1'"):
        fit_surrogate(store, "synth", quick(loss="l1"), tmp_path / "c")
    with pytest.raises(ValueError, match="label_transform must be one of.*auto"):
        fit_surrogate(store, "synth", quick(label_transform="sqrt"), tmp_path / "e")
    latents, _ = synthetic(40)
    flat = write_store(tmp_path / "flat", latents, {"const": np.ones(40, np.float32)})
    with pytest.raises(ValueError, match="constant"):
        fit_surrogate(flat, "const", quick(), tmp_path / "d")


def test_checkpoint_from_another_codec_is_refused(store, tmp_path):
    result = fit_surrogate(store, "synth", quick(steps=5), tmp_path / "run")
    other = {**CODEC, "name": "dct", "channels": 32}
    with pytest.raises(CodecMismatchError, match="4-channel.*32-channel"):
        LatentRewardModel.from_pretrained(result.paths["model"], codec_settings=other)
    with pytest.raises(CodecMismatchError, match="fake.*taef2"):
        LatentRewardModel.from_pretrained(result.paths["model"], codec_settings={**CODEC, "name": "taef2"})


# ---------------------------------------------------------------- DDP

DDP_SCRIPT = """
import json, sys
from lrm.datasets.store import LatentStore
from lrm.fitting import FitConfig, fit_surrogate
from lrm import distributed
config = FitConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=40, checkpoint_every=40)
result = fit_surrogate(LatentStore.open(sys.argv[1]), "synth", config, sys.argv[2])
# one file per rank: two ranks printing to one pipe can interleave their lines
with open(f"{sys.argv[2]}-result-{distributed.rank()}.json", "w") as f:
    json.dump({"rank": distributed.rank(), "spearman": result.val_metrics["spearman"],
               "world": distributed.world_size()}, f)
"""


@pytest.mark.slow
def test_two_process_ddp_fit_converges(store, tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(store.path), str(tmp_path / "run")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("run-result-*.json"))]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["spearman"] == results[1]["spearman"] > 0.9  # ranks agree: same weights everywhere
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["effective_batch_size"] == 32
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if h["split"] == "train"]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert len(history) == len({(h["step"], h["split"]) for h in history})  # rank 0 alone writes
    # batch_size is global: 2 ranks x 16 rows follow the same trajectory as 1 process x 32 rows
    single = fit_surrogate(store, "synth", FitConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=5,
                                                     eval_every=40, checkpoint_every=40), tmp_path / "single")
    ddp_model = LatentRewardModel.from_pretrained(tmp_path / "run" / "model")
    np.testing.assert_allclose(predict(ddp_model, store), predict(single.model, store), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- a real store

@pytest.mark.slow
def test_real_store_colorfulness_reaches_spearman_09(tmp_path):
    # The real pipeline: 2,000 procedural still images at 192 px -> dct latents (32 x 24 x 24, the
    # paper's latent size class) labelled by colorfulness; ~15 s to encode, ~15 s to fit on one core.
    from lrm.datasets.encoding import EncodeConfig, encode

    store = encode(EncodeConfig(data="procedural:2000", codec="dct", frames=1, size=192, labels=("colorfulness",),
                                shard_size=500, batch_size=50), tmp_path / "store", progress=False)
    config = FitConfig(steps=300, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=50)
    result = fit_surrogate(store, "colorfulness", config, tmp_path / "run")
    assert result.val_metrics["spearman"] > 0.9, result.val_metrics
    assert result.model.info.codec_settings["name"] == "dct" and result.model.info.reward_name == "colorfulness"


@pytest.mark.slow
def test_frame_pair_surrogate_learns_dynamic_degree(tmp_path):
    # 800 procedural 8-frame clips at 64 px (shapes static, moving or shaking) -> dct latents
    # (8 x 32 x 8 x 8) labelled by dynamic degree (DIS flow). The frame-pair preset compares
    # consecutive latent frames at full latent resolution; 400 steps reach held-out Spearman 0.86
    # (video-3d-stats: 0.79 with the same budget). ~15 s to encode, ~25 s to fit on one core.
    from lrm.datasets.encoding import EncodeConfig, encode

    store = encode(EncodeConfig(data="procedural:800", codec="dct", frames=8, size=64, labels=("dynamic-degree",),
                                shard_size=200, batch_size=50), tmp_path / "store", progress=False)
    config = FitConfig(steps=400, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=50, preset="video-pair-stats")
    result = fit_surrogate(store, "dynamic-degree", config, tmp_path / "run")
    assert result.val_metrics["spearman"] > 0.8, result.val_metrics


@pytest.mark.parametrize("lr", [-1.0, float("inf")])
def test_a_negative_or_non_finite_lr_is_refused_by_name(store, tmp_path, lr):
    with pytest.raises(ValueError, match="FitConfig.lr"):  # not torch's "Invalid learning rate"
        fit_surrogate(store, "synth", quick(steps=2, lr=lr), tmp_path / "run")
