"""Disruptive auto-encoder (DAE) pre-training, U-Mamba2-SSL's first stage (after Valanarasu et al., "Disruptive
Autoencoders", 2023): the plans' network learns to reconstruct images from disrupted copies, on the labelled
training cases and the unlabeled cases together; its final checkpoint initialises segmentation training through
``nnUNetv2_train ... -pretrained_weights .../checkpoint_final.pth`` (nnU-Net copies every weight but the
``seg_layers`` heads, whose shapes differ)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn
from torch import distributed as dist

from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba
from nnunetv2_mamba.training.unlabeled_data import MixedBatches, unlabeled_batches, unlabeled_identifiers

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def disrupt(images: torch.Tensor, noise_std: float = 0.1 ** 0.5, low_resolution_factor: float = 4,
            mask_block_size: int = 16, mask_ratio: float = 0.3,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """DAE's disruptions of a batch (b, c, *spatial), in DAE's order: additive Gaussian noise (DAE: variance 0.1),
    low resolution (linear down- and upsampling by ``low_resolution_factor``; DAE: 4), then masking: the image is
    tiled into blocks of ``mask_block_size`` voxels per axis and each block is zeroed with probability
    ``mask_ratio``, independently per sample and shared by its channels (U-Mamba2-SSL: blocks of 16, ratio 0.3)."""
    batch, spatial = images.shape[0], images.shape[2:]
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    disrupted = images + noise_std * noise
    if low_resolution_factor > 1:
        mode = _INTERPOLATION[len(spatial)]
        low = [max(1, round(size / low_resolution_factor)) for size in spatial]
        disrupted = F.interpolate(F.interpolate(disrupted, size=low, mode=mode), size=tuple(spatial), mode=mode)
    if mask_ratio > 0:
        grid = [math.ceil(size / mask_block_size) for size in spatial]
        keep = torch.rand((batch, 1, *grid), generator=generator, device=images.device) >= mask_ratio
        keep = F.interpolate(keep.to(images.dtype), scale_factor=mask_block_size, mode="nearest")
        disrupted = disrupted * keep[(..., *(slice(0, size) for size in spatial))]
    return disrupted


class nnUNetTrainerDAE(nnUNetTrainerMamba):
    """Reconstructs every input channel from :func:`disrupt`-ed inputs with an L1 loss, using the network of the
    plans with one output channel per input channel and no deep supervision.

    Defaults follow U-Mamba2-SSL's DAE run: 200 epochs with AdamW (weight decay 0.05), here at a learning rate of
    10⁻³. Batches of unlabeled cases (if any were preprocessed, see :mod:`nnunetv2_mamba.data.unlabeled`) are drawn
    in proportion to their number. The "pseudo Dice" in the log and progress.png is the share of the disruption's L1
    error that the reconstruction removes (1: perfect, 0: no better than the disrupted input, below 0 while the
    network has not yet learned to copy its input); the best checkpoint follows it, and the log gives both L1
    errors. There is no segmentation to validate at the end.
    """

    noise_std = 0.1 ** 0.5
    low_resolution_factor = 4
    mask_block_size = 16
    mask_ratio = 0.3

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.num_epochs = 200
        # higher than U-Mamba2-SSL's: at lower rates a short schedule ends before the network can even copy its input
        # (documentation/case_studies/ssl.md)
        self.initial_lr = 1e-3
        self.weight_decay = 0.05

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_input_channels, False)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self) -> nn.Module:
        if self.is_cascaded:
            raise ValueError(f"{type(self).__name__} pre-trains on images; configuration {self.configuration_name!r} "
                             f"is a cascade stage whose inputs include the previous stage's segmentation")
        return nn.L1Loss()

    def disrupt(self, images: torch.Tensor) -> torch.Tensor:
        return disrupt(images, self.noise_std, self.low_resolution_factor, self.mask_block_size, self.mask_ratio)

    def get_dataloaders(self):
        labeled, validation = super().get_dataloaders()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms: BasicTransform = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm)
        unlabeled = unlabeled_batches(self, initial_patch_size, transforms)
        if unlabeled is None:
            self.print_to_log_file("DAE pre-training on the labelled training cases only (no unlabeled cases)")
            return labeled, validation
        num_labeled, num_unlabeled = len(self.do_split()[0]), len(unlabeled_identifiers(self))
        share = num_unlabeled / (num_labeled + num_unlabeled)
        self.print_to_log_file(f"DAE pre-training on {num_labeled} labelled and {num_unlabeled} unlabeled cases")
        return MixedBatches(labeled, unlabeled, lambda: share), validation

    def train_step(self, batch: dict) -> dict:
        images = batch["data"].to(self.device, non_blocking=True)
        return super().train_step({"data": self.disrupt(images), "target": images})

    def validation_step(self, batch: dict) -> dict:
        images = batch["data"].to(self.device, non_blocking=True)
        disrupted = self.disrupt(images)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss = self.loss(self.network(disrupted), images)
        baseline = F.l1_loss(disrupted, images)
        score = 1 - loss / baseline.clamp_min(1e-8)
        return {"loss": loss.detach().cpu().numpy(), "score": score.detach().cpu().numpy(),
                "disrupted": baseline.cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        loss, score, disrupted = (np.mean([o[key] for o in val_outputs]) for key in ("loss", "score", "disrupted"))
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (loss, score, disrupted))
            loss, score, disrupted = np.mean(gathered, axis=0)
        self.print_to_log_file(f"Reconstruction L1 {loss:.4f}, disrupted input's L1 {disrupted:.4f}")
        self.logger.log("mean_fg_dice", score, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [score], self.current_epoch)
        self.logger.log("val_losses", loss, self.current_epoch)

    def on_train_end(self) -> None:
        if isinstance(self.dataloader_train, MixedBatches):
            self.dataloader_train.finish()
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("DAE pre-training has no segmentation to validate; initialise training with "
                               f"-pretrained_weights {self.output_folder}/checkpoint_final.pth")
