"""An nnU-Net training run in-process with the seconds of every step recorded and, on request, a progress bar."""

from __future__ import annotations

import time
from typing import TextIO


def run_timed_training(trainer, progress: TextIO | None = None, title: str = "training") -> list[float]:
    """``trainer.run_training()``; returns the seconds of every training step (the network's work, without data
    loading and validation). With ``progress``, a progress bar of the iterations (epoch, seconds) goes there."""
    from tqdm import tqdm

    seconds: list[float] = []
    step = trainer.train_step
    total = trainer.num_epochs * trainer.num_iterations_per_epoch
    bar = tqdm(total=total, initial=trainer.current_epoch * trainer.num_iterations_per_epoch, desc=title,
               unit="it", file=progress, disable=progress is None, leave=False)

    def timed_step(batch: dict) -> dict:
        start = time.perf_counter()
        result = step(batch)
        seconds.append(time.perf_counter() - start)
        bar.set_postfix_str(f"epoch {trainer.current_epoch + 1}/{trainer.num_epochs}", refresh=False)
        bar.update()
        return result

    trainer.train_step = timed_step
    try:
        trainer.run_training()
    finally:
        bar.close()
    return seconds
