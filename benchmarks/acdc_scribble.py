"""ACDC with real scribbles: stock nnU-Net, Weak-Mamba-UNet and the dense upper bound under one protocol.

One command, resumable: a re-run skips the conversion, the preprocessing, every training whose checkpoint_final.pth
exists (an interrupted one resumes from its latest checkpoint) and every evaluation whose JSON exists.

1. Data: the WSL4MIS HDF5 volumes (``--data``, default ``../shared/data/acdc_scribble``) converted by ``convert_h5
   --mode 2d`` (one case per slice) with ``--splits`` (default the folder's ``splits_heldout.json``: train 60 / val 10
   / test 10 patients): train and val patients become nnU-Net's fold 0 (scribbles in labelsTr, dense labels in
   labelsTr_dense), test patients go to imagesTs / labelsTs. A dense twin with the same images and split trains the
   upper bound. nnU-Net plans and preprocesses each once (``2d``).
2. Methods, each trained on the train patients with the same plans and schedule (the ``_<budget>`` variants of
   :mod:`nnunetv2_mamba.training.variants.scribble`), once per seed (``--seeds``):

   - ``nnUNetTrainerScribbleBaseline``: stock nnU-Net on the scribbles (partial Dice + CE through the ignore label);
   - the same for as many iterations as fit in WeakMamba's training wall-clock of the same seed ("equal wall-clock"):
     WeakMamba trains three networks, so equal iterations are not equal compute;
   - ``nnUNetTrainerWeakMamba`` (the default configuration), predicted with the ensemble and with each network alone;
     with ``--paper``, also ``nnUNetTrainerWeakMambaPaper`` (the paper's configuration);
   - ``nnUNetTrainerDense``: stock ``nnUNetTrainer`` on the dense labels, the upper bound;
   - with ``--ablation``: MambaUNet alone and SwinUNet alone on the scribbles (plans of ``nnunetv2_mamba plans -a``).

   Every training runs in its own process, seeded, with ``OMP_WAIT_POLICY=PASSIVE`` unless set (busy-waiting OpenMP
   threads slow a training several-fold when another job shares the cores).
3. Selection on val only: ``checkpoint_best.pth``, which nnU-Net picks by its online validation Dice on dense patches
   of the val patients (``DenseValidationMixin``).
4. Test: the test patients' slices predicted (``nnUNetPredictor``), stacked back into volumes and scored per volume
   as the literature does (WSL4MIS, Weak-Mamba-UNet): Dice per class and mean, HD95 and ASD in mm at the converter's
   stated spacing, means over volumes; per-slice Dice and the largest-component post-processed Dice as secondary
   columns. ``--test-images/--test-labels`` score other 2D slices (named ``<volume>_slice<NN>``) instead; ``--on val``
   scores the val patients, for method decisions. Tables give mean ± sd over the seeds.

Budgets (every reduction applies identically to every method):

- ``smoke``: the CI check that the pipeline runs: 2 x 2 iterations, patch 128 x 128, batch 2, features / 16, tiny
  token networks. Its numbers mean nothing.
- ``cpu``: 1000 iterations (40 epochs x 25, 5 validation iterations each), patch 128 x 128 with the stages nnU-Net
  plans for it, batch 8, features / 2, token networks 48 wide with two blocks per level, no mirroring: about two hours
  per seed on 2 CPU cores (its five trainings and their predictions). Chosen from measured steps: nnU-Net's full 2d
  configuration (patch 256 x 224, batch 8) takes about 12.5 s an iteration on 2 CPU cores; at this budget an epoch
  of 25 training and 5 validation steps takes about 55 s for WeakMamba alone on the cores and 11 s for the baseline
  and the dense bound.
- ``paper``: nnU-Net's plans unchanged and the paper's 30k iterations, full-size token networks, mirroring: a GPU.

Outputs in ``<work>/<budget>/``: ``acdc_scribble_<budget>_<test>.md`` (the table), ``.json`` (the rows, every seed's
evaluations and training curves) and ``.png``; per seed, the models in ``seed<N>/nnUNet_results*``, predictions and
evaluations in ``<test>/seed<N>/``; nnU-Net's logs in ``<work>/logs``. Results: documentation/benchmarks.md, rendered
from the run's JSON copied to documentation/results/.

    python benchmarks/acdc_scribble.py --budget cpu [--seeds 0 1 2] [--paper] [--ablation] [--distances mm|px]
        [--data DIR] [--splits FILE] [--work DIR] [--on test|val] [--test-images DIR --test-labels DIR] [--patients N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    from nnunetv2_mamba.training.variants.schedule import Schedule

# Only the standard library at module level: nnU-Net's preprocessing workers and our training processes are spawned
# processes that import this module again, and importing torch, nnU-Net and our package would cost each seconds.
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "acdc_scribble"
DEFAULT_SPLITS = "splits_heldout.json"  # in --data
DEFAULT_WORK = HERE / "results" / "acdc_scribble"  # in benchmarks/common.py's RESULTS_DIR
DATASET_IDS = {False: 27, True: 28}  # by `dense`: the scribble dataset and its dense twin (the work folder's own)
DATASETS = {False: "Dataset027_ACDCScribble2D", True: "Dataset028_ACDCDense2D"}
CONFIGURATION, FOLD = "2d", 0
CHECKPOINT = "checkpoint_best.pth"  # selected on the val split by nnU-Net's online (here: dense) validation Dice
IMAGE_SUFFIX = "_0000.nii.gz"  # the converter's single channel and file ending
ABLATION = ("MambaUNet", "SwinUNet")
POSTPROCESSED = "__largest_component"  # suffix of the post-processed predictions and evaluations
VOLUME = {"mm": "__volume", "px": "__volume_px"}  # suffix of the per-volume evaluations, by distance unit
MIN_FEATURE_MAP = 4  # nnU-Net's planner: UNet_featuremap_min_edge_length
NEAR = 10  # pixels: a false positive this close to the true structures is a boundary error, farther a false blob
Say = Callable[[str], None]  # progress output


def weak_mamba_members() -> dict[str, str | None]:
    """WeakMamba's 2D members by name: {"cnn": None (the plans' U-Net), "vit": "SwinUNet", "mamba": "MambaUNet"}."""
    from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import nnUNetTrainerWeakMamba

    return nnUNetTrainerWeakMamba.members[2]


@dataclass(frozen=True)
class Budget:
    """Edits of nnU-Net's 2d plans, applied to both datasets (None: nnU-Net's value); the schedule is the
    ``_<name>`` variant of every trainer in :mod:`nnunetv2_mamba.training.variants.scribble`."""

    name: str
    patch_size: tuple[int, int] | None = None
    batch_size: int | None = None
    width_divisor: int = 1

    @property
    def plans(self) -> str:
        return "nnUNetPlans" if self.name == "paper" else f"nnUNetPlans_{self.name}"

    @property
    def schedule(self) -> Schedule:
        from nnunetv2_mamba.training.variants import scribble as scribble_schedules

        return getattr(scribble_schedules, self.name.upper())

    @property
    def weak_mamba(self) -> type:
        """WeakMamba's trainer at this budget."""
        from nnunetv2_mamba.training.variants import scribble as scribble_schedules

        return getattr(scribble_schedules, f"nnUNetTrainerWeakMamba_{self.name}")

    def token_networks(self) -> dict[str, dict]:
        """WeakMamba's member options at this budget (also those of the ablation's single networks)."""
        return self.weak_mamba.member_arch_kwargs

    def describe(self) -> str:
        s = self.schedule
        edits = [f"patch {'x'.join(map(str, self.patch_size))} (stages as nnU-Net plans them for it)"
                 if self.patch_size else "", f"batch {self.batch_size}" if self.batch_size else "",
                 f"features / {self.width_divisor}" if self.width_divisor > 1 else ""]
        tokens = self.token_networks()
        return (f"budget {self.name}: plans {self.plans} = nnU-Net's 2d plans, "
                f"{', '.join(e for e in edits if e) or 'unchanged'}; {s.epochs} epochs x {s.iterations_per_epoch} "
                f"iterations = {s.epochs * s.iterations_per_epoch} iterations ({s.val_iterations_per_epoch} "
                f"validation iterations per epoch), mirroring {'on' if s.mirroring else 'off'}; WeakMamba token "
                f"networks {json.dumps(tokens) if tokens else 'at paper size'}")


