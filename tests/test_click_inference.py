"""Clicks at inference: click files (voxel and world coordinates), mapping through nnU-Net's preprocessing (transpose,
crop, resampling) checked against nnU-Net's own preprocessor, sliding-window tiles and mirroring checked with a stub
network inside nnU-Net's predictor, U-Mamba2's click post-processing."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from scipy import ndimage
from torch import nn

from nnunetv2_mamba.inference.click_predictor import (ball_offsets, clicks_to_preprocessed,
                                                      force_click_neighbourhoods, nnUNetClickPredictor)
from nnunetv2_mamba.inference.clicks_file import read_clicks
from nnunetv2_mamba.nets.click_channels import PADDING, Click, decode_click_channels, encode_click_channels

LABELS = {"background": 0, "ring": 1, "cavity": 2}
DATASET_JSON = {"labels": LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": 1}


def write_json(path, content) -> str:
    path.write_text(json.dumps(content))
    return str(path)


# --- click files ---------------------------------------------------------------------------------------------------

def test_voxel_clicks_are_read_in_array_order(tmp_path):
    f = write_json(tmp_path / "c.json", {"clicks": [{"label": "ring", "point": [5, 2, 1]},
                                                     {"label": 2, "point": [0.2, 3.4, 6]}]})
    clicks = read_clicks(f, LABELS, {}, (7, 4, 6))  # array (z, y, x); points (x, y, z)
    assert clicks == [Click(1, (1.0, 2.0, 5.0)), Click(2, (6.0, 3.4, 0.2))]
    flat = write_json(tmp_path / "flat.json", {"space": "voxel", "clicks": [{"label": 1, "point": [5, 2]}]})
    assert read_clicks(flat, LABELS, {}, (1, 4, 6)) == [Click(1, (0.0, 2.0, 5.0))]  # a 2D image, read as (1, y, x)
    background = write_json(tmp_path / "bg.json", {"clicks": [{"label": "background", "point": [1, 2, 3]},
                                                               {"label": 0, "point": [0, 0, 0]}]})
    assert read_clicks(background, LABELS, {}, (7, 4, 6), background=True) == [Click(0, (3.0, 2.0, 1.0)),
                                                                                Click(0, (0.0, 0.0, 0.0))]
    with pytest.raises(ValueError, match="one of the foreground classes"):
        read_clicks(background, LABELS, {}, (7, 4, 6))


@pytest.mark.parametrize("content, message", [
    ({"clicks": [{"label": "blob", "point": [1, 1, 1]}]}, "foreground classes"),
    ({"clicks": [{"label": 0, "point": [1, 1, 1]}]}, "foreground classes"),
    ({"clicks": [{"label": 1, "point": [1, 1]}]}, "point must be 3 numbers"),
    ({"clicks": [{"label": 1, "point": [6, 1, 1]}]}, "lies outside the image"),
    ({"clicks": [{"point": [1, 1, 1]}]}, 'needs a "label" and a "point"'),
    ({"space": "ijk", "clicks": []}, '"space" must be one of'),
    ({"space": "world_lps", "clicks": [{"label": 1, "point": [0, 0, 0]}]}, "give voxel coordinates"),
    ([1, 2], 'expected an object with a "clicks" list'),
])
def test_bad_click_files_are_explained(tmp_path, content, message):
    f = write_json(tmp_path / "bad.json", content)
    with pytest.raises(ValueError, match=message) as error:
        read_clicks(f, LABELS, {}, (4, 4, 6))
    assert "bad.json" in str(error.value)


@pytest.mark.parametrize("space", ["world_lps", "world_ras"])
def test_world_clicks_through_simpleitk_geometry(tmp_path, space):
    image = sitk.GetImageFromArray(np.zeros((6, 7, 8), dtype=np.float32))
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((-20.0, 11.0, 3.5))
    rotation = sitk.VersorTransform((0.3, -0.2, 1.0), 0.6).GetMatrix()
    image.SetDirection(rotation)
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    _, properties = SimpleITKIO().read_images([str(tmp_path / "img.nii.gz")])
    index = (2.5, 4.0, 1.25)  # x, y, z
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint(index))
    world = lps * [-1, -1, 1] if space == "world_ras" else lps
    f = write_json(tmp_path / "c.json", {"space": space, "clicks": [{"label": 1, "point": world.tolist()}]})
    [click] = read_clicks(f, LABELS, properties, (6, 7, 8))
    np.testing.assert_allclose(click.point, index[::-1], atol=1e-6)


def test_world_clicks_through_nibabel_geometry(tmp_path):
    affine = np.array([[0.0, -1.5, 0, 30], [0.8, 0, 0, -12], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    nibabel.save(nibabel.Nifti1Image(np.zeros((6, 7, 8), dtype=np.float32), affine), str(tmp_path / "img.nii.gz"))
    data, properties = NibabelIOWithReorient().read_images([str(tmp_path / "img.nii.gz")])
    reoriented = properties["nibabel_stuff"]["reoriented_affine"]
    index = np.array([1.5, 2.0, 6.0])  # i, j, k of the reoriented image
    ras = (reoriented @ np.append(index, 1))[:3]
    f = write_json(tmp_path / "c.json", {"space": "world_lps", "clicks": [{"label": 2, "point": (ras * [-1, -1, 1])
                                                                            .tolist()}]})
    [click] = read_clicks(f, LABELS, properties, data.shape[1:])
    np.testing.assert_allclose(click.point, index[::-1], atol=1e-6)


# --- nnU-Net's preprocessing ---------------------------------------------------------------------------------------

def crafted_plans(spacing, patch_size, transpose_forward=(2, 0, 1)) -> dict:
    """Plans of one 3D configuration that transposes, crops and resamples (nnU-Net's default functions)."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Crafted", "plans_name": "crafted", "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward),
        "transpose_backward": [int(i) for i in np.argsort(transpose_forward)],
        "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [10] * 3,
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0, "std": 1, "percentile_00_5": -1,
                                                              "percentile_99_5": 1}},
        "configurations": {"3d_fullres": {
            "data_identifier": "crafted", "preprocessor_name": "DefaultPreprocessor", "batch_size": 1,
            "patch_size": list(patch_size), "median_image_size_in_voxels": [10] * 3, "spacing": list(spacing),
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "batch_dice": False,
            "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []}}},
    }


SHAPE, SPACING = (12, 34, 30), (3.0, 1.0, 0.8)  # array (z, y, x) and nnU-Net's spacing of it
NONZERO = (slice(2, 11), slice(4, 31), slice(3, 27))  # the rest is 0: cropped away by nnU-Net
TARGET_SPACING = (1.2, 2.0, 0.7)  # transposed (x, z, y): x 0.8 -> 1.2, z 3 -> 2 (separate z), y 1 -> 0.7


def crafted_image(peaks) -> np.ndarray:
    image = np.zeros(SHAPE, dtype=np.float32)
    image[NONZERO] = 1
    for peak in peaks:
        blob = np.zeros(SHAPE)
        blob[peak] = 1
        image[NONZERO] += 40 * ndimage.gaussian_filter(blob, (1.0, 2.5, 3.0))[NONZERO]
    return image


@pytest.mark.parametrize("peak", [(6, 15, 14), (5, 20, 16), (7, 13, 13)])
def test_clicks_follow_transpose_crop_and_resampling(peak):
    """A click on a bright blob lands on that blob's centre of mass in nnU-Net's preprocessed image (to 0.1 voxel;
    forgetting the half-voxel alignment of the resampling would miss by 0.2 to 0.3)."""
    plans = PlansManager(crafted_plans(TARGET_SPACING, (8, 8, 8)))
    configuration = plans.get_configuration("3d_fullres")
    data, _, properties = DefaultPreprocessor(verbose=False).run_case_npy(
        crafted_image([peak])[None], None, {"spacing": list(SPACING)}, plans, configuration, DATASET_JSON)
    [click] = clicks_to_preprocessed([Click(1, tuple(map(float, peak)))], properties, plans.transpose_forward,
                                     data.shape[1:])
    assert data.shape[1:] != tuple(n[1] - n[0] for n in properties["bbox_used_for_cropping"])  # resampled
    blob = np.clip(data[0] - np.median(data[0]), 0, None)  # the crop left only the flat region and the blob
    np.testing.assert_allclose(click.point, ndimage.center_of_mass(blob), atol=0.1)


def test_clicks_in_the_cropped_away_region_are_dropped(caplog):
    properties = {"bbox_used_for_cropping": [[2, 9], [0, 5]], "shape_after_cropping_and_before_resampling": (7, 5)}
    kept = clicks_to_preprocessed([Click(1, (1.0, 3.0)), Click(2, (8.0, 4.0))], properties, (0, 1), (14, 5))
    assert kept == [Click(2, (12.5, 4.0))] and "nonzero region" in caplog.text  # (6 + 0.5) * 2 - 0.5


# --- sliding-window tiles and mirroring ----------------------------------------------------------------------------

class PaintClicks(nn.Module):
    """A stand-in click-prompted network: its logits are bumps at the clicks it decodes from its input (tile-local),
    background 0.5 elsewhere. Given ``global_clicks`` (global voxel id -> label), the image channel must hold each
    voxel's global id, and every call checks that each click it sees sits on the voxel of a global click of the same
    class and that it sees every click of its tile, also in mirrored tiles."""

    click_labels = (1, 2)

    def __init__(self, global_clicks: dict[int, int] | None = None):
        super().__init__()
        self.global_clicks, self.calls, self.clicks_seen = global_clicks, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        coords, classes = decode_click_channels(x[:, 1:])
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in x.shape[2:]],
                                          indexing="ij"), dim=-1)
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, 0] = 0.5
        for b in range(x.shape[0]):
            valid = classes[b] != PADDING
            self.clicks_seen += int(valid.sum())
            if self.global_clicks is not None:
                ids = x[b, 0]
                in_tile = {int(i) for i in ids.flatten()} & set(self.global_clicks)
                seen = [(int(ids[tuple(c.long())]), int(k) + 1) for c, k in zip(coords[b][valid], classes[b][valid])]
                assert sorted(seen) == sorted((i, self.global_clicks[i]) for i in in_tile)
            for c, k in zip(coords[b][valid], classes[b][valid]):
                out[b, k + 1] += torch.exp(-((grid - c) ** 2).sum(-1) / (2 * 1.5 ** 2))
        return out


