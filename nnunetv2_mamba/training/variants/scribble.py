"""The scribble trainers on short schedules, so that their results compare: ``_smoke`` (end-to-end tests in
seconds: no mirroring, tiny token networks, final validation of the ensemble only), ``_demo`` (the demo's synthetic
shapes), ``_cpu`` (a real-data comparison on a CPU: 1000 iterations, token networks 48 wide with the paper's two
blocks per level, no mirroring, which would quadruple a CPU's prediction time) and ``_paper`` (the paper's 30k
iterations and network sizes, for a GPU). ``nnUNetTrainerDense_<schedule>`` is stock ``nnUNetTrainer`` on the same
schedules: the upper bound trained on dense labels.

A schedule sets iterations, network sizes and mirroring only, never a method option: ``nnUNetTrainerWeakMamba_cpu``
is the default configuration and ``nnUNetTrainerWeakMambaPaper_cpu`` the paper's, on the same schedule. The CNN is
the plans' network: shrink it in the plans (``features_per_stage``), which shrinks the baseline's alike.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mamba.training.nnUNetTrainerScribbleBaseline import nnUNetTrainerScribbleBaseline
from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import nnUNetTrainerWeakMamba
from nnunetv2_mamba.training.nnUNetTrainerWeakMambaPaper import nnUNetTrainerWeakMambaPaper
from nnunetv2_mamba.training.variants.schedule import Schedule, ShortSchedule

SMOKE = Schedule(2, 2, 1, save_every=1, mirroring=False)
DEMO = Schedule(3, 8, 1)
CPU = Schedule(40, 25, 5, save_every=5, mirroring=False)
PAPER = Schedule(120, 250, 50)  # Weak-Mamba-UNet's 30k iterations, in nnU-Net's epochs of 250 iterations

TINY_TOKEN_NETWORKS = {"vit": {"embed_dim": 12, "depths": [1, 1, 1, 1]},
                       "mamba": {"embed_dim": 12, "depths": [1, 1, 1, 1]}}
SMALL_TOKEN_NETWORKS = {"vit": {"embed_dim": 24, "depths": [1, 1, 1, 1]},
                        "mamba": {"embed_dim": 24, "depths": [1, 1, 1, 1]}}
CPU_TOKEN_NETWORKS = {"vit": {"embed_dim": 48, "depths": [2, 2, 2, 2]},
                      "mamba": {"embed_dim": 48, "depths": [2, 2, 2, 2]}}


class nnUNetTrainerScribbleBaseline_smoke(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = SMOKE


class nnUNetTrainerScribbleBaseline_demo(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = DEMO


class nnUNetTrainerScribbleBaseline_cpu(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = CPU


class nnUNetTrainerScribbleBaseline_paper(ShortSchedule, nnUNetTrainerScribbleBaseline):
    schedule = PAPER


class nnUNetTrainerWeakMamba_smoke(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = SMOKE
    member_arch_kwargs = TINY_TOKEN_NETWORKS
    validate_networks_separately = False  # nnU-Net's final validation spawns worker pools: seconds each, per network


class nnUNetTrainerWeakMamba_demo(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = DEMO
    member_arch_kwargs = SMALL_TOKEN_NETWORKS


class nnUNetTrainerWeakMamba_cpu(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = CPU
    member_arch_kwargs = CPU_TOKEN_NETWORKS


class nnUNetTrainerWeakMamba_paper(ShortSchedule, nnUNetTrainerWeakMamba):
    schedule = PAPER  # the paper's token networks (embedding 96, two blocks per level)


class nnUNetTrainerWeakMambaPaper_smoke(ShortSchedule, nnUNetTrainerWeakMambaPaper):
    schedule = SMOKE
    member_arch_kwargs = TINY_TOKEN_NETWORKS
    validate_networks_separately = False


class nnUNetTrainerWeakMambaPaper_demo(ShortSchedule, nnUNetTrainerWeakMambaPaper):
    schedule = DEMO
    member_arch_kwargs = SMALL_TOKEN_NETWORKS


class nnUNetTrainerWeakMambaPaper_cpu(ShortSchedule, nnUNetTrainerWeakMambaPaper):
    schedule = CPU
    member_arch_kwargs = CPU_TOKEN_NETWORKS


class nnUNetTrainerWeakMambaPaper_paper(ShortSchedule, nnUNetTrainerWeakMambaPaper):
    schedule = PAPER


class nnUNetTrainerDense_smoke(ShortSchedule, nnUNetTrainer):
    schedule = SMOKE


class nnUNetTrainerDense_cpu(ShortSchedule, nnUNetTrainer):
    schedule = CPU


class nnUNetTrainerDense_paper(ShortSchedule, nnUNetTrainer):
    schedule = PAPER
