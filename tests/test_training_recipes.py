"""The training-recipe options on crafted inputs: domain_knowledge.json parsing, related-class label smoothing and
class weights, label-swap mirroring in training and at inference, small-component removal, DAE disruptions and
weight transfer, feature perturbation, consistency/pseudo-label pieces and the unlabeled batch mixing; and, on real
ACDC slices (slow), the DAE's reconstruction loss falling."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from torch import nn

from nnunetv2_mamba.cli import main as cli
from nnunetv2_mamba.data.domain_knowledge import DomainKnowledgeError, load_domain_knowledge, parse_domain_knowledge
from nnunetv2_mamba.data.synthetic import synthetic_case, write_synthetic_dataset
from nnunetv2_mamba.data.unlabeled import move_to_unlabeled, preprocess_unlabeled
from nnunetv2_mamba.postprocessing.small_components import remove_small_components
from nnunetv2_mamba.training.feature_perturbation import perturb_features, skip_perturbation
from nnunetv2_mamba.training.label_swap_mirroring import (LabelSwapMirrorTransform, attach_label_swap_tta,
                                                          mirror_axis_in_patch, swap_labels)
from nnunetv2_mamba.training.loss.softmax_mse import SoftmaxMSE
from nnunetv2_mamba.training.nnUNetTrainerConsistency import (nnUNetTrainerConsistency, pseudo_labels,
                                                              strong_intensity_transforms)
from nnunetv2_mamba.training.nnUNetTrainerPseudoLabel import nnUNetTrainerPseudoLabel
from nnunetv2_mamba.training.rampup import sigmoid_rampup
from nnunetv2_mamba.training.nnUNetTrainerDAE import disrupt, nnUNetTrainerDAE
from nnunetv2_mamba.training.nnUNetTrainerDomainKnowledge import nnUNetTrainerDomainKnowledge
from nnunetv2_mamba.training.loss.related_class_loss import RelatedClassCrossEntropy, related_class_targets
from nnunetv2_mamba.training.unlabeled_data import MixedBatches

LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2, "canal": 3}
KNOWLEDGE = {"label_smoothing": {"amount": 0.2, "related": {"kidney_left": ["kidney_right", "canal"]}},
             "class_weights": {"canal": 10},
             "mirror": {"axis": "x", "pairs": [["kidney_left", "kidney_right"]]},
             "min_component_size": {"canal": 4}}
SWAP = [0, 2, 1, 3]


# --- domain_knowledge.json -------------------------------------------------------------------------------------

def test_knowledge_resolves_names_and_values_and_round_trips():
    knowledge = parse_domain_knowledge({**KNOWLEDGE, "class_weights": {"3": 10, "kidney_left": 2.5}}, LABELS)
    assert knowledge.smoothing == 0.2 and knowledge.related == {1: (2, 3)}
    assert knowledge.class_weights == {3: 10.0, 1: 2.5}
    assert (knowledge.mirror_axis, knowledge.mirror_pairs) == ("x", ((1, 2),))
    assert knowledge.min_component_size == {3: 4}
    assert knowledge.label_permutation(5) == [0, 2, 1, 3, 4]
    assert parse_domain_knowledge(json.loads(json.dumps(knowledge.to_json()))) == knowledge  # as stored in plans
    assert parse_domain_knowledge({}, LABELS).summary() == "nothing"
    assert parse_domain_knowledge({"label_smoothing": {"related": {"1": [2]}}}, LABELS).smoothing == 0.1


@pytest.mark.parametrize("content,message", [
    ({"smoothing": {}}, "unknown section"),
    ({"class_weights": {"liver": 2}}, "unknown label 'liver'"),
    ({"class_weights": {"canal": 0}}, "positive number"),
    ({"class_weights": {"ignore": 2}}, "ignore label"),
    ({"label_smoothing": {"amount": 1.0, "related": {"1": [2]}}}, r"amount must be a number in \(0, 1\)"),
    ({"label_smoothing": {"related": {"1": [1]}}}, "must list other classes"),
    ({"mirror": {"axis": "left-right", "pairs": [[1, 2]]}}, "mirror.axis must be one of"),
    ({"mirror": {"axis": "x", "pairs": [[1, 2], [2, 3]]}}, "each label at most once"),
    ({"mirror": {"axis": "x", "pairs": [[1, 2, 3]]}}, "not a \\[label, label\\] pair"),
    ({"min_component_size": {"canal": 2.5}}, "whole number of voxels"),
])
def test_knowledge_errors_name_the_file_and_the_entry(tmp_path, content, message):
    path = tmp_path / "domain_knowledge.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DomainKnowledgeError, match=message) as error:
        load_domain_knowledge(path, {**LABELS, "ignore": 4})
    assert str(path) in str(error.value)


def test_knowledge_refuses_regions_missing_files_and_bad_json(tmp_path):
    with pytest.raises(DomainKnowledgeError, match="region-based"):
        parse_domain_knowledge({}, {"background": 0, "whole": [1, 2]})
    with pytest.raises(DomainKnowledgeError, match="does not exist"):
        load_domain_knowledge(tmp_path / "missing.json", LABELS)
    (tmp_path / "bad.json").write_text("{class_weights: 1}")
    with pytest.raises(DomainKnowledgeError, match="not valid JSON"):
        load_domain_knowledge(tmp_path / "bad.json", LABELS)


# --- label smoothing and class weights ---------------------------------------------------------------------------

def test_related_class_targets_sum_to_one_and_hit_the_related_classes():
    targets = related_class_targets(5, {1: (2, 3), 4: (0,)}, 0.1)
    torch.testing.assert_close(targets.sum(1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(targets[1], torch.tensor([0, 0.9, 0.05, 0.05, 0], dtype=torch.float64))
    torch.testing.assert_close(targets[4], torch.tensor([0.1, 0, 0, 0, 0.9], dtype=torch.float64))
    torch.testing.assert_close(targets[[0, 2, 3]], torch.eye(5, dtype=torch.float64)[[0, 2, 3]])


def _reference_ce(logits, target, soft, weights, ignore=None):
    """sum_i sum_c w_c T[y_i, c] (-log p_ic) / sum_i sum_c w_c T[y_i, c] in float64, voxel by voxel."""
    log_p = logits.double().log_softmax(1).movedim(1, -1).reshape(-1, logits.shape[1])
    numerator = denominator = 0.0
    for y, lp in zip(target.reshape(-1).tolist(), log_p):
        if y == ignore:
            continue
        q = soft[y] * weights.double()
        numerator, denominator = numerator - (q * lp).sum(), denominator + q.sum()
    return numerator / denominator


@pytest.mark.parametrize("ignore", [None, 4])
def test_related_class_cross_entropy_matches_float64_reference(ignore):
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 4 if ignore is None else 5, (2, 1, 5, 6))
    soft = related_class_targets(4, {1: (2, 3), 2: (1,)}, 0.2)
    weights = torch.tensor([1.0, 2.0, 0.5, 10.0])
    loss = RelatedClassCrossEntropy(soft, weights, ignore)(logits, target)
    torch.testing.assert_close(loss.double(), _reference_ce(logits, target, soft, weights, ignore))
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_without_smoothing_it_is_nnunets_weighted_cross_entropy():
    logits, target = torch.randn(3, 4, 7, 7), torch.randint(0, 5, (3, 1, 7, 7))
    weights = torch.tensor([1.0, 3.0, 1.0, 10.0])
    ours = RelatedClassCrossEntropy(torch.eye(4), weights, ignore_label=4)(logits, target)
    nnunet = RobustCrossEntropyLoss(weight=weights, ignore_index=4)(logits, target)
    torch.testing.assert_close(ours, nnunet)


def test_without_weights_it_is_cross_entropy_with_soft_targets():
    logits, target = torch.randn(2, 4, 6, 6), torch.randint(0, 4, (2, 6, 6))
    soft = related_class_targets(4, {0: (1,), 3: (1, 2)}, 0.3)
    expected = F.cross_entropy(logits, soft[target].movedim(-1, 1).float())
    torch.testing.assert_close(RelatedClassCrossEntropy(soft)(logits, target), expected)


def test_class_weights_change_the_cross_entropy_as_expected():
    """Two voxels with per-voxel losses l0 (class 0) and l3 (class 3): the weighted mean (l0 + 10 l3) / 11."""
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).T.reshape(1, 4, 2)
    target = torch.tensor([[0, 3]])
    per_voxel = -logits.log_softmax(1)[0, [0, 3], [0, 1]]
    plain = RelatedClassCrossEntropy(torch.eye(4))(logits, target)
    weighted = RelatedClassCrossEntropy(torch.eye(4), torch.tensor([1.0, 1.0, 1.0, 10.0]))(logits, target)
    torch.testing.assert_close(plain, per_voxel.mean())
    torch.testing.assert_close(weighted, (per_voxel[0] + 10 * per_voxel[1]) / 11)
    assert weighted > plain  # the poorly predicted canal voxel counts more


# --- label-swap mirroring ----------------------------------------------------------------------------------------

def test_mirror_axis_follows_transpose_and_2d_slicing():
    assert mirror_axis_in_patch("x", [0, 1, 2], 3) == 2 and mirror_axis_in_patch("z", [0, 1, 2], 3) == 0
    assert mirror_axis_in_patch("x", [2, 0, 1], 3) == 0  # x moved first by transpose_forward
    assert mirror_axis_in_patch("x", [0, 1, 2], 2) == 1  # 2d patches are (y, x)
    assert mirror_axis_in_patch("x", [2, 0, 1], 2) is None  # 2d slices along x: never flipped there
    with pytest.raises(ValueError, match="axis must be one of"):
        mirror_axis_in_patch("lr", [0, 1, 2], 3)


def _volume():
    segmentation = torch.randint(-1, 5, (1, 4, 5, 6), dtype=torch.int16)  # -1 (outside) and 4 (ignore) stay
    return torch.randn(2, 4, 5, 6), segmentation


@pytest.mark.parametrize("axes", [[], [0], [2], [0, 2], [0, 1, 2]])
def test_mirroring_with_swap_equals_swapping_then_mirroring(axes):
    image, segmentation = _volume()
    transform = LabelSwapMirrorTransform((0, 1, 2), swap_axis=2, permutation=SWAP + [4])
    out = transform.apply({"image": image.clone(), "segmentation": segmentation.clone()}, axes=axes)
    dims = [a + 1 for a in axes]
    expected = swap_labels(segmentation, torch.tensor(SWAP + [4])) if 2 in axes else segmentation
    torch.testing.assert_close(out["image"], torch.flip(image, dims))
    assert torch.equal(out["segmentation"], torch.flip(expected, dims))
    assert out["segmentation"].dtype == torch.int16
    outside = segmentation < 0
    assert torch.equal(swap_labels(segmentation, torch.tensor(SWAP + [4]))[outside], segmentation[outside])


class _Memorising(nn.Module):
    """A perfectly trained model: one-hot of the label map it was taught for each image it knows."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs

    def forward(self, x):
        for image, segmentation in self.pairs:
            if torch.equal(x[0], image):
                return F.one_hot(segmentation[0].long(), 4).movedim(-1, 0)[None].float()
        raise AssertionError("unknown image")


