import csv
import io
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from lrm.cli.app import app
from lrm.rewards import REWARDS, load

runner = CliRunner(env={"COLUMNS": "300"})  # no wrapping of error panels


@pytest.fixture()
def media(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "media"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / "flat.png")
    frames = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(folder / "fade.gif", save_all=True, append_images=frames[1:], duration=100)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_rewards_json_lists_every_registered_reward():
    result = runner.invoke(app, ["rewards", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(REWARDS)
    assert rows["jpeg-compressibility"]["ready"] and not rows["jpeg-compressibility"]["differentiable"]
    assert rows["sharpness"]["differentiable"]


def test_score_skips_bad_file_and_matches_library(media, tmp_path):
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", "jpeg-incompressibility", str(media), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "skipped 1" in result.output
    rows = {r["path"].rsplit("/", 1)[1]: float(r["score"]) for r in _csv(out.read_text())}
    assert set(rows) == {"noise.png", "flat.png", "fade.gif"}
    assert b"\r" not in out.read_bytes() and out.read_bytes().count(b"\n") == 4  # "\n" line ends, not CRLF
    pixels = torch.from_numpy(np.array(Image.open(media / "noise.png"))).permute(2, 0, 1).float() / 255
    expected = load("jpeg-incompressibility")(pixels[None, None]).item()
    assert rows["noise.png"] == pytest.approx(expected, rel=1e-6)
    assert rows["noise.png"] > rows["flat.png"]


def test_score_json_output_and_frames(media, tmp_path):
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["score", "temporal-flickering", str(media / "fade.gif"), "--frames", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())
    # by hand: the GIF's frames are flat levels 0, 40, 80, 120; --frames 3 keeps uniform_indices(4, 3) of them, and
    # temporal flickering is (255 - mean |level difference| of consecutive kept frames) / 255
    from lrm.frames import uniform_indices

    kept = 40 * np.asarray(uniform_indices(4, 3))
    assert row["frames"] == 3 and row["score"] == pytest.approx((255 - np.abs(np.diff(kept)).mean()) / 255, rel=1e-6)


def test_a_clip_too_small_for_optical_flow_is_skipped_by_name_and_the_others_scored(media, tmp_path):
    # OpenCV's DIS raised cv2.error (not a ValueError) on a 6x6 GIF: a traceback, and every other file's score lost
    tiny = [Image.fromarray(np.full((6, 6, 3), 60 * i, np.uint8)) for i in range(3)]
    tiny[0].save(tmp_path / "tiny.gif", save_all=True, append_images=tiny[1:], duration=100)
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", "dynamic-degree", str(media / "fade.gif"), str(tmp_path / "tiny.gif"),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny.gif" in result.output and "at least 12 pixels" in result.output and "skipped 1" in result.output
    assert [r["path"].rsplit("/", 1)[1] for r in _csv(out.read_text())] == ["fade.gif"]


def test_dynamic_degree_notes_media_read_at_another_frame_rate_than_its_fps_option(media, tmp_path):
    # VBench keeps every round(fps / 8)-th frame; a 25-fps clip scored as 8 fps compared consecutive frames
    frames = [Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)) for i in range(8)]
    frames[0].save(tmp_path / "fast.gif", save_all=True, append_images=frames[1:], duration=40)  # 25 fps
    result = runner.invoke(app, ["score", "dynamic-degree", str(tmp_path / "fast.gif"), str(media / "fade.gif")])
    assert result.exit_code == 0, result.output
    assert "note: dynamic-degree assumed 8 fps, but 1 file(s) were read at 25 fps; pass -o fps=25" in result.output
    # fade.gif (10 fps) keeps every frame at 8 fps too; with -o fps=25 the 25-fps clip keeps every 3rd
    quiet = runner.invoke(app, ["score", "dynamic-degree", str(tmp_path / "fast.gif"), "-o", "fps=25"])
    assert quiet.exit_code == 0 and "note:" not in quiet.output, quiet.output


def test_score_text_reward_needs_a_prompt(media):
    result = runner.invoke(app, ["score", "prompt-color", str(media / "flat.png")])
    assert result.exit_code != 0
    assert "--prompt" in result.output
    ok = runner.invoke(app, ["score", "prompt-color", str(media / "flat.png"), "--prompt", "a gray wall"])
    assert ok.exit_code == 0, ok.output


