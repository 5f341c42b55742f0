"""How clicks reach a click-prompted network through nnU-Net: as extra input channels.

nnU-Net calls ``network(data)`` with one tensor, in training, in its sliding-window predictor and in its mirroring
test-time augmentation. Clicks therefore travel as extra channels appended after the image channels: ``K`` for
the foreground classes (channel ``k`` holds the clicks on label value ``k + 1``), then, for a network that takes
background clicks, one for background (label 0), with 1 at every clicked voxel and 0 elsewhere. Everything nnU-Net
does to its input then does the right thing to the clicks for free:

- a sliding-window tile ``data[:, slices]`` holds exactly the clicks inside it, in the tile's local coordinates;
- mirroring (``torch.flip``) mirrors them: a click at ``i`` moves to ``size - 1 - i``;
- padding to the patch size pads with zeros (no click), batching and DDP need no per-batch state;
- without the channels (stock ``nnUNetv2_predict``, nnU-Net's final validation) the network runs without clicks.

The network turns the channels back into a padded list of coordinates (:func:`decode_click_channels`), the form its
prompt encoder takes. Click positions are voxels: sub-voxel precision is not kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

PADDING = -1  # class index of the padding entries of decoded clicks


class Click(NamedTuple):
    """A click on the structure of label value ``label`` at ``point``: array (voxel) coordinates, in the axis order of
    the array the click belongs to."""

    label: int
    point: tuple[float, ...]


def click_channel(label: int, num_click_classes: int, background: bool = False) -> int:
    """The channel of a click on ``label``: ``label - 1`` for foreground labels 1..K, the last channel for background
    (label 0) when ``background``; K = ``num_click_classes`` - ``background``."""
    foreground = num_click_classes - background
    if not (1 <= label <= foreground or (background and label == 0)):
        allowed = f"0..{foreground}" if background else f"1..{foreground}"
        raise ValueError(f"click on label {label}: label must be {'a' if background else 'a foreground'} label "
                         f"{allowed}")
    return (label - 1) % num_click_classes


def encode_click_channels(clicks: Iterable[Click], shape: Sequence[int], num_click_classes: int,
                          background: bool = False) -> np.ndarray:
    """(``num_click_classes``, *shape) float32 maps with 1 at each click (rounded to the nearest voxel) in the channel
    of its class (:func:`click_channel`). Clicks must lie inside ``shape``."""
    maps = np.zeros((num_click_classes, *shape), dtype=np.float32)
    for click in clicks:
        try:
            channel = click_channel(click.label, num_click_classes, background)
        except ValueError as e:
            raise ValueError(f"click {click}: {e}") from None
        voxel = tuple(int(round(c)) for c in click.point)
        if len(voxel) != len(shape) or not all(0 <= v < n for v, n in zip(voxel, shape)):
            raise ValueError(f"click {click} lies outside an array of shape {tuple(shape)}")
        maps[(channel, *voxel)] = 1
    return maps


def decode_click_channels(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Click maps (B, K, *spatial) -> voxel coordinates (B, N, ndim) float and class indices (B, N) long (label value
    - 1, :data:`PADDING` where a sample has fewer than N = the largest number of clicks in the batch)."""
    batch = maps.shape[0]
    hits = torch.nonzero(maps > 0.5)  # (M, 2 + ndim) in lexicographic order: grouped by sample
    sample = hits[:, 0]
    counts = torch.bincount(sample, minlength=batch)
    n = int(counts.max()) if hits.shape[0] else 0
    slot = torch.arange(hits.shape[0], device=maps.device) - (torch.cumsum(counts, 0) - counts)[sample]
    coords = torch.zeros(batch, n, maps.ndim - 2, device=maps.device)
    classes = torch.full((batch, n), PADDING, dtype=torch.long, device=maps.device)
    coords[sample, slot] = hits[:, 2:].float()
    classes[sample, slot] = hits[:, 1]
    return coords, classes
