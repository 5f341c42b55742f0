"""OMP_WAIT_POLICY: PASSIVE only on a busy machine and only where the user has not chosen; our commands choose it
before torch is imported, which is when OpenMP reads it."""

from __future__ import annotations

import os
import subprocess
import sys

from nnunetv2_mamba.utilities import openmp


def test_passive_on_a_busy_machine_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert openmp.choose_wait_policy() is None and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.2, 0.9))
    assert "load average 1.7" in openmp.choose_wait_policy() and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert openmp.choose_wait_policy() is None and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_command_chooses_before_torch_is_imported():
    code = ("import os, sys; os.getloadavg = lambda: (5.0, 5.0, 5.0)\n"
            "from nnunetv2_mamba.cli import main\n"
            "assert 'torch' not in sys.modules\n"
            "main(['ext-trainer-path'])\n"
            "print(os.environ['OMP_WAIT_POLICY'])")
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("PASSIVE") and "load average 5.0" in result.stderr
