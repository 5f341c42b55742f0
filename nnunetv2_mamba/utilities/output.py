"""Where nnU-Net's narration goes when our commands and benchmarks run its steps in-process."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, TextIO


@contextlib.contextmanager
def output_to(log: TextIO) -> Iterator[None]:
    """Send everything printed by this process and its worker processes to ``log`` (nnU-Net narrates each step;
    its preprocessing workers write to the inherited file descriptors, not to ``sys.stdout``). Line-buffered, so that
    the log can be followed while a long step (a training) runs."""
    if hasattr(log, "reconfigure"):
        log.reconfigure(line_buffering=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
