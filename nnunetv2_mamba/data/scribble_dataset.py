"""Scribble datasets: ordinary nnU-Net v2 raw datasets whose ``labelsTr`` hold scribbles and whose ``dataset.json``
declares nnU-Net's ``ignore`` label (the highest label value) for unlabeled pixels. Dense labels, where they exist,
live beside them so that predictions can be evaluated: ``labelsTr_dense/`` for training cases, ``labelsTs/`` for the
test cases in ``imagesTs/``.

This module writes that layout (atomically) and checks it, so that a converter, the simulator and the trainer fail
early with a message naming the file and the value instead of deep inside nnU-Net's data loader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

IGNORE = "ignore"
DENSE_LABELS_TR = "labelsTr_dense"
FILE_ENDING = ".nii.gz"
READER_WRITER = "SimpleITKIO"

LabelValue = int | Sequence[int]


class ScribbleDatasetError(ValueError):
    """A scribble dataset (or its declaration) that nnU-Net would misread; the message names file and value."""


def class_labels(labels: Mapping[str, LabelValue]) -> list[int]:
    """The label values that are classes (everything but ``ignore``; regions are expanded), sorted."""
    values: set[int] = set()
    for name, value in labels.items():
        if name != IGNORE:
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return sorted(values)


def ignore_label_of(labels: Mapping[str, LabelValue], source: str = "dataset.json") -> int:
    """The declared ignore label, after checking it the way nnU-Net needs it: an integer one above the highest class.

    The trainer calls this on its ``dataset_json`` so that a dense dataset handed to a scribble trainer fails at once.
    """
    classes = class_labels(labels)
    if classes != list(range(len(classes))):
        raise ScribbleDatasetError(f"{source}: class labels must be consecutive from 0 (0 = background); got {classes}")
    expected = len(classes)
    if IGNORE not in labels:
        raise ScribbleDatasetError(
            f"{source}: no '{IGNORE}' label in labels {dict(labels)}. A scribble dataset marks unlabeled pixels with "
            f"nnU-Net's ignore label, which must be the highest label value: add \"{IGNORE}\": {expected}.")
    value = labels[IGNORE]
    if isinstance(value, bool) or not isinstance(value, int) or value != expected:
        raise ScribbleDatasetError(
            f"{source}: the '{IGNORE}' label is {value!r} but must be the integer one above the highest class "
            f"({expected}); nnU-Net rejects any other value.")
    return value


def with_ignore_label(labels: Mapping[str, LabelValue]) -> dict[str, LabelValue]:
    """``labels`` of a dense dataset plus the ignore label, i.e. the labels of its scribble version."""
    if IGNORE in labels:
        raise ScribbleDatasetError(f"labels {dict(labels)} already declare '{IGNORE}': this is not a dense dataset")
    return {**labels, IGNORE: len(class_labels(labels))}


def dataset_reader_writer(dataset_json: Mapping, example_file: str):
    """An instance of the nnU-Net reader-writer a dataset uses (its dataset.json's choice, else by file ending)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    return determine_reader_writer_from_dataset_json(dict(dataset_json), example_file, verbose=False)()


def write_image(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    """Write a 2D or 3D array as NIfTI; ``spacing`` is in the array's axis order (nnU-Net's (z, y, x) convention)."""
    if len(spacing) != array.ndim:
        raise ValueError(f"{path.name}: spacing {tuple(spacing)} does not match the array's {array.ndim} dimensions")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing)])  # SimpleITK orders axes (x, y, z)
    sitk.WriteImage(image, str(path), True)


def write_dataset_json(folder: Path, labels: Mapping[str, LabelValue], num_training: int,
                       channel_names: Mapping[str, str], **extra) -> None:
    """A dataset.json in nnU-Net's format (through its own generator), NIfTI files read with SimpleITK."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    extra.setdefault("converted_by", "nnunetv2_mamba")
    extra.setdefault("license", "the terms of the source data apply")
    generate_dataset_json(str(folder), dict(channel_names), dict(labels), num_training, FILE_ENDING,
                          overwrite_image_reader_writer=READER_WRITER, **extra)


def write_splits(folder: Path, folds: Sequence[Mapping[str, Sequence[str]]]) -> None:
    """``splits_final.json`` in the raw folder: nnU-Net's planner copies it into the preprocessed folder."""
    with open(folder / "splits_final.json", "w") as f:
        json.dump([{"train": sorted(fold["train"]), "val": sorted(fold["val"])} for fold in folds], f, indent=1)


