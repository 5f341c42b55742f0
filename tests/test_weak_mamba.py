"""nnUNetTrainerWeakMamba: loss pieces with known answers, deep-supervision matching, the ensemble output, the
network built from plans, dense-label validation, one optimizer per network, checkpoint round trip and DDP on a
2-process gloo group (CPU)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from helpers.scribble_nnunet import load_plans, scribble_environment

from nnunetv2_mamba.data.scribble_dataset import ScribbleDatasetError
from nnunetv2_mamba.nets.network_ensemble import NetworkEnsemble, ensemble_log_probabilities
from nnunetv2_mamba.training.loss.cross_supervision_loss import (CrossSupervisionLoss, PartialCrossEntropy,
                                                            deep_supervision_weights, keep_largest_components,
                                                            keep_scribbled_components, match_targets,
                                                            near_class_boundary, pseudo_label, resize_labels,
                                                            with_scribbles)
from nnunetv2_mamba.training.dense_validation import DENSE_FOLDER, DenseValidationMixin
from nnunetv2_mamba.training.member_optimizers import nnunet_optimizer
from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import (MEMBER_ENVIRONMENT_VARIABLE, foreground_counts,
                                                            nnUNetTrainerWeakMamba)
from nnunetv2_mamba.training.nnUNetTrainerWeakMambaPaper import nnUNetTrainerWeakMambaPaper
from nnunetv2_mamba.training.variants.scribble import (nnUNetTrainerScribbleBaseline_smoke,
                                                        nnUNetTrainerWeakMamba_smoke,
                                                        nnUNetTrainerWeakMambaPaper_smoke)

IGNORE = 3  # three classes 0, 1, 2 in the crafted examples


# ---------------------------------------------------------------------------------------------------- loss pieces

def test_partial_cross_entropy_counts_scribbled_pixels_only():
    logits = torch.tensor([[[[2.0, -1.0, 0.5, 3.0]], [[0.0, 4.0, 1.0, -2.0]], [[1.0, 0.0, 2.5, 0.0]]]],
                          requires_grad=True)  # (1, 3, 1, 4)
    target = torch.tensor([[[[0, IGNORE, 2, IGNORE]]]])
    loss = PartialCrossEntropy(ignore_index=IGNORE)(logits, target)
    expected = np.mean([-(2.0 - math.log(math.exp(2) + 1 + math.e)),
                        -(2.5 - math.log(math.exp(0.5) + math.e + math.exp(2.5)))])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[..., [1, 3]] == 0) and torch.all(logits.grad[..., [0, 2]].abs().sum(1) > 0)


def test_partial_cross_entropy_without_scribbles_is_zero_and_keeps_the_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = PartialCrossEntropy(ignore_index=IGNORE)(logits, torch.full((1, 1, 2, 2), IGNORE))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None and torch.all(logits.grad == 0)


# three networks' probabilities at one pixel: each alone votes 0, 2, 2; mixed half-half from the first two, class 1
PROBABILITIES = [torch.tensor([0.6, 0.4, 0.0]), torch.tensor([0.0, 0.45, 0.55]), torch.tensor([0.3, 0.3, 0.4])]


def _pixel(p: torch.Tensor) -> torch.Tensor:
    return p.view(1, 3, 1, 1)


@pytest.mark.parametrize("weights, label", [((1.0, 0.0, 0.0), 0), ((0.0, 1.0, 0.0), 2), ((0.5, 0.5, 0.0), 1),
                                            ((0.1, 0.1, 0.8), 2)])
def test_pseudo_label_is_the_argmax_of_the_weighted_mix(weights, label):
    result = pseudo_label([_pixel(p) for p in PROBABILITIES], torch.tensor(weights))
    assert result.shape == (1, 1, 1, 1) and result.item() == label


def _dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice=False, do_bg=True, smooth=1e-5,
                                       ddp=False)(logits, labels)


def test_loss_uses_the_drawn_weights_and_no_gradient_flows_through_the_pseudo_label():
    # 2 x 2 pixels; pixel (0, 0) is the crafted one, the others agree on class 0
    logits = {}
    for name, p in zip("abc", PROBABILITIES):
        probabilities = torch.tensor([0.8, 0.1, 0.1]).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
        probabilities[0, :, 0, 0] = p + 1e-6
        logits[name] = probabilities.log().requires_grad_(True)
    loss = CrossSupervisionLoss(IGNORE, pce_weight=0.0, pseudo_label_weight=1.0)
    loss.draw_weights = lambda n, device: torch.tensor([0.5, 0.5, 0.0])
    expected_label = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    expected_label[0, 0, 0, 0] = 1
    losses = loss(logits, torch.full((1, 1, 2, 2), IGNORE))
    assert torch.equal(loss.last_weights, torch.tensor([0.5, 0.5, 0.0]))
    for name, x in logits.items():
        assert losses[name].item() == pytest.approx(_dice(x, expected_label).item(), rel=1e-6)
    # the gradient of the total w.r.t. network a is that of a's own term with the pseudo label as a constant
    gradient, = torch.autograd.grad(sum(losses.values()), logits["a"])
    expected, = torch.autograd.grad(_dice(logits["a"], expected_label), logits["a"])
    assert torch.allclose(gradient, expected, atol=1e-7)
    # other weights, other pseudo label (all 0), other loss
    loss.draw_weights = lambda n, device: torch.tensor([1.0, 0.0, 0.0])
    other = loss({k: v.detach() for k, v in logits.items()}, torch.full((1, 1, 2, 2), IGNORE))
    assert other["a"].item() == pytest.approx(_dice(logits["a"], torch.zeros(1, 1, 2, 2)).item(), rel=1e-6)
    assert other["a"].item() != pytest.approx(losses["a"].item())


def test_largest_components_keep_one_blob_per_class_and_sample():
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    labels[0, 0, :3, :3] = 1  # 9 pixels: kept
    labels[0, 0, 6:, 6:] = 1  # 4 pixels of the same class: removed
    labels[0, 0, 0, 7] = 2  # the only blob of class 2: kept, however small
    labels[1, 0, 5:, :2] = 1  # sample 1: its own largest blob of class 1 (6 pixels) kept, the 2-pixel one removed
    labels[1, 0, 0, 4:6] = 1
    expected = labels.clone()
    expected[0, 0, 6:, 6:] = 0
    expected[1, 0, 0, 4:6] = 0
    assert torch.equal(keep_largest_components(labels, 3), expected)
    assert torch.equal(labels[0, 0, 6:, 6:], torch.ones(2, 2, dtype=torch.long))  # the input is left as it was


@pytest.mark.parametrize("shape", [(3, 1, 40, 36), (2, 1, 6, 12, 10)])
def test_largest_components_match_nnunet_postprocessing(shape):
    """Noisy labels, as an untrained network's (tens of components per class; in 2D, 4 of the 9 (sample, class)
    pairs have several tied for the largest size), give exactly nnU-Net's
    ``remove_all_but_largest_component_from_segmentation``, class by class (3D: 26-connectivity)."""
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(shape, generator=generator) < 0.18) * torch.randint(1, 4, shape, generator=generator)
    expected = labels.numpy().copy()
    for sample in expected:
        for label in range(1, 4):
            sample[0] = remove_all_but_largest_component_from_segmentation(sample[0], label)
    cleaned = keep_largest_components(labels, 4)
    assert torch.equal(cleaned, torch.from_numpy(expected))
    assert not torch.equal(cleaned, labels)


def test_scribbled_components_keep_the_blobs_that_hold_a_scribble_of_their_class():
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    labels[0, 0, :3, :3] = 1  # 9 pixels, no scribble of class 1 in it: removed although the largest
    labels[0, 0, 6:, 6:] = 1  # 4 pixels holding a class-1 scribble: kept
    labels[0, 0, 0, 5:7] = 2  # holds a scribble of class 1, not of class 2: removed
    labels[1, 0, 4:, 4:] = 1  # sample 1: no scribble at all, everything removed
    scribbles = torch.full_like(labels, IGNORE)
    scribbles[0, 0, 7, 7] = 1
    scribbles[0, 0, 0, 5] = 1
    scribbles[0, 0, 1, 1] = 0  # a background scribble inside the class-1 blob does not seed it
    scribbles = scribbles.float()  # nnU-Net's targets are float tensors
    expected = torch.zeros_like(labels)
    expected[0, 0, 6:, 6:] = 1
    assert torch.equal(keep_scribbled_components(labels, scribbles, 3), expected)
    assert int(labels.sum()) == 9 + 4 + 4 + 16  # the input is left as it was
    with pytest.raises(ValueError, match=r"pseudo labels \(2, 1, 8, 8\) and scribbles \(2, 1, 4, 4\)"):
        keep_scribbled_components(labels, scribbles[..., :4, :4], 3)


@pytest.mark.parametrize("components", [None, "largest", "scribbled"])
def test_loss_supervises_with_the_cleaned_pseudo_label_when_asked(components):
    logits = torch.full((1, 3, 6, 6), -5.0)
    logits[:, 0] = 5.0
    logits[0, 1, :3, :3] = 10.0  # class 1: a 9-pixel blob ...
    logits[0, 1, 5, 4:] = 10.0  # ... and a 2-pixel one, which alone holds a class-1 scribble
    scribbles = torch.full((1, 1, 6, 6), float(IGNORE))
    scribbles[0, 0, 5, 5] = 1
    label = logits.argmax(1, keepdim=True)
    if components == "largest":
        label[0, 0, 5, 4:] = 0
    elif components == "scribbled":
        label[0, 0, :3, :3] = 0
    outputs = {"a": logits.clone().requires_grad_(True), "b": logits.clone()}
    loss = CrossSupervisionLoss(IGNORE, pce_weight=0.0, components=components)
    losses = loss(outputs, scribbles)
    assert losses["a"].item() == pytest.approx(_dice(outputs["a"], label).item(), rel=1e-6)
    others = [_dice(outputs["a"], other).item() for other in (logits.argmax(1, keepdim=True), label)]
    assert components is None or others[0] != pytest.approx(others[1])  # the cleaning changes the loss


def test_dice_ce_adds_nnunets_cross_entropy_against_the_pseudo_label():
    """Network b alone makes the pseudo label (a scribbled class-1 blob); network a also puts class 1 on one pixel far
    from it, which the pseudo label calls background. "dice_ce" adds the cross-entropy over all pixels to the Dice,
    and pulls that pixel harder towards background than the Dice alone does."""
    b = torch.full((1, 3, 16, 16), -5.0)
    b[:, 0] = 5.0
    b[0, 1, :4, :4] = 10.0
    a = b.clone()
    a[0, 1, 12, 12] = 10.0
    scribbles = torch.full((1, 1, 16, 16), float(IGNORE))
    scribbles[0, 0, 1, 1] = 1
    label = b.argmax(1, keepdim=True)
    gradients = {}
    for option in ("dice", "dice_ce"):
        loss = CrossSupervisionLoss(IGNORE, pce_weight=0.0, components="scribbled", pseudo_label_loss=option)
        loss.draw_weights = lambda n, device: torch.tensor([0.0, 1.0])
        logits = a.clone().requires_grad_(True)
        value = loss({"a": logits, "b": b}, scribbles)["a"]
        expected = _dice(logits, label) + (F.cross_entropy(logits, label[:, 0]) if option == "dice_ce" else 0)
        assert value.item() == pytest.approx(expected.item(), rel=1e-6)
        gradients[option] = torch.autograd.grad(value, logits)[0][0, :, 12, 12]
    assert gradients["dice_ce"][1] > 0 and gradients["dice_ce"][0] < 0  # descent lowers class 1, raises background
    assert gradients["dice_ce"][1] > 5 * gradients["dice"][1]


@pytest.mark.parametrize("margin", [1, 2])
@pytest.mark.parametrize("ndim", [2, 3])
def test_near_class_boundary_marks_the_pixels_with_another_class_within_the_margin(margin, ndim):
    rng = np.random.default_rng(margin + ndim)
    labels = rng.integers(0, 2, (2, 1) + (7,) * ndim)
    labels[0, 0, 2:5, 2:5] = 2
    expected = np.zeros(labels.shape, bool)
    for index in np.ndindex(labels.shape):  # brute force: the classes in the (2 margin + 1)-wide neighbourhood
        window = tuple(slice(max(i - margin, 0), i + margin + 1) for i in index[2:])
        expected[index] = len(np.unique(labels[index[:2]][window])) > 1
    assert torch.equal(near_class_boundary(torch.from_numpy(labels), 3, margin), torch.from_numpy(expected))


@pytest.mark.parametrize("option", ["dice", "dice_ce"])
def test_margin_leaves_the_pixels_near_class_boundaries_unsupervised(option):
    """Network b makes the pseudo label (a class-1 square); with margin 1, network a's loss is nnU-Net's Dice (+ CE)
    masked to the pixels farther than one pixel from the square's edge, and gets no gradient within it."""
    b = torch.full((1, 3, 12, 12), -5.0)
    b[:, 0] = 5.0
    b[0, 1, 3:8, 3:8] = 10.0
    a = torch.randn(1, 3, 12, 12)
    label = b.argmax(1, keepdim=True)
    band = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    band[..., 2:9, 2:9] = True
    band[..., 4:7, 4:7] = False
    scribbles = torch.full((1, 1, 12, 12), float(IGNORE))
    loss = CrossSupervisionLoss(IGNORE, pce_weight=0.0, pseudo_label_loss=option, margin=1)
    loss.draw_weights = lambda n, device: torch.tensor([0.0, 1.0])
    logits = a.clone().requires_grad_(True)
    value = loss({"a": logits, "b": b}, scribbles)["a"]
    dice = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice=False, do_bg=True, smooth=1e-5)
    expected = dice(a, label, loss_mask=~band)
    if option == "dice_ce":
        expected = expected + F.cross_entropy(a, label[:, 0].masked_fill(band[:, 0], -100))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    gradient = torch.autograd.grad(value, logits)[0].abs().sum(1, keepdim=True)
    assert gradient[band].max() == 0 and gradient[~band].min() > 0
    with pytest.raises(ValueError, match="pseudo-label margin -1"):
        CrossSupervisionLoss(IGNORE, margin=-1)


