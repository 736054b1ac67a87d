"""Sampling and evaluation of generators: lrm.generators.sampling / runs / writing, lrm.evaluation.report,
and the `lrm sample` / `lrm evaluate` commands, on a tiny dit-xs at 8 x 8 dct latents."""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from lrm import text as text_registry
from lrm.cli.generate import register
from lrm.codecs import load as load_codec
from lrm.diffusion import samplers
from lrm.diffusion.schedules import schedule_from_config
from lrm.generators import build_dit, save_denoiser
from lrm.generators.runs import open_generator_run
from lrm.generators.sampling import expand_requests, generate, generate_few_step, guided, text_windows
from lrm.generators.writing import save_samples
from lrm.text import TextEncoder

SHAPE = (1, 32, 8, 8)  # (T, c, h, w): one 64 px dct image
CLIP_SHAPE = (2, 32, 8, 8)
PROMPTS = ["a large red circle over a blue plain background", "a small green square over a white plain background"]
runner = CliRunner(env={"COLUMNS": "300"})


class Words(TextEncoder):
    """A tiny deterministic text encoder: one seeded random 12-d vector per word (no model, no files)."""

    id, dim, max_length = "test-words", 12, 32

    def embed_tokens(self, prompts):
        return [torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                             for w in p.split()]) for p in prompts]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setitem(text_registry.ENCODERS, Words.id, Words)  # lrm.text.load("test-words") for saved runs
    yield
    torch.set_num_threads(threads)


def tiny(frames=1):
    """dit-xs on dct latents with every weight drawn at random (the zero-init output would make CFG vacuous)."""
    torch.manual_seed(0)
    model = build_dit("dit-xs", 32, Words.dim, frames)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.codec_settings, model.text_encoder_id = load_codec("dct").settings(), Words.id
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture
def run(tmp_path):
    save_denoiser(tiny(), tmp_path / "run" / "model", extra={"latent_shape": list(SHAPE)})
    return tmp_path / "run"


def gen(model, prompts, seeds, **kw):
    options = {"latent_shape": SHAPE, "steps": 3, "cfg": 3.0, "text_encoder": Words(), **kw}
    return generate(model, prompts, seeds, **options)


# --------------------------------------------------------------------------- library: sampling


def test_deterministic_per_seed_and_independent_of_batch(model):
    prompts, seeds = expand_requests(PROMPTS, 3, seed=5)
    assert prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3 and seeds == [5, 6, 7, 5, 6, 7]
    first = gen(model, prompts, seeds, batch_size=4)
    again = gen(model, prompts, seeds, batch_size=4)
    assert torch.equal(first.latents, again.latents) and torch.equal(first.pixels, again.pixels)
    # the same (prompt, seed) pairs alone, reordered, one per batch: the same samples
    order = [4, 0, 5]
    alone = gen(model, [prompts[i] for i in order], [seeds[i] for i in order], batch_size=1)
    assert torch.allclose(alone.latents, first.latents[order], atol=1e-5)
    assert first.latents.shape == (6, *SHAPE) and first.pixels.shape == (6, 1, 3, 64, 64)
    assert 0 <= first.pixels.min() and first.pixels.max() <= 1
    assert not torch.allclose(first.latents[0], first.latents[1], atol=1e-3)  # seeds differ
    assert not torch.allclose(first.latents[0], first.latents[3], atol=1e-3)  # prompts differ, same seed


def _reference_loop(model, prompt, seed, steps, branch):
    """DDIM written out with one model call per branch (no batching, no masks trick): x_T from the seed."""
    encoder = Words()
    text, mask = encoder.encode([prompt])
    schedule = schedule_from_config(model.schedule_config)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))[None]
    with torch.no_grad():
        return samplers.sample(lambda x, t: branch(x, t, text, mask), x_T, schedule.timesteps(steps), schedule,
                               model.prediction)


