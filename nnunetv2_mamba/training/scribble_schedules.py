"""Short variants of the scribble trainers, the baseline and WeakMamba on identical schedules so that their results
compare: ``_smoke`` (end-to-end tests in seconds: no mirroring, tiny token networks, final validation of the
ensemble only), ``_demo`` (the demo's synthetic shapes), ``_cpu`` (a quick real-data comparison on a CPU) and
``_paper`` (the paper's 30k iterations, for a GPU).
``nnUNetTrainerDense_<schedule>`` is stock ``nnUNetTrainer`` on the same schedules: the upper bound trained on dense
labels. The knobs live here, in one place, for the benchmarks (``benchmarks/acdc_scribble.py``) to reuse.

Every variant keeps nnU-Net's recipe (optimizer, poly learning rate over its own epochs, augmentation, the plans'
patch and batch size); WeakMamba's short variants also shrink the two token networks, whose paper sizes (embedding
96, two blocks per level, 27M and 19M parameters) are slow on a CPU. The CNN is the plans' network: shrink it in the
plans (``features_per_stage``), which shrinks the baseline's alike.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mamba.training.nnUNetTrainerScribbleBaseline import nnUNetTrainerScribbleBaseline
from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import nnUNetTrainerWeakMamba
from nnunetv2_mamba.training.short_schedules import Schedule, ShortSchedule

SMOKE = Schedule(2, 2, 1, save_every=1, mirroring=False)
DEMO = Schedule(3, 8, 1)
CPU = Schedule(40, 25, 5, mirroring=False)  # test-time mirroring would quadruple the prediction time on a CPU
PAPER = Schedule(120, 250, 50)  # Weak-Mamba-UNet's 30k iterations, in nnU-Net's epochs of 250 iterations

TINY_TOKEN_NETWORKS = {"vit": {"embed_dim": 12, "depths": [1, 1, 1, 1]},
                       "mamba": {"embed_dim": 12, "depths": [1, 1, 1, 1]}}
SMALL_TOKEN_NETWORKS = {"vit": {"embed_dim": 24, "depths": [1, 1, 1, 1]},
                        "mamba": {"embed_dim": 24, "depths": [1, 1, 1, 1]}}
# Twice as wide as _demo's and the paper's two blocks per level, affordable with the fused CPU scan: on ACDC (steps 4
# and 6 of documentation/benchmarks.md) each lifted the token networks and the ensemble.
CPU_TOKEN_NETWORKS = {"vit": {"embed_dim": 48, "depths": [2, 2, 2, 2]},
                      "mamba": {"embed_dim": 48, "depths": [2, 2, 2, 2]}}


class nnUNetTrainerScribbleBaseline_smoke(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = SMOKE


class nnUNetTrainerWeakMamba_smoke(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = SMOKE
    member_arch_kwargs = TINY_TOKEN_NETWORKS
    validate_networks_separately = False  # nnU-Net's final validation spawns worker pools: seconds each, per network


class nnUNetTrainerScribbleBaseline_demo(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = DEMO


class nnUNetTrainerWeakMamba_demo(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = DEMO
    member_arch_kwargs = SMALL_TOKEN_NETWORKS


class nnUNetTrainerScribbleBaseline_cpu(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = CPU


class nnUNetTrainerWeakMamba_cpu(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = CPU
    member_arch_kwargs = CPU_TOKEN_NETWORKS
    # Measured on ACDC at 500 iterations without it: the untrained token networks' pseudo labels pulled the CNN down.
    pseudo_label_rampup = 0.5
    # Measured on ACDC: scribble-trained networks put foreground far from the heart and the mixed pseudo label passed it
    # on; its largest components only (step 5) lifted the ensemble 0.422 -> 0.449, the scribbled ones (step 8: crops
    # without the structure get background) to 0.476 / 0.481 in two runs (0.465 / 0.455 with the largest, step 6).
    pseudo_label_components = "scribbled"
    # Step 9: the errors left were foreground far from the heart, which the cleaned pseudo label marks as background
    # and its Dice hardly penalised; with nnU-Net's cross-entropy beside it, ensemble 0.467 / 0.532 / 0.547 and CNN
    # member 0.555 / 0.580 / 0.615 in three runs (step 8: 0.476 / 0.481 and 0.495 / 0.490).
    pseudo_label_loss = "dice_ce"
    # Step 10: the token networks learned slowly with nnU-Net's SGD (Swin and VMamba train with AdamW); with nnU-Net's
    # AdamW variant at lr 1e-3 (the CNN keeps its SGD) the ensemble reached 0.601 / 0.641 / 0.639 in three runs (step 9:
    # 0.467 / 0.532 / 0.547), its Mamba member 0.613 / 0.651 / 0.608 (0.326 / 0.405 / 0.428).
    member_optimizers = {"vit": ("adamw", 1e-3), "mamba": ("adamw", 1e-3)}
    # Step 11: step 10's pseudo labels miss 0.35 of the true foreground on train crops, 0.22 of it within 3 pixels of
    # a structure's boundary; with the pixels next to their class boundaries left out of the pseudo-label loss, the
    # ensemble reached 0.651 / 0.677 / 0.653 (step 10: 0.601 / 0.641 / 0.639), through precision, not recall.
    pseudo_label_margin = 1


class nnUNetTrainerScribbleBaseline_paper(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = PAPER


class nnUNetTrainerWeakMamba_paper(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = PAPER  # the paper's token networks (embedding 96, two blocks per level)


class nnUNetTrainerDense_smoke(ShortSchedule, nnUNetTrainer):
    schedule = SMOKE


class nnUNetTrainerDense_cpu(ShortSchedule, nnUNetTrainer):
    schedule = CPU


class nnUNetTrainerDense_paper(ShortSchedule, nnUNetTrainer):
    schedule = PAPER