def test_with_scribbles_sets_the_scribbled_pixels_only():
    labels = torch.tensor([[[[0, 1, 1], [2, 2, 0]]]])
    scribbles = torch.tensor([[[[IGNORE, 0, IGNORE], [1, IGNORE, 2]]]]).float()  # nnU-Net's targets are floats
    expected = torch.tensor([[[[0, 0, 1], [1, 2, 2]]]])
    result = with_scribbles(labels, scribbles, IGNORE)
    assert torch.equal(result, expected) and result.dtype == labels.dtype


@pytest.mark.parametrize("keep_scribbles", [False, True])
def test_kept_scribbles_seed_the_pseudo_label_before_the_component_rule(keep_scribbles):
    """Network b alone makes the pseudo label: a class-1 blob next to (not on) the class-1 scribble, nothing of class
    2 where class 2 is scribbled, class 1 on a background scribble. Without the scribbles the component rule clears
    it all; with them the blob joins its scribble and is kept, class 2 keeps its scribble and the background
    scribble stays background."""
    b = torch.full((1, 3, 8, 8), -5.0)
    b[:, 0] = 5.0
    b[0, 1, 1:4, 1:4] = 10.0
    scribbles = torch.full((1, 1, 8, 8), float(IGNORE))
    scribbles[0, 0, 4, 4] = 1  # diagonal neighbour of the blob: one component with full connectivity
    scribbles[0, 0, 6, 1:3] = 2
    scribbles[0, 0, 2, 2] = 0
    expected = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    if keep_scribbles:
        expected[0, 0, 1:4, 1:4] = 1
        expected[0, 0, 4, 4] = 1
        expected[0, 0, 6, 1:3] = 2
        expected[0, 0, 2, 2] = 0
    loss = CrossSupervisionLoss(IGNORE, pce_weight=0.0, components="scribbled", keep_scribbles=keep_scribbles)
    loss.draw_weights = lambda n, device: torch.tensor([0.0, 1.0])
    a = torch.randn(1, 3, 8, 8)
    assert loss({"a": a, "b": b}, scribbles)["a"].item() == pytest.approx(_dice(a, expected).item(), rel=1e-6)


