"""`nnunetv2_mamba plans`: derived plans load in nnU-Net's PlansManager, build the right network, keep the
preprocessed data; bad inputs give clear errors."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from helpers.nnunet_plans import acdc_like_configurations, build
from nnunetv2_mamba.plans.narrow import narrow_plans
from nnunetv2_mamba.nets.planner_kwargs import RESENC_BLOCKS_PER_STAGE
from nnunetv2_mamba.plans import PlansError, architectures, derive_plans, load_override, write_plans
from nnunetv2_mamba.plans.translate import TRANSLATIONS

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                "numTraining": 4, "file_ending": ".nii.gz"}
HOSTS = {"UMambaBot2": ("2d", "3d_fullres"), "UMambaBot": ("2d", "3d_fullres"), "SegMamba": ("3d_fullres",),
         "MambaUNet": ("2d",), "SwinUNet": ("2d",)}


@pytest.fixture(scope="module")
def resenc_plans(tmp_path_factory) -> dict:
    """ACDC-like plans as nnU-Net's ResEnc M planner writes them (2d 256 x 224, 3d_fullres 20 x 256 x 224), with
    8x narrower stages so that building the networks takes milliseconds."""
    configurations = acdc_like_configurations(tmp_path_factory.mktemp("planner"))
    for name, configuration in configurations.items():
        configuration["data_identifier"] = f"nnUNetPlans_{name}"
    plans = {"dataset_name": "Dataset999_FakeACDC", "plans_name": "nnUNetResEncUNetMPlans",
             "configurations": configurations}
    recursive_fix_for_json_export(plans)  # numpy scalars -> Python, as nnU-Net does before saving plans
    return narrow_plans(json.loads(json.dumps(plans)), 8)  # tuples -> lists, as read from a plans file


@pytest.fixture(scope="module")
def plain_plans(resenc_plans) -> dict:
    """The same topology as default nnUNetPlans write it: PlainConvUNet, two convs per stage."""
    plans = deepcopy(resenc_plans)
    plans["plans_name"] = "nnUNetPlans"
    for configuration in plans["configurations"].values():
        architecture = configuration["architecture"]
        architecture["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
        kwargs = architecture["arch_kwargs"]
        del kwargs["n_blocks_per_stage"]
        kwargs["n_conv_per_stage"] = [2] * kwargs["n_stages"]
        kwargs["n_conv_per_stage_decoder"] = [2] * (kwargs["n_stages"] - 1)
    return plans


def test_every_override_has_a_translation():
    assert set(architectures()) == set(TRANSLATIONS)
    for name in architectures():
        override = load_override(name)
        assert override["architecture"]["network_class_name"].startswith("nnunetv2_mamba.nets.")
        assert set(override["configuration_changes"]) <= {"2d", "3d"}


@pytest.mark.parametrize("architecture, base", [(a, b) for a in sorted(HOSTS) for b in ("resenc", "plain")
                                                 if b == "plain" or a not in ("MambaUNet", "SwinUNet")])
def test_derived_plans_build_the_network_on_the_same_data(architecture, base, resenc_plans, plain_plans):
    base_plans = resenc_plans if base == "resenc" else plain_plans
    plans, notes = derive_plans(base_plans, architecture, dataset_json=DATASET_JSON)
    plans = json.loads(json.dumps(plans))  # as written to disk
    assert plans["plans_name"] == f"{base_plans['plans_name']}_{architecture}"
    assert list(plans["configurations"]) == list(HOSTS[architecture])
    skipped = [c for c in base_plans["configurations"] if c not in HOSTS[architecture]]
    assert [n for n in notes if n.startswith("skipped")] == \
        [f"skipped {c}: {architecture} cannot run configuration {c!r}: it is {c[:2]} and {architecture} "
         f"supports {' and '.join(load_override(architecture)['configuration_changes'])} only" for c in skipped]
    manager = PlansManager(plans)
    for name in HOSTS[architecture]:
        ours, theirs = manager.get_configuration(name), PlansManager(base_plans).get_configuration(name)
        assert ours.data_identifier == theirs.data_identifier
        assert ours.patch_size == theirs.patch_size and ours.spacing == theirs.spacing
        assert 2 <= ours.batch_size <= theirs.batch_size
        network = build(plans["configurations"][name]["architecture"], num_classes=4)
        assert type(network).__name__ == architecture
        # nnU-Net derives its deep-supervision scales from these strides; they must divide the patch
        for axis, size in enumerate(ours.patch_size):
            stride = 1
            for stage in ours.pool_op_kernel_sizes:
                stride *= stage[axis]
            assert size % stride == 0


def test_resenc_block_counts(resenc_plans, plain_plans):
    for base in (resenc_plans, plain_plans):
        plans, _ = derive_plans(base, "UMambaBot2", ["3d_fullres"], DATASET_JSON)
        kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        base_kwargs = base["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        n = base_kwargs["n_stages"]
        if base is resenc_plans:
            assert kwargs["n_blocks_per_stage"] == base_kwargs["n_blocks_per_stage"]
        else:
            assert kwargs["n_blocks_per_stage"] == list(RESENC_BLOCKS_PER_STAGE[:n])
            assert kwargs["n_conv_per_stage_decoder"] == [1] * (n - 1)
        for key in ("features_per_stage", "strides", "kernel_sizes", "norm_op", "nonlin"):
            assert kwargs[key] == base_kwargs[key]
        assert kwargs["d_state"] == 32 and kwargs["headdim"] == 80


def _with_2d_strides(plans: dict, strides: list[list[int]], patch: list[int]) -> dict:
    plans = deepcopy(plans)
    configuration = plans["configurations"]["2d"]
    configuration["patch_size"] = patch
    kwargs = configuration["architecture"]["arch_kwargs"]
    kwargs.update(n_stages=len(strides), strides=strides, kernel_sizes=[[3, 3]] * len(strides),
                  features_per_stage=[32 * 2 ** i for i in range(len(strides))],
                  n_conv_per_stage=[2] * len(strides), n_conv_per_stage_decoder=[2] * (len(strides) - 1))
    return plans


def test_token_networks_keep_the_levels_the_plans_allow(plain_plans):
    plans, _ = derive_plans(_with_2d_strides(plain_plans, [[1, 1], [2, 2], [2, 2], [2, 2]], [64, 48]),
                            "SwinUNet", ["2d"], DATASET_JSON)
    kwargs = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert kwargs["strides"] == [[1, 1], [4, 4], [2, 2]]  # total stride 8 = patch embedding 4 and one merging
    assert kwargs["depths"] == [2, 2] and kwargs["num_heads"] == [3, 6]
    with pytest.raises(PlansError, match="total stride 4 leaves no room"):
        derive_plans(_with_2d_strides(plain_plans, [[1, 1], [2, 2], [2, 2]], [32, 32]), "MambaUNet", ["2d"])


def test_incompatible_configurations_are_refused_when_asked_for(plain_plans):
    with pytest.raises(PlansError, match="SegMamba cannot run configuration '2d': it is 2d"):
        derive_plans(plain_plans, "SegMamba", ["2d"])
    with pytest.raises(PlansError, match="MambaUNet cannot run configuration '3d_fullres'"):
        derive_plans(plain_plans, "MambaUNet", ["2d", "3d_fullres"])
    with pytest.raises(PlansError, match=r"configuration\(s\) \['3d_lowres'\] are not in plans 'nnUNetPlans'"):
        derive_plans(plain_plans, "UMambaBot2", ["3d_lowres"])
    with pytest.raises(PlansError, match="unknown architecture 'UMamba3'.*known architectures: .*UMambaBot2"):
        derive_plans(plain_plans, "UMamba3")
    only_2d = deepcopy(plain_plans)
    del only_2d["configurations"]["3d_fullres"]
    with pytest.raises(PlansError, match=r"no configuration of plans 'nnUNetPlans' \(\['2d'\]\) can host SegMamba"):
        derive_plans(only_2d, "SegMamba")


def test_cascade_needs_its_previous_stage(plain_plans):
    plans = deepcopy(plain_plans)
    lowres = deepcopy(plans["configurations"]["3d_fullres"])
    lowres.update(data_identifier="nnUNetPlans_3d_lowres", next_stage="3d_cascade_fullres")
    plans["configurations"]["3d_lowres"] = lowres
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    derived, _ = derive_plans(plans, "UMambaBot2", dataset_json=DATASET_JSON)
    cascade = derived["configurations"]["3d_cascade_fullres"]
    assert "inherits_from" not in cascade and cascade["previous_stage"] == "3d_lowres"
    assert cascade["architecture"]["network_class_name"].endswith("UMambaBot2")
    assert derived["configurations"]["3d_lowres"]["next_stage"] == ["3d_cascade_fullres"]
    with pytest.raises(PlansError, match="previous stage '3d_lowres' is not in the derived plans; ask for both"):
        derive_plans(plans, "UMambaBot2", ["3d_cascade_fullres"], DATASET_JSON)
    derived, _ = derive_plans(plans, "UMambaBot2", ["3d_lowres"], DATASET_JSON)
    assert "next_stage" not in derived["configurations"]["3d_lowres"]


def _preprocessed(tmp_path: Path, plans: dict, monkeypatch) -> Path:
    folder = tmp_path / "preprocessed" / plans["dataset_name"]
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (folder / "nnUNetPlans_2d").mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return folder


def test_write_plans_next_to_the_base_plans(tmp_path, plain_plans, monkeypatch):
    folder = _preprocessed(tmp_path, plain_plans, monkeypatch)
    path, notes = write_plans(999, "UMambaBot2")
    assert path == folder / "nnUNetPlans_UMambaBot2.json"
    manager = PlansManager(str(path))
    assert manager.plans_name == "nnUNetPlans_UMambaBot2"
    assert manager.get_configuration("2d").network_arch_class_name == "nnunetv2_mamba.nets.umamba_bot.UMambaBot2"
    assert notes[-1] == ("3d_fullres: not preprocessed yet ({} is missing); run nnUNetv2_preprocess -d 999 "
                         "-plans_name nnUNetPlans_UMambaBot2 -c 3d_fullres").format(folder / "nnUNetPlans_3d_fullres")


def test_write_plans_errors(tmp_path, plain_plans, monkeypatch):
    _preprocessed(tmp_path, plain_plans, monkeypatch)
    with pytest.raises(PlansError, match="dataset 998: Could not find a dataset with the ID 998"):
        write_plans(998, "UMambaBot2")
    with pytest.raises(PlansError, match="nnUNetResEncUNetMPlans.json does not exist: plan the dataset first"):
        write_plans(999, "UMambaBot2", base_plans="nnUNetResEncUNetMPlans")
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(PlansError, match="nnUNet_preprocessed is not set"):
        write_plans(999, "UMambaBot2")