def test_cfg_one_is_the_conditional_path_zero_the_unconditional_and_guidance_combines_both(model):
    cond = _reference_loop(model, PROMPTS[0], 3, 3, lambda x, t, text, mask: model(x, t, text, mask))
    assert torch.allclose(gen(model, PROMPTS[:1], [3], cfg=1.0).latents, cond, atol=1e-5)
    uncond = _reference_loop(model, PROMPTS[0], 3, 3, lambda x, t, text, mask: model(x, t))  # text=None
    assert torch.allclose(gen(model, PROMPTS[:1], [3], cfg=0.0).latents, uncond, atol=1e-5)
    guided = _reference_loop(model, PROMPTS[0], 3, 3,
                             lambda x, t, text, mask: model(x, t) + 4.0 * (model(x, t, text, mask) - model(x, t)))
    assert torch.allclose(gen(model, PROMPTS[:1], [3], cfg=4.0).latents, guided, atol=1e-4)
    assert not torch.allclose(cond, guided, atol=1e-3)


def test_fifty_steps_use_the_teachers_ddim_grid(model):
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[1].tolist()))
    try:
        samples = gen(model, PROMPTS[:1], [0], steps=50, cfg=1.0)
    finally:
        hook.remove()
    grid = [999 - 20 * k for k in range(50)]  # DOLLAR: t in [19, 39, ..., 999], noisiest first
    assert [t[0] for t in seen] == grid and samples.timesteps == grid
    assert tuple(grid) == samplers.TEACHER_TIMESTEPS


def test_few_step_student_sampler(model):
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[1][0].item()))
    try:
        samples = generate_few_step(model, PROMPTS, [1, 2], latent_shape=SHAPE, steps=2, text_encoder=Words())
    finally:
        hook.remove()
    assert samples.timesteps == [999, 499] and seen == [999, 499] and samples.cfg == 1.0
    # reference: the student's loop with the sample's own generator continuing after x_T
    encoder = Words()
    text, mask = encoder.encode(PROMPTS[1:])
    schedule = schedule_from_config(model.schedule_config)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(SHAPE, generator=g)[None]
    with torch.no_grad():
        expected = samplers.sample_few_step(lambda x, t: model(x, t, text, mask), x_T, [999, 499], schedule,
                                            model.prediction, noise=g)
    assert torch.allclose(samples.latents[1:], expected, atol=1e-5)
    alone = generate_few_step(model, PROMPTS[1:], [2], latent_shape=SHAPE, steps=2, text_encoder=Words())
    assert torch.allclose(alone.latents, samples.latents[1:], atol=1e-5)


class CountingWords(Words):
    """Words that records the prompts of every forward pass."""

    def __init__(self, batch_size=64):
        super().__init__(batch_size=batch_size)
        self.passes: list[list[str]] = []

    def embed_tokens(self, prompts):
        self.passes.append(list(prompts))
        return super().embed_tokens(prompts)


def test_text_windows_are_whole_batches_whose_prompts_fit_one_pass():
    prompts = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3  # batches of 4: {a, b}, {b, c}, {c, d}
    assert text_windows(prompts, 4, 64) == [range(0, 12)]
    assert text_windows(prompts, 4, 3) == [range(0, 8), range(8, 12)]
    assert text_windows(prompts, 4, 2) == [range(0, 4), range(4, 8), range(8, 12)]
    assert text_windows(prompts, 4, 1) == [range(0, 4), range(4, 8), range(8, 12)]  # a batch is never split
    assert text_windows(prompts[:5], 16, 1) == [range(0, 5)]


@pytest.mark.parametrize("per_pass", [64, 2])
def test_prompts_are_embedded_per_window_and_samples_equal_a_per_batch_loop(model, per_pass):
    prompts, seeds = expand_requests(PROMPTS + ["a blue ring", "a tiny gray cross over a red plain background"], 3)
    encoder = CountingWords(batch_size=per_pass)
    samples = gen(model, prompts, seeds, batch_size=4, text_encoder=encoder)
    # every distinct prompt embedded once, in passes of at most per_pass prompts: one pass of 4, not one per batch
    assert sorted(p for chunk in encoder.passes for p in chunk) == sorted(set(prompts))
    assert len(encoder.passes) == (1 if per_pass == 64 else 3) and max(map(len, encoder.passes)) <= per_pass
    # reference: the loop encoding each batch on its own (padded to that batch's longest prompt), bit for bit
    schedule = schedule_from_config(model.schedule_config)
    latents, pixels = [], []
    with torch.no_grad():
        for start in range(0, len(prompts), 4):
            text, mask = Words().encode(prompts[start : start + 4])
            x_T = torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(s))
                               for s in seeds[start : start + 4]])
            latents.append(samplers.sample(guided(model, text, mask, 3.0), x_T, schedule.timesteps(3), schedule,
                                           model.prediction))
            pixels.append(load_codec("dct").decode(latents[-1]).clamp(0, 1))
    assert torch.equal(samples.latents, torch.cat(latents)) and torch.equal(samples.pixels, torch.cat(pixels))


