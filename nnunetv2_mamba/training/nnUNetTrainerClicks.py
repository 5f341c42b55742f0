"""Training click-prompted networks (:class:`~nnunetv2_mamba.nets.umamba_bot_click.UMambaBot2Click`) with clicks
simulated per patch as U-Mamba2 trained its ToothFairy3 task 2 model, half of the patches left without clicks
(:class:`~nnunetv2_mamba.data.simulate_clicks.ClickSimulation`).

The clicks are drawn from each patch's segmentation after nnU-Net's augmentation (so they follow rotation, scaling,
mirroring and cropping) and appended to the patch as click channels (:mod:`nnunetv2_mamba.nets.click_channels`), in
training and validation batches alike. Everything else is nnU-Net's training. nnU-Net's final validation
(``perform_actual_validation``) predicts whole cases without clicks, so its Dice is the network's unprompted one; see
``nnunetv2_mamba predict-clicks`` for prediction with clicks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from nnunetv2_mamba.data.simulate_clicks import ClickSimulation, simulate_clicks
from nnunetv2_mamba.nets.click_channels import click_labels, encode_click_channels
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba, unwrap


class SimulateClicksTransform(BasicTransform):
    """Appends click channels, one per label of ``labels`` (the network's click labels), simulated from the sample's
    label map, to its image. Random numbers come from numpy's global state, which nnU-Net's data loading seeds, like
    its other transforms."""

    def __init__(self, labels: Sequence[int], simulation: ClickSimulation = ClickSimulation()):
        super().__init__()
        self.labels, self.simulation = list(labels), simulation

    def apply(self, data_dict: dict, **params) -> dict:
        segmentation = data_dict["segmentation"]
        label_map = (segmentation[0] if isinstance(segmentation, list) else segmentation)[0].numpy()
        rng = np.random.default_rng(np.random.randint(2 ** 31))
        clicks = simulate_clicks(label_map, self.labels, rng, self.simulation)
        maps = torch.from_numpy(encode_click_channels(clicks, label_map.shape, self.labels))
        data_dict["image"] = torch.cat([data_dict["image"], maps.to(data_dict["image"].dtype)])
        return data_dict


class nnUNetTrainerClicks(nnUNetTrainerMamba):
    """nnU-Net training with simulated clicks appended to the training and validation patches (half of them stay
    unprompted, so the model also segments without clicks). Change ``click_simulation`` in a subclass to simulate
    clicks differently."""

    click_simulation = ClickSimulation()

    def get_training_transforms(self, *args, **kwargs) -> BasicTransform:
        return self._with_clicks(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs) -> BasicTransform:
        return self._with_clicks(super().get_validation_transforms(*args, **kwargs))

    def _with_clicks(self, pipeline: ComposeTransforms) -> ComposeTransforms:
        """``pipeline`` with the click simulation inserted where the segmentation is still one full-resolution map:
        after every spatial and intensity transform, before the deep supervision downsampling."""
        steps = pipeline.transforms
        at = next((i for i, t in enumerate(steps) if isinstance(t, DownsampleSegForDSTransform)), len(steps))
        steps.insert(at, SimulateClicksTransform(self._click_labels(), self.click_simulation))
        return pipeline

    def _click_labels(self) -> tuple[int, ...]:
        """The network's click labels (:func:`~nnunetv2_mamba.nets.click_channels.click_labels`), checked against the
        dataset's labels."""
        labels = self.label_manager
        if labels.has_regions:
            raise ValueError(f"{type(self).__name__} simulates clicks on label values; region-based training "
                             f"(regions {labels.foreground_regions} in dataset.json) is not supported")
        count = len(labels.foreground_labels)
        if list(labels.foreground_labels) != list(range(1, count + 1)):
            raise ValueError(f"{type(self).__name__} needs consecutive foreground labels 1..{count}, the dataset has "
                             f"{labels.foreground_labels}")
        network = unwrap(self.network)
        taken = tuple(getattr(network, "click_labels", ()))
        if taken not in (click_labels(count + 1), click_labels(count + 1, background=True)):
            raise TypeError(f"{type(self).__name__} simulates clicks on labels 1..{count} (and 0 with background "
                            f"clicks), but {type(network).__name__} takes clicks on {list(taken) or 'none'}; "
                            f"train plans for UMambaBot2Click (nnunetv2_mamba plans -d DATASET -a UMambaBot2Click)")
        return taken


class nnUNetTrainerClicksUMamba2(nnUNetTrainerClicks):
    """U-Mamba2's click simulation, for reproduction: every patch prompted (only 10 % of its structures unclicked).
    The model then segments poorly without clicks."""

    click_simulation = ClickSimulation(unprompted_probability=0.0)
