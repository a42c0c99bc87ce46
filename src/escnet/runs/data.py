"""Opening a run's data: config → table → waveform cache → splits, with the same checks
wherever it is opened (train, evaluate, calibrate, robustness, export, the benchmarks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from escnet.config import TaskConfig
from escnet.data.cache import build_waveform_cache
from escnet.data.tables import ClipTable, Split, load_table, make_splits
from escnet.errors import DataError
from escnet.runs.rundir import RunDir

log = logging.getLogger("escnet")


def with_data(config: TaskConfig, data_dir: str | None, source: str | Path) -> TaskConfig:
    """``config`` (a run's or a model's, from ``source``) with its dataset at ``data_dir`` when
    given (it moved); without, its own dataset must still be there (a relative path is taken
    from the current folder), else :class:`DataError` says to give ``--data``."""
    if data_dir:
        return config.replace({"data.data_dir": data_dir})
    if not Path(config.data.data_dir).exists():
        raise DataError(f"{source}: its dataset {config.data.data_dir} (data.data_dir, as given at "
                        f"training) is not there from {Path.cwd()}; give --data DIR")
    return config


@dataclass
class RunData:
    """A dataset opened as a run uses it: its ``table``, the ``splits`` the run's protocol makes
    of it (by name), and the decoded waveforms (``waves``, decoded once into the cache on first
    use, block by block, and memory-mapped from then on; the table then holds the clips the
    cache holds, bad files left out when ``data.skip_bad``).

    Build it with :meth:`open` (a config) or :meth:`of_run` (a run folder: its own settings,
    checked against its classes and folds)."""

    config: TaskConfig
    table: ClipTable
    progress: bool = False
    talk: bool = False
    """Log the table's notes (the layout found, folds assigned, files left out)."""
    said: int = field(default=0, init=False)

    @classmethod
    def open(cls, config: TaskConfig, progress: bool = False, talk: bool = False,
             table: ClipTable | None = None) -> RunData:
        """The dataset of ``config`` (or its ``table``, read already), its splits checked
        before anything is decoded: a fold setting the dataset cannot meet fails at once."""
        data = cls(config, table if table is not None else load_table(config), progress, talk)
        make_splits(data.table, config)
        data._say()
        return data

    @classmethod
    def of_run(cls, run: RunDir, data_dir: str | None = None, progress: bool = False,
               folds: list[str] | None = None) -> RunData:
        """The data ``run`` was trained on (at ``data_dir`` if it moved), refused unless its
        classes and the folds asked for (default: the run's) are the run's."""
        data = cls.open(with_data(run.read_config(), data_dir, run.path), progress)
        data.check(run, run.fold_names() if folds is None else folds)
        return data

    def _say(self) -> None:
        if self.talk:
            for note in self.table.notes[self.said:]:
                log.info(note)
        self.said = len(self.table.notes)

    @cached_property
    def waves(self) -> np.ndarray:
        """``(clips, samples)`` float32, memory-mapped; :attr:`table` is then the cache's."""
        waves, self.table = build_waveform_cache(self.table, self.config, self.progress)
        self._say()
        return waves

    @cached_property
    def splits(self) -> dict[str, Split]:
        """The protocol's splits, by name, of the clips the cache holds."""
        self.waves  # noqa: B018  (the table the splits index is the cache's)
        return {s.name: s for s in make_splits(self.table, self.config)}

    def check(self, run: RunDir, folds: list[str]) -> None:
        """Refuse data that is not ``run``'s: other classes, or without the ``folds``."""
        self.check_classes(run.classes, f"run {run.path}")
        names = {s.name for s in make_splits(self.table, self.config)}
        if missing := [f for f in folds if f not in names]:
            raise DataError(f"{self.config.data.data_dir}: has no fold {missing[0]}, which run "
                            f"{run.path} was trained with")

    def check_classes(self, classes: list[str], model: str) -> None:
        """Refuse data whose classes are not those ``model`` was trained on."""
        if classes != self.table.known_classes:
            raise DataError(f"{self.config.data.data_dir}: its classes differ from those {model} "
                            "was trained on")
