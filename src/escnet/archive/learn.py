"""Learning from an archive's labels, in seconds: a linear classifier on the stored embeddings
(``escnet learn``), the next windows worth labelling (``escnet rank``), and the classifier over
every window of the archive, no audio decoded again (``escnet scan``).

The classifier is logistic regression (scikit-learn) on standardised embeddings: each label's
positive windows against the windows labelled negative (any label's), and ``weak`` windows drawn
at random from the unlabelled ones, counted as negatives at a fifth of a label's weight (in a
sparse archive almost every window is none of the sounds; that is what they say). Its
probabilities are calibrated by a temperature fitted on cross-validated logits of the labelled
windows (grouped by recording, :func:`escnet.models.calibration.fit_temperature`), which also
give its estimated precision. :func:`save_run` writes it as an escnet run (the card's frozen
trunk with this head), so ``predict``, ``export``, ``serve`` and ``listen`` take it as any run.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

import numpy as np

from escnet.archive.db import Archive, Window
from escnet.archive.vectors import chunks
from escnet.cards import CARDS
from escnet.data.tables import label_key
from escnet.errors import EscnetError
from escnet.files import atomic_write_text, new_output
from escnet.models.calibration import Calibration, fit_temperature, softmax

OTHER = "other"
"""The class of windows that are none of the labels."""
WEAK_WEIGHT = 0.2
"""Weight of a random unlabelled window, as a negative, against a labelled one's 1."""
STRATEGIES = ("top", "margin", "mixed")


@dataclass
class Learned:
    """A linear classifier of stored embeddings: ``logits = ((x - mean) / scale) @ weights.T +
    bias``, probabilities calibrated by ``calibration``."""

    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    """``(classes, dim)``."""
    bias: np.ndarray
    calibration: Calibration
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per class: the windows it learned from (``labelled``, ``weak``)."""
    estimate: dict = field(default_factory=dict)
    """Cross-validated figures: ``accuracy`` of the labelled windows and, per label,
    ``precision`` (the weak windows counted as not the sound: an underestimate where some are)
    and ``recall`` of its labelled positives."""
    held_out: tuple[np.ndarray, np.ndarray, list[str]] | None = None
    """The labelled windows' cross-validated logits ``(n, classes)``, classes ``(n,)`` and
    names (``file@start-end``): what a saved run keeps as its held-out predictions."""

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, dim)`` embeddings → ``(n, classes)``; the standardisation folded into the
        weights, so a million rows cost one matrix product."""
        folded = (self.weights / self.scale).T.astype(np.float32)
        shift = self.bias - (self.mean / self.scale) @ self.weights.T
        return np.asarray(vectors, np.float32) @ folded + shift

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated ``(n, classes)``."""
        return self.calibration.probabilities(self.logits(vectors))

    def to_dict(self) -> dict:
        return {"classes": self.classes, "counts": self.counts, "estimate": self.estimate,
                "calibration": self.calibration.to_dict()}


def _training_set(archive: Archive, labels: list[str], weak: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Window ids, class indices and weights to learn ``labels`` from (see the module's
    description), and the classes."""
    chosen: dict[int, int] = {}
    negatives: set[int] = set()
    for k, label in enumerate(labels):
        for wid, kind in archive.labelled_windows(label).items():
            if kind == "positive":
                chosen[wid] = k
            elif kind == "negative":
                negatives.add(wid)
    for label in set(archive.label_names()) - set(labels):  # other sounds are negatives here
        negatives |= {w for w, kind in archive.labelled_windows(label).items() if kind == "positive"}
    missing = [lab for k, lab in enumerate(labels) if k not in chosen.values()]
    if missing:
        spelt = [n for n in archive.label_names() if label_key(n) == label_key(missing[0])]
        hint = f"its label is spelt {spelt[0]!r}" if spelt and spelt[0] != missing[0] else \
            "label some: escnet search, then escnet label"
        raise EscnetError(f"label={missing[0][:40]}: no positive window in {archive.path} ({hint})")
    other = len(labels)
    for wid in negatives - set(chosen):
        chosen[wid] = other
    alive = archive.alive()
    # drawn from every window, then the labelled ones left out (no set difference over 10⁶ ids)
    draw = alive[np.random.default_rng(seed).choice(len(alive), min(weak + len(chosen), len(alive)),
                                                    replace=False)] if weak else alive[:0]
    picked = draw[~np.isin(draw, np.fromiter(chosen, np.int64, len(chosen)))][:weak]
    ids = np.array([*chosen, *picked], np.int64)
    y = np.array([*chosen.values(), *[other] * len(picked)], np.int64)
    weights = np.array([1.0] * len(chosen) + [WEAK_WEIGHT] * len(picked))
    classes = [*labels, OTHER] if (y == other).any() else list(labels)
    if len(classes) < 2:
        raise EscnetError(f"label={labels[0]}: only positives to learn from; label some windows "
                          "negative, or let weak negatives be drawn (weak > 0)")
    return ids, y, weights, classes


