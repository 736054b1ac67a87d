"""lrm: latent surrogate rewards for image and video diffusion models.

Heavy submodules are imported lazily so that `import lrm` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_reward", "load_codec", "LatentRewardModel", "fit_surrogate", "__version__"]


def __getattr__(name: str):
    # Lazy public API: `from lrm import load_reward` imports only the reward layer.
    if name == "load_reward":
        from lrm.rewards import load

        return load
    if name == "load_codec":
        from lrm.codecs import load

        return load
    if name == "LatentRewardModel":
        from lrm.models import LatentRewardModel

        return LatentRewardModel
    if name == "fit_surrogate":
        from lrm.fitting import fit_surrogate

        return fit_surrogate
    raise AttributeError(f"module 'lrm' has no attribute {name!r}")
