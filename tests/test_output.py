"""output_to: where nnU-Net's narration goes when our commands run its steps in-process."""

from __future__ import annotations

import subprocess
import sys

from nnunetv2_mamba.utilities.output import output_to


def test_prints_and_child_processes_reach_the_log_line_by_line(tmp_path):
    log_file = tmp_path / "step.log"
    with open(log_file, "a") as log, output_to(log):
        print("epoch 0 done")
        during = log_file.read_text()  # a training's log is read while it runs
        subprocess.run([sys.executable, "-c", "import os; os.write(1, b'worker\\n')"], check=True)
    assert during == "epoch 0 done\n"
    assert log_file.read_text() == "epoch 0 done\nworker\n"
