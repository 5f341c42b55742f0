"""Validation against dense labels for trainers that learn from scribbles.

On a scribble dataset nnU-Net validates against the scribbles: its online pseudo Dice and the final validation's
``summary.json`` count the scribbled pixels only, and reward a network that over-segments into the unlabeled
background, far above its Dice on dense labels. Where the raw dataset has dense labels for every validation case
(``labelsTr_dense/``, see :mod:`nnunetv2_mamba.data.scribble_dataset`), :class:`DenseValidationMixin` validates
against those instead:

- online validation (checkpoint selection): the validation cases are preprocessed once more, with the dense labels,
  by the plans' own preprocessor, into ``<preprocessed configuration folder>/dense_labels/`` (nnU-Net removes it
  with the folder when it preprocesses again), and the validation data loader reads them: the "pseudo dice" in the
  log and progress.png becomes the Dice on dense patches;
- final validation: the predictions are scored against ``labelsTr_dense`` into ``validation/summary.json`` (the
  scribble-based summary nnU-Net writes first is kept as ``summary_scribbles.json``).

Where dense labels are missing, it says so in the log and validation stays as nnU-Net does it. The training split,
the loss and everything else are untouched; the validation split is the fold's own (never the test cases).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset, nnUNetDatasetBlosc2
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from torch import distributed as dist

from nnunetv2_mamba.data.scribble_dataset import DENSE_LABELS_TR

DENSE_FOLDER = "dense_labels"  # inside the configuration's preprocessed folder
SCRIBBLE_SUMMARY = "summary_scribbles.json"


class DenseValidationMixin:
    """Mixin for nnU-Net trainers (list it before the trainer class) giving the validation described in the module
    docstring. ``perform_actual_validation`` returns the dense-label metrics (nnU-Net's summary dict) on rank 0, or
    None."""

    _dense_reference: tuple[Path | None, str] | None = None

    def dense_reference(self) -> tuple[Path | None, str]:
        """(raw folder of the validation cases' dense labels, "") or (None, why there is none); cached."""
        if self._dense_reference is None:
            self._dense_reference = self._find_dense_reference()
        return self._dense_reference

    def _find_dense_reference(self) -> tuple[Path | None, str]:
        if not nnUNet_raw.is_set():
            return None, "nnUNet_raw is not set, so the raw dataset's labelsTr_dense cannot be found"
        folder = Path(nnUNet_raw.get()) / self.plans_manager.dataset_name / DENSE_LABELS_TR
        if not folder.is_dir():
            return None, f"{folder} does not exist"
        _, val_keys = self.do_split()
        ending = self.dataset_json["file_ending"]
        missing = [k for k in val_keys if not (folder / f"{k}{ending}").is_file()]
        if missing:
            return None, f"{folder} lacks {len(missing)} of the {len(val_keys)} validation cases, e.g. {missing[:3]}"
        return folder, ""

    def on_train_start(self) -> None:
        reference, reason = self.dense_reference()
        if reference is None:
            self.print_to_log_file(
                f"WARNING: validating against SCRIBBLES ONLY ({reason}). The online pseudo Dice and the final "
                f"validation Dice count scribbled pixels only and overrate networks that over-segment; add dense "
                f"labels of the validation cases to labelsTr_dense/ for real numbers.")
        else:
            self.print_to_log_file(f"Validation against the dense labels in {reference}: the online 'pseudo dice' "
                                   f"is the Dice on dense validation patches, the final validation scores against "
                                   f"them as well.")
        super().on_train_start()

    def get_tr_and_val_datasets(self) -> tuple[nnUNetBaseDataset, nnUNetBaseDataset]:
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        reference, _ = self.dense_reference()
        if reference is None:
            return dataset_tr, dataset_val
        folder = Path(self.preprocessed_dataset_folder) / DENSE_FOLDER
        if self.local_rank == 0:
            self._preprocess_dense_cases(reference, folder, list(dataset_val.identifiers))
        if self.is_ddp:
            dist.barrier()
        return dataset_tr, nnUNetDatasetBlosc2(str(folder), list(dataset_val.identifiers),
                                               self.folder_with_segs_from_previous_stage)

    def _preprocess_dense_cases(self, reference: Path, folder: Path, keys: list[str]) -> None:
        """Preprocess the cases whose dense copy is missing or older than its dense label; each case is written to
        a temporary folder and moved into place file by file, the properties (.pkl, which marks a case done) last."""
        ending = self.dataset_json["file_ending"]
        todo = [k for k in keys if not (folder / f"{k}.pkl").is_file()
                or (folder / f"{k}.pkl").stat().st_mtime < (reference / f"{k}{ending}").stat().st_mtime]
        if not todo:
            return
        self.print_to_log_file(f"Preprocessing the dense labels of {len(todo)} validation case(s) into {folder}")
        raw = reference.parent
        images = get_filenames_of_train_images_and_targets(str(raw), deepcopy(self.dataset_json))
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        folder.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            for key in todo:
                preprocessor.run_case_save(os.path.join(tmp, key), images[key]["images"],
                                           str(reference / f"{key}{ending}"), self.plans_manager,
                                           self.configuration_manager, self.dataset_json)
                for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
                    os.replace(os.path.join(tmp, key + suffix), folder / f"{key}{suffix}")

    def perform_actual_validation(self, save_probabilities: bool = False) -> dict | None:
        super().perform_actual_validation(save_probabilities)
        if self.local_rank != 0:
            return None
        return self.score_against_dense_labels(Path(self.output_folder) / "validation")

    def score_against_dense_labels(self, predictions: Path) -> dict | None:
        """Score a validation folder against the dense labels into its ``summary.json`` (nnU-Net's format; the
        scribble-based one becomes ``summary_scribbles.json``) and log the result; None without dense labels."""
        reference, reason = self.dense_reference()
        if reference is None:
            self.print_to_log_file(f"WARNING: the validation Dice above counts scribbled pixels only ({reason}).")
            return None
        summary = predictions / "summary.json"
        if summary.is_file():
            shutil.move(summary, predictions / SCRIBBLE_SUMMARY)
        labels = self.label_manager.foreground_labels
        cases = len(list(predictions.glob(f"*{self.dataset_json['file_ending']}")))
        metrics = compute_metrics_on_folder(str(reference), str(predictions), str(summary),
                                            self.plans_manager.image_reader_writer_class(),
                                            self.dataset_json["file_ending"], labels, self.label_manager.ignore_label,
                                            num_processes=max(1, min(default_num_processes, cases)), chill=True)
        for label in metrics["mean"]:
            self.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
        self.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
        per_class = {label: round(float(metrics["mean"][label]["Dice"]), 4) for label in metrics["mean"]}
        self.print_to_log_file(f"Validation Dice against the DENSE labels ({predictions.name}): per class "
                               f"{per_class}, mean {metrics['foreground_mean']['Dice']:.4f} (the 'Mean Validation "
                               f"Dice' above counts scribbled pixels only; it is kept in {SCRIBBLE_SUMMARY})")
        return metrics
