"""Our trainers as nnU-Net sees them: found through nnUNet_extTrainer by nnU-Net's own lookup, and the stock
nnUNetTrainer / nnUNetPredictor working with our networks from our plans; plus `nnunetv2_mamba doctor`."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from copy import deepcopy

import numpy as np
import pytest
import torch
import torch.distributed as dist
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from helpers.nnunet_plans import acdc_like_configurations
from nnunetv2_mamba.commands import doctor
from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR
from nnunetv2_mamba.plans import derive_plans
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba, unwrap
from nnunetv2_mamba.training.variants.mamba import nnUNetTrainerMamba_smoke

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 4, "file_ending": ".nii.gz"}


def test_nnunet_finds_our_trainers_through_the_ext_trainer_folder(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", str(EXT_TRAINER_DIR))
    found = recursive_find_trainer_class_by_name("nnUNetTrainerMamba_smoke")
    assert found is nnUNetTrainerMamba_smoke  # the class itself, defined in nnunetv2_mamba.training
    assert pickle.loads(pickle.dumps(found)) is found
    assert "nnunetv2_mamba_trainers" not in sys.modules  # nnU-Net purges the shim after its lookup
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerMamba_nope"):
        recursive_find_trainer_class_by_name("nnUNetTrainerMamba_nope")
    monkeypatch.delenv("nnUNet_extTrainer")
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerMamba_smoke"):
        recursive_find_trainer_class_by_name("nnUNetTrainerMamba_smoke")


class _FlagOnNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.deep_supervision = True


def _bare_trainer(network: nn.Module) -> nnUNetTrainerMamba:
    trainer = nnUNetTrainerMamba.__new__(nnUNetTrainerMamba)  # only the attributes these methods read
    trainer.network = network
    return trainer


def test_deep_supervision_switch_through_wrappers(tmp_path):
    holder = _FlagOnNetwork()
    trainer = _bare_trainer(torch.compile(holder))
    trainer.set_deep_supervision_enabled(False)
    assert holder.deep_supervision is False
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        trainer = _bare_trainer(DistributedDataParallel(holder))
        assert unwrap(trainer.network) is holder
        trainer.set_deep_supervision_enabled(True)
        assert holder.deep_supervision is True
    finally:
        dist.destroy_process_group()
    with pytest.raises(TypeError, match="Conv2d has no `deep_supervision` attribute"):
        _bare_trainer(nn.Conv2d(1, 1, 1)).set_deep_supervision_enabled(False)


def test_compile_only_when_asked(monkeypatch):
    trainer = _bare_trainer(nn.Identity())
    trainer.device = torch.device("cuda")  # nnU-Net compiles by default on GPUs
    monkeypatch.delenv("nnUNet_compile", raising=False)
    assert not trainer._do_i_compile()
    monkeypatch.setenv("nnUNet_compile", "true")
    assert trainer._do_i_compile()


@pytest.fixture(scope="module")
def small_plans(tmp_path_factory) -> dict:
    """nnU-Net's ACDC-like ResEnc 2d plans shrunk to a 32 x 48 patch, 4 stages of 8 ... 64 features."""
    configuration = acdc_like_configurations(tmp_path_factory.mktemp("planner"))["2d"]
    kwargs = configuration["architecture"]["arch_kwargs"]
    kwargs.update(n_stages=4, features_per_stage=[8, 16, 32, 64], kernel_sizes=[[3, 3]] * 4,
                  strides=[[1, 1], [2, 2], [2, 2], [2, 2]], n_blocks_per_stage=[1, 2, 2, 2],
                  n_conv_per_stage_decoder=[1, 1, 1])
    configuration.update(patch_size=[32, 48], batch_size=2, data_identifier="nnUNetPlans_2d", batch_dice=True)
    plans = {"dataset_name": "Dataset999_FakeACDC", "plans_name": "nnUNetResEncUNetMPlans",
             "original_median_spacing_after_transp": [5.0, 1.5625, 1.5625],
             "original_median_shape_after_transp": [18, 237, 208], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "nnUNetPlannerResEncM", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}},
             "configurations": {"2d": configuration}}
    recursive_fix_for_json_export(plans)
    return json.loads(json.dumps(plans))


@pytest.mark.parametrize("architecture", ["UMambaBot2", "MambaUNet"])
def test_stock_trainer_and_predictor_run_our_networks(architecture, small_plans, tmp_path, monkeypatch):
    """`nnUNetv2_train ... -p nnUNetPlans_<Arch>` with nnU-Net's own nnUNetTrainer: network from the plans, a
    deep-supervised training step, deep supervision off, sliding-window prediction with mirroring."""
    plans, _ = derive_plans(small_plans, architecture, ["2d"], DATASET_JSON)
    preprocessed = tmp_path / "preprocessed" / plans["dataset_name"]
    (preprocessed / "nnUNetPlans_2d").mkdir(parents=True)
    (preprocessed / "nnUNetPlans_2d" / "case.b2nd").touch()  # initialize() infers the dataset class from files
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainer = nnUNetTrainer({**deepcopy(plans), "continue_training": False}, "2d", 0, DATASET_JSON,
                            device=torch.device("cpu"))
    trainer.initialize()
    assert type(trainer.network).__name__ == architecture
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales()
    target = torch.randint(0, 3, (2, 1, *patch))
    batch = {"data": torch.randn(2, 1, *patch),
             "target": [nn.functional.interpolate(target.float(), scale_factor=s, mode="nearest-exact").long()
                        for s in map(list, scales)]}
    loss = trainer.train_step(batch)["loss"]
    assert np.isfinite(loss)

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    DATASET_JSON, "nnUNetTrainer", (0, 1))
    image = torch.randn(1, 1, 40, 70)  # one slice larger than the patch: several windows, 4 mirrorings each
    logits = predictor.predict_sliding_window_return_logits(image)
    assert logits.shape == (3, 1, 40, 70) and torch.isfinite(logits).all()


def test_doctor_reports_a_good_and_a_broken_setup(tmp_path, monkeypatch, capsys):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", str(EXT_TRAINER_DIR))
    assert doctor.run(argparse.Namespace()) == 0
    good = capsys.readouterr().out
    assert "[  ok] nnUNet_extTrainer" in good and "nnUNetTrainerMamba_smoke" in good
    assert "Everything is set up." in good

    monkeypatch.delenv("nnUNet_results")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "missing"))
    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    assert doctor.run(argparse.Namespace()) == 1
    broken = capsys.readouterr().out
    assert f"[FAIL] nnUNet_raw: {tmp_path / 'missing'} does not exist\n       fix: mkdir -p {tmp_path / 'missing'}" \
        in broken
    assert "[FAIL] nnUNet_results: not set\n       fix: export nnUNet_results=/path/to/nnUNet_results" in broken
    assert f"[FAIL] nnUNet_extTrainer: {tmp_path} does not contain {EXT_TRAINER_DIR}" in broken
    assert "3 problem(s) found." in broken
    monkeypatch.delenv("nnUNet_extTrainer")
    doctor.run(argparse.Namespace())
    assert "fix: export nnUNet_extTrainer=$(nnunetv2_mamba ext-trainer-path)" in capsys.readouterr().out