BUDGETS = {"smoke": Budget("smoke", (128, 128), 2, 16),
           "cpu": Budget("cpu", (128, 128), 8, 2),
           "paper": Budget("paper")}


class Training(NamedTuple):
    """One nnU-Net training; ``equal_time`` trains as many iterations as WeakMamba's training took wall-clock."""

    trainer: str
    plans: str
    dense: bool = False
    equal_time: bool = False

    @property
    def dataset(self) -> str:
        return DATASETS[self.dense]

    def results(self, seed_folder: Path) -> Path:
        """This training's nnUNet_results folder for one seed."""
        return seed_folder / ("nnUNet_results_equal_time" if self.equal_time else "nnUNet_results")

    def model_folder(self, seed_folder: Path) -> Path:
        """nnU-Net's model folder (``get_output_folder``'s layout) of this training for one seed."""
        from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

        return (self.results(seed_folder) / DATASETS[self.dense]
                / convert_trainer_plans_config_to_identifier(self.trainer, self.plans, CONFIGURATION))

    @property
    def slug(self) -> str:
        return f"{self.trainer}__{self.plans}" + ("__equal_time" if self.equal_time else "")


class Method(NamedTuple):
    """One row of the table: a training, predicted with the ensemble (member None) or one WeakMamba member."""

    name: str
    training: Training
    member: str | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name).strip("_")


def methods(budget: Budget, ablation: bool, paper: bool = False) -> list[Method]:
    """The table's rows, in order: WeakMamba first (the equal wall-clock baseline needs its training time)."""
    suffix = f"_{budget.name}"
    baseline = Training(f"nnUNetTrainerScribbleBaseline{suffix}", budget.plans)
    weak = Training(f"nnUNetTrainerWeakMamba{suffix}", budget.plans)
    rows = [Method("WeakMamba ensemble", weak)]
    rows += [Method(f"WeakMamba {member} alone", weak, member) for member in weak_mamba_members()]
    if paper:
        rows.append(Method("WeakMamba (paper's configuration) ensemble",
                           Training(f"nnUNetTrainerWeakMambaPaper{suffix}", budget.plans)))
    rows += [Method("nnU-Net (scribbles)", baseline),
             Method("nnU-Net (scribbles), equal wall-clock", baseline._replace(equal_time=True)),
             Method("nnU-Net (dense, upper bound)", Training(f"nnUNetTrainerDense{suffix}", budget.plans, True))]
    if ablation:
        rows += [Method(f"{arch} alone (scribbles)", baseline._replace(plans=f"{budget.plans}_{arch}"))
                 for arch in ABLATION]
    return rows


# ---------------------------------------------------------------------------------------------------- preparation

def select_patients(splits_file: Path, patients: int | None) -> dict[str, list[str]]:
    """The splits file's patients per split (``train``, ``val``, ``test``), or the first ``patients`` of each."""
    from nnunetv2_mamba.data.convert_h5 import read_splits

    splits = read_splits(splits_file)
    return {name: sorted(ids)[:patients] if patients else sorted(ids) for name, ids in splits.items()}


