"""The waveform cache: every clip of a table decoded, mixed down, resampled and padded/cropped
**once** into a memory-mapped ``(clips, samples)`` float32 array, keyed by the files (path, size,
mtime), the sample rate and the clip length, so every later epoch and run reads ready waveforms.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from escnet.config import TaskConfig
from escnet.data.audio import load_audio
from escnet.data.tables import ClipTable
from escnet.errors import AudioError, ConfigError
from escnet.files import atomic_memmap, atomic_write_json

CACHE_VERSION = 1


def cache_root(config: TaskConfig) -> Path:
    """The cache folder: ``data.cache_dir``, else ``$ESCNET_CACHE``, else ``~/.cache/escnet``."""
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("ESCNET_CACHE") or Path.home() / ".cache" / "escnet")


def cache_key(table: ClipTable, sample_rate: int, num_samples: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{sample_rate}:{num_samples}".encode())
    for p in table.paths:
        try:
            st = p.stat()
            h.update(os.fsencode(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}\n"))
        except OSError:
            h.update(os.fsencode(f"{p}:missing\n"))
    return h.hexdigest()[:20]


def build_waveform_cache(table: ClipTable, config: TaskConfig, progress: bool = True
                         ) -> tuple[np.ndarray | RowView, ClipTable]:
    """Decode every clip of ``table`` once into a memory-mapped cache, or open the existing one.

    Returns:
        ``(clips, length_wav)`` float32 memmap and the table of the clips it holds, in the same
        order (bad files left out when ``data.skip_bad``).

    Raises:
        AudioError: some files could not be decoded (all of them are listed in the cache's
            ``.bad.json``) and ``skip_bad`` is off.
    """
    folder = cache_root(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        given = f"setting data.cache_dir={str(folder)!r}" if config.data.cache_dir else \
            f"the cache folder {folder} ($ESCNET_CACHE, else ~/.cache/escnet; or --cache-dir)"
        raise ConfigError(f"{given}: cannot create it ({err.strerror})") from None
    key = cache_key(table, config.data.sample_rate, config.length_wav)
    array_path, bad_path = folder / f"wav-{key}.npy", folder / f"wav-{key}.bad.json"
    if not array_path.exists():
        _write_cache(table, config, array_path, bad_path, progress)
    bad: dict[str, str] = json.loads(bad_path.read_text())
    waves = np.load(array_path, mmap_mode="r")
    if bad:
        first_reason = next(iter(bad.values()))
        if not config.data.skip_bad:
            raise AudioError(f"{len(bad)} unreadable audio file(s), first {first_reason}; "
                             f"all listed in {bad_path}; fix them or set data.skip_bad=true")
        keep = np.array([str(p) not in bad for p in table.paths])
        emptied = [c for i, c in enumerate(table.classes) if not (table.labels[keep] == i).any()]
        if emptied:  # a class without clips would still be one of the model's outputs
            raise AudioError(f"{len(bad)} unreadable audio file(s) (listed in {bad_path}) leave class(es) "
                             f"{', '.join(emptied[:5])} with no clip at all; fix its files or remove it")
        table = table.select(keep)
        table.notes.append(f"left out {len(bad)} unreadable audio file(s) (listed in {bad_path})")
        waves = RowView(waves, np.flatnonzero(keep))
    return waves, table


class RowView:
    """Rows ``rows`` of a cached array, without copying it: ``view[i]`` is ``array[rows[i]]``."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array, self.rows = array, rows
        self.shape = (len(rows), *array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[self.rows[i]]


def _write_cache(table: ClipTable, config: TaskConfig, array_path: Path, bad_path: Path,
                 progress: bool) -> None:
    rate = config.data.sample_rate
    bad: dict[str, str] = {}
    with atomic_memmap(array_path, (len(table), config.length_wav)) as out:

        def decode(i: int) -> None:
            try:
                out[i] = load_audio(table.paths[i], rate, config.length_wav)
            except AudioError as err:
                bad[str(table.paths[i])] = str(err)
                out[i] = 0.0

        # libsndfile and soxr release the GIL, so threads use every core without pickling.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(tqdm(pool.map(decode, range(len(table))), total=len(table), disable=not progress,
                      desc=f"decoding {len(table)} clips to {rate} Hz (once)", unit="clip"))
        # The list of bad files first: a cache array is only ever seen with its list.
        atomic_write_json(bad_path, bad)
