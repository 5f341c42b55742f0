"""The nnU-Net contract of both token U-Nets (MambaUNet, SwinUNet): shapes, deep supervision, strides, padding,
building from plans, per-axis strides and per-level widths, the feature-map estimate, and checkpoint reading."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging as TimmPatchMerging

from nnunetv2_mamba.nets.mamba_unet import MambaUNet
from nnunetv2_mamba.nets.patch_ops import PatchMerging
from nnunetv2_mamba.nets.pretrained import read_state_dict
from nnunetv2_mamba.nets.swin_unet import SwinUNet

from helpers.nnunet_plans import build, deep_supervision_shapes

SMALL = {MambaUNet: {"embed_dim": 24, "depths": (1, 1, 1, 1), "d_state": 4},
         SwinUNet: {"embed_dim": 24, "depths": (1, 2, 1, 1), "num_heads": (1, 2, 3, 6)}}
NETWORKS = pytest.mark.parametrize("cls", [MambaUNet, SwinUNet], ids=lambda c: c.__name__)
STRIDES = [[1, 1], [4, 4], [2, 2], [2, 2], [2, 2]]


def small(cls, input_channels=1, num_classes=3, **kwargs):
    return cls(input_channels, num_classes, **{**SMALL[cls], **kwargs})


def expected_shapes(batch, classes, size, deep_supervision):
    strides = [1, 4, 8, 16] if deep_supervision else [1]
    return [(batch, classes, math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in strides]


@NETWORKS
@pytest.mark.parametrize("size,channels,deep_supervision",
                         [((224, 224), 1, True), ((256, 224), 3, False), ((100, 76), 3, True)])
def test_forward_backward_shapes(cls, size, channels, deep_supervision):
    net = small(cls, channels, deep_supervision=deep_supervision)
    x = torch.randn(2, channels, *size, requires_grad=True)
    out = net(x)
    outputs = out if deep_supervision else [out]
    assert isinstance(out, list) == deep_supervision
    assert [tuple(o.shape) for o in outputs] == expected_shapes(2, 3, size, deep_supervision)
    sum(o.square().mean() for o in outputs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@NETWORKS
def test_odd_sizes_are_padded_bottom_right_and_cropped(cls):
    net = small(cls, deep_supervision=True).eval()
    x = torch.randn(1, 1, 45, 38)
    padded = net(F.pad(x, (0, 64 - 38, 0, 64 - 45)))
    for out, full in zip(net(x), padded):
        torch.testing.assert_close(out, full[..., :out.shape[2], :out.shape[3]])


@NETWORKS
def test_deep_supervision_toggles_at_runtime(cls):
    net = small(cls, deep_supervision=False).eval()
    x = torch.randn(1, 1, 64, 64)
    single = net(x)
    assert torch.is_tensor(single)
    net.decoder.deep_supervision = True  # what nnU-Net's set_deep_supervision_enabled does
    out = net(x)
    assert [tuple(o.shape) for o in out] == expected_shapes(1, 3, (64, 64), True)
    torch.testing.assert_close(out[0], single)


@NETWORKS
def test_strides_are_validated(cls):
    assert small(cls, strides=STRIDES).strides == STRIDES
    assert small(cls, strides=[1, 4, 2, 2, 2]).strides == STRIDES
    three_stages = {"depths": (1, 1, 1), **({"num_heads": (1, 2, 3)} if cls is SwinUNet else {})}
    assert small(cls, patch_size=2, **three_stages).strides == [[1, 1], [2, 2], [2, 2], [2, 2]]
    one_axis = [[1, 1], [4, 4], [2, 2], [2, 1], [2, 2]]  # a merging may downsample one axis only, as nnU-Net plans
    assert small(cls, strides=one_axis).strides == one_axis
    for wrong in ([[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], STRIDES[:-1], [[1, 1, 1], [4, 4, 4], [2, 2, 2]],
                  [[2, 2], [4, 4], [2, 2], [2, 2], [2, 2]]):
        with pytest.raises(ValueError, match=r"by default \[\[1, 1\], \[4, 4\], \[2, 2\], \[2, 2\], \[2, 2\]\]"):
            small(cls, strides=wrong)


@NETWORKS
def test_anisotropic_patch_merging_and_widths_per_level(cls):
    """Per-axis strides (nnU-Net's planners stop downsampling an exhausted axis) and one width per level."""
    strides = [[1, 1], [2, 4], [2, 2], [2, 1], [1, 2]]
    heads = {"num_heads": (1, 1, 2, 2)} if cls is SwinUNet else {}
    net = small(cls, strides=strides, patch_size=[2, 4], embed_dim=[8, 16, 16, 24], deep_supervision=True, **heads)
    assert net.dims == [8, 16, 16, 24]
    x = torch.randn(1, 1, 20, 60, requires_grad=True)  # padded to the total stride (8, 16), cropped back
    out = net(x)
    assert [tuple(o.shape[2:]) for o in out] == [(20, 60), (10, 15), (5, 8), (3, 8)]
    sum(o.square().mean() for o in out).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert [tuple(o.shape[2:]) for o in net(torch.randn(1, 1, 32, 64))] == \
        deep_supervision_shapes([32, 64], strides)


def test_patch_merging_is_timms_for_2x2():
    """Same parameters and concatenation order as Swin's / VMamba's merging, so their checkpoints load."""
    theirs, ours = TimmPatchMerging(6), PatchMerging(6)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x))


@NETWORKS
def test_builds_from_nnunet_plans(cls):
    architecture = {"network_class_name": f"{cls.__module__}.{cls.__name__}", "_kw_requires_import": [],
                    "arch_kwargs": {"strides": STRIDES, **SMALL[cls]}}
    net = build(architecture, input_channels=2, num_classes=4)
    assert isinstance(net, cls)
    out = net(torch.randn(2, 2, 96, 64))
    assert [tuple(o.shape[2:]) for o in out] == deep_supervision_shapes([96, 64], STRIDES)


@NETWORKS
def test_feature_map_size_estimate(cls):
    net = small(cls)
    estimate = net.compute_conv_feature_map_size
    assert 0 < estimate((64, 64)) < estimate((64, 96)) < estimate((128, 128))
    assert estimate((60, 50)) == estimate((64, 64))  # counted on the padded grid
    assert estimate((448, 448)) / estimate((224, 224)) == pytest.approx(4, rel=0.05)  # grids divisible by windows
    with pytest.raises(ValueError, match="2D network"):
        estimate((32, 64, 64))


@NETWORKS
def test_rejects_3d_input(cls):
    with pytest.raises(ValueError, match="2D network"):
        small(cls)(torch.randn(1, 1, 16, 32, 32))


def test_checkpoints_are_read_without_running_code(tmp_path):
    trusted = tmp_path / "weights.pth"
    torch.save({"model": {"a": torch.ones(2)}, "epoch": 3}, trusted)
    assert read_state_dict(trusted).keys() == {"a"}
    pickled = tmp_path / "full.pth"
    torch.save({"model": {"a": torch.ones(2)}, "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(ValueError, match="weights_only=True.*keep only its weights"):
        read_state_dict(pickled)
    with pytest.raises(FileNotFoundError, match="pretrained"):
        read_state_dict(tmp_path / "absent.pth")
