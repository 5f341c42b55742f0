"""CrossSupervisionLoss and its pieces on crafted examples with known answers: partial cross-entropy, the mixed
pseudo label, component cleaning, Dice + CE, the boundary margin, deep-supervision matching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

from nnunetv2_mamba.training.loss.cross_supervision_loss import (CrossSupervisionLoss, PartialCrossEntropy,
                                                                 deep_supervision_weights, keep_largest_components,
                                                                 keep_scribbled_components, match_targets,
                                                                 near_class_boundary, pseudo_label, resize_labels,
                                                                 with_scribbles)

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