def link(source: Path, target: Path) -> None:
    """A hard link where the file system allows (the images are not changed), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_dense_twin(scribbles: Path, target: Path) -> None:
    """The scribble dataset's training images, its dense labels as labelsTr and the same split: what the upper bound
    trains on. Hard links where possible; written atomically like the converter's output."""
    from nnunetv2_mamba.data.scribble_dataset import DENSE_LABELS_TR, IGNORE, atomic_dataset_folder

    with atomic_dataset_folder(target, overwrite=True) as tmp:
        for source, sub in ((scribbles / "imagesTr", "imagesTr"), (scribbles / DENSE_LABELS_TR, "labelsTr")):
            (tmp / sub).mkdir()
            for f in source.iterdir():
                link(f, tmp / sub / f.name)
        dataset_json = json.loads((scribbles / "dataset.json").read_text())
        dataset_json["labels"] = {k: v for k, v in dataset_json["labels"].items() if k != IGNORE}
        dataset_json["description"] = f"dense twin of {scribbles.name}: the same images and split, dense labels"
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
        shutil.copy2(scribbles / "splits_final.json", tmp / "splits_final.json")


def plan_and_preprocess(dataset_id: int, processes: int) -> None:
    """nnUNetv2_plan_and_preprocess -d ID -c 2d, from scratch (an interrupted run may have left a partial folder).
    No integrity check: the converter validated the dataset (and so the dense labels of a dense twin)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / convert_id_to_dataset_name(dataset_id), ignore_errors=True)
    extract_fingerprints([dataset_id], num_processes=processes, show_progress_bar=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=(CONFIGURATION,), num_processes=(processes,), show_progress_bar=False)


def run_steps(work: Path, source: dict[str, Any], steps: dict[str, Callable[[], None]], say: Say) -> dict[str, float]:
    """Run each step not yet marked done in ``work/preparation.json`` (its output to ``work/logs``); returns the
    seconds each step took when it ran. ``source`` (the data and patients) must match the record's."""
    from nnunetv2_mamba.utilities.output import output_to

    record = work / "preparation.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    if done.get("source", source) != source:
        sys.exit(f"{work} holds a preparation of other data or patients ({done['source']}); use another --work")
    done["source"] = source
    for name, step in steps.items():
        if name in done:
            continue
        say(f"{name} ...")
        started = time.perf_counter()
        with open(work / "logs" / f"{name.replace(' ', '_')}.log", "w") as log, output_to(log):
            step()
        done[name] = time.perf_counter() - started
        record.write_text(json.dumps(done, indent=1))
        say(f"  {done[name]:.0f} s")
    return {k: v for k, v in done.items() if k != "source"}


def prepare(data: Path, splits_file: Path, work: Path, patients: int | None, processes: int,
            say: Say) -> dict[str, float]:
    """Convert, derive the dense twin, plan and preprocess both, each step once; returns the seconds each step took
    when it ran (kept in ``preparation.json``, which marks the steps done)."""
    from nnunetv2_mamba.data.convert_h5 import convert_h5

    source = {"data": str(data.resolve()), "splits": select_patients(splits_file, patients)}
    raw = Path(os.environ["nnUNet_raw"])
    steps = {"convert": partial(convert_h5, data, raw / DATASETS[False], mode="2d", splits=source["splits"],
                                overwrite=True),  # a step not marked done may have finished before an interruption
             "dense twin": partial(write_dense_twin, raw / DATASETS[False], raw / DATASETS[True]),
             f"preprocess {DATASETS[False]}": partial(plan_and_preprocess, DATASET_IDS[False], processes),
             f"preprocess {DATASETS[True]}": partial(plan_and_preprocess, DATASET_IDS[True], processes)}
    return run_steps(work, source, steps, say)