def test_test_time_swap_inverts_the_training_swap():
    """A model that learnt the training transform's pairs (image, labels) and (mirrored image, mirrored and swapped
    labels) predicts the original labels through the swap-aware network, mirrored or not."""
    image, segmentation = torch.randn(1, 6, 8), torch.randint(0, 4, (1, 6, 8))
    mirrored = LabelSwapMirrorTransform((0, 1), 1, SWAP).apply(
        {"image": image.clone(), "segmentation": segmentation.clone()}, axes=[1])
    model = _Memorising([(image, segmentation), (mirrored["image"], mirrored["segmentation"])]).eval()
    attach_label_swap_tta(model, axis=1, channel_permutation=SWAP)
    expected = F.one_hot(segmentation[0], 4).movedim(-1, 0)[None].float()
    torch.testing.assert_close(model(image[None]), expected)
    torch.testing.assert_close(model(mirrored["image"][None]), torch.flip(expected, (3,))[:, SWAP])


def _small_unet(out_channels=4, deep_supervision=False):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, 3, (4, 8, 16), nn.Conv2d, 3, (1, 2, 2), 1, out_channels, 1, True, nn.InstanceNorm2d,
                         {"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=deep_supervision)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_swap_aware_network_is_equivariant_and_training_mode_untouched(deep_supervision):
    net = _small_unet(deep_supervision=deep_supervision)
    x = torch.randn(2, 1, 16, 12)
    plain_train = net(x)
    attach_label_swap_tta(net, axis=1, channel_permutation=SWAP)
    for a, b in zip(*[o if deep_supervision else [o] for o in (plain_train, net(x))]):
        torch.testing.assert_close(a, b)  # training mode: no averaging
    net.eval()
    with torch.no_grad():
        outputs, flipped = net(x), net(torch.flip(x, (3,)))
    for out, out_flipped in zip(*[o if deep_supervision else [o] for o in (outputs, flipped)]):
        torch.testing.assert_close(out_flipped, torch.flip(out, (3,))[:, SWAP])


def test_nnunet_predictor_with_swap_aware_network_averages_all_flips_with_swaps():
    """nnU-Net's predictor mirrors the remaining axis (0); the network adds the swap axis (1): all four flips,
    the x-flipped ones with channels swapped."""
    net = _small_unet().eval()
    x = torch.randn(1, 1, 16, 12)
    with torch.no_grad():
        expected = sum(
            torch.flip(net(torch.flip(x, axes)), axes)[:, SWAP if 3 in axes else slice(None)] if axes else net(x)
            for axes in [(), (2,), (3,), (2, 3)]) / 4
    attach_label_swap_tta(net, axis=1, channel_permutation=SWAP)
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=True)
    predictor.network, predictor.allowed_mirroring_axes = net, (0,)
    torch.testing.assert_close(predictor._internal_maybe_mirror_and_predict(x), expected)


