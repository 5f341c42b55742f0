"""Weak-Mamba-UNet's loss (Wang et al. 2024) for several networks trained on scribbles, with nnU-Net's losses and
deep supervision.

For every network i: ``pce_weight * pCE(logits_i, scribbles) + pseudo_label_weight * Dice(logits_i, pseudo label)``,
summed over the networks. pCE is nnU-Net's cross-entropy over the scribbled pixels (the ignore label is skipped); the
pseudo label is ``argmax(sum_i w_i softmax(logits_i))`` with weights ``w ~ Dirichlet(1, ..., 1)`` drawn anew for
every batch (the anchor's two sorted uniform cut points are exactly Dirichlet(1, 1, 1)), from detached
probabilities; the Dice is nnU-Net's ``MemoryEfficientSoftDiceLoss`` over all classes, background included, as the
anchor's Dice loss.

Deep supervision: every output of a network is compared with the targets at its own scale. nnU-Net's data loader
provides scribble targets at the scales of the plans' (CNN's) strides; an output whose scale is among them is matched
by shape, any other gets the full-resolution targets resized with nearest neighbours, as nnU-Net's
``DownsampleSegForDSTransform`` does. The pseudo label is computed at full resolution and resized the same way.
Outputs are weighted as nnU-Net does (1, 1/2, 1/4, ..., the lowest 0, normalised), per network.

Our additions, not in the paper (``nnUNetTrainerWeakMamba`` uses the first three; their measured effect is in
``documentation/scribble_supervision.md``):

- ``components`` cleans the pseudo label per sample and foreground class (removed pixels become background), for
  classes that are one structure each. Networks trained on scribbles put foreground in unlabeled tissue far from the
  structures, and the mixed pseudo label would pass those blobs on. ``"largest"`` keeps each class's largest
  connected component, as nnU-Net's post-processing does; ``"scribbled"`` keeps the components that hold a scribble
  of their class, so that a patch without the structure gets background rather than its biggest false blob.
- ``pseudo_label_loss="dice_ce"`` compares each network with the pseudo label through nnU-Net's Dice plus
  cross-entropy (``DC_and_CE_loss``) instead of Dice alone: a batch soft Dice penalises a false pixel only through
  its denominator, the cross-entropy each one.
- ``margin`` leaves the pixels within ``margin`` of a class boundary of the pseudo label out of that comparison
  (nnU-Net's ignore label, for Dice and cross-entropy alike; the scribbles still supervise them): the boundaries are
  where the pseudo label is least reliable, and a loss on every pixel makes each network copy the mix's boundaries.
- ``keep_scribbles`` sets the pseudo label's scribbled pixels to their scribbled class before the component rule, so
  that a structure the mix missed keeps at least its scribble.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from scipy import ndimage

COMPONENTS = (None, "largest", "scribbled")  # CrossSupervisionLoss's ``components``
PSEUDO_LABEL_LOSSES = ("dice", "dice_ce")  # CrossSupervisionLoss's ``pseudo_label_loss``
Output = torch.Tensor | Sequence[torch.Tensor]


def as_list(output: Output) -> list[torch.Tensor]:
    """A network's (or data loader's) output as a list of scales, highest resolution first."""
    return list(output) if isinstance(output, (list, tuple)) else [output]


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights of deep-supervision outputs: halving per scale, the lowest scale 0, normalised to sum 1."""
    if num_outputs == 1:
        return [1.0]
    weights = [0.5 ** i for i in range(num_outputs - 1)] + [0.0]
    return [w / sum(weights) for w in weights]


