"""Resumable `lrm tune` runs and their real data (lrm.tuning.tune_run, lrm.tuning.embedded, lrm.cli.tune): a tiny
dit-xs teacher trained 3 steps on 8 procedural 64-px images (dct latents, MiniLM tokens), its store as real data."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch
import typer
from typer.testing import CliRunner

from lrm.codecs import from_settings
from lrm.datasets.encoding import EncodeConfig, encode
from lrm.datasets.store import LatentStore
from lrm.generators import load_denoiser
from lrm.generators.training import TeacherConfig, train_teacher
from lrm.rewards import load as load_reward
from lrm.tuning import TrueReward, tune_run
from lrm.tuning.trainer import Distiller
from lrm.tuning.tune import TuneConfig, tune

TINY = TeacherConfig(preset="dit-xs", steps=3, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3,
                     snapshots=0, report_samples=1)
PROMPTS = ["a red circle on a blue background", "a green square on a white background"]
runner = CliRunner(env={"COLUMNS": "300"})

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher run whose config.json records its store (8 procedural images)."""
    root = tmp_path_factory.mktemp("teacher")
    store = encode(EncodeConfig("procedural:8", frames=1, size=64, text="minilm-l6-v2", text_length=32),
                   root / "store", progress=False)
    train_teacher(store, TINY, root / "run")
    return root / "run"


def reward(model, name="jpeg-incompressibility"):
    return TrueReward(from_settings(model.codec_settings), load_reward(name))


def config(**changes) -> TuneConfig:
    base = TuneConfig(method="lrm", concurrent=True, distill=("vsd", "cd"), steps=4, student_steps=1, batch_size=2,
                      lr=1e-3, eval_every=2, per_prompt=2, eval_prompts=1)
    return replace(base, **changes)


def run_tune(teacher, run_dir, cfg, store=True):
    from lrm.text import load as load_text

    model = load_denoiser(teacher / "model")
    real = LatentStore.open(teacher.parent / "store") if store else None
    return tune(model, reward(model), PROMPTS, load_text(model.text_encoder_id), cfg, latent_shape=(1, 32, 8, 8),
                store=real, run_dir=run_dir, settings={"reward": "jpeg-incompressibility"})


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (records hold NaN where a quantity is undefined)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------- resume


