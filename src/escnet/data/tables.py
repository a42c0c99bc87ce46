"""Dataset tables: find labelled clips and their folds, in whichever layout a dataset has.

A dataset is read into a :class:`ClipTable` (paths, labels, folds, class names) from one of
four layouts:

* an ESC-50 folder: ``meta/esc50.csv`` + ``audio/``, audio matched to rows **by stem** whatever
  the extension (``1-100032-A-0.wav`` in the CSV finds ``audio/1-100032-A-0.ogg``);
* a folder of ``{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.*`` files found by the config's ``keyword`` glob
  (the report's way: label and fold parsed from the name);
* a CSV ``path,label[,fold]`` (paths relative to the CSV);
* a folder with one subfolder of recordings per class.

Tables without folds get stratified folds; :func:`make_splits` turns a table into the
(train, test) index pairs of the protocol.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from escnet.config import TaskConfig
from escnet.data.audio import AUDIO_EXTENSIONS
from escnet.errors import ConfigError, DataError
from escnet.files import read_text

ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10")
_ESC50_NAME = re.compile(r"^(\d+)-([^-]+)-([^-]+)-(\d+)$")
_FOLD_FOLDER = re.compile(r"^fold[-_ ]?\d+$", re.IGNORECASE)
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
    unknown: int = 0
    """The last ``unknown`` of ``classes`` are left out of training (the open-set protocol,
    ``data.unknown_classes``): only :attr:`known_classes` are the model's."""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def known_classes(self) -> list[str]:
        """The classes a model of this table is trained on."""
        return self.classes[: len(self.classes) - self.unknown]

    def select(self, mask: np.ndarray) -> ClipTable:
        """The rows where ``mask`` is true (labels and classes unchanged)."""
        keep = np.flatnonzero(mask)
        return ClipTable([self.paths[i] for i in keep], self.labels[keep], self.folds[keep],
                         self.classes, self.source, list(self.notes), self.unknown)

    def with_unknown_last(self, names: list[str]) -> ClipTable:
        """The same clips with the classes ``names`` moved after the others (labels renumbered),
        marked as unknown."""
        order = [c for c in self.classes if c not in names] + [c for c in self.classes if c in names]
        new = np.array([order.index(c) for c in self.classes])
        return ClipTable(self.paths, new[self.labels], self.folds, order, self.source,
                         list(self.notes), len(names))

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(f) for f in np.unique(self.folds))


class Split(NamedTuple):
    """One held-out split of a table: clip indices (sorted) of each part."""

    name: str
    """The held-out fold's number, or ``random``."""
    train: np.ndarray
    test: np.ndarray
    """Held-out clips of known classes: the accuracy is theirs."""
    validation: np.ndarray
    """Clips held out of training to calibrate the model (``train.validation_share``)."""
    unknown: np.ndarray
    """Held-out clips of the classes left out of training (the open-set protocol)."""


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
    reader = csv_rows(read_text(meta, "ESC-50 metadata", DataError))
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
    paths, targets, folds, fold_lines, absent = [], [], [], [], []
    lines: dict[str, list[int]] = {}  # filename → its rows
    categories: dict[int, dict[str, list[int]]] = {}  # target → category → rows
    for line, row in enumerate(rows, start=2):
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except (TypeError, ValueError):
            raise DataError(f"{meta}: row {line}: fold and target must be integers (got fold "
                            f"{row['fold']!r}, target {row['target']!r})") from None
        lines.setdefault(row["filename"], []).append(line)
        categories.setdefault(target, {}).setdefault(row["category"], []).append(line)
        path = by_stem.get(Path(row["filename"]).stem)
        if path is None:
            absent.append(row["filename"])
            continue
        paths.append(path)
        targets.append(target)
        folds.append(fold)
        fold_lines.append(line)
    _refuse_duplicates(meta, lines)
    _refuse_bad_folds(meta, folds, fold_lines)
    names: dict[int, str] = {}
    for target, named in categories.items():
        if len(named) > 1:
            both = "; ".join(f"{name!r} in row(s) {_rows(r)}" for name, r in named.items())
            raise DataError(f"{meta}: target {target} has two category names ({both}); one target, "
                            "one name: fix the rows")
        names[target] = next(iter(named))
    for name in {n for named in categories.values() for n in named}:
        shared = [t for t, named in categories.items() if name in named]
        if len(shared) > 1:
            raise DataError(f"{meta}: category {name!r} has targets {', '.join(map(str, shared))} "
                            f"(rows {_rows(categories[shared[0]][name])} and "
                            f"{_rows(categories[shared[1]][name])}); one name, one target: fix the rows")
    notes = []
    if absent:
        if not skip_missing:
            raise DataError(f"{audio_dir}: no audio file for {len(absent)} row(s) of {meta.name} "
                            f"(first: {absent[0]}); restore them or set data.skip_bad=true")
        notes.append(f"left out {len(absent)} row(s) of {meta.name} with no audio file")
    order = sorted(names)  # keep ESC-50's target order; ESC-10 targets are renumbered 0..9
    index = {t: i for i, t in enumerate(order)}
    return ClipTable(paths, np.array([index[t] for t in targets]), np.array(folds),
                     [names[t] for t in order], f"esc50:{root}", notes)