def test_score_exits_nonzero_when_nothing_scored(media):
    result = runner.invoke(app, ["score", "sharpness", str(media / "broken.png")])
    assert result.exit_code == 1
    assert "scored 0" in result.output


def test_score_rejects_bad_flags_up_front(media):
    bad_out = runner.invoke(app, ["score", "sharpness", str(media), "--out", "x.txt"])
    assert bad_out.exit_code != 0 and ".csv or .json" in bad_out.output
    both = runner.invoke(app, ["score", "prompt-color", str(media), "--prompt", "red", "--prompts", "p.txt"])
    assert both.exit_code != 0 and "not both" in both.output
    unknown = runner.invoke(app, ["score", "no-such-reward", str(media)])
    assert unknown.exit_code != 0 and "Known rewards" in unknown.output


def test_score_users_metric_file(media, tmp_path):
    metric = tmp_path / "brightness.py"
    metric.write_text("import numpy as np\n\ndef mean_level(frames):\n    return float(frames.mean())\n")
    result = runner.invoke(app, ["score", f"{metric}:mean_level", str(media / "flat.png"), "--kind", "image",
                                 "--input", "uint8"])
    assert result.exit_code == 0, result.output
    (row,) = _csv(result.stdout)
    assert "\r" not in result.stdout  # CSV on stdout too
    assert float(row["score"]) == pytest.approx(128.0)
    metric.write_text("def x(frames):\n    return float(frames.mean())\n")  # rich read `brightness.py:x:` as :x:
    result = runner.invoke(app, ["score", f"{metric}:x", str(media / "flat.png"), "--kind", "image", "--input", "uint8"])
    assert result.exit_code == 0 and f"{metric}:x: scored 1 file(s)" in result.output, result.output


def test_the_lrm_command_prints_bad_input_as_one_message(media, monkeypatch, capsys):
    from lrm.cli.app import main
    from lrm.cli.errors import TRACEBACK_ENV

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.setattr("sys.argv", ["lrm", "score", "no-such-reward", str(media)])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: unknown reward 'no-such-reward'. Known rewards:") and "Traceback" not in err
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(KeyError, match="Known rewards"):
        main()


def test_named_files_that_are_not_media_are_skipped_and_counted(media, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# not an image\n")
    result = runner.invoke(app, ["score", "sharpness", str(media / "flat.png"), str(notes), str(media / "broken.png")])
    assert result.exit_code == 0, result.output
    assert "scored 1 file(s), skipped 2" in result.output
    assert f"skipped {notes}: unsupported extension '.md'" in result.output
    assert f"skipped {media / 'broken.png'}: cannot decode image" in result.output  # the path once, then why


@pytest.mark.parametrize("command", [["score", "sharpness", "MEDIA"], ["predict", "RUN", "MEDIA"],
                                     ["encode", "procedural:2", "--out", "STORE"], ["label", "STORE", "sharpness"],
                                     ["fit", "sharpness", "--dry-run"]])
def test_a_device_this_machine_lacks_is_refused_before_any_work(command, media, tmp_path, monkeypatch):
    import torch

    where = {"MEDIA": str(media), "RUN": str(tmp_path / "run"), "STORE": str(tmp_path / "store")}
    args = [where.get(a, a) for a in command]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = runner.invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU is visible here" in result.output and "--device cpu" in result.output
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, [*args, "--device", "cuda:1"])
    assert result.exit_code == 2 and "1 CUDA GPU(s), cuda:0 to cuda:0" in result.output
    result = runner.invoke(app, [*args, "--device", "gpu"])
    assert result.exit_code == 2 and "is not a torch device" in result.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- VBench adapters read files as VBench does