def killed_then_rerun(run, monkeypatch):
    """run() killed by a KeyboardInterrupt (Ctrl-C) as its step 3 starts, then run() again, as a user re-runs the
    same command: the resumed run's result."""
    train_step = Distiller.train_step

    def killed_at_step_3(self, batches):
        if self.step == 3:
            raise KeyboardInterrupt
        return train_step(self, batches)

    monkeypatch.setattr(Distiller, "train_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(Distiller, "train_step", train_step)
    return run()


def test_an_interrupted_tune_resumes_and_equals_the_uninterrupted_run(teacher, tmp_path, monkeypatch):
    straight = run_tune(teacher, tmp_path / "straight", config())
    resumed = killed_then_rerun(lambda: run_tune(teacher, tmp_path / "resumed", config()), monkeypatch)
    assert [r.step for r in resumed.records] == [0, 2, 4]
    assert same([asdict(r) for r in straight.records], [asdict(r) for r in resumed.records])
    assert same([log.losses for log in straight.logs], [log.losses for log in resumed.logs]) and len(resumed.logs) == 4
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same(straight.term.fidelities, resumed.term.fidelities)
    # the concurrent surrogate trained on the store's real latents beside the student's samples: 2 per update
    assert straight.term.real_rows == resumed.term.real_rows == 4 * 2
    # each evaluation left a checkpoint whose student loads as a denoiser; the last is the tuned student
    steps = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*"))
    assert steps == ["step-00000000", "step-00000002", "step-00000004"]
    last = load_denoiser(tmp_path / "resumed" / "checkpoints" / "step-00000004").state_dict()
    assert all(torch.equal(last[k], b[k]) for k in b)
    start = load_denoiser(tmp_path / "resumed" / "checkpoints" / "step-00000000").state_dict()
    assert not all(torch.equal(start[k], b[k]) for k in b)
    # only the newest keeps the trainer's state; the older ones keep their student and records
    older = {p.name for p in (tmp_path / "resumed" / "checkpoints" / "step-00000002").iterdir()}
    assert older == {"config.json", "model.safetensors", "tune.json"}
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000004" / "fake_score.optimizer.safetensors").is_file()


@pytest.mark.parametrize("method", ["lrm", "ddpo"])
def test_a_resumed_run_on_prompts_alone_equals_the_uninterrupted_run(teacher, tmp_path, monkeypatch, method):
    """Without a store the batches' prompts are embedded by the run: a prompt's embedding moves by ~1e-6 with the
    prompts it is padded with, so the run embeds every prompt once before its first step. DDPO-SF's per-prompt
    reward history resumes too."""
    from lrm.text import load as load_text

    prompts = ["a red circle", "a green square on a white background",
               "a large blue triangle moving left quickly over a pink gradient background"]
    cfg = config(distill=("vsd",), steps=4, eval_prompts=1)
    if method == "ddpo":
        cfg = replace(cfg, method="ddpo", concurrent=False, prompt_history=2)

    def run(run_dir):
        model = load_denoiser(teacher / "model")
        return tune(model, reward(model), prompts, load_text(model.text_encoder_id), cfg, latent_shape=(1, 32, 8, 8),
                    run_dir=run_dir, settings={"reward": "jpeg-incompressibility"})

    straight = run(tmp_path / "straight")
    resumed = killed_then_rerun(lambda: run(tmp_path / "resumed"), monkeypatch)
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same([log.losses for log in straight.logs], [log.losses for log in resumed.logs])
    if method == "ddpo":
        assert straight.term.reward_history == resumed.term.reward_history and straight.term.reward_history


def test_a_rerun_with_another_setting_is_refused_and_more_steps_continue(teacher, tmp_path):
    run_tune(teacher, tmp_path / "run", config(steps=2, distill=("vsd",)))
    with pytest.raises(ValueError, match=r"cannot resume tune run .*\(tune.lr: saved 0.001, now 0.01\)"):
        run_tune(teacher, tmp_path / "run", config(steps=2, distill=("vsd",), lr=1e-2))
    more = run_tune(teacher, tmp_path / "run", config(steps=4, distill=("vsd",)))
    assert [r.step for r in more.records] == [0, 2, 4] and len(more.logs) == 4
    # fewer steps than the run holds: it used to hand back the 4-step student and record steps 2 in config.json
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ValueError, match=r"has already trained 4 steps, more than --steps 2; pass --steps 4 or more"):
        run_tune(teacher, tmp_path / "run", config(steps=2, distill=("vsd",)))
    assert (tmp_path / "run" / "config.json").read_text() == saved
    # a setting lrm records since a run was made is not held against that run: it resumes
    record = json.loads(saved)
    tune_run.check_settings(tmp_path / "run", {**record, "start_weights": "0123456789ab"}, asdict(TuneConfig()))


def test_ddpo_on_store_batches_groups_its_rewards_by_caption(teacher, tmp_path):
    """With real data (CD's store) the batches carry the store's captions for DDPO-SF even when the reward reads no
    text, so its per-prompt statistics key on the caption, not on token bytes that change with each batch's
    padding."""
    result = run_tune(teacher, tmp_path / "run", config(method="ddpo", concurrent=False, distill=("vsd", "cd"),
                                                        prompt_history=2, batch_size=4))
    history = result.term.reward_history
    captions = set(LatentStore.open(teacher.parent / "store").prompts)
    assert history and set(history) <= captions


def test_cd_needs_real_latents_and_no_store_means_no_real_rows(teacher, tmp_path):
    with pytest.raises(ValueError, match="CD needs real latents"):
        run_tune(teacher, tmp_path / "cd", config(), store=False)
    assert not (tmp_path / "cd").exists()  # refused before any work
    alone = run_tune(teacher, None, config(distill=("vsd",), steps=2), store=False)
    assert alone.term.real_rows == 0 and len(alone.term.fidelities) == 2


# ---------------------------------------------------------------- the embedded student