def _rows(lines: list[int], most: int = 5) -> str:
    more = f" and {len(lines) - most} more" if len(lines) > most else ""
    return ", ".join(map(str, lines[:most])) + more


def _refuse_duplicates(table: Path, lines: dict[str, list[int]]) -> None:
    """A clip listed twice would count twice (in training, or in a fold's accuracy)."""
    twice = {name: rows for name, rows in lines.items() if len(rows) > 1}
    if twice:
        name, rows = next(iter(twice.items()))
        raise DataError(f"{table}: {len(twice)} clip(s) listed more than once, e.g. {name} in rows "
                        f"{_rows(rows)}; remove the repeated rows")


def _refuse_bad_folds(table: Path, folds: list[int], lines: list[int]) -> None:
    """Folds are numbered from 1; a 0 or a negative number is a mistake, never "no folds"."""
    bad = [(line, fold) for line, fold in zip(lines, folds, strict=True) if fold < 1]
    if bad:
        raise DataError(f"{table}: {len(bad)} row(s) with a fold below 1 (row {bad[0][0]}: fold "
                        f"{bad[0][1]}); folds are numbered from 1: fix the rows")


def read_glob(root: Path, keyword: str) -> ClipTable:
    """Files matching ``keyword`` below ``root``; fold and target parsed from the file names."""
    parsed = [(p, parse_esc50_name(p.name)) for p in sorted(root.rglob(keyword))
              if p.suffix.lower() in AUDIO_EXTENSIONS]
    parsed = [(p, ft) for p, ft in parsed if ft is not None]
    if not parsed:
        raise DataError(f"{root}: no audio files named like FOLD-CLIPID-TAKE-TARGET match '{keyword}'")
    zero = [p for p, (f, _) in parsed if f < 1]
    if zero:
        raise DataError(f"{zero[0]}: fold {parse_esc50_name(zero[0].name)[0]} in its name; folds are "
                        f"numbered from 1 ({len(zero)} file(s) like it)")
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
        found = [p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith(".")]
        files = sorted(p for p in found if p.suffix.lower() in AUDIO_EXTENSIONS)
        if found and not files:  # else the class would be one with no clip: never trained, always an output
            kinds = sorted({p.suffix.lower() or "(no extension)" for p in found})
            raise DataError(f"{root / name}: {len(found)} file(s), none in a format escnet reads "
                            f"({', '.join(kinds[:5])}; it reads {' '.join(AUDIO_EXTENSIONS)}); convert "
                            "them (e.g. ffmpeg -i in.m4a out.wav) or move the folder out")
        paths += files
        labels += [i] * len(files)
    used = sorted(set(labels))
    if len(used) < 2:
        raise DataError(f"{root}: expected meta/esc50.csv, a CSV, or one subfolder of audio files "
                        f"per class (found {len(used)} class folder(s) with audio)")
    classes = [c for i, c in enumerate(classes) if i in set(used)]  # empty folders are no class
    labels = [used.index(k) for k in labels]
    _refuse_lookalike_labels(root, classes)
    return ClipTable(paths, np.array(labels), np.zeros(len(paths), dtype=int), classes,
                     f"folders:{root}")


def label_key(label: str) -> str:
    """What a label means, for telling labels apart: Unicode-normalised (NFKC: a non-breaking
    space is a space, ``ﬁ`` is ``fi``, a composed ``é`` the decomposed one), without invisible
    format characters (zero-width spaces and joiners, bidirectional marks, a byte-order mark),
    spaces collapsed and trimmed, case folded."""
    text = unicodedata.normalize("NFKC", label)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(text.split()).casefold()


