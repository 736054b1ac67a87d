import sys

import pytest
import torch

from lrm.rewards import InputError, load


@pytest.fixture()
def metric_file(tmp_path):
    path = tmp_path / "my_metrics.py"
    path.write_text(
        "import numpy as np\n"
        "def brightness(pixels):\n    return pixels.mean(dim=(1, 2, 3, 4))\n"
        "def motion(frames):\n    return float(np.abs(np.diff(frames.astype(float), axis=0)).mean())\n"
        "def says_red(frames, prompt):\n    return 1.0 if 'red' in prompt else 0.0\n"
        "def wrong_count(pixels):\n    return pixels.new_zeros(3)\n"
        "def too_many(a, b, c):\n    return 0\n"
    )
    return path


def test_tensor_metric_is_differentiable(metric_file):
    reward = load(f"{metric_file}:brightness", differentiable=True)
    pixels = torch.rand(2, 3, 3, 8, 8, requires_grad=True)
    scores = reward(pixels)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    torch.testing.assert_close(scores, pixels.detach().mean(dim=(1, 2, 3, 4)))


def test_uint8_video_metric(metric_file):
    reward = load(f"{metric_file}:motion", kind="video", input="uint8")
    static = torch.full((1, 4, 3, 8, 8), 0.5)
    moving = torch.rand(1, 4, 3, 8, 8)
    assert reward(static).item() == 0.0 and reward(moving).item() > 10


def test_text_metric_gets_each_prompt(metric_file):
    reward = load(f"{metric_file}:says_red", kind="text-image", input="uint8")
    scores = reward(torch.rand(2, 1, 3, 8, 8), ["a red car", "a blue car"])
    assert scores.tolist() == [1.0, 0.0]
    with pytest.raises(InputError, match="needs prompts"):
        reward(torch.rand(2, 1, 3, 8, 8))


def test_module_reference(metric_file, monkeypatch):
    monkeypatch.syspath_prepend(str(metric_file.parent))
    reward = load("my_metrics:brightness")
    assert reward(torch.full((1, 1, 3, 4, 4), 0.25)).item() == pytest.approx(0.25)
    sys.modules.pop("my_metrics", None)
    (metric_file.parent / "broken_metrics.py").write_text("from os import no_such_name\ndef f(pixels):\n    return 0\n")
    with pytest.raises(ValueError, match="metric module broken_metrics failed to import: ImportError"):
        load("broken_metrics:f")  # an ImportError inside the user's module: one line, not a traceback


@pytest.mark.parametrize("reference, options, error, match", [
    ("{f}:wrong_count", {}, InputError, "returned 3 values for 2 clips"),
    ("{f}:too_many", {}, ValueError, "requires 3"),
    ("{f}:nope", {}, ValueError, "has no function 'nope'; it defines: "),
    ("/no/such/file.py:fn", {}, FileNotFoundError, "does not exist"),
    ("{f}:motion", {"input": "uint8", "differentiable": True}, ValueError, "cannot be differentiable"),
    ("{f}:motion", {"kind": "audio"}, ValueError, "kind must be one of"),
    ("{f}:motion", {"kind": "text-video"}, ValueError, "called with the pixels and the prompts, but it takes 1"),
    ("./my_metrics:brightness", {}, ValueError, "looks like a file path; give the file with its .py ending"),
])
def test_bad_metrics_give_clear_errors(metric_file, reference, options, error, match):
    with pytest.raises(error, match=match):
        reward = load(reference.format(f=metric_file), **options)
        reward(torch.rand(2, 1, 3, 4, 4))


@pytest.mark.parametrize("body, match", [
    ("return None", "returned None for a clip; return one number per clip"),
    ("return 'high'", "returned 'high' for a clip"),
    ("return [1.0, 2.0]", r"returned \[1.0, 2.0\] for a clip"),
    ("raise KeyError('weights')", "raised KeyError: 'weights'"),
])
def test_a_uint8_metric_that_returns_no_number_or_raises_is_a_metric_error(tmp_path, body, match):
    from lrm.rewards.custom import MetricError

    path = tmp_path / "odd.py"
    path.write_text(f"def score(frames):\n    {body}\n")
    with pytest.raises(MetricError, match=match):
        load(f"{path}:score", input="uint8")(torch.rand(1, 1, 3, 8, 8))


@pytest.mark.parametrize("body, match", [
    ("return None", "returned None; return a tensor of one score per clip"),
    ("return pixels.mean() > 0.5", "returned a torch.bool tensor"),
])
def test_a_tensor_metric_that_returns_no_scores_is_a_metric_error(tmp_path, body, match):
    from lrm.rewards.custom import MetricError

    path = tmp_path / "odd.py"
    path.write_text(f"def score(pixels):\n    {body}\n")
    with pytest.raises(MetricError, match=match):
        load(f"{path}:score")(torch.rand(1, 1, 3, 8, 8))


def test_a_metric_may_return_numpy_scalars_nan_and_one_element_tensors(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text("import numpy as np, torch\n"
                    "def np_scalar(frames):\n    return np.float32(frames.mean())\n"
                    "def nan(frames):\n    return float('nan')\n"
                    "def one(pixels):\n    return pixels.mean()\n")
    pixels = torch.full((1, 1, 3, 4, 4), 0.5)
    assert load(f"{path}:np_scalar", input="uint8")(pixels).item() == pytest.approx(128.0)
    assert torch.isnan(load(f"{path}:nan", input="uint8")(pixels)).all()  # NaN passes: callers skip and count it
    assert load(f"{path}:one")(pixels).item() == pytest.approx(0.5)
