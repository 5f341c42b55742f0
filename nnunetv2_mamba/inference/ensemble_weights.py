"""Weights for an ensemble's mean softmax, chosen on labelled cases that are not the test cases.

The members of nnUNetTrainerWeakMamba differ in quality (on ACDC the Swin member is the weakest), and the plain mean
softmax lets the weakest pull the others down. The weights are
chosen like nnU-Net chooses its post-processing: by the mean foreground Dice on cases with dense labels that training
did not use (a grid over the simplex; two free parameters for three members, against a hundred cases or more).

A background prior (the background probability divided by a factor, the Bayes correction of a changed class prior)
is not offered: chosen by the same search on ACDC, it never helped any method.

The Dice is nnU-Net's summary: per class, the mean over the cases whose reference or prediction holds the class,
then the mean over the foreground classes. The folder functions work on what ``nnUNetv2_predict --save_probabilities``
writes (``CASE.npz`` and ``CASE.pkl`` beside ``dataset.json`` and ``plans.json``), one folder per member, as
``nnUNetv2_ensemble`` does.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnunetv2_mamba.data.scribble_dataset import dataset_reader_writer


@dataclass(frozen=True)
class EnsembleWeights:
    """Weights of the members' softmaxes, non-negative and summing to 1, in the members' order."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values or min(self.values) < 0 or not np.isclose(sum(self.values), 1):
            raise ValueError(f"ensemble weights must be non-negative and sum to 1, got {self.values}")

    @classmethod
    def equal(cls, members: int) -> EnsembleWeights:
        """The plain mean softmax."""
        return cls((1 / members,) * members)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EnsembleWeights:
        """Weights written by :meth:`save`."""
        try:
            return cls(tuple(json.loads(Path(path).read_text())["weights"]))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} holds no ensemble weights (a JSON object with a 'weights' list): {e!r}") from e

    def save(self, path: str | os.PathLike, **provenance) -> None:
        """JSON with the weights and what they were chosen on."""
        Path(path).write_text(json.dumps({"weights": list(self.values), **provenance}, indent=1) + "\n")


def weighted_probabilities(probabilities: Sequence[torch.Tensor], weights: EnsembleWeights) -> torch.Tensor:
    """The weighted mean of the members' probabilities (each classes x ...)."""
    if len(probabilities) != len(weights.values):
        raise ValueError(f"{len(probabilities)} members' probabilities for {len(weights.values)} weights")
    return sum(w * p.float() for w, p in zip(weights.values, probabilities))


def weight_grid(members: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex with entries in multiples of ``step`` (1 / step must be an integer)."""
    parts = round(1 / step)
    if not np.isclose(parts * step, 1):
        raise ValueError(f"the weight step must divide 1, got {step}")
    return [tuple(c / parts for c in combination)
            for combination in itertools.product(range(parts + 1), repeat=members) if sum(combination) == parts]


def mean_foreground_dice(segmentations: torch.Tensor, references: torch.Tensor, case_index: torch.Tensor,
                         num_cases: int, num_classes: int) -> float:
    """nnU-Net's mean foreground Dice of flat label vectors whose pixels belong to the cases ``case_index``."""
    counts = torch.bincount((case_index * num_classes + references) * num_classes + segmentations,
                            minlength=num_cases * num_classes * num_classes)
    confusion = counts.reshape(num_cases, num_classes, num_classes).double()  # case, reference, prediction
    tp = confusion.diagonal(dim1=1, dim2=2)
    denominator = confusion.sum(2) + confusion.sum(1)
    dice = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.nan)[:, 1:]
    return float(dice.nanmean(0).nanmean())


class _Flat:
    """Cases as flat tensors: probabilities (pixels x classes x members), references and case index per pixel."""

    def __init__(self, cases: Sequence[tuple[Sequence[np.ndarray], np.ndarray]]):
        if not cases:
            raise ValueError("no cases to choose ensemble weights on")
        self.members, self.classes, self.cases = len(cases[0][0]), cases[0][0][0].shape[0], len(cases)
        self.probabilities = torch.cat([torch.stack([torch.as_tensor(p, dtype=torch.float32).reshape(self.classes, -1)
                                                     for p in probabilities], 1).permute(2, 0, 1)
                                        for probabilities, _ in cases])
        self.references = torch.cat([torch.as_tensor(r.astype(np.int64)).reshape(-1) for _, r in cases])
        if self.references.numel() != self.probabilities.shape[0]:
            raise ValueError("every case's reference must have its probabilities' spatial shape")
        if self.references.min() < 0 or self.references.max() >= self.classes:
            raise ValueError(f"reference labels must lie in 0..{self.classes - 1}, found {self.references.min()}..."
                             f"{self.references.max()}")
        self.case_index = torch.cat([torch.full((r.size,), i) for i, (_, r) in enumerate(cases)])

    def dice(self, weights: Sequence[float]) -> float:
        segmentation = (self.probabilities @ torch.tensor(weights, dtype=torch.float32)).argmax(1)
        return mean_foreground_dice(segmentation, self.references, self.case_index, self.cases, self.classes)


def weights_dice(cases: Sequence[tuple[Sequence[np.ndarray], np.ndarray]], weights: EnsembleWeights) -> float:
    """The mean foreground Dice of ``weights`` on ``cases`` (as for :func:`choose_weights`)."""
    return _Flat(cases).dice(weights.values)