def _refuse_lookalike_labels(source: Path, classes: list[str]) -> None:
    """Labels that look the same (:func:`label_key`: ``dog``, ``Dog``, ``dog ``, ``dog`` with a
    zero-width space) are one sound named twice, never two classes."""
    seen: dict[str, str] = {}
    for c in classes:
        other = seen.setdefault(label_key(c), c)
        if other != c:
            raise DataError(f"{source}: labels {other!r} and {c!r} look the same (they differ only in "
                            "case, spaces, invisible characters or Unicode form); give each class "
                            "one spelling")


def csv_rows(text: str) -> csv.DictReader:
    """The rows of CSV ``text`` by its header's names, split at commas, or at semicolons or
    tabs where the header has one of those and no comma (spreadsheets in locales that write a
    decimal comma save CSV with semicolons; "text" exports use tabs)."""
    header = text.partition("\n")[0]
    delimiter = next((d for d in ",;\t" if d in header), ",")
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)


def read_csv_table(path: Path) -> ClipTable:
    """A CSV with columns ``path,label`` and optionally ``fold`` (paths relative to the CSV),
    read as :func:`~escnet.files.read_text` reads text (a spreadsheet's byte-order mark or
    UTF-16 is fine) and split as :func:`csv_rows` splits it."""
    reader = csv_rows(read_text(path, "dataset CSV", DataError))
    missing = [c for c in ("path", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected path,label[,fold]")
    rows = list(reader)
    if not rows:
        raise DataError(f"{path}: has no rows")
    has_fold = "fold" in (reader.fieldnames or [])
    folds, lines = [], {}
    for line, r in enumerate(rows, start=2):
        if not (r["label"] or "").strip():
            raise DataError(f"{path}: row {line}: empty label")
        lines.setdefault(str((path.parent / r["path"]).resolve()), []).append(line)
        try:
            folds.append(int(r["fold"]) if has_fold else 0)
        except (TypeError, ValueError):
            raise DataError(f"{path}: row {line}: fold {r['fold']!r} is not an integer (folds are "
                            "numbered from 1; or drop the fold column to let escnet assign folds)") from None
    _refuse_duplicates(path, lines)
    classes = sorted({r["label"] for r in rows})
    _refuse_lookalike_labels(path, classes)
    index = {c: i for i, c in enumerate(classes)}
    if has_fold:
        _refuse_bad_folds(path, folds, list(range(2, len(rows) + 2)))
    return ClipTable([(path.parent / r["path"]).resolve() for r in rows],
                     np.array([index[r["label"]] for r in rows]), np.array(folds), classes,
                     f"csv:{path}")


def per_class_permutations(labels: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """For each class in ascending order, the indices of its rows in a random order."""
    for label in np.unique(labels):
        yield rng.permutation(np.flatnonzero(labels == label))


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign folds 1..n_folds so that every class is spread evenly; fixed by ``seed``."""
    folds = np.zeros(len(labels), dtype=int)
    offset = 0
    for idx in per_class_permutations(labels, np.random.default_rng(seed)):
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds + 1
        offset += len(idx)  # rotate so small classes do not all start in fold 1
    return folds


def load_table(config: TaskConfig) -> ClipTable:
    """Read the dataset at ``config.data_dir`` in whichever layout it has."""
    data = config.data
    if not data.data_dir:
        raise ConfigError("setting data.data_dir: no dataset given (an ESC-50 folder, a "
                          "class-folder tree or a path,label CSV); get ESC-50 with "
                          "escnet.data.download_esc50 (`escnet download esc50`)")
    root = Path(data.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a dataset file must be a CSV with columns path,label[,fold]")
        table, layout = read_csv_table(root), "a path,label[,fold] CSV"
    elif (root / "meta" / "esc50.csv").is_file():
        table, layout = read_esc50(root, data.subset, data.skip_bad), "an ESC-50 folder (meta/esc50.csv)"
    elif _class_folders(root):  # class folders win over file names that happen to parse
        table, layout = read_class_folders(root), "one subfolder per class"
    elif any(parse_esc50_name(p.name) for p in root.rglob(data.keyword)):
        table, layout = read_glob(root, data.keyword), f"files named FOLD-CLIPID-TAKE-TARGET ({data.keyword})"
    else:
        table, layout = read_class_folders(root), "one subfolder per class"
    if data.subset != "all" and not table.source.startswith("esc50"):
        raise ConfigError(f"setting data.subset={data.subset}: needs an ESC-50 folder with meta/esc50.csv")
    if len(table.classes) < 2:
        raise DataError(f"{root}: {len(table.classes)} class ({', '.join(table.classes)}) in {layout}; "
                        "a classifier tells two or more apart: add recordings of other sounds")
    if (table.folds == 0).all():  # the layout has no folds (class folders, a CSV without them)
        n = 5 if np.bincount(table.labels).min() >= 5 else 2
        table.folds = stratified_folds(table.labels, n, config.train.seed)
        table.notes.append(f"no folds in {root}: assigned {n} stratified folds (seed {config.train.seed})")
    else:
        _check_fold_sizes(table, root, data.allow_uneven_folds)
    counts = np.bincount(table.labels, minlength=len(table.classes))
    lonely = [table.classes[i] for i in np.flatnonzero(counts == 1)]
    if lonely:
        table.notes.append(f"warning: {len(lonely)} class(es) with a single clip in the whole dataset "
                           f"({', '.join(lonely[:5])}): never both trained on and tested, so their "
                           "accuracy means little")
    table.notes.insert(0, f"dataset {root}: {layout}; {len(table)} clips, {len(table.classes)} "
                       f"classes, folds {', '.join(map(str, table.fold_ids))}")
    unknown = unknown_classes(table.classes, config)
    if unknown:
        table = table.with_unknown_last(unknown)
        table.notes.append(f"open set: {len(unknown)} class(es) left out of training and scored as "
                           f"unknown sounds: {', '.join(unknown)}")
    return table


def unknown_classes(classes: list[str], config: TaskConfig) -> list[str]:
    """The classes the open-set protocol leaves out: ``data.unknown_names``, or
    ``data.unknown_classes`` of them drawn by ``train.seed`` (in the table's order)."""
    data = config.data
    if data.unknown_names:
        missing = [n for n in data.unknown_names if n not in classes]
        if missing:
            raise ConfigError(f"setting data.unknown_names: {', '.join(missing)} is not a class of "
                              f"this dataset (classes: {', '.join(classes[:8])}...)")
        chosen = set(data.unknown_names)
    elif data.unknown_classes:
        chosen = set(np.random.default_rng([config.train.seed, 11]).choice(
            classes, size=min(data.unknown_classes, len(classes)), replace=False).tolist())
    else:
        return []
    if len(classes) - len(chosen) < 2:
        raise ConfigError(f"setting data.unknown_classes: leaves {len(classes) - len(chosen)} of the "
                          f"{len(classes)} classes to train on; at least 2 are needed")
    return [c for c in classes if c in chosen]


def _class_folders(root: Path) -> bool:
    """Whether ``root`` holds two or more subfolders with audio in them that are not named
    like fold folders (``fold1``...)."""
    found = 0
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and not _FOLD_FOLDER.match(d.name) and any(
                p.suffix.lower() in AUDIO_EXTENSIONS for p in d.rglob("*")):
            found += 1
            if found == 2:
                return True
    return False


def _check_fold_sizes(table: ClipTable, root: Path, allow_uneven: bool) -> None:
    """A fold far smaller than the others (a stray row with fold 7) would enter the mean ± std
    as if it were one; ESC-50's folds are 1 to 5."""
    ids, sizes = np.unique(table.folds, return_counts=True)
    if table.source.startswith("esc50") and not set(ids) <= {1, 2, 3, 4, 5}:
        stray = ", ".join(str(f) for f in ids if not 1 <= f <= 5)
        raise DataError(f"{root}: meta/esc50.csv names fold(s) {stray}; ESC-50's folds are 1 to 5: "
                        "fix those rows")
    for fold, size in zip(ids, sizes, strict=True):
        others = np.median(sizes[ids != fold]) if len(ids) > 1 else size
        if size < others / 4:
            message = (f"{root}: fold {fold} holds {size} clip(s), the others about {others:.0f}: a "
                       "stray fold number? Its accuracy would enter the mean as a fold's")
            if not allow_uneven:
                raise DataError(message + "; fix the rows or set data.allow_uneven_folds=true")
            table.notes.append("warning: " + message)


def make_splits(table: ClipTable, config: TaskConfig) -> list[Split]:
    """A :class:`Split` for each held-out fold, or the one random split.

    Clips of unknown classes (``table.unknown``) are never trained on or validated with; those
    of the held-out fold are its ``unknown`` part. ``train.validation_share`` of the training
    clips become the ``validation`` part (:func:`validation_split`); with
    ``data.train_per_class`` the training clips are then thinned (:func:`few_per_class`) and
    validation is drawn from the clips the thinning left out.
    """
    k, seed = config.data.train_per_class, config.train.seed
    known = table.labels < len(table.known_classes)
    splits = []
    for name, train, test in _splits(table, config):
        train = train[known[train]]
        if k:
            kept = few_per_class(table.labels, train, k, seed, name)
            _, validation = validation_split(table, np.setdiff1d(train, kept), config, name)
            train = kept
        else:
            train, validation = validation_split(table, train, config, name)
        splits.append(Split(name, train, test[known[test]], validation, test[~known[test]]))
    return splits


def source_groups(paths: list[Path]) -> np.ndarray:
    """A group id per clip: clips cut from one recording share it. ESC-50 names say which
    (``FOLD-SOURCE-TAKE-TARGET``: the source id); any other clip is its own group."""
    ids: dict[str, int] = {}
    out = np.empty(len(paths), dtype=int)
    for i, path in enumerate(paths):
        match = _ESC50_NAME.match(Path(path).stem)
        key = f"esc50:{match.group(2)}" if match else f"file:{path}"
        out[i] = ids.setdefault(key, len(ids))
    return out


def validation_split(table: ClipTable, indices: np.ndarray, config: TaskConfig, split: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)``: about ``train.validation_share`` of each class's clips in
    ``indices`` become validation clips, whole source recordings at a time (takes of one
    recording on both sides would make validation easier than new sounds), drawn by
    ``(seed, split)``. A class keeps at least one training clip. Both sorted."""
    share = config.train.validation_share
    if share == 0 or len(indices) == 0:
        return np.sort(indices), np.zeros(0, dtype=int)
    rng = np.random.default_rng([config.train.seed, int(split) if split.isdigit() else 0, 7])
    groups = source_groups([table.paths[i] for i in indices])
    labels = table.labels[indices]
    held: list[int] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        want = round(share * len(rows))
        taken = 0
        for g in rng.permutation(np.unique(groups[rows])):
            members = rows[groups[rows] == g]
            if taken >= want or taken + len(members) >= len(rows):
                break
            held.extend(members)
            taken += len(members)
    mask = np.zeros(len(indices), dtype=bool)
    mask[held] = True
    return np.sort(indices[~mask]), np.sort(indices[mask])


def few_per_class(labels: np.ndarray, indices: np.ndarray, k: int, seed: int, split: str) -> np.ndarray:
    """At most ``k`` of ``indices`` per class, drawn by ``(seed, split)``: the same clips whatever
    the model, so few-shot curves compare models on the same examples. Sorted."""
    rng = np.random.default_rng([seed, int(split) if split.isdigit() else 0, k])
    keep = [rng.permutation(indices[labels[indices] == c])[:k] for c in np.unique(labels[indices])]
    return np.sort(np.concatenate(keep))


def _splits(table: ClipTable, config: TaskConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if config.data.protocol == "random":
        rng, test = np.random.default_rng(config.train.seed), []
        # stratified, unlike the report's random_split
        for idx in per_class_permutations(table.labels, rng):
            test += list(idx[: max(1, round(len(idx) * (1 - config.data.train_ratio)))])
        test_mask = np.zeros(len(table), dtype=bool)
        test_mask[test] = True
        return [("random", np.flatnonzero(~test_mask), np.flatnonzero(test_mask))]
    available = table.fold_ids
    if len(available) < 2:
        raise DataError(f"{table.source}: only fold {available} present; the folds protocol needs "
                        "two or more (or set data.protocol=random)")
    wanted = config.data.folds or available
    for fold in wanted:
        if fold not in available:
            raise ConfigError(f"setting data.folds: fold {fold} does not exist in this dataset "
                              f"(folds: {', '.join(map(str, available))})")
    return [(str(f), np.flatnonzero(table.folds != f), np.flatnonzero(table.folds == f))
            for f in wanted]
