"""ACDC with real scribbles: stock nnU-Net, Weak-Mamba-UNet and the dense upper bound under one protocol.

One command, resumable (a re-run skips the conversion, the preprocessing, every training whose checkpoint_final.pth
exists and every evaluation whose JSON exists):

1. data: the WSL4MIS HDF5 volumes (default ``../shared/data/acdc_scribble``) are converted by our converter
   (``convert_h5``, ``--mode 2d``: one case per slice, the folder's ``splits.json`` as nnU-Net's fold 0) into a
   scribble dataset (scribbles with nnU-Net's ignore label in labelsTr, dense labels in labelsTr_dense), and a dense
   twin with the same images and split whose labelsTr are the dense labels. nnU-Net plans and preprocesses each once
   (``2d`` configuration).
2. methods, all trained on fold 0 (the 70 train patients) at the same iteration budget, with the same plans (patch,
   batch, network topology) and schedule, on the same preprocessed images:

   - ``nnUNetTrainerScribbleBaseline``: stock nnU-Net on the scribbles (partial Dice + CE through the ignore label),
     validated against the dense labels;
   - ``nnUNetTrainerWeakMamba``: CNN + SwinUNet + MambaUNet with cross pseudo-label supervision, predicted with the
     ensemble and with each network alone (``NetworkEnsemble.inference_output``, as ``nnUNet_ensemble_member``);
   - ``nnUNetTrainerDense``: stock ``nnUNetTrainer`` on the dense labels, the upper bound;
   - with ``--ablation``: MambaUNet alone and SwinUNet alone on the scribbles (baseline trainer, plans of
     ``nnunetv2_mamba plans -a ARCH``), each the same network as its WeakMamba member.

   The schedules are the ``_<budget>`` variants of :mod:`nnunetv2_mamba.training.scribble_schedules`.
3. model selection on the val split only: ``checkpoint_best.pth``, which nnU-Net picks by its online validation
   Dice, here computed on dense patches of the val patients (``DenseValidationMixin``); no other choice is made.
4. test: prediction (``nnUNetPredictor``) of ``--test-images`` and evaluation against ``--test-labels`` with
   ``evaluate_folders`` (Dice per class and foreground mean, HD95, ASD; distances in pixels, as the files store no
   spacing). Default: the val patients' slices with their dense labels, which also selected the checkpoint, so these
   numbers are optimistic; a user with the full ACDC passes the 20 held-out patients, converted to 2D slices.
   Every method is also scored after nnU-Net's largest-component post-processing (per class, the same for all, not
   tuned): the "LCC" columns.

Budgets (every reduction applies identically to every method; iterations are the budget, wall-clock seconds are
reported beside them):

- ``smoke``: the CI check that the pipeline runs (seconds per training): 2 x 2 iterations, patch 128 x 128, batch 2,
  features / 16, tiny token networks (embedding 12), no mirroring. Its Dice values mean nothing.
- ``cpu``: about 55 minutes on 2 idle CPU cores for the three required methods together. nnU-Net's 2d plans with
  patch 128 x 128 (the 6 stages nnU-Net plans for it; the full plans have 256 x 224), batch 8, features / 2
  (16 ... 256; at features / 4 stock nnU-Net on the dense labels predicted background only for 550 of its 1000
  iterations); 40 epochs x 25 iterations = 1000 iterations, 5 validation iterations per epoch; WeakMamba's token
  networks with embedding 48 and two blocks per level (the paper's depth), its pseudo-label weight ramped up over
  the first half of the epochs, its pseudo labels reduced to the components that hold a scribble of their class and
  compared with nnU-Net's Dice + cross-entropy except within one pixel of their class boundaries, its token networks
  trained with nnU-Net's AdamW (lr 1e-3) and its CNN with nnU-Net's SGD (``_cpu`` in scribble_schedules); no
  mirroring, neither as augmentation nor at test time (test-time mirroring would quadruple the prediction time).
  Planned from step times on 2 idle cores: an epoch of 25 steps and 5 validation steps takes 10-11 s for the
  baseline and the dense bound and about 45 s for WeakMamba (its token networks run the fused CPU scan)
  (``OMP_WAIT_POLICY=PASSIVE`` slows them about 1.4-1.8x on an idle machine and only pays on one shared with other
  jobs, where spinning OpenMP threads slow small ops 10-100x); prediction of one 2D slice takes about 0.2 s with a
  CNN and 0.9 s with WeakMamba's ensemble; conversion and preprocessing under 2 minutes.
- ``paper``: nnU-Net's plans unchanged and the paper's 30k iterations (120 epochs x 250), full-size token networks,
  mirroring: for a GPU.

Outputs in ``<work>/<budget>/``: ``acdc_scribble_<budget>_<test>.md`` (the table), ``.json`` (everything, with the
training curves) and ``.png`` (Dice per class per method; online validation Dice and training loss per iteration
from the checkpoints' logging), where ``<test>`` is ``val`` or ``test-<hash of --test-images>``; the predictions and
per-case metrics in ``<work>/<budget>/<test>/``; nnU-Net's logs in ``<work>/logs``.

    python benchmarks/acdc_scribble.py --budget cpu [--ablation] [--data DIR] [--work DIR]
        [--test-images DIR --test-labels DIR] [--patients N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    from nnunetv2_mamba.training.short_schedules import Schedule

# Only the standard library at module level: nnU-Net's preprocessing workers are spawned processes that import this
# module again, and importing torch, nnU-Net and our package would cost each of them seconds.
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "acdc_scribble"
DEFAULT_WORK = HERE / "results" / "acdc_scribble"  # in benchmarks/common.py's RESULTS_DIR
DATASET_IDS = {False: 27, True: 28}  # by `dense`: the scribble dataset and its dense twin (the work folder's own)
DATASETS = {False: "Dataset027_ACDCScribble2D", True: "Dataset028_ACDCDense2D"}
CONFIGURATION, FOLD = "2d", 0
CHECKPOINT = "checkpoint_best.pth"  # selected on the val split by nnU-Net's online (here: dense) validation Dice
IMAGE_SUFFIX = "_0000.nii.gz"  # the converter's single channel and file ending
ABLATION = ("MambaUNet", "SwinUNet")
POSTPROCESSED = "__largest_component"  # suffix of the post-processed predictions and evaluations
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
    ``_<name>`` variant of every trainer in :mod:`nnunetv2_mamba.training.scribble_schedules`."""

    name: str
    patch_size: tuple[int, int] | None = None
    batch_size: int | None = None
    width_divisor: int = 1

    @property
    def plans(self) -> str:
        return "nnUNetPlans" if self.name == "paper" else f"nnUNetPlans_{self.name}"

    @property
    def schedule(self) -> Schedule:
        from nnunetv2_mamba.training import scribble_schedules

        return getattr(scribble_schedules, self.name.upper())

    @property
    def weak_mamba(self) -> type:
        """WeakMamba's trainer at this budget."""
        from nnunetv2_mamba.training import scribble_schedules

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
                f"networks {json.dumps(tokens) if tokens else 'at paper size'}, pseudo-label weight ramped up over "
                f"{self.weak_mamba.pseudo_label_rampup:.0%} of the epochs"
                + (", scribbles kept in the pseudo labels" if self.weak_mamba.pseudo_label_keeps_scribbles else "")
                + (f", pseudo labels reduced to their {self.weak_mamba.pseudo_label_components} components"
                   if self.weak_mamba.pseudo_label_components else "")
                + f", pseudo-label loss {self.weak_mamba.pseudo_label_loss}"
                + (f", pseudo labels unsupervised within {self.weak_mamba.pseudo_label_margin} px of class boundaries"
                   if self.weak_mamba.pseudo_label_margin else "")
                + "".join(f", {name} trained with {kind} (lr {lr:g})"
                          for name, (kind, lr) in self.weak_mamba.member_optimizers.items()))


