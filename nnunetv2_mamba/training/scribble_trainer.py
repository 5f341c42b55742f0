"""What every trainer that learns from scribbles checks before it trains, so that bad input fails at once with the
file and the fix instead of mid-training (e.g. ``IndexError: Target 7 is out of bounds`` in the loss, naming no case).
"""

from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunetv2_mamba.data.scribble_dataset import ignore_label_of
from nnunetv2_mamba.training.dense_validation import DenseValidationMixin
from nnunetv2_mamba.training.usability import UsabilityMixin

SHOWN = 5  # bad cases named in the error


class ScribbleTrainerMixin(UsabilityMixin, DenseValidationMixin):
    """Mixin for nnU-Net trainers (list it before the trainer class): refuses a dataset.json without nnU-Net's ignore
    label (a dense dataset) when the trainer is built, and training cases with label values outside the classes and
    the ignore label when training starts; validates against dense labels (:class:`DenseValidationMixin`); runs on the
    CPU without a flag where there is no GPU (:class:`UsabilityMixin`)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        ignore_label_of(dataset_json["labels"], "dataset.json")
        super().__init__(plans, configuration, fold, dataset_json, device)

    def on_train_start(self) -> None:
        self.check_scribble_values()
        super().on_train_start()

    def check_scribble_values(self) -> None:
        """Every training case's preprocessed labels lie in -1 (nnU-Net's outside-the-crop value), the classes and the
        ignore label, which nnU-Net numbers consecutively; a ValueError names the cases and values otherwise."""
        ignore = self.label_manager.ignore_label
        tr_keys, _ = self.do_split()
        dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)
        dataset = dataset_class(self.preprocessed_dataset_folder, tr_keys)
        bad = {}
        for key in tr_keys:
            seg = np.asarray(dataset.load_case(key)[1][:])
            if seg.min() < -1 or seg.max() > ignore:
                bad[key] = [int(v) for v in np.unique(seg) if not -1 <= v <= ignore]
        if bad:
            shown = ", ".join(f"{key} {values}" for key, values in list(bad.items())[:SHOWN])
            raise ValueError(
                f"{len(bad)} training case(s) of {self.plans_manager.dataset_name} hold label values outside the "
                f"classes 0..{ignore - 1} and the ignore label {ignore} declared in dataset.json: {shown}"
                + (" ..." if len(bad) > SHOWN else "") + f". Fix their files in labelsTr (nnunetv2_mamba "
                f"check-scribbles -d {self.plans_manager.dataset_name} lists every problem), then preprocess again.")
