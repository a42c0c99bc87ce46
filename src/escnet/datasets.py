"""Datasets: find labelled clips, decode them once into a waveform cache, serve batches.

A dataset is first read into a :class:`ClipTable` (paths, labels, folds, class names) from one
of four layouts:

* an ESC-50 folder: ``meta/esc50.csv`` + ``audio/``, audio matched to rows **by stem** whatever
  the extension (``1-100032-A-0.wav`` in the CSV finds ``audio/1-100032-A-0.ogg``);
* a folder of ``{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.*`` files found by the config's ``keyword`` glob
  (the report's way: label and fold parsed from the name);
* a CSV ``path,label[,fold]`` (paths relative to the CSV);
* a folder with one subfolder of recordings per class.

Tables without folds get stratified folds. :func:`build_waveform_cache` then decodes, mixes
down, resamples and pads/crops every clip **once** into a memory-mapped ``(clips, samples)``
float32 array, keyed by the files (path, size, mtime), the sample rate and the clip length, so
every later epoch and run reads ready waveforms.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from escnet.audio import AUDIO_EXTENSIONS, load_audio
from escnet.config import TaskConfig, cache_root
from escnet.errors import AudioError, ConfigError, DataError

ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10")
_ESC50_NAME = re.compile(r"^(\d+)-([^-]+)-([^-]+)-(\d+)$")
CACHE_VERSION = 1


@dataclass
class ClipTable:
    """Labelled clips. ``labels[i]`` indexes ``classes``; ``folds[i]`` starts at 1."""

    paths: list[Path]
    labels: np.ndarray
    folds: np.ndarray
    classes: list[str]
    source: str
    notes: list[str] = field(default_factory=list)
    """What was decided while reading (folds assigned, files left out), for the user."""

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, mask: np.ndarray) -> ClipTable:
        """The rows where ``mask`` is true (labels and classes unchanged)."""
        keep = np.flatnonzero(mask)
        return ClipTable([self.paths[i] for i in keep], self.labels[keep], self.folds[keep],
                         self.classes, self.source, list(self.notes))

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(f) for f in np.unique(self.folds))


def parse_esc50_name(name: str) -> tuple[int, int] | None:
    """``'{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.ext'`` → ``(fold, target)``, else ``None``."""
    match = _ESC50_NAME.match(Path(name).stem)
    return (int(match.group(1)), int(match.group(4))) if match else None


def _audio_by_stem(folder: Path) -> dict[str, Path]:
    """Map each stem in ``folder`` to its audio file, preferring extensions in listed order."""
    rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        ext = path.suffix.lower()
        if ext in rank and (path.stem not in found or rank[ext] < rank[found[path.stem].suffix.lower()]):
            found[path.stem] = path
    return found


def read_esc50(root: Path, subset: str = "all", skip_missing: bool = False) -> ClipTable:
    """An ESC-50 folder (``meta/esc50.csv`` + ``audio/``); ``subset='esc10'`` keeps ESC-10."""
    meta = root / "meta" / "esc50.csv"
    with meta.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ESC50_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{meta}: missing column(s) {', '.join(missing)}; "
                            f"expected {','.join(ESC50_COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{meta}: has no rows")
    audio_dir = root / "audio"
    if not audio_dir.is_dir():
        raise DataError(f"{root}: no audio/ folder next to meta/esc50.csv")
    by_stem = _audio_by_stem(audio_dir)
    if subset == "esc10":
        rows = [r for r in rows if r["esc10"].strip().lower() == "true"]
    names: dict[int, str] = {}
    paths, targets, folds, absent = [], [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except ValueError:
            raise DataError(f"{meta}: row {line}: fold and target must be integers") from None
        path = by_stem.get(Path(row["filename"]).stem)
        if path is None:
            absent.append(row["filename"])
            continue
        names[target] = row["category"]
        paths.append(path)
        targets.append(target)
        folds.append(fold)
    notes = []
    if absent:
        if not skip_missing:
            raise DataError(f"{audio_dir}: no audio file for {len(absent)} row(s) of {meta.name} "
                            f"(first: {absent[0]}); restore them or pass --skip-bad")
        notes.append(f"left out {len(absent)} row(s) of {meta.name} with no audio file")
    order = sorted(names)  # keep ESC-50's target order; ESC-10 targets are renumbered 0..9
    index = {t: i for i, t in enumerate(order)}
    return ClipTable(paths, np.array([index[t] for t in targets]), np.array(folds),
                     [names[t] for t in order], f"esc50:{root}", notes)


def read_glob(root: Path, keyword: str) -> ClipTable:
    """Files matching ``keyword`` below ``root``; fold and target parsed from the file names."""
    parsed = [(p, parse_esc50_name(p.name)) for p in sorted(root.rglob(keyword))
              if p.suffix.lower() in AUDIO_EXTENSIONS]
    parsed = [(p, ft) for p, ft in parsed if ft is not None]
    if not parsed:
        raise DataError(f"{root}: no audio files named like FOLD-CLIPID-TAKE-TARGET match '{keyword}'")
    targets = sorted({t for _, (_, t) in parsed})
    index = {t: i for i, t in enumerate(targets)}
    return ClipTable([p for p, _ in parsed], np.array([index[t] for _, (_, t) in parsed]),
                     np.array([f for _, (f, _) in parsed]), [str(t) for t in targets],
                     f"glob:{root}/{keyword}")


def read_class_folders(root: Path) -> ClipTable:
    """One subfolder per class, its recordings inside (searched recursively)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for i, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        paths += files
        labels += [i] * len(files)
    used = sorted(set(labels))
    if len(used) < 2:
        raise DataError(f"{root}: expected meta/esc50.csv, a CSV, or one subfolder of audio files "
                        f"per class (found {len(used)} class folder(s) with audio)")
    return ClipTable(paths, np.array(labels), np.zeros(len(paths), dtype=int), classes,
                     f"folders:{root}")


