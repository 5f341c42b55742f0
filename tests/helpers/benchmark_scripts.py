"""Running a benchmark script end to end, as a user does, for the tests of its smoke budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name: str, arguments: list[str]) -> str:
    """``python benchmarks/<name>.py ARGUMENTS``; its standard output, or a failed assertion with its output's end.
    The timeout only catches a hang: on a fresh machine, beside another test worker, a smoke run takes minutes."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *arguments], capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result.stdout
