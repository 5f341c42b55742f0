"""A tiny synthetic dataset, generated on the fly, on which every network and trainer of this package runs in
seconds on a CPU (the demo, end-to-end tests).

Each case is a noisy image with three structures loosely modelled on a short-axis cardiac slice: a bright ``cavity``
(ellipse/ellipsoid) inside a darker ``ring`` of random thickness, and a ``blob`` of intermediate brightness beside the
ring, at random positions, sizes and orientations, on a smoothly varying background. The dataset is an nnU-Net raw
dataset in the scribble layout of :mod:`nnunetv2_mamba.data.scribble_dataset` (simulated scribbles in ``labelsTr``,
dense labels in ``labelsTr_dense``, test cases in ``imagesTs``/``labelsTs``) or, with ``dense=True``, an ordinary
dense one (dense labels in ``labelsTr`` and, for the same evaluation code, in ``labelsTr_dense``). The same seed gives
the same images and dense labels in both variants, so scribble and full supervision can be compared.

``decoy=True`` adds a second blob that looks exactly like the labelled one but is background: the two are drawn from
the same distribution (sizes, distance to the ring, directions on opposite sides), so no image feature tells which one
is meant. Only a prompt can; this is the variant on which click-prompted networks show what clicks add.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunetv2_mamba.data.scribble_dataset import (DENSE_LABELS_TR, FILE_ENDING, atomic_dataset_folder,
                                                  class_labels, validate_scribble_dataset, with_ignore_label,
                                                  write_dataset_json, write_image)
from nnunetv2_mamba.data.simulate_scribbles import case_rng, simulate_scribbles_array, slice_axis_of

LABELS = {"background": 0, "ring": 1, "cavity": 2, "blob": 3}
SHAPE_2D, SPACING_2D = (64, 64), (1.0, 1.0)
SHAPE_3D, SPACING_3D = (32, 48, 48), (2.0, 1.0, 1.0)
_MEAN_INTENSITY = np.array([0.2, 0.45, 0.9, 0.65])  # per label: background, ring, cavity, blob


def synthetic_dataset_name(dims: int = 2, dense: bool = False) -> str:
    """The conventional raw folder name of each variant (ids 990-993, out of the way of real datasets)."""
    dataset_id = 990 + (dims == 3) + 2 * dense
    return f"Dataset{dataset_id}_Synthetic{'Dense' if dense else 'Scribbles'}{'3D' if dims == 3 else ''}"


def _ellipsoid(grid: np.ndarray, center: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    """Mask of an ellipsoid (ellipse in 2D) on ``grid`` (ndim, *shape) in mm, rotated by ``angle`` in plane."""
    offset = grid - center.reshape(-1, *[1] * (grid.ndim - 1))
    y, x = offset[-2], offset[-1]
    offset[-2], offset[-1] = np.cos(angle) * y - np.sin(angle) * x, np.sin(angle) * y + np.cos(angle) * x
    return sum((o / r) ** 2 for o, r in zip(offset, radii)) <= 1


def synthetic_case(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                   decoy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One random (image float32, dense label uint8) pair; 2D or 3D after ``shape``, sizes in mm after ``spacing``;
    with ``decoy``, the same case plus an unlabelled look-alike of the blob in the image."""
    shape, spacing = tuple(shape), np.asarray(spacing, dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
    extent = np.asarray(shape) * spacing
    size = extent[-2:].min()  # in-plane size scales every structure
    center = extent * rng.uniform(0.4, 0.6, len(shape))
    radii = size * rng.uniform(0.12, 0.18, len(shape))
    radii[:-2] *= 1.5  # elongated across slices, as the heart is along its long axis
    thickness = size * rng.uniform(0.06, 0.09)
    angle = rng.uniform(0, np.pi)
    cavity = _ellipsoid(grid, center, radii, angle)
    ring = _ellipsoid(grid, center, radii + thickness, angle) & ~cavity
    direction = rng.uniform(0, 2 * np.pi)
    blob = _blob(rng, grid, center, radii[-1] + thickness, size, direction)
    label = np.zeros(shape, dtype=np.uint8)
    label[blob] = 3
    label[ring] = 1
    label[cavity] = 2
    appearance = label
    if decoy:  # opposite side, so the two never touch; the swap of the two blobs has the same distribution
        decoy_rng = rng.spawn(1)[0]  # leaves ``rng``'s stream, hence everything else of the case, unchanged
        appearance = label.copy()
        appearance[_blob(decoy_rng, grid, center, radii[-1] + thickness, size,
                         direction + np.pi + decoy_rng.uniform(-np.pi / 3, np.pi / 3)) & (label == 0)] = 3
    image = _MEAN_INTENSITY[appearance] * rng.uniform(0.9, 1.1)
    shading = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=4)  # slowly varying, like a coil's bias
    image += 0.1 * shading / shading.std()
    image = ndimage.gaussian_filter(image, sigma=0.6) + rng.normal(0, 0.06, shape)
    return image.astype(np.float32), label


