"""SSM kernels with the semantics of ``mamba-ssm`` / ``causal-conv1d``: CUDA kernels when installed, else pure PyTorch.

Sequential references live in :mod:`nnunetv2_mamba.ssm.ops.reference` (tests and benchmarks only).
"""

from nnunetv2_mamba.ssm.ops.conv1d import causal_conv1d
from nnunetv2_mamba.ssm.ops.selective_scan_interface import selective_scan
from nnunetv2_mamba.ssm.ops.ssd_chunked import ssd

__all__ = ["causal_conv1d", "selective_scan", "ssd"]
