"""Layers built on the SSM ops, parameter-compatible with ``mamba_ssm``'s modules."""

from nnunetv2_mamba.ssm.modules.mamba import Mamba
from nnunetv2_mamba.ssm.modules.mamba2 import Mamba2, RMSNormGated
from nnunetv2_mamba.ssm.modules.grid_ssm import GridSSM
from nnunetv2_mamba.ssm.modules.ss2d import SS2D
from nnunetv2_mamba.ssm.modules.tri_mamba import TriMamba

__all__ = ["GridSSM", "Mamba", "Mamba2", "RMSNormGated", "SS2D", "TriMamba"]
