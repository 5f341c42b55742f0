"""UMambaBot2 and UMambaBot: nnU-Net contract (plans, deep supervision, memory estimate), gradients, autocast."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from torch import nn

from helpers.autocast_checks import check_bf16_autocast, record_output_dtypes
from helpers.nnunet_plans import acdc_like_configurations, build, deep_supervision_shapes
from nnunetv2_mamba.nets.umamba_bot import UMambaBot, UMambaBot2
from nnunetv2_mamba.ssm.modules import Mamba, Mamba2, mamba, mamba2

CLASSES = ["nnunetv2_mamba.nets.umamba_bot.UMambaBot2", "nnunetv2_mamba.nets.umamba_bot.UMambaBot"]


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return acdc_like_configurations(tmp_path_factory.mktemp("nnunet"))


def tiny(conv_op, strides, kernel_sizes=3, **kwargs) -> dict:
    """ResEnc arch_kwargs with tiny widths."""
    n = len(strides)
    dim = 2 if conv_op is nn.Conv2d else 3
    return dict(n_stages=n, features_per_stage=[4 * 2 ** i for i in range(n)], conv_op=conv_op,
                kernel_sizes=kernel_sizes, strides=strides, n_blocks_per_stage=[1] + [2] * (n - 1),
                n_conv_per_stage_decoder=1, conv_bias=True,
                norm_op=nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                **kwargs)


CASES = [  # conv_op, strides, kernel_sizes, patch (odd sizes after downsampling, anisotropic)
    (nn.Conv2d, [[1, 1], [2, 2], [2, 2], [2, 1]], 3, (24, 20)),
    (nn.Conv3d, [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], (6, 12, 20)),
]


@pytest.mark.parametrize("cls", [UMambaBot2, UMambaBot])
@pytest.mark.parametrize("conv_op, strides, kernel_sizes, patch", CASES)
def test_forward_backward_deep_supervision(cls, conv_op, strides, kernel_sizes, patch):
    net = cls(input_channels=2, num_classes=3, deep_supervision=True, **tiny(conv_op, strides, kernel_sizes))
    x = torch.randn(2, 2, *patch)
    outputs = net(x)
    assert [tuple(o.shape[2:]) for o in outputs] == deep_supervision_shapes(list(patch), strides)
    assert all(o.shape[:2] == (2, 3) for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    for name, p in net.mamba_layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled(False) does
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *patch)


def test_classes_differ_only_in_the_bottleneck_layer():
    kwargs = tiny(nn.Conv2d, [[1, 1], [2, 2], [2, 2]])
    bot2, bot, resenc = UMambaBot2(1, num_classes=2, **kwargs), UMambaBot(1, num_classes=2, **kwargs), \
        ResidualEncoderUNet(1, num_classes=2, **kwargs)
    assert isinstance(bot2.mamba_layer.mamba, Mamba2) and isinstance(bot.mamba_layer.mamba, Mamba)
    # U-Mamba2's d_state 32; headdim 80 does not divide 2 * 16 channels, so the largest divisor below it is used
    assert (bot2.mamba_layer.mamba.d_state, bot2.mamba_layer.mamba.headdim) == (32, 32)
    assert bot.mamba_layer.mamba.d_state == 16
    # ResEnc parameters unchanged (ResEnc checkpoints' keys are a subset); SSM parameters under U-Mamba's names
    for net in (bot2, bot):
        keys = set(net.state_dict())
        assert set(resenc.state_dict()) <= keys
        assert {"mamba_layer.norm.weight", "mamba_layer.mamba.in_proj.weight"} <= keys


def test_ssm_options_are_arch_kwargs():
    net = UMambaBot2(1, num_classes=2, d_state=8, expand=1, headdim=4, **tiny(nn.Conv2d, [[1, 1], [2, 2]]))
    layer = net.mamba_layer.mamba
    assert (layer.d_state, layer.d_inner, layer.headdim) == (8, 8, 4)


@pytest.mark.parametrize("class_name, configuration", [(CLASSES[0], "2d"), (CLASSES[0], "3d_fullres"),
                                                         (CLASSES[1], "2d")])
def test_builds_from_nnunet_resenc_plans(plans, configuration, class_name):
    architecture = plans[configuration]["architecture"]
    patch = [int(p) for p in plans[configuration]["patch_size"]]
    net = build(architecture, class_name)
    assert type(net).__name__ == class_name.rsplit(".", 1)[1]
    ssm = net.mamba_layer.mamba
    if configuration == "2d":  # 512-wide bottleneck: U-Mamba2's headdim 80 does not divide 2 * 512
        assert isinstance(ssm, Mamba) or (ssm.d_inner, ssm.headdim) == (1024, 64)

    # nnU-Net's memory estimate is ResEnc's plus the SSM layer's activations at the bottleneck
    estimates = [ExperimentPlanner.static_estimate_VRAM_usage(patch, 1, 4, name, architecture["arch_kwargs"],
                                                              architecture["_kw_requires_import"])
                 for name in (class_name, architecture["network_class_name"])]
    bottleneck = deep_supervision_shapes(patch, [*architecture["arch_kwargs"]["strides"], [1] * len(patch)])[-1]
    ssm_size = net.mamba_layer.compute_conv_feature_map_size(bottleneck)
    assert estimates[0] - estimates[1] == ssm_size > 0
    n_params = sum(p.numel() for p in net.parameters())
    n_ssm = sum(p.numel() for p in net.mamba_layer.parameters())
    print(f"\n{class_name.rsplit('.', 1)[1]} {configuration} (ACDC-like ResEnc M plans, patch {patch}): "
          f"{n_params / 1e6:.2f} M parameters, {n_ssm / 1e6:.2f} M in the bottleneck SSM layer; "
          f"ResidualEncoderUNet: {(n_params - n_ssm) / 1e6:.2f} M")

    if configuration == "2d":  # the full network on a small input divisible by the strides (2 ** 5)
        outputs = net(torch.randn(1, 1, 64, 32))
        assert [tuple(o.shape[2:]) for o in outputs] == deep_supervision_shapes([64, 32],
                                                                                architecture["arch_kwargs"]["strides"])


@pytest.mark.parametrize("cls, module, op", [(UMambaBot2, mamba2, "ssd"), (UMambaBot, mamba, "selective_scan")])
def test_ssm_runs_in_float32_under_bf16_autocast(monkeypatch, cls, module, op):
    seen = record_output_dtypes(monkeypatch, module, op)
    check_bf16_autocast(cls(1, num_classes=2, **tiny(nn.Conv2d, [[1, 1], [2, 2], [2, 2]])), torch.randn(2, 1, 16, 12),
                        0.1)
    assert seen == [torch.float32, torch.float32]  # fp32 run, then the bf16 one
