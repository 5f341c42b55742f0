"""Short variants of the training-recipe trainers (DAE pre-training, consistency, pseudo labels, domain knowledge):
``_smoke`` for end-to-end tests in seconds, ``_cpu`` for benchmarks/ssl_recipe.py's comparison of the SSL recipe
with supervised training on a CPU. Mirroring stays on: label-swap mirroring is one of the options under test."""

from __future__ import annotations

from nnunetv2_mamba.training.nnUNetTrainerConsistency import nnUNetTrainerConsistency
from nnunetv2_mamba.training.nnUNetTrainerPseudoLabel import nnUNetTrainerPseudoLabel
from nnunetv2_mamba.training.nnUNetTrainerDAE import nnUNetTrainerDAE
from nnunetv2_mamba.training.nnUNetTrainerDomainKnowledge import nnUNetTrainerDomainKnowledge
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba
from nnunetv2_mamba.training.variants.schedule import Schedule, ShortSchedule, segmentation_total

SMOKE = Schedule(2, 3, 1, save_every=1)
CPU = Schedule(10, 25, 4)
CPU_PSEUDO_LABEL = Schedule(5, 25, 4)  # stage 3 is half as long as stage 2, as in U-Mamba2-SSL (500 / 1000 epochs)


class nnUNetTrainerDAE_smoke(ShortSchedule, nnUNetTrainerDAE):
    schedule = SMOKE


class nnUNetTrainerDomainKnowledge_smoke(ShortSchedule, nnUNetTrainerDomainKnowledge):
    schedule = SMOKE


class nnUNetTrainerConsistency_smoke(ShortSchedule, nnUNetTrainerConsistency):
    schedule = SMOKE


class nnUNetTrainerPseudoLabel_smoke(ShortSchedule, nnUNetTrainerPseudoLabel):
    schedule = SMOKE
    continue_from = "nnUNetTrainerConsistency_smoke"


class nnUNetTrainerDAE_cpu(ShortSchedule, nnUNetTrainerDAE):
    schedule = CPU


class nnUNetTrainerConsistency_cpu(ShortSchedule, nnUNetTrainerConsistency):
    schedule = CPU


class nnUNetTrainerPseudoLabel_cpu(ShortSchedule, nnUNetTrainerPseudoLabel):
    schedule = CPU_PSEUDO_LABEL
    continue_from = "nnUNetTrainerConsistency_cpu"


class nnUNetTrainerSupervised_cpu(ShortSchedule, nnUNetTrainerMamba):
    """The comparison's supervised-only baseline: as many segmentation epochs as the consistency and pseudo-label
    stages together."""

    schedule = segmentation_total(CPU, CPU_PSEUDO_LABEL)