def test_bad_requests_are_refused(model):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        gen(model, PROMPTS, 0, steps=0)
    with pytest.raises(ValueError, match="cfg must be >= 0"):
        gen(model, PROMPTS, 0, cfg=-1.0)
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        gen(model, PROMPTS, [0])
    with pytest.raises(ValueError, match="denoiser takes 32"):
        gen(model, PROMPTS, 0, latent_shape=(1, 4, 8, 8))
    with pytest.raises(TypeError, match="not a single string"):
        gen(model, PROMPTS[0], 0)
    from lrm.codecs.dct import DCTCodec

    other_split = DCTCodec(split=(24, 4, 4), mean=None, std=None)  # 32 channels, another latent space
    with pytest.raises(ValueError, match="not the latent space the denoiser was trained in"):
        gen(model, PROMPTS, 0, codec=other_split)

    class OtherWords(Words):
        id = "other-words"

    with pytest.raises(ValueError, match="not the one the denoiser was trained on"):
        gen(model, PROMPTS, 0, text_encoder=OtherWords())


# --------------------------------------------------------------------------- library: files and runs


def test_save_samples_writes_images_clips_grid_latents_and_index(tmp_path, model):
    from safetensors.torch import load_file

    images = gen(model, *expand_requests(PROMPTS, 2), steps=2)
    index = save_samples(images, tmp_path / "img", {"steps": 2, "cfg": 3.0})
    assert [(e["prompt"], e["seed"], e["steps"], e["cfg"]) for e in index["samples"]] == [
        (PROMPTS[0], 0, 2, 3.0), (PROMPTS[0], 1, 2, 3.0), (PROMPTS[1], 0, 2, 3.0), (PROMPTS[1], 1, 2, 3.0)]
    first = Image.open(tmp_path / "img" / index["samples"][0]["file"])
    assert first.format == "PNG" and first.size == (64, 64)
    assert torch.equal(torch.from_numpy(np.array(first.convert("RGB"))).permute(2, 0, 1),
                       (images.pixels[0, 0] * 255).round().to(torch.uint8))
    assert torch.equal(load_file(tmp_path / "img" / "latents.safetensors")["latents"], images.latents)
    grid = Image.open(tmp_path / "img" / "grid.png")
    assert grid.width >= 2 * 128 and grid.height >= 2 * 128  # 2 x 2 tiles upscaled to >= 128 px, with captions
    assert json.loads((tmp_path / "img" / "index.json").read_text()) == index

    clips = generate(tiny(frames=2), PROMPTS[:1], [0], latent_shape=CLIP_SHAPE, steps=2, text_encoder=Words())
    index = save_samples(clips, tmp_path / "vid", {})
    gif = Image.open(tmp_path / "vid" / index["samples"][0]["file"])
    assert gif.format == "GIF" and gif.n_frames == 2 and gif.size == (64, 64)
    pytest.importorskip("av")
    index = save_samples(clips, tmp_path / "mp4", {}, video_format="mp4")
    from lrm.datasets.media import read_clip

    decoded = read_clip(tmp_path / "mp4" / index["samples"][0]["file"]).pixels  # (T, 3, H, W)
    assert decoded.shape == (2, 3, 64, 64)


