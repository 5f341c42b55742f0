"""Segmentation metrics per case and class against dense references, with the conventions of the scribble
literature (WSL4MIS, Weak-Mamba-UNet report Dice, accuracy, precision, sensitivity, specificity, HD95 and ASD per
volume in mm) and nnU-Net's convention for empty references.

Per class, a binary mask of the reference and of the prediction:

- Overlap: Dice, IoU, accuracy, precision, sensitivity (recall), specificity from the voxel counts. A ratio whose
  denominator is zero is undefined (NaN) and left out of means, as nnU-Net does: a class absent from reference and
  prediction has Dice NaN, not 1; a class missed entirely or predicted where the reference has none has Dice 0.
- Surface distances, computed as MedPy's ``binary.hd95``/``binary.asd`` (which WSL4MIS uses) and validated against
  them: the surface is the mask minus its erosion (face connectivity, the image border counting as outside); the
  distance from each surface voxel to the nearest surface voxel of the other mask, in mm from the image spacing (or
  pixels). HD95 is the 95th percentile of both directions pooled; ASD the mean over the prediction's surface (MedPy
  ``asd(prediction, reference)``); ASSD the mean over both surfaces pooled (symmetric, Heimann et al. 2009). They
  are undefined (NaN) when either mask is empty; such cases are counted (``num_empty_reference``,
  ``num_empty_prediction``) and left out of the distance means rather than given an arbitrary penalty.
- 2D images are evaluated in 2D, 3D volumes as whole volumes (axes of size 1 are dropped first).

Summaries: per class the mean and standard deviation over cases of every metric (NaN left out), the foreground mean
(mean of the foreground classes' means, nnU-Net's ``foreground_mean``) and the mean with background.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_mamba.data.scribble_dataset import IGNORE, dataset_reader_writer, unexpected_values

METRICS = ("Dice", "IoU", "accuracy", "precision", "sensitivity", "specificity", "HD95", "ASD", "ASSD")
DISTANCES = ("HD95", "ASD", "ASSD")
logger = logging.getLogger(__name__)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every surface voxel of mask ``a`` to the surface of ``b``, and from ``b``'s to ``a``'s.

    Both masks must be non-empty. Work is confined to their joint bounding box, which changes nothing: every surface
    voxel lies inside it, and erosion takes what lies beyond as background, which it is.
    """
    both = np.argwhere(a | b)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(both.min(0), both.max(0)))
    surface_a, surface_b = _surface(a[box]), _surface(b[box])
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return to_b, to_a


