"""The demo: every architecture trained and evaluated through nnU-Net on the synthetic dataset, in minutes on a CPU.

For each run of :data:`RUNS` it does what a user does, through nnU-Net's Python API in this process (the command
lines are printed alongside): write the synthetic raw dataset (:mod:`nnunetv2_mamba.data.synthetic`), plan and
preprocess it with nnU-Net, derive our plans (:func:`nnunetv2_mamba.plans.write_plans`), train with a short schedule
(``nnUNetTrainerMamba_demo``), predict the test images with ``nnUNetPredictor`` and evaluate them against their dense
labels (:mod:`nnunetv2_mamba.evaluation.metrics`). On a CPU every network is made ``width_divisor`` times narrower
than planned (:func:`~nnunetv2_mamba.plans.narrow.narrow_plans`), which keeps the topology and the data but makes an
iteration a fraction of a second; the Dice values show that the pipeline learns, not how the architectures compare at full size.

A run is one :class:`DemoRun` line; another trainer (e.g. scribble supervision on the scribble variant of the
dataset) is one more line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from nnunetv2_mamba.plans.narrow import narrow_plans
from nnunetv2_mamba.training.timed_training import run_timed_training
from nnunetv2_mamba.utilities.nnunet_environment import set_environment
from nnunetv2_mamba.utilities.output import output_to

# the 3D variant is smaller than the synthetic default so that SegMamba's full-resolution scans stay short on a CPU
SHAPE_3D = (12, 24, 24)
FOLD = 0


@dataclass(frozen=True)
class DemoRun:
    """One row of the demo's table."""

    architecture: str | None  # a plans override (e.g. "UMambaBot2"); None: nnU-Net's own plans (plain U-Net)
    configuration: str  # "2d" (2D dataset) or "3d_fullres" (3D dataset)
    trainer: str = "nnUNetTrainerMamba_demo"
    dense: bool = True  # dataset variant: dense labels, or simulated scribbles with nnU-Net's ignore label
    label: str = ""  # the table's name for the run (default: the architecture)

    @property
    def name(self) -> str:
        return self.label or self.architecture or "nnU-Net U-Net"

    @property
    def dims(self) -> int:
        return 2 if self.configuration == "2d" else 3

    @property
    def plans(self) -> str:
        return f"nnUNetPlans_{self.architecture}" if self.architecture else "nnUNetPlans"


RUNS: tuple[DemoRun, ...] = (
    DemoRun(None, "2d"),
    DemoRun("UMambaBot2", "2d"),
    DemoRun("MambaUNet", "2d"),
    DemoRun("SwinUNet", "2d"),
    DemoRun(None, "2d", "nnUNetTrainerScribbleBaseline_demo", dense=False, label="nnU-Net on scribbles"),
    DemoRun(None, "2d", "nnUNetTrainerWeakMamba_demo", dense=False, label="Weak-Mamba-UNet on scribbles"),
    DemoRun(None, "3d_fullres"),
    DemoRun("UMambaBot2", "3d_fullres"),
    DemoRun("SegMamba", "3d_fullres"),
)


def prepare_dataset(dims: int, dense: bool, runs: Sequence[DemoRun], divisor: int, log: TextIO) -> tuple[int, str]:
    """Write one synthetic variant, plan and preprocess it for the configurations of ``runs``, derive our plans for
    their architectures, then narrow every plans file by ``divisor``; returns the dataset's id and name."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    from nnunetv2_mamba.data.synthetic import synthetic_dataset_name, write_synthetic_dataset
    from nnunetv2_mamba.plans import write_plans

    name = synthetic_dataset_name(dims, dense)
    dataset_id = int(name[len("Dataset"):len("Dataset") + 3])
    write_synthetic_dataset(Path(os.environ["nnUNet_raw"]) / name, dims, shape=SHAPE_3D if dims == 3 else None,
                            dense=dense, overwrite=True)
    configurations = tuple(dict.fromkeys(run.configuration for run in runs))
    with output_to(log):
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=configurations, num_processes=(1,) * len(configurations),
                   show_progress_bar=False)
        for architecture in dict.fromkeys(run.architecture for run in runs if run.architecture):
            write_plans(dataset_id, architecture, sorted({r.configuration for r in runs
                                                         if r.architecture == architecture}))
    if divisor > 1:
        for plans in {run.plans for run in runs}:
            path = Path(os.environ["nnUNet_preprocessed"]) / name / f"{plans}.json"
            path.write_text(json.dumps(narrow_plans(json.loads(path.read_text()), divisor), indent=4))
    return dataset_id, name


def train(run: DemoRun, dataset_id: int, device, log: TextIO, progress: TextIO | None = None,
          title: str = "training") -> dict[str, Any]:
    """Train ``run`` with nnU-Net's trainer (its output to ``log``, a progress bar to ``progress``); returns the
    network's size, the median seconds per training iteration and the trained model folder."""
    from nnunetv2.run.run_training import get_trainer_from_args

    # augmentation in this process: worker processes cost more than they save on tiny images. (Only for training:
    # nnU-Net's planner passes this number to torch.set_num_threads, which refuses 0.)
    os.environ["nnUNet_n_proc_DA"] = "0"
    with output_to(log):
        trainer = get_trainer_from_args(str(dataset_id), run.configuration, FOLD, run.trainer, run.plans,
                                        device=device)
        seconds = run_timed_training(trainer, progress, title)
    return {"params": sum(p.numel() for p in trainer.network.parameters()),
            "seconds_per_iteration": statistics.median(seconds[1:] or seconds),
            "iterations": len(seconds), "model_folder": trainer.output_folder_base}


