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
    proc = ctx.Process(target=_run_case, args=(case, threads, queue))
    proc.start()
    try:
        result = queue.get(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - queue.Empty on timeout
        result = {"error": f"no result within {timeout_s:.0f} s"}
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
    return {"case": case.name, **case.kwargs, **result}


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
    """A markdown table; floats with 3 significant digits, missing values as '-'."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
