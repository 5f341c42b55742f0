"""nnU-Net plans for our networks, derived from the plans nnU-Net's planners wrote for a dataset.

``write_plans`` (the ``nnunetv2_mamba plans`` command) turns e.g. ``nnUNetPlans.json`` into ``nnUNetPlans_UMambaBot2.json``
beside it: each configuration keeps its preprocessing (``data_identifier``), its topology (stages, strides, kernel sizes,
norm and nonlinearity ops) is translated into the network's ``arch_kwargs`` (:mod:`.translate`), and the
architecture's defaults and per-dimension changes come from ``plans_overrides/<Arch>.json`` (:mod:`.overrides`).
"""

from nnunetv2_mamba.plans.derive import PlansError, derive_plans, write_plans
from nnunetv2_mamba.plans.overrides import architectures, load_override

__all__ = ["PlansError", "architectures", "derive_plans", "load_override", "write_plans"]