def test_unknown_pseudo_label_options_are_refused():
    with pytest.raises(ValueError, match="pseudo-label components 'largest_component'"):
        CrossSupervisionLoss(IGNORE, components="largest_component")
    with pytest.raises(ValueError, match=r"pseudo-label loss 'ce': expected one of \('dice', 'dice_ce'\)"):
        CrossSupervisionLoss(IGNORE, pseudo_label_loss="ce")


def test_pseudo_label_weights_are_dirichlet_1():
    torch.manual_seed(0)
    loss = CrossSupervisionLoss(IGNORE)
    draws = torch.stack([loss.draw_weights(3, torch.device("cpu")) for _ in range(4000)])
    assert torch.allclose(draws.sum(1), torch.ones(4000)) and bool((draws > 0).all())
    assert torch.allclose(draws.mean(0), torch.full((3,), 1 / 3), atol=0.02)
    assert draws[:, 0].var().item() == pytest.approx(1 / 18, abs=0.005)  # Dirichlet(1, 1, 1) marginal: Beta(1, 2)


def test_deep_supervision_weights_are_nnunets():
    for n in (1, 3, 5):
        weights = np.array([1 / (2 ** i) for i in range(n)])
        weights[-1] = 0 if n > 1 else 1
        assert deep_supervision_weights(n) == pytest.approx(list(weights / weights.sum()))


