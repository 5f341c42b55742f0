"""Volume-based post-processing: connected components of a class smaller than the class's minimum size (in voxels,
from the ``min_component_size`` section of domain_knowledge.json) are set to background, which removes the stray
fragments a network leaves of structures whose size is known (teeth, canals). Components are fully connected
(26-neighbourhood in 3D, 8 in 2D); a component of exactly the minimum size stays."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_mamba.data.domain_knowledge import (PLANS_KEY, DomainKnowledgeError, load_domain_knowledge,
                                                  parse_domain_knowledge)
from nnunetv2_mamba.data.scribble_dataset import dataset_reader_writer

# files nnUNetv2_predict writes beside the predictions; copied so that the output folder can be evaluated alike
_FOLDER_FILES = ("dataset.json", "plans.json", "predict_from_raw_data_args.json")


def remove_small_components(segmentation: np.ndarray, min_sizes: Mapping[int, int],
                            background: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """A copy of ``segmentation`` without the components of each label in ``min_sizes`` that have fewer voxels
    than its minimum, and the number of components removed per label."""
    result = segmentation.copy()
    structure = ndimage.generate_binary_structure(segmentation.ndim, segmentation.ndim)
    removed = {}
    for label, minimum in min_sizes.items():
        components, count = ndimage.label(segmentation == label, structure)
        small = np.flatnonzero(np.bincount(components.ravel(), minlength=count + 1)[1:] < minimum) + 1
        result[np.isin(components, small)] = background
        removed[label] = len(small)
    return result, removed


def stored_min_sizes(prediction_folder: Path, dataset_json: Mapping,
                     knowledge_file: str | os.PathLike | None = None) -> dict[int, int]:
    """The minimum sizes of ``knowledge_file`` (a domain_knowledge.json), else of the plans.json nnUNetv2_predict
    copied into ``prediction_folder`` (trainers store the dataset's domain knowledge there)."""
    if knowledge_file is not None:
        sizes = load_domain_knowledge(knowledge_file, dataset_json["labels"]).min_component_size
        source = str(knowledge_file)
    else:
        plans = prediction_folder / "plans.json"
        stored = json.loads(plans.read_text()).get(PLANS_KEY, {}) if plans.is_file() else {}
        source = f"{plans}[{PLANS_KEY!r}]"
        sizes = parse_domain_knowledge(stored, None, source).min_component_size
    if not sizes:
        raise DomainKnowledgeError(f"{source} has no min_component_size section: pass a domain_knowledge.json "
                                   f"with one (-k), or predict with a model trained while the dataset's "
                                   f"domain_knowledge.json had it")
    return sizes


def _process(input_file: str, output_file: str, reader_writer_class, min_sizes: dict[int, int]) -> dict[int, int]:
    rw = reader_writer_class()
    segmentation, properties = rw.read_seg(input_file)
    cleaned, removed = remove_small_components(segmentation[0], min_sizes)
    rw.write_seg(cleaned, output_file, properties)
    return removed


def remove_small_components_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                                   min_sizes: Mapping[int, int], dataset_json: Mapping,
                                   num_processes: int = 1) -> dict[int, int]:
    """Apply :func:`remove_small_components` to every segmentation of ``input_folder`` (read and written with the
    dataset's nnU-Net reader-writer) into ``output_folder``; returns the components removed per label in total."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    ending = dataset_json["file_ending"]
    files = sorted(p for p in input_folder.glob(f"*{ending}") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{input_folder}: no segmentations ending in {ending}")
    if output_folder.resolve() == input_folder.resolve():
        raise ValueError(f"output folder {output_folder} must differ from the input folder")
    output_folder.mkdir(parents=True, exist_ok=True)
    for name in _FOLDER_FILES:
        if (input_folder / name).is_file():
            shutil.copy(input_folder / name, output_folder / name)
    rw_class = type(dataset_reader_writer(dataset_json, str(files[0])))
    jobs = [(str(f), str(output_folder / f.name), rw_class, dict(min_sizes)) for f in files]
    if num_processes > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            removed = list(tqdm(pool.map(_process, *zip(*jobs)), total=len(jobs), desc="removing small components"))
    else:
        removed = [_process(*job) for job in tqdm(jobs, desc="removing small components")]
    return {label: sum(r[label] for r in removed) for label in min_sizes}
