"""Weights move both ways between our layers and mamba-ssm's own ``Mamba`` / ``Mamba2`` (its published source, run
on the CPU with its own pure-PyTorch code paths and reference ops in place of the CUDA/Triton kernels), and both compute the same
function. Needs PyPI to fetch mamba-ssm's source once and Triton importable (its modules define Triton kernels)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nnunetv2_mamba.ssm import Mamba, Mamba2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def mamba_ssm():
    pytest.importorskip("triton", reason="mamba-ssm's modules import Triton")
    from baselines import import_mamba_ssm

    try:
        return {name: import_mamba_ssm(f"mamba_ssm.{name}") for name in (
            "modules.mamba_simple", "modules.mamba2", "ops.selective_scan_interface", "ops.triton.ssd_combined",
            "ops.triton.layernorm_gated")}
    except OSError as e:  # no network: a user's offline machine
        pytest.skip(f"could not fetch mamba-ssm's source from PyPI: {e}")


@pytest.fixture
def reference_kernels(mamba_ssm, monkeypatch):
    """Point mamba-ssm's modules at mamba-ssm's own pure-PyTorch code paths and reference ops."""
    simple, mamba2 = mamba_ssm["modules.mamba_simple"], mamba_ssm["modules.mamba2"]
    scan_ref = mamba_ssm["ops.selective_scan_interface"].selective_scan_ref
    chunk_ref = mamba_ssm["ops.triton.ssd_combined"].ssd_chunk_scan_combined_ref
    norm_ref = mamba_ssm["ops.triton.layernorm_gated"].rms_norm_ref

    def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, **unused):
        assert not any(unused.values()), unused
        return chunk_ref(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)

    monkeypatch.setattr(simple, "selective_scan_fn", scan_ref)
    monkeypatch.setattr(simple, "causal_conv1d_fn", None)
    monkeypatch.setattr(mamba2, "causal_conv1d_fn", None)
    monkeypatch.setattr(mamba2, "mamba_chunk_scan_combined", chunk_scan)
    monkeypatch.setattr(mamba_ssm["ops.triton.layernorm_gated"], "rmsnorm_fn",
                        lambda x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True:
                        norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size,
                                 norm_before_gate=norm_before_gate))
    return mamba_ssm


def _both_ways(ours: torch.nn.Module, theirs: torch.nn.Module, theirs_again: torch.nn.Module, length: int):
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    u = torch.randn(2, length, ours.d_model)
    ours.load_state_dict(theirs.state_dict())  # theirs -> ours
    torch.testing.assert_close(ours(u), theirs(u), rtol=2e-5, atol=2e-5)
    theirs_again.load_state_dict(ours.state_dict())  # ours -> theirs
    torch.testing.assert_close(theirs_again(u), ours(u), rtol=2e-5, atol=2e-5)


def test_mamba_weights_move_both_ways(reference_kernels):
    Theirs = reference_kernels["modules.mamba_simple"].Mamba
    kwargs = dict(d_model=24, d_state=8, d_conv=3, expand=2)
    _both_ways(Mamba(**kwargs), Theirs(**kwargs, use_fast_path=False), Theirs(**kwargs, use_fast_path=False), 37)


@pytest.mark.parametrize("kwargs", [dict(d_model=32, d_state=16, headdim=16, chunk_size=16),
                                    dict(d_model=32, d_state=8, headdim=8, ngroups=2, chunk_size=16,
                                         D_has_hdim=True)])
def test_mamba2_weights_move_both_ways(reference_kernels, kwargs):
    Theirs = reference_kernels["modules.mamba2"].Mamba2
    _both_ways(Mamba2(**kwargs), Theirs(**kwargs, use_mem_eff_path=False), Theirs(**kwargs, use_mem_eff_path=False),
               48)