def vbench_middle_indices(num_frames: int, k: int = 8) -> list[int]:
    """vbench.utils.get_frame_indices(k, num_frames, sample="middle"), written out: split [0, T) at
    int(i * T / n) for n = min(k, T) intervals, take (start + end - 1) // 2 of each, pad with the last."""
    n = min(k, num_frames)
    edges = [i * num_frames // n for i in range(n + 1)]  # np.linspace(0, T, n + 1).astype(int); T / 8 is exact
    middle = [(start + end - 1) // 2 for start, end in itertools.pairwise(edges)]
    return middle + [middle[-1]] * (k - n)


def flat_frames_gif(path, num_frames: int, h: int = 40, w: int = 56):
    """A GIF whose frame i is the flat grey level 10 + 3 i, so a frame's level names its index."""
    frames = [Image.fromarray(np.full((h, w, 3), 10 + 3 * i, np.uint8)) for i in range(num_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40)
    return path


@pytest.mark.parametrize("num_frames", [5, 8, 16, 17, 33, 64])
def test_score_viclip_score_sees_the_frames_vbench_samples(num_frames, tmp_path, monkeypatch):
    # `lrm score` pre-sampled the reward's 8 frames with lrm's uniform_indices (frames 1, 3, .. 15 of 16);
    # VBench's overall_consistency reads get_frame_indices(8, T, "middle") (0, 2, .. 14)
    from lrm.rewards import vbench_dims, viclip
    from lrm.rewards.vbench_dims import CLIP_MEAN, CLIP_STD

    torch.manual_seed(0)
    model = viclip.build_viclip(viclip.ViCLIPConfig(
        image_size=224, patch_size=32, frames=8, vision_width=32, vision_layers=1, vision_heads=2,
        text_width=32, text_layers=1, text_heads=2, embed_dim=16, context_length=32)).requires_grad_(False)
    seen = []
    encode_video = model.encode_video
    model.encode_video = lambda x: seen.append(x) or encode_video(x)  # x (1, 8, 3, 224, 224) CLIP-normalised
    monkeypatch.setattr("lrm.rewards.load", lambda name, **options: vbench_dims.ViCLIPScore(model))
    clip = flat_frames_gif(tmp_path / "clip.gif", num_frames)
    result = runner.invoke(app, ["score", "viclip-score", str(clip), "--prompt", "a grey wall"])
    assert result.exit_code == 0, result.output
    (x,) = seen
    levels = (x[0, :, 0].mean(dim=(-2, -1)) * CLIP_STD[0] + CLIP_MEAN[0]) * 255  # (8,) grey level per frame
    assert [round((v - 10) / 3) for v in levels.tolist()] == vbench_middle_indices(num_frames)
    (row,) = _csv(result.stdout)
    assert row["frames"] == "8"  # only VBench's 8 frames were decoded, not the whole file


def test_score_subject_consistency_keeps_the_aspect_ratio_like_vbench(tmp_path, monkeypatch):
    # `lrm score` centre-cropped every file to the spec's 224 x 224; VBench's dino_transform resizes the short side
    # to 224 and keeps the whole frame (a 60 x 100 video: 224 x 373)
    from timm.models.vision_transformer import VisionTransformer

    from lrm.rewards import vbench_dims

    vbench_utils = pytest.importorskip("vbench.utils")
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    vit = vit.eval().requires_grad_(False)
    shapes = []
    vit.patch_embed.proj.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    monkeypatch.setattr("lrm.rewards.load", lambda name, **options: vbench_dims.SubjectConsistency(vit))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (60, 100, 3))
    frames = [Image.fromarray((base + 20 * i).astype(np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "wide.gif", save_all=True, append_images=frames[1:], duration=125)
    result = runner.invoke(app, ["score", "subject-consistency", str(tmp_path / "wide.gif")])
    assert result.exit_code == 0, result.output
    assert shapes == [(3, 3, 224, 373)]
    # VBench's subject_consistency loop on dino_transform(224) of the GIF's uint8 frames (T, C, H, W)
    with Image.open(tmp_path / "wide.gif") as gif:  # VBench's load_video reads a GIF's frames as RGB uint8
        raw = np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])
    images = vbench_utils.dino_transform(224)(torch.from_numpy(raw).permute(0, 3, 1, 2))
    with torch.no_grad():
        features = torch.nn.functional.normalize(vbench_dims.dino_cls_features(vit, images), dim=-1)
    sims = [(max(0.0, float(features[i] @ features[i - 1])) + max(0.0, float(features[i] @ features[0]))) / 2
            for i in range(1, len(features))]
    (row,) = _csv(result.stdout)
    assert float(row["score"]) == pytest.approx(sum(sims) / len(sims), abs=1e-3)  # VBench rounds to uint8 first


def test_frame_rate_notes_name_files_and_store_clips_whose_frames_vbench_would_not_keep():
    # shared by `lrm score` and `lrm label`: dynamic-degree keeps every round(fps_option / 8)-th frame it is given,
    # VBench every round(fps / 8)-th frame of the whole file
    from lrm.cli.score import frame_rate_notes
    from lrm.frames import uniform_indices

    reward = load("dynamic-degree")
    reads = [(25.0, 8, tuple(range(8))), (10.0, 4, tuple(range(4))), (None, 8, tuple(range(8))),
             (24.0, 48, tuple(uniform_indices(48, 8))), (25.0, 16, tuple(range(16)))]
    sampled = ("note: dynamic-degree was given other frames than VBench keeps (every round(fps / 8)-th frame of the "
               "whole file) for 1 clip(s), and no fps option gives VBench's; these values are not VBench's (FIX)")
    assert frame_rate_notes(reward, reads, "clip(s)", "FIX") == [
        ("note: dynamic-degree assumed 8 fps, but 2 clip(s) were read at 25 fps; pass -o fps=25 to score them as "
         "VBench does"), sampled]
    # every 2nd frame of a 25-fps file (--stride 2): VBench keeps every 3rd, which no fps option gives from them;
    # every frame of a 20.4-fps file: the rate to pass keeps its decimals (fps=20 would keep every 2nd, not 3rd)
    assert frame_rate_notes(reward, [(25.0, 24, tuple(range(0, 24, 2)))], "clip(s)", "FIX") == [sampled]
    assert frame_rate_notes(reward, [(25.0, 4, (0, 0, 1, 1, 2, 2, 3, 3))], "clip(s)", "FIX") == [sampled]  # padded: repeats
    assert frame_rate_notes(reward, [(20.4, 24, tuple(range(24)))], "clip(s)", "FIX") == [
        ("note: dynamic-degree assumed 8 fps, but 1 clip(s) were read at 20.4 fps; pass -o fps=20.4 to score them "
         "as VBench does")]
    assert frame_rate_notes(load("dynamic-degree", fps=25.0), reads[:2], "clip(s)", "FIX") == [
        ("note: dynamic-degree assumed 25 fps, but 1 clip(s) were read at 10 fps; pass -o fps=10 to score them as "
         "VBench does")]
    assert frame_rate_notes(load("temporal-flickering"), reads, "clip(s)", "FIX") == []


def test_label_notes_store_clips_whose_frames_vbench_would_not_keep(tmp_path):
    # `lrm label` wrote dynamic-degree columns silently, whatever the files' frame rate
    media = tmp_path / "media"
    media.mkdir()
    for name, count, ms in [("fast", 8, 40), ("slow", 8, 100), ("long", 16, 40)]:  # 25 fps, 10 fps, 25 fps
        frames = [Image.fromarray(np.full((32, 32, 3), 12 * i, np.uint8)) for i in range(count)]
        frames[0].save(media / f"{name}.gif", save_all=True, append_images=frames[1:], duration=ms)
    store = tmp_path / "store"
    encoded = runner.invoke(app, ["encode", str(media), "--size", "32", "--out", str(store), "--quiet"])
    assert encoded.exit_code == 0, encoded.output
    result = runner.invoke(app, ["label", str(store), "dynamic-degree", "--quiet"])
    assert result.exit_code == 0, result.output
    # fast.gif: its 8 frames, at 25 fps; long.gif: 8 of its 16 frames; slow.gif: VBench keeps its 8 frames too
    assert "note: dynamic-degree assumed 8 fps, but 1 clip(s) were read at 25 fps; pass -o fps=25" in result.output
    assert "was given other frames than VBench keeps (every round(fps / 8)-th frame of the whole file) for 1 clip(s)" \
        in result.output
    quiet = runner.invoke(app, ["label", str(store), "dd25=dynamic-degree", "-o", "fps=25", "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "read at 25 fps" not in quiet.output and "assumed 25 fps, but 1 clip(s) were read at 10 fps" in quiet.output
    assert "whole file) for 1 clip(s)" in quiet.output
    # the media moved away: the labels of decoded latents are written, the notes (which read the files) left out
    media.rename(tmp_path / "moved")
    moved = runner.invoke(app, ["label", str(store), "dd@decoded=dynamic-degree", "--pixels", "decoded", "--quiet"])
    assert moved.exit_code == 0 and "note:" not in moved.output, moved.output
