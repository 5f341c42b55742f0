"""SS2D: the cross-scan / cross-merge maps, the grouped scan against four separate scans, precision and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnunetv2_mamba.ssm.modules.ss2d as ss2d_module
from nnunetv2_mamba.ssm.modules.ss2d import SS2D, cross_merge_indices, cross_scan_indices, scan_rows
from nnunetv2_mamba.ssm.ops import selective_scan
from nnunetv2_mamba.ssm.ops.reference import selective_scan_ref

from helpers.autocast_checks import check_bf16_autocast, record_output_dtypes

GRIDS = [(1, 1), (1, 6), (5, 1), (4, 4), (3, 7), (8, 5)]


@pytest.mark.parametrize("height,width", GRIDS)
def test_cross_scan_orders(height, width):
    index = cross_scan_indices(height, width)
    grid = torch.arange(height * width).view(height, width)
    assert torch.equal(index[0], grid.flatten())
    assert torch.equal(index[1], grid.t().flatten())
    assert torch.equal(index[2], grid.flatten().flip(0))
    assert torch.equal(index[3], grid.t().flatten().flip(0))


@pytest.mark.parametrize("height,width", GRIDS)
def test_cross_merge_inverts_cross_scan(height, width):
    scan, merge = cross_scan_indices(height, width), cross_merge_indices(height, width)
    identity = torch.arange(height * width).expand(4, -1)
    assert torch.equal(scan.gather(1, merge), identity)
    assert torch.equal(merge.gather(1, scan), identity)


@pytest.mark.parametrize("height,width,batch", [(3, 7, 1), (4, 4, 3), (8, 5, 2)])
def test_scan_rows_round_trip(height, width, batch):
    length = height * width
    tokens = torch.randn(batch * length, 5)
    to_scan, from_scan = scan_rows(height, width, batch)
    slots = tokens.index_select(0, to_scan).view(length, batch, 4, 5)
    for k in range(4):  # step t of direction k of sample b holds the token the index map names
        expected = tokens.view(batch, length, 5)[:, cross_scan_indices(height, width)[k]].transpose(0, 1)
        assert torch.equal(slots[:, :, k], expected)
    back = slots.reshape(-1, 5).index_select(0, from_scan).view(batch, length, 4, 5)
    assert torch.equal(back, tokens.view(batch, length, 1, 5).expand(-1, -1, 4, -1))


def four_scan_ss2d(layer: SS2D, tokens: torch.Tensor, scan) -> torch.Tensor:
    """SS2D as VMamba writes it: flips and transposes for the four orders, one ``scan`` call per direction."""
    batch, height, width, _ = tokens.shape
    D, N, R = layer.d_inner, layer.d_state, layer.dt_rank
    x, z = layer.in_proj(tokens).chunk(2, dim=-1)
    x = F.silu(layer.conv2d(x.permute(0, 3, 1, 2)))  # (batch, D, H, W)
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    sequences = [rows, cols, rows.flip(-1), cols.flip(-1)]
    A = -torch.exp(layer.A_logs).view(4, D, N)
    outs = []
    for k, seq in enumerate(sequences):
        dt, B, C = torch.einsum("bdl,cd->bcl", seq, layer.x_proj_weight[k]).split([R, N, N], dim=1)
        dt = torch.einsum("brl,dr->bdl", dt, layer.dt_projs_weight[k])
        outs.append(scan(seq, dt, A[k], B, C, layer.Ds.view(4, D)[k], delta_bias=layer.dt_projs_bias[k],
                         delta_softplus=True))
    y = outs[0] + outs[2].flip(-1)
    y = y + (outs[1] + outs[3].flip(-1)).view(batch, D, width, height).transpose(2, 3).flatten(2)
    y = layer.out_norm(y.transpose(1, 2).view(batch, height, width, D))
    return layer.out_proj(y * F.silu(z))


@pytest.mark.parametrize("scan", [selective_scan, selective_scan_ref], ids=["selective_scan", "reference"])
@pytest.mark.parametrize("batch,height,width", [(1, 5, 7), (2, 6, 3)])
def test_grouped_scan_equals_four_separate_scans(scan, batch, height, width):
    layer = SS2D(12, d_state=4).double()
    tokens = torch.randn(batch, height, width, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(tokens), four_scan_ss2d(layer, tokens, scan), rtol=1e-10, atol=1e-10)


def test_one_scan_call_per_forward(monkeypatch):
    calls = []

    def spy(u, *args, **kwargs):
        calls.append(tuple(u.shape))
        return selective_scan(u, *args, **kwargs)

    monkeypatch.setattr(ss2d_module, "selective_scan", spy)
    SS2D(8, d_state=4, expand=2)(torch.randn(2, 3, 5, 8))
    assert calls == [(2, 4 * 16, 15)]


def test_samples_are_independent():
    layer = SS2D(8, d_state=4)
    tokens = torch.randn(3, 4, 6, 8)
    together = layer(tokens)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], layer(tokens[b:b + 1]), rtol=1e-5, atol=1e-6)


def test_scan_runs_in_float32_under_autocast(monkeypatch):
    scan_dtypes = record_output_dtypes(monkeypatch, ss2d_module, "selective_scan")
    layer = SS2D(16, d_state=8)
    tokens = torch.randn(2, 6, 5, 16)
    check_bf16_autocast(layer, tokens, tolerance=0.1)
    assert scan_dtypes == [torch.float32, torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(tokens)
    assert out.dtype == torch.bfloat16  # autocast was on around the scan
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in layer.parameters())


def test_gradients_reach_every_parameter():
    layer = SS2D(8, d_state=4)
    layer(torch.randn(2, 5, 4, 8)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_parameters_have_vmamba_names_and_shapes():
    layer = SS2D(96)  # VMamba-Tiny stage 0: d_inner 192, dt_rank 6, d_state 16
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"in_proj.weight": (384, 96), "conv2d.weight": (192, 1, 3, 3), "conv2d.bias": (192,),
                      "x_proj_weight": (4, 38, 192), "dt_projs_weight": (4, 192, 6), "dt_projs_bias": (4, 192),
                      "A_logs": (768, 16), "Ds": (768,), "out_norm.weight": (192,), "out_norm.bias": (192,),
                      "out_proj.weight": (96, 192)}
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.equal(layer.A_logs[5], torch.log(torch.arange(1, 17, dtype=torch.float32)))


def test_even_conv_is_rejected():
    with pytest.raises(ValueError, match="d_conv must be odd"):
        SS2D(8, d_conv=4)