def test_targets_are_matched_by_scale_and_missing_scales_downsampled_like_nnunet():
    seg = torch.randint(0, 4, (2, 1, 64, 64))
    targets = [seg] + [resize_labels(seg, (64 // s, 64 // s)) for s in (2, 4, 8)]
    outputs = [torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 21, 21)]
    matched = match_targets(outputs, targets)
    assert matched[0] is targets[0] and matched[1] is targets[2]
    reference = torch.stack([DownsampleSegForDSTransform([[21 / 64, 21 / 64]])(segmentation=s)["segmentation"][0]
                             for s in seg])
    assert torch.equal(matched[2], reference)
    assert torch.equal(targets[1], torch.stack([DownsampleSegForDSTransform([[1, 1], [0.5, 0.5]])(
        segmentation=s)["segmentation"][1] for s in seg]))


def test_loss_of_a_deep_supervised_network_sums_its_scales_with_nnunet_weights():
    torch.manual_seed(3)
    scribbles = torch.randint(0, IGNORE + 1, (2, 1, 32, 32))
    targets = [scribbles, resize_labels(scribbles, (16, 16)), resize_labels(scribbles, (8, 8))]  # CNN scales
    outputs = {"cnn": [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)],
               "vit": [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]}
    loss = CrossSupervisionLoss(IGNORE, pce_weight=0.7, pseudo_label_weight=1.3)
    loss.pseudo_label_scale = 0.5
    losses = loss(outputs, targets)
    label = pseudo_label([outputs[n][0].softmax(1) for n in outputs], loss.last_weights)
    pce = PartialCrossEntropy(ignore_index=IGNORE)
    for name, scales in outputs.items():
        expected = sum(w * (0.7 * pce(x, resize_labels(scribbles, x.shape[2:])) +
                            1.3 * 0.5 * _dice(x, resize_labels(label, x.shape[2:])))
                       for w, x in zip(deep_supervision_weights(3), scales))
        assert losses[name].item() == pytest.approx(expected.item(), rel=1e-5)


def test_foreground_counts_skip_background_and_ignored_pixels():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, [0, 1, 2, 1], 0, [0, 1, 2, 3]] = 5  # predicts 0, 1, 2, 1
    tp, fp, fn = foreground_counts(logits, torch.tensor([[[[0, 2, 2, IGNORE]]]]), IGNORE)
    assert list(tp) == [0, 1] and list(fp) == [1, 0] and list(fn) == [0, 1]


