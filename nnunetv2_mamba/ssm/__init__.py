"""State-space core: ops (``selective_scan``, ``ssd``, ``causal_conv1d``) and the ``Mamba`` / ``Mamba2`` layers."""

from nnunetv2_mamba.ssm.modules import Mamba, Mamba2, RMSNormGated
from nnunetv2_mamba.ssm.ops import causal_conv1d, selective_scan, ssd

__all__ = ["Mamba", "Mamba2", "RMSNormGated", "causal_conv1d", "selective_scan", "ssd"]
