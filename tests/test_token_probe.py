"""benchmarks/token_probe.py: the tokens it probes, their features and its probe, on hand-made inputs."""

import numpy as np
import torch

from benchmark_scripts import load_benchmark


def test_token_features_read_a_token_and_its_zero_padded_neighbourhood():
    bench = load_benchmark("token_probe")
    latents = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)  # (N, C, h, w)
    tokens = np.array([[1, 2], [0, 3]])  # (row, col) per image; the second at the top-right corner
    centre = bench.token_features(latents, tokens)
    np.testing.assert_array_equal(centre, np.stack([latents[0, :, 1, 2].numpy(), latents[1, :, 0, 3].numpy()]))
    around = bench.token_features(latents, tokens, reach=1)
    assert around.shape == (2, 3 * 9)
    np.testing.assert_array_equal(around[0].reshape(3, 3, 3), latents[0, :, 0:3, 1:4].numpy())
    corner = around[1].reshape(3, 3, 3)  # rows -1..1, cols 2..4 of image 1: the padding is zero
    np.testing.assert_array_equal(corner[:, 0], 0)
    np.testing.assert_array_equal(corner[:, :, 2], 0)
    np.testing.assert_array_equal(corner[:, 1:, :2], latents[1, :, 0:2, 2:4].numpy())
    assert bench.token_features(latents, tokens, reach=2).shape == (2, 3 * 25)


def test_object_token_lies_on_the_object_and_the_centre_token_under_its_centre():
    bench = load_benchmark("token_probe")
    ring = {"shape": "ring", "radius": 18.0, "center": [33.0, 28.0]}  # a hole of radius 9.9 px around (33, 28)
    rng = np.random.default_rng(0)
    for _ in range(20):
        centre, inside = bench.object_tokens(ring, rng)
        assert centre == (3, 4)  # (row, col) = (28 // 8, 33 // 8): the hole
        row, col = inside
        distance = np.hypot(8 * col + 4 - 33, 8 * row + 4 - 28)  # of the token's centre pixel
        assert 0.55 * 18 - 4 <= distance <= 18 + 4 and inside != centre  # on the ring's band, not in its hole


def test_probe_reads_a_label_written_in_the_features_and_not_one_that_is_not():
    bench = load_benchmark("token_probe")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    noise = rng.standard_normal((600, 5))
    written = noise + 4.0 * np.eye(3, 5)[labels]  # the label shifts one feature each
    assert bench.probe_accuracy(written, labels, 400) > 0.95
    assert bench.probe_accuracy(noise, labels, 400) < 0.5  # chance: 1/3
