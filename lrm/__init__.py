"""lrm: latent surrogate rewards for image and video diffusion models.

The public API (imported lazily, so that `import lrm` stays cheap):

    load_reward(name, **options)   a pixel reward: (B, T, 3, H, W) in [0, 1] -> (B,) (lrm.rewards.load)
    load_codec(name)               a latent space: encode / decode pixels (lrm.codecs.load)
    LatentRewardModel              a fitted surrogate: latents (B, T, c, h, w) -> (B,), differentiable;
                                   LatentRewardModel.from_pretrained(RUN/model) (lrm.models)
    fit_surrogate(store, label, config, out_dir)
                                   fit one on a latent store's label column (lrm.fitting)

`lrm fit REWARD` (lrm.pipeline.run_fit) runs encode -> label -> fit -> report in one command.
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
