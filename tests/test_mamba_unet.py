"""MambaUNet: gradients into every SSM parameter, float32 scans under autocast, the default configuration, and loading
VMamba (v0) checkpoint keys."""

from __future__ import annotations

import torch

import nnunetv2_mamba.ssm.modules.ss2d as ss2d_module
from nnunetv2_mamba.nets.mamba_unet import MambaUNet

from helpers.autocast_checks import check_bf16_autocast, record_output_dtypes

SMALL = {"embed_dim": 24, "depths": (1, 1, 1, 1), "d_state": 4}
SSM_PARAMETERS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds", "conv2d.weight")


def test_gradients_reach_every_parameter():
    net = MambaUNet(2, 3, deep_supervision=True, **SMALL)
    sum(o.square().mean() for o in net(torch.randn(2, 2, 32, 64))).backward()
    names = [name for name, _ in net.named_parameters()]
    assert sum(name.endswith(SSM_PARAMETERS) for name in names) == 7 * len(SSM_PARAMETERS)  # 4 + 3 VSS blocks
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_scans_run_in_float32_under_autocast(monkeypatch):
    scan_dtypes = record_output_dtypes(monkeypatch, ss2d_module, "selective_scan")
    net = MambaUNet(1, 2, drop_path_rate=0.0, **SMALL)
    x = torch.randn(1, 1, 32, 32)
    check_bf16_autocast(net, x, tolerance=0.1)
    assert set(scan_dtypes) == {torch.float32} and len(scan_dtypes) == 2 * 7  # 7 VSS blocks, fp32 and bf16 runs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().mean().backward()
    unused = ("decoder.seg_layers.1.", "decoder.seg_layers.2.", "decoder.seg_layers.3.", "decoder.norms.1.",
              "decoder.norms.2.")  # deep-supervision heads, skipped without deep supervision
    for name, p in net.named_parameters():
        assert p.grad is None if name.startswith(unused) else torch.isfinite(p.grad).all(), name
    assert net.encoder.stages[0][0].ss2d.A_logs.dtype == torch.float32


def test_default_configuration_on_a_small_input():
    net = MambaUNet(1, 4, deep_supervision=True)
    assert net.dims == [96, 192, 384, 768] and net.strides == [[1, 1], [4, 4], [2, 2], [2, 2], [2, 2]]
    ss2d = net.encoder.stages[0][0].ss2d
    assert (ss2d.d_state, ss2d.d_inner, ss2d.d_conv, ss2d.dt_rank) == (16, 192, 3, 6)
    out = net(torch.randn(1, 1, 32, 64))
    assert [tuple(o.shape) for o in out] == [(1, 4, 32, 64), (1, 4, 8, 16), (1, 4, 4, 8), (1, 4, 2, 4)]
    sum(o.mean() for o in out).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_vmamba_checkpoint_loading_reports_everything(tmp_path):
    x_proj = torch.randn(4, 5, 16)
    checkpoint = {"model": {
        "patch_embed.proj.weight": torch.randn(8, 3, 4, 4),  # RGB into our three channels: loaded as is
        "patch_embed.norm.weight": torch.randn(8),
        "layers.0.blocks.0.ln_1.weight": torch.randn(8),  # -> norm, encoder and decoder level 0
        "layers.0.blocks.0.self_attention.x_proj_weight": x_proj,  # -> ss2d
        "layers.0.blocks.0.self_attention.A_logs": torch.randn(64, 16),  # d_state 16 vs our 2
        "layers.0.downsample.norm.weight": torch.randn(32),
        "layers.1.blocks.0.self_attention.Ds": torch.randn(128),  # bottleneck: encoder only
        "layers.1.blocks.3.ln_1.weight": torch.randn(16),  # deeper than our stage
        "head.bias": torch.randn(1000),
    }}
    path = tmp_path / "vmamba_tiny_e292.pth"
    torch.save(checkpoint, path)
    loaded = MambaUNet(3, 2, embed_dim=8, depths=(1, 1), d_state=2, pretrained=str(path))
    report = loaded.pretrained_report
    assert sorted(report.loaded) == sorted([
        "encoder.patch_embed.proj.weight", "encoder.patch_embed.norm.weight", "encoder.stages.0.0.norm.weight",
        "decoder.stages.0.0.norm.weight", "encoder.stages.0.0.ss2d.x_proj_weight",
        "decoder.stages.0.0.ss2d.x_proj_weight", "encoder.merges.0.norm.weight", "encoder.stages.1.0.ss2d.Ds"])
    assert report.mismatched == [f"layers.0.blocks.0.self_attention.A_logs -> {part}.stages.0.0.ss2d.A_logs: "
                                 f"(64, 16) vs (64, 2)" for part in ("encoder", "decoder")]
    assert report.unexpected == ["layers.1.blocks.3.ln_1.weight"] and report.ignored == ["head.bias"]
    assert report.adapted == [] and len(report.missing) == len(loaded.state_dict()) - len(report.loaded)
    assert torch.equal(loaded.decoder.stages[0][0].ss2d.x_proj_weight, x_proj)