def choose_weights(cases: Sequence[tuple[Sequence[np.ndarray], np.ndarray]], step: float = 0.1
                   ) -> tuple[EnsembleWeights, float]:
    """The weights with the best mean foreground Dice on ``cases`` (each: the members' probabilities, classes x
    spatial, and the dense reference label map of the same spatial shape) and that Dice. Ties keep the first listed:
    equal weights, then the grid's order."""
    flat = _Flat(cases)
    equal = EnsembleWeights.equal(flat.members).values
    best = None
    for weights in [equal] + [w for w in weight_grid(flat.members, step) if not np.allclose(w, equal)]:
        dice = flat.dice(weights)
        if best is None or dice > best[1]:
            best = EnsembleWeights(weights), dice
    return best


def common_cases(folders: Sequence[Path]) -> list[str]:
    """The cases every folder holds probabilities of (``CASE.npz``); an error names the folder that lacks some."""
    if not folders:
        raise ValueError("no prediction folders given")
    cases = [{p.name[:-len(".npz")] for p in Path(f).glob("*.npz")} for f in folders]
    for folder, held in zip(folders, cases):
        if not held:
            raise FileNotFoundError(f"{folder}: no probabilities (CASE.npz); predict with --save_probabilities")
        if held != cases[0]:
            missing = sorted(cases[0] ^ held)
            raise FileNotFoundError(f"{folder} and {folders[0]} hold probabilities of different cases, e.g. "
                                    f"{missing[:5]}")
    return sorted(cases[0])


def folder_json(folder: Path, name: str) -> dict:
    """``dataset.json`` or ``plans.json`` of a prediction folder: its own copy (``nnUNetv2_predict``'s), else the model
    folder's for a trainer's ``fold_X/validation*`` folder."""
    for candidate in (folder / name, folder.parent.parent / name):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"{folder / name} does not exist: nnUNetv2_predict writes it beside the probabilities "
                            f"(and a training's validation folder reads its model folder's)")


def load_probabilities(folders: Sequence[Path], case: str) -> list[np.ndarray]:
    """Every folder's probabilities of ``case`` (classes x spatial)."""
    return [np.load(Path(f) / f"{case}.npz")["probabilities"] for f in folders]


def labelled_cases(folders: Sequence[Path], references: Path, cases: Sequence[str] | None = None
                   ) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """The members' probabilities in ``folders`` (one per member, same cases) with the dense labels
    ``references/CASE<file ending>``, of ``cases`` (default: all the folders hold): the input of
    :func:`choose_weights`."""
    folders, references = [Path(f) for f in folders], Path(references)
    cases = list(cases) if cases is not None else common_cases(folders)
    dataset_json = folder_json(folders[0], "dataset.json")
    files = {case: references / f"{case}{dataset_json['file_ending']}" for case in cases}
    if not files:
        raise ValueError("no cases to choose ensemble weights on")
    for reference in files.values():
        if not reference.is_file():
            raise FileNotFoundError(f"{reference} does not exist: every case that chooses the weights needs its "
                                    f"dense label")
    reader_writer = dataset_reader_writer(dataset_json, str(next(iter(files.values()))))  # as evaluate_folders reads
    labelled = []
    for case, reference in files.items():
        label = reader_writer.read_seg(str(reference))[0][0]
        probabilities = load_probabilities(folders, case)
        if label.shape != probabilities[0].shape[1:]:
            raise ValueError(f"{reference}: shape {label.shape} differs from its probabilities' "
                             f"{probabilities[0].shape[1:]} in {folders[0]}")
        labelled.append((probabilities, label))
    return labelled


def ensemble_folders(folders: Sequence[Path], output: Path, weights: EnsembleWeights,
                     cases: Sequence[str] | None = None) -> list[Path]:
    """Segment ``cases`` (default: all the folders hold) with the weighted ensemble of the members' probabilities
    into ``output/CASE<file ending>``, as ``nnUNetv2_ensemble`` writes them (the first folder's case properties,
    dataset.json and plans.json); returns the files written."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folders, output = [Path(f) for f in folders], Path(output)
    cases = list(cases) if cases is not None else common_cases(folders)
    if any(output.resolve() == f.resolve() for f in folders):
        raise ValueError(f"output folder {output} must differ from the input folders")
    dataset_json, plans = folder_json(folders[0], "dataset.json"), folder_json(folders[0], "plans.json")
    reader_writer = PlansManager(plans).image_reader_writer_class()
    label_manager = PlansManager(plans).get_label_manager(dataset_json)
    if label_manager.has_regions:
        raise ValueError(f"{folders[0]}: a region-based model's outputs are sigmoids, not a softmax to mix")
    output.mkdir(parents=True, exist_ok=True)
    for name, content in (("dataset.json", dataset_json), ("plans.json", plans)):
        (output / name).write_text(json.dumps(content, indent=1))
    written = []
    for case in cases:
        with open(folders[0] / f"{case}.pkl", "rb") as f:
            properties = pickle.load(f)
        mixed = weighted_probabilities([torch.from_numpy(p) for p in load_probabilities(folders, case)], weights)
        segmentation = label_manager.convert_probabilities_to_segmentation(mixed.numpy())
        written.append(output / f"{case}{dataset_json['file_ending']}")
        reader_writer.write_seg(segmentation, str(written[-1]), properties)
    return written