# --- the domain-knowledge trainer ---------------------------------------------------------------------------------

def _plans(architecture: dict, patch_size: tuple[int, int] = (32, 32)) -> dict:
    return {"dataset_name": "Dataset998_Recipes", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
            "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
            "original_median_shape_after_transp": [1, 32, 32], "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}},
            "configurations": {"2d": {
                "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": list(patch_size), "median_image_size_in_voxels": list(patch_size),
                "spacing": [1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": architecture, "batch_dice": True}}}


PLAIN_UNET = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
              "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.Conv2d",
                              "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                              "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1],
                              "conv_bias": True, "norm_op": "torch.nn.InstanceNorm2d",
                              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                              "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                              "nonlin_kwargs": {"inplace": True}},
              "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
UMAMBA_BOT2 = {"network_class_name": "nnunetv2_mamba.nets.umamba_bot.UMambaBot2",
               "arch_kwargs": {**{k: v for k, v in PLAIN_UNET["arch_kwargs"].items() if k != "n_conv_per_stage"},
                               "n_blocks_per_stage": [1, 1, 1], "d_state": 8, "headdim": 8},
               "_kw_requires_import": PLAIN_UNET["_kw_requires_import"]}
MAMBA_UNET = {"network_class_name": "nnunetv2_mamba.nets.mamba_unet.MambaUNet",
              "arch_kwargs": {"embed_dim": 8, "depths": [1, 1], "d_state": 4, "patch_size": 4,
                              "strides": [[1, 1], [4, 4], [2, 2]]},
              "_kw_requires_import": []}


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """nnU-Net's three folders with a preprocessed Dataset998_Recipes (plans, dataset.json, domain knowledge)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    base = tmp_path / "nnUNet_preprocessed" / "Dataset998_Recipes"
    base.mkdir()
    (base / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "MRI"},
                                                   "numTraining": 4, "file_ending": ".nii.gz"}))
    (base / "domain_knowledge.json").write_text(json.dumps(KNOWLEDGE))
    return base


def _trainer(cls, base: Path, architecture=PLAIN_UNET, patch_size: tuple[int, int] = (32, 32)):
    plans = _plans(architecture, patch_size)
    (base / "nnUNetPlans.json").write_text(json.dumps(plans))
    return cls(plans | {"continue_training": False}, "2d", 0, json.loads((base / "dataset.json").read_text()),
               torch.device("cpu"))


def test_domain_knowledge_trainer_wires_every_section(nnunet_folders):
    trainer = _trainer(nnUNetTrainerDomainKnowledge, nnunet_folders)
    assert trainer.plans_manager.plans["domain_knowledge"]["mirror"] == {"axis": "x", "pairs": [[1, 2]]}
    ce = trainer._build_loss().loss.ce
    assert isinstance(ce, RelatedClassCrossEntropy) and ce.normaliser[3] == 10  # weight of the canal
    rotation, dummy_2d, initial, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0, 1) and trainer.inference_allowed_mirroring_axes == (0,)  # x (axis 1) is the network's
    transforms = trainer.get_training_transforms([32, 32], rotation, None, mirror_axes, dummy_2d)
    swapping = [t for t in transforms.transforms if isinstance(t, LabelSwapMirrorTransform)]
    assert len(swapping) == 1 and swapping[0].swap_axis == 1 and swapping[0].permutation.tolist() == SWAP
    # inference rebuilds the network from the results folder's plans alone, and it averages with the mirror
    network = nnUNetTrainerDomainKnowledge.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 4, False).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(network(torch.flip(x, (3,))), torch.flip(network(x), (3,))[:, SWAP])


def test_domain_knowledge_trainer_needs_its_file_others_do_without(nnunet_folders):
    (nnunet_folders / "domain_knowledge.json").unlink()
    with pytest.raises(FileNotFoundError, match="domain_knowledge.json does not exist"):
        _trainer(nnUNetTrainerDomainKnowledge, nnunet_folders)
    trainer = _trainer(nnUNetTrainerConsistency, nnunet_folders)
    assert trainer.domain_knowledge is None and "domain_knowledge" not in trainer.plans_manager.plans
    assert type(trainer._build_loss().loss.ce) is RobustCrossEntropyLoss


# --- DAE pre-training ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 1, 32, 24), (2, 2, 8, 20, 16)])
def test_disruptions_keep_shape_and_are_seeded(shape):
    images = torch.randn(shape)
    a = disrupt(images, generator=torch.Generator().manual_seed(1))
    b = disrupt(images, generator=torch.Generator().manual_seed(1))
    c = disrupt(images, generator=torch.Generator().manual_seed(2))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(disrupt(images, 0.0, 1, 16, 0.0), images)


def test_masking_zeroes_whole_blocks_shared_by_channels():
    images = torch.rand(3, 2, 20, 36) + 1  # never zero
    masked = disrupt(images, noise_std=0.0, low_resolution_factor=1, mask_block_size=8, mask_ratio=0.5,
                     generator=torch.Generator().manual_seed(0))
    zero = masked == 0
    assert torch.equal(masked[~zero], images[~zero])
    assert torch.equal(zero[:, 0], zero[:, 1])
    # (3, 1, 3, 5, 8, 8): the image in blocks of 8 x 8, the partial ones at the edges completed by their own values
    blocks = F.pad(zero[:, :1].float(), (0, 4, 0, 4), mode="replicate").unfold(2, 8, 8).unfold(3, 8, 8)
    assert torch.equal(blocks.amin((-2, -1)), blocks.amax((-2, -1)))  # each block all zero or not at all
    assert 0.2 < zero.float().mean() < 0.8


def test_low_resolution_and_noise():
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32).contiguous()
    assert torch.allclose(disrupt(ramp, 0.0, 4, 16, 0.0), ramp, atol=0.15)  # linear data survives, roughly
    checker = (torch.arange(32)[:, None] + torch.arange(32)) % 2 * 1.0
    assert disrupt(checker[None, None], 0.0, 4, 16, 0.0).std() < 0.1 * checker.std()  # fine detail is gone
    noisy = disrupt(torch.zeros(4, 1, 64, 64), 0.1 ** 0.5, 1, 16, 0.0, torch.Generator().manual_seed(0))
    assert abs(noisy.var().item() - 0.1) < 0.01


@pytest.mark.parametrize("architecture", [PLAIN_UNET, UMAMBA_BOT2, MAMBA_UNET],
                         ids=lambda a: a["network_class_name"].rsplit(".", 1)[1])
def test_dae_checkpoint_loads_into_the_segmentation_network(nnunet_folders, tmp_path, architecture):
    """The DAE's network (one output per input channel) saved as nnU-Net saves it loads through nnU-Net's own
    load_pretrained_weights into the segmentation network: everything but the seg_layers heads is copied."""
    dae = _trainer(nnUNetTrainerDAE, nnunet_folders, architecture)
    dae_network = dae.build_network_architecture(dae.plans_manager, dae.configuration_manager, 1, 4, True)
    assert dae_network(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)  # no deep supervision, one channel
    torch.save({"network_weights": dae_network.state_dict()}, tmp_path / "dae.pth")
    segmentation = _trainer(nnUNetTrainerDomainKnowledge, nnunet_folders, architecture)
    network = segmentation.build_network_architecture(segmentation.plans_manager,
                                                      segmentation.configuration_manager, 1, 4, True)
    load_pretrained_weights(network, str(tmp_path / "dae.pth"))
    transferred = {k: v for k, v in dae_network.state_dict().items() if ".seg_layers." not in k}
    assert len(transferred) == len(network.state_dict()) - sum(".seg_layers." in k for k in network.state_dict())
    for key, value in transferred.items():
        assert torch.equal(network.state_dict()[key], value), key


def _dae(base: Path, architecture: dict = PLAIN_UNET, patch_size: tuple[int, int] = (32, 32),
         num_epochs: int = 200) -> nnUNetTrainerDAE:
    """A DAE trainer with the network, optimizer (its schedule over ``num_epochs``) and loss of its ``initialize()``,
    which needs no preprocessed data."""
    dae = _trainer(nnUNetTrainerDAE, base, architecture, patch_size)
    dae.num_epochs = num_epochs
    dae.network = dae.build_network_architecture(dae.plans_manager, dae.configuration_manager, 1, 4, False)
    dae.optimizer, dae.lr_scheduler = dae.configure_optimizers()
    dae.loss = dae._build_loss()
    return dae


def _validate(dae: nnUNetTrainerDAE, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Mean reconstruction L1 and score of the DAE's validation step over ``batches``, with fixed disruptions."""
    dae.network.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        outputs = [dae.validation_step({"data": batch}) for batch in batches]
    dae.network.train()
    return float(np.mean([o["loss"] for o in outputs])), float(np.mean([o["score"] for o in outputs]))


def test_dae_beats_the_disrupted_input_within_a_few_hundred_steps(nnunet_folders):
    """The CPU benchmark's DAE stage (250 steps) ended no better than the disrupted input: at its learning rate then
    (3e-4) the network had not yet learned to copy its input. 400 steps on 32 x 32 synthetic images must do better."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # networks this small run fastest on one thread
    dae = _dae(nnunet_folders)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(np.stack([synthetic_case(rng, (32, 32), (1.0, 1.0))[0] for _ in range(40)]))[:, None]
    images = (images - images.mean((2, 3), keepdim=True)) / images.std((2, 3), keepdim=True)  # nnU-Net's z-score
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        dae.train_step({"data": images[torch.randint(0, 32, (2,), generator=generator)]})
    assert _validate(dae, list(images[32:].split(2)))[1] > 0


def _acdc_slices(acdc_dir: Path, patients: list[str]) -> torch.Tensor:
    """Every slice of the patients' volumes at 128 x 128 (about 3 mm pixels), z-scored one by one as nnU-Net
    normalises 2D cases."""
    slices = []
    for path in sorted(p for patient in patients for p in acdc_dir.glob(f"{patient}_frame*.h5")):
        with h5py.File(path) as volume:
            slices.append(F.interpolate(torch.from_numpy(volume["image"][:])[:, None], size=(128, 128), mode="area"))
    images = torch.cat(slices)
    return (images - images.mean((2, 3), keepdim=True)) / images.std((2, 3), keepdim=True).clamp_min(1e-6)


@pytest.mark.slow
@pytest.mark.acdc
def test_dae_reconstruction_loss_falls_on_acdc(acdc_dir, nnunet_folders):
    """The DAE trainer's own steps (network: a U-Mamba2 of 8 to 128 features; optimizer, learning-rate schedule,
    loss, disruptions, score) on ACDC: random 64 x 64 crops of 12 training patients' slices, 2 per step, validated
    on centre crops of 40 slices of 4 other training patients (splits_heldout.json's train patients only). 1000
    steps, half a minute on one core; prints the numbers (pytest -s)."""
    architecture = {**UMAMBA_BOT2, "arch_kwargs": {
        **UMAMBA_BOT2["arch_kwargs"], "n_stages": 5, "features_per_stage": [8, 16, 32, 64, 128],
        "kernel_sizes": [[3, 3]] * 5, "strides": [[1, 1]] + [[2, 2]] * 4, "n_blocks_per_stage": [1] * 5,
        "n_conv_per_stage_decoder": [1] * 4, "headdim": 16}}
    torch.manual_seed(0)
    torch.set_num_threads(1)
    epochs, steps_per_epoch = 40, 25
    dae = _dae(nnunet_folders, architecture, (64, 64), epochs)
    patients = json.loads((acdc_dir / "splits_heldout.json").read_text())["train"]
    train, validation = _acdc_slices(acdc_dir, patients[:12]), _acdc_slices(acdc_dir, patients[12:16])
    validation_batches = list(validation[:40, :, 32:96, 32:96].split(2))
    generator = torch.Generator().manual_seed(0)
    start, losses = _validate(dae, validation_batches), []
    for epoch in range(epochs):
        dae.lr_scheduler.step(epoch)
        for _ in range(steps_per_epoch):
            index = torch.randint(0, len(train), (2,), generator=generator)
            top, left = torch.randint(16, 48, (2,), generator=generator).tolist()
            losses.append(float(dae.train_step({"data": train[index, :, top:top + 64, left:left + 64]})["loss"]))
    end = _validate(dae, validation_batches)
    first, last = np.mean(losses[:100]), np.mean(losses[-100:])
    print(f"\nACDC DAE, {len(train)} training / {2 * len(validation_batches)} validation slices: training L1 "
          f"{first:.3f} (first 100 steps) -> {last:.3f} (last 100); validation L1 {start[0]:.3f} -> {end[0]:.3f}, "
          f"score {start[1]:.3f} -> {end[1]:.3f}")
    assert last < 0.6 * first and end[0] < 0.4 * start[0] and end[1] > 0.05


# --- consistency and pseudo labels ---------------------------------------------------------------------------------

def test_feature_perturbation_pieces():
    x = torch.rand(2, 6, 8, 8) + 0.5
    generator = torch.Generator().manual_seed(0)
    dropped = perturb_features(x, channel_dropout=0.5, keep=(1.0, 1.0), noise=0.0, generator=generator)
    per_channel = dropped.flatten(2)
    zero_channels = (per_channel == 0).all(-1)
    assert zero_channels.any() and not zero_channels.all()
    kept = ~zero_channels & ~(dropped == 0).flatten(2).any(-1)
    torch.testing.assert_close(per_channel[kept], 2 * x.flatten(2)[kept])  # survivors scaled by 1 / (1 - p)
    drop_top = perturb_features(x, channel_dropout=0.0, keep=(0.9, 0.9), noise=0.0)
    attention = x.mean(1, keepdim=True)
    top = attention >= 0.9 * attention.flatten(1).amax(1).view(2, 1, 1, 1)
    assert torch.equal(drop_top == 0, top.expand_as(x)) and top.any()
    noisy = perturb_features(x, channel_dropout=0.0, keep=(2.0, 2.0), noise=0.3)
    ratio = noisy / x - 1
    assert ratio.abs().max() <= 0.3 + 1e-6 and ratio.abs().max() > 0.2
    torch.testing.assert_close(ratio[0], ratio[1])  # shared by the batch


def test_feature_perturbation_is_seeded_and_channels_last_aware():
    x = torch.rand(2, 5, 6, 7)
    a, b = (perturb_features(x, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)
    last = perturb_features(x.movedim(1, -1), channel_dim=-1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(last.movedim(-1, 1), a)


@pytest.mark.parametrize("architecture", [PLAIN_UNET, UMAMBA_BOT2, MAMBA_UNET],
                         ids=lambda a: a["network_class_name"].rsplit(".", 1)[1])
def test_skip_perturbation_spares_the_highest_resolution_skips(nnunet_folders, architecture):
    trainer = _trainer(nnUNetTrainerDomainKnowledge, nnunet_folders, architecture)
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 4, True)
    network.eval()  # deterministic (MambaUNet's drop path)
    x = torch.randn(2, 1, 32, 32)
    clean = [s.clone() for s in network.encoder(x)]
    with skip_perturbation(network, 1, channel_dropout=0.5):
        perturbed = network.encoder(x)
        network(x)  # the whole network runs with perturbed skips
    assert [torch.equal(c, p) for c, p in zip(clean, perturbed)] == [True] + [False] * (len(clean) - 1)
    assert all(torch.equal(c, p) for c, p in zip(clean, network.encoder(x)))  # the hook is gone afterwards
    with pytest.raises(TypeError, match="has none"):
        with skip_perturbation(nn.Linear(2, 2), 1):
            pass


def test_pseudo_label_stage_continues_from_stage_2_heads_included(nnunet_folders):
    (nnunet_folders / "nnUNetPlans_2d").mkdir()
    (nnunet_folders / "nnUNetPlans_2d" / "case.b2nd").touch()  # nnU-Net infers its dataset class from the files
    trainer = _trainer(nnUNetTrainerPseudoLabel, nnunet_folders)
    with pytest.raises(FileNotFoundError, match="-tr nnUNetTrainerConsistency"):
        trainer.initialize()
    stage_2 = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 4, True)
    checkpoint = trainer.continued_checkpoint()
    assert checkpoint.parent.parent.name == "nnUNetTrainerConsistency__nnUNetPlans__2d"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"network_weights": stage_2.state_dict()}, checkpoint)
    trainer = _trainer(nnUNetTrainerPseudoLabel, nnunet_folders)
    trainer.initialize()
    for key, value in stage_2.state_dict().items():
        assert torch.equal(trainer.network.state_dict()[key], value), key


def test_consistency_and_pseudo_label_pieces():
    assert sigmoid_rampup(0, 100) == pytest.approx(np.exp(-5)) and sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(50, 100) == pytest.approx(np.exp(-1.25)) and sigmoid_rampup(7, 0) == 1.0
    logits = torch.randn(2, 3, 4, 4)
    assert SoftmaxMSE()(logits, logits.softmax(1)) == 0
    assert SoftmaxMSE()(logits, torch.full_like(logits, 1 / 3)) > 0
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.05, 0.05, 0.9]]).T.reshape(1, 3, 3)
    assert pseudo_labels(probabilities, 0.75, 3).tolist() == [[[0, 3, 2]]]


def test_strong_transforms_keep_shape_and_change_intensities():
    image = torch.rand(1, 32, 32)
    out = strong_intensity_transforms([32, 32], False)(image=image.clone())["image"]
    assert out.shape == image.shape and torch.isfinite(out).all()


def test_mixed_batches_hand_out_exactly_the_share():
    labeled, unlabeled = itertools.repeat({"unlabeled": False}), itertools.repeat({"unlabeled": True})
    for share, expected in [(0.25, 25), (0.1, 10), (0.0, 0), (1.0, 100)]:
        batches = MixedBatches(labeled, unlabeled, lambda share=share: share)
        assert sum(next(batches)["unlabeled"] for _ in range(100)) == expected


def test_move_to_unlabeled_and_preprocessing_errors(tmp_path, monkeypatch):
    raw = write_synthetic_dataset(tmp_path / "Dataset997_Moved", dense=True, num_training=4, num_test=0,
                                  shape=(16, 16))
    move_to_unlabeled(raw, ["case_001", "case_003"])
    assert sorted(p.name for p in (raw / "imagesTr_unlabeled").iterdir()) == ["case_001_0000.nii.gz",
                                                                               "case_003_0000.nii.gz"]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == ["case_000.nii.gz", "case_002.nii.gz"]
    assert json.loads((raw / "dataset.json").read_text())["numTraining"] == 2
    with pytest.raises(FileNotFoundError, match="no labelled training case 'case_001'"):
        move_to_unlabeled(raw, ["case_001"])
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    with pytest.raises(FileNotFoundError, match="run nnUNetv2_plan_and_preprocess -d 997"):
        preprocess_unlabeled(997, ["2d"])


# --- small components ----------------------------------------------------------------------------------------------

def test_remove_small_components_removes_exactly_the_small_ones():
    seg = np.zeros((12, 12), dtype=np.uint8)
    seg[0:2, 0:2] = 3  # canal, 4 voxels: kept (the minimum itself)
    seg[5, 5] = seg[6, 6] = seg[7, 7] = 3  # 3 voxels touching diagonally: one component, removed
    seg[10, 0] = 3  # single voxel: removed
    seg[8:12, 8:12] = 1  # kidney_left, not listed: untouched
    seg[0, 11] = 1
    cleaned, removed = remove_small_components(seg, {3: 4})
    expected = seg.copy()
    expected[5, 5] = expected[6, 6] = expected[7, 7] = expected[10, 0] = 0
    assert np.array_equal(cleaned, expected) and removed == {3: 2}
    cleaned_3d, removed_3d = remove_small_components(np.stack([seg, seg]), {1: 3, 3: 7})
    assert removed_3d == {1: 1, 3: 2} and cleaned_3d[:, 0:2, 0:2].all() and cleaned_3d[0, 0, 11] == 0


def test_remove_small_components_command(tmp_path):
    pred, out = tmp_path / "pred", tmp_path / "out"
    pred.mkdir()
    (pred / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    (pred / "plans.json").write_text(json.dumps({"domain_knowledge": {"min_component_size": {"3": 2}}}))
    seg = np.zeros((1, 8, 8), dtype=np.uint8)
    seg[0, 1, 1] = 3
    seg[0, 4:6, 4:6] = 3
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(pred / "case.nii.gz"))
    assert cli(["remove-small-components", "-i", str(pred), "-o", str(out)]) == 0
    cleaned = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz")))
    assert cleaned[0, 1, 1] == 0 and cleaned[0, 4:6, 4:6].all() and (out / "dataset.json").is_file()
    knowledge = tmp_path / "domain_knowledge.json"
    knowledge.write_text(json.dumps({"min_component_size": {"canal": 5}}))
    assert cli(["remove-small-components", "-i", str(pred), "-o", str(out), "-k", str(knowledge)]) == 0
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz"))).any()
    (pred / "plans.json").write_text(json.dumps({}))
    assert cli(["remove-small-components", "-i", str(pred), "-o", str(out)]) == 2
