"""Click simulation: clicks inside their structure, spread along the axis, seeded; the training transform computes
them after nnU-Net's augmentation (they lie inside the augmented target) and the trainer inserts it where the target
is still one map."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mamba.data.simulate_clicks import (ClickSimulation, background_near_foreground, clicks_in_structure,
                                                 correction_clicks, simulate_clicks)
from nnunetv2_mamba.data.synthetic import synthetic_case
from nnunetv2_mamba.nets.click_channels import Click
from nnunetv2_mamba.training.nnUNetTrainerClicks import (SimulateClicksTransform, nnUNetTrainerClicks,
                                                         nnUNetTrainerClicksUMamba2)

ALWAYS = ClickSimulation(no_click_probability=0.0, unprompted_probability=0.0)


def synthetic_label(dims: int, seed: int) -> np.ndarray:
    shape, spacing = ((64, 64), (1.0, 1.0)) if dims == 2 else ((24, 40, 40), (2.0, 1.0, 1.0))
    return synthetic_case(np.random.default_rng(seed), shape, spacing)[1]


@pytest.mark.parametrize("dims", [2, 3])
def test_clicks_lie_inside_their_structure(dims):
    for seed in range(5):
        label = synthetic_label(dims, seed)
        clicks = simulate_clicks(label, [1, 2, 3], np.random.default_rng(seed), ALWAYS)
        assert {c.label for c in clicks} == {1, 2, 3}  # every structure clicked when both probabilities are 0
        for click in clicks:
            assert label[click.point] == click.label, click  # the ring's clicks on the ring, not in its cavity


def test_clicks_spread_along_the_axis():
    mask = np.zeros((40, 20, 20), dtype=bool)
    mask[10:30, 5:9, 5:9] = True  # a rod along axis 0, slices 10..29
    for seed in range(10):
        points = clicks_in_structure(mask, 5, np.random.default_rng(seed), axis=0)
        positions = sorted(p[0] for p in points)
        assert len(points) == 5 and len(set(positions)) == 5  # one click per stratum of the rod's slices
        for k, position in enumerate(positions):  # the k-th lies in the k-th fifth of the rod
            assert 10 + 4 * k - 1 <= position <= 10 + 4 * k + 4, (seed, positions)
        assert all(mask[p] for p in points)
    # along axis 2 the same rod spans slices 5..8 only: clicks merge per slice instead of repeating
    points = clicks_in_structure(mask, 10, np.random.default_rng(0), axis=2)
    assert len(points) == len({p[2] for p in points}) <= 4 and all(5 <= p[2] <= 8 for p in points)


def test_simulation_options_and_seeding():
    label = synthetic_label(2, 0)
    first, again = (simulate_clicks(label, [1, 2, 3], np.random.default_rng(7)) for _ in range(2))
    assert first == again and first != simulate_clicks(label, [1, 2, 3], np.random.default_rng(8))
    assert simulate_clicks(label, [1, 2, 3], np.random.default_rng(0), ClickSimulation(no_click_probability=1)) == []
    counts = [len(simulate_clicks(label, [2], np.random.default_rng(s),
                                  ClickSimulation(0, max_clicks=3, unprompted_probability=0))) for s in range(30)]
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1
    big = int((label == 2).sum()) + 1
    assert simulate_clicks(label, [2], np.random.default_rng(0), ClickSimulation(0, min_voxels=big)) == []

    def unclicked(simulation: ClickSimulation) -> np.ndarray:
        """Per seed: which of the three structures got no click."""
        clicked = [{c.label for c in simulate_clicks(label, [1, 2, 3], np.random.default_rng(s), simulation)}
                   for s in range(400)]
        return np.array([[value not in labels for value in (1, 2, 3)] for labels in clicked])

    per_structure = unclicked(ClickSimulation(0.5, unprompted_probability=0))
    assert 0.4 < per_structure.mean() < 0.6 and 0.07 < per_structure.all(1).mean() < 0.19  # all three: 1/8
    per_sample = unclicked(ClickSimulation(0, unprompted_probability=0.5))
    assert (per_sample.all(1) | ~per_sample.any(1)).all() and 0.4 < per_sample.all(1).mean() < 0.6  # all or none
    default = unclicked(ClickSimulation())  # unprompted half the time, otherwise U-Mamba2's 10 % per structure
    assert 0.4 < default.all(1).mean() < 0.6 and 0.5 * 0.1 * 0.5 < (default.any(1) & ~default.all(1)).mean() < 0.25
    with pytest.raises(ValueError, match="axis 2 does not exist"):
        simulate_clicks(label, [1], np.random.default_rng(0), ClickSimulation(axis=2))
    for invalid in ({"max_clicks": 0}, {"unprompted_probability": 1.5}):
        with pytest.raises(ValueError, match="invalid click simulation"):
            ClickSimulation(**invalid)


def test_correction_clicks_mark_the_centre_of_the_largest_miss_of_each_class():
    reference = np.zeros((16, 16), np.uint8)
    reference[1:12, 1:12] = 1
    reference[13:16, 6:9] = 2  # a 3 x 3 structure on the array's bottom edge
    prediction = reference.copy()
    prediction[2:7, 2:7] = 0  # class 1 misses a 5 x 5 block (centre (4, 4)) ...
    prediction[9:11, 9:11] = 0  # ... and a smaller 2 x 2 one
    prediction[13:16, 6:9] = 1  # class 2 predicted as class 1: class 2's miss, not a click of class 1
    prediction[0, 15] = 3  # a false positive on background: no click
    # the edge counts as border: (14, 7), not (15, 7), which is 3 pixels from the structure's top and 1 from the edge
    assert correction_clicks(prediction, reference, [1, 2, 3]) == [Click(1, (4, 4)), Click(2, (14, 7))]
    # earlier clicks leave the missed voxels: the next click goes elsewhere (ties: the first in array order)
    assert correction_clicks(prediction, reference, [1, 2, 3], exclude=[(4, 4), (14, 7)]) == [
        Click(1, (3, 3)), Click(2, (13, 6))]
    assert correction_clicks(reference, reference, [1, 2, 3]) == []
    volume = np.zeros((5, 5, 5), np.uint8)
    volume[1:4, 1:4, 1:4] = 2
    assert correction_clicks(np.zeros_like(volume), volume, [2]) == [Click(2, (2, 2, 2))]


def stub_trainer(num_labels: int = 3, network=SimpleNamespace(click_labels=(1, 2, 3)), regions: bool = False,
                 kind: type[nnUNetTrainerClicks] = nnUNetTrainerClicks) -> nnUNetTrainerClicks:
    """A trainer with just what the click transforms need (a real one needs a preprocessed dataset)."""
    trainer = kind.__new__(kind)
    trainer.label_manager = SimpleNamespace(has_regions=regions, foreground_regions=[[1, 2], [2]],
                                            foreground_labels=list(range(1, num_labels + 1)))
    trainer.network = network
    return trainer


@pytest.mark.parametrize("dims", [2, 3])
def test_clicks_follow_nnunet_augmentation(dims):
    """Through nnU-Net's full training pipeline (rotation, scaling, mirroring, ...; deep supervision): click channels
    are appended, and every clicked voxel lies in its class in the augmented full-resolution target."""
    np.random.seed(0)
    torch.manual_seed(0)
    patch = (48, 48) if dims == 2 else (16, 32, 32)
    strides = [[1] * dims, [2] * dims, [2] * dims]
    scales = [[1.0] * dims, [0.5] * dims]
    pipeline = stub_trainer().get_training_transforms(
        patch, (-np.pi, np.pi), scales, tuple(range(dims)), False, use_mask_for_norm=[False],
        foreground_labels=[1, 2, 3])
    steps = [type(t) for t in pipeline.transforms]
    assert steps.index(SimulateClicksTransform) == steps.index(DownsampleSegForDSTransform) - 1
    label = synthetic_label(dims, 1)
    initial = label.shape  # the dataloader's larger initial patch, cropped to `patch` by the spatial transform
    image = torch.from_numpy(label[None].astype(np.float32)) + torch.randn(1, *initial) * 0.1
    clicked = 0
    for _ in range(4):
        out = pipeline(image=image.clone(), segmentation=torch.from_numpy(label[None].astype(np.int16)))
        assert out["image"].shape == (1 + 3, *patch) and len(out["segmentation"]) == len(strides) - 1
        target = out["segmentation"][0][0]
        for k in range(3):
            voxels = torch.nonzero(out["image"][1 + k])
            assert (target[tuple(voxels.T)] == k + 1).all()
            clicked += len(voxels)
    assert clicked > 0
    assert type(nnUNetTrainer.get_validation_transforms(scales).transforms[-1]) is DownsampleSegForDSTransform
    validation = stub_trainer().get_validation_transforms(scales)
    assert SimulateClicksTransform in [type(t) for t in validation.transforms]


def test_trainer_refuses_what_it_cannot_click():
    with pytest.raises(ValueError, match="region-based"):
        stub_trainer(regions=True).get_validation_transforms(None)
    with pytest.raises(TypeError, match="nnunetv2_mamba plans -d DATASET -a UMambaBot2Click"):
        stub_trainer(network=torch.nn.Conv2d(1, 4, 1)).get_validation_transforms(None)
    pipeline = stub_trainer().get_validation_transforms(None)  # no deep supervision: appended at the end
    assert type(pipeline.transforms[-1]) is SimulateClicksTransform


def test_default_trainer_leaves_half_the_patches_unprompted():
    """nnUNetTrainerClicks feeds click-free patches about half of the time, so the model learns to segment
    unprompted; U-Mamba2's variant prompts every patch whose structures are all large enough."""
    label = torch.from_numpy(synthetic_label(2, 0)[None].astype(np.int16))
    np.random.seed(0)
    unprompted = {}
    for kind in (nnUNetTrainerClicks, nnUNetTrainerClicksUMamba2):
        pipeline = stub_trainer(kind=kind).get_validation_transforms(None)
        samples = [pipeline(image=torch.zeros(1, *label.shape[1:]), segmentation=label.clone()) for _ in range(100)]
        unprompted[kind] = np.mean([not sample["image"][1:].any() for sample in samples])
    assert 0.35 < unprompted[nnUNetTrainerClicks] < 0.65 and unprompted[nnUNetTrainerClicksUMamba2] < 0.02