BUDGETS = {"smoke": Budget("smoke", (128, 128), 2, 16),
           "cpu": Budget("cpu", (128, 128), 8, 2),
           "paper": Budget("paper")}


class Training(NamedTuple):
    """One nnU-Net training."""

    trainer: str
    plans: str
    dense: bool = False
    configuration: str = CONFIGURATION

    @property
    def model_folder(self) -> Path:
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        return Path(get_output_folder(DATASETS[self.dense], self.trainer, self.plans, self.configuration))


class Method(NamedTuple):
    """One row of the table: a training, predicted with the ensemble (member None) or one WeakMamba member."""

    name: str
    training: Training
    member: str | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name).strip("_")


def methods(budget: Budget, ablation: bool) -> list[Method]:
    """The table's rows, in order."""
    suffix = f"_{budget.name}"
    baseline = Training(f"nnUNetTrainerScribbleBaseline{suffix}", budget.plans)
    weak = Training(f"nnUNetTrainerWeakMamba{suffix}", budget.plans)
    rows = [Method("nnU-Net (scribbles)", baseline), Method("WeakMamba ensemble", weak)]
    rows += [Method(f"WeakMamba {member} alone", weak, member) for member in weak_mamba_members()]
    rows.append(Method("nnU-Net (dense, upper bound)", Training(f"nnUNetTrainerDense{suffix}", budget.plans, True)))
    if ablation:
        rows += [Method(f"{arch} alone (scribbles)", baseline._replace(plans=f"{budget.plans}_{arch}"))
                 for arch in ABLATION]
    return rows