def _fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray, classes: int):
    """``(weights (classes, dim), bias (classes,))`` of a logistic regression on ``x``."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=2000)
    model.fit(x, y, sample_weight=weights)
    w, b = np.zeros((classes, x.shape[1]), np.float32), np.zeros(classes, np.float32)
    if len(model.classes_) == 2:  # scikit-learn's binary form: one row, for the second class
        w[model.classes_[1]], b[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        w[model.classes_], b[model.classes_] = model.coef_, model.intercept_
    return w, b


def _cross_validated(x: np.ndarray, y: np.ndarray, weights: np.ndarray, groups: np.ndarray,
                     classes: int, seed: int) -> np.ndarray | None:
    """Logits of every window from a model that did not learn from its recording (up to 5
    folds, grouped by file), or ``None`` when a class has too few windows for that."""
    from sklearn.model_selection import StratifiedGroupKFold

    smallest = np.bincount(y, minlength=classes).min()
    folds = min(5, int(smallest), len(np.unique(groups)))
    if folds < 2:
        return None
    out = np.zeros((len(y), classes), np.float32)
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            return None
        w, b = _fit(x[train], y[train], weights[train], classes)
        out[test] = x[test] @ w.T + b
    return out


def learn(archive: Archive, labels: list[str] | None = None, weak: int = 500, seed: int = 0) -> Learned:
    """A calibrated classifier of ``labels`` (default: every label of the archive) and
    ``other``, from the archive's labels (see the module's description)."""
    if weak < 0:
        raise EscnetError(f"weak={weak}: a number of windows, 0 or more")
    if not 0 <= seed <= 2**32 - 1:  # what numpy and scikit-learn take, as train.seed
        raise EscnetError(f"seed={seed}: must be 0 to {2**32 - 1}")
    labels = labels or archive.label_names()
    if not labels:
        raise EscnetError(f"{archive.path}: no labels yet (escnet search, then escnet label)")
    ids, y, weights, classes = _training_set(archive, labels, weak, seed)
    vectors = archive.vectors()
    order = np.argsort(ids)  # memory-mapped rows read in order
    x = np.empty((len(ids), archive.dim), np.float32)
    x[order] = np.asarray(vectors[ids[order]], np.float32)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    w, b = _fit(z, y, weights, len(classes))
    found = archive.windows(ids)
    files = {f: n for n, f in enumerate(sorted({w.file for w in found.values()}))}
    groups = np.array([files[found[i].file] if i in found else -1 - i for i in ids])
    labelled = weights == 1.0
    cv = _cross_validated(z, y, weights, groups, len(classes), seed)
    calibration, estimate, held_out = Calibration(), {}, None
    if cv is not None:
        t, fit = fit_temperature(cv[labelled], y[labelled])
        # no "unknown" threshold: the class "other" is what none of the labels is, learned from
        # the labelled negatives and the weak ones, not guessed from a few positives' scores
        calibration = Calibration(t, validation_clips=int(labelled.sum()), fit=fit)
        predicted = softmax(cv, t).argmax(1)
        estimate = {"accuracy": float(np.mean(predicted[labelled] == y[labelled])), "labels": {}}
        for k, label in enumerate(labels):
            said = predicted == k
            estimate["labels"][label] = {
                "precision": float(np.mean(y[said] == k)) if said.any() else None,
                "recall": float(np.mean(predicted[y == k] == k))}
        names = [f"{found[i].file}@{found[i].start:g}-{found[i].end:g}" if i in found else f"window {i}"
                 for i in ids[labelled]]
        held_out = (cv[labelled], y[labelled], names)
    counts = {c: {"labelled": int(np.sum((y == k) & labelled)), "weak": int(np.sum((y == k) & ~labelled))}
              for k, c in enumerate(classes)}
    return Learned(classes, mean, scale, w, b, calibration, counts, estimate, held_out)


def scores(archive: Archive, learned: Learned, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Every alive window's calibrated probability of ``label``: ``(ids, probabilities)``,
    scored :data:`~escnet.archive.vectors.CHUNK` rows at a time over the memory map."""
    if label not in learned.classes:
        raise EscnetError(f"label={label}: not a class of the model ({', '.join(learned.classes)})")
    k = learned.classes.index(label)
    vectors = archive.vectors()
    out = np.zeros(len(vectors), np.float32)
    for first, rows in chunks(vectors):
        out[first : first + len(rows)] = learned.probabilities(rows)[:, k]
    alive = archive.alive()
    return alive, out[alive]


