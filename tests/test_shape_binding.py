"""benchmarks/shape_binding.py: the confusion of named and read shapes on procedural images with known captions,
and the partial denoising from noised real latents (SDEdit) on an exact x0 predictor."""

from __future__ import annotations

import pytest
import torch

from benchmark_scripts import load_benchmark
from lrm.datasets.procedural import SHAPES, ProceduralClips, world_config
from lrm.diffusion.schedules import VPSchedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("shape_binding")


def test_confusion_puts_real_images_on_the_diagonal_and_counts_only_right_colours(bench):
    clips = ProceduralClips(world_config("simple", seed=3, frames=1, size=64), count=60)
    pixels, captions = torch.stack([c.pixels for c in clips]), [c.caption for c in clips]
    table = bench.confusion(pixels, captions)
    assert set(table) == set(SHAPES) and all(set(row) == {*SHAPES, "none"} for row in table.values())
    counted = sum(sum(row.values()) for row in table.values())
    diagonal = sum(table[s][s] for s in SHAPES)
    assert counted >= 50 and diagonal >= 0.7 * counted  # the alignment ceiling of real frames: ~0.8
    other = captions[1:] + captions[:1]  # others' captions: few colours match, so few samples are counted
    assert sum(sum(row.values()) for row in bench.confusion(pixels, other).values()) < 0.4 * counted


class ExactX0:
    """A denoiser that predicts the same clean latents x0 for every input (prediction "x0"), counting its calls."""

    prediction = "x0"

    def __init__(self, x0: torch.Tensor):
        self.x0, self.calls, self.timesteps = x0, 0, []
        self.schedule = VPSchedule()

    def __call__(self, x_t, t, text, text_mask):
        self.calls += 1
        self.timesteps.append(int(t[0]))
        return self.x0.expand_as(x_t)


@pytest.mark.parametrize("start, steps", [(99, 5), (499, 25), (500, 25), (999, 50)])
def test_denoising_from_real_noises_to_the_grid_below_start_and_keeps_an_exact_x0(bench, start, steps):
    x0 = torch.randn(3, 1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    model = ExactX0(x0)
    text, mask = torch.zeros(3, 2, 8), torch.ones(3, 2, dtype=torch.bool)
    out = bench.denoise_from(model, x0, text, mask, start, cfg=1.0, seed=0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)  # DDIM with the exact x0 lands on it
    assert model.calls == steps and model.timesteps[0] == max(t for t in range(19, 1000, 20) if t <= start)
    assert model.timesteps == sorted(model.timesteps, reverse=True) and model.timesteps[-1] == 19
