"""Convert scribble data in the HDF5 layout of WSL4MIS / SSL4MIS (ACDC with Valvano et al.'s scribbles) into an
nnU-Net raw scribble dataset.

Source: one ``.h5`` file per volume (``patientNNN_frameMM.h5``) with arrays ``image`` (float), ``label`` (dense) and
``scribble`` (same classes, one extra value for unlabeled pixels: 4 in ACDC), shaped (slices, H, W); 2D files of
one slice, (H, W), are read as a single slice. No spacing is stored, so it is given (ACDC: about 1.5 x 1.5 mm in
plane, 5-10 mm between slices).

Target: a scribble dataset (see :mod:`nnunetv2_mamba.data.scribble_dataset`) with either one 3D case per volume
(``patient003_frame01``) or one 2D case per slice (``patient003_frame01_slice04``). The train/val split becomes a
one-fold ``splits_final.json`` in which all frames (and slices) of a patient stay on the same side; val cases are
training cases of nnU-Net (its fold 0 validates on them), so they have scribbles in ``labelsTr`` and dense labels in
``labelsTr_dense`` like every training case. Test patients go to ``imagesTs``/``labelsTs`` with dense labels only;
splits with test patients alone give a folder of held-out patients (``imagesTs``/``labelsTs`` and dataset.json).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from nnunetv2_mamba.data.scribble_dataset import (DENSE_LABELS_TR, FILE_ENDING, IGNORE, atomic_dataset_folder,
                                                  class_labels, validate_scribble_dataset, with_ignore_label,
                                                  write_dataset_json, write_image, write_splits)

ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
ACDC_SPACING = (10.0, 1.5, 1.5)  # (between slices, rows, columns) in mm: typical ACDC values, not stored in the files
SPLITS = ("train", "val", "test")
logger = logging.getLogger(__name__)


def patient_of(volume: str) -> str:
    """``patient003`` for ``patient003_frame01``: frames (and slices) of one patient share a split."""
    match = re.match(r"(.+?)_frame\d+", volume)
    return match.group(1) if match else volume


def read_splits(splits: str | os.PathLike | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Patient ids per split from a mapping or a JSON file with ``train``, ``val`` and optionally ``test`` lists, or
    with ``test`` alone (held-out patients converted on their own)."""
    if not isinstance(splits, Mapping):
        path = Path(splits)
        try:
            splits = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the splits file {path}: {e}") from e
    result = {name: [str(p) for p in splits.get(name, [])] for name in SPLITS}
    if not result["train"] and (result["val"] or not result["test"]):
        raise ValueError(f"the splits name no 'train' patients: {dict(splits)} (a splits file with 'test' patients "
                         f"only converts held-out patients alone)")
    seen: dict[str, str] = {}
    for name, patients in result.items():
        for patient in patients:
            if patient in seen:
                raise ValueError(f"patient {patient} is in both '{seen[patient]}' and '{name}' splits")
            seen[patient] = name
    return result


