"""Peak memory of a training process, for the records of `lrm distill` and `lrm tune`.

CUDA runs also record torch.cuda.max_memory_allocated per step (lrm.tuning.trainer); the resident set is
recorded on every device: on the CPU it is the memory that the run actually held.

On the CPU the process's peak (peak_rss_mb) is mostly what every method loads alike (torch, the text
encoder, the models). TrainingMemory isolates what the training steps add on top of it, on Linux: before
the first step it returns the allocator's free memory to the system (glibc malloc_trim) and notes the
resident set, "loaded"; the kernel's peak mark (VmHWM, reset through /proc/self/clear_refs) then follows
the steps, and is read after each step and restarted after each evaluation, so evaluations are left out:
what an evaluation leaves resident (its samples, allocator pieces that cannot be returned) is measured
(the trimmed resident set after it minus before it) and taken off the later steps' marks.
"added" = the highest corrected mark over the steps - loaded: gradients, optimiser states, activations
and graphs. A resumed run measures the steps of its own process only.
"""

from __future__ import annotations

import ctypes
import resource
import sys
from functools import lru_cache
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
_peak_before_resets_mb = 0.0  # the process's peak up to the last reset of the kernel's mark (which lowers ru_maxrss)


def peak_rss_mb() -> float:
    """Peak resident set of this process so far in MiB (ru_maxrss: KiB on Linux, bytes on macOS); it covers
    everything since the process started, model loading included, and TrainingMemory's resets do not lower it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, _peak_before_resets_mb)


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM") in MiB; None where there is no such file."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10  # kB
    return None


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _trim() -> None:
    """Return the C allocator's free memory to the system (glibc; nothing elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _reset_mark() -> bool:
    """Restart the kernel's peak mark (VmHWM) at the current resident set; False where that is not possible."""
    global _peak_before_resets_mb
    peak = peak_rss_mb()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    _peak_before_resets_mb = peak
    return True


class TrainingMemory:
    """The resident memory the training steps add to the process (module docstring). Call start() before the
    first step, update() after each step, and pause() / resume() around an evaluation. loaded_mb / added_mb are None
    where /proc/self/status or clear_refs is missing (macOS, some containers)."""

    def __init__(self):
        self.loaded_mb: float | None = None  # resident set before the first step, free allocator memory returned
        self.peak_mb: float | None = None  # the highest corrected kernel mark read after a step
        self.supported = False
        self._left_by_evaluations = 0.0  # MiB the evaluations so far left resident (taken off later marks)
        self._before_evaluation = 0.0  # trimmed resident set when the current evaluation began

    def start(self) -> None:
        _trim()
        self.loaded_mb = _status_mb("VmRSS")
        self.supported = (self.loaded_mb is not None and _status_mb("VmHWM") is not None and _reset_mark())

    def update(self) -> None:
        """After a step: its peak (the kernel's mark, less what evaluations left behind)."""
        if self.supported:
            mark = _status_mb("VmHWM") - self._left_by_evaluations
            self.peak_mb = mark if self.peak_mb is None else max(self.peak_mb, mark)

    def pause(self) -> None:
        """Before an evaluation: free memory returned, the resident set noted."""
        if self.supported:
            _trim()
            self._before_evaluation = _status_mb("VmRSS")

    def resume(self) -> None:
        """After it: what it left resident is noted, free memory returned and the mark restarted."""
        if self.supported:
            _trim()
            self._left_by_evaluations += _status_mb("VmRSS") - self._before_evaluation
            _reset_mark()

    @property
    def added_mb(self) -> float | None:
        """Highest resident set during a step - loaded_mb (MiB); None before a step or where unsupported."""
        if not self.supported or self.peak_mb is None:
            return None
        return self.peak_mb - self.loaded_mb
