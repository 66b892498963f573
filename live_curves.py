"""Live curves: a run's metric rows mirrored to TensorBoard as they are logged (``tensorboard=True``).

The CSV stays the record; this only lets a researcher watch a run. Under ``<log_dir>/tensorboard/
<run name>/``, at the run's global epoch: ``<split>/<metric>`` for the loss and the metrics of
:data:`results_logger.SCALAR_METRICS` on val and test, ``train/loss`` and ``train/lr``, and
``class_weight/<c>`` for each class's weight in the epoch's loss. ``tensorboard --logdir
<log_dir>/tensorboard`` shows them. The tensorboard package is optional and imported only here,
only when asked.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from results_logger import SCALAR_METRICS


def available() -> bool:
    """Whether the tensorboard package is installed (without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardCurves:
    """``log(row)`` writes one metric row of a run (see the module docstring); ``close()`` flushes."""

    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # here, not at import: the package is optional

        self.writer = SummaryWriter(str(folder))
        self.last_train_step = None

    def log(self, row: dict) -> None:
        step = row["global_epoch"]
        for k in SCALAR_METRICS:
            self.writer.add_scalar(f"{row['split']}/{k}", row[k], step)
        if step != self.last_train_step:  # once per epoch: every split's row carries them
            self.last_train_step = step
            self.writer.add_scalar("train/loss", row["train_loss"], step)
            self.writer.add_scalar("train/lr", row["lr"], step)
            for c in range(sum(k.startswith("w_") for k in row)):
                self.writer.add_scalar(f"class_weight/{c}", row[f"w_{c}"], step)

    def close(self) -> None:
        self.writer.close()