def stub_predictor(network: nn.Module, plans: dict, mirroring: bool, predictor_class=nnUNetPredictor):
    predictor = predictor_class(tile_step_size=0.5, use_mirroring=mirroring, device=torch.device("cpu"),
                                allow_tqdm=False)
    manager = PlansManager(plans)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), [{}], DATASET_JSON,
                                    "stub", (0, 1, 2) if len(plans["configurations"]["3d_fullres"]["patch_size"]) == 3
                                    else (0, 1))
    return predictor


@pytest.mark.parametrize("patch", [(6, 8, 8), (8, 8)])  # 3D tiles; 2D tiles of a 3D volume (a 2d configuration)
def test_tiles_see_their_clicks_in_local_coordinates_and_mirrored(patch):
    shape = (9, 20, 14)
    clicks = [Click(1, (1, 3, 2)), Click(2, (4, 10, 7)), Click(1, (8, 19, 13)), Click(2, (5, 11, 0))]
    ids = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape)
    data = torch.cat([ids, torch.from_numpy(encode_click_channels(clicks, shape, (1, 2)))])
    flat_ids = {int(np.ravel_multi_index(c.point, shape)): c.label for c in clicks}
    logits = {}
    for mirroring in (False, True):
        network = PaintClicks(flat_ids)
        plans = crafted_plans((1.0, 1.0) if len(patch) == 2 else (1.0,) * 3, patch)
        logits[mirroring] = stub_predictor(network, plans, mirroring).predict_logits_from_preprocessed_data(data)
        assert network.calls > 1 + 3 * mirroring and network.clicks_seen >= len(clicks)
    # mirrored tiles see mirrored clicks, so the (flip-equivariant) stub predicts the same with and without mirroring
    torch.testing.assert_close(logits[True], logits[False], atol=2e-3, rtol=2e-3)
    for click in clicks:
        assert logits[True][(slice(None), *click.point)].argmax() == click.label