# ---------------------------------------------------------------------------------------------------- preparation

def select_patients(data: Path, patients: int | None) -> dict[str, list[str]]:
    """The folder's splits.json, or its first ``patients`` patients of every split (quick runs)."""
    splits = json.loads((data / "splits.json").read_text())
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


def plan_and_preprocess(dense: bool, processes: int) -> None:
    """nnUNetv2_plan_and_preprocess -d ID -c 2d, from scratch (an interrupted run may have left a partial folder).
    No integrity check: the converter validated the dataset (and so the dense labels of the twin)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / DATASETS[dense], ignore_errors=True)
    extract_fingerprints([DATASET_IDS[dense]], num_processes=processes, show_progress_bar=False)
    plan_experiments([DATASET_IDS[dense]])
    preprocess([DATASET_IDS[dense]], configurations=(CONFIGURATION,), num_processes=(processes,),
               show_progress_bar=False)


def prepare(data: Path, work: Path, patients: int | None, processes: int, say: Say) -> dict[str, float]:
    """Convert, derive the dense twin, plan and preprocess both, each step once; returns the seconds each step took
    when it ran (kept in ``preparation.json``, which marks the steps done)."""
    from nnunetv2_mamba.data.convert_h5 import convert_h5
    from nnunetv2_mamba.demo import output_to

    record = work / "preparation.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    source = {"data": str(data.resolve()), "splits": select_patients(data, patients)}
    if done.get("source", source) != source:
        sys.exit(f"{work} holds a conversion of other data or patients ({done['source']['data']}, "
                 f"{sum(map(len, done['source']['splits'].values()))} patients); use another --work")
    done["source"] = source
    raw = Path(os.environ["nnUNet_raw"])
    steps = {"convert": partial(convert_h5, data, raw / DATASETS[False], mode="2d", splits=source["splits"],
                                overwrite=True),  # a step not marked done may have finished before an interruption
             "dense twin": partial(write_dense_twin, raw / DATASETS[False], raw / DATASETS[True]),
             f"preprocess {DATASETS[False]}": partial(plan_and_preprocess, False, processes),
             f"preprocess {DATASETS[True]}": partial(plan_and_preprocess, True, processes)}
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


def budget_plans(plans: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """nnU-Net's plans reduced to the 2d configuration with the budget's edits. A smaller patch gets the stages,
    strides and kernels nnU-Net's planner gives that patch (its ``get_pool_and_conv_props``) and the planned
    features and convolutions of those stages; widths are divided as the demo's ``narrow_plans`` does."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    from nnunetv2_mamba.demo import narrow_plans

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