def resize_labels(labels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Label maps (b, 1, *spatial) resized to ``shape`` with nnU-Net's deep-supervision downsampling (nearest-exact)."""
    if tuple(labels.shape[2:]) == tuple(shape):
        return labels
    return F.interpolate(labels.float(), size=tuple(shape), mode="nearest-exact").to(labels.dtype)


def match_targets(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """For every output, the target of the same spatial shape, else the full-resolution target resized to it."""
    by_shape = {tuple(t.shape[2:]): t for t in reversed(targets)}  # the first of equal shapes wins
    matched = []
    for output in outputs:
        shape = tuple(output.shape[2:])
        matched.append(by_shape[shape] if shape in by_shape else resize_labels(targets[0], shape))
    return matched


def pseudo_label(probabilities: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``argmax_c sum_i weights[i] * probabilities[i][:, c]`` as a (b, 1, *spatial) label map."""
    if len(probabilities) != len(weights):
        raise ValueError(f"{len(probabilities)} probability maps but {len(weights)} weights")
    mixed = sum(w * p for w, p in zip(weights, probabilities))
    return mixed.argmax(1, keepdim=True)


def keep_components(labels: torch.Tensor, num_classes: int,
                    kept: Callable[[int, int, np.ndarray], np.ndarray]) -> torch.Tensor:
    """``labels`` (b, 1, *spatial) with, per sample and foreground class, only the connected components (full
    connectivity) whose ids ``kept(sample index, class, component map)`` returns; removed pixels become background."""
    maps = labels.cpu().numpy().copy()  # for a CPU tensor, numpy() shares its memory
    connectivity = ndimage.generate_binary_structure(maps.ndim - 2, maps.ndim - 2)
    for index, sample in enumerate(maps):
        for label in range(1, num_classes):
            components, count = ndimage.label(sample[0] == label, connectivity)
            if count:
                sample[0][(components > 0) & ~np.isin(components, kept(index, label, components))] = 0
    return torch.from_numpy(maps).to(labels.device)


def keep_largest_components(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Every foreground class reduced to its largest connected component per sample (:func:`keep_components`). The
    semantics of nnU-Net's ``remove_all_but_largest_component`` (full connectivity, components that tie for the
    largest size all kept), whose size comparison is quadratic in the number of components: an untrained network's
    pseudo label of 256 x 224 has thousands, and it took seconds a step."""
    def largest(index: int, label: int, components: np.ndarray) -> np.ndarray:
        sizes = np.bincount(components.ravel())[1:]
        return np.flatnonzero(sizes == sizes.max()) + 1

    return keep_components(labels, num_classes, largest)


def keep_scribbled_components(labels: torch.Tensor, scribbles: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Every foreground class reduced, per sample, to its connected components that contain a pixel scribbled with
    that class in ``scribbles`` (same shape; the ignore label and other classes elsewhere; :func:`keep_components`)."""
    if labels.shape != scribbles.shape:
        raise ValueError(f"pseudo labels {tuple(labels.shape)} and scribbles {tuple(scribbles.shape)} differ in shape")
    marks = scribbles.cpu().numpy()

    def scribbled(index: int, label: int, components: np.ndarray) -> np.ndarray:
        return np.unique(components[marks[index, 0] == label])

    return keep_components(labels, num_classes, scribbled)


def with_scribbles(labels: torch.Tensor, scribbles: torch.Tensor, ignore_label: int) -> torch.Tensor:
    """``labels`` with every scribbled pixel (``scribbles`` not ``ignore_label``) set to its scribbled class."""
    return torch.where(scribbles != ignore_label, scribbles.to(labels.dtype), labels)


def clean_pseudo_label(labels: torch.Tensor, scribbles: torch.Tensor, num_classes: int, components: str | None,
                       keep_scribbles: bool = False, ignore_label: int = -100) -> torch.Tensor:
    """``labels`` with, if ``keep_scribbles``, the scribbles kept (:func:`with_scribbles`), then cleaned by the
    ``components`` rule (None: not cleaned); the module docstring says why."""
    if keep_scribbles:
        labels = with_scribbles(labels, scribbles, ignore_label)
    if components == "largest":
        return keep_largest_components(labels, num_classes)
    if components == "scribbled":
        return keep_scribbled_components(labels, scribbles, num_classes)
    return labels


def near_class_boundary(labels: torch.Tensor, num_classes: int, margin: int) -> torch.Tensor:
    """Mask (b, 1, *spatial) of the pixels with another class within ``margin`` pixels (Chebyshev distance, 2D or 3D):
    a band of width ``2 * margin`` around every class boundary."""
    one_hot = F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()
    pool = F.max_pool2d if labels.ndim == 4 else F.max_pool3d
    present = pool(one_hot, 2 * margin + 1, stride=1, padding=margin)
    return present.sum(1, keepdim=True) > 1


class PartialCrossEntropy(RobustCrossEntropyLoss):
    """Cross-entropy over the pixels whose target is not ``ignore_index``; zero (with a graph, so DDP sees every
    parameter used) where a batch has no labeled pixel, instead of nnU-Net's NaN."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0
        return super().forward(logits, target)


class CrossSupervisionLoss(nn.Module):
    """The loss of the module docstring; ``forward(outputs, target)`` takes ``{network name: logits or
    deep-supervision list}`` and nnU-Net's target (a tensor or list of scales) and returns the loss per network.

    ``pseudo_label_scale`` multiplies ``pseudo_label_weight`` (the trainer's ramp-up sets it); ``components``
    (None, ``"largest"`` or ``"scribbled"``) cleans the pseudo label, ``pseudo_label_loss`` (``"dice"`` or
    ``"dice_ce"``) is what compares a network with it, ``margin`` the pixels it leaves out, ``keep_scribbles`` sets
    its scribbled pixels to their scribbled class before the cleaning (module docstring). After
    each call, ``last_weights`` holds the drawn pseudo-label weights in the order of ``outputs``.
    """

    def __init__(self, ignore_label: int | None, pce_weight: float = 1.0, pseudo_label_weight: float = 1.0,
                 batch_dice: bool = False, ddp: bool = False, components: str | None = None,
                 pseudo_label_loss: str = "dice", margin: int = 0, keep_scribbles: bool = False):
        super().__init__()
        if components not in COMPONENTS:
            raise ValueError(f"pseudo-label components {components!r}: expected one of {COMPONENTS}")
        if pseudo_label_loss not in PSEUDO_LABEL_LOSSES:
            raise ValueError(f"pseudo-label loss {pseudo_label_loss!r}: expected one of {PSEUDO_LABEL_LOSSES}")
        self.pce = PartialCrossEntropy(ignore_index=ignore_label if ignore_label is not None else -100)
        if margin < 0:
            raise ValueError(f"pseudo-label margin {margin}: expected a number of pixels >= 0")
        dice_kwargs = {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": ddp}
        # Dice alone is nnU-Net's Dice + CE without its CE term; the ignore label masks both terms in the margin
        self.pseudo_label_criterion: nn.Module = DC_and_CE_loss(
            dice_kwargs, {}, weight_ce=float(pseudo_label_loss == "dice_ce"), dice_class=MemoryEfficientSoftDiceLoss,
            ignore_label=self.pce.ignore_index if margin else None)
        self.pce_weight, self.pseudo_label_weight = pce_weight, pseudo_label_weight
        self.pseudo_label_scale = 1.0
        self.components, self.margin, self.keep_scribbles = components, margin, keep_scribbles
        self.last_weights: torch.Tensor | None = None

    def draw_weights(self, num_networks: int, device: torch.device) -> torch.Tensor:
        """Pseudo-label weights ~ Dirichlet(1, ..., 1), from torch's global generator (seeded by the caller)."""
        return torch.distributions.Dirichlet(torch.ones(num_networks)).sample().to(device)

    def forward(self, outputs: Mapping[str, Output], target: Output) -> dict[str, torch.Tensor]:
        outputs = {name: as_list(output) for name, output in outputs.items()}
        targets = as_list(target)
        pseudo_weight = self.pseudo_label_weight * self.pseudo_label_scale
        labels = self._pseudo_label(outputs, targets[0]) if pseudo_weight else None
        losses = {}
        for name, scales in outputs.items():
            terms = []
            for weight, logits, scribbles in zip(deep_supervision_weights(len(scales)), scales,
                                                 match_targets(scales, targets)):
                term = self.pce_weight * self.pce(logits, scribbles)
                if labels is not None:
                    pseudo = resize_labels(labels, logits.shape[2:])
                    term = term + pseudo_weight * self.pseudo_label_criterion(logits, pseudo)
                terms.append(weight * term)  # a zero weight still keeps the output in the graph (DDP)
            losses[name] = sum(terms)
        return losses

    @torch.no_grad()
    def _pseudo_label(self, outputs: Mapping[str, list[torch.Tensor]], scribbles: torch.Tensor) -> torch.Tensor:
        full = [scales[0] for scales in outputs.values()]
        shapes = {tuple(x.shape) for x in full}
        if len(shapes) != 1:
            raise ValueError(f"the networks' full-resolution outputs differ in shape: "
                             f"{ {name: tuple(s[0].shape) for name, s in outputs.items()} }")
        self.last_weights = self.draw_weights(len(full), full[0].device)
        num_classes = full[0].shape[1]
        labels = clean_pseudo_label(pseudo_label([x.float().softmax(1) for x in full], self.last_weights), scribbles,
                                    num_classes, self.components, self.keep_scribbles, self.pce.ignore_index)
        if self.margin:
            labels = labels.masked_fill(near_class_boundary(labels, num_classes, self.margin), self.pce.ignore_index)
        return labels
