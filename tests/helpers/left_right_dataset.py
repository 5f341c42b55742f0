"""A tiny 2D raw nnU-Net dataset with a left and a right structure, for mirroring with label swap: flipping an image
along x (its columns) turns the left structure into a right one, so only the swap keeps the labels right. A ``body``
lies between the two."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunetv2_mamba.data.scribble_dataset import FILE_ENDING, write_dataset_json, write_image

LABELS = {"background": 0, "left": 1, "right": 2, "body": 3}
_INTENSITY = np.array([0.1, 0.7, 0.7, 0.4])  # left and right look alike: only their side tells them apart


def left_right_case(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One random (image float32, label uint8) pair: a disc on each side of a central ellipse."""
    height, width = shape
    y, x = np.mgrid[:height, :width].astype(float)
    center = height / 2 + rng.uniform(-2, 2)
    label = np.zeros(shape, dtype=np.uint8)
    for value, side in ((LABELS["left"], -1), (LABELS["right"], 1)):
        cx, cy = width / 2 + side * width * rng.uniform(0.28, 0.34), center + rng.uniform(-3, 3)
        label[(y - cy) ** 2 + (x - cx) ** 2 <= (width * rng.uniform(0.1, 0.14)) ** 2] = value
    label[((y - center) / (0.3 * height)) ** 2 + ((x - width / 2) / (0.12 * width)) ** 2 <= 1] = LABELS["body"]
    image = _INTENSITY[label] + rng.normal(0, 0.05, shape)
    return image.astype(np.float32), label


def write_left_right_dataset(folder: Path, num_training: int, num_test: int, shape: tuple[int, int] = (32, 32),
                             seed: int = 0) -> Path:
    """The raw dataset in ``folder`` (imagesTr/labelsTr, test images in imagesTs, labels in labelsTs)."""
    rng = np.random.default_rng(seed)
    for split, prefix, count in (("Tr", "case", num_training), ("Ts", "test", num_test)):
        for kind in ("images", "labels"):
            (folder / f"{kind}{split}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = left_right_case(rng, shape)
            write_image(image, (1.0, 1.0), folder / f"images{split}" / f"{prefix}_{i:03d}_0000{FILE_ENDING}")
            write_image(label, (1.0, 1.0), folder / f"labels{split}" / f"{prefix}_{i:03d}{FILE_ENDING}")
    write_dataset_json(folder, LABELS, num_training, {"0": "MRI"})
    return folder
