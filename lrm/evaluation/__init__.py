"""Sample quality of a generator: true rewards, Vendi diversity, Frechet distance, prompt alignment.

- lrm.evaluation.rewards: pixel rewards (lrm.rewards) of decoded samples, mean/std per reward;
- lrm.evaluation.vendi: Vendi score per prompt, DOLLAR Eq. 27;
- lrm.evaluation.frechet: Frechet distance of generated vs reference features (default: pooled
  latent statistics);
- lrm.evaluation.alignment: object colour and shape named by procedural captions, read from pixels.
"""

from lrm.evaluation.alignment import Alignment, alignment
from lrm.evaluation.frechet import frechet_distance, latent_frechet_distance
from lrm.evaluation.rewards import RewardSummary, decoded_rewards, sample_rewards
from lrm.evaluation.vendi import Diversity, diversity, pixel_diversity, pixel_features, vendi_score

__all__ = ["Alignment", "alignment", "frechet_distance", "latent_frechet_distance", "RewardSummary",
           "decoded_rewards", "sample_rewards", "Diversity", "diversity", "pixel_diversity", "pixel_features", "vendi_score"]
