"""Peak memory of a training process, for the records of `lrm distill` and `lrm tune`.

CUDA runs also record torch.cuda.max_memory_allocated per step (lrm.tuning.trainer); the resident set is
recorded on every device: on the CPU it is the memory that the run actually held.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """Peak resident set of this process so far in MiB (ru_maxrss: KiB on Linux, bytes on macOS); it covers
    everything since the process started, model loading included."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
