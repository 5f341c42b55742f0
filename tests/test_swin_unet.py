"""SwinUNet: shifted-window masking on crafted inputs, windows larger than the grid, the default configuration, and
loading Swin-T checkpoint keys."""

from __future__ import annotations

import pytest
import torch

from nnunetv2_mamba.nets.swin_unet import SwinBlock, SwinUNet

from helpers.nnunet_plans import build


def interacting(height: int, width: int, window: int, shift: tuple[int, int]) -> torch.Tensor:
    """(tokens, tokens): True where two tokens share a window after padding to whole windows and rolling back by
    ``shift``, and lie on the same side of every roll's wrap-around (derived from coordinates, not from masks)."""
    padded = [-(-s // window) * window for s in (height, width)]
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    i, j = i.flatten(), j.flatten()
    win_i, win_j = ((i - shift[0]) % padded[0]) // window, ((j - shift[1]) % padded[1]) // window
    wrap_i, wrap_j = i < shift[0], j < shift[1]

    def same(a):
        return a[:, None] == a[None, :]

    return same(win_i) & same(win_j) & same(wrap_i) & same(wrap_j)


@pytest.mark.parametrize("height,width,shifted,shift", [
    (12, 12, False, (0, 0)),  # whole windows
    (12, 12, True, (2, 2)),  # shift mask only
    (10, 9, True, (2, 2)),  # shift and padding
    (3, 9, True, (0, 2)),  # grid smaller than a window along H: no shift there
])
def test_a_token_only_reaches_its_window(height, width, shifted, shift):
    block = SwinBlock(8, num_heads=2, window_size=4, shifted=shifted).double().eval()
    tokens = height * width
    x = torch.randn(1, height, width, 8, dtype=torch.float64)
    # sample p perturbs token p (randomly: a constant shift would vanish in the LayerNorm)
    perturbed = x.repeat(tokens, 1, 1, 1)
    perturbed.view(tokens, tokens, 8)[torch.arange(tokens), torch.arange(tokens)] += torch.randn(tokens, 8).double()
    changed = (block(perturbed) - block(x)).abs().amax(-1).view(tokens, tokens) > 1e-9
    assert torch.equal(changed, interacting(height, width, 4, shift))


def test_window_larger_than_grid_is_a_window_the_size_of_the_grid():
    """Padded keys are masked: a 3x5 grid in a 7x7 window is plain attention over its 15 tokens, with the relative
    position biases of their positions in the window."""
    block = SwinBlock(8, num_heads=2, window_size=7).double().eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    attn = block.attn
    q, k, v = attn.qkv(block.norm1(x).view(2, 15, 8)).view(2, 15, 3, 2, 4).permute(2, 0, 3, 1, 4)
    positions = torch.tensor([r * 7 + c for r in range(3) for c in range(5)])
    bias = attn.relative_position_bias_table[attn.relative_position_index[positions][:, positions]].permute(2, 0, 1)
    weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale + bias, dim=-1)
    y = x + attn.proj((weights @ v).transpose(1, 2).reshape(2, 3, 5, 8))
    expected = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_default_configuration_on_a_small_input():
    net = SwinUNet(1, 4, deep_supervision=True)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(27.17e6, rel=0.01)  # Swin-Unet's 27.17 M
    out = net(torch.randn(1, 1, 64, 64))
    assert [tuple(o.shape) for o in out] == [(1, 4, 64, 64), (1, 4, 16, 16), (1, 4, 8, 8), (1, 4, 4, 4)]
    sum(o.mean() for o in out).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_swin_checkpoint_loading_reports_everything(tmp_path, capsys):
    kwargs = {"embed_dim": 8, "depths": [2, 1], "num_heads": [2, 4], "window_size": 4}
    net = SwinUNet(1, 2, **kwargs)
    qkv = torch.randn(24, 8)
    checkpoint = {"model": {
        "patch_embed.proj.weight": torch.randn(8, 3, 4, 4),  # RGB -> adapted to our one channel
        "patch_embed.proj.bias": torch.randn(8),
        "layers.0.blocks.1.attn.qkv.weight": qkv,  # encoder and decoder level 0
        "layers.0.blocks.1.attn.relative_position_bias_table": torch.randn(169, 2),  # window 7 vs our 4
        "layers.0.blocks.1.attn.relative_position_index": torch.zeros(49, 49, dtype=torch.long),  # recomputed
        "layers.0.blocks.1.attn_mask": torch.zeros(4, 49, 49),  # recomputed
        "layers.0.downsample.reduction.weight": torch.randn(16, 32),
        "layers.1.blocks.0.mlp.fc1.weight": torch.randn(64, 16),  # bottleneck: encoder only
        "layers.2.blocks.0.norm1.weight": torch.randn(32),  # a stage we do not have
        "norm.weight": torch.randn(16),
        "head.weight": torch.randn(1000, 16),
    }}
    path = tmp_path / "swin_tiny.pth"
    torch.save(checkpoint, path)
    net = build({"network_class_name": "nnunetv2_mamba.nets.swin_unet.SwinUNet", "_kw_requires_import": [],
                 "arch_kwargs": {**kwargs, "pretrained": str(path)}}, num_classes=2)
    report = net.pretrained_report
    assert sorted(report.loaded) == sorted([
        "decoder.stages.0.1.attn.qkv.weight", "encoder.merges.0.reduction.weight", "encoder.norm.weight",
        "encoder.patch_embed.proj.bias", "encoder.stages.0.1.attn.qkv.weight", "encoder.stages.1.0.mlp.fc1.weight"])
    assert report.adapted == ["encoder.patch_embed.proj.weight"]
    assert report.mismatched == [f"layers.0.blocks.1.attn.relative_position_bias_table -> {part}.stages.0.1.attn."
                                 f"relative_position_bias_table: (169, 2) vs (49, 2)" for part in ("encoder", "decoder")]
    assert report.unexpected == ["layers.2.blocks.0.norm1.weight"]
    assert sorted(report.ignored) == ["head.weight", "layers.0.blocks.1.attn.relative_position_index",
                                      "layers.0.blocks.1.attn_mask"]
    assert "encoder.stages.0.0.attn.qkv.weight" in report.missing and len(report.missing) == \
        len(net.state_dict()) - len(report.loaded) - len(report.adapted)
    # the weights are in the network nnU-Net gets (nothing re-initialises them after loading)
    state = net.state_dict()
    assert torch.equal(state["encoder.stages.0.1.attn.qkv.weight"], qkv)
    assert torch.equal(state["decoder.stages.0.1.attn.qkv.weight"], qkv)
    assert torch.allclose(state["encoder.patch_embed.proj.weight"],
                          checkpoint["model"]["patch_embed.proj.weight"].sum(1, keepdim=True))
    printed = capsys.readouterr().out
    assert "mismatched     2" in printed and "unexpected     1: layers.2.blocks.0.norm1.weight" in printed