def test_open_generator_run_accepts_run_or_model_and_refuses_other_folders(run, tmp_path):
    for path in (run, run / "model"):
        opened = open_generator_run(path)
        assert opened.model_dir == run / "model" and opened.run_dir == run
        assert opened.latent_shape() == SHAPE and opened.latent_shape(size=32) == (1, 32, 4, 4)
        assert opened.student_steps is None
    (run / "config.json").write_text(json.dumps({"student_steps": 2}))  # the trainer's run config
    assert open_generator_run(run).student_steps == 2
    # an EMA snapshot RUN/snapshots/step-N records no latent shape: the trainer's RUN/config.json does
    snapshot = run / "snapshots" / "step-0000010"
    save_denoiser(tiny(), snapshot)
    (run / "config.json").write_text(json.dumps({"latent_shape": [1, 32, 4, 4]}))
    opened = open_generator_run(snapshot)
    assert opened.latent_shape() == (1, 32, 4, 4) and opened.run_dir == snapshot
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match="records no latent_shape .* pass the pixel size"):
        open_generator_run(snapshot).latent_shape()
    surrogate = tmp_path / "fit" / "model"
    surrogate.mkdir(parents=True)
    (surrogate / "config.json").write_text(json.dumps({"format": "lrm-surrogate", "format_version": 1}))
    with pytest.raises(ValueError, match="is a surrogate run .lrm fit., not a generator"):
        open_generator_run(surrogate.parent)
    with pytest.raises(FileNotFoundError, match="not found"):
        open_generator_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no model/config.json"):
        open_generator_run(tmp_path)
    with pytest.raises(ValueError, match="multiple of the codec's spatial factor 8"):
        open_generator_run(run).latent_shape(size=30)


# --------------------------------------------------------------------------- library: evaluation


def test_evaluation_prompts_are_distinct_captions_the_model_never_trained_on(tmp_path, monkeypatch):
    """A small world repeats captions: clips of a fresh seed alone shared half their captions with training."""
    from lrm.datasets.encoding import EncodeConfig, encode
    from lrm.evaluation.report import HELD_OUT_SEED, held_out_prompts, procedural_prompts

    store = encode(EncodeConfig("procedural:64:simple", frames=1, size=32, text="minilm-l6-v2", text_length=8),
                   tmp_path / "store", progress=False)
    save_denoiser(tiny(), tmp_path / "teacher" / "model", extra={"latent_shape": list(SHAPE)})
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({"store": str(store.path)}))
    (tmp_path / "tuned" / "model").mkdir(parents=True)  # a run tuned from it records where it started
    save_denoiser(tiny(), tmp_path / "tuned" / "model", extra={"latent_shape": list(SHAPE)})
    # recorded as typed in the folder the command ran in (tmp_path); read from elsewhere
    (tmp_path / "tuned" / "config.json").write_text(json.dumps({"from": "teacher"}))
    monkeypatch.chdir(tmp_path / "tuned")
    seen = set(store.prompts)
    assert open_generator_run(tmp_path / "tuned").training_captions() == seen
    (tmp_path / "tuned" / "teacher").mkdir()  # an unrelated "teacher" below the current folder is not the one
    assert open_generator_run(tmp_path / "tuned").training_captions() == seen
    fresh = procedural_prompts(200, 1, seed=HELD_OUT_SEED, world="simple")
    assert set(fresh) & seen  # the test can fail: the fresh seed repeats training captions
    chosen = held_out_prompts(24, 1, "simple", seen)
    assert len(set(chosen)) == 24 and not set(chosen) & seen
    assert chosen == list(dict.fromkeys(c for c in fresh if c not in seen))[:24]  # the first such, in order
    import lrm.evaluation.report as evaluation_report

    real, drawn = evaluation_report._captions, []

    def counted(*args):
        for text in real(*args):
            drawn.append(text)
            yield text

    monkeypatch.setattr(evaluation_report, "_captions", counted)
    monkeypatch.setattr(evaluation_report, "SATURATED", 2000)
    with pytest.raises(ValueError, match="5000 held-out prompts asked: only .* distinct captions of the simple world"):
        held_out_prompts(5000, 1, "simple", seen)  # more than the world has
    # it stopped once 2,000 draws in a row brought nothing new, not after 100 x 5,000 draws (minutes, silent)
    assert len(drawn) < 50_000 and len(set(drawn[-2000:]) - set(drawn[:-2000])) == 0


