"""Training with what is known about a dataset's labels (U-Mamba2's ToothFairy3 recipe, made generic): label
smoothing toward related classes, per-class cross-entropy weights and left-right mirroring with label swap, all read
from ``$nnUNet_preprocessed/DatasetXXX/domain_knowledge.json`` (format: :mod:`nnunetv2_mamba.data.domain_knowledge`).
"""

from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_mamba.data.domain_knowledge import (PLANS_KEY, DomainKnowledge, domain_knowledge_file,
                                                  load_domain_knowledge, parse_domain_knowledge)
from nnunetv2_mamba.training.label_swap_mirroring import (LabelSwapMirrorTransform, attach_label_swap_tta,
                                                          mirror_axis_in_patch)
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba
from nnunetv2_mamba.training.loss.related_class_loss import RelatedClassCrossEntropy, related_class_targets


def _swap_axis(knowledge: DomainKnowledge, plans_manager: PlansManager,
               configuration_manager: ConfigurationManager) -> int | None:
    if not knowledge.mirror_pairs:
        return None
    return mirror_axis_in_patch(knowledge.mirror_axis, plans_manager.transpose_forward,
                                len(configuration_manager.patch_size))


class nnUNetTrainerDomainKnowledge(nnUNetTrainerMamba):
    """``nnUNetTrainerMamba`` plus every section of the dataset's ``domain_knowledge.json``:

    - ``label_smoothing`` / ``class_weights``: the CE term of nnU-Net's Dice+CE loss becomes
      :class:`RelatedClassCrossEntropy` (Dice stays on the hard labels: a soft Dice is not minimised by the soft
      target, unlike cross-entropy);
    - ``mirror``: nnU-Net's mirroring augmentation swaps the paired labels when it flips the swap axis, and the
      network averages itself with its mirrored, channel-swapped self at inference (see
      :mod:`nnunetv2_mamba.training.label_swap_mirroring`).

    The resolved knowledge is stored in the plans copied to the results folder, where ``nnUNetv2_predict`` finds
    it. Subclasses that merely may use the file set ``domain_knowledge_required = False``.
    """

    domain_knowledge_required = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.domain_knowledge = self._read_domain_knowledge()
        if self.domain_knowledge is not None:
            self.plans_manager.plans[PLANS_KEY] = self.domain_knowledge.to_json()
            self.print_to_log_file(f"Domain knowledge: {self.domain_knowledge.summary()}")

    def _read_domain_knowledge(self) -> DomainKnowledge | None:
        folder = self.preprocessed_dataset_folder_base
        path = domain_knowledge_file(folder) if folder is not None else None
        if path is not None and path.is_file():
            return load_domain_knowledge(path, self.dataset_json["labels"])
        if self.domain_knowledge_required:
            raise FileNotFoundError(f"{type(self).__name__} applies the dataset's domain knowledge, but "
                                    f"{path or 'domain_knowledge.json (nnUNet_preprocessed is not set)'} does not "
                                    f"exist; write it as documentation/training_recipes.md describes")
        return None

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' network; with a ``mirror`` section (read from the plans, so that inference gets it too) it
        also averages over the label-swapped mirror image in eval mode."""
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        knowledge = parse_domain_knowledge(plans_manager.plans.get(PLANS_KEY, {}), source=f"plans[{PLANS_KEY!r}]")
        axis = _swap_axis(knowledge, plans_manager, configuration_manager)
        if axis is not None:
            attach_label_swap_tta(network, axis, knowledge.label_permutation(num_output_channels))
        return network

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """As nnU-Net, but test-time mirroring leaves the swap axis to the network (which swaps the labels)."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        axis = self._swap_axis()
        if axis is not None and self.inference_allowed_mirroring_axes is not None:
            self.inference_allowed_mirroring_axes = tuple(a for a in self.inference_allowed_mirroring_axes
                                                          if a != axis)
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def get_training_transforms(self, *args, **kwargs) -> BasicTransform:
        """nnU-Net's training transforms with its ``MirrorTransform`` swapping the paired labels on the swap axis."""
        transforms = super().get_training_transforms(*args, **kwargs)
        axis = self._swap_axis()
        if axis is not None:
            labels = self.label_manager.all_labels + [self.label_manager.ignore_label or 0]
            permutation = self.domain_knowledge.label_permutation(max(labels) + 1)
            transforms.transforms = [
                LabelSwapMirrorTransform(t.allowed_axes, axis, permutation) if type(t) is MirrorTransform else t
                for t in transforms.transforms]
            if any(isinstance(t, LabelSwapMirrorTransform) and axis in t.allowed_axes for t in transforms.transforms):
                pairs = list(self.domain_knowledge.mirror_pairs)
                self.print_to_log_file(f"Mirroring augmentation swaps labels {pairs} when it flips patch axis {axis}")
        return transforms

    def _build_loss(self) -> nn.Module:
        loss = super()._build_loss()
        knowledge = self.domain_knowledge
        if knowledge is None or not (knowledge.related or knowledge.class_weights):
            return loss
        compound = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
        if not isinstance(compound, DC_and_CE_loss):
            raise TypeError(f"label_smoothing and class_weights replace the cross-entropy of nnU-Net's "
                            f"DC_and_CE_loss, but {type(self).__name__} builds {type(compound).__name__}")
        classes = self.label_manager.num_segmentation_heads
        weights = torch.ones(classes)
        for label, weight in knowledge.class_weights.items():
            weights[label] = weight
        targets = related_class_targets(classes, knowledge.related, knowledge.smoothing)
        compound.ce = RelatedClassCrossEntropy(targets, weights, self.label_manager.ignore_label).to(self.device)
        soft = {label: {c: round(targets[label, c].item(), 6) for c in targets[label].nonzero()[:, 0].tolist()}
                for label in sorted(knowledge.related)}
        self.print_to_log_file(f"Cross-entropy with domain knowledge: soft targets {soft}, class weights "
                               f"{[round(w, 6) for w in weights.tolist()]}")
        return loss

    def _swap_axis(self) -> int | None:
        if self.domain_knowledge is None:
            return None
        return _swap_axis(self.domain_knowledge, self.plans_manager, self.configuration_manager)
