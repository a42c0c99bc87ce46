"""Runs: the run directory (its layout, checkpoints, held-out predictions) and the metrics
derived from them. :class:`RunDir` is the one owner of a run's file names and formats."""

from escnet.runs.data import RunData
from escnet.runs.rundir import (
    CHECKPOINT_FORMAT,
    Predictions,
    RunDir,
    load_checkpoint,
    load_model,
    mean_std,
    save_checkpoint,
    write_metrics,
)

__all__ = ["CHECKPOINT_FORMAT", "Predictions", "RunData", "RunDir", "load_checkpoint", "load_model",
           "mean_std", "save_checkpoint", "write_metrics"]