def _best_first(key: np.ndarray, enough: int) -> Iterator[int]:
    """Positions of ``key`` from the smallest up: the ``enough`` smallest sorted first (a
    partition, not a sort of 10⁶ scores), the rest sorted only if those run out."""
    if len(key) > enough:
        head = np.argpartition(key, enough)[:enough]
        head = head[np.argsort(key[head], kind="stable")]
        yield from head.tolist()
        rest = np.ones(len(key), bool)
        rest[head] = False
        tail = np.flatnonzero(rest)
        yield from tail[np.argsort(key[tail], kind="stable")].tolist()
    else:
        yield from np.argsort(key, kind="stable").tolist()


def _in_turn(orders: list[Iterator[int]]) -> Iterator[int]:
    """Positions from each order in turn, each position once."""
    seen: set[int] = set()
    iterators = list(orders)
    while iterators:
        for it in list(iterators):
            pos = next((q for q in it if q not in seen), None)
            if pos is None:
                iterators.remove(it)
                continue
            seen.add(pos)
            yield pos


def rank(archive: Archive, learned: Learned, label: str, k: int = 10, strategy: str = "mixed"
         ) -> list[tuple[Window, float]]:
    """The ``k`` unlabelled windows to label next for ``label``: the most likely (``top``), the
    least sure (``margin``: nearest 0.5), or both in turn (``mixed``); one per sound (a window
    touching one already chosen is passed over)."""
    if strategy not in STRATEGIES:
        raise EscnetError(f"strategy={strategy}: one of {', '.join(STRATEGIES)}")
    if not 1 <= k <= 1000:
        raise EscnetError(f"top={k}: 1 to 1000 windows")
    ids, p = scores(archive, learned, label)  # ids sorted
    labelled: set[int] = set()
    for name in archive.label_names():
        labelled |= set(archive.labelled_windows(name))
    wanted_ids = np.fromiter(labelled, np.int64, len(labelled))
    at = np.searchsorted(ids, wanted_ids)
    inside = at < len(ids)
    inside[inside] &= ids[at[inside]] == wanted_ids[inside]
    taken = at[inside]
    enough = 64 * k + len(taken)  # candidates enough for k after passing labelled and touching ones
    keys = {"top": -p, "margin": np.abs(p - 0.5)}
    for key in keys.values():
        key[taken] = np.inf  # labelled windows last, and passed over
    candidates = _in_turn([_best_first(keys[s], enough)
                           for s in ([strategy] if strategy != "mixed" else ["top", "margin"])])
    skip = set(taken.tolist())
    chosen: list[tuple[Window, float]] = []
    while len(chosen) < k and (batch := list(islice(candidates, 64))):  # looked up 64 at a time
        batch = [q for q in batch if q not in skip]
        found = archive.windows(ids[batch])
        for pos in batch:
            w = found.get(int(ids[pos]))
            if w is not None and not any(c.touches(w) for c, _ in chosen):
                chosen.append((w, float(p[pos])))
                if len(chosen) == k:
                    break
    return chosen


