"""benchmarks/distill.py: the interleaved timing rounds of --speed-only (order of the timed calls, medians, per-round
speed-ups and their range), on fake samplers whose calls take scripted times."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("distill")


class FakeSampler:
    """A TimedSampler stand-in: each call returns its next scripted time and is logged in `calls`."""

    def __init__(self, name, calls, cold, cached, text):
        self.name, self.calls = name, calls
        self.times = {"cold": list(cold), "cached": list(cached), "text": list(text)}

    def sample(self):
        self.calls.append((self.name, "warm-up"))

    def seconds(self, cached):
        kind = "cached" if cached else "cold"
        self.calls.append((self.name, kind))
        return self.times[kind].pop(0)

    def text_seconds(self):
        self.calls.append((self.name, "text"))
        return self.times["text"].pop(0)


def test_speed_rounds_interleave_the_models_and_take_medians_of_per_round_ratios(bench):
    calls = []
    # the machine is slow in round 2: both models take twice as long, so the per-round ratio stays 100x there
    teacher = FakeSampler("teacher", calls, cold=[30.0, 60.0, 33.0], cached=[29.0, 58.0, 32.0], text=[0.1] * 3)
    student = FakeSampler("student-1", calls, cold=[0.3, 0.6, 0.5], cached=[0.2, 0.4, 0.25], text=[0.1, 0.2, 0.1])
    rows = bench.timings({"teacher": teacher, "student-1": student}, repeats=3)
    assert calls[:2] == [("teacher", "warm-up"), ("student-1", "warm-up")]
    assert calls[2:8] == [("teacher", "cold"), ("teacher", "cached"), ("teacher", "text"),
                          ("student-1", "cold"), ("student-1", "cached"), ("student-1", "text")]  # round 1
    assert len(calls) == 2 + 3 * 6
    s = rows["student-1"]
    assert (s["sampling_s"], s["sampling_cached_s"], s["text_s"]) == (0.5, 0.25, 0.1)  # medians over rounds
    # per-round ratios 100, 100, 66: the median of ratios, not the ratio of medians (33 / 0.5 = 66)
    assert s["speedup"] == pytest.approx(100.0) and s["speedup_range"] == pytest.approx([66.0, 100.0])
    assert s["speedup_cached"] == pytest.approx(145.0) and s["speedup_cached_range"] == pytest.approx([128.0, 145.0])
    assert rows["teacher"]["speedup"] == 1.0 and rows["teacher"]["rounds"]["sampling_s"] == [30.0, 60.0, 33.0]


def test_a_cached_call_encodes_no_text_inside_the_timed_call_and_a_cold_one_does(bench):
    from test_sampling import Words

    class CountingWords(Words):
        embedded = 0

        def embed_tokens(self, prompts):
            self.embedded += len(prompts)
            return super().embed_tokens(prompts)

    sampler = object.__new__(bench.TimedSampler)  # its timing logic, without loading a run
    sampler.encoder, sampler.prompts = CountingWords(), ["a red circle", "a blue square", "a red circle"]
    inside = []

    def sample():  # what generate does with the prompts: token_rows through the encoder's cache
        before = sampler.encoder.embedded
        sampler.encoder.token_rows(sampler.prompts)
        inside.append(sampler.encoder.embedded - before)

    sampler.sample = sample
    sampler.seconds(cached=False)
    sampler.seconds(cached=True)
    assert inside == [2, 0]  # the cold call embeds both distinct prompts; the cached call none
    sampler.text_seconds()
    assert sampler.encoder.embedded == 2 + 0 + 2  # the cold call; the cached one (already warm); text alone, cold