def budget_plans(plans: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """nnU-Net's plans reduced to the 2d configuration with the budget's edits. A smaller patch gets the stages,
    strides and kernels nnU-Net's planner gives that patch (its ``get_pool_and_conv_props``) and the planned
    features and convolutions of those stages; widths are divided as the demo's ``narrow_plans`` does."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    from nnunetv2_mamba.plans.narrow import narrow_plans

    configuration = plans["configurations"][CONFIGURATION]
    plans["configurations"] = {CONFIGURATION: configuration}
    plans["plans_name"] = budget.plans
    if budget.patch_size:
        _, strides, kernels, patch, _ = get_pool_and_conv_props(configuration["spacing"], budget.patch_size,
                                                                MIN_FEATURE_MAP, 999999)
        kwargs = configuration["architecture"]["arch_kwargs"]
        n = len(strides)
        if n > kwargs["n_stages"]:
            raise ValueError(f"patch {budget.patch_size} needs {n} stages, nnU-Net planned {kwargs['n_stages']}")
        kwargs.update(n_stages=n, strides=strides, kernel_sizes=kernels,
                      features_per_stage=kwargs["features_per_stage"][:n],
                      n_conv_per_stage=kwargs["n_conv_per_stage"][:n],
                      n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"][:n - 1])
        configuration["patch_size"] = [int(p) for p in patch]
    if budget.batch_size:
        configuration["batch_size"] = budget.batch_size
    return narrow_plans(plans, budget.width_divisor)


def write_budget_plans(budget: Budget, ablation: bool) -> None:
    """The budget's plans for both datasets (the same edits, the same preprocessed data) and, for the ablation, the
    single-architecture plans derived from them (``nnunetv2_mamba plans -a ARCH``), whose network is exactly the
    WeakMamba member of that architecture and whose batch size is everybody's."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_mamba.plans import derive_plans
    from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import member_architecture

    preprocessed = Path(os.environ["nnUNet_preprocessed"])
    if budget.plans != "nnUNetPlans":
        for dataset in DATASETS.values():
            plans = json.loads((preprocessed / dataset / "nnUNetPlans.json").read_text())
            (preprocessed / dataset / f"{budget.plans}.json").write_text(json.dumps(budget_plans(plans, budget),
                                                                                    indent=1))
    if not ablation:
        return
    folder = preprocessed / DATASETS[False]
    base = json.loads((folder / f"{budget.plans}.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    configuration_manager = PlansManager(base).get_configuration(CONFIGURATION)
    for arch in ABLATION:
        plans, _ = derive_plans(base, arch, [CONFIGURATION], dataset_json)
        member = next(name for name, a in weak_mamba_members().items() if a == arch)
        class_name, kwargs, imports = member_architecture(configuration_manager, arch,
                                                          budget.token_networks().get(member, {}), f"ablation {arch}")
        configuration = plans["configurations"][CONFIGURATION]
        configuration["architecture"] = {"network_class_name": class_name, "arch_kwargs": kwargs,
                                         "_kw_requires_import": imports}
        configuration["batch_size"] = configuration_manager.batch_size
        (folder / f"{plans['plans_name']}.json").write_text(json.dumps(plans, indent=1))


# --------------------------------------------------------------------------------------- training and evaluation

def epoch_seconds(checkpoint: Path) -> list[float]:
    """Wall-clock seconds of each epoch of a training (its training and online validation iterations) from nnU-Net's
    logging in its checkpoint: complete across resumed runs, without start-up and final validation."""
    import torch

    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return [end - start for start, end in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]


def train_process(dataset: str, trainer_name: str, plans: str, seed: int, epochs: int | None, pretrained: str | None,
                  device: str, log_file: str, record_file: str) -> None:
    """One training (``nnUNetv2_train``) in a spawned process whose environment names its nnUNet_results: seeded,
    ``epochs`` (None: the schedule's), resumed from its latest checkpoint if there is one, else started from
    ``pretrained`` weights if given (nnU-Net's ``-pretrained_weights``); on a CPU with the augmentation in this process
    as the demo does (worker processes would compete for the same cores); writes the cost record to ``record_file``."""
    import random
    import statistics

    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from nnunetv2_mamba.training.timed_training import run_timed_training
    from nnunetv2_mamba.utilities.output import output_to

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device == "cpu":
        os.environ["nnUNet_n_proc_DA"] = "0"
    with open(log_file, "a") as log, output_to(log):
        trainer = get_trainer_from_args(dataset, CONFIGURATION, FOLD, trainer_name, plans, device=torch.device(device))
        if epochs is not None:
            trainer.num_epochs = epochs
        resume = any(Path(trainer.output_folder).glob("checkpoint_*.pth"))
        maybe_load_checkpoint(trainer, continue_training=resume, validation_only=False,
                              pretrained_weights_file=None if resume else pretrained)
        resumed_at = trainer.current_epoch
        steps = run_timed_training(trainer)
    epochs_seconds = epoch_seconds(Path(trainer.output_folder) / "checkpoint_final.pth")
    record = {"seed": seed, "epochs": trainer.num_epochs,
              "iterations": trainer.num_epochs * trainer.num_iterations_per_epoch, "seconds": sum(epochs_seconds),
              "epoch_seconds_median": statistics.median(epochs_seconds), "resumed_at_epoch": resumed_at,
              "seconds_per_iteration": statistics.median(steps[1:] or steps) if steps else None,
              "params": sum(p.numel() for p in trainer.network.parameters())}
    Path(record_file).write_text(json.dumps(record, indent=1))


def run_training(training: Any, seed: int, seed_folder: Path, logs: Path, device: torch.device, say: Say,
                 epochs: int | None = None, pretrained: Path | None = None) -> dict[str, Any]:
    """Train unless checkpoint_final.pth exists, holding a lock beside the record that makes a second run on the same
    work folder stop instead of training the same model at once; returns the cost record (iterations, training
    wall-clock seconds, median seconds of a training step, parameters), kept in ``seed_folder/training``.
    ``training`` names its ``dataset``, ``trainer``, ``plans``, ``slug`` and ``model_folder(seed_folder)`` (this
    module's Training and acdc_dense.py's)."""
    record = seed_folder / "training" / f"{training.slug}.json"
    model_folder = training.model_folder(seed_folder)
    record.parent.mkdir(parents=True, exist_ok=True)
    with training_lock(record.with_suffix(".lock"), training.slug, seed):
        if (model_folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file() and record.is_file():
            return json.loads(record.read_text())
        say(f"seed {seed}: nnUNetv2_train {training.dataset} {CONFIGURATION} {FOLD} -tr {training.trainer} "
            f"-p {training.plans}" + (f" -pretrained_weights {pretrained}" if pretrained else "")
            + (f" ({epochs} epochs)" if epochs else ""))
        os.environ["nnUNet_results"] = str(model_folder.parents[1])  # the spawned process inherits it
        os.makedirs(os.environ["nnUNet_results"], exist_ok=True)
        log = logs / f"train_seed{seed}_{training.slug}.log"
        process = multiprocessing.get_context("spawn").Process(
            target=train_process, args=(training.dataset, training.trainer, training.plans, seed, epochs,
                                        pretrained and str(pretrained), device.type, str(log), str(record)))
        process.start()
        process.join()
    if process.exitcode != 0:
        sys.exit(f"training {training.slug} (seed {seed}) failed with exit code {process.exitcode}; see {log}")
    result = json.loads(record.read_text())
    say(f"  {result['iterations']} iterations, {result['seconds']:.0f} s of training (a step "
        f"{result['seconds_per_iteration'] or float('nan'):.2f} s)")
    return result


@contextmanager
def training_lock(path: Path, slug: str, seed: int) -> Iterator[None]:
    """Hold ``path`` (an OS file lock, released when the process ends) or exit: two benchmark runs on one work
    folder would otherwise train the same model into the same folder at once."""
    from filelock import FileLock, Timeout

    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        sys.exit(f"another process is training {slug} (seed {seed}): {path} is locked. Wait for it to end, or "
                 f"give this run another --work folder")
    try:
        yield
    finally:
        lock.release()


def equal_time_epochs(weak_mamba: dict[str, Any], baseline: dict[str, Any]) -> int:
    """Epochs of the baseline that take as long as WeakMamba's training did: WeakMamba's epochs times the ratio of the
    two trainings' median epoch wall-clock (the same machine, the same seed's run; the median leaves out the first
    epoch's one-off costs, such as compiling the fused CPU scan on a new machine)."""
    return max(1, round(weak_mamba["epochs"] * weak_mamba["epoch_seconds_median"]
                        / baseline["epoch_seconds_median"]))


def train_seed(rows: list[Method], seed: int, seed_folder: Path, logs: Path, device: torch.device,
               say: Say) -> dict[Training, dict[str, Any]]:
    """Every training of one seed in the rows' order, which trains WeakMamba and the baseline before the equal
    wall-clock baseline, whose epochs are fixed once (``seed_folder/equal_time.json``) so that a resumed run trains
    the same."""
    timings: dict[Training, dict[str, Any]] = {}
    for training in dict.fromkeys(row.training for row in rows):
        epochs = None
        if training.equal_time:
            chosen = seed_folder / "equal_time.json"
            if not chosen.is_file():
                weak = next(t for t in timings if t.trainer.startswith("nnUNetTrainerWeakMamba_"))
                base = training._replace(equal_time=False)
                chosen.write_text(json.dumps({"epochs": equal_time_epochs(timings[weak], timings[base]),
                                              "weak_mamba": timings[weak], "baseline": timings[base]}, indent=1))
            epochs = json.loads(chosen.read_text())["epochs"]
        timings[training] = run_training(training, seed, seed_folder, logs, device, say, epochs)
    return timings


def test_set(on: str, test_images: Path | None, test_labels: Path | None) -> tuple[str, list[list[str]], Path]:
    """(name, image files per case, reference folder) of the scored set: ``--test-images``/``--test-labels``, the
    converted test patients (``imagesTs``/``labelsTs``) or the val patients' slices with their dense labels."""
    from nnunetv2_mamba.data.scribble_dataset import DENSE_LABELS_TR

    raw = Path(os.environ["nnUNet_raw"]) / DATASETS[False]
    if test_images:
        cases = sorted(str(p) for p in test_images.resolve().glob(f"*{IMAGE_SUFFIX}"))
        if not cases:
            sys.exit(f"{test_images}: no images named CASE{IMAGE_SUFFIX}")
        tag = hashlib.sha1(str(test_images.resolve()).encode()).hexdigest()[:8]
        return f"test-{tag}", [[c] for c in cases], test_labels.resolve()
    if on == "val":
        val = json.loads((raw / "splits_final.json").read_text())[FOLD]["val"]
        return "val", [[str(raw / "imagesTr" / f"{case}{IMAGE_SUFFIX}")] for case in val], raw / DENSE_LABELS_TR
    cases = sorted(str(p) for p in (raw / "imagesTs").glob(f"*{IMAGE_SUFFIX}"))
    if not cases:
        sys.exit(f"{raw}: no test patients (imagesTs is empty): the splits file names no 'test' patients; pass "
                 f"--on val or --test-images/--test-labels")
    return "test", [[c] for c in cases], raw / "labelsTs"


def predict_and_evaluate(training: Training, rows: list[Method], images: list[list[str]], labels: Path,
                         model_folder: Path, folder: Path, log_file: Path, device: torch.device, say: Say) -> None:
    """Predict the test images with the selected checkpoint of ``model_folder`` for every row (the ensemble or one
    member) into ``folder/predictions/<row>`` and evaluate each slice against ``labels`` into
    ``folder/evaluations/<row>.json``, which marks the row done. ``folder`` is the test set's, per seed."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_mamba.utilities.output import output_to
    from nnunetv2_mamba.evaluation.metrics import evaluate_folders, write_results
    from nnunetv2_mamba.nets.network_ensemble import ENSEMBLE, NetworkEnsemble

    todo = [row for row in rows if not (folder / "evaluations" / f"{row.slug}.json").is_file()]
    if not todo:
        return
    dataset_json = Path(os.environ["nnUNet_raw"]) / DATASETS[False] / "dataset.json"
    with open(log_file, "a") as log:
        with output_to(log):
            predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(model_folder), (FOLD,), CHECKPOINT)
        for row in todo:
            say(f"{row.name}: nnUNetv2_predict -f {FOLD} -chk {CHECKPOINT} -tr {training.trainer} -p {training.plans}"
                + (f" with nnUNet_ensemble_member={row.member}" if row.member else ""))
            if isinstance(predictor.network, NetworkEnsemble):
                predictor.network.inference_output = row.member or ENSEMBLE
            output = folder / "predictions" / row.slug
            shutil.rmtree(output, ignore_errors=True)
            output.mkdir(parents=True)
            started = time.perf_counter()
            with output_to(log):
                predictor.predict_from_files_sequential(
                    images, [str(output / Path(case[0]).name[:-len(IMAGE_SUFFIX)]) for case in images])
                seconds = time.perf_counter() - started
                results = evaluate_folders(labels, output, dataset_json, use_spacing=False, progress=False)
            results["prediction_seconds"] = seconds
            write_results(results, folder / "evaluations" / row.slug)
            say(f"  per-slice foreground Dice {results['foreground_mean']['Dice']:.4f} "
                f"({results['prediction_seconds']:.0f} s for {len(images)} cases)")


def postprocess_and_evaluate(rows: list[Method], labels: Path, folder: Path, say: Say) -> None:
    """nnU-Net's post-processing "remove all but the largest component" of every foreground class, the same for every
    row (fixed, not tuned), applied to ``folder/predictions/<row>`` into ``<row>__largest_component`` and evaluated
    into ``folder/evaluations/<row>__largest_component.json``: how much of a method's error is foreground far from
    the heart."""
    from nnunetv2.postprocessing.remove_connected_components import (
        load_postprocess_save, remove_all_but_largest_component_from_segmentation)

    from nnunetv2_mamba.data.scribble_dataset import dataset_reader_writer
    from nnunetv2_mamba.evaluation.metrics import evaluate_folders, write_results

    dataset_json = json.loads((Path(os.environ["nnUNet_raw"]) / DATASETS[True] / "dataset.json").read_text())
    classes = [value for value in dataset_json["labels"].values() if value != 0]
    for row in rows:
        slug = f"{row.slug}{POSTPROCESSED}"
        if (folder / "evaluations" / f"{slug}.json").is_file():
            continue
        source, output = folder / "predictions" / row.slug, folder / "predictions" / slug
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        files = sorted(source.glob(f"*{dataset_json['file_ending']}"))
        reader_writer = dataset_reader_writer(dataset_json, str(files[0]))
        for file in files:
            load_postprocess_save(str(file), str(output / file.name), reader_writer,
                                  [remove_all_but_largest_component_from_segmentation] * len(classes),
                                  [{"labels_or_regions": c} for c in classes])
        results = evaluate_folders(labels, output, dataset_json, use_spacing=False, progress=False)
        write_results(results, folder / "evaluations" / slug)


def score_volumes(predictions: Path, labels: Path, folder: Path, slice_spacing: float, dataset_json: Path,
                  use_spacing: bool) -> dict[str, Any]:
    """The slice predictions of ``predictions`` and their references in ``labels`` stacked into volumes
    (``folder/volumes/``, the references once) and scored per volume, distances in mm with ``use_spacing``, else in
    pixels."""
    from nnunetv2_mamba.evaluation.metrics import evaluate_folders
    from nnunetv2_mamba.evaluation.volumes import stack_references, stack_slices

    references = folder / "volumes" / "reference"
    if not references.is_dir():
        names = sorted(p.name for p in predictions.glob("*.nii.gz"))
        partial = references.with_name("reference.tmp")  # complete, then renamed: a resumed run never sees half
        shutil.rmtree(partial, ignore_errors=True)
        stack_references(labels, names, partial, slice_spacing)
        partial.rename(references)
    output = folder / "volumes" / predictions.name
    shutil.rmtree(output, ignore_errors=True)
    stack_slices(predictions, output, slice_spacing)
    return evaluate_folders(references, output, dataset_json, use_spacing=use_spacing, progress=False)


def evaluate_volumes(rows: list[Method], labels: Path, folder: Path, slice_spacing: float, unit: str,
                     say: Say) -> None:
    """Every row's slice predictions scored per volume (:func:`score_volumes`) with distances in ``unit`` (mm or px)
    into ``folder/evaluations/<row>__volume[_px].json``."""
    from nnunetv2_mamba.evaluation.metrics import write_results

    dataset_json = Path(os.environ["nnUNet_raw"]) / DATASETS[True] / "dataset.json"
    for row in rows:
        slug = f"{row.slug}{VOLUME[unit]}"
        if (folder / "evaluations" / f"{slug}.json").is_file():
            continue
        results = score_volumes(folder / "predictions" / row.slug, labels, folder, slice_spacing, dataset_json,
                                use_spacing=unit == "mm")
        write_results(results, folder / "evaluations" / slug)
        say(f"{row.name}: per-volume foreground Dice {results['foreground_mean']['Dice']:.4f} "
            f"({len(results['per_case'])} volumes)")


def error_breakdown(predictions: Path, labels: Path, classes: list[int], near: float = NEAR) -> dict[str, float]:
    """Where a method's errors are, summed over the classes and cases of ``predictions`` (against the files of the
    same name in ``labels``), as shares of the true foreground area: missed pixels (FN), and false positives within
    ``near`` pixels (Euclidean) of the true foreground of any class (boundary errors) or farther (false blobs; all of
    a case without foreground). What located the scribble methods' failure: blobs far from the heart."""
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    area = missed = boundary = blobs = 0
    for file in sorted(predictions.glob("*.nii.gz")):
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / file.name)))
        foreground = np.isin(reference, classes)
        is_near = (ndimage.distance_transform_edt(~foreground) <= near) if foreground.any() else foreground
        for c in classes:
            false_positive = (prediction == c) & (reference != c)
            area += int((reference == c).sum())
            missed += int(((reference == c) & (prediction != c)).sum())
            boundary += int((false_positive & is_near).sum())
            blobs += int((false_positive & ~is_near).sum())
    if not area:
        raise ValueError(f"{labels} holds no foreground of classes {classes} for the cases of {predictions}")
    return {"FN": missed / area, "FP near": boundary / area, "FP far": blobs / area}


