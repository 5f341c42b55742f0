"""Every architecture from the arch_kwargs nnU-Net's planners write, as a plans file with only
``network_class_name`` changed hands them over: built as nnU-Net's trainer builds it, forward and backward at the
deep-supervision scales the trainer derives from the plans' strides, one log line on what was ignored and chosen,
clear errors for dimensions an architecture cannot run and for class names that do not exist."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import \
    nnUNetPlannerResEncM
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from helpers.nnunet_plans import acdc_like_configurations, build, deep_supervision_shapes
from nnunetv2_mamba.plans.narrow import narrow_plans
from nnunetv2_mamba.nets import planner_kwargs
from nnunetv2_mamba.plans import architectures, load_override
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba

CLASSES = {name: load_override(name)["architecture"]["network_class_name"] for name in architectures()}
CASES = [(name, planner, configuration) for name in CLASSES for planner in ("plain", "resenc")
         for configuration in ("2d", "3d_fullres") if configuration[:2] in load_override(name)["configuration_changes"]]
LOGGER = planner_kwargs.__name__


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """The ACDC-like '2d' and '3d_fullres' configurations of nnU-Net's default planner (PlainConvUNet, 'plain') and
    ResEnc M planner ('resenc'), as read from a plans file, with 8x narrower stages."""
    planners = {"plain": ExperimentPlanner, "resenc": nnUNetPlannerResEncM}
    result = {}
    for name, planner in planners.items():
        configurations = acdc_like_configurations(tmp_path_factory.mktemp(name), planner)
        recursive_fix_for_json_export(configurations)
        plans = narrow_plans({"configurations": json.loads(json.dumps(configurations))}, 8)
        result[name] = plans["configurations"]
    assert "n_conv_per_stage" in result["plain"]["2d"]["architecture"]["arch_kwargs"]
    assert "n_blocks_per_stage" in result["resenc"]["2d"]["architecture"]["arch_kwargs"]
    return result


@pytest.fixture
def log(caplog, monkeypatch) -> pytest.LogCaptureFixture:
    """The network log of this test alone (what was reported before in this process is forgotten)."""
    monkeypatch.setattr(planner_kwargs, "_reported", set())
    caplog.set_level(logging.WARNING, logger=LOGGER)
    return caplog


def messages(log: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in log.records if record.name == LOGGER]


@pytest.mark.parametrize("name, planner, configuration", CASES)
def test_builds_and_trains_from_planner_kwargs(name, planner, configuration, planned):
    architecture = planned[planner][configuration]["architecture"]
    network = build(architecture, CLASSES[name], num_classes=3)
    assert type(network).__name__ == name
    strides = architecture["arch_kwargs"]["strides"]
    patch = [2 * math.prod(axis) for axis in zip(*strides)]  # the bottleneck 2 voxels wide: instance norms need 2
    x = torch.randn(2, 1, *patch, requires_grad=True)
    outputs = network(x)
    assert [tuple(o.shape[2:]) for o in outputs] == deep_supervision_shapes(patch, strides)
    assert all(o.shape[:2] == (2, 3) for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_what_was_ignored_and_chosen_is_logged_once(planned, log):
    plain_2d = planned["plain"]["2d"]["architecture"]
    for _ in range(2):
        build(plain_2d, CLASSES["MambaUNet"])
    assert messages(log) == [
        "MambaUNet: built from nnU-Net planner arch_kwargs; ignores conv_op, kernel_sizes, n_conv_per_stage, "
        "n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, "
        "nonlin_kwargs; chose patch_size=[2, 2], embed_dim=[8, 16, 32, 64, 64], depths=[2, 2, 2, 2, 2]. For "
        "MambaUNet's own defaults use plans from `nnunetv2_mamba plans -a MambaUNet`."]
    log.clear()
    build(planned["resenc"]["2d"]["architecture"], CLASSES["UMambaBot2"])  # ResEnc plans: its own arguments
    assert messages(log) == []
    for _ in range(2):
        build(plain_2d, CLASSES["UMambaBot2"])
    assert messages(log) == [
        "UMambaBot2: built from nnU-Net planner arch_kwargs; ignores n_conv_per_stage, n_conv_per_stage_decoder; "
        "chose n_blocks_per_stage=[1, 3, 4, 6, 6, 6], n_conv_per_stage_decoder=[1, 1, 1, 1, 1]. For UMambaBot2's own "
        "defaults use plans from `nnunetv2_mamba plans -a UMambaBot2`."]


def test_own_arguments_given_with_planner_kwargs_win(planned, log):
    network = build(planned["resenc"]["2d"]["architecture"], CLASSES["SwinUNet"], depths=[1] * 5, num_heads=[1] * 5)
    assert [len(stage) for stage in network.encoder.stages] == [1] * 5
    assert [block.num_heads for stage in network.encoder.stages for block in stage] == [1] * 5
    assert "chose patch_size=[2, 2], embed_dim=[8, 16, 32, 64, 64]. For" in messages(log)[0]
    segmamba = build(planned["resenc"]["3d_fullres"]["architecture"], CLASSES["SegMamba"], depths=1)
    assert [len(stage.mamba_layers) for stage in segmamba.encoder.stages] == [1] * 5
    assert "chose n_conv_per_stage_decoder=[1, 1, 1, 1, 2]." in messages(log)[1]


def test_token_networks_follow_strides_that_stop_on_one_axis(planned):
    """nnU-Net's topology for an elongated 2D patch downsamples the short axis fewer times ([2, 1] at the end)."""
    _, strides, kernel_sizes, patch, _ = get_pool_and_conv_props([1.0, 1.0], (512, 160), 4, 999999)
    strides = [list(s) for s in strides]
    assert strides[-1] == [2, 1]
    n = len(strides)
    kwargs = {**planned["plain"]["2d"]["architecture"]["arch_kwargs"], "n_stages": n, "strides": strides,
              "kernel_sizes": [list(k) for k in kernel_sizes], "features_per_stage": [4 * 2 ** i for i in range(n)],
              "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1)}
    architecture = {**planned["plain"]["2d"]["architecture"], "arch_kwargs": kwargs}
    size = [math.prod(axis) for axis in zip(*strides)]
    for name in ("MambaUNet", "SwinUNet"):
        outputs = build(architecture, CLASSES[name], num_classes=2)(torch.randn(1, 1, *size))
        assert [tuple(o.shape[2:]) for o in outputs] == deep_supervision_shapes(size, strides)


@pytest.mark.parametrize("name, configuration, message", [
    ("MambaUNet", "3d_fullres", r"MambaUNet is a 2D network, but these arch_kwargs are for 3D \(conv_op Conv3d, "
                                r"strides \[\[1, 1, 1\], \[1, 2, 2\]"),
    ("SwinUNet", "3d_fullres", r"SwinUNet is a 2D network, but these arch_kwargs are for 3D"),
    ("SegMamba", "2d", r"SegMamba is a 3D network .* got <class 'torch.nn.modules.conv.Conv2d'>")])
def test_dimensions_an_architecture_cannot_run_are_refused(name, configuration, message, planned, log):
    for planner in ("plain", "resenc"):
        with pytest.raises(ValueError, match=message):
            build(planned[planner][configuration]["architecture"], CLASSES[name])
    assert messages(log) == []  # nothing claims it was built


def test_unknown_network_class_is_named_with_our_architectures(planned):
    def build_with(class_name: str) -> torch.nn.Module:
        configuration = json.loads(json.dumps(planned["plain"]["2d"]))
        configuration["architecture"]["network_class_name"] = class_name
        manager = PlansManager({"plans_name": "nnUNetPlans", "configurations": {"2d": configuration}})
        return nnUNetTrainerMamba.build_network_architecture(manager, manager.get_configuration("2d"), 1, 3)

    listed = ", ".join(f"{name} ({path})" for name, path in CLASSES.items())
    with pytest.warns(UserWarning, match="not found"), pytest.raises(ImportError) as error:
        build_with("nnunetv2_mamba.nets.mamba_unet.MambaUnet")
    assert str(error.value) == (
        "network_class_name 'nnunetv2_mamba.nets.mamba_unet.MambaUnet' in plans 'nnUNetPlans' is not a class that can "
        f"be imported. Did you mean 'nnunetv2_mamba.nets.mamba_unet.MambaUNet'? Our architectures: {listed}; nnU-Net's "
        "own are in dynamic_network_architectures.architectures (e.g. "
        "dynamic_network_architectures.architectures.unet.PlainConvUNet).")
    with pytest.warns(UserWarning), pytest.raises(ImportError) as error:
        build_with("my.Net")
    assert f"'my.Net' in plans 'nnUNetPlans' is not a class that can be imported. Our architectures: {listed};" \
        in str(error.value)
    # nnU-Net's own fallback (a bare dynamic_network_architectures class name) still works
    with pytest.warns(UserWarning):
        assert type(build_with("PlainConvUNet")).__name__ == "PlainConvUNet"
