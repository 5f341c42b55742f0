"""Mamba and Mamba2 layers: mamba_ssm's parameter layout and init, and the same function as a sequential reference."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_mamba.ssm import Mamba, Mamba2
from nnunetv2_mamba.ssm.modules import mamba as mamba_module
from nnunetv2_mamba.ssm.modules import mamba2 as mamba2_module
from nnunetv2_mamba.ssm.modules.mamba2 import valid_headdim
from nnunetv2_mamba.ssm.ops.reference import causal_conv1d_ref, selective_scan_ref, ssd_ref

# Parameter names and shapes of mamba_ssm 2.3 (modules/mamba_simple.py and modules/mamba2.py) for these configs.
MAMBA_SSM_MAMBA_D16 = {
    "A_log": (32, 16), "D": (32,), "in_proj.weight": (64, 16), "conv1d.weight": (32, 1, 4), "conv1d.bias": (32,),
    "x_proj.weight": (33, 32), "dt_proj.weight": (32, 1), "dt_proj.bias": (32,), "out_proj.weight": (16, 32),
}
MAMBA_SSM_MAMBA2_D64_N16_P32 = {
    "dt_bias": (4,), "A_log": (4,), "D": (4,), "in_proj.weight": (292, 64), "conv1d.weight": (160, 1, 4),
    "conv1d.bias": (160,), "norm.weight": (128,), "out_proj.weight": (64, 128),
}


def test_parameter_layout_matches_mamba_ssm():
    assert {k: tuple(v.shape) for k, v in Mamba(16).state_dict().items()} == MAMBA_SSM_MAMBA_D16
    assert {k: tuple(v.shape) for k, v in Mamba2(64, d_state=16, headdim=32).state_dict().items()} == \
        MAMBA_SSM_MAMBA2_D64_N16_P32


def test_initialisation_matches_mamba_ssm():
    m = Mamba(32, d_state=8, dt_min=0.002, dt_max=0.05)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 9.0)).repeat(64, 1))
    assert torch.equal(m.D, torch.ones(64))
    bound = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound
    m2 = Mamba2(64, d_state=16, headdim=32, A_init_range=(2, 4))
    assert (-torch.exp(m2.A_log) <= -2).all() and (-torch.exp(m2.A_log) >= -4).all()
    assert F.softplus(m2.dt_bias).min() >= 0.001 * (1 - 1e-5)
    assert m.A_log._no_weight_decay and m2.dt_bias._no_weight_decay and m.dt_proj.bias._no_reinit


@pytest.mark.parametrize("d_ssm,headdim,expected", [(1024, 80, 64), (640, 80, 80), (80, 64, 40), (97, 64, 1)])
def test_valid_headdim(d_ssm, headdim, expected):
    assert valid_headdim(d_ssm, headdim) == expected


def test_mamba2_accepts_any_width(caplog):
    with caplog.at_level(logging.INFO, logger="nnunetv2_mamba.ssm"):
        m = Mamba2(512, d_state=8, headdim=80)
    assert (m.headdim, m.nheads) == (64, 16)
    assert "using headdim=64" in caplog.text
    assert m(torch.randn(1, 5, 512)).shape == (1, 5, 512)


def test_mamba2_rejects_ngroups_not_dividing_heads():
    with pytest.raises(ValueError, match="ngroups=3"):
        Mamba2(64, headdim=32, ngroups=3)


def _reference_ops(monkeypatch):
    """Run the layers on the sequential references instead of the fast ops."""
    monkeypatch.setattr(mamba_module, "selective_scan", selective_scan_ref)
    monkeypatch.setattr(mamba_module, "causal_conv1d", causal_conv1d_ref)
    monkeypatch.setattr(mamba2_module, "causal_conv1d", causal_conv1d_ref)
    monkeypatch.setattr(mamba2_module, "ssd", lambda x, dt, A, B, C, chunk_size, **kw: ssd_ref(x, dt, A, B, C, **kw))


@pytest.mark.parametrize("make", [
    lambda: Mamba(12, d_state=5),
    lambda: Mamba2(16, d_state=6, headdim=8, chunk_size=16),
    lambda: Mamba2(16, d_state=6, headdim=8, ngroups=2, D_has_hdim=True, rmsnorm=False),
    lambda: Mamba2(16, d_state=6, headdim=8, d_ssm=16, norm_before_gate=True, dt_limit=(0.01, 0.5)),
], ids=["mamba", "mamba2", "mamba2-groups-no-norm", "mamba2-mlp-part"])
def test_layer_equals_sequential_reference(monkeypatch, make):
    layer = make().double()
    u = torch.randn(2, 45, layer.d_model, dtype=torch.float64)
    out = layer(u)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    with monkeypatch.context() as m:
        _reference_ops(m)
        ref = layer(u)
        ref_grads = torch.autograd.grad(ref.square().sum(), list(layer.parameters()))
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
    for (name, _), g, g_ref in zip(layer.named_parameters(), grads, ref_grads):
        assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-11), name
        assert g.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("make", [lambda: Mamba(32), lambda: Mamba2(32, d_state=16, headdim=16)], ids=["v1", "v2"])
def test_autocast_bf16_is_finite_and_close_to_float32(make):
    layer = make()
    u = torch.randn(2, 64, 32)
    ref = layer(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(u)
        out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # bf16 projections carry ~3 significant digits; the scan itself runs in float32
    assert (out.float() - ref).norm() / ref.norm() < 3e-2


@pytest.mark.parametrize("make", [lambda: Mamba(24), lambda: Mamba2(24, d_state=8, headdim=12)], ids=["v1", "v2"])
def test_state_dict_round_trip(make):
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    u = torch.randn(1, 10, 24)
    assert torch.equal(a(u), b(u))


def test_mamba_is_causal():
    layer = Mamba(8)
    u = torch.randn(1, 20, 8)
    u2 = u.clone()
    u2[:, 12:] += 1
    assert torch.allclose(layer(u)[:, :12], layer(u2)[:, :12])
    assert not math.isclose(layer(u)[:, 12:].sum().item(), layer(u2)[:, 12:].sum().item())
