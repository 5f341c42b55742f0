"""What users know about a dataset's labels, written once per dataset as ``domain_knowledge.json`` and used by the
recipe trainers and post-processing (documentation/training_recipes.md):

- ``label_smoothing``: soft training targets that give ``amount`` of each class's mass to the classes it is easily
  confused with (adjacent teeth, a canal and its nerve), as U-Mamba2 did for ToothFairy3;
- ``class_weights``: cross-entropy weights, e.g. 10 for thin canals among large structures;
- ``mirror``: an image axis and the label pairs that swap when the image is mirrored along it (left/right organs),
  so that mirroring augmentation and test-time mirroring stay correct;
- ``min_component_size``: connected components smaller than this many voxels are removed from predictions.

Labels are written as their names in dataset.json or as their integer values. Every section is optional::

    {
      "label_smoothing": {"amount": 0.1, "related": {"tooth_11": ["tooth_12", "tooth_21"]}},
      "class_weights": {"canal": 10},
      "mirror": {"axis": "x", "pairs": [["kidney_left", "kidney_right"]]},
      "min_component_size": {"canal": 50}
    }

The file lives in the preprocessed dataset folder, ``$nnUNet_preprocessed/DatasetXXX_NAME/domain_knowledge.json``,
beside the plans and nnU-Net's ``splits_final.json``. Trainers copy the resolved knowledge (integer labels) into the
trained model's plans.json, so that ``nnUNetv2_predict`` applies it without the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "domain_knowledge.json"
PLANS_KEY = "domain_knowledge"
"""Key under which trainers store the resolved knowledge in the plans they copy into the results folder."""
SECTIONS = ("label_smoothing", "class_weights", "mirror", "min_component_size")
AXES = ("x", "y", "z")
DEFAULT_SMOOTHING = 0.1  # U-Mamba2 (ToothFairy3)


class DomainKnowledgeError(ValueError):
    """A domain_knowledge.json that cannot be used; the message names the file, the entry and the value."""


@dataclass(frozen=True)
class DomainKnowledge:
    """The file's content with every label resolved to its integer value."""

    smoothing: float = 0.0
    related: dict[int, tuple[int, ...]] = field(default_factory=dict)
    class_weights: dict[int, float] = field(default_factory=dict)
    mirror_axis: str | None = None
    mirror_pairs: tuple[tuple[int, int], ...] = ()
    min_component_size: dict[int, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        if self.related:
            parts.append(f"label smoothing {self.smoothing} toward related classes of {sorted(self.related)}")
        if self.class_weights:
            parts.append(f"cross-entropy weights {dict(sorted(self.class_weights.items()))}")
        if self.mirror_pairs:
            parts.append(f"mirroring along {self.mirror_axis} swaps labels {list(self.mirror_pairs)}")
        if self.min_component_size:
            parts.append(f"minimum component sizes {dict(sorted(self.min_component_size.items()))}")
        return "; ".join(parts) or "nothing"

    def to_json(self) -> dict[str, Any]:
        """The file format with integer labels (what trainers store in the model's plans)."""
        data: dict[str, Any] = {}
        if self.related:
            data["label_smoothing"] = {"amount": self.smoothing,
                                       "related": {str(k): list(v) for k, v in self.related.items()}}
        if self.class_weights:
            data["class_weights"] = {str(k): v for k, v in self.class_weights.items()}
        if self.mirror_pairs:
            data["mirror"] = {"axis": self.mirror_axis, "pairs": [list(p) for p in self.mirror_pairs]}
        if self.min_component_size:
            data["min_component_size"] = {str(k): v for k, v in self.min_component_size.items()}
        return data

    def label_permutation(self, num_labels: int) -> list[int]:
        """``permutation[label]`` is the label it becomes when the image is mirrored along ``mirror_axis``."""
        permutation = list(range(num_labels))
        for a, b in self.mirror_pairs:
            permutation[a], permutation[b] = b, a
        return permutation


def parse_domain_knowledge(data: Any, labels: Mapping[str, Any] | None = None,
                           source: str = FILE_NAME) -> DomainKnowledge:
    """Validate the JSON content ``data``; ``labels`` (dataset.json's) resolves names and checks values. Without
    ``labels`` only integer labels are accepted (the resolved form stored in plans)."""
    resolve = _LabelResolver(labels, source)
    if not isinstance(data, dict):
        raise DomainKnowledgeError(f"{source}: expected a JSON object with sections {', '.join(SECTIONS)}; "
                                   f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise DomainKnowledgeError(f"{source}: unknown section(s) {unknown}; the sections are {', '.join(SECTIONS)}")
    smoothing, related = 0.0, {}
    if "label_smoothing" in data:
        section = _mapping(data["label_smoothing"], source, "label_smoothing")
        smoothing = section.get("amount", DEFAULT_SMOOTHING)
        if not _is_number(smoothing) or not 0 < smoothing < 1:
            raise DomainKnowledgeError(f"{source}: label_smoothing.amount must be a number in (0, 1); "
                                       f"got {smoothing!r}")
        for key, targets in _mapping(section.get("related"), source, "label_smoothing.related").items():
            label = resolve(key, "label_smoothing.related")
            if not isinstance(targets, list) or not targets:
                raise DomainKnowledgeError(f"{source}: label_smoothing.related[{key!r}] must be a non-empty list of "
                                           f"labels; got {targets!r}")
            others = tuple(resolve(t, f"label_smoothing.related[{key!r}]") for t in targets)
            if label in others or len(set(others)) != len(others):
                raise DomainKnowledgeError(f"{source}: label_smoothing.related[{key!r}] = {targets!r} must list "
                                           f"other classes, each once")
            related[label] = others
    weights = {}
    for key, weight in _mapping(data.get("class_weights", {}), source, "class_weights").items():
        if not _is_number(weight) or not weight > 0:
            raise DomainKnowledgeError(f"{source}: class_weights[{key!r}] must be a positive number; got {weight!r}")
        weights[resolve(key, "class_weights")] = float(weight)
    axis, pairs = None, ()
    if "mirror" in data:
        section = _mapping(data["mirror"], source, "mirror")
        axis = section.get("axis")
        if axis not in AXES:
            raise DomainKnowledgeError(f"{source}: mirror.axis must be one of {AXES} (x: the image's first axis, "
                                       f"left-right in axial scans); got {axis!r}")
        raw_pairs = section.get("pairs")
        if not isinstance(raw_pairs, list) or not raw_pairs:
            raise DomainKnowledgeError(f"{source}: mirror.pairs must be a non-empty list of [label, label] pairs; "
                                       f"got {raw_pairs!r}")
        for pair in raw_pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise DomainKnowledgeError(f"{source}: mirror.pairs entry {pair!r} is not a [label, label] pair")
            pairs += (tuple(resolve(p, "mirror.pairs") for p in pair),)
        flat = [label for pair in pairs for label in pair]
        if len(set(flat)) != len(flat):
            raise DomainKnowledgeError(f"{source}: mirror.pairs {raw_pairs!r} must name each label at most once "
                                       f"and pair different labels")
    sizes = {}
    for key, size in _mapping(data.get("min_component_size", {}), source, "min_component_size").items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DomainKnowledgeError(f"{source}: min_component_size[{key!r}] must be a whole number of voxels "
                                       f">= 0; got {size!r}")
        sizes[resolve(key, "min_component_size")] = size
    return DomainKnowledge(float(smoothing) if related else 0.0, related, weights, axis if pairs else None, pairs,
                           sizes)


def domain_knowledge_file(preprocessed_dataset_folder: str | os.PathLike) -> Path:
    return Path(preprocessed_dataset_folder) / FILE_NAME


def load_domain_knowledge(path: str | os.PathLike, labels: Mapping[str, Any]) -> DomainKnowledge:
    """Read and validate a domain_knowledge.json against dataset.json's ``labels``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DomainKnowledgeError(f"{path} does not exist; see documentation/training_recipes.md for its format")
    except json.JSONDecodeError as e:
        raise DomainKnowledgeError(f"{path} is not valid JSON: {e}") from e
    return parse_domain_knowledge(data, labels, str(path))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(value: Any, source: str, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DomainKnowledgeError(f"{source}: {name} must be a JSON object; got {value!r}")
    return value


class _LabelResolver:
    """A label given by name or value -> its integer value; refuses the ignore label and region datasets."""

    def __init__(self, labels: Mapping[str, Any] | None, source: str):
        self.source = source
        self.by_name: dict[str, int] = {}
        self.ignore: int | None = None
        if labels is not None:
            for name, value in labels.items():
                if not isinstance(value, int) or isinstance(value, bool):
                    raise DomainKnowledgeError(f"{source}: domain knowledge needs integer labels, but dataset.json "
                                               f"defines {name!r} as {value!r} (region-based training)")
                if name == "ignore":
                    self.ignore = value
                else:
                    self.by_name[name] = value
        self.values = set(self.by_name.values())

    def __call__(self, label: Any, where: str) -> int:
        if isinstance(label, str) and label in self.by_name:
            return self.by_name[label]
        value = int(label) if isinstance(label, str) and label.strip().isdigit() else label
        value = self.ignore if label == "ignore" else value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            if value == self.ignore:
                raise DomainKnowledgeError(f"{self.source}: {where} names the ignore label {label!r}")
            if not self.by_name or value in self.values:
                return value
        known = ", ".join(f"{n} ({v})" for n, v in self.by_name.items()) if self.by_name else "integer labels >= 0"
        raise DomainKnowledgeError(f"{self.source}: {where} names unknown label {label!r}; labels are: {known}")

