"""Semi-supervised training with unlabeled cases, U-Mamba2-SSL's second and third stages (Tan et al. 2025,
STSR 2025 task 1 winner):

- :class:`nnUNetTrainerConsistency`: besides nnU-Net's supervised batches, batches of unlabeled cases train the
  network to agree with itself: the teacher (the same network, eval mode, no gradients) sees a weakly augmented
  patch (nnU-Net's geometric transforms), the student the same patch strongly augmented in intensity, with its
  encoder features perturbed; the loss is the MSE between their softmax outputs, weighted by a sigmoid-shaped
  ramp-up. The share of unlabeled batches grows from 10% by one point per 1% of the epochs, up to 50%.
- :class:`~nnunetv2_mamba.training.nnUNetTrainerPseudoLabel.nnUNetTrainerPseudoLabel`: continues from the
  consistency model of the same fold at a lower learning rate and adds a pseudo-label term: the teacher's confident
  predictions (probability >= 0.75) are Dice+CE targets for the student at weight 0.1, the rest is ignored.

Unlabeled cases are preprocessed with ``nnunetv2_mamba preprocess-unlabeled`` (:mod:`nnunetv2_mamba.data.unlabeled`).
Both trainers apply the dataset's ``domain_knowledge.json`` when it exists (:class:`nnUNetTrainerDomainKnowledge`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.blank_rectangle import BlankRectangleTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.noise.median_filter import MedianFilterTransform
from batchgeneratorsv2.transforms.noise.sharpen import SharpeningTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import OneOfTransform, RandomTransform
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from nnunetv2_mamba.training.feature_perturbation import skip_perturbation
from nnunetv2_mamba.training.loss.softmax_mse import SoftmaxMSE
from nnunetv2_mamba.training.nnUNetTrainerDomainKnowledge import nnUNetTrainerDomainKnowledge
from nnunetv2_mamba.training.rampup import sigmoid_rampup
from nnunetv2_mamba.training.unlabeled_data import MixedBatches, missing_unlabeled_message, unlabeled_batches

_GEOMETRIC = (Convert3DTo2DTransform, SpatialTransform, Convert2DTo3DTransform, MirrorTransform)


def pseudo_labels(probabilities: torch.Tensor, threshold: float, ignore_label: int) -> torch.Tensor:
    """(b, c, ...) probabilities -> (b, 1, ...) argmax labels, ``ignore_label`` where the top probability is below
    ``threshold``."""
    confidence, labels = probabilities.max(1, keepdim=True)
    return torch.where(confidence >= threshold, labels, ignore_label)


def strong_intensity_transforms(patch_size, do_dummy_2d_data_aug: bool) -> BasicTransform:
    """U-Mamba2-SSL's strong augmentation of the student's view (its final STSR trainer): blur or median filter,
    noise, brightness, contrast, low resolution, gamma, blanked rectangles and sharpening, each likely."""
    ignore_axes = (0,) if do_dummy_2d_data_aug else None
    return ComposeTransforms([
        OneOfTransform([
            RandomTransform(MedianFilterTransform((2, 8), p_per_channel=1), apply_probability=0.5),
            RandomTransform(GaussianBlurTransform(blur_sigma=(0.3, 1.5), synchronize_channels=False,
                                                  synchronize_axes=False, p_per_channel=1, benchmark=True),
                            apply_probability=0.5)]),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.5),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.5, 1.5)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.5),
        OneOfTransform([
            RandomTransform(ContrastTransform(contrast_range=BGContrast((0.5, 1.5)), preserve_range=preserve,
                                              synchronize_channels=False, p_per_channel=1), apply_probability=0.5)
            for preserve in (True, False)]),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.25, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=ignore_axes,
                                                       allowed_channels=None, p_per_channel=1),
                        apply_probability=0.7),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.2),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.5),
        RandomTransform(BlankRectangleTransform([[max(1, p // 10), max(1, p // 3)] for p in patch_size],
                                                rectangle_value=0.0, num_rectangles=(1, 5), force_square=False,
                                                p_per_channel=1), apply_probability=0.7),
        RandomTransform(SharpeningTransform(strength=(0.1, 1), p_per_channel=1), apply_probability=0.5),
    ])


class nnUNetTrainerConsistency(nnUNetTrainerDomainKnowledge):
    """Stage 2 of U-Mamba2-SSL (see the module docstring); the options below are U-Mamba2-SSL's final values."""

    domain_knowledge_required = False
    consistency_weight = 50.0
    consistency_rampup = 0.2  # the weight ramps up over this share of all training iterations
    unlabeled_share = (0.1, 0.5)  # share of unlabeled batches: the first, growing 1/num_epochs per epoch, capped
    feature_perturbation = True  # needs the network's `encoder` (nnU-Net's UNets and ours have one)
    unperturbed_skips = 2  # the highest-resolution skips left alone (U-Mamba2: the deepest 5 of 7 are perturbed)
    channel_dropout = 0.5
    feature_drop_keep = (0.6, 0.9)
    feature_noise = 0.3
    pseudo_label_weight = 0.0  # stage 3 turns these on
    pseudo_label_threshold = 0.75

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__} compares softmax outputs; region-based training (dataset.json "
                             f"labels given as regions) is not supported")
        self._step_in_epoch = 0

    def initialize(self) -> None:
        super().initialize()
        deep_supervision = self.loss.weight_factors if isinstance(self.loss, DeepSupervisionWrapper) else None
        consistency: nn.Module = SoftmaxMSE()
        pseudo: nn.Module = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                            "do_bg": False, "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1,
                                           ignore_label=self.pseudo_ignore_label,
                                           dice_class=MemoryEfficientSoftDiceLoss)
        if deep_supervision is not None:
            consistency, pseudo = (DeepSupervisionWrapper(consistency, deep_supervision),
                                   DeepSupervisionWrapper(pseudo, deep_supervision))
        self.consistency_loss, self.pseudo_label_loss = consistency, pseudo

    @property
    def pseudo_ignore_label(self) -> int:
        """The label marking unconfident voxels: the dataset's ignore label, or the first value past the classes."""
        return self.label_manager.num_segmentation_heads

    def current_unlabeled_share(self) -> float:
        low, high = self.unlabeled_share
        return min(high, self.current_epoch / self.num_epochs + low)

    def current_consistency_weight(self) -> float:
        step = self.current_epoch * self.num_iterations_per_epoch + self._step_in_epoch
        length = self.consistency_rampup * self.num_epochs * self.num_iterations_per_epoch
        return self.consistency_weight * sigmoid_rampup(step, length)

    def weak_transforms(self, *args, **kwargs) -> BasicTransform:
        """The teacher's view: the geometric part of this trainer's training transforms (same arguments)."""
        transforms = self.get_training_transforms(*args, **kwargs)
        return ComposeTransforms([t for t in transforms.transforms if isinstance(t, _GEOMETRIC)])

    def get_dataloaders(self):
        labeled, validation = super().get_dataloaders()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = self.configuration_manager.patch_size
        unlabeled = unlabeled_batches(self, initial_patch_size,
                                      self.weak_transforms(patch_size, rotation, None, mirror_axes, dummy_2d),
                                      strong_intensity_transforms(patch_size, dummy_2d))
        if unlabeled is None:
            raise FileNotFoundError(missing_unlabeled_message(self))
        return MixedBatches(labeled, unlabeled, self.current_unlabeled_share), validation

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._step_in_epoch = 0

    def train_step(self, batch: dict) -> dict:
        result = self.unlabeled_step(batch) if batch.get("unlabeled") else \
            {**super().train_step(batch), "unlabeled": False}
        self._step_in_epoch += 1
        return result

    @torch.no_grad()
    def teacher_probabilities(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Softmax of the network in eval mode (no dropout or drop path; with a ``mirror`` section, mirror-averaged)."""
        self.network.eval()
        try:
            output = self.network(images)
        finally:
            self.network.train()
        return [o.float().softmax(1) for o in output] if isinstance(output, (list, tuple)) else \
            output.float().softmax(1)

    def unlabeled_loss(self, student: torch.Tensor | list[torch.Tensor],
                       teacher: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Weighted consistency loss plus, in stage 3, the weighted pseudo-label loss; and numbers to log."""
        weight = self.current_consistency_weight()
        consistency = self.consistency_loss(student, teacher)
        loss = weight * consistency
        stats = {"consistency": consistency.item(), "consistency_weight": weight}
        if self.pseudo_label_weight > 0:
            full = teacher[0] if isinstance(teacher, list) else teacher
            labels = pseudo_labels(full, self.pseudo_label_threshold, self.pseudo_ignore_label)
            stats["confident"] = (labels != self.pseudo_ignore_label).float().mean().item()
            if isinstance(teacher, list):  # deep supervision: nearest-neighbour downsampled, as nnU-Net's targets
                labels = [labels] + [F.interpolate(labels.float(), size=t.shape[2:], mode="nearest").long()
                                     for t in teacher[1:]]
            loss = loss + self.pseudo_label_weight * self.pseudo_label_loss(student, labels)
        return loss, stats

    def perturbed_features(self) -> AbstractContextManager:
        """The student's feature perturbation, active within the returned context."""
        if not self.feature_perturbation:
            return nullcontext()
        return skip_perturbation(self.network, self.unperturbed_skips, channel_dropout=self.channel_dropout,
                                 keep=self.feature_drop_keep, noise=self.feature_noise)

    def unlabeled_step(self, batch: dict) -> dict:
        weak = batch["data"].to(self.device, non_blocking=True)
        strong = batch["strong"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            teacher = self.teacher_probabilities(weak)
            with self.perturbed_features():
                student = self.network(strong)
            loss, stats = self.unlabeled_loss(student, teacher)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), "unlabeled": True, **stats}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """nnU-Net logs the supervised loss; the unlabeled batches' numbers go to the log file."""
        labeled = [o for o in train_outputs if not o["unlabeled"]]
        unlabeled = [o for o in train_outputs if o["unlabeled"]]
        super().on_train_epoch_end([{"loss": o["loss"]} for o in labeled] or [{"loss": np.array(np.nan)}])
        if unlabeled:
            numbers = {key: np.mean([o[key] for o in unlabeled]) for key in unlabeled[0] if key != "unlabeled"}
            self.print_to_log_file(f"unlabeled batches: {len(unlabeled)}/{len(train_outputs)}, " +
                                   ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))

    def on_train_end(self) -> None:
        if isinstance(self.dataloader_train, MixedBatches):
            self.dataloader_train.finish()
        super().on_train_end()
