"""Derive plans for one of our architectures from a dataset's nnU-Net plans, and write them beside those.

What changes per configuration: ``architecture`` (class, translated ``arch_kwargs``), the override file's
per-dimension changes, and the batch size where the network needs more memory than the base plans' network on the
same patch (scaled down by nnU-Net's own estimate, ``compute_conv_feature_map_size``, so that the base plans' memory
budget holds; never below nnU-Net's minimum of 2). What stays: everything preprocessing depends on
(``data_identifier``, spacing, normalization, patch size), so no re-preprocessing is needed.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import pydoc
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

from nnunetv2_mamba.plans.errors import PlansError
from nnunetv2_mamba.plans.overrides import load_override
from nnunetv2_mamba.plans.translate import TRANSLATIONS

logger = logging.getLogger(__name__)

IMPORTED_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")
MIN_BATCH_SIZE = 2  # nnU-Net's ExperimentPlanner.UNet_min_batch_size


def derive_plans(base_plans: dict[str, Any], architecture: str, configurations: Sequence[str] | None = None,
                 dataset_json: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Plans named ``<base plans_name>_<architecture>`` and notes on what was skipped or changed.

    ``configurations=None`` takes every configuration of the base plans the architecture can host and skips the
    others with a note; configurations asked for explicitly that it cannot host raise :class:`PlansError`.
    ``dataset_json`` gives the channel and label counts for the memory estimate (1 and 2 if omitted).
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    override = load_override(architecture)
    translate = TRANSLATIONS[architecture]
    supported = override["configuration_changes"]
    manager = PlansManager(base_plans)
    available = manager.available_configurations
    explicit = configurations is not None
    if explicit:
        unknown = [c for c in configurations if c not in available]
        if unknown:
            raise PlansError(f"configuration(s) {unknown} are not in plans {manager.plans_name!r}; "
                             f"available: {available}")
    wanted = list(configurations) if explicit else available

    notes: list[str] = []
    derived: dict[str, dict[str, Any]] = {}
    for name in wanted:
        config = deepcopy(manager.get_configuration(name).configuration)
        dim = f"{len(config['patch_size'])}d"
        if dim not in supported:
            reason = (f"{architecture} cannot run configuration {name!r}: it is {dim} and {architecture} supports "
                      f"{' and '.join(supported)} only")
            if explicit:
                raise PlansError(reason)
            notes.append(f"skipped {name}: {reason}")
            continue
        where = f"configuration {name!r} of plans {manager.plans_name!r}"
        arch_kwargs = translate(config["architecture"]["arch_kwargs"], override["architecture"]["arch_kwargs"], where)
        base_architecture = config["architecture"]
        config["architecture"] = {
            "network_class_name": override["architecture"]["network_class_name"],
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": [k for k in IMPORTED_KWARGS if k in arch_kwargs],
        }
        config.update(deepcopy(supported[dim]))
        note = _fit_batch_size(config, base_architecture, dataset_json, where)
        if note:
            notes.append(f"{name}: {note}")
        config.pop("inherits_from", None)  # resolved above; the parent may not be part of the derived plans
        derived[name] = config

    for name in list(derived):
        previous = derived[name].get("previous_stage")
        if previous is not None and previous not in derived:
            reason = f"{name} is a cascade stage whose previous stage {previous!r} is not in the derived plans"
            if explicit:
                raise PlansError(f"{reason}; ask for both: -c {previous} {name}")
            notes.append(f"skipped {reason}")
            del derived[name]
    for config in derived.values():
        if "next_stage" in config:
            following = [n for n in _as_list(config["next_stage"]) if n in derived]
            if following:
                config["next_stage"] = following
            else:
                del config["next_stage"]
    if not derived:
        raise PlansError(f"no configuration of plans {manager.plans_name!r} ({available}) can host {architecture}, "
                         f"which supports {' and '.join(supported)} configurations")

    plans = deepcopy(base_plans)
    plans["plans_name"] = f"{base_plans['plans_name']}_{architecture}"
    plans["configurations"] = derived
    return plans, notes


def write_plans(dataset: str | int, architecture: str, configurations: Sequence[str] | None = None,
                base_plans: str = "nnUNetPlans") -> tuple[Path, list[str]]:
    """Write ``<base_plans>_<architecture>.json`` into the dataset's nnUNet_preprocessed folder; returns its path
    and the notes of :func:`derive_plans` plus reminders for configurations whose data is not preprocessed yet."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise PlansError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed "
                         "(see `nnunetv2_mamba doctor`)")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise PlansError(f"dataset {dataset!r}: {e}") from e
    folder = Path(nnUNet_preprocessed.get()) / dataset_name
    base_file = folder / f"{base_plans}.json"
    if not base_file.is_file():
        raise PlansError(f"{base_file} does not exist: plan the dataset first with "
                         f"`nnUNetv2_plan_and_preprocess -d {dataset}` (or nnUNetv2_plan_experiment), or name "
                         f"existing plans with --base-plans")
    dataset_file = folder / "dataset.json"
    dataset_json = json.loads(dataset_file.read_text()) if dataset_file.is_file() else None
    plans, notes = derive_plans(json.loads(base_file.read_text()), architecture, configurations, dataset_json)
    target = folder / f"{plans['plans_name']}.json"
    target.write_text(json.dumps(plans, indent=4) + "\n")
    for name, config in plans["configurations"].items():
        if not (folder / config["data_identifier"]).is_dir():
            notes.append(f"{name}: not preprocessed yet ({folder / config['data_identifier']} is missing); run "
                         f"nnUNetv2_preprocess -d {dataset} -plans_name {plans['plans_name']} -c {name}")
    return target, notes


