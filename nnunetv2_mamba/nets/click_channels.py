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


def click_labels(num_classes: int, background: bool = False) -> tuple[int, ...]:
    """The label value of each click channel, in channel order: foreground labels 1..``num_classes`` - 1, then
    background (0) for a network that takes background clicks."""
    return tuple(range(1, num_classes)) + (0,) * background


def encode_click_channels(clicks: Iterable[Click], shape: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    """(``len(labels)``, *shape) float32 maps with 1 at each click (rounded to the nearest voxel) in the channel of
    its label; ``labels``: the label of each channel (:func:`click_labels`). Clicks must lie inside ``shape``."""
    channels = {label: channel for channel, label in enumerate(labels)}
    maps = np.zeros((len(channels), *shape), dtype=np.float32)
    for click in clicks:
        if click.label not in channels:
            raise ValueError(f"click {click}: label must be one of the network's click labels {list(labels)}"
                             f"{'' if 0 in channels else ' (it takes no background clicks)'}")
        voxel = tuple(int(round(c)) for c in click.point)
        if len(voxel) != len(shape) or not all(0 <= v < n for v, n in zip(voxel, shape)):
            raise ValueError(f"click {click} lies outside an array of shape {tuple(shape)}")
        maps[(channels[click.label], *voxel)] = 1
    return maps


def decode_click_channels(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Click maps (B, K, *spatial) -> voxel coordinates (B, N, ndim) float and class indices (B, N) long (the click's
    channel, :data:`PADDING` where a sample has fewer than N = the largest number of clicks in the batch)."""
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
