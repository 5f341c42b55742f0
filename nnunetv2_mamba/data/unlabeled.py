"""Unlabeled cases for pre-training and semi-supervised training.

Users put the images beside ``imagesTr``, named as nnU-Net names images (``CASE_0000.nii.gz``, one file per channel
of dataset.json)::

    $nnUNet_raw/DatasetXXX_NAME/imagesTr_unlabeled/CASE_0000.nii.gz

and preprocess them, after ``nnUNetv2_plan_and_preprocess``, with ``nnunetv2_mamba preprocess-unlabeled -d XXX -c
CONFIG`` (:func:`preprocess_unlabeled`). nnU-Net's preprocessing wants a label file for every training case, but
its preprocessors also take cases without one (``run_case(seg_file=None)``, the path test cases take): the
configuration's own preprocessor crops, resamples and normalises each image exactly as the labelled ones. The cases
land in a sibling of the labelled folder, ``$nnUNet_preprocessed/DatasetXXX_NAME/<data_identifier>_unlabeled/``,
so that nnU-Net's splits, ``fold all``, validation and stock trainers never see them.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from batchgenerators.utilities.file_and_folder_operations import load_json, load_pickle, save_json, write_pickle
from tqdm import tqdm

UNLABELED_IMAGES = "imagesTr_unlabeled"
UNLABELED_SUFFIX = "_unlabeled"


def unlabeled_folder(preprocessed_folder: str | os.PathLike) -> Path:
    """The preprocessed unlabeled cases of a configuration's folder (``.../nnUNetPlans_3d_fullres`` ->
    ``.../nnUNetPlans_3d_fullres_unlabeled``); plans sharing a ``data_identifier`` share them too."""
    return Path(str(preprocessed_folder).rstrip("/\\") + UNLABELED_SUFFIX)


def move_to_unlabeled(raw_dataset_folder: str | os.PathLike, cases: Sequence[str]) -> None:
    """Turn labelled training cases of a raw dataset into unlabeled ones (their images move to
    ``imagesTr_unlabeled``, their labels are deleted): semi-supervised experiments on a fully labelled dataset."""
    folder = Path(raw_dataset_folder)
    dataset_json = load_json(str(folder / "dataset.json"))
    if "dataset" in dataset_json:
        raise ValueError(f"{folder}/dataset.json lists its files explicitly ('dataset'); edit it by hand instead")
    ending = dataset_json["file_ending"]
    (folder / UNLABELED_IMAGES).mkdir(exist_ok=True)
    for case in cases:
        images = sorted((folder / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
        if not images or not (folder / "labelsTr" / f"{case}{ending}").is_file():
            raise FileNotFoundError(f"{folder}: no labelled training case {case!r}")
        for image in images:
            image.rename(folder / UNLABELED_IMAGES / image.name)
        (folder / "labelsTr" / f"{case}{ending}").unlink()
    dataset_json["numTraining"] -= len(cases)
    save_json(dataset_json, str(folder / "dataset.json"), sort_keys=False)


def _preprocess_case(job: tuple) -> None:
    preprocessor, output_truncated, image_files, plans_manager, configuration_manager, dataset_json = job
    preprocessor.run_case_save(output_truncated, image_files, None, plans_manager, configuration_manager,
                               dataset_json)
    # nnU-Net's data loader reads class locations to aim crops at foreground; unlabeled cases have none
    properties = load_pickle(output_truncated + ".pkl")
    properties.setdefault("class_locations", {})
    write_pickle(properties, output_truncated + ".pkl")


def preprocess_unlabeled(dataset: str | int, configurations: Sequence[str], plans_identifier: str = "nnUNetPlans",
                         images: str | os.PathLike | None = None, num_processes: int = 1) -> dict[str, Path]:
    """Preprocess the unlabeled images of ``dataset`` (default ``$nnUNet_raw/<dataset>/imagesTr_unlabeled``) for
    each configuration of the plans; returns configuration -> output folder. Replaces earlier outputs."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    dataset_name = maybe_convert_to_dataset_name(dataset)
    base = Path(nnUNet_preprocessed) / dataset_name
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"plans {plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset} "
                                f"first (or pass the plans identifier with -p)")
    plans_manager = PlansManager(str(plans_file))
    dataset_json = load_json(str(base / "dataset.json"))
    images = Path(images) if images is not None else Path(nnUNet_raw) / dataset_name / UNLABELED_IMAGES
    if not images.is_dir():
        raise FileNotFoundError(f"no folder of unlabeled images at {images}; put them there, named CASE_0000"
                                f"{dataset_json['file_ending']} as in imagesTr")
    ending, channels = dataset_json["file_ending"], len(dataset_json["channel_names"])
    files = sorted(f.name for f in images.iterdir())
    cases = {case: create_paths_fn(str(images), files, ending, case)
             for case in get_identifiers_from_splitted_dataset_folder(str(images), ending)}
    if not cases:
        raise FileNotFoundError(f"no images ending in {ending} in {images}")
    incomplete = [case for case, case_files in cases.items() if len(case_files) != channels]
    if incomplete:
        raise ValueError(f"{images}: cases {incomplete[:5]} do not have one file for each of the {channels} "
                         f"channel(s) of dataset.json (CASE_0000{ending} ... CASE_{channels - 1:04d}{ending})")
    outputs = {}
    for configuration in configurations:
        configuration_manager = plans_manager.get_configuration(configuration)
        output = unlabeled_folder(base / configuration_manager.data_identifier)
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        jobs = [(preprocessor, str(output / case), case_files, plans_manager, configuration_manager, dataset_json)
                for case, case_files in cases.items()]
        with tqdm(total=len(jobs), desc=f"Preprocessing unlabeled cases ({configuration})") as progress:
            if num_processes > 1:
                with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                    for _ in pool.imap_unordered(_preprocess_case, jobs):
                        progress.update()
            else:
                for job in jobs:
                    _preprocess_case(job)
                    progress.update()
        outputs[configuration] = output
    return outputs