# ------------------------------------------------------------------------------------------------------ ensemble

class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.deep_supervision = True

    def forward(self, x):
        y = self.conv(x)
        return [y, y[..., ::2, ::2]] if self.deep_supervision else y


def test_ensemble_output_is_the_log_of_the_mean_softmax():
    ensemble = NetworkEnsemble({"cnn": _TinyNet(), "vit": _TinyNet(), "mamba": _TinyNet()}).eval()
    x = torch.randn(2, 1, 8, 8)
    logits = [m(x)[0].double() for m in ensemble.members.values()]
    mean_probabilities = torch.stack([F.softmax(y, 1) for y in logits]).mean(0)
    output = ensemble(x)
    assert torch.allclose(output.double(), mean_probabilities.log(), atol=1e-6)
    assert torch.allclose(output.softmax(1).double(), mean_probabilities, atol=1e-6)
    assert torch.allclose(ensemble_log_probabilities(logits).double(), mean_probabilities.log(), atol=1e-6)
    ensemble.inference_output = "vit"
    assert torch.equal(ensemble(x), ensemble.members["vit"](x)[0])
    assert isinstance(ensemble.train()(x), dict) and set(ensemble(x)) == {"cnn", "vit", "mamba"}
    with pytest.raises(ValueError, match="not one of"):
        ensemble.inference_output = "unet"


def test_ensemble_switches_deep_supervision_of_every_member():
    ensemble = NetworkEnsemble({"a": _TinyNet(), "b": _TinyNet()})
    ensemble.deep_supervision = False
    assert not any(m.deep_supervision for m in ensemble.members.values()) and not ensemble.deep_supervision
    assert all(isinstance(y, torch.Tensor) for y in ensemble(torch.randn(1, 1, 4, 4)).values())


# ---------------------------------------------------------------------------------------- trainer on nnU-Net data

@pytest.fixture(scope="module")
def scribble_env(tmp_path_factory) -> dict[str, str]:
    return scribble_environment(tmp_path_factory, "weak_mamba_results")


@pytest.fixture
def nnunet_paths(scribble_env, monkeypatch) -> dict[str, str]:
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, scribble_env[key])
    return scribble_env


def make_trainer(cls: type[nnUNetTrainer], env: dict[str, str]) -> nnUNetTrainer:
    plans, dataset_json = load_plans(env)
    return cls(plans, "2d", 0, dataset_json, torch.device("cpu"))


def scribble_batch(trainer: nnUNetTrainer, seed: int, batch_size: int = 2) -> dict:
    """Random images and scribbles (a tenth of the pixels labeled) with nnU-Net's deep-supervision targets."""
    generator = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(batch_size, 1, *patch, generator=generator)
    seg = torch.randint(0, 4, (batch_size, 1, *patch), generator=generator)
    seg[torch.rand(seg.shape, generator=generator) > 0.1] = trainer.label_manager.ignore_label
    downsample = DownsampleSegForDSTransform(trainer._get_deep_supervision_scales())
    per_sample = [downsample(segmentation=s)["segmentation"] for s in seg]
    return {"data": data, "target": [torch.stack(scales) for scales in zip(*per_sample)]}


def test_network_from_plans_holds_the_three_networks_and_the_member_choice(nnunet_paths, monkeypatch):
    plans, dataset_json = load_plans(nnunet_paths)
    manager = PlansManager(plans)
    build = nnUNetTrainerWeakMamba_smoke.build_network_architecture
    network = build(manager, manager.get_configuration("2d"), 1, 4, True)
    assert list(network.members) == ["cnn", "vit", "mamba"] and network.inference_output == "ensemble"
    assert [type(m).__name__ for m in network.members.values()] == ["PlainConvUNet", "SwinUNet", "MambaUNet"]
    outputs = network(torch.randn(2, 1, 64, 64))
    assert [tuple(o.shape[2:]) for o in outputs["vit"]] == [(64, 64), (16, 16), (8, 8)]
    monkeypatch.setenv(MEMBER_ENVIRONMENT_VARIABLE, "mamba")
    assert build(manager, manager.get_configuration("2d"), 1, 4, False).inference_output == "mamba"
    monkeypatch.setenv(MEMBER_ENVIRONMENT_VARIABLE, "unet")
    with pytest.raises(ValueError, match=MEMBER_ENVIRONMENT_VARIABLE):
        build(manager, manager.get_configuration("2d"), 1, 4, False)