def test_evaluate_run_metrics_match_independent_computations(run, tmp_path):
    from lrm.evaluation import alignment, diversity, latent_frechet_distance, pixel_features
    from lrm.evaluation.report import METRIC_KEYS, EvaluationConfig, evaluate_run, procedural_prompts, \
        procedural_reference
    from lrm.rewards import load as load_reward

    config = EvaluationConfig(procedural=2, samples_per_prompt=2, steps=2, reference_count=6,
                              rewards=("jpeg-compressibility", "prompt-color"))
    metrics = evaluate_run(run, config, tmp_path / "eval")
    assert set(metrics) == set(METRIC_KEYS)
    prompts = metrics["prompts"]  # held out: distinct, none among `lrm tune`'s default prompts (no store recorded)
    assert len(set(prompts)) == 2 and not set(prompts) & set(procedural_prompts(16, frames=1))
    assert metrics["n_samples"] == 4 and metrics["sampler"] == "ddim"
    page = (tmp_path / "eval" / "report.html").read_text()  # Configuration shows the cfg used, not None
    assert "<td>cfg</td><td>7.5 (the run" in page and "<td>cfg</td><td>None</td>" not in page
    assert "<td>steps</td><td>2</td>" in page
    # the same samples made directly, and each metric recomputed from them
    samples = generate(open_generator_run(run).load(), *expand_requests(prompts, 2), latent_shape=SHAPE, steps=2,
                       cfg=7.5)
    jpeg = load_reward("jpeg-compressibility")(samples.pixels)
    assert metrics["rewards"]["jpeg-compressibility"]["mean"] == pytest.approx(float(jpeg.mean()), rel=1e-5)
    vendi = diversity(pixel_features(samples.pixels), samples.prompts)
    assert metrics["diversity"]["mean"] == pytest.approx(vendi.mean)
    reference = procedural_reference(load_codec("dct"), SHAPE, 6)
    assert metrics["frechet"]["value"] == pytest.approx(latent_frechet_distance(samples.latents, reference), rel=1e-4)
    assert metrics["frechet"]["n_reference"] == 6 and "pooled latent statistics" in metrics["frechet"]["features"]
    assert metrics["frechet"]["per_frame"] is None  # images: the FD above is already per frame
    assert metrics["alignment"]["color"] == pytest.approx(alignment(samples.pixels, samples.prompts).color)
    assert metrics["alignment"]["motion"] is None  # images name no motion
    assert [p["prompt"] for p in metrics["per_prompt"]] == prompts


def test_clips_also_get_a_per_frame_frechet_distance_over_every_frame():
    from lrm.evaluation import latent_frechet_distance
    from lrm.evaluation.report import sample_metrics
    from lrm.generators.sampling import Samples

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 3, 4, 2, 2, generator=g)  # (N, T, c, h, w) clips
    reference = torch.randn(8, 3, 4, 2, 2, generator=g) * 1.5
    samples = Samples(latents, torch.rand(6, 3, 3, 16, 16, generator=g), ["a photo"] * 6, list(range(6)), [999], 1.0)
    frechet = sample_metrics(samples, reference, [], "reference")["frechet"]
    by_frame = latent_frechet_distance(latents.reshape(18, 1, 4, 2, 2), reference.reshape(24, 1, 4, 2, 2))
    assert frechet["per_frame"] == pytest.approx(by_frame) and frechet["per_frame"] != frechet["value"]


def test_an_all_black_sample_leaves_diversity_unmeasured_and_the_rest_measured():
    # a generator collapsed to black (what jpeg-compressibility pushes toward) stopped `lrm evaluate` with a Vendi error
    from lrm.evaluation.report import sample_metrics
    from lrm.generators.sampling import Samples

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 1, 3, 16, 16, generator=g)
    pixels[1] = 0.0
    samples = Samples(torch.randn(4, 1, 4, 2, 2, generator=g), pixels, ["a", "a", "b", "b"], [0, 1, 0, 1], [999], 1.0)
    metrics = sample_metrics(samples, torch.randn(8, 1, 4, 2, 2, generator=g), [], "reference")
    assert metrics["diversity"] is None and metrics["frechet"]["value"] >= 0


