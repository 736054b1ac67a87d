"""Distillation of few-step students (docs/distill.md; DOLLAR Alg. 1, AVDM2 Alg. 1).

    from lrm.tuning import ADM, CD, VSD, DistillConfig, Distiller, build_roles
    roles = build_roles(teacher)                         # teacher, student, ema, fake_score
    distiller = Distiller(roles, [VSD(), CD(teacher_steps=5)], DistillConfig(latent_shape=(1, 4, 8, 8)))
    distiller.fit(lambda step: [batch_for(step)], num_steps=1000, run_dir="runs/student", checkpoint_every=100)

- roles: the networks (teacher, student, EMA, fake score, discriminator head, 2D teacher / fake score);
- denoise: predictions on (x0_hat, eps_hat) with CFG, noising, timesteps, the student's backward simulation;
- terms: the term interface; vsd, cd, adm, sdm2d: one loss per file;
- trainer: the loop, EMA, accumulation, clipping, non-finite skips, bf16 autocast, checkpoints (checkpoint);
- lora: LoRA adapters (peft) on the attention projections, for students that train only them;
- reward hooks, terms of the same loop: lrm_ft (Eq. 11, a frozen or concurrent latent surrogate), ddpo
  (DDPO-SF, Alg. 2), direct (ReFL / DRaFT-K); true_reward: the decoded pixel reward they share; monitor:
  gold / proxy reward, diversity and distance from the start at fixed prompts and seeds; tune: one hook on
  a student alone, with monitor records (lrm.tuning.tune.tune, what `lrm tune` runs).
"""

from lrm.tuning.adm import ADM, DiscriminatorHead, discriminator_for
from lrm.tuning.cd import CD
from lrm.tuning.ddpo import DDPO
from lrm.tuning.denoise import Batch, predict, student_sample
from lrm.tuning.direct import DirectReward
from lrm.tuning.lrm_ft import LRM, LRMFineTune, surrogate_role
from lrm.tuning.monitor import TuningMonitor, TuningRecord
from lrm.tuning.roles import Role, Roles, build_roles
from lrm.tuning.sdm2d import SDM2D
from lrm.tuning.terms import Step, Term
from lrm.tuning.trainer import DistillConfig, Distiller, StepLog
from lrm.tuning.true_reward import TrueReward
from lrm.tuning.tune import TuneConfig, TuneResult
from lrm.tuning.vsd import VSD

__all__ = ["ADM", "CD", "SDM2D", "VSD", "Batch", "DiscriminatorHead", "DistillConfig", "Distiller", "Role",
           "Roles", "Step", "StepLog", "Term", "build_roles", "discriminator_for", "predict", "student_sample",
           "DDPO", "DirectReward", "LRM", "LRMFineTune", "TrueReward", "TuningMonitor", "TuningRecord",
           "TuneConfig", "TuneResult", "surrogate_role"]