@dataclass(frozen=True)
class Detection:
    """A span of a recording where ``label`` was scored at or above the threshold: windows
    that touch merged, ``confidence`` the highest of their probabilities."""

    file: str
    label: str
    start: float
    end: float
    confidence: float

    def to_dict(self) -> dict:
        return {"file": self.file, "label": self.label, "start": round(self.start, 3),
                "end": round(self.end, 3), "confidence": round(self.confidence, 4)}


def check_threshold(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise EscnetError(f"threshold={threshold}: a probability above 0 and below 1")


def scan(archive: Archive, learned: Learned, label: str, threshold: float = 0.5
         ) -> tuple[list[Detection], np.ndarray, np.ndarray]:
    """The classifier over every window of the archive: the detections (windows at or above
    ``threshold`` that touch, merged), and every window's id and score (arrays: a million
    windows cost 12 MB, not a million objects; :func:`windows_with_scores` reads them out)."""
    check_threshold(threshold)
    ids, p = scores(archive, learned, label)
    high = p >= threshold
    windows = archive.windows(ids[high])
    above = sorted(((windows[int(i)], float(s)) for i, s in zip(ids[high], p[high], strict=True)
                    if int(i) in windows), key=lambda ws: (ws[0].file, ws[0].start))
    found: list[Detection] = []
    for w, s in above:
        last = found[-1] if found else None
        if last is not None and last.file == w.file and w.start <= last.end:
            found[-1] = Detection(w.file, label, last.start, max(last.end, w.end), max(last.confidence, s))
        else:
            found.append(Detection(w.file, label, w.start, w.end, s))
    return found, ids, p


def windows_with_scores(archive: Archive, ids: np.ndarray, p: np.ndarray, block: int = 10_000
                        ) -> Iterator[tuple[Window, float]]:
    """Each window of ``ids`` with its score, looked up ``block`` at a time (memory stays flat)."""
    for first in range(0, len(ids), block):
        found = archive.windows(ids[first : first + block])
        for i, s in zip(ids[first : first + block].tolist(), p[first : first + block].tolist(), strict=True):
            if i in found:
                yield found[i], s


_STAMP = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})[T_ -]?(\d{2})[-:]?(\d{2})[-:]?(\d{2})")


def recorded_at(file: str) -> datetime | None:
    """When a recording started, where its name says (``20240501_053000.wav``, AudioMoth's and
    most field recorders' names; ``2024-05-01T05-30-00``)."""
    m = _STAMP.search(Path(file).name)
    if m is None:
        return None
    try:
        return datetime(*map(int, m.groups()))
    except ValueError:
        return None


def per_hour(detections: list[Detection]) -> list[tuple[str, int]]:
    """Detections counted per hour: of the day they happened, where file names give the time
    (``2024-05-01 05:00``), else per recording and hour from its start (``site/a.wav +3 h``)."""
    counts: dict[str, int] = {}
    for d in detections:
        begun = recorded_at(d.file)
        key = (begun + timedelta(seconds=d.start)).strftime("%Y-%m-%d %H:00") if begun else \
            f"{d.file} +{int(d.start // 3600)} h"
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items())


