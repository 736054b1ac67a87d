"""Media reading: images of any mode, videos through both decoders, GIFs, folders, prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrm.datasets import media
from lrm.datasets.media import (
    MediaError,
    iter_clips,
    list_media,
    read_clip,
    read_prompts,
    resize_center_crop,
    video_backend,
)
from lrm.frames import uniform_indices

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_VIDEO = DATA / "videos" / "flipping_a_pancake.mkv"
GRAY_STEP = 8  # gray level step between consecutive frames of the made video


def _gray_level(frame: torch.Tensor) -> float:
    return float(frame.mean() * 255)


def make_video(path: Path, frames: int = 40, fps: int = 10, size=(48, 64), codec: str = "libx264") -> Path:
    """A video whose frame i is flat gray at level 10 + GRAY_STEP * i (so indices can be read back)."""
    import av

    h, w = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0"}
        for i in range(frames):
            frame = np.full((h, w, 3), 10 + GRAY_STEP * (i % 30), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------- listing


def test_list_media_is_recursive_sorted_and_filtered(tmp_path):
    for name in ["b.PNG", "a.jpg", "sub/c.mp4", "sub/deeper/d.gif", "notes.txt", ".hidden.jpg", ".cache/e.png",
                 "sub/f.webm", "g.jpeg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_media(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "g.jpeg", "sub/c.mp4", "sub/deeper/d.gif", "sub/f.webm"]
    videos = [p.name for p in list_media(tmp_path, kinds=("video",))]
    assert videos == ["c.mp4", "f.webm"]
    assert list_media(tmp_path / "a.jpg") == [tmp_path / "a.jpg"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_media(tmp_path / "absent")
    with pytest.raises(MediaError, match="unsupported extension '.txt'"):
        list_media(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("RGB", (10, 200, 30), (10, 200, 30)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white
        ("RGBA", (0, 0, 0, 255), (0, 0, 0)),
        ("LA", (0, 128), (127, 127, 127)),  # half-transparent black over white
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 40, (40, 40, 40)),
    ],
)
def test_images_of_any_mode_become_rgb(tmp_path, mode, value, expected):
    path = tmp_path / f"img_{mode.replace(';', '')}.png" if mode != "CMYK" else tmp_path / "img.jpg"
    Image.new(mode, (12, 10), value).save(path)
    clip = read_clip(path)
    assert clip.pixels.shape == (1, 3, 10, 12) and clip.pixels.dtype == torch.float32
    got = (clip.pixels[0, :, 5, 5] * 255).round().tolist()
    assert np.allclose(got, expected, atol=1), (mode, got)
    assert clip.frame_indices == (0,) and clip.num_frames == 1 and clip.fps is None
    assert clip.source == str(path) and clip.group == str(path)


@pytest.mark.parametrize(
    "mode, value, expected", [("I", 257 * 200, 200), ("I", 100, 100), ("F", 0.5, 128), ("F", 64.0, 64)]
)
def test_32_bit_modes_are_rescaled_to_8_bits(mode, value, expected):
    # 32-bit modes come from TIFF-like sources and cannot be saved as PNG: test the conversion itself.
    rgb = media._pil_to_rgb(Image.new(mode, (4, 3), value))
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert (rgb == expected).all(), rgb[0, 0]


def test_palette_image_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.save(tmp_path / "p.png", transparency=0)
    pixels = read_clip(tmp_path / "p.png").pixels[0]
    assert (pixels[:, 0, 0] * 255).round().tolist() == [255, 255, 255]  # transparent index -> white
    assert (pixels[:, 4, 4] * 255).round().tolist() == [255, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_clip(tmp_path / "rotated.jpg").pixels.shape == (1, 3, 40, 20)


def test_resize_center_crop_matches_pil_and_keeps_the_centre():
    rng = np.random.default_rng(0)
    smooth = rng.random((12, 18, 3)).astype(np.float32)
    big = np.asarray(Image.fromarray((smooth * 255).astype(np.uint8)).resize((180, 120), Image.BICUBIC))
    pixels = torch.from_numpy(big.copy()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 120, 180)
    out = resize_center_crop(pixels, 40)  # short side 120 -> 40, width 180 -> 60, crop 10 each side
    reference = np.asarray(Image.fromarray(big).resize((60, 40), Image.BILINEAR))[:, 10:50] / 255.0
    assert out.shape == (1, 3, 40, 40)
    assert np.abs(out[0].permute(1, 2, 0).numpy() - reference).mean() < 1.5 / 255
    # A non-square target covers the frame, then crops: the marked centre stays in the centre.
    marked = torch.zeros(1, 3, 100, 200)
    marked[..., 45:55, 95:105] = 1.0
    tall = resize_center_crop(marked, (50, 20))  # scale 0.5 -> (50, 100), crop the middle 20 columns
    assert tall.shape == (1, 3, 50, 20)
    ys, xs = torch.nonzero(tall[0, 0] > 0.5, as_tuple=True)
    assert abs(ys.float().mean() - 24.5) < 1 and abs(xs.float().mean() - 9.5) < 1
    with pytest.raises(ValueError, match="size must be"):
        resize_center_crop(marked, (0, 4))


def test_read_clip_resizes_and_crops(tmp_path):
    Image.new("RGB", (300, 200), (200, 10, 10)).save(tmp_path / "wide.png")
    clip = read_clip(tmp_path / "wide.png", size=(32, 48))
    assert clip.pixels.shape == (1, 3, 32, 48)
    assert torch.allclose(clip.pixels[0, :, 16, 24] * 255, torch.tensor([200.0, 10, 10]), atol=0.5)


# --------------------------------------------------------------------------- videos and GIFs


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_frames_follow_uniform_sampling(tmp_path, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    path = make_video(tmp_path / "gray.mp4", frames=24, fps=12)
    clip = read_clip(path, frames=5, backend=backend)
    expected = uniform_indices(24, 5)
    assert clip.frame_indices == tuple(expected.tolist())
    assert clip.num_frames == 24 and clip.fps == pytest.approx(12.0)
    assert clip.pixels.shape == (5, 3, 48, 64)
    levels = [_gray_level(f) for f in clip.pixels]
    assert np.allclose(levels, 10 + GRAY_STEP * expected, atol=2.0), levels
    strided = read_clip(path, stride=5, backend=backend)
    assert strided.frame_indices == (0, 5, 10, 15, 20)
    every = read_clip(path, size=16, backend=backend)
    assert every.pixels.shape == (24, 3, 16, 16)


@pytest.mark.parametrize("backend", ["decord", "pyav", "gif"])
def test_a_pick_reads_exactly_the_frames_it_names(tmp_path, backend):
    # pyav dropped a frame picked twice before the end: (0, 3, 3, 7) read as (0, 3, 9, 9)
    if backend == "decord":
        pytest.importorskip("decord")
    if backend == "gif":
        path = tmp_path / "gray.gif"
        frames = [Image.fromarray(np.full((48, 64, 3), 10 + GRAY_STEP * i, np.uint8)) for i in range(10)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    else:
        path = make_video(tmp_path / "gray.mp4", frames=10, fps=12)
    options = {} if backend == "gif" else {"backend": backend}
    clip = read_clip(path, pick=lambda n: np.array([0, 3, 3, 7, 9, 9]), **options)
    assert clip.frame_indices == (0, 3, 3, 7, 9, 9)
    levels = [_gray_level(f) for f in clip.pixels]
    assert np.allclose(levels, 10 + GRAY_STEP * np.array([0, 3, 3, 7, 9, 9]), atol=2.0), levels
    for bad in ([5, 2], [3, 20], [-1, 2], []):
        with pytest.raises(ValueError, match="is not a non-decreasing list in"):
            read_clip(path, pick=lambda n, bad=bad: np.array(bad, dtype=np.int64), **options)


def test_video_backends_agree_on_a_made_video(tmp_path):
    pytest.importorskip("decord")
    path = make_video(tmp_path / "mpeg4.avi", frames=30, codec="mpeg4")
    a = read_clip(path, frames=7, backend="decord")
    b = read_clip(path, frames=7, backend="pyav")
    assert a.frame_indices == b.frame_indices and a.num_frames == b.num_frames == 30
    assert (a.pixels - b.pixels).abs().max() <= 2 / 255


@pytest.mark.data
def test_video_backends_agree_on_a_real_video():
    pytest.importorskip("decord")
    if not REAL_VIDEO.is_file():
        pytest.skip(f"real video not found at {REAL_VIDEO} (../shared/data is absent)")
    a = read_clip(REAL_VIDEO, frames=8, size=128, backend="decord")
    b = read_clip(REAL_VIDEO, frames=8, size=128, backend="pyav")
    assert a.num_frames == b.num_frames == 310 and a.fps == pytest.approx(30.0) == b.fps
    assert a.frame_indices == b.frame_indices == tuple(uniform_indices(310, 8).tolist())
    assert a.pixels.shape == (8, 3, 128, 128)
    assert (a.pixels - b.pixels).abs().mean() < 1 / 255
    assert (a.pixels - b.pixels).abs().max() < 8 / 255
    assert (a.pixels[1:] - a.pixels[:-1]).abs().mean() > 5 / 255  # distinct frames, not one repeated


def test_backend_switch_by_argument_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_VIDEO_BACKEND", "pyav")
    assert video_backend() == "pyav"
    assert video_backend("decord") == "decord"
    path = make_video(tmp_path / "v.mp4", frames=6)

    def refuse(*args):
        raise AssertionError("decord must not be used when LRM_VIDEO_BACKEND=pyav")

    monkeypatch.setattr(media, "_read_video_decord", refuse)
    assert read_clip(path).num_frames == 6
    monkeypatch.setenv("LRM_VIDEO_BACKEND", "opencv")
    with pytest.raises(ValueError, match="LRM_VIDEO_BACKEND"):
        read_clip(path)
    monkeypatch.delenv("LRM_VIDEO_BACKEND")
    assert video_backend() in media.VIDEO_BACKENDS


def test_gif_reads_all_frames_with_its_rate(tmp_path):
    frames = [Image.new("RGB", (20, 16), (10 * i, 0, 255 - 10 * i)) for i in range(12)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    clip = read_clip(tmp_path / "anim.gif")
    assert clip.pixels.shape == (12, 3, 16, 20) and clip.num_frames == 12 and clip.fps == pytest.approx(20.0)
    reds = (clip.pixels[:, 0, 8, 10] * 255).round()
    assert np.allclose(reds.numpy(), 10 * np.arange(12), atol=3)  # GIF palette quantization
    sampled = read_clip(tmp_path / "anim.gif", frames=3)
    assert sampled.frame_indices == tuple(uniform_indices(12, 3).tolist())
    assert torch.equal(sampled.pixels, clip.pixels[list(sampled.frame_indices)])


# --------------------------------------------------------------------------- bad files


def test_bad_files_raise_media_error_naming_file_and_reason(tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00" * 100)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, quality=95)
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    for name in ("garbage.jpg", "truncated.jpg", "missing.png"):
        with pytest.raises(MediaError, match=name) as info:
            read_clip(tmp_path / name)
        assert info.value.path == tmp_path / name and info.value.reason
    for backend in ("pyav", "decord"):
        if backend == "decord" and media.video_backend() != "decord":
            continue
        with pytest.raises(MediaError, match="garbage.mp4: cannot decode video"):
            read_clip(tmp_path / "garbage.mp4", backend=backend)
    with pytest.raises(MediaError, match="unsupported extension '.xyz'"):
        read_clip(tmp_path / "file.xyz")
    with pytest.raises(ValueError, match="frames must be"):
        read_clip(good, frames=0)


def test_iter_clips_skips_bad_files_and_lists_them(tmp_path):
    Image.new("RGB", (30, 20), (0, 0, 255)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"broken")
    make_video(tmp_path / "c.mp4", frames=10)
    (tmp_path / "d.gif").write_bytes(b"GIF89a broken")
    stream = iter_clips(tmp_path, frames=4, size=16)
    clips = list(stream)
    assert [Path(c.source).name for c in clips] == ["a.png", "c.mp4"]
    assert all(c.pixels.shape[1:] == (3, 16, 16) for c in clips)
    assert clips[1].pixels.shape[0] == 4
    assert [p.name for p, _ in stream.skipped] == ["b.jpg", "d.gif"]
    assert all("cannot decode" in reason for _, reason in stream.skipped)
    assert len(list(stream)) == 2 and len(stream.skipped) == 2  # a second pass starts a fresh list
    explicit = iter_clips([tmp_path / "a.png", tmp_path / "missing.jpg"])
    assert len(list(explicit)) == 1 and explicit.skipped[0][1] == "no such file"


# --------------------------------------------------------------------------- prompts


def test_prompts_from_txt_skip_blank_lines(tmp_path):
    (tmp_path / "p.txt").write_text("a red car\n\n   \nA blue bird  \n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt") == ["a red car", "A blue bird"]


def test_prompts_from_csv(tmp_path):
    (tmp_path / "named.csv").write_text('id,Prompt,seed\n1,"a cat, sitting",3\n2,a dog,4\n', encoding="utf-8")
    assert read_prompts(tmp_path / "named.csv") == ["a cat, sitting", "a dog"]
    (tmp_path / "first.csv").write_text("caption_text,score\na tree,1\na house,2\n", encoding="utf-8")
    with pytest.raises(MediaError, match=r"no prompt column: the header row holds \['caption_text', 'score'\]"):
        read_prompts(tmp_path / "first.csv")  # was read silently from the first column
    (tmp_path / "caption.csv").write_text("id,Caption\n1,a tree\n2,a house\n", encoding="utf-8")
    assert read_prompts(tmp_path / "caption.csv") == ["a tree", "a house"]  # the keys .jsonl reads, any case
    (tmp_path / "text.tsv").write_text("id\ttext\n1\ta tree\n", encoding="utf-8")
    assert read_prompts(tmp_path / "text.tsv") == ["a tree"]
    assert read_prompts(tmp_path / "first.csv", column="score") == ["1", "2"]
    with pytest.raises(MediaError, match=r"no column 'text'; columns are \['caption_text', 'score'\]"):
        read_prompts(tmp_path / "first.csv", column="text")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(MediaError, match="empty.csv: empty table"):
        read_prompts(tmp_path / "empty.csv")


def test_prompts_from_jsonl_and_json(tmp_path):
    lines = [json.dumps({"prompt": "one"}), "", json.dumps({"text": "two"}), json.dumps({"caption": "three"})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert read_prompts(tmp_path / "p.jsonl") == ["one", "two", "three"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(MediaError, match="bad.jsonl: line 2: invalid JSON"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "nokey.jsonl").write_text('{"prompt": "ok"}\n\n{"title": "x"}\n', encoding="utf-8")
    with pytest.raises(MediaError, match=r"line 3: no prompt key .* keys \['title'\]"):
        read_prompts(tmp_path / "nokey.jsonl")
    (tmp_path / "p.json").write_text(json.dumps(["a", {"prompt_en": "b"}]), encoding="utf-8")
    assert read_prompts(tmp_path / "p.json") == ["a", "b"]


def test_prompts_from_parti_style_tsv(tmp_path):
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\nbond\tAbstract\na cat\tAnimals\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.tsv") == ["bond", "a cat"]


def test_prompt_file_errors(tmp_path):
    with pytest.raises(MediaError, match="no such prompt file"):
        read_prompts(tmp_path / "absent.txt")
    (tmp_path / "p.yaml").write_text("x", encoding="utf-8")
    with pytest.raises(MediaError, match="unsupported prompt file extension '.yaml'"):
        read_prompts(tmp_path / "p.yaml")
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(MediaError, match="contains no prompts"):
        read_prompts(tmp_path / "blank.txt")


@pytest.mark.data
@pytest.mark.parametrize(
    "name, count, first",
    [
        ("PartiPrompts.tsv", 1632, "bond"),
        ("geneval_metadata.jsonl", 553, "a photo of a bench"),
        ("vbench_full_info.json", 946, "In a still frame, a stop sign"),
    ],
)
def test_prompts_from_shared_data(name, count, first):
    path = DATA / "prompts" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/data is absent)")
    prompts = read_prompts(path)
    assert len(prompts) == count and prompts[0] == first
    assert all(isinstance(p, str) and p == p.strip() and p for p in prompts)
