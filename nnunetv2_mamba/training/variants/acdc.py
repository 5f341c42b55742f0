"""CPU schedules of the dense-label ACDC benchmarks: ``benchmarks/acdc_semisupervised.py`` (U-Mamba2-SSL's recipe
against supervised training with 3 or 7 labelled patients) and ``benchmarks/acdc_clicks.py`` (UMambaBot2Click with
and without clicks against UMambaBot2). On 2 CPU cores, at the plans of the benchmarks' ``cpu`` budget (patch
128 x 128, batch 8, features / 2), the click benchmark takes about an hour per seed, the semi-supervised one about
two per seed and labelled setting, predictions included. Mirroring is off, as in the scribble benchmark's CPU
schedule: it would quadruple a CPU's prediction time, and the click benchmark predicts the test set seven times.
Their smoke budgets use the ``_smoke`` variants of :mod:`.recipes` and :mod:`.mamba`, plus
``nnUNetTrainerSupervised_acdc_smoke``.

The supervised-only baseline (``nnUNetTrainerSupervised_acdc_*``) runs as many segmentation iterations as the
recipe's consistency and pseudo-label stages together; the DAE pre-training comes on top, as in U-Mamba2-SSL.
"""

from __future__ import annotations

from nnunetv2_mamba.training.nnUNetTrainerClicks import nnUNetTrainerClicks
from nnunetv2_mamba.training.nnUNetTrainerConsistency import nnUNetTrainerConsistency
from nnunetv2_mamba.training.nnUNetTrainerDAE import nnUNetTrainerDAE
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba
from nnunetv2_mamba.training.nnUNetTrainerPseudoLabel import nnUNetTrainerPseudoLabel
from nnunetv2_mamba.training.variants import recipes
from nnunetv2_mamba.training.variants.schedule import Schedule, ShortSchedule, segmentation_total

CPU_DAE = Schedule(40, 25, 2, save_every=4, mirroring=False)
CPU_CONSISTENCY = Schedule(24, 25, 4, save_every=4, mirroring=False)
CPU_PSEUDO_LABEL = Schedule(12, 25, 4, save_every=4, mirroring=False)  # half of stage 2, as U-Mamba2-SSL (500/1000)
CPU_CLICKS = Schedule(60, 25, 4, save_every=5, mirroring=False)


class nnUNetTrainerSupervised_acdc_smoke(ShortSchedule, nnUNetTrainerMamba):
    schedule = segmentation_total(recipes.SMOKE, recipes.SMOKE)


class nnUNetTrainerSupervised_acdc_cpu(ShortSchedule, nnUNetTrainerMamba):
    schedule = segmentation_total(CPU_CONSISTENCY, CPU_PSEUDO_LABEL)


class nnUNetTrainerDAE_acdc_cpu(ShortSchedule, nnUNetTrainerDAE):
    schedule = CPU_DAE


class nnUNetTrainerConsistency_acdc_cpu(ShortSchedule, nnUNetTrainerConsistency):
    """Stage 2 ramps the consistency weight up over all its iterations: over U-Mamba2-SSL's first 20 % the full
    weight arrives before the supervised batches have found RV and MYO, and holds them at background."""

    schedule = CPU_CONSISTENCY
    consistency_rampup = 1.0


class nnUNetTrainerPseudoLabel_acdc_cpu(ShortSchedule, nnUNetTrainerPseudoLabel):
    schedule = CPU_PSEUDO_LABEL
    continue_from = "nnUNetTrainerConsistency_acdc_cpu"


class nnUNetTrainerClicks_acdc_cpu(ShortSchedule, nnUNetTrainerClicks):
    schedule = CPU_CLICKS


class nnUNetTrainerMamba_acdc_cpu(ShortSchedule, nnUNetTrainerMamba):
    """The click benchmark's network without clicks, on the click model's schedule."""

    schedule = CPU_CLICKS