def write_detections(detections: list[Detection], out: str | Path) -> Path:
    """``.csv`` (``file,label,start,end,confidence``) or a Raven selection table (``.txt``: one
    selection per detection, ``Begin File`` naming its recording)."""
    out = new_output(out, "out", (".csv", ".txt"))
    buffer = io.StringIO()
    if out.suffix.lower() == ".csv":
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "label", "start", "end", "confidence"])
        writer.writerows([d.file, d.label, f"{d.start:.3f}", f"{d.end:.3f}", f"{d.confidence:.4f}"]
                         for d in detections)
    else:
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                         "High Freq (Hz)", "Begin File", "Annotation", "Confidence"])
        writer.writerows([n, "Spectrogram 1", 1, f"{d.start:.3f}", f"{d.end:.3f}", 0, 0, d.file, d.label,
                          f"{d.confidence:.4f}"] for n, d in enumerate(detections, start=1))
    return atomic_write_text(out, buffer.getvalue())


def write_per_hour(counts: list[tuple[str, int]], out: Path, label: str) -> list[Path]:
    """``out`` (``hour,detections`` CSV) and, beside it, a bar chart (``.png``)."""
    from escnet.figures import pyplot

    csv_path = new_output(out, "per_hour", (".csv",))
    atomic_write_text(csv_path, "hour,detections\n" + "".join(f"{h},{n}\n" for h, n in counts))
    plt = pyplot("the per-hour plot")
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(counts)), 3.2), layout="constrained")
    ax.bar(range(len(counts)), [n for _, n in counts], color="#2f6fdf")
    step = max(1, len(counts) // 24)
    ax.set_xticks(range(0, len(counts), step), [h for h, _ in counts][::step], rotation=60, ha="right",
                  fontsize=7)
    ax.set(ylabel="detections", title=f"{label}: detections per hour")
    png = csv_path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [csv_path, png]


LINEAR = {"head": "linear", "freeze": True, "dropout": 0.0}
"""A frozen trunk with a linear head: the model a learned classifier is saved as."""


def _source(archive: Archive):
    """The run or checkpoint an archive was indexed with (not a card): ``(model, checkpoint
    dict)``, checked to be the one it was (its digest)."""
    from escnet.archive.index import describe_model
    from escnet.runs import RunDir, load_model

    spec = archive.meta["model"]
    if describe_model(spec, None, None)["sha256"] != archive.meta["sha256"]:
        raise EscnetError(f"{archive.path}: its model {spec} has changed since it was indexed")
    path = Path(spec)
    return load_model(RunDir(path).model() if path.is_dir() else path)


def _trunk(model) -> dict:
    """The weights of a classifier's front-end and trunk (every one but its heads')."""
    return {k: v for k, v in model.state_dict().items()
            if not k.startswith(("backbone.classifier.", "backbone.audioset."))}


def _linear_model(archive: Archive, classes: int):
    """``(model, config)``: the archive's trunk, frozen, with a linear head of ``classes``
    outputs: the card's model, or the indexing run's trunk with its weights."""
    from escnet.config import load_config
    from escnet.models import SoundClassifier

    card = CARDS.get(archive.meta.get("card", ""))
    if card is not None:
        config = load_config(None, {
            "model.pretrained": card.name, "model.num_classes": classes, "model.args": LINEAR,
            "data.clip_seconds": float(archive.meta["window"]), "train.num_epochs": 1,
            "data.data_dir": str(archive.path)})
        return SoundClassifier.from_config(config).eval(), config
    source, ckpt = _source(archive)
    args = {**ckpt["config"].model.args, **LINEAR}
    if "audioset_head" in args:
        args["audioset_head"] = False  # its tags are the source's business, not the classifier's
    config = ckpt["config"].replace({"model.num_classes": classes, "model.args": args,
                                     "data.data_dir": str(archive.path), "train.num_epochs": 1})
    model = SoundClassifier.from_config(config, pretrained=False).eval()
    model.load_state_dict(_trunk(source), strict=False)
    return model, config


def save_run(archive: Archive, learned: Learned, out: str | Path) -> Path:
    """``learned`` as an escnet run at ``out`` (new or empty): the archive's trunk, frozen, with
    this head (the embedding standardised, one linear layer), its calibration, and the
    cross-validated figures as the held-out ones. ``predict``, ``export``, ``serve`` and
    ``listen`` take it as any run; ``scan --model`` scores an archive with it."""
    import torch

    from escnet.models.unknown import UnknownScorer
    from escnet.runs import Predictions, RunDir

    run = RunDir(out)
    run.check_startable()
    model, config = _linear_model(archive, len(learned.classes))
    norm, linear = model.backbone.head[0], model.backbone.head[-1]
    with torch.no_grad():
        norm.running_mean.copy_(torch.from_numpy(learned.mean))
        norm.running_var.copy_(torch.from_numpy(learned.scale**2 - norm.eps))
        linear.weight.copy_(torch.from_numpy(learned.weights))
        linear.bias.copy_(torch.from_numpy(learned.bias))
    accuracy = learned.estimate.get("accuracy", float("nan"))
    entry = {"fold": "1", "epoch": 1, "train_loss": 0.0, "train_accuracy": accuracy,
             "test_loss": 0.0, "test_accuracy": accuracy if np.isfinite(accuracy) else 0.0, "seconds": 0.0,
             "learned": learned.to_dict()}
    run.create(config)
    run.save_epoch("1", [entry], model.state_dict(), learned.classes, {}, None)
    scorer = UnknownScorer(learned.calibration.temperature)
    run.save_calibration("1", learned.calibration, scorer.state_dict())
    logits, y, names = learned.held_out or (np.zeros((0, len(learned.classes)), np.float32),
                                            np.zeros(0, np.int64), [])
    run.save_held_out("1", logits, y, names, [learned.classes[k] for k in y], {})
    run.save_predictions("1", Predictions.from_logits(logits, y, names, learned.classes, learned.calibration))
    run.write_summary({"model": config.model.name, "protocol": "archive", "status": "complete",
                       "folds": {"1": entry["test_accuracy"]}, "accuracy_mean": entry["test_accuracy"],
                       "accuracy_std": 0.0, "classes": learned.classes, "archive": str(archive.path),
                       "learned": learned.to_dict(), "made": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return run.path


def learned_from_run(path: str | Path, archive: Archive) -> Learned:
    """The head of a run whose trunk is the archive's, frozen, with a linear head (a learned
    run, a ``pretrained-probe`` run of the archive's card): to score the stored embeddings with
    (``scan --model``)."""
    import torch

    from escnet.deploy.torch_model import calibration_of
    from escnet.runs import RunDir, load_model

    path = Path(path)
    checkpoint = RunDir(path).model() if path.is_dir() else path
    model, ckpt = load_model(checkpoint)
    args = ckpt["config"].model.args
    card = archive.meta.get("card")
    if card:
        same = ckpt["config"].model.pretrained == card
    else:
        trunk = _trunk(_source(archive)[0])
        same = all(torch.equal(v, trunk[k]) for k, v in _trunk(model).items() if k in trunk) and \
            set(trunk) == set(_trunk(model))
    if not same or not args.get("freeze") or args.get("head") != "linear":
        raise EscnetError(f"model={path}: not a frozen {archive.meta.get('model')} trunk (the "
                          "archive's) with a linear head; scan takes a model learned from the archive "
                          "or a pretrained-probe run of its card")
    norm, linear = model.backbone.head[0], model.backbone.head[-1]
    calibration = calibration_of([checkpoint], [ckpt])[1]
    return Learned(list(ckpt["classes"]), norm.running_mean.numpy(),
                   np.sqrt(norm.running_var.numpy() + norm.eps), linear.weight.detach().numpy(),
                   linear.bias.detach().numpy(), calibration)