def _blob(rng: np.random.Generator, grid: np.ndarray, center: np.ndarray, ring_radius: float, size: float,
          direction: float) -> np.ndarray:
    """Mask of a blob just outside a ring of in-plane radius ``ring_radius`` about ``center``, towards ``direction``."""
    radii = size * rng.uniform(0.08, 0.12, len(center))
    radii[:-2] *= 1.5
    blob_center = center.copy()
    blob_center[-2:] += (ring_radius + 0.8 * radii[-1]) * np.array([np.sin(direction), np.cos(direction)])
    return _ellipsoid(grid, blob_center, radii, rng.uniform(0, np.pi))


def write_synthetic_dataset(target: str | os.PathLike, dims: int = 2, num_training: int | None = None,
                            num_test: int | None = None, shape: Sequence[int] | None = None,
                            dense: bool = False, seed: int = 0, overwrite: bool = False, decoy: bool = False) -> Path:
    """Write the synthetic raw dataset to the folder ``target`` (e.g. ``$nnUNet_raw/`` +
    :func:`synthetic_dataset_name`) and return it.

    Defaults: 2D, 16 training and 4 test cases of 64x64 pixels (1 mm); 3D, 8 training and 2 test cases of
    32x48x48 voxels (2 x 1 x 1 mm). Takes about a second. ``dense=True`` writes dense labels to ``labelsTr`` and no
    ignore label, for ordinary (fully supervised) trainers; ``decoy=True`` adds the unlabelled look-alike blob.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    shape = tuple(shape) if shape is not None else (SHAPE_2D if dims == 2 else SHAPE_3D)
    if len(shape) != dims or min(shape) < 8:
        raise ValueError(f"shape {shape} must have {dims} sizes of at least 8")
    spacing = SPACING_2D if dims == 2 else SPACING_3D
    num_training = num_training if num_training is not None else (16 if dims == 2 else 8)
    num_test = num_test if num_test is not None else (4 if dims == 2 else 2)
    labels = LABELS if dense else with_ignore_label(LABELS)
    classes, ignore = class_labels(LABELS), len(LABELS)
    cases = [(f"case_{i:03d}", "Tr") for i in range(num_training)]
    cases += [(f"test_{i:03d}", "Ts") for i in range(num_test)]
    with atomic_dataset_folder(Path(target), overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", DENSE_LABELS_TR) + (("imagesTs", "labelsTs") if num_test else ()):
            (tmp / sub).mkdir()
        for case, split in cases:
            image, label = synthetic_case(case_rng(seed, case), shape, spacing, decoy)
            write_image(image, spacing, tmp / f"images{split}" / f"{case}_0000{FILE_ENDING}")
            if split == "Ts":
                write_image(label, spacing, tmp / "labelsTs" / f"{case}{FILE_ENDING}")
                continue
            write_image(label, spacing, tmp / DENSE_LABELS_TR / f"{case}{FILE_ENDING}")
            if not dense:
                label = simulate_scribbles_array(label, classes, ignore, case_rng(seed + 1, case),
                                                 slice_axis=slice_axis_of(spacing))
            write_image(label, spacing, tmp / "labelsTr" / f"{case}{FILE_ENDING}")
        write_dataset_json(tmp, labels, num_training, {"0": "synthetic"}, dataset_name=Path(target).name,
                           description=f"Synthetic {dims}D demo data of nnunetv2_mamba (seed {seed}"
                                       f"{', with decoy blobs' if decoy else ''}); "
                                       f"{'dense' if dense else 'simulated scribble'} labels in labelsTr.",
                           license="CC0", reference="nnunetv2_mamba.data.synthetic")
        if not dense:
            validate_scribble_dataset(tmp, progress=False)
    return Path(target)