def test_clips_of_moving_objects_get_a_motion_alignment():
    from lrm.datasets.procedural import ProceduralClips, world_config
    from lrm.evaluation import alignment
    from lrm.evaluation.report import sample_metrics
    from lrm.generators.sampling import Samples

    clips = [c for c in ProceduralClips(world_config("simple", seed=5, frames=8, size=64), count=12)
             if " moving " in c.caption]
    pixels, prompts = torch.stack([c.pixels for c in clips]), [c.caption for c in clips]
    latents = torch.randn(len(clips), 8, 4, 2, 2)  # any latents: alignment reads the pixels
    samples = Samples(latents, pixels, prompts, list(range(len(clips))), [999], 1.0)
    aligned = sample_metrics(samples, latents, [], "reference")["alignment"]
    assert aligned["motion"] == alignment(pixels, prompts).motion and aligned["motion"] >= 0.8


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)
    return app


def test_cli_sample_writes_files_and_is_deterministic(app, run, tmp_path):
    args = ["sample", str(run), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--per-prompt", "2", "--steps", "2",
            "--quiet"]
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--batch-size", "1"])
    assert second.exit_code == 0, second.output
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "latents.safetensors")["latents"] for d in "ab")
    assert a.shape == (4, *SHAPE) and torch.allclose(a, b, atol=1e-5)
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert (index["sampler"], index["steps"], index["cfg"], index["timesteps"]) == ("ddim", 2, 7.5, [999, 499])
    assert all((tmp_path / "a" / e["file"]).is_file() for e in index["samples"])
    assert (tmp_path / "a" / "grid.png").is_file()
    default = runner.invoke(app, ["sample", str(run / "model"), "--prompt", "a red ring", "--per-prompt", "1",
                                  "--steps", "1", "--quiet"])
    assert default.exit_code == 0, default.output
    assert (run / "samples" / "index.json").is_file()  # default out: RUN/samples



def test_cli_sample_again_into_one_folder_leaves_only_the_new_runs_files(app, run, tmp_path):
    """A second `lrm sample` with fewer prompts into the same folder: the first run's sample files go (those its
    index.json listed), files lrm did not write stay."""
    out = tmp_path / "out"
    common = ["--steps", "1", "--quiet", "--out", str(out)]
    first = runner.invoke(app, ["sample", str(run), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--per-prompt",
                                "3", *common])
    assert first.exit_code == 0, first.output
    assert len(list((out / "samples").iterdir())) == 6
    (out / "notes.txt").write_text("mine")  # files lrm did not write
    (out / "samples" / "keep.png").write_bytes(b"mine")
    second = runner.invoke(app, ["sample", str(run), "--prompt", "a blue square", "--per-prompt", "1", *common])
    assert second.exit_code == 0, second.output
    index = json.loads((out / "index.json").read_text())
    assert [(e["prompt"], e["file"]) for e in index["samples"]] == [("a blue square", "samples/0000_seed0.png")]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["0000_seed0.png", "keep.png"]
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "index.json", "latents.safetensors", "notes.txt",
                                                     "samples"]


def test_an_earlier_index_deletes_only_sample_files_of_lrms_layout(tmp_path):
    """remove_previous_samples trusts no name the earlier index.json lists beyond lrm's own sample file names."""
    from lrm.generators.writing import remove_previous_samples

    (tmp_path / "out" / "samples").mkdir(parents=True)
    for name in ("keep.txt", "out/model.safetensors", "out/samples/0001_seed1.png", "out/samples/0002_seed2.txt"):
        (tmp_path / name).write_text("not lrm's")
    (tmp_path / "out" / "samples" / "0003_seed3.png").symlink_to(tmp_path / "keep.txt")
    listed = ["../keep.txt", "model.safetensors", "/etc/hostname", "samples/../../keep.txt", "samples/0002_seed2.txt",
              "samples/0003_seed3.png", "samples/0001_seed1.png", "samples/0009_seed9.png"]
    (tmp_path / "out" / "index.json").write_text(json.dumps({"samples": [{"file": f} for f in listed] + [None]}))
    assert remove_previous_samples(tmp_path / "out") == [tmp_path / "out" / "samples" / "0001_seed1.png"]
    assert (tmp_path / "keep.txt").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "samples" / "0002_seed2.txt").is_file()
    assert (tmp_path / "out" / "samples" / "0003_seed3.png").is_symlink()
    (tmp_path / "out" / "index.json").write_text("{not json")  # unreadable: nothing is deleted
    assert remove_previous_samples(tmp_path / "out") == [] and remove_previous_samples(tmp_path / "none") == []