def binary_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All :data:`METRICS` (plus voxel counts ``n_ref``, ``n_pred``) of one binary prediction against its reference."""
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    if reference.shape != prediction.shape or len(spacing) != reference.ndim:
        raise ValueError(f"shapes {reference.shape}, {prediction.shape} and spacing {tuple(spacing)} do not match")
    spacing = [float(s) for s, n in zip(spacing, reference.shape) if n > 1]  # a 2D image stored as (1, y, x) is 2D
    reference, prediction = reference.squeeze(), prediction.squeeze()
    tp = int(np.count_nonzero(reference & prediction))
    n_ref, n_pred, n = int(np.count_nonzero(reference)), int(np.count_nonzero(prediction)), reference.size
    fp, fn = n_pred - tp, n_ref - tp
    tn = n - tp - fp - fn
    result = {"Dice": _ratio(2 * tp, 2 * tp + fp + fn), "IoU": _ratio(tp, tp + fp + fn),
              "accuracy": _ratio(tp + tn, n), "precision": _ratio(tp, tp + fp),
              "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}
    if n_ref and n_pred:
        from_pred, from_ref = surface_distances(prediction, reference, spacing)
        pooled = np.concatenate([from_pred, from_ref])
        result.update(HD95=float(np.percentile(pooled, 95)), ASD=float(from_pred.mean()), ASSD=float(pooled.mean()))
    else:
        result.update(dict.fromkeys(DISTANCES, math.nan))
    return {**result, "n_ref": n_ref, "n_pred": n_pred}


def case_metrics(reference: np.ndarray, prediction: np.ndarray, labels: Sequence[int],
                 spacing: Sequence[float]) -> dict[int, dict[str, float]]:
    """:func:`binary_metrics` for every label value of two label maps."""
    return {label: binary_metrics(reference == label, prediction == label, spacing) for label in labels}


def _over_defined(statistic, values) -> float:
    """``statistic`` of the values that are not NaN; NaN if none is (without numpy's warning)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(statistic(values)) if values.size else math.nan


def summarize(per_case: Sequence[Mapping[int, Mapping[str, float]]], names: Mapping[int, str]) -> dict:
    """Per-class means/stds/counts over cases, the foreground mean and the mean with background (NaN left out)."""
    per_class = {}
    for label, name in names.items():
        values = {m: [case[label][m] for case in per_case] for m in METRICS}
        per_class[label] = {
            "name": name, "num_cases": len(per_case),
            "num_empty_reference": sum(case[label]["n_ref"] == 0 for case in per_case),
            "num_empty_prediction": sum(case[label]["n_pred"] == 0 for case in per_case),
            "mean": {m: _over_defined(np.mean, v) for m, v in values.items()},
            "std": {m: _over_defined(np.std, v) for m, v in values.items()}}

    def mean_over(labels: list[int]) -> dict[str, float]:
        return {m: _over_defined(np.mean, [per_class[c]["mean"][m] for c in labels]) for m in METRICS}

    foreground = [label for label in names if label != 0]
    return {"per_class": per_class, "foreground_mean": mean_over(foreground),
            "mean_with_background": mean_over(list(names))}


def _evaluate_pair(case: str, reference_file: str, prediction_file: str, reader_writer_class, labels: list[int],
                   use_spacing: bool) -> dict:
    rw = reader_writer_class()
    reference, properties = rw.read_seg(reference_file)
    prediction, _ = rw.read_seg(prediction_file)
    if reference.shape != prediction.shape:
        raise ValueError(f"{prediction_file}: shape {prediction.shape[1:]} differs from its reference "
                         f"{reference_file} {reference.shape[1:]}")
    for name, array in (("reference", reference), ("prediction", prediction)):
        bad = unexpected_values(array, labels)
        if bad:
            raise ValueError(f"{reference_file if name == 'reference' else prediction_file}: {name} values "
                             f"{bad} are not among the evaluated labels {labels}" +
                             (" (a scribble file? evaluate against dense labels, e.g. labelsTr_dense)"
                              if name == "reference" else ""))
    spacing = list(properties["spacing"]) if use_spacing else [1.0] * (reference.ndim - 1)
    metrics = case_metrics(reference[0], prediction[0], labels, spacing)
    return {"case": case, "reference_file": reference_file,
            "prediction_file": prediction_file, "metrics": metrics}


def _json_ready(value):
    """NaN becomes null (JSON has no NaN) and label keys become strings."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def class_names(labels: Mapping[str, int]) -> dict[int, str]:
    """Class names by label value from dataset.json ``labels``, without ``ignore``."""
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ValueError(f"region-based labels {dict(labels)} are not supported; evaluate label maps")
    return {int(v): k for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if k != IGNORE}


def evaluate_folders(reference_folder: str | os.PathLike, prediction_folder: str | os.PathLike,
                     dataset_json: str | os.PathLike | Mapping, output: str | os.PathLike | None = None,
                     use_spacing: bool = True, num_processes: int = 1, progress: bool = True) -> dict:
    """Evaluate every prediction in ``prediction_folder`` against the same-named file in ``reference_folder``.

    Files are read with the dataset's nnU-Net reader-writer. Returns the results (``per_case``, ``per_class``,
    ``foreground_mean``, ``mean_with_background``, ``settings``); with ``output`` (a path without suffix) also writes
    ``output.json`` and ``output.csv``.
    """
    if not isinstance(dataset_json, Mapping):
        dataset_json = json.loads(Path(dataset_json).read_text())
    reference_folder, prediction_folder = Path(reference_folder), Path(prediction_folder)
    names, ending = class_names(dataset_json["labels"]), dataset_json["file_ending"]
    predictions = sorted(p for p in prediction_folder.glob(f"*{ending}") if p.is_file())
    if not predictions:
        raise FileNotFoundError(f"{prediction_folder}: no predictions ending in {ending}")
    missing = [p.name for p in predictions if not (reference_folder / p.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{reference_folder}: no reference for prediction(s) {missing[:10]}")
    rw_class = type(dataset_reader_writer(dataset_json, str(predictions[0])))
    num_references = len(list(reference_folder.glob(f"*{ending}")))
    if num_references > len(predictions):
        logger.info(f"evaluating the {len(predictions)} predictions of {prediction_folder}; "
                    f"{num_references - len(predictions)} reference(s) have none")
    jobs = [(p.name[:-len(ending)], str(reference_folder / p.name), str(p), rw_class, list(names), use_spacing)
            for p in predictions]
    if num_processes > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            per_case = list(tqdm(pool.map(_evaluate_pair, *zip(*jobs)), total=len(jobs), disable=not progress,
                                 desc="evaluating"))
    else:
        per_case = [_evaluate_pair(*job) for job in tqdm(jobs, disable=not progress, desc="evaluating")]
    results = {"settings": {"reference_folder": str(reference_folder), "prediction_folder": str(prediction_folder),
                            "distance_unit": "mm" if use_spacing else "pixel", "labels": names},
               **summarize([c["metrics"] for c in per_case], names), "per_case": per_case}
    if output is not None:
        write_results(results, Path(output))
    return results


def write_results(results: dict, output: Path) -> None:
    """``output.json`` (everything) and ``output.csv`` (one row per case and class, then the means)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(_json_ready(results), indent=1))
    with open(output.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "label", "name", *METRICS, "n_ref", "n_pred"])
        names = results["settings"]["labels"]
        for case in results["per_case"]:
            for label, m in case["metrics"].items():
                writer.writerow([case["case"], label, names[label], *[m[k] for k in METRICS], m["n_ref"], m["n_pred"]])
        for label, summary in results["per_class"].items():
            writer.writerow(["mean", label, summary["name"], *[summary["mean"][k] for k in METRICS], "", ""])
        for key in ("foreground_mean", "mean_with_background"):
            writer.writerow([key, "", "", *[results[key][k] for k in METRICS], "", ""])


def format_table(results: dict) -> str:
    """A markdown table of the class means, foreground mean and mean with background."""
    unit = results["settings"]["distance_unit"]
    header = [f"{m} ({unit})" if m in DISTANCES else m for m in METRICS]
    rows = [(f"{s['name']} ({label})", s["mean"]) for label, s in results["per_class"].items()]
    rows += [("foreground mean", results["foreground_mean"]), ("mean with background", results["mean_with_background"])]
    lines = ["| class | " + " | ".join(header) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, means in rows:
        lines.append(f"| {name} | " + " | ".join(
            f"{means[m]:.2f}" if m in DISTANCES else f"{means[m]:.4f}" for m in METRICS) + " |")
    empty = [f"{s['name']}: {s['num_empty_reference']} empty reference(s), {s['num_empty_prediction']} empty "
             f"prediction(s)" for s in results["per_class"].values()
             if s["num_empty_reference"] or s["num_empty_prediction"]]
    notes = [f"{len(results['per_case'])} case(s). Undefined values (NaN) are left out of the means."]
    if empty:
        notes.append("Distances are undefined where a mask is empty: " + "; ".join(empty) + ".")
    return "\n".join(lines + [""] + notes)