@contextmanager
def atomic_dataset_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target`` that becomes ``target`` only if the block succeeds.

    A failed or interrupted conversion therefore never leaves a half-written dataset that nnU-Net would pick up.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; remove it or pass overwrite (--overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def raw_dataset_folder(dataset: str | os.PathLike) -> Path:
    """An existing raw dataset given as a folder, a dataset name (``Dataset027_ACDC``) or an id (``27``)."""
    path = Path(dataset)
    if path.is_dir():
        return path
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = Path(nnUNet_raw.require()) / maybe_convert_to_dataset_name(str(dataset))
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {dataset!r}: {folder} does not exist")
    return folder


def new_raw_dataset_folder(dataset_id: int, name: str) -> Path:
    """``$nnUNet_raw/DatasetXXX_name`` for a new dataset; refuses an id that another name already uses, which
    nnU-Net would later reject as ambiguous."""
    from nnunetv2.paths import nnUNet_raw

    if not 0 < dataset_id < 1000 or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"dataset id must be 1-999 and name letters/digits/_/- only; got {dataset_id}, {name!r}")
    root = Path(nnUNet_raw.require())
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    clash = [p.name for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name and p.is_dir()]
    if clash:
        raise FileExistsError(f"dataset id {dataset_id} is already used by {clash[0]} in {root}; choose another id")
    return root / folder_name


@dataclass
class ScribbleDatasetSummary:
    """What a valid scribble dataset holds; ``labeled_pixels`` counts scribbled pixels per class."""

    folder: Path
    classes: dict[int, str]
    num_training: int
    num_dense: int
    num_test: int
    num_pixels: int = 0
    labeled_pixels: dict[int, int] = field(default_factory=dict)
    cases_without_scribbles: list[str] = field(default_factory=list)
    agreeing_pixels: int = 0  # scribbled pixels whose class equals the dense label, over cases with dense labels
    compared_pixels: int = 0

    @property
    def labeled_fraction(self) -> float:
        return sum(self.labeled_pixels.values()) / max(self.num_pixels, 1)

    def format(self) -> str:
        lines = [f"{self.folder}: valid scribble dataset",
                 f"  training cases {self.num_training} (dense labels for {self.num_dense}), test cases "
                 f"{self.num_test}",
                 f"  scribbled pixels {100 * self.labeled_fraction:.2f} % of {self.num_pixels}: " + ", ".join(
                     f"{name} {self.labeled_pixels.get(v, 0)}" for v, name in self.classes.items())]
        if self.compared_pixels:
            lines.append(f"  scribbles agreeing with dense labels: "
                         f"{100 * self.agreeing_pixels / self.compared_pixels:.2f} %")
        if self.cases_without_scribbles:
            lines.append(f"  {len(self.cases_without_scribbles)} case(s) without any scribble (they add no loss): "
                         + ", ".join(self.cases_without_scribbles[:5]))
        return "\n".join(lines)


def unexpected_values(array: np.ndarray, allowed: Sequence[int]) -> list[int | float]:
    """The values of ``array`` outside ``allowed``, as plain numbers for messages (readers return float arrays)."""
    return [int(v) if float(v).is_integer() else float(v) for v in np.unique(array) if v not in allowed]


