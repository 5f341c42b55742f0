"""Plans overrides, one ``<Arch>.json`` per architecture; installed as ``nnunetv2_mamba.plans_overrides`` (see
:mod:`nnunetv2_mamba.plans.overrides` for their format)."""