def _read_volume(path: Path, unlabeled_value: int, classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, dense label, scribble) of one file, slices first, checked against the declared classes."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e}); replace or remove it, or leave its patient out of "
                         f"the splits") from e
    with file as f:
        missing = [k for k in ("image", "label", "scribble") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {missing}; found {sorted(f.keys())}")
        image, label, scribble = (np.asarray(f[k][()]) for k in ("image", "label", "scribble"))
    if not image.shape == label.shape == scribble.shape or image.ndim not in (2, 3):
        raise ValueError(f"{path}: image {image.shape}, label {label.shape} and scribble {scribble.shape} must have "
                         "the same 2D or 3D shape (slices first)")
    for name, array, allowed in (("label", label, classes), ("scribble", scribble, classes + [unlabeled_value])):
        bad = np.setdiff1d(np.unique(array), allowed)
        if bad.size:
            raise ValueError(f"{path}: '{name}' holds values {bad.tolist()} outside {allowed}")
    if image.ndim == 2:
        image, label, scribble = image[None], label[None], scribble[None]
    return image.astype(np.float32), label.astype(np.uint8), scribble


def convert_h5(source: str | os.PathLike, target: str | os.PathLike, mode: Literal["2d", "3d"] = "3d",
               spacing: Sequence[float] = ACDC_SPACING,
               splits: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
               labels: Mapping[str, int] = ACDC_LABELS, unlabeled_value: int = 4,
               channel_name: str = "MRI", overwrite: bool = False) -> Path:
    """Convert the ``.h5`` volumes of ``source`` into the raw scribble dataset folder ``target`` and return it.

    ``spacing`` is (between slices, rows, columns) in mm; 2D cases use the last two. ``splits`` (patient ids per
    ``train``/``val``/``test``; default ``source/splits.json``) select the volumes: files of patients in no split are
    skipped, patients without files are an error. The dataset is written next to ``target`` and moved into place
    only once complete and validated, so a failure leaves nothing behind.
    """
    source, target = Path(source), Path(target)
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (between slices, rows, columns), got {spacing}")
    splits = read_splits(splits if splits is not None else source / "splits.json")
    files = sorted(source.glob("*.h5"))
    by_patient: dict[str, list[Path]] = {}
    for f in files:
        by_patient.setdefault(patient_of(f.stem), []).append(f)
    missing = [p for patients in splits.values() for p in patients if p not in by_patient]
    if missing:
        raise ValueError(f"{source}: no .h5 file for patient(s) {missing[:10]} named in the splits")
    split_of = {p: name for name, patients in splits.items() for p in patients}
    skipped = len([p for p in by_patient if p not in split_of])
    if skipped:
        logger.info(f"skipping {skipped} patient(s) of {source} that are in no split")

    classes = class_labels(labels)
    if unlabeled_value in classes:
        raise ValueError(f"unlabeled value {unlabeled_value} is also a class of {dict(labels)}")
    scribble_labels = with_ignore_label(labels)
    ignore = scribble_labels[IGNORE]
    case_spacing = tuple(spacing) if mode == "3d" else tuple(spacing[1:])
    volumes = [(f, split_of[p]) for p, fs in by_patient.items() if p in split_of for f in fs]
    cases_of: dict[str, list[str]] = {name: [] for name in SPLITS}
    with atomic_dataset_folder(target, overwrite) as tmp:
        training = ("imagesTr", "labelsTr", DENSE_LABELS_TR) if splits["train"] else ()
        for sub in training + (("imagesTs", "labelsTs") if splits["test"] else ()):
            (tmp / sub).mkdir()
        for path, split in tqdm(volumes, desc=f"converting to {mode}"):
            image, label, scribble = _read_volume(path, unlabeled_value, classes)
            scribble = np.where(scribble == unlabeled_value, ignore, scribble).astype(np.uint8)
            if mode == "3d":
                cases = [(path.stem, image, label, scribble)]
            else:
                cases = [(f"{path.stem}_slice{z:02d}", image[z], label[z], scribble[z]) for z in range(len(image))]
            images, dense = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", DENSE_LABELS_TR)
            for case, case_image, case_label, case_scribble in cases:
                cases_of[split].append(case)
                write_image(case_image, case_spacing, tmp / images / f"{case}_0000{FILE_ENDING}")
                write_image(case_label, case_spacing, tmp / dense / f"{case}{FILE_ENDING}")
                if split != "test":
                    write_image(case_scribble, case_spacing, tmp / "labelsTr" / f"{case}{FILE_ENDING}")
        write_dataset_json(
            tmp, scribble_labels, len(cases_of["train"]) + len(cases_of["val"]), {"0": channel_name},
            dataset_name=target.name, numTest=len(cases_of["test"]),
            description=f"Converted by nnunetv2_mamba convert-h5 from {source.name} ({mode}, assumed spacing "
                        f"{list(case_spacing)} mm); scribbles in labelsTr ({IGNORE} = unlabeled), dense labels in "
                        f"{DENSE_LABELS_TR} and labelsTs.")
        if cases_of["val"]:
            write_splits(tmp, [cases_of])
        elif cases_of["train"]:
            logger.info("no 'val' patients: nnU-Net will make its own 5-fold cross-validation split")
        logger.info(replace(validate_scribble_dataset(tmp, progress=False), folder=target).format())
    return target