@pytest.fixture
def tiny_embedded(tmp_path, monkeypatch):
    """$LRM_CACHE in tmp_path, 32-px dit-xs embedded teachers (images: 4 steps; 2-frame clips: 2 steps from the
    image teacher) and 2-step distillations of them (the jobs' losses and teachers as they are)."""
    from lrm.generators import embedded
    from lrm.tuning import embedded as students

    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    tiny = embedded.EmbeddedTeacher(EncodeConfig("procedural:8", frames=1, size=32, text="minilm-l6-v2",
                                                 text_length=32), replace(TINY, steps=4, checkpoint_every=2))
    clips = embedded.EmbeddedTeacher(EncodeConfig("procedural:4", frames=2, size=32, text="minilm-l6-v2",
                                                  text_length=32), replace(TINY, steps=2, batch_size=2,
                                                                           checkpoint_every=2), from_image_teacher=True)
    monkeypatch.setitem(embedded.EMBEDDED, "image", tiny)
    monkeypatch.setitem(embedded.EMBEDDED, "video", clips)
    for kind, job in students.STUDENT_JOBS.items():
        monkeypatch.setitem(students.STUDENT_JOBS, kind, replace(job, steps=2, batch_size=2, eval_every=0,
                                                                 checkpoint_every=1))
    return tmp_path / "cache"


def test_the_embedded_student_is_distilled_once_and_keyed_on_its_teacher(tiny_embedded, monkeypatch):
    from lrm.generators import embedded
    from lrm.tuning.embedded import embedded_student, embedded_student_dir

    with pytest.raises(FileNotFoundError, match="not distilled yet"):
        embedded_student(train_if_missing=False)
    run = embedded_student()
    assert run.parent == tiny_embedded / "students" and run.name.startswith("image-4step-")
    config = json.loads((run / "config.json").read_text())
    assert config["teacher_run"] == str(embedded.embedded_run_dir()) and set(config["job"]["losses"]) == {"vsd", "cd"}
    weights = load_denoiser(run / "model").state_dict()
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000002"]  # the newest suffices
    saved = (run / "model" / "model.safetensors").stat().st_mtime_ns
    assert embedded_student(train_if_missing=False) == run  # cached: nothing distilled again
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == saved
    # killed after its last checkpoint, before the export: the rerun resumes and exports the same student
    (run / "model" / "config.json").unlink()
    assert embedded_student() == run
    again = load_denoiser(run / "model").state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert embedded_student_dir(2) != run  # another grid, another student
    entry = embedded.EMBEDDED["image"]
    monkeypatch.setitem(embedded.EMBEDDED, "image", replace(entry, teacher=replace(entry.teacher, steps=5)))
    assert embedded_student_dir() != run  # a retrained teacher, a new student