def test_three_dimensional_trio_trains_a_step():
    """Our 3D extension: the plans' CNN, SegMamba and UMambaBot2 from a small 3D configuration."""
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    configuration = {"patch_size": [16, 16, 16], "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3, "strides": strides, "n_conv_per_stage": [1, 1, 1],
                        "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    manager = PlansManager({"plans_name": "tiny3d", "configurations": {"3d_fullres": configuration}})
    network = nnUNetTrainerWeakMamba_smoke.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 3, True)
    assert [type(m).__name__ for m in network.members.values()] == ["PlainConvUNet", "SegMamba", "UMambaBot2"]
    scribbles = torch.randint(0, IGNORE + 1, (1, 1, 16, 16, 16))
    losses = CrossSupervisionLoss(IGNORE)(network(torch.randn(1, 1, 16, 16, 16)),
                                          [scribbles, resize_labels(scribbles, (8, 8, 8))])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_scribble_trainers_refuse_dense_datasets(nnunet_paths):
    plans, dataset_json = load_plans(nnunet_paths)
    dense = {**dataset_json, "labels": {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}}
    for cls in (nnUNetTrainerWeakMamba_smoke, nnUNetTrainerScribbleBaseline_smoke):
        with pytest.raises(ScribbleDatasetError, match="ignore"):
            cls(plans, "2d", 0, dense, torch.device("cpu"))


METHOD_OPTIONS = ("members", "pce_weight", "pseudo_label_weight", "pseudo_label_rampup", "pseudo_label_components",
                  "pseudo_label_loss", "pseudo_label_margin", "pseudo_label_keeps_scribbles", "member_optimizers")


def test_the_default_is_the_measured_recipe_and_the_paper_variant_the_papers():
    default = {k: getattr(nnUNetTrainerWeakMamba, k) for k in METHOD_OPTIONS}
    paper = {k: getattr(nnUNetTrainerWeakMambaPaper, k) for k in METHOD_OPTIONS}
    changed = {k: (default[k], paper[k]) for k in METHOD_OPTIONS if default[k] != paper[k]}
    assert changed == {"pseudo_label_rampup": (0.5, 0.0), "pseudo_label_components": ("scribbled", None),
                       "pseudo_label_loss": ("dice_ce", "dice"), "pseudo_label_margin": (1, 0),
                       "member_optimizers": ({"vit": ("adamw", 1e-3), "mamba": ("adamw", 1e-3)}, {})}
    assert paper["pce_weight"] == paper["pseudo_label_weight"] == 1.0


def test_schedule_variants_set_no_method_option():
    from nnunetv2_mamba.training.variants import scribble as scribble_schedules

    variants = [v for v in vars(scribble_schedules).values()
                if isinstance(v, type) and issubclass(v, nnUNetTrainerWeakMamba) and "_" in v.__name__]
    assert {v.__name__.rsplit("_", 1)[1] for v in variants} == {"smoke", "demo", "cpu", "paper"}
    assert len(variants) == 8  # four schedules of both configurations
    for variant in variants:
        configuration = nnUNetTrainerWeakMambaPaper if issubclass(variant, nnUNetTrainerWeakMambaPaper) \
            else nnUNetTrainerWeakMamba
        assert variant.__name__.startswith(configuration.__name__ + "_")
        assert [k for k in METHOD_OPTIONS if any(k in vars(c) for c in variant.__mro__[:variant.__mro__.index(
            configuration)])] == [], variant.__name__


def test_label_values_outside_the_classes_stop_training_at_its_start_naming_the_case(nnunet_paths):
    trainer = make_trainer(nnUNetTrainerScribbleBaseline_smoke, nnunet_paths)
    trainer.check_scribble_values()  # the synthetic scribbles are valid
    tr_keys, _ = trainer.do_split()
    stock = trainer.dataset_class or type(trainer.get_tr_and_val_datasets()[0])

    class WithAStrayValue(stock):
        def load_case(self, identifier):
            data, seg, previous, properties = super().load_case(identifier)
            if identifier == tr_keys[1]:
                seg = np.array(seg[:])
                seg[0, 0, 0] = 7
            return data, seg, previous, properties

    trainer.dataset_class = WithAStrayValue
    with pytest.raises(ValueError, match=rf"1 training case\(s\) .* 0..3 and the ignore label 4 .*: {tr_keys[1]} \[7\]"
                       r".*check-scribbles"):
        trainer.check_scribble_values()


def test_online_validation_reads_dense_labels_aligned_with_the_images(nnunet_paths):
    trainer = make_trainer(nnUNetTrainerScribbleBaseline_smoke, nnunet_paths)
    dataset_tr, dataset_val = trainer.get_tr_and_val_datasets()
    assert dataset_val.source_folder.endswith(DENSE_FOLDER)
    stock = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(dataset_val.identifiers))
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    for key in dataset_val.identifiers:
        data, seg, _, _ = dataset_val.load_case(key)
        stock_data, stock_seg, _, _ = stock.load_case(key)
        dense, _ = SimpleITKIO().read_seg(f"{nnunet_paths['nnUNet_raw']}/{trainer.plans_manager.dataset_name}/"
                                          f"labelsTr_dense/{key}.nii.gz")
        assert np.array_equal(data[:], stock_data[:])  # same preprocessing: the images align
        assert np.array_equal(seg[:], dense) and (stock_seg[:] == trainer.label_manager.ignore_label).any()


def test_without_dense_labels_validation_stays_nnunets_and_says_so(nnunet_paths, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))  # a raw folder without the dataset
    trainer = make_trainer(nnUNetTrainerScribbleBaseline_smoke, nnunet_paths)
    reference, reason = trainer.dense_reference()
    assert reference is None and "does not exist" in reason
    _, dataset_val = trainer.get_tr_and_val_datasets()
    assert dataset_val.source_folder == trainer.preprocessed_dataset_folder