def read_csv_table(path: Path) -> ClipTable:
    """A CSV with columns ``path,label`` and optionally ``fold`` (paths relative to the CSV)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected path,label[,fold]")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path}: has no rows")
    has_fold = "fold" in (reader.fieldnames or [])
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    try:
        folds = [int(r["fold"]) if has_fold else 0 for r in rows]
    except ValueError:
        raise DataError(f"{path}: column fold must hold integers >= 1") from None
    return ClipTable([(path.parent / r["path"]).resolve() for r in rows],
                     np.array([index[r["label"]] for r in rows]), np.array(folds), classes,
                     f"csv:{path}")


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign folds 1..n_folds so that every class is spread evenly; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=int)
    offset = 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds + 1
        offset += len(idx)  # rotate so small classes do not all start in fold 1
    return folds


def load_table(config: TaskConfig) -> ClipTable:
    """Read the dataset at ``config.data_dir`` in whichever layout it has."""
    if not config.data_dir:
        raise ConfigError("no dataset given: pass --data DIR (an ESC-50 folder, a class-folder "
                          "tree or a path,label CSV); get ESC-50 with `escnet download esc50`")
    root = Path(config.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a dataset file must be a CSV with columns path,label[,fold]")
        table = read_csv_table(root)
    elif (root / "meta" / "esc50.csv").is_file():
        table = read_esc50(root, config.subset, config.skip_bad)
    elif any(parse_esc50_name(p.name) for p in root.rglob(config.keyword)):
        table = read_glob(root, config.keyword)
    else:
        table = read_class_folders(root)
    if config.subset != "all" and not table.source.startswith("esc50"):
        raise ConfigError(f"setting subset={config.subset}: needs an ESC-50 folder with meta/esc50.csv")
    if (table.folds == 0).any():
        n = 5 if np.bincount(table.labels).min() >= 5 else 2
        table.folds = stratified_folds(table.labels, n, config.seed)
        table.notes.append(f"no folds in {root}: assigned {n} stratified folds (seed {config.seed})")
    return table


# --- waveform cache -------------------------------------------------------------------------

def cache_key(table: ClipTable, sample_rate: int, num_samples: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{sample_rate}:{num_samples}".encode())
    for p in table.paths:
        try:
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}:missing\n".encode())
    return h.hexdigest()[:20]


def build_waveform_cache(table: ClipTable, config: TaskConfig, progress: bool = True
                         ) -> tuple[np.ndarray | RowView, ClipTable]:
    """Decode every clip of ``table`` once into a memory-mapped cache, or open the existing one.

    Returns:
        ``(clips, length_wav)`` float32 memmap and the table of the clips it holds, in the same
        order (bad files left out when ``config.skip_bad``).

    Raises:
        AudioError: some files could not be decoded (all of them are listed in the cache's
            ``.bad.json``) and ``skip_bad`` is off.
    """
    folder = cache_root(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"setting cache_dir={str(folder)!r}: cannot create it ({err.strerror})") from None
    key = cache_key(table, config.sample_rate, config.length_wav)
    array_path, bad_path = folder / f"wav-{key}.npy", folder / f"wav-{key}.bad.json"
    if not array_path.exists():
        _write_cache(table, config, array_path, bad_path, progress)
    bad: dict[str, str] = json.loads(bad_path.read_text())
    waves = np.load(array_path, mmap_mode="r")
    if bad:
        first_reason = next(iter(bad.values()))
        if not config.skip_bad:
            raise AudioError(f"{len(bad)} unreadable audio file(s), first {first_reason}; "
                             f"all listed in {bad_path}; fix them or pass --skip-bad")
        keep = np.array([str(p) not in bad for p in table.paths])
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
    # Write under a temporary name and rename, so an interrupted build never leaves a cache
    # that looks complete.
    partial = array_path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                    shape=(len(table), config.length_wav))
    bad: dict[str, str] = {}

    def decode(i: int) -> None:
        try:
            out[i] = load_audio(table.paths[i], config.sample_rate, config.length_wav)
        except AudioError as err:
            bad[str(table.paths[i])] = str(err)
            out[i] = 0.0

    # libsndfile and soxr release the GIL, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(decode, range(len(table))), total=len(table), disable=not progress,
                  desc=f"decoding {len(table)} clips to {config.sample_rate} Hz (once)",
                  unit="clip"))
    out.flush()
    bad_path.write_text(json.dumps(bad, indent=1))
    os.replace(partial, array_path)


class WaveformDataset(Dataset):
    """Items ``{"wav": (samples,) float32 tensor, "label": int}`` from cached waveforms.

    ``augment(samples, *seed_keys) → samples`` (a :class:`~escnet.augmentation.WaveformAugment`) runs
    per item, in the DataLoader workers, seeded from ``(seed, clip index)`` so the result does
    not depend on which worker runs it.
    """

    def __init__(self, waves, labels: np.ndarray, indices: Sequence[int], augment=None,
                 seed: int = 0) -> None:
        self.waves, self.labels, self.indices = waves, labels, list(indices)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        wav = np.array(self.waves[j], dtype=np.float32)
        if self.augment is not None:
            wav = self.augment(wav, self.seed, j)
        return {"wav": torch.from_numpy(wav), "label": int(self.labels[j])}


class FeatureDataset(Dataset):
    """Items ``{"features": (n_mels, frames) tensor, "label": int}`` from precomputed log-mels."""

    def __init__(self, features, labels: np.ndarray, indices: Sequence[int]) -> None:
        self.features, self.labels, self.indices = features, labels, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        return {"features": self.features[j], "label": int(self.labels[j])}


class PickCopies:
    """One of several versions of each clip: ``view[i]`` is ``copies[choice[i]][i]``.

    ``copies`` are arrays or tensors of one layout, ``(clips, samples)`` or
    ``(clips, n_mels, frames)``; ``choice`` ``(clips,)`` says which copy each clip uses.
    """

    def __init__(self, copies: Sequence, choice: np.ndarray) -> None:
        self.copies, self.choice = copies, choice
        self.shape = tuple(copies[0].shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int):
        return self.copies[self.choice[i]][i]


def clip_dataset(source, labels: np.ndarray, indices: Sequence[int], augment=None,
                 seed: int = 0) -> Dataset:
    """A dataset over ``indices`` of cached waveforms ``(clips, samples)`` (optionally augmented,
    see :class:`WaveformDataset`) or of precomputed log-mels ``(clips, n_mels, frames)``."""
    if len(source.shape) == 3:
        return FeatureDataset(source, labels, indices)
    return WaveformDataset(source, labels, indices, augment, seed)


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Batch a list of items.

    Waveform items are padded to the longest: ``wav`` ``(batch, samples)``, ``label``
    ``(batch,)`` and ``length`` ``(batch,)`` (valid samples of each row), as the report's
    Collator. Precomputed features (all one clip length) are stacked: ``features``
    ``(batch, n_mels, frames)`` and ``label``.
    """
    labels = torch.tensor([it["label"] for it in items], dtype=torch.long)
    if "features" in items[0]:
        return {"features": torch.stack([it["features"] for it in items]), "label": labels}
    return {
        "wav": pad_sequence([it["wav"] for it in items], batch_first=True),
        "label": labels,
        "length": torch.tensor([it["wav"].shape[0] for it in items], dtype=torch.long),
    }


