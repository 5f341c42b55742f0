"""Batches of unlabeled cases (preprocessed by :mod:`nnunetv2_mamba.data.unlabeled`) mixed into nnU-Net's training
loop without changing it: :class:`MixedBatches` stands in for the trainer's ``dataloader_train`` and hands out
batches of unlabeled cases (marked ``batch["unlabeled"]``) at a share the trainer chooses, labelled batches
otherwise; ``train_step`` dispatches on the mark."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from threadpoolctl import threadpool_limits

from nnunetv2_mamba.data.unlabeled import unlabeled_folder


class UnlabeledDataLoader(nnUNetDataLoader):
    """Random patches of unlabeled cases through ``transforms`` (as nnU-Net's loader), plus, with
    ``strong_transforms``, a second view of each transformed patch in ``batch["strong"]``: same geometry, other
    intensities, for a student/teacher pair that compares outputs voxel by voxel."""

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 transforms: BasicTransform | None = None, strong_transforms: BasicTransform | None = None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False  # with an ignore label nnU-Net aims crops at annotations; these cases have none
        self.strong_transforms = strong_transforms

    def generate_train_batch(self) -> dict:
        batch = super().generate_train_batch()
        batch["unlabeled"] = True
        if self.strong_transforms is not None:
            with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
                batch["strong"] = torch.stack([self.strong_transforms(image=image.clone())["image"]
                                               for image in batch["data"]])
        return batch


class MixedBatches(Iterator[dict]):
    """Interleaves batches of ``labeled`` and ``unlabeled`` so that the unlabeled ones make up ``share()`` (asked
    anew at every batch) of them: a batch is unlabeled whenever the accumulated share passes a whole number. Same
    expectation as U-Mamba2-SSL's coin flip per batch, without its variance (a short epoch still gets its share)."""

    def __init__(self, labeled: Iterator[dict], unlabeled: Iterator[dict], share: Callable[[], float]):
        self.labeled, self.unlabeled, self.share = labeled, unlabeled, share
        self.credit = 0.0

    def __next__(self) -> dict:
        self.credit += self.share()
        if self.credit > 1 - 1e-9:  # tolerant of rounding: ten shares of 0.1 make a batch
            self.credit -= 1
            return next(self.unlabeled)
        return next(self.labeled)

    def finish(self) -> None:
        """Stop background workers (nnU-Net's ``on_train_end`` only stops loaders it created itself)."""
        for loader in (self.labeled, self.unlabeled):
            if isinstance(loader, NonDetMultiThreadedAugmenter):
                loader._finish()


def unlabeled_identifiers(trainer: nnUNetTrainer) -> list[str]:
    """The preprocessed unlabeled cases of ``trainer``'s configuration."""
    folder = unlabeled_folder(trainer.preprocessed_dataset_folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return []
    return list(infer_dataset_class(str(folder)).get_identifiers(str(folder)))


def unlabeled_batches(trainer: nnUNetTrainer, initial_patch_size, transforms: BasicTransform,
                      strong_transforms: BasicTransform | None = None) -> Iterator[dict] | None:
    """Batches of the unlabeled cases of ``trainer``'s configuration (None if there are none), at its batch and
    patch size (cropped at ``initial_patch_size`` before the spatial transform, as nnU-Net does), loaded in
    background workers as nnU-Net loads its own (half as many)."""
    if not unlabeled_identifiers(trainer):
        return None
    folder = unlabeled_folder(trainer.preprocessed_dataset_folder)
    dataset_class = infer_dataset_class(str(folder))
    dataset_class.unpack_dataset(str(folder), overwrite_existing=False,
                                 num_processes=max(1, get_allowed_n_proc_DA() // 2), verify=True)
    loader = UnlabeledDataLoader(dataset_class(str(folder)), trainer.batch_size, initial_patch_size,
                                 trainer.configuration_manager.patch_size, trainer.label_manager,
                                 transforms, strong_transforms)
    processes = get_allowed_n_proc_DA() // 2
    if processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(loader, None, num_processes=processes, num_cached=max(3, processes // 2),
                                        seeds=None, pin_memory=trainer.device.type == "cuda", wait_time=0.002)


def missing_unlabeled_message(trainer: nnUNetTrainer) -> str:
    dataset = trainer.plans_manager.dataset_name
    return (f"no preprocessed unlabeled cases in {unlabeled_folder(trainer.preprocessed_dataset_folder)}: put the "
            f"images in $nnUNet_raw/{dataset}/imagesTr_unlabeled and run nnunetv2_mamba preprocess-unlabeled "
            f"-d {dataset} -c {trainer.configuration_name} -p {trainer.plans_manager.plans_name}")