def training_curves(model_folder: Path) -> dict[str, list[float]]:
    """Per-epoch curves of nnU-Net's logger, as stored in the final checkpoint (``checkpoint["logging"]``)."""
    import torch

    checkpoint = torch.load(model_folder / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    logging = checkpoint["logging"]
    keys = ["train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs"]
    keys += [k for k in logging if k.startswith("mean_fg_dice_")]
    return {k: [float(v) for v in logging[k]] for k in keys if k in logging}


def seed_row(method: Method, folder: Path, labels: Path, classes: dict[int, str], timing: dict,
             unit: str) -> dict[str, Any]:
    """One seed's numbers of one row: per-volume Dice per class and mean, HD95 and ASD (``unit``); per-slice mean Dice,
    before and after largest-component post-processing; the error breakdown; the training's cost."""
    def evaluation(suffix: str) -> dict:
        return json.loads((folder / "evaluations" / f"{method.slug}{suffix}.json").read_text())

    volume, per_slice, postprocessed = evaluation(VOLUME[unit]), evaluation(""), evaluation(POSTPROCESSED)
    errors = error_breakdown(folder / "predictions" / method.slug, labels, list(classes))
    return {**{name: volume["per_class"][str(label)]["mean"]["Dice"] for label, name in classes.items()},
            "mean Dice": volume["foreground_mean"]["Dice"], f"HD95 ({unit})": volume["foreground_mean"]["HD95"],
            f"ASD ({unit})": volume["foreground_mean"]["ASD"], "slice Dice": per_slice["foreground_mean"]["Dice"],
            "slice Dice, LCC": postprocessed["foreground_mean"]["Dice"], **errors,
            "iterations": timing.get("iterations"), "train s": timing.get("seconds"),
            "s/step": timing.get("seconds_per_iteration"),
            "params (M)": timing["params"] / 1e6 if "params" in timing else None}


def mean_sd(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value) of the values that exist."""
    import statistics

    present = [v for v in values if v is not None and not math.isnan(v)]
    return {"mean": statistics.fmean(present) if present else None,
            "sd": statistics.stdev(present) if len(present) > 1 else None, "values": values}


DIGITS = {"iterations": 0, "train s": 0, "s/step": 2, "params (M)": 2}  # other columns: 3


def cell(summary: dict[str, Any], digits: int) -> str:
    """``mean ± sd`` (the mean alone for one seed or where every seed gave the same), '-' where nothing was measured."""
    if summary["mean"] is None:
        return "-"
    text = f"{summary['mean']:.{digits}f}"
    return text + (f" ± {summary['sd']:.{digits}f}" if summary["sd"] else "")


def targets(summaries: dict[str, dict[str, Any]], seeds: int) -> list[dict[str, Any]]:
    """The benchmark's targets on the mean per-volume Dice over seeds (at least 3 seeds decide one)."""
    dice = {name: s["mean Dice"]["mean"] for name, s in summaries.items()}
    weak = dice.get("WeakMamba ensemble")
    checks = [("WeakMamba >= nnU-Net (scribbles) + 0.03, equal iterations", "nnU-Net (scribbles)",
               lambda w, b: w >= b + 0.03),
              ("WeakMamba >= nnU-Net (scribbles), equal wall-clock", "nnU-Net (scribbles), equal wall-clock",
               lambda w, b: w >= b),
              ("WeakMamba >= 0.95 x the dense bound", "nnU-Net (dense, upper bound)", lambda w, b: w >= 0.95 * b)]
    result = []
    for target, other, holds in checks:
        if weak is None or dice.get(other) is None:
            continue
        verdict = ("met" if holds(weak, dice[other]) else "not met") if seeds >= 3 else \
            f"undecided ({seeds} seed{'s' * (seeds != 1)}; 3 decide)"
        result.append({"target": target, "WeakMamba": weak, "comparator": dice[other], "verdict": verdict})
    return result


# ------------------------------------------------------------------------------------------------------- report

def tables(payload: dict[str, Any]) -> str:
    """The results table and the targets of a run's JSON: its report's and documentation/benchmarks.md's."""
    from common import format_table

    rows = payload["results"]
    checks = [{k: round(v, 3) if isinstance(v, float) else v for k, v in c.items()} for c in payload["targets"]]
    return (format_table(rows, list(rows[0])) + "\n\nTargets (mean per-volume Dice over seeds):\n\n"
            + format_table(checks, ["target", "WeakMamba", "comparator", "verdict"]))


def pyplot() -> Any:
    """matplotlib's pyplot for files, in its default style (nnU-Net's progress plots leave seaborn's behind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use("default")
    return plt


def plot(rows: list[dict[str, Any]], classes: list[str], curves: dict[str, dict], iterations_per_epoch: int,
         path: Path) -> None:
    """Per-volume Dice per class per method, mean ± sd over seeds (bars); the first seed's online validation Dice
    and training loss per iteration (curves)."""
    import numpy as np

    plt = pyplot()
    fig, (bars, dice, loss) = plt.subplots(1, 3, figsize=(20, 6))
    groups = classes + ["mean Dice"]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        means = [np.nan if row[c]["mean"] is None else row[c]["mean"] for c in groups]
        sds = [0 if row[c]["sd"] is None else row[c]["sd"] for c in groups]
        bars.bar(np.arange(len(groups)) + (i - (len(rows) - 1) / 2) * width, means, width, yerr=sds, capsize=2,
                 label=row["method"])
    bars.set_xticks(range(len(groups)), groups)
    bars.set_ylim(0, 1)
    bars.set_title("per-volume Dice on the test set (mean ± sd over seeds)")
    bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)  # below: bars reach 1
    for name, curve in curves.items():
        iterations = (np.arange(len(curve["mean_fg_dice"])) + 1) * iterations_per_epoch
        line, = dice.plot(iterations, curve["mean_fg_dice"], label=name)
        for key in (k for k in curve if k.startswith("mean_fg_dice_")):
            dice.plot(iterations, curve[key], ":", color=line.get_color(),
                      label=f"{name}: {key.removeprefix('mean_fg_dice_')}")
        loss.plot(iterations, curve["train_losses"], color=line.get_color(), label=name)
    dice.set_title("online validation Dice (dense patches of the val split), first seed")
    loss.set_title("training loss (each trainer's own loss), first seed")
    for ax in (dice, loss):
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_data_arguments(parser: argparse.ArgumentParser, default_work: Path) -> None:
    """The options every ACDC benchmark takes: data, patients, work folder, processes, device."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of WSL4MIS .h5 volumes (default: %(default)s)")
    parser.add_argument("--splits", type=Path,
                        help=f"patients per train / val / test (default: --data's {DEFAULT_SPLITS})")
    parser.add_argument("--work", type=Path, default=default_work,
                        help="working folder, kept between runs for resuming (default: %(default)s)")
    parser.add_argument("--patients", type=int, help="only the first N patients of every split (quick runs)")
    parser.add_argument("--processes", type=int, default=2,
                        help="processes for nnU-Net's planning and preprocessing (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu", help="(default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one run of every method per seed (default: %(default)s)")
    parser.add_argument("--paper", action="store_true",
                        help="also train nnUNetTrainerWeakMambaPaper (the paper's configuration)")
    parser.add_argument("--ablation", action="store_true", help="also train MambaUNet alone and SwinUNet alone")
    parser.add_argument("--on", choices=("test", "val"), default="test",
                        help="score the test patients (default) or the val patients (for method decisions)")
    parser.add_argument("--test-images", type=Path,
                        help=f"folder of 2D test slices <volume>_slice<NN>{IMAGE_SUFFIX} (instead of --on)")
    parser.add_argument("--test-labels", type=Path, help="their dense labels <volume>_slice<NN>.nii.gz")
    parser.add_argument("--distances", choices=("mm", "px"), default="mm",
                        help="unit of the per-volume HD95 and ASD (default: %(default)s, at the converter's spacing)")
    add_data_arguments(parser, DEFAULT_WORK)
    args = parser.parse_args()
    if (args.test_images is None) != (args.test_labels is None):
        parser.error("--test-images and --test-labels go together")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; the trainings inherit it

    import torch
    from common import machine_info, write_json

    from nnunetv2_mamba.data.convert_h5 import ACDC_SPACING
    from nnunetv2_mamba.utilities.nnunet_environment import set_environment

    def say(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    budget = BUDGETS[args.budget]
    work = args.work.resolve()
    folder = work / budget.name
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_compile", "false")  # the same (uncompiled) networks for every method
    set_environment(work)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    say(f"work folder {work} (nnU-Net's logs in {logs}); device {device}; OMP_WAIT_POLICY "
        f"{os.environ['OMP_WAIT_POLICY']}")
    say(budget.describe())

    splits_file = args.splits or args.data / DEFAULT_SPLITS
    preparation = prepare(args.data, splits_file, work, args.patients, args.processes, say)
    write_budget_plans(budget, args.ablation)
    rows = methods(budget, args.ablation, args.paper)
    test_name, images, labels = test_set(args.on, args.test_images, args.test_labels)
    timings: dict[int, dict[Training, dict]] = {}
    for seed in args.seeds:
        seed_folder, test_folder = folder / f"seed{seed}", folder / test_name / f"seed{seed}"
        timings[seed] = train_seed(rows, seed, seed_folder, logs, device, say)
        for training in timings[seed]:
            predict_and_evaluate(training, [row for row in rows if row.training == training], images, labels,
                                 training.model_folder(seed_folder), test_folder,
                                 logs / f"predict_seed{seed}_{training.slug}.log", device, say)
        postprocess_and_evaluate(rows, labels, test_folder, say)
        evaluate_volumes(rows, labels, test_folder, ACDC_SPACING[0], args.distances, say)

    first = json.loads((folder / test_name / f"seed{args.seeds[0]}" / "evaluations"
                        / f"{rows[0].slug}{VOLUME[args.distances]}.json").read_text())
    classes = {int(label): c["name"] for label, c in first["per_class"].items() if label != "0"}
    per_seed = {row.name: [seed_row(row, folder / test_name / f"seed{seed}", labels, classes,
                                    timings[seed][row.training], args.distances) for seed in args.seeds]
                for row in rows}
    summaries = {name: {key: mean_sd([r[key] for r in values]) for key in values[0]}
                 for name, values in per_seed.items()}
    columns = list(next(iter(per_seed.values()))[0])
    table = [{"method": row.name, "trainer": row.training.trainer + (" (equal wall-clock)" if
                                                                     row.training.equal_time else "")
              + (f", {row.member} alone" if row.member else ""),
              **{key: cell(summaries[row.name][key], DIGITS.get(key, 3)) for key in columns}} for row in rows]
    checks = targets(summaries, len(args.seeds))
    volumes = sorted(c["case"] for c in first["per_case"])
    test_patients = sorted({v.split("_frame")[0] for v in volumes})
    curves = {}
    for training in dict.fromkeys(row.training for row in rows):
        name = next(row.name for row in rows if row.training == training).removesuffix(" ensemble")
        curves[name] = training_curves(training.model_folder(folder / f"seed{args.seeds[0]}"))
    name = f"acdc_scribble_{budget.name}_{test_name}"
    markdown = (f"{budget.describe()}\n\nScored on {len(volumes)} volumes of {len(test_patients)} patients "
                f"({test_name}: {', '.join(test_patients)}; {len(images)} 2D slices, references {labels}), predicted "
                f"with {CHECKPOINT} (selected on the val patients); mean ± sd over seeds {args.seeds}. Per volume "
                f"(the slices stacked, {ACDC_SPACING[0]:g} mm apart, in-plane {ACDC_SPACING[1]:g} x "
                f"{ACDC_SPACING[2]:g} mm as the converter states): Dice per class and foreground mean, HD95 and ASD in "
                f"{'mm' if args.distances == 'mm' else 'pixels'}, means over volumes. Per slice (secondary): mean "
                f"Dice before and after nnU-Net's largest-component post-processing (LCC, the same for every method, "
                f"not tuned); FN, FP near, FP far: missed pixels and false positives within {NEAR} pixels of the true "
                f"structures or farther, as shares of the true foreground area. train s: wall-clock of the training "
                f"epochs. The WeakMamba rows share one training per seed.\n\n")
    payload = {"budget": budget.describe(), "schedule": budget.schedule._asdict(), "plans": budget.plans,
               "seeds": args.seeds, "splits": str(splits_file),
               "test": {"name": test_name, "slices": len(images), "volumes": volumes, "patients": test_patients,
                        "labels": str(labels), "spacing_mm": ACDC_SPACING},
               "checkpoint": CHECKPOINT, "preparation_seconds": preparation,
               "machine": machine_info(torch.get_num_threads()), "results": table, "summaries": summaries,
               "per_seed": per_seed, "targets": checks, "curves_first_seed": curves}
    markdown += tables(payload)
    (folder / f"{name}.md").write_text(markdown + "\n")
    write_json(name, payload, folder)
    plot([{"method": row.name, **summaries[row.name]} for row in rows], list(classes.values()), curves,
         budget.schedule.iterations_per_epoch, folder / f"{name}.png")
    say(f"\n{markdown}\n\nwrote {folder / name}.md, .json and .png ({time.perf_counter() - started:.0f} s this run)")


if __name__ == "__main__":
    main()
