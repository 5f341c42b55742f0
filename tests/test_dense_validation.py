"""Online validation of the scribble trainers against dense labels, aligned with the images, and nnU-Net's own
validation where there are none."""

from __future__ import annotations

import numpy as np
from helpers.scribble_nnunet import make_trainer

from nnunetv2_mamba.training.dense_validation import DENSE_FOLDER
from nnunetv2_mamba.training.variants.scribble import nnUNetTrainerScribbleBaseline_smoke


def test_online_validation_reads_dense_labels_aligned_with_the_images(nnunet_paths):
    trainer = make_trainer(nnUNetTrainerScribbleBaseline_smoke, nnunet_paths)
    dataset_tr, dataset_val = trainer.get_tr_and_val_datasets()
    assert dataset_val.source_folder.endswith(DENSE_FOLDER)
    stock = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(dataset_val.identifiers))
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    for key in dataset_val.identifiers:
        data, seg, _, _ = dataset_val.load_case(key)
        stock_data, stock_seg, _, _ = stock.load_case(key)
        dense, _ = SimpleITKIO().read_seg(f"{nnunet_paths['nnUNet_raw']}/{trainer.plans_manager.dataset_name}/"
                                          f"labelsTr_dense/{key}.nii.gz")
        assert np.array_equal(data[:], stock_data[:])  # same preprocessing: the images align
        assert np.array_equal(seg[:], dense) and (stock_seg[:] == trainer.label_manager.ignore_label).any()


def test_without_dense_labels_validation_stays_nnunets_and_says_so(nnunet_paths, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))  # a raw folder without the dataset
    trainer = make_trainer(nnUNetTrainerScribbleBaseline_smoke, nnunet_paths)
    reference, reason = trainer.dense_reference()
    assert reference is None and "does not exist" in reason
    _, dataset_val = trainer.get_tr_and_val_datasets()
    assert dataset_val.source_folder == trainer.preprocessed_dataset_folder