def run_training(training: Training, folder: Path, device: torch.device, say: Say) -> dict[str, Any]:
    """``nnUNetv2_train --c`` in this process unless checkpoint_final.pth exists (an interrupted training resumes from
    its latest checkpoint); returns the cost record (iterations and wall-clock seconds of this run, the epoch it
    resumed at, median seconds of a training step, parameters), kept in ``folder/training``. On a CPU the
    augmentation runs in this process, as the demo does (worker processes would compete for the same cores); on a
    GPU nnU-Net's worker processes feed it."""
    import statistics

    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from nnunetv2_mamba.demo import output_to, run_timed_training

    record = folder / "training" / f"{training.trainer}__{training.plans}.json"
    if (training.model_folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():
        return json.loads(record.read_text()) if record.is_file() else {}
    dataset_id = DATASET_IDS[training.dense]
    say(f"nnUNetv2_train {dataset_id} {training.configuration} {FOLD} -tr {training.trainer} -p {training.plans}")
    if device.type == "cpu":
        os.environ["nnUNet_n_proc_DA"] = "0"
    started = time.perf_counter()
    with open(folder.parent / "logs" / f"train_{training.trainer}__{training.plans}.log", "w") as log, \
            output_to(log):
        trainer = get_trainer_from_args(str(dataset_id), training.configuration, FOLD, training.trainer,
                                        training.plans, device=device)
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
        resumed_at = trainer.current_epoch
        steps = run_timed_training(trainer)
    result = {"iterations": len(steps), "seconds": time.perf_counter() - started, "resumed_at_epoch": resumed_at,
              "seconds_per_iteration": statistics.median(steps[1:] or steps),
              "params": sum(p.numel() for p in trainer.network.parameters())}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=1))
    say(f"  {result['iterations']} iterations in {result['seconds']:.0f} s (a training step "
        f"{result['seconds_per_iteration']:.2f} s)")
    return result


def test_set(test_images: Path | None, test_labels: Path | None) -> tuple[str, list[list[str]], Path]:
    """(name, image files per case, reference folder) of the test set: ``--test-images``/``--test-labels``, or the
    val patients' slices of fold 0 with their dense labels."""
    from nnunetv2_mamba.data.scribble_dataset import DENSE_LABELS_TR

    if test_images:
        cases = sorted(str(p) for p in test_images.resolve().glob(f"*{IMAGE_SUFFIX}"))
        if not cases:
            sys.exit(f"{test_images}: no images named CASE{IMAGE_SUFFIX}")
        tag = hashlib.sha1(str(test_images.resolve()).encode()).hexdigest()[:8]
        return f"test-{tag}", [[c] for c in cases], test_labels.resolve()
    raw = Path(os.environ["nnUNet_raw"]) / DATASETS[False]
    val = json.loads((raw / "splits_final.json").read_text())[FOLD]["val"]
    return "val", [[str(raw / "imagesTr" / f"{case}{IMAGE_SUFFIX}")] for case in val], raw / DENSE_LABELS_TR


