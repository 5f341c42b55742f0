"""Per-volume scoring of 2D predictions: the literature on ACDC scribbles (WSL4MIS, Weak-Mamba-UNet) trains and
predicts slice by slice but reports Dice, HD95 and ASD per 3D volume, in mm. ``convert-h5 --mode 2d`` names a slice
``<volume>_slice<NN>``; :func:`stack_slices` puts a folder of such slices back together."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_mamba.data.scribble_dataset import FILE_ENDING, write_image

SLICE = re.compile(r"(?P<volume>.+)_slice(?P<index>\d+)$")


def slices_by_volume(names: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """``{volume: [(slice index, name), ...]}`` sorted by index, for case names ``<volume>_slice<NN>``."""
    volumes: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = SLICE.match(name)
        if match is None:
            raise ValueError(f"case {name!r} is not named <volume>_slice<NN> (as convert-h5 --mode 2d names slices)")
        volumes.setdefault(match["volume"], []).append((int(match["index"]), name))
    return {volume: sorted(slices) for volume, slices in sorted(volumes.items())}


def stack_slices(folder: str | os.PathLike, output: str | os.PathLike, slice_spacing: float,
                 file_ending: str = FILE_ENDING) -> list[str]:
    """Write every volume of the 2D files ``folder/<volume>_slice<NN><file_ending>`` as one 3D file
    ``output/<volume><file_ending>`` (slices in index order, ``slice_spacing`` mm apart, the slices' in-plane spacing);
    returns the volumes. A volume whose slice indices leave a gap (distances across it would be wrong) or whose
    slices differ in shape is an error; a run of consecutive slices (a subset of a volume) is scored as it is."""
    folder, output = Path(folder), Path(output)
    files = sorted(p for p in folder.glob(f"*{file_ending}") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no files ending in {file_ending}")
    output.mkdir(parents=True, exist_ok=True)
    volumes = slices_by_volume([f.name[:-len(file_ending)] for f in files])
    for volume, slices in volumes.items():
        indices = [index for index, _ in slices]
        if indices != list(range(indices[0], indices[0] + len(slices))):
            raise ValueError(f"{folder}: volume {volume} has slices {indices}, with a gap; score the volume's slices "
                             f"from {indices[0]} to {indices[-1]} or each slice alone")
        images = [sitk.ReadImage(str(folder / f"{name}{file_ending}")) for _, name in slices]
        arrays = [sitk.GetArrayFromImage(image) for image in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{folder}: the slices of volume {volume} differ in shape: {sorted(shapes)}")
        in_plane = tuple(reversed(images[0].GetSpacing()))  # (rows, columns)
        write_image(np.stack(arrays), (slice_spacing, *in_plane), output / f"{volume}{file_ending}")
    return list(volumes)


def stack_references(reference: str | os.PathLike, names: Sequence[str], output: str | os.PathLike,
                     slice_spacing: float, file_ending: str = FILE_ENDING) -> list[str]:
    """:func:`stack_slices` of the reference slices ``names`` only (file names, e.g. those of a prediction folder:
    a reference folder may hold more cases than were predicted); a missing reference is an error."""
    reference = Path(reference)
    missing = [name for name in names if not (reference / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{reference}: no reference for prediction(s) {missing[:10]}")
    with tempfile.TemporaryDirectory() as selected:
        for name in names:
            os.symlink((reference / name).resolve(), Path(selected) / name)
        return stack_slices(selected, output, slice_spacing, file_ending)