def test_predict_case_maps_clicks_through_preprocessing_and_back(tmp_path):
    """End to end on a crafted case (transpose, crop, resampling): clicks read in x, y, z voxel order from JSON come
    back as their class at their voxel of the original image."""
    clicks = [Click(1, (6.0, 15.0, 12.0)), Click(2, (3.0, 28.0, 24.0)), Click(1, (9.0, 6.0, 5.0))]
    image = sitk.GetImageFromArray(crafted_image([]))
    image.SetSpacing(SPACING[::-1])
    sitk.WriteImage(image, str(tmp_path / "case_0000.nii.gz"))
    clicks_file = write_json(tmp_path / "case.json", {"clicks": [{"label": c.label, "point": list(c.point[::-1])}
                                                                 for c in clicks]})
    plans = crafted_plans(TARGET_SPACING, (8, 10, 12))
    predictor = stub_predictor(PaintClicks(), plans, mirroring=True, predictor_class=nnUNetClickPredictor)
    segmentation, _ = predictor.predict_case([str(tmp_path / "case_0000.nii.gz")], clicks_file)
    assert segmentation.shape == SHAPE
    for click in clicks:
        assert segmentation[tuple(int(p) for p in click.point)] == click.label
    unprompted, _ = predictor.predict_case([str(tmp_path / "case_0000.nii.gz")])
    assert not unprompted.any()


def test_models_without_clicks_are_refused():
    predictor = stub_predictor(nn.Identity(), crafted_plans((1.0,) * 3, (8, 8, 8)), mirroring=False,
                               predictor_class=nnUNetClickPredictor)
    with pytest.raises(ValueError, match="Identity takes no clicks"):
        predictor.predict_case(["unused_0000.nii.gz"])


# --- post-processing -----------------------------------------------------------------------------------------------

def test_force_click_neighbourhoods():
    assert len(ball_offsets(1, 3)) == 7 and len(ball_offsets(1, 2)) == 5 and len(ball_offsets(2, 2)) == 13
    segmentation = np.zeros((5, 6, 6), dtype=np.uint8)
    segmentation[2, 2, 3] = 1  # class 1 predicted next to the first click
    segmentation[0, 0, 0] = 2
    before = segmentation.copy()
    force_click_neighbourhoods(segmentation, [Click(1, (2.0, 2.0, 2.2)), Click(1, (4, 5, 5)), Click(2, (0, 0, 1))])
    expected = before.copy()
    for offset in ball_offsets(1, 3):
        expected[tuple(np.array([2, 2, 2]) + offset)] = 1  # filled: the face neighbours of the click and itself
    expected[0, 0, 0] = expected[0, 0, 1] = expected[1, 0, 1] = expected[0, 1, 1] = expected[0, 0, 2] = 2  # clipped
    np.testing.assert_array_equal(segmentation, expected)  # the click at (4, 5, 5) sees no class 1: unchanged