def test_the_embedded_video_student_is_avdm2s_distillation_of_the_video_teacher(tiny_embedded):
    from lrm.generators import embedded
    from lrm.tuning.embedded import embedded_student, embedded_student_dir

    with pytest.raises(FileNotFoundError, match="4-step video student is not distilled yet.*lrm tune temporal-"
                                                "flickering --concurrent` once"):
        embedded_student(video=True, train_if_missing=False)
    with pytest.raises(FileNotFoundError, match="`lrm tune temporal-flickering --concurrent --student-steps 2`"):
        embedded_student(2, video=True, train_if_missing=False)
    run = embedded_student(video=True)  # trains the image teacher, the video teacher from it, then distils
    assert run == embedded_student_dir(video=True) and run.name.startswith("video-4step-")
    config = json.loads((run / "config.json").read_text())
    assert config["teacher_run"] == str(embedded.embedded_run_dir(video=True))
    assert config["job"]["image_teacher"] == str(embedded.embedded_run_dir())  # SDM-2D's image teacher
    assert config["job"]["losses"] == ["adm", "sdm2d"] and config["latent_shape"] == [2, 32, 4, 4]
    assert {"discriminator", "teacher_2d", "fake_2d"} <= set(config["roles"]) and "fake_score" not in config["roles"]
    student = load_denoiser(run / "model")
    assert student.frames == 2 and student.temporal
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000002"]
    saved = (run / "model" / "model.safetensors").stat().st_mtime_ns
    assert embedded_student(video=True, train_if_missing=False) == run  # cached: nothing distilled again
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == saved
    # `lrm tune` with a video reward and no generator tunes it, the video teacher's store as real data
    out = run.parent / "tuned"
    result = runner.invoke(cli_app(), ["tune", "temporal-flickering", "--concurrent", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "distilling" not in result.output and "temporal-flickering: gold" in result.output
    facts = json.loads((out / "records.json").read_text())
    assert facts["from"] == str(run) and facts["store"] == str(embedded.embedded_store_dir(video=True))
    assert load_denoiser(out / "model").frames == 2


def test_the_embedded_video_job_and_its_cache_name(tmp_path, monkeypatch):
    """The video job is AVDM2's (docs/distill.md's settings); its folder name changes with every setting that
    changes the weights, with either teacher, and with nothing else."""
    import re

    from lrm.generators import embedded
    from lrm.tuning import embedded as students
    from lrm.tuning.run import TRAINING_FIELDS

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    video, image = students.STUDENT_JOBS["video"], students.STUDENT_JOBS["image"]
    assert video.video and video.losses == ("adm", "sdm2d") and (video.steps, video.batch_size) == (60, 8)
    assert not image.video and image.losses == ("vsd", "cd") and (image.steps, image.batch_size) == (100, 8)
    assert video.teacher is None and video.image_teacher is None  # filled in when the job runs
    assert video.student_steps == image.student_steps == 4
    run = students.embedded_student_dir(video=True)
    assert run.parent == tmp_path / "students" and re.fullmatch(r"video-4step-[0-9a-f]{8}", run.name)
    assert students.embedded_student_dir(video=True) == run
    assert students.embedded_student_dir(2, video=True).name.startswith("video-2step-")
    assert students.embedded_student_dir(2, video=True).name[-8:] != run.name[-8:]
    assert students.embedded_student_dir().name.startswith("image-4step-")
    changed = {"steps": 61, "batch_size": 4, "student_lr": 2e-4, "fake_lr": 2e-4, "seed": 1, "losses": ("adm",),
               "cd_teacher_steps": 2, "lora_rank": 4}
    assert set(changed) | {"teacher", "video", "student_steps", "image_teacher"} >= set(TRAINING_FIELDS)
    names = {run.name}
    for field, value in changed.items():
        monkeypatch.setitem(students.STUDENT_JOBS, "video", replace(video, **{field: value}))
        names.add(students.embedded_student_dir(video=True).name)
    assert len(names) == 1 + len(changed)  # every setting that changes the weights: a new name
    monkeypatch.setitem(students.STUDENT_JOBS, "video", replace(video, eval_every=10, checkpoint_every=5,
                                                                 device="cuda", eval_prompts=2))
    assert students.embedded_student_dir(video=True) == run  # how it is logged or where it runs: the same
    monkeypatch.setitem(students.STUDENT_JOBS, "video", video)
    for kind in ("video", "image"):  # a retrained video teacher, or image teacher (SDM-2D's and the video one's start)
        entry = embedded.EMBEDDED[kind]
        monkeypatch.setitem(embedded.EMBEDDED, kind, replace(entry, teacher=replace(entry.teacher, lr=5e-4)))
        assert students.embedded_student_dir(video=True).name not in names
        monkeypatch.setitem(embedded.EMBEDDED, kind, entry)
    assert students.embedded_student_dir(video=True) == run


# ---------------------------------------------------------------- lrm tune


def cli_app() -> typer.Typer:
    from lrm.cli.tune import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


ARGS = ["--steps", "2", "--eval-every", "1", "--batch-size", "2", "--per-prompt", "2", "--lr", "1e-3", "--prompt",
        PROMPTS[0]]


def test_lrm_tune_with_no_generator_starts_from_the_embedded_student_and_resumes(tiny_embedded, tmp_path):
    from lrm.generators import embedded

    out = tmp_path / "tuned"
    command = ["tune", "jpeg-compressibility", "--concurrent", *ARGS, "--out", str(out)]
    result = runner.invoke(cli_app(), command)
    assert result.exit_code == 0, result.output
    assert "the surrogate trained on 4 real latents" in result.output
    facts = json.loads((out / "records.json").read_text())
    assert facts["from"].startswith(str(tiny_embedded / "students" / "image-4step-"))
    assert facts["store"] == str(embedded.embedded_store_dir()) and facts["real_rows"] == 4
    assert facts["checkpoints"] == ["checkpoints/step-00000000", "checkpoints/step-00000001",
                                    "checkpoints/step-00000002"]
    written = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*") if p.is_file()}
    again = runner.invoke(cli_app(), command)  # finished: the rerun resumes at the end and rewrites the same facts
    assert again.exit_code == 0, again.output
    assert written and {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*") if p.is_file()} == written
    assert same(json.loads((out / "records.json").read_text())["records"], facts["records"])
    changed = runner.invoke(cli_app(), [*command, "--seed", "3"])
    assert changed.exit_code == 2 and "cannot resume tune run" in changed.output
    assert "tune.seed: saved 0, now 3" in changed.output and "Traceback" not in changed.output


def test_lrm_tune_with_no_generator_takes_the_embedded_student_that_makes_what_the_reward_scores(tmp_path,
                                                                                               monkeypatch):
    from lrm.tuning import embedded as students

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    asked = []

    def not_distilled(student_steps=4, video=False, **options):  # the minutes of distilling, left out
        asked.append((student_steps, video))
        raise FileNotFoundError("stopped before distilling")

    monkeypatch.setattr(students, "embedded_student", not_distilled)
    for reward, video, steps in (("temporal-flickering", True, "4"), ("jpeg-compressibility", False, "2"),
                                 ("colorfulness", False, "4")):
        result = runner.invoke(cli_app(), ["tune", reward, "--concurrent", *ARGS, "--student-steps", steps])
        assert result.exit_code == 2 and "stopped before distilling" in result.output, result.output
        assert asked.pop() == (int(steps), video) and not asked
        kind = "video" if video else "image"
        where = students.embedded_student_dir(int(steps), video)
        assert f"distilling the embedded {steps}-step {kind} student into {where}" in " ".join(result.output.split())
        assert "image model" not in result.output  # the old refusal of video rewards is gone


def test_lrm_tune_cd_takes_real_latents_from_the_teacher_store_or_store(teacher, tmp_path):
    out = tmp_path / "cd"
    start = ["tune", "jpeg-incompressibility", "--teacher", str(teacher), "--losses", "vsd,cd", "--student-steps", "1"]
    result = runner.invoke(cli_app(), [*start, "--concurrent", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    facts = json.loads((out / "records.json").read_text())
    assert set(facts["losses"][0]) == {"vsd", "cd", "fake_score", "lrm_ft", "lrm"} and facts["real_rows"] == 4
    other = encode(EncodeConfig("procedural:4", frames=1, size=32, text="minilm-l6-v2", text_length=32),
                   tmp_path / "store-32px", progress=False)
    wrong = runner.invoke(cli_app(), [*start, "--concurrent", *ARGS, "--store", str(other.path)])
    assert wrong.exit_code == 2 and "--store feeds CD" not in wrong.output
    assert "holds latents of shape (1, 32, 4, 4)" in wrong.output and "Traceback" not in wrong.output
    unread = runner.invoke(cli_app(), ["tune", "colorfulness", "--teacher", str(teacher), "--method", "direct", *ARGS,
                                       "--store", str(other.path)])
    assert unread.exit_code == 2 and "--store feeds CD (--losses cd) and the concurrent surrogate" in unread.output


def test_the_best_evaluation_is_the_best_finite_gold_in_the_rewards_direction_with_its_checkpoint(tmp_path):
    from lrm.tuning.monitor import TuningRecord

    def record(step, gold):
        return TuningRecord(step=step, gold=gold, proxy=float("nan"), diversity=1.0, distance=0.0, nonfinite=0)

    records = [record(0, 1.0), record(50, 3.0), record(100, float("nan")), record(150, 2.0), record(200, 3.0)]
    (tmp_path / "checkpoints" / "step-00000050").mkdir(parents=True)
    best, folder = tune_run.best_evaluation(records, 1.0, tmp_path)
    assert best.step == 50 and folder == tmp_path / "checkpoints" / "step-00000050"  # the earliest of two equal
    best, folder = tune_run.best_evaluation(records, -1.0, tmp_path)  # lower is better (niqe, brisque)
    assert best.step == 0 and folder is None  # no checkpoint kept at that step
    assert tune_run.best_evaluation([record(0, float("nan"))], 1.0, tmp_path) is None