def test_final_validation_predicts_with_each_network_then_the_ensemble(nnunet_paths, monkeypatch):
    """The orchestration, with nnU-Net's prediction replaced by a record of what the network would output."""
    trainer = make_trainer(nnUNetTrainerWeakMamba_smoke, nnunet_paths)
    trainer.validate_networks_separately = True
    trainer.network = NetworkEnsemble({name: _TinyNet() for name in ("cnn", "vit", "mamba")}, "vit")

    def validate(self, save_probabilities=False):
        output = self.network.inference_output
        folder = Path(self.output_folder) / "validation"
        folder.mkdir()
        (folder / "output.txt").write_text(f"{output} {save_probabilities}")
        return {"foreground_mean": {"Dice": len(output)}}

    monkeypatch.setattr(DenseValidationMixin, "perform_actual_validation", validate)
    assert trainer.perform_actual_validation(True) == {"foreground_mean": {"Dice": len("ensemble")}}
    fold = Path(trainer.output_folder)
    for name in ("cnn", "vit", "mamba"):  # --npz: every network's probabilities, for ensemble-weights
        assert (fold / f"validation_{name}" / "output.txt").read_text() == f"{name} True"
    assert (fold / "validation" / "output.txt").read_text() == "ensemble True"
    assert trainer.network.inference_output == "vit"  # the choice from the environment is restored


class WeakMambaAdamW(nnUNetTrainerWeakMamba_smoke):
    """The token networks with nnU-Net's AdamW, the CNN with its SGD."""

    member_optimizers = {"vit": ("adamw", 1e-3), "mamba": ("adamw", 2e-3)}