def validate_scribble_dataset(folder: str | os.PathLike, max_errors: int = 20,
                              progress: bool = True) -> ScribbleDatasetSummary:
    """Check a scribble dataset: the ignore-label declaration, every case's scribble values, image/label shapes and
    spacings, and the dense labels of ``labelsTr_dense`` and ``labelsTs``. All problems are gathered into one
    :class:`ScribbleDatasetError` that names each file with its offending shape or values.
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    folder = Path(folder)
    if not (folder / "dataset.json").is_file():
        raise ScribbleDatasetError(f"{folder}: no dataset.json; is this an nnU-Net raw dataset folder?")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise ScribbleDatasetError(f"{folder / 'dataset.json'}: missing 'labels'")
    ignore = ignore_label_of(labels, str(folder / "dataset.json"))
    classes = list(range(ignore))
    names = {v: k for k, v in labels.items() if k != IGNORE and isinstance(v, int)}
    ending = dataset_json.get("file_ending", FILE_ENDING)
    cases = (get_filenames_of_train_images_and_targets(str(folder), dataset_json)
             if (folder / "imagesTr").is_dir() else {})
    test_labels = sorted((folder / "labelsTs").glob(f"*{ending}")) if (folder / "labelsTs").is_dir() else []
    if not cases and not test_labels:  # a folder of held-out test patients alone is valid
        raise ScribbleDatasetError(f"{folder / 'imagesTr'}: no training images ending in {ending}")
    errors: list[str] = []
    if dataset_json.get("numTraining") != len(cases):
        errors.append(f"{folder / 'dataset.json'}: numTraining is {dataset_json.get('numTraining')} but imagesTr "
                      f"holds {len(cases)} cases")
    first_image = (next(iter(cases.values()))["images"][0] if cases
                   else str(next((folder / "imagesTs").glob(f"*{ending}"), test_labels[0])))
    reader = dataset_reader_writer(dataset_json, first_image)
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    summary = ScribbleDatasetSummary(folder, {c: names.get(c, str(c)) for c in classes}, len(cases), 0,
                                     len(test_labels), labeled_pixels={c: 0 for c in classes})

    def check_label(label_file: Path, image_files: Sequence[str], allowed: list[int], what: str):
        """Read and check one label file against its images; None (with the problems recorded) when it is unusable."""
        if not label_file.is_file():
            errors.append(f"{label_file}: missing ({what} of {Path(image_files[0]).name})")
            return None
        if len(image_files) != num_channels:
            errors.append(f"{label_file.name}: {len(image_files)} image channel file(s) "
                          f"{[Path(f).name for f in image_files]} but dataset.json declares {num_channels}")
            return None
        image, image_props = reader.read_images(image_files)
        seg, seg_props = reader.read_seg(str(label_file))
        if image.shape[1:] != seg.shape[1:]:
            errors.append(f"{label_file}: shape {seg.shape[1:]} differs from its image {Path(image_files[0]).name} "
                          f"{image.shape[1:]}")
            return None
        if not np.allclose(image_props["spacing"], seg_props["spacing"]):
            errors.append(f"{label_file}: spacing {tuple(seg_props['spacing'])} differs from its image's "
                          f"{tuple(image_props['spacing'])}")
        bad = unexpected_values(seg, allowed)
        if bad:
            errors.append(f"{label_file}: values {bad} are not declared ({what} may hold {allowed})")
            return None
        return seg

    for case, files in tqdm(cases.items(), desc="checking cases", disable=not progress):
        if len(errors) >= max_errors:
            break
        scribble = check_label(Path(files["label"]), files["images"], classes + [ignore], "scribbles")
        dense_file = folder / DENSE_LABELS_TR / f"{case}{ending}"
        dense = check_label(dense_file, files["images"], classes, "dense labels") if dense_file.is_file() else None
        if scribble is None:
            continue
        summary.num_pixels += scribble.size
        counts = np.bincount(scribble.ravel().astype(np.int64), minlength=ignore + 1)
        for c in classes:
            summary.labeled_pixels[c] += int(counts[c])
        if counts[:ignore].sum() == 0:
            summary.cases_without_scribbles.append(case)
        if dense is not None:
            summary.num_dense += 1
            labeled = scribble != ignore
            summary.compared_pixels += int(labeled.sum())
            summary.agreeing_pixels += int((scribble[labeled] == dense[labeled]).sum())
    for label_file in test_labels:
        if len(errors) >= max_errors:
            break
        case = label_file.name[:-len(ending)]
        images = [str(p) for p in sorted((folder / "imagesTs").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))]
        if not images:
            errors.append(f"{label_file}: no image {case}_0000{ending} in imagesTs")
            continue
        check_label(label_file, images, classes, "test labels")
    if errors:
        shown = "\n  ".join(errors[:max_errors])
        more = "\n  (stopped after the first problems)" if len(errors) >= max_errors else ""
        raise ScribbleDatasetError(f"{folder} is not a valid scribble dataset ({len(errors)} problem(s)):\n  "
                                   f"{shown}{more}")
    return summary