def predict_and_evaluate(model_folder: str, dataset_name: str, output: Path, device, log: TextIO) -> float:
    """Predict the test images with nnUNetPredictor (as nnUNetv2_predict does, without worker processes) and return
    the foreground-mean Dice against the dense test labels."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_mamba.evaluation.metrics import evaluate_folders

    raw = Path(os.environ["nnUNet_raw"]) / dataset_name
    with output_to(log):
        predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(model_folder, (FOLD,), "checkpoint_final.pth")
        output.mkdir(parents=True, exist_ok=True)
        predictor.predict_from_files_sequential(str(raw / "imagesTs"), str(output))
        results = evaluate_folders(raw / "labelsTs", output, raw / "dataset.json", output=output / "metrics",
                                   progress=False)
    return results["foreground_mean"]["Dice"]


def run_demo(folder: Path, runs: Sequence[DemoRun] = RUNS, device: str = "auto", width_divisor: int | None = None,
             out: TextIO | None = None) -> list[dict[str, Any]]:
    """Run the demo in ``folder`` (its own nnUNet_raw/preprocessed/results; logs in ``folder/logs``), printing
    progress to ``out``; returns one result dict per run, also written to ``folder/demo_results.json``.
    ``width_divisor`` defaults to 4 on a CPU and 1 on a GPU."""
    import torch

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    folder = folder.resolve()
    set_environment(folder)
    # the progress bars go to this process's stdout as it is now: nnU-Net's output is redirected to the logs below
    progress = os.fdopen(os.dup((out or sys.stdout).fileno()), "w", buffering=1) if (out or sys.stdout).isatty() \
        else None
    torch_device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                "cpu" if device == "auto" else device)
    divisor = width_divisor or (1 if torch_device.type == "cuda" else 4)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    say(f"demo folder: {folder} (logs of every step in {logs}); device: {torch_device}"
        + (f"; networks {divisor}x narrower than planned, for the CPU" if divisor > 1 else ""))

    datasets: dict[tuple[int, bool], tuple[int, str]] = {}
    for dims, dense in dict.fromkeys((run.dims, run.dense) for run in runs):
        group = [run for run in runs if (run.dims, run.dense) == (dims, dense)]
        started = time.perf_counter()
        architectures = ", ".join(dict.fromkeys(r.name for r in group if r.architecture))
        say(f"synthetic {dims}D dataset ({'dense labels' if dense else 'scribbles'}): nnUNetv2_plan_and_preprocess"
            + (f", nnunetv2_mamba plans for {architectures}" if architectures else ""))
        with open(logs / f"dataset_{dims}d{'' if dense else '_scribbles'}.log", "w", buffering=1) as log:
            datasets[dims, dense] = prepare_dataset(dims, dense, group, divisor, log)
        say(f"  done in {time.perf_counter() - started:.0f} s")

    results = []
    for index, run in enumerate(runs, 1):
        title = f"[{index}/{len(runs)}] {run.name} {run.configuration}"
        dataset_id, dataset_name = datasets[run.dims, run.dense]
        slug = f"{index:02d}_{run.name}_{run.configuration}".replace(" ", "_")
        started = time.perf_counter()
        with open(logs / f"{slug}.log", "w", buffering=1) as log:
            say(f"{title}: nnUNetv2_train {dataset_id} {run.configuration} {FOLD} -tr {run.trainer} -p {run.plans}")
            trained = train(run, dataset_id, torch_device, log, progress, title)
            say(f"{title}: nnUNetv2_predict -i {dataset_name}/imagesTs -d {dataset_id} -c {run.configuration} "
                f"-f {FOLD} -tr {run.trainer} -p {run.plans}; evaluation against labelsTs")
            dice = predict_and_evaluate(trained["model_folder"], dataset_name, folder / "predictions" / slug,
                                        torch_device, log)
        result = {"architecture": run.name, "configuration": run.configuration, "trainer": run.trainer,
                  "params": trained["params"], "seconds_per_iteration": trained["seconds_per_iteration"],
                  "iterations": trained["iterations"], "dice": dice, "seconds": time.perf_counter() - started}
        results.append(result)
        say(f"  Dice {dice:.3f}, {trained['seconds_per_iteration']:.2f} s/iteration, {result['seconds']:.0f} s")
    if progress:
        progress.close()
    (folder / "demo_results.json").write_text(json.dumps(results, indent=2))
    say("\n" + format_table(results))
    return results


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The demo's markdown table; ``s/iter`` is the median seconds of a training iteration."""
    lines = ["| architecture | configuration | trainer | params | s/iter | iterations | Dice (test) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['architecture']} | {r['configuration']} | {r['trainer']} | {r['params'] / 1e6:.2f} M | "
                     f"{r['seconds_per_iteration']:.2f} | {r['iterations']} | {r['dice']:.3f} |")
    return "\n".join(lines)