def optimizer_tensors(state: object) -> list[torch.Tensor]:
    """Every tensor of a (nested) optimizer state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in optimizer_tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in optimizer_tensors(item)]
    return []


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerWeakMambaPaper_smoke, WeakMambaAdamW])
def test_checkpoint_round_trip_resumes_exactly(nnunet_paths, tmp_path, trainer_class):
    trainer = make_trainer(trainer_class, nnunet_paths)
    trainer.initialize()
    trainer.lr_scheduler.step(1)
    assert trainer.optimizer.param_groups[0]["lr"] < trainer.initial_lr
    torch.manual_seed(1)
    trainer.train_step(scribble_batch(trainer, seed=1))
    path = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(path))
    assert {k.split(".")[1] for k in torch.load(path, weights_only=False)["network_weights"]} == \
        {"cnn", "vit", "mamba"}

    resumed = make_trainer(trainer_class, nnunet_paths)
    resumed.load_checkpoint(str(path))
    for (name, a), b in zip(trainer.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name
    saved, loaded = (optimizer_tensors(t.optimizer.state_dict()) for t in (trainer, resumed))
    assert len(saved) >= len(list(trainer.network.parameters()))  # a momentum or moment per parameter at least
    assert len(saved) == len(loaded) and all(torch.equal(a, b) for a, b in zip(saved, loaded))
    batch = scribble_batch(trainer, seed=2)
    for t in (trainer, resumed):
        torch.manual_seed(2)
        t.train_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(trainer.network.parameters(), resumed.network.parameters()))


def test_member_optimizers_give_each_network_its_own_optimizer_and_poly_schedule(nnunet_paths):
    trainer = make_trainer(WeakMambaAdamW, nnunet_paths)
    trainer.initialize()
    optimizers = trainer.optimizer.optimizers
    assert {name: type(o).__name__ for name, o in optimizers.items()} == {"cnn": "SGD", "vit": "AdamW",
                                                                          "mamba": "AdamW"}
    assert optimizers["cnn"].defaults["momentum"] == 0.99 and optimizers["vit"].defaults["amsgrad"]
    for name, member in trainer.network.members.items():
        held = [p for group in optimizers[name].param_groups for p in group["params"]]
        assert [id(p) for p in held] == [id(p) for p in member.parameters()], name
    trainer.lr_scheduler.step(1)  # nnU-Net's poly schedule: initial * (1 - epoch / epochs) ** 0.9, over 2 epochs
    assert [optimizers[n].param_groups[0]["lr"] for n in ("cnn", "vit", "mamba")] == \
        pytest.approx([r * 0.5 ** 0.9 for r in (trainer.initial_lr, 1e-3, 2e-3)])
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in trainer.network.members.items()}
    trainer.train_step(scribble_batch(trainer, seed=3))
    for name, member in trainer.network.members.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], member.parameters())), name
    assert set(optimizers["vit"].state[next(trainer.network.members["vit"].parameters())]) >= \
        {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


def test_gradient_scaling_unscales_and_steps_every_optimizer_of_the_group(nnunet_paths):
    """The AMP path (nnU-Net's on CUDA), here with a CPU GradScaler: the same step as without scaling."""
    scaled, plain = (make_trainer(WeakMambaAdamW, nnunet_paths) for _ in range(2))
    for t in (scaled, plain):
        t.initialize()
    plain.network.load_state_dict(scaled.network.state_dict())
    scaled.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    batch = scribble_batch(scaled, seed=4)
    for t in (scaled, plain):
        torch.manual_seed(4)
        t.train_step(batch)
    for (name, a), b in zip(scaled.network.named_parameters(), plain.network.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert all(scaled.optimizer.optimizers[name].state for name in ("cnn", "vit", "mamba"))


def test_member_optimizers_refuse_unknown_networks_optimizers_and_checkpoints(nnunet_paths, tmp_path):
    class Unknown(nnUNetTrainerWeakMamba_smoke):
        member_optimizers = {"transformer": ("adamw", 1e-3)}

    with pytest.raises(ValueError, match="'transformer'.*not among its networks"):
        make_trainer(Unknown, nnunet_paths).initialize()
    with pytest.raises(ValueError, match="'adam'"):
        nnunet_optimizer("adam", [nn.Parameter(torch.zeros(1))], 1e-3, 0.0)
    single = make_trainer(nnUNetTrainerWeakMambaPaper_smoke, nnunet_paths)
    single.initialize()
    single.save_checkpoint(str(tmp_path / "sgd.pth"))
    with pytest.raises(ValueError, match="one optimizer for all networks.*cannot resume"):
        make_trainer(WeakMambaAdamW, nnunet_paths).load_checkpoint(str(tmp_path / "sgd.pth"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, env: dict[str, str], result_file: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        trainer = make_trainer(nnUNetTrainerWeakMamba_smoke, env)  # the default configuration
        trainer.initialize()
        assert trainer.is_ddp and trainer.device.type == "cpu" and trainer.batch_size == 1
        assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert set(trainer.optimizer.optimizers) == {"cnn", "vit", "mamba"}  # one optimizer per network
        initial = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        trainer.on_train_epoch_start()  # sets the ramped-up pseudo-label weight and logs each network's rate
        for step in range(2):  # a second step would fail if DDP missed a parameter in the first
            trainer.train_step(scribble_batch(trainer, seed=10 * step + rank, batch_size=1))  # data differ per rank
        final = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        gathered = [torch.zeros_like(final) for _ in range(world_size)]
        dist.all_gather(gathered, final)

        # online validation: each rank counts its own batch, the logged Dice of every network sums both ranks'
        outputs = [trainer.validation_step(scribble_batch(trainer, seed=100 + rank, batch_size=1))]
        trainer.on_validation_epoch_end(outputs)
        local = {k: np.sum([o[k] for o in outputs], 0) for k in outputs[0] if k.startswith(("tp_", "fp_", "fn_"))}
        counts = [None] * world_size
        dist.all_gather_object(counts, local)
        logged = {name: trainer.logger.get_value(f"mean_fg_dice_{name}", step=0) for name in trainer.member_names}
        logged["ensemble"] = trainer.logger.get_value("mean_fg_dice", step=0)
        expected = {}
        for name in [*trainer.member_names, "ensemble"]:
            suffix = "" if name == "ensemble" else f"_{name}"
            tp, fp, fn = (sum(c[f"{kind}_hard{suffix}"] for c in counts) for kind in ("tp", "fp", "fn"))
            expected[name] = float(np.nanmean([2 * t / (2 * t + f + n) if 2 * t + f + n else np.nan
                                               for t, f, n in zip(tp, fp, fn)]))
        everyone = [None] * world_size
        dist.all_gather_object(everyone, logged)

        trainer.save_checkpoint(f"{result_file}.rank{rank}.pth")  # only rank 0 writes
        metrics = trainer.perform_actual_validation()  # each rank predicts its share of the val cases
        if rank == 0:
            validation = Path(trainer.output_folder) / "validation"
            torch.save({"identical": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                        "changed": not torch.equal(initial, final),
                        "online Dice summed over ranks": all(
                            math.isclose(logged[k], expected[k], abs_tol=1e-6) for k in expected),
                        "online Dice the same on every rank": all(e == logged for e in everyone),
                        "validated cases": sorted(p.name for p in validation.glob("*.nii.gz")),
                        "val keys": sorted(f"{k}.nii.gz" for k in trainer.do_split()[1]),
                        "dense metrics": metrics is not None and "foreground_mean" in metrics}, result_file)
        else:
            assert metrics is None
    finally:
        dist.destroy_process_group()


def test_ddp_trains_validates_and_evaluates_the_default_configuration_on_a_gloo_group(nnunet_paths, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # for the two workers: no spinning threads on a shared CPU
    result = tmp_path / "result.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), nnunet_paths, str(result)), nprocs=2, join=True)
    outcome = torch.load(result)
    assert outcome.pop("validated cases") == outcome.pop("val keys")  # both ranks' shares, nothing twice
    assert outcome == {"identical": True, "changed": True, "online Dice summed over ranks": True,
                       "online Dice the same on every rank": True, "dense metrics": True}
    assert (tmp_path / "result.pt.rank0.pth").is_file() and not (tmp_path / "result.pt.rank1.pth").exists()
