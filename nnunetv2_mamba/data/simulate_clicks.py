"""Simulated clicks for training (and evaluating) click-prompted networks, after U-Mamba2's ToothFairy3 task 2 setup,
which follows the challenge's own click simulation.

With probability ``unprompted_probability`` a sample gets no clicks at all, as DeepEdit trains half of its samples
without clicks: a network that always sees clicks learns to segment only what is clicked. Otherwise, per foreground
class present in a label map (with at least ``min_voxels`` voxels): with probability ``no_click_probability`` no
click, so the network also learns to segment an unclicked structure beside clicked ones; otherwise 1 to
``max_clicks`` clicks, spread along one ``axis`` over the slices the structure occupies, as an annotator clicks a
structure in a few slices from one end to the other (the inferior alveolar canal along the axial slices). Each click
lies inside its structure: the voxel of the structure in its slice nearest to a jittered point about the structure's
median in that slice (near the middle of a blob, on a ring for a ring). Background (label 0), for networks that take
background clicks, is clicked like a structure, at random voxels within ``background_band`` voxels of the
foreground, where false positives lie. Everything is drawn from the ``rng`` given.

For evaluating a prompted network as an annotator uses it, :func:`correction_clicks` places clicks deterministically
where a prediction misses, one round at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnunetv2_mamba.nets.click_channels import Click


@dataclass(frozen=True)
class ClickSimulation:
    """How clicks are simulated. Per structure, U-Mamba2's values by default (no click for 10 % of the structures,
    1-10 clicks, structures of more than 10 voxels, spread along axis 0); per sample, DeepEdit's: half of the samples
    unprompted, so one model serves automatic and interactive use. ``unprompted_probability=0`` is U-Mamba2's
    simulation. ``jitter`` scales the in-slice noise by the structure's in-slice standard deviation."""

    no_click_probability: float = 0.1
    max_clicks: int = 10
    min_voxels: int = 11
    axis: int = 0
    jitter: float = 0.5
    unprompted_probability: float = 0.5
    background_band: int = 10

    def __post_init__(self):
        if not (0 <= self.no_click_probability <= 1 and 0 <= self.unprompted_probability <= 1) or \
                self.max_clicks < 1 or self.min_voxels < 1 or self.jitter < 0 or self.background_band < 1:
            raise ValueError(f"invalid click simulation {self}: need probabilities in [0, 1], max_clicks >= 1, "
                             f"min_voxels >= 1, jitter >= 0, background_band >= 1")


def clicks_in_structure(mask: np.ndarray, count: int, rng: np.random.Generator, axis: int = 0,
                        jitter: float = 0.5) -> list[tuple[int, ...]]:
    """``count`` voxels of the non-empty boolean ``mask`` spread along ``axis``: slice positions at evenly spaced
    quantiles (each shifted by up to half a step) of the structure's slices, one voxel per position (duplicates
    merged when the structure spans fewer slices than ``count``)."""
    voxels = np.argwhere(mask)
    slices = np.unique(voxels[:, axis])
    quantiles = (np.arange(count) + 0.5 + rng.uniform(-0.5, 0.5, count)) / count
    chosen = slices[np.round(quantiles * (len(slices) - 1)).astype(int)]
    points = []
    for position in np.unique(chosen):
        in_slice = voxels[voxels[:, axis] == position]
        target = np.median(in_slice, axis=0) + rng.normal(0, 1, mask.ndim) * jitter * in_slice.std(axis=0)
        points.append(tuple(int(v) for v in in_slice[np.argmin(((in_slice - target) ** 2).sum(axis=1))]))
    return points


def background_near_foreground(label_map: np.ndarray, band: int) -> np.ndarray:
    """Background voxels within ``band`` voxels (Euclidean) of a foreground voxel; none without foreground."""
    from scipy import ndimage

    background = label_map == 0
    if background.all():
        return np.zeros_like(background)
    return background & (ndimage.distance_transform_edt(background) <= band)


def simulate_clicks(label_map: np.ndarray, labels: Sequence[int], rng: np.random.Generator,
                    simulation: ClickSimulation = ClickSimulation()) -> list[Click]:
    """Clicks on the structures of ``labels`` (label values; 0 for background clicks) in ``label_map`` (2D or 3D)."""
    if not 0 <= simulation.axis < label_map.ndim:
        raise ValueError(f"click axis {simulation.axis} does not exist in a {label_map.ndim}D label map")
    if rng.uniform() < simulation.unprompted_probability:
        return []
    clicks = []
    for label in labels:
        mask = background_near_foreground(label_map, simulation.background_band) if label == 0 else \
            label_map == label
        if np.count_nonzero(mask) < simulation.min_voxels or rng.uniform() < simulation.no_click_probability:
            continue
        count = int(rng.integers(1, simulation.max_clicks + 1))
        if label == 0:
            voxels = np.argwhere(mask)
            points = [tuple(int(v) for v in voxels[i]) for i in rng.choice(len(voxels), min(count, len(voxels)), replace=False)]
        else:
            points = clicks_in_structure(mask, count, rng, simulation.axis, simulation.jitter)
        clicks += [Click(int(label), point) for point in points]
    return clicks


def correction_clicks(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int],
                      exclude: Sequence[Sequence[int]] = ()) -> list[Click]:
    """One click per class of ``labels`` that ``prediction`` misses somewhere, as an annotator corrects a prediction:
    at the centre of the largest connected component (full connectivity) of the class's missed voxels (``reference``
    has the class, ``prediction`` another), the voxel farthest from the component's border (the maximum of its
    Euclidean distance transform, the array's edge counting as border; the first in array order on ties). Voxels in
    ``exclude`` (earlier clicks) are left out of the missed voxels, so a click that did not correct its region is
    followed by another one. A false positive of one class on another class's ground is that class's miss; one on
    background is background's miss, clicked only with 0 in ``labels`` (a network that takes background clicks)."""
    from scipy import ndimage

    missed = reference != prediction
    for point in exclude:
        missed[tuple(int(v) for v in point)] = False
    clicks = []
    for label in labels:
        components, count = ndimage.label(missed & (reference == label), np.ones((3,) * reference.ndim))
        if not count:
            continue
        largest = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
        distance = ndimage.distance_transform_edt(np.pad(largest, 1))[(slice(1, -1),) * reference.ndim]
        clicks.append(Click(int(label), tuple(int(v) for v in np.unravel_index(np.argmax(distance), largest.shape))))
    return clicks
