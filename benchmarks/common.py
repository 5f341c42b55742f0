"""Measurement harness shared by the benchmark scripts.

Each case runs in its own spawned process, so its peak memory (peak RSS above the RSS once its inputs exist) is its
own, and allocator state or caches left by one case cannot flatter or penalise the next. Times are the best of a
few repetitions after a warm-up; ratios are always against a reference measured in the same run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    """One measurement: ``setup(**kwargs)`` returns the callables to time, by phase name."""

    name: str
    setup: Callable[..., dict[str, Callable[[], Any]]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    reps: int = 3
    warmup: int = 1


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _run_case(case: Case, threads: int, queue: mp.Queue) -> None:
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        phases = case.setup(**case.kwargs)
        base = _rss_mb()
        result: dict[str, Any] = {}
        for phase, fn in phases.items():
            for _ in range(case.warmup):
                fn()
            best = float("inf")
            for _ in range(case.reps):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            result[f"{phase}_s"] = best
        result["peak_mb"] = max(0.0, _peak_rss_mb() - base)
        queue.put(result)
    except Exception as e:  # noqa: BLE001 - reported in the table instead of killing the whole run
        queue.put({"error": f"{type(e).__name__}: {e}"})


def run_case(case: Case, threads: int = 2, timeout_s: float = 1800) -> dict[str, Any]:
    """Measure one case in a fresh process; returns phase times in seconds and ``peak_mb``, or ``error``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    load = os.getloadavg()[0]  # > ~0.5 on an idle machine means other jobs share the cores: times are not clean
    proc = ctx.Process(target=_run_case, args=(case, threads, queue))
    proc.start()
    try:
        result = queue.get(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - queue.Empty on timeout
        result = {"error": f"no result within {timeout_s:.0f} s"}
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
    return {"case": case.name, **case.kwargs, **result, "load_before": round(load, 2)}


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of the ``columns`` some row has; floats with 3 significant digits (whole numbers from 1,000 on,
    with thousands separators), missing values as '-'."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    columns = [c for c in columns if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


# --- end-to-end benchmarks that drive nnU-Net's and our command lines (ssl_recipe.py, clicks_benefit.py) ---


def nnunet_environment(work: Path) -> dict[str, str]:
    """This process's environment with nnU-Net's three folders inside ``work``, our trainers on nnU-Net's search path,
    no ``torch.compile``, one preprocessing process and augmentation in the training process (worker processes cost
    more than they save on tiny images; the planner refuses ``nnUNet_n_proc_DA=0``, so :func:`planning_environment`
    drops it)."""
    from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR

    return {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
            "nnUNet_results": str(work / "results"), "nnUNet_compile": "False", "nnUNet_n_proc_DA": "0",
            "nnUNet_def_n_proc": "1", "nnUNet_extTrainer": str(EXT_TRAINER_DIR)}


def planning_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for ``nnUNetv2_plan_and_preprocess``, which fails with ``nnUNet_n_proc_DA=0``."""
    return {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}


def run_logged(command: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``command``, its output to ``log``; returns its wall time in seconds, exits with the log's name if it
    fails."""
    start = time.perf_counter()
    with open(log, "w") as f:
        result = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}); see {log}")
    return time.perf_counter() - start


def shrink_plans(plans_file: Path, target: Path, feature_divisor: int, configuration: str = "2d") -> None:
    """A copy of ``plans_file`` named after ``target`` whose ``configuration`` network has ``feature_divisor`` times
    fewer features (at least 4) and one block per stage: a CPU-sized network on the same data and patches."""
    plans = json.loads(plans_file.read_text())
    kwargs = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [max(4, f // feature_divisor) for f in kwargs["features_per_stage"]]
    kwargs["n_blocks_per_stage"] = [1] * kwargs["n_stages"]
    plans["plans_name"] = target.stem
    target.write_text(json.dumps(plans, indent=1))