def test_cli_samples_a_student_with_its_few_step_sampler(app, run, tmp_path):
    from safetensors.torch import load_file

    (run / "config.json").write_text(json.dumps({"student_steps": 2}))  # a distillation run's config
    result = runner.invoke(app, ["sample", str(run), "--prompt", PROMPTS[0], "--per-prompt", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    index = json.loads((run / "samples" / "index.json").read_text())
    assert (index["sampler"], index["steps"], index["cfg"], index["timesteps"]) == ("few-step", 2, 1.0, [999, 499])
    expected = generate_few_step(open_generator_run(run).load(), [PROMPTS[0]] * 2, [0, 1], latent_shape=SHAPE,
                                 steps=2, text_encoder=Words())
    assert torch.allclose(load_file(run / "samples" / "latents.safetensors")["latents"], expected.latents, atol=1e-5)

def test_cli_evaluate_writes_strict_metrics_and_a_self_contained_report(app, run, tmp_path):
    from lrm.evaluation.report import METRIC_KEYS

    result = runner.invoke(app, ["evaluate", str(run), "--procedural", "2", "--samples-per-prompt", "2", "--steps",
                                 "2", "--reference-count", "4", "--rewards", "jpeg-compressibility,prompt-color",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Vendi per prompt" in result.output and "report:" in result.output

    def no_nan(token):
        raise AssertionError(f"non-strict JSON constant {token}")

    metrics = json.loads((run / "eval" / "metrics.json").read_text(), parse_constant=no_nan)
    assert list(metrics) == list(METRIC_KEYS)
    assert set(metrics["rewards"]) == {"jpeg-compressibility", "prompt-color"}
    assert metrics["alignment"] is not None and metrics["diversity"] is not None
    page = (run / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in page and "src='http" not in page and "Frechet" in page

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    one = runner.invoke(app, ["evaluate", str(run), "--prompts", str(prompts), "--samples-per-prompt", "1", "--steps",
                              "1", "--reference-count", "2", "--rewards", "jpeg-compressibility", "--out",
                              str(tmp_path / "e"), "--quiet"])
    assert one.exit_code == 0, one.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["alignment"] is None and metrics["diversity"] is None  # not procedural; one sample per prompt


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_cli_bad_input_gets_one_line_and_exit_2(app, run, tmp_path, command):
    surrogate = tmp_path / "fit"
    (surrogate / "model").mkdir(parents=True)
    (surrogate / "model" / "config.json").write_text(json.dumps({"format": "lrm-surrogate", "format_version": 1}))
    (surrogate / "config.json").write_text(json.dumps({"fit": {"steps": 3}, "label": "x"}))  # a run of `lrm fit`
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    prompt = ["--prompt", "a red circle"] if command == "sample" else []
    cases = [
        ([str(surrogate), *prompt], "is a surrogate run (lrm fit), not a generator"),
        ([str(run), "--prompts", str(empty)], "contains no prompts"),
        ([str(run), *prompt, "--steps", "0"], "Invalid value for '--steps'"),
        ([str(run), *prompt, "--steps", "-3"], "Invalid value for '--steps'"),
        ([str(run), *prompt, "--cfg", "-1"], "Invalid value for '--cfg'"),
        ([str(tmp_path / "nowhere"), *prompt], "not found"),
        ([str(run), *prompt, "--out", str(surrogate)], "holds a surrogate run of `lrm fit`: the"),
        ([str(run), *prompt, "--frames", "8"], "is an image model, which would draw each frame"),
    ]
    if command == "sample":
        cases.append(([str(run)], "pass --prompt TEXT (repeatable) or --prompts FILE"))
    else:
        cases.append(([str(run), "--rewards", "no-such-reward"], "unknown reward 'no-such-reward'"))
        cases.append(([str(run), "--rewards", "temporal-flickering"], "scores videos but this run samples images"))
    for args, message in cases:
        result = runner.invoke(app, [command, *args, "--quiet"])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_briefly_trained_teacher_samples_the_image_it_memorised_for_each_prompt():
    """End to end: dit-xs fitted for 300 steps (conjugate-v, DOLLAR Eq. 13, 20% text dropout) to two procedural
    images; 50-step DDIM samples at new seeds, with and without guidance, land near their own prompt's latent."""
    from lrm.datasets.procedural import ProceduralConfig, make_clip
    from lrm.diffusion.parameterisations import training_target

    codec = load_codec("dct")
    config = ProceduralConfig(seed=0, frames=1, size=32, blur_probability=0, noise_probability=0, jpeg_probability=0)
    clips = [make_clip(config, i) for i in range(2)]
    prompts = [c.caption for c in clips]
    x0 = codec.encode(torch.stack([c.pixels for c in clips]))  # (2, 1, 32, 4, 4)
    encoder = Words()
    text, mask = encoder.encode(prompts)
    torch.manual_seed(0)
    model = build_dit("dit-xs", 32, Words.dim, 1)
    schedule = schedule_from_config(model.schedule_config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        pick = torch.randint(0, 2, (32,), generator=g)
        x, eps = x0[pick], torch.randn(32, 1, 32, 4, 4, generator=g)
        t = schedule.sample_timesteps(32, g)
        alpha, sigma = schedule.alpha_sigma(t, x)
        keep = mask[pick] & (torch.rand(32, 1, generator=g) >= 0.2)  # all-False rows: the null branch
        loss = (model(alpha * x + sigma * eps, t, text[pick], keep)
                - training_target(model.prediction, x, eps, alpha, sigma)).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    for cfg in (1.0, 3.0):
        samples = generate(model, prompts * 2, [10, 10, 11, 11], latent_shape=x0.shape[1:], cfg=cfg,
                           text_encoder=encoder, codec=codec)
        own = (samples.latents - x0.repeat(2, 1, 1, 1, 1)).square().flatten(1).mean(1)
        other = (samples.latents - x0.flip(0).repeat(2, 1, 1, 1, 1)).square().flatten(1).mean(1)
        assert bool((own < other / 3).all()), (cfg, own, other)


def test_store_reference_is_read_in_the_runs_latent_space_or_refused(tmp_path):
    from lrm.datasets.encoding import EncodeConfig, encode
    from lrm.evaluation.report import store_reference

    dct = load_codec("dct").settings()
    store = encode(EncodeConfig("procedural:6", frames=1, size=64, shard_size=4), tmp_path / "store", progress=False)
    assert torch.equal(store_reference(store.path, dct, SHAPE, 100), store.latents(list(range(6))))
    assert torch.equal(store_reference(store.path, dct, SHAPE, 3), store.latents([0, 2, 5]))  # spread over shards
    with pytest.raises(ValueError, match=r"holds latents \(1, 32, 8, 8\), the run samples \(1, 32, 4, 4\)"):
        store_reference(store.path, dct, (1, 32, 4, 4), 10)
    with pytest.raises(ValueError, match="is in codec dct-v1, the run samples in taef2"):
        store_reference(store.path, {**dct, "name": "taef2"}, SHAPE, 10)


def test_cli_defaults_equal_the_librarys_and_the_module_imports_no_torch(app):
    import dataclasses
    import subprocess
    import sys

    from lrm.configs import DEFAULT_BATCH_SIZE, DEFAULT_PER_PROMPT
    from lrm.evaluation.report import EvaluationConfig

    library = {f.name: f.default for f in dataclasses.fields(EvaluationConfig)}  # the library's, read by the CLI
    commands = typer.main.get_group(app).commands
    evaluate = {p.name: p.default for p in commands["evaluate"].params}
    assert evaluate["rewards"] == ",".join(library["rewards"])
    for name in ("samples_per_prompt", "reference_count", "seed", "batch_size", "device"):
        assert evaluate[name] == library[name], name
    sample = {p.name: p.default for p in commands["sample"].params}
    assert (sample["per_prompt"], sample["batch_size"]) == (DEFAULT_PER_PROMPT, DEFAULT_BATCH_SIZE)
    assert sampling_signature_defaults() == {"steps": 50, "cfg": 7.5, "batch_size": DEFAULT_BATCH_SIZE}
    repo = str(Path(__file__).resolve().parents[1])
    code = "import sys, lrm.cli.generate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": repo},
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def sampling_signature_defaults() -> dict:
    import inspect

    parameters = inspect.signature(generate).parameters
    return {name: parameters[name].default for name in ("steps", "cfg", "batch_size")}