def class_balanced_sampler(labels: np.ndarray, generator: torch.Generator | None = None
                           ) -> WeightedRandomSampler:
    """Sampler drawing each example with weight ``1 / count(its class)`` (with replacement), so
    every class is drawn equally often in expectation; one epoch is ``len(labels)`` draws."""
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=generator)


def make_splits(table: ClipTable, config: TaskConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, train_indices, test_indices)`` for each held-out fold, or the one random split."""
    if config.protocol == "random":
        rng = np.random.default_rng(config.seed)
        test = []
        for label in np.unique(table.labels):  # stratified, unlike the report's random_split
            idx = rng.permutation(np.flatnonzero(table.labels == label))
            test += list(idx[: max(1, round(len(idx) * (1 - config.train_ratio)))])
        test_mask = np.zeros(len(table), dtype=bool)
        test_mask[test] = True
        return [("random", np.flatnonzero(~test_mask), np.flatnonzero(test_mask))]
    available = table.fold_ids
    if len(available) < 2:
        raise DataError(f"{table.source}: only fold {available} present; 'folds' needs two or "
                        "more (use --split random)")
    wanted = config.folds or available
    for fold in wanted:
        if fold not in available:
            raise ConfigError(f"setting folds: fold {fold} does not exist in this dataset "
                              f"(folds: {', '.join(map(str, available))})")
    return [(str(f), np.flatnonzero(table.folds != f), np.flatnonzero(table.folds == f))
            for f in wanted]
