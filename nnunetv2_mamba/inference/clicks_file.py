"""Click files: the clicks of one case as JSON, read into voxel coordinates of the image array nnU-Net reads.

Format (documentation/interactive.md)::

    {"space": "voxel",
     "clicks": [{"label": "cavity", "point": [31, 40, 12]},
                {"label": 1, "point": [28.5, 17, 9]}]}

- ``label``: a foreground class of the model's dataset.json, by name or value; background (its name or 0) too for
  a model that takes background clicks.
- ``point``: ``space`` "voxel" (default): voxel index in the file's own axis order, (x, y, z) as ITK-SNAP, 3D Slicer
  (IJK) and SimpleITK's ``image[x, y, z]`` count, or (column, row) of a 2D image; fractions allowed.
  "world_lps" / "world_ras": physical coordinates in mm (LPS as ITK and DICOM, RAS as NIfTI and 3D Slicer show them),
  for images whose reader records their geometry (nnU-Net's SimpleITK and nibabel readers).

nnU-Net's reader-writers return arrays in the reverse of that axis order ((z, y, x); a 2D image as (1, y, x)), and so
do the clicks read here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_mamba.nets.click_channels import Click

SPACES = ("voxel", "world_lps", "world_ras")
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # flips x and y (its own inverse)


def class_values(labels: Mapping[str, int | Sequence[int]], background: bool = False) -> dict[str, int]:
    """Clickable classes of a dataset.json ``labels``: name -> value, without ``ignore`` and, unless ``background``,
    without background."""
    if any(not isinstance(v, int) for v in labels.values()):
        raise ValueError(f"region-based labels {dict(labels)} cannot be clicked: clicks name one label value")
    return {name: value for name, value in labels.items() if (background or value != 0) and name != "ignore"}


def _index_from_world(world: np.ndarray, space: str, properties: dict, where: str) -> np.ndarray:
    """Continuous voxel index, in the file's axis order (x, y, z), of a physical point."""
    if "sitk_stuff" in properties:  # ITK geometry: world (LPS) = origin + direction @ (spacing * index)
        geometry = properties["sitk_stuff"]
        ndim = len(geometry["spacing"])
        lps = world * LPS_TO_RAS[:ndim] if space == "world_ras" and ndim == 3 else world
        direction = np.asarray(geometry["direction"], dtype=float).reshape(ndim, ndim)
        return np.linalg.solve(direction, lps - np.asarray(geometry["origin"])) / np.asarray(geometry["spacing"])
    if "nibabel_stuff" in properties:  # NIfTI affine: world (RAS) = affine @ (index, 1)
        geometry = properties["nibabel_stuff"]
        affine = np.asarray(geometry.get("reoriented_affine", geometry["original_affine"]), dtype=float)
        ras = world * LPS_TO_RAS if space == "world_lps" else world
        return (np.linalg.inv(affine) @ np.append(ras, 1.0))[:3]
    raise ValueError(f"{where}: {space} coordinates need the image's geometry, which this image's reader-writer does "
                     f"not record (nnU-Net's SimpleITK and nibabel readers do); give voxel coordinates")


def read_clicks(path: str | os.PathLike, labels: Mapping[str, int], properties: dict,
                shape: Sequence[int], background: bool = False) -> list[Click]:
    """The clicks of ``path`` as voxel coordinates of the image array of ``shape`` (spatial axes, as read by nnU-Net,
    with the reader's ``properties``); ``labels`` is the model's dataset.json ``labels``; ``background``: clicks on
    background are allowed. Errors name the file, the click and what is wrong."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(content, dict) or not isinstance(content.get("clicks"), list):
        raise ValueError(f'{path}: expected an object with a "clicks" list, e.g. {{"space": "voxel", "clicks": '
                         f'[{{"label": 1, "point": [10, 20, 5]}}]}}')
    space = content.get("space", "voxel")
    if space not in SPACES:
        raise ValueError(f'{path}: "space" must be one of {SPACES}, got {space!r}')
    classes = class_values(labels, background)
    shape = tuple(shape)
    flat = len(shape) == 3 and shape[0] == 1  # a 2D image, read as (1, y, x)
    clicks = []
    for i, entry in enumerate(content["clicks"]):
        where = f"{path}, click {i} ({entry})"
        if not isinstance(entry, dict) or "label" not in entry or "point" not in entry:
            raise ValueError(f'{where}: each click needs a "label" and a "point"')
        label = classes.get(entry["label"]) if isinstance(entry["label"], str) else entry["label"]
        if isinstance(label, bool) or label not in classes.values():
            kind = "classes" if background else "foreground classes"
            raise ValueError(f"{where}: label must be one of the {kind} {classes}")
        point = entry["point"]
        dims = (len(shape) - 1, len(shape)) if flat else (len(shape),)
        if not isinstance(point, list) or len(point) not in dims or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point):
            raise ValueError(f"{where}: point must be {' or '.join(map(str, dims))} numbers for an image of shape "
                             f"{shape}")
        index = np.asarray(point, dtype=float)
        if space != "voxel":
            index = _index_from_world(index, space, properties, where)
        array_point = index[::-1]
        if len(array_point) < len(shape):
            array_point = np.concatenate([[0.0], array_point])
        if not all(-0.5 <= p < n - 0.5 for p, n in zip(array_point, shape)):
            raise ValueError(f"{where}: lies outside the image (voxel {tuple(np.round(index, 2))} in x, y(, z) "
                             f"order; the image has {shape[::-1]} voxels)")
        clicks.append(Click(int(label), tuple(float(p) for p in array_point)))
    return clicks
