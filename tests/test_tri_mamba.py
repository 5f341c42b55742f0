"""TriMamba (SegMamba's tri-orientated Mamba) and GridSSM: index maps, equality with a per-order float64 reference,
gradients, float32 scan under bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.autocast_checks import check_bf16_autocast, record_output_dtypes
from nnunetv2_mamba.ssm.modules import GridSSM, Mamba, TriMamba, tri_mamba
from nnunetv2_mamba.ssm.modules.tri_mamba import (forward_order, inter_slice_order, inverse_order, reverse_order,
                                                   tri_orders)
from nnunetv2_mamba.ssm.ops.reference import causal_conv1d_ref, selective_scan_ref

GRIDS = [(3, 4, 5), (2, 7, 3), (1, 4, 4), (5, 1, 1), (4, 6)]


@pytest.mark.parametrize("grid", GRIDS)
def test_orders_are_permutations_and_inverses_restore_the_grid(grid):
    length = math.prod(grid)
    tokens = torch.randn(length, 3)
    for order in (forward_order(grid), reverse_order(grid), inter_slice_order(grid)):
        assert torch.equal(order.sort().values, torch.arange(length))
        inverse = inverse_order(order)
        assert torch.equal(tokens[order][inverse], tokens)
        assert torch.equal(order[inverse], torch.arange(length))


@pytest.mark.parametrize("grid", GRIDS)
def test_orders_visit_voxels_as_specified(grid):
    raster = torch.arange(math.prod(grid)).view(grid)  # voxel (d, h, w) -> its raster index
    assert torch.equal(forward_order(grid), raster.flatten())
    assert torch.equal(reverse_order(grid), raster.flatten().flip(0))
    # inter-slice: for each in-slice position (raster order), all slices d = 0..D-1 consecutively
    in_slice_major = raster.permute(*range(1, len(grid)), 0)
    assert torch.equal(inter_slice_order(grid), in_slice_major.flatten())
    assert torch.equal(tri_orders(grid), torch.stack([forward_order(grid), reverse_order(grid),
                                                      inter_slice_order(grid)]))


def test_inter_slice_order_by_hand():
    # 2 slices of 2 x 2: slice 0 holds voxels 0..3, slice 1 holds 4..7
    assert inter_slice_order((2, 2, 2)).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def tri_mamba_reference(layer: TriMamba, hidden: torch.Tensor, grid) -> torch.Tensor:
    """SegMamba's formulation, one order at a time with the sequential references: each order reads the sequence in
    its order, runs its own conv / x_proj / dt_proj / scan gated by SiLU(z) read in the same order, and its output is
    put back in raster order; the sum goes through the shared out-projection."""
    e, n, r = layer.d_inner, layer.d_state, layer.dt_rank
    x, z = layer.in_proj(hidden).chunk(2, dim=-1)
    total = 0
    for k, order in enumerate(tri_orders(grid)):
        channels = slice(k * e, (k + 1) * e)
        xk = causal_conv1d_ref(x[:, order].transpose(1, 2), layer.conv1d.weight[channels, 0],
                               layer.conv1d.bias[channels], activation="silu")
        dt, B, C = F.linear(xk.transpose(1, 2), layer.x_proj_weight[k]).split([r, n, n], dim=-1)
        delta = F.linear(dt, layer.dt_proj_weight[k]).transpose(1, 2)
        y = selective_scan_ref(xk, delta, -torch.exp(layer.A_log[k]), B.transpose(1, 2), C.transpose(1, 2),
                               layer.D[k], z=z[:, order].transpose(1, 2), delta_bias=layer.dt_proj_bias[k],
                               delta_softplus=True)
        total = total + y[:, :, inverse_order(order)]
    return layer.out_proj(total.transpose(1, 2))


@pytest.mark.parametrize("grid", [(3, 4, 5), (2, 5, 3), (6, 7)])
def test_tri_mamba_matches_per_order_reference_in_float64(grid):
    layer = TriMamba(8, d_state=4, d_conv=3).double()
    hidden = torch.randn(2, math.prod(grid), 8, dtype=torch.float64, requires_grad=True)
    out = layer(hidden, grid_shape=grid)
    ref = tri_mamba_reference(layer, hidden, grid)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)

    weight = torch.randn_like(out)
    params = [hidden] + list(layer.parameters())
    grads = torch.autograd.grad((out * weight).sum(), params)
    grads_ref = torch.autograd.grad((ref * weight).sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)


def test_every_order_has_its_own_parameters():
    # changing order k's scan parameters changes the output; the reverse order is not the forward one read backwards
    layer = TriMamba(8, d_state=4)
    hidden = torch.randn(1, 24, 8)
    base = layer(hidden, grid_shape=(2, 3, 4))
    for k in range(3):
        with torch.no_grad():
            layer.dt_proj_bias[k] += 1.0
        changed = layer(hidden, grid_shape=(2, 3, 4))
        with torch.no_grad():
            layer.dt_proj_bias[k] -= 1.0
        assert not torch.allclose(changed, base)


def test_gradients_reach_every_parameter():
    block = GridSSM(8, TriMamba(8, d_state=4), residual=True)
    x = torch.randn(2, 8, 3, 4, 5)
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_grid_ssm_shapes_residual_and_grid_shape():
    x = torch.randn(2, 8, 3, 4, 5)
    tri = GridSSM(8, TriMamba(8, d_state=4), residual=True)
    plain = GridSSM(8, Mamba(8, d_state=4))
    assert tri(x).shape == x.shape and plain(x).shape == x.shape
    # residual: with a zero out-projection the block is the identity; without residual it outputs zeros
    for block in (tri, plain):
        torch.nn.init.zeros_(block.mamba.out_proj.weight)
    torch.testing.assert_close(tri(x), x)
    assert torch.count_nonzero(plain(x)) == 0
    with pytest.raises(ValueError, match="expected 8 channels"):
        tri(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="grid_shape"):
        tri.mamba(torch.randn(1, 10, 8), grid_shape=(2, 2, 2))


def test_scan_runs_in_float32_under_bf16_autocast(monkeypatch):
    seen = record_output_dtypes(monkeypatch, tri_mamba, "selective_scan")
    check_bf16_autocast(GridSSM(16, TriMamba(16, d_state=8), residual=True), torch.randn(2, 16, 3, 4, 5), 0.05)
    assert seen == [torch.float32, torch.float32]  # fp32 run, then the bf16 one