def _fit_batch_size(config: dict[str, Any], base_architecture: dict[str, Any], dataset_json: dict[str, Any] | None,
                    where: str) -> str | None:
    """Lower ``config['batch_size']`` so that batch x feature-map size stays within the base network's; returns a
    note when it changed or could not be estimated."""
    channels = len(dataset_json["channel_names"]) if dataset_json else 1
    classes = len(dataset_json["labels"]) if dataset_json else 2
    patch = config["patch_size"]
    network = build_network(config["architecture"], channels, classes, where)
    if not hasattr(network, "compute_conv_feature_map_size"):
        return f"kept batch size {config['batch_size']} ({type(network).__name__} has no memory estimate)"
    ours = int(network.compute_conv_feature_map_size(patch))
    base = int(build_network(base_architecture, channels, classes, where).compute_conv_feature_map_size(patch))
    if ours <= base:
        return None
    batch_size = max(MIN_BATCH_SIZE, math.floor(config["batch_size"] * base / ours))
    if batch_size == config["batch_size"]:
        return None
    note = (f"batch size {config['batch_size']} -> {batch_size} ({ours / base:.2f}x the feature maps of the base "
            f"network per sample)")
    config["batch_size"] = batch_size
    return note


def build_network(architecture: dict[str, Any], input_channels: int, num_classes: int, where: str):
    """The network an ``architecture`` block describes, built the way nnU-Net builds it; import and constructor
    errors become a :class:`PlansError` naming the class and configuration."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    class_name = architecture["network_class_name"]
    if pydoc.locate(class_name) is None:
        module_name = class_name.rpartition(".")[0]
        try:
            importlib.import_module(module_name)
            reason = f"module {module_name} has no attribute {class_name.rpartition('.')[2]}"
        except Exception as e:  # noqa: BLE001 - report whatever the import raised
            reason = f"{type(e).__name__}: {e}"
        raise PlansError(f"{where}: network class {class_name} cannot be imported ({reason})")
    try:
        return get_network_from_plans(class_name, architecture["arch_kwargs"], architecture["_kw_requires_import"],
                                      input_channels, num_classes, allow_init=False, deep_supervision=True)
    except Exception as e:  # noqa: BLE001 - any constructor error means these arch_kwargs do not fit the class
        raise PlansError(f"{where}: {class_name} cannot be built from these arch_kwargs: "
                         f"{type(e).__name__}: {e}") from e


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