def predict_and_evaluate(training: Training, rows: list[Method], images: list[list[str]], labels: Path,
                         folder: Path, device: torch.device, say: Say) -> None:
    """Predict the test images with ``training``'s selected checkpoint for every row (the ensemble or one member)
    into ``folder/predictions/<row>`` and evaluate each against ``labels`` into ``folder/evaluations/<row>.json``,
    which marks the row done. ``folder`` is the test set's."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_mamba.demo import output_to
    from nnunetv2_mamba.evaluation.metrics import evaluate_folders, write_results
    from nnunetv2_mamba.nets.network_ensemble import ENSEMBLE, NetworkEnsemble

    todo = [row for row in rows if not (folder / "evaluations" / f"{row.slug}.json").is_file()]
    if not todo:
        return
    dataset_json = Path(os.environ["nnUNet_raw"]) / DATASETS[False] / "dataset.json"
    with open(folder.parents[1] / "logs" / f"predict_{training.trainer}__{training.plans}.log", "a") as log:
        with output_to(log):
            predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(training.model_folder), (FOLD,), CHECKPOINT)
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
            say(f"  foreground Dice {results['foreground_mean']['Dice']:.4f} "
                f"({results['prediction_seconds']:.0f} s for {len(images)} cases)")


def postprocess_and_evaluate(rows: list[Method], labels: Path, folder: Path, say: Say) -> None:
    """nnU-Net's post-processing "remove all but the largest component" of every foreground class, the same for every
    row (fixed, not tuned: nnU-Net's ``determine_postprocessing`` would choose it per class on the val split, which
    is the default test set), applied to ``folder/predictions/<row>`` into ``<row>__largest_component`` and evaluated
    into ``folder/evaluations/<row>__largest_component.json``. Scribble-trained networks put foreground far from the
    heart; this shows how much of their gap to the dense bound that is."""
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
        say(f"{row.name}, largest component per class: foreground Dice {results['foreground_mean']['Dice']:.4f}")


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


def training_curves(training: Training) -> dict[str, list[float]]:
    """Per-epoch curves of nnU-Net's logger, as stored in the final checkpoint (``checkpoint["logging"]``)."""
    import torch

    checkpoint = torch.load(training.model_folder / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    logging = checkpoint["logging"]
    keys = ["train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs"]
    keys += [k for k in logging if k.startswith("mean_fg_dice_")]
    return {k: [float(v) for v in logging[k]] for k in keys if k in logging}


# ------------------------------------------------------------------------------------------------------- report

def result_row(method: Method, evaluation: dict, postprocessed: dict, errors: dict[str, float],
               timing: dict) -> dict[str, Any]:
    """The table's row: Dice per class and foreground mean, HD95 and ASD (foreground means), the mean Dice and HD95
    after largest-component post-processing, the error breakdown, training cost."""
    per_class = {c["name"]: c["mean"]["Dice"] for label, c in evaluation["per_class"].items() if label != "0"}
    return {"method": method.name, "trainer": method.training.trainer, "plans": method.training.plans,
            **per_class, "mean Dice": evaluation["foreground_mean"]["Dice"],
            "HD95 (px)": evaluation["foreground_mean"]["HD95"], "ASD (px)": evaluation["foreground_mean"]["ASD"],
            "mean Dice, LCC": postprocessed["foreground_mean"]["Dice"],
            "HD95 (px), LCC": postprocessed["foreground_mean"]["HD95"],
            **{k: round(v, 3) for k, v in errors.items()},
            "iterations": timing.get("iterations"),
            "train s": round(timing["seconds"]) if "seconds" in timing else None,
            "s/step": timing.get("seconds_per_iteration"),
            "params (M)": timing["params"] / 1e6 if "params" in timing else None}


def plot(rows: list[dict[str, Any]], classes: list[str], curves: dict[str, dict], iterations_per_epoch: int,
         path: Path) -> None:
    """Dice per class per method (bars); online validation Dice and training loss per iteration (curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plt.style.use("default")  # nnU-Net's progress plots leave seaborn's style (huge fonts) behind
    fig, (bars, dice, loss) = plt.subplots(1, 3, figsize=(20, 6))
    groups = classes + ["mean Dice"]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        values = [np.nan if row[c] is None else row[c] for c in groups]
        bars.bar(np.arange(len(groups)) + (i - (len(rows) - 1) / 2) * width, values, width, label=row["method"])
    bars.set_xticks(range(len(groups)), groups)
    bars.set_ylim(0, 1)
    bars.set_title("Dice on the test set")
    bars.legend(fontsize=7)
    for name, curve in curves.items():
        iterations = (np.arange(len(curve["mean_fg_dice"])) + 1) * iterations_per_epoch
        line, = dice.plot(iterations, curve["mean_fg_dice"], label=name)
        for key in (k for k in curve if k.startswith("mean_fg_dice_")):
            dice.plot(iterations, curve[key], ":", color=line.get_color(),
                      label=f"{name}: {key.removeprefix('mean_fg_dice_')}")
        loss.plot(iterations, curve["train_losses"], color=line.get_color(), label=name)
    dice.set_title("online validation Dice (dense patches of the val split)")
    loss.set_title("training loss (each trainer's own loss)")
    for ax in (dice, loss):
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu", help="(default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of WSL4MIS .h5 volumes with splits.json (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="working folder, kept between runs for resuming (default: %(default)s)")
    parser.add_argument("--ablation", action="store_true", help="also train MambaUNet alone and SwinUNet alone")
    parser.add_argument("--test-images", type=Path,
                        help=f"folder of 2D test slices CASE{IMAGE_SUFFIX} (default: the val patients' slices)")
    parser.add_argument("--test-labels", type=Path, help="their dense labels CASE.nii.gz")
    parser.add_argument("--patients", type=int, help="only the first N patients of every split (quick runs)")
    parser.add_argument("--processes", type=int, default=2,
                        help="processes for nnU-Net's planning and preprocessing (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    args = parser.parse_args()
    if (args.test_images is None) != (args.test_labels is None):
        parser.error("--test-images and --test-labels go together")

    import torch
    from common import format_table, machine_info, write_json

    from nnunetv2_mamba.demo import set_environment

    def say(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    budget = BUDGETS[args.budget]
    work = args.work.resolve()
    folder = work / budget.name
    (work / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_compile", "false")  # the same (uncompiled) networks for every method
    set_environment(work)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    say(f"work folder {work} (nnU-Net's logs in {work / 'logs'}); device {device}")
    say(budget.describe())

    preparation = prepare(args.data, work, args.patients, args.processes, say)
    write_budget_plans(budget, args.ablation)
    rows = methods(budget, args.ablation)
    trainings = list(dict.fromkeys(row.training for row in rows))
    timings = {training: run_training(training, folder, device, say) for training in trainings}
    test_name, images, labels = test_set(args.test_images, args.test_labels)
    for training in trainings:
        predict_and_evaluate(training, [row for row in rows if row.training == training], images, labels,
                             folder / test_name, device, say)
    postprocess_and_evaluate(rows, labels, folder / test_name, say)

    def evaluation(row: Method, suffix: str = "") -> dict:
        return json.loads((folder / test_name / "evaluations" / f"{row.slug}{suffix}.json").read_text())

    evaluations = {row: evaluation(row) for row in rows}
    postprocessed = {row: evaluation(row, POSTPROCESSED) for row in rows}
    classes = {int(label): c["name"] for label, c in evaluations[rows[0]]["per_class"].items() if label != "0"}
    errors = {row: error_breakdown(folder / test_name / "predictions" / row.slug, labels, list(classes))
              for row in rows}
    table = [result_row(row, evaluations[row], postprocessed[row], errors[row], timings[row.training])
             for row in rows]
    curves = {next(row.name for row in rows if row.training == t).removesuffix(" ensemble"): training_curves(t)
              for t in trainings}
    name = f"acdc_scribble_{budget.name}_{test_name}"
    markdown = (f"{budget.describe()}\n\nTest set: {len(images)} 2D cases ({test_name}; references {labels}), "
                f"predicted with {CHECKPOINT} (selected on the val split). Dice per class and foreground mean; HD95 "
                f"and ASD in pixels, foreground means; LCC: after nnU-Net's post-processing that keeps the largest "
                f"connected component of every class (the same for every method, not tuned); FN, FP near, FP far: "
                f"missed pixels and false positives within {NEAR} pixels of the true structures or farther, summed "
                f"over classes and cases, as shares of the true foreground area (before post-processing). The "
                f"WeakMamba rows share one training.\n\n"
                + format_table(table, list(table[0])))
    (folder / f"{name}.md").write_text(markdown + "\n")
    write_json(name, {"budget": budget.describe(), "schedule": budget.schedule._asdict(), "plans": budget.plans,
                      "test": {"name": test_name, "cases": len(images), "labels": str(labels)},
                      "checkpoint": CHECKPOINT, "preparation_seconds": preparation,
                      "machine": machine_info(torch.get_num_threads()), "results": table, "curves": curves,
                      "evaluations": {row.name: {k: evaluations[row][k] for k in ("per_class", "foreground_mean")}
                                      for row in rows},
                      "evaluations_largest_component": {
                          row.name: {k: postprocessed[row][k] for k in ("per_class", "foreground_mean")}
                          for row in rows}}, folder)
    plot(table, list(classes.values()), curves, budget.schedule.iterations_per_epoch, folder / f"{name}.png")
    say(f"\n{markdown}\n\nwrote {folder / name}.md, .json and .png ({time.perf_counter() - started:.0f} s this run)")


if __name__ == "__main__":
    main()