@pytest.mark.parametrize("dims", [2, 3])
def test_background_clicks_lie_on_background_near_the_foreground(dims):
    from scipy import ndimage

    label = synthetic_label(dims, 3)
    band = background_near_foreground(label, 4)
    distance = ndimage.distance_transform_edt(label == 0)
    assert band.any() and (label[band] == 0).all() and (distance[band] <= 4).all()
    assert not background_near_foreground(np.zeros_like(label), 4).any()  # no foreground: nowhere to click
    simulation = ClickSimulation(no_click_probability=0, unprompted_probability=0, background_band=4)
    for seed in range(10):
        clicks = simulate_clicks(label, [1, 0], np.random.default_rng(seed), simulation)
        background = [c.point for c in clicks if c.label == 0]
        assert 1 <= len(background) <= 10 and len(set(background)) == len(background)
        assert all(band[p] for p in background)
    assert simulate_clicks(np.zeros_like(label), [0], np.random.default_rng(0), simulation) == []


def test_correction_clicks_on_background_mark_false_positives():
    reference = np.zeros((16, 16), np.uint8)
    reference[2:6, 2:6] = 1
    prediction = reference.copy()
    prediction[9:14, 9:14] = 1  # a false positive 5 x 5, centre (11, 11)
    assert correction_clicks(prediction, reference, [1]) == []  # no class misses anything
    assert correction_clicks(prediction, reference, [1, 0]) == [Click(0, (11, 11))]


def test_trainer_feeds_background_clicks_to_a_network_that_takes_them():
    network = SimpleNamespace(click_labels=(1, 2, 3, 0))
    pipeline = stub_trainer(network=network).get_validation_transforms(None)
    label = torch.from_numpy(synthetic_label(2, 0)[None].astype(np.int16))
    np.random.seed(1)
    background_clicks = 0
    for _ in range(20):
        sample = pipeline(image=torch.zeros(1, *label.shape[1:]), segmentation=label.clone())
        assert sample["image"].shape == (1 + 4, *label.shape[1:])
        for channel, value in enumerate([1, 2, 3, 0]):
            assert (label[0][sample["image"][1 + channel] > 0] == value).all()
        background_clicks += int(sample["image"][4].sum())
    assert background_clicks > 0
    with pytest.raises(TypeError, match=r"takes clicks on \[1, 2, 3, 4\]"):
        stub_trainer(network=SimpleNamespace(click_labels=(1, 2, 3, 4))).get_validation_transforms(None)
