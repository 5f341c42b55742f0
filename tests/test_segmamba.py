"""SegMamba: nnU-Net contract (plans, deep supervision, memory estimate), any 3D patch, clear errors for 2D plans."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from torch import nn

from helpers.autocast_checks import check_bf16_autocast
from helpers.nnunet_plans import acdc_like_configurations, build, deep_supervision_shapes
from nnunetv2_mamba.nets.segmamba import SegMamba
from nnunetv2_mamba.ssm.modules import TriMamba

CLASS_NAME = "nnunetv2_mamba.nets.segmamba.SegMamba"
NORM = dict(conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
# anisotropic: the first Mamba stage does not downsample the slice axis; odd sizes on the lowest level
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3]]
PATCH = (6, 12, 20)


def tiny(**kwargs) -> SegMamba:
    args = dict(input_channels=2, num_classes=3, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d,
                strides=STRIDES, kernel_sizes=KERNELS, depths=[1, 2], d_state=4, **NORM)
    return SegMamba(**{**args, **kwargs})


def test_forward_backward_deep_supervision():
    net = tiny(deep_supervision=True)
    net.apply(net.initialize)
    x = torch.randn(2, 2, *PATCH)
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *s) for s in deep_supervision_shapes(list(PATCH), STRIDES)]
    sum(o.square().mean() for o in outputs).backward()
    tri = [m for m in net.modules() if isinstance(m, TriMamba)]
    assert len(tri) == 3
    for layer in tri:
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

    net.decoder.deep_supervision = False  # nnUNetTrainer.set_deep_supervision_enabled(False)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *PATCH)


def test_scans_use_each_stages_actual_grid(monkeypatch):
    grids = []
    forward = TriMamba.forward

    def spy(self, hidden_states, grid_shape):
        grids.append(tuple(grid_shape))
        return forward(self, hidden_states, grid_shape)

    monkeypatch.setattr(TriMamba, "forward", spy)
    tiny()(torch.randn(1, 2, *PATCH))
    assert grids == [(6, 6, 10), (3, 3, 5), (3, 3, 5)]  # depths [1, 2]


def test_levels_and_widths():
    net = tiny(features_per_stage=[4, 8, 12], depths=2)
    assert [s.channels for s in net.encoder.stages] == [4, 8]  # Mamba stages run at features_per_stage[:-1]
    assert [b.output_channels for b in net.encoder.skips] == [4, 8, 12]  # skips at features_per_stage
    assert [len(s.mamba_layers) for s in net.encoder.stages] == [2, 2]
    assert list(net.encoder.stem.kernel_size) == [1, 7, 7]  # 7 where the stem downsamples, nnU-Net's kernel elsewhere
    # SegMamba's decoder: one residual block per stage, two at full resolution (its decoder2 + decoder1)
    assert [len(stage.blocks) for stage in net.decoder.stages] == [1, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(conv_op=nn.Conv2d, strides=[[1, 1], [2, 2], [2, 2]], kernel_sizes=3), "3D network"),
    (dict(strides=[[1, 2, 2], [2, 2, 2], [2, 2, 2]]), r"strides\[0\] must be 1"),
    (dict(features_per_stage=[4, 8]), "features_per_stage must have 3 entries"),
    (dict(depths=[2, 2, 2]), "depths must have 2 entries"),
    (dict(n_stages=1, features_per_stage=[4], strides=[[1, 1, 1]], kernel_sizes=3), "at least 2"),
])
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_bf16_autocast():
    check_bf16_autocast(tiny(), torch.randn(1, 2, *PATCH), 0.1)


# the nnU-Net plans keys SegMamba takes unchanged: plans drive every level's width, stride and kernel
PLANS_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "conv_bias", "norm_op",
              "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs")


def test_builds_from_nnunet_3d_plans(tmp_path):
    configuration = acdc_like_configurations(tmp_path)["3d_fullres"]
    base = configuration["architecture"]
    architecture = {"network_class_name": CLASS_NAME, "_kw_requires_import": base["_kw_requires_import"],
                    "arch_kwargs": {key: base["arch_kwargs"][key] for key in PLANS_KEYS}}
    patch = [int(p) for p in configuration["patch_size"]]
    net = build(architecture)
    assert isinstance(net, SegMamba)
    strides = [list(s) for s in architecture["arch_kwargs"]["strides"]]
    estimate = ExperimentPlanner.static_estimate_VRAM_usage(patch, 1, 4, CLASS_NAME, architecture["arch_kwargs"],
                                                            architecture["_kw_requires_import"])
    resenc = ExperimentPlanner.static_estimate_VRAM_usage(patch, 1, 4, base["network_class_name"],
                                                          base["arch_kwargs"], base["_kw_requires_import"])
    print(f"\nSegMamba from ACDC-like 3d_fullres ResEnc M plans (patch {patch}, strides {strides}): "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters; memory estimate "
          f"{estimate / 1e6:.0f} M feature-map elements per sample (ResidualEncoderUNet: {resenc / 1e6:.0f} M)")
    assert estimate > resenc > 0
    size = [4, 64, 64]  # small, divisible by the cumulative strides (4, 32, 32), more than 1 voxel at the bottom
    outputs = net(torch.randn(1, 1, *size))
    assert [tuple(o.shape[2:]) for o in outputs] == deep_supervision_shapes(size, strides)


def test_paper_configuration_parameter_count():
    net = SegMamba(4, 4, 5, (48, 96, 192, 384, 768), nn.Conv3d, [[1, 1, 1]] + [[2, 2, 2]] * 4, **NORM)
    n_params = sum(p.numel() for p in net.parameters())
    n_tom = sum(p.numel() for m in net.modules() if isinstance(m, TriMamba) for p in m.parameters())
    print(f"\nSegMamba paper configuration (4 channels in, 4 classes): {n_params / 1e6:.2f} M parameters, "
          f"{n_tom / 1e6:.2f} M in the ToM layers")
    assert [s.channels for s in net.encoder.stages] == [48, 96, 192, 384]
    assert net.encoder.skips[-1].output_channels == 768
