"""benchmarks/tune_step_memory.py (DOLLAR Tab. 8): each path's step loss, and the table comparing the LRM step with
every other path measured. (The measurements themselves build a ViT-H-14 and run in the benchmark, not here.)"""

from __future__ import annotations

import pytest
import torch

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("tune_step_memory")


class ScaledReward(torch.nn.Module):
    """A reward with a parameter, so a gradient reaching the reward would show: R(x) = w * mean(x) per row."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):  # x (B, H, c, h, w) -> (B,)
        self.seen.append(x.detach().clone())
        return self.w * x.flatten(1).mean(1)


def test_the_ddpo_step_is_reinforce_on_a_sample_scored_without_gradient(bench):
    torch.manual_seed(0)
    reward = ScaledReward()
    x0 = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    bench.step_loss("ddpo", reward, x0).backward()
    (sample,) = reward.seen
    score = 2.0 * sample.mean()
    # d/dx0 of -R log N(x; x0, s^2) = -R (x - x0) / s^2: a policy gradient, the reward a constant weight
    torch.testing.assert_close(x0.grad, -score * (sample - x0.detach()) / bench.SIGMA**2)
    assert reward.w.grad is None  # the reward was scored without a graph
    assert not torch.equal(sample, x0.detach())  # it scored a drawn sample, not the mean


@pytest.mark.parametrize("path", ["lrm", "pixel"])
def test_the_gradient_paths_backpropagate_minus_the_reward_through_it(bench, path):
    reward = ScaledReward()
    x0 = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    bench.step_loss(path, reward, x0).backward()
    torch.testing.assert_close(x0.grad, torch.full_like(x0, -2.0 / x0[0].numel()))
    assert reward.w.grad is not None


def row(path, frames, peak, cpu, status="ok"):
    return {"path": path, "frames": frames, "status": status, "peak_mb": peak, "step_s": cpu, "step_cpu_s": cpu}


def test_the_table_gives_the_lrm_steps_share_of_each_other_path(bench):
    rows = [row("lrm", 1, 20.0, 0.01), row("lrm", 8, 40.0, 0.02), row("pixel", 1, 2000.0, 10.0),
            {"path": "pixel", "frames": 8, "status": "skipped"}, row("ddpo", 1, 1000.0, 5.0),
            row("ddpo", 8, 4000.0, 8.0)]
    one, eight = bench.ratio_table(rows)
    assert one["memory_share_pixel"] == pytest.approx(0.01) and one["memory_share_ddpo"] == pytest.approx(0.02)
    assert one["time_share_cpu_ddpo"] == pytest.approx(0.002)
    assert eight["memory_share_pixel"] is None and eight["memory_share_ddpo"] == pytest.approx(0.01)
    table = bench.markdown([one, eight], "cpu").splitlines()
    assert table[0] == ("| H | LRM peak (MB) | pixel peak (MB) | DDPO-SF peak (MB) | LRM / pixel memory | "
                        "LRM / DDPO-SF memory | LRM step (CPU s) | pixel step (CPU s) | DDPO-SF step (CPU s) | "
                        "LRM / pixel time | LRM / DDPO-SF time |")
    assert table[3] == "| 8 | 40.0 | skipped | 4,000 | — | 1.000% | 0.02 | skipped | 8 | — | 0.250% |"


def test_a_table_of_lrm_and_one_path_has_only_their_columns(bench):
    (entry,) = bench.ratio_table([row("lrm", 2, 30.0, 0.01), row("ddpo", 2, 3000.0, 10.0)])
    assert "memory_share_pixel" not in entry and entry["memory_share_ddpo"] == pytest.approx(0.01)
    header = bench.markdown([entry], "cuda").splitlines()[0]
    assert "pixel" not in header and "LRM step (s)" in header
