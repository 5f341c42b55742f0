"""nnU-Net prediction with click prompts: clicks from click files (:mod:`.clicks_file`), mapped through nnU-Net's
preprocessing into the network's input space and fed as click channels (:mod:`nnunetv2_mamba.nets.click_channels`).

Per case: nnU-Net's preprocessor (transpose, crop to the nonzero region, normalise, resample) -> the clicks follow the
same transpose, crop and resampling (:func:`clicks_to_preprocessed`) -> click channels appended to the preprocessed
image -> nnU-Net's own sliding-window prediction, mirroring and fold ensembling, which cut and mirror the click
channels with the image, so each tile sees its clicks in tile-local coordinates and mirrored tiles mirrored clicks ->
nnU-Net's resampling back to the original image -> optionally U-Mamba2's click post-processing
(:func:`force_click_neighbourhoods`) -> the image's reader-writer writes the segmentation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from tqdm import tqdm

from nnunetv2_mamba.inference.clicks_file import read_clicks
from nnunetv2_mamba.nets.click_channels import Click, encode_click_channels
from nnunetv2_mamba.training.nnUNetTrainerMamba import unwrap

logger = logging.getLogger(__name__)


def clicks_to_preprocessed(clicks: Sequence[Click], properties: dict, transpose_forward: Sequence[int],
                           preprocessed_shape: Sequence[int]) -> list[Click]:
    """Clicks in voxel coordinates of the image as read -> voxel coordinates of nnU-Net's preprocessed array, using
    the ``properties`` its preprocessor returned: axes permuted by ``transpose_forward``, shifted by the crop to the
    nonzero region, scaled by the resampling (voxel centres aligned, as nnU-Net's resampling functions do:
    ``new = (old + 0.5) * new_size / old_size - 0.5``). Clicks in the cropped-away region are dropped with a
    warning (nnU-Net predicts background there anyway)."""
    low = np.array([bounds[0] for bounds in properties["bbox_used_for_cropping"]], dtype=float)
    cropped = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=float)
    scale = np.asarray(preprocessed_shape, dtype=float) / cropped
    mapped = []
    for click in clicks:
        point = np.asarray(click.point, dtype=float)[list(transpose_forward)] - low
        if not np.all((point >= -0.5) & (point < cropped - 0.5)):
            logger.warning(f"click {click} lies outside the image's nonzero region, which nnU-Net crops away; "
                           f"ignored")
            continue
        point = np.clip((point + 0.5) * scale - 0.5, 0, np.asarray(preprocessed_shape) - 1)
        mapped.append(Click(click.label, tuple(point)))
    return mapped


def ball_offsets(radius: int, ndim: int) -> np.ndarray:
    """Integer offsets within Euclidean distance ``radius`` (voxels) of the origin: (n, ndim)."""
    grid = np.stack(np.meshgrid(*[np.arange(-radius, radius + 1)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    return grid[(grid ** 2).sum(1) <= radius ** 2]


def force_click_neighbourhoods(segmentation: np.ndarray, clicks: Sequence[Click], radius: int = 1) -> np.ndarray:
    """U-Mamba2's click post-processing, in place: the voxels within ``radius`` of each click (radius 1: the click
    and its face neighbours) become the click's class where that class is predicted somewhere among them, so a
    structure the network found near a click reaches it; a class predicted nowhere near a click is not invented."""
    offsets = ball_offsets(radius, segmentation.ndim)
    for click in clicks:
        voxels = np.rint(click.point).astype(int) + offsets
        voxels = voxels[np.all((voxels >= 0) & (voxels < segmentation.shape), axis=1)]
        where = tuple(voxels.T)
        if np.any(segmentation[where] == click.label):
            segmentation[where] = click.label
    return segmentation


class nnUNetClickPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that prompts click-prompted networks (``network.click_labels``) with clicks per case.
    Initialise it as nnU-Net's (``initialize_from_trained_model_folder``), then call :meth:`predict_case` or
    :meth:`predict_from_folder`."""

    def predict_case(self, image_files: Sequence[str], clicks_file: str | os.PathLike | None = None,
                     click_radius: int = 0) -> tuple[np.ndarray, dict]:
        """Segmentation (in the image's array order, as nnU-Net's reader returns it) and reader properties of one
        case; without ``clicks_file`` the network runs unprompted. ``click_radius`` > 0 applies
        :func:`force_click_neighbourhoods` with that radius."""
        network = unwrap(self.network)
        labels = getattr(network, "click_labels", None)
        if labels is None:
            raise ValueError(f"{type(network).__name__} takes no clicks; predict with a model trained "
                             f"with UMambaBot2Click plans (or use nnUNetv2_predict)")
        if self.configuration_manager.previous_stage_name is not None:
            raise ValueError("cascaded configurations are not supported with clicks; use a 2d or 3d_fullres model")
        preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose)
        data, _, properties = preprocessor.run_case(list(image_files), None, self.plans_manager,
                                                    self.configuration_manager, self.dataset_json)
        clicks = []
        if clicks_file is not None:
            image_shape = properties["shape_before_cropping"]
            original_shape = [image_shape[i] for i in self.plans_manager.transpose_backward]
            clicks = read_clicks(clicks_file, self.dataset_json["labels"], properties, original_shape,
                                 background=0 in labels)
        mapped = clicks_to_preprocessed(clicks, properties, self.plans_manager.transpose_forward, data.shape[1:])
        maps = encode_click_channels(mapped, data.shape[1:], labels)
        logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(np.concatenate([data, maps]))).cpu()
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties)
        if click_radius > 0:
            force_click_neighbourhoods(segmentation, clicks, click_radius)
        return segmentation, properties

    def predict_from_folder(self, input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                            clicks_folder: str | os.PathLike | None = None, click_radius: int = 0,
                            overwrite: bool = True) -> list[str]:
        """Predict every case of an nnU-Net image folder (``CASE_0000.nii.gz``...) into ``output_folder``, with the
        clicks of ``clicks_folder/CASE.json`` where that file exists (cases without one run unprompted). Returns the
        case identifiers predicted."""
        os.makedirs(output_folder, exist_ok=True)
        image_lists, outputs, _ = self._manage_input_and_output_lists(str(input_folder), str(output_folder),
                                                                      overwrite=overwrite)
        writer = self.plans_manager.image_reader_writer_class()
        ending = self.dataset_json["file_ending"]
        if clicks_folder is not None:
            suffix = f"_0000{ending}"
            unused = sorted({f.stem for f in Path(clicks_folder).glob("*.json")} -
                            {f.name[:-len(suffix)] for f in Path(input_folder).glob(f"*{suffix}")})
            if unused:
                logger.warning(f"click files without a case to predict in {input_folder} (misnamed?): "
                               f"{', '.join(name + '.json' for name in unused)}")
        cases = []
        for image_files, output in tqdm(list(zip(image_lists, outputs)), disable=not self.allow_tqdm):
            case = os.path.basename(output)
            clicks_file = Path(clicks_folder) / f"{case}.json" if clicks_folder is not None else None
            if clicks_file is not None and not clicks_file.is_file():
                logger.info(f"{case}: no click file {clicks_file}; predicting without clicks")
                clicks_file = None
            segmentation, properties = self.predict_case(image_files, clicks_file, click_radius)
            writer.write_seg(segmentation, output + ending, properties)
            cases.append(case)
        return cases
