"""Embeddings for users' own pipelines: a model's pooled features before its head, per file or
per window, from a pretrained name (``mn04_as``) or a trained run (``escnet embed``).

An embedding is what the model's trunk makes of a clip-length window (:meth:`embed` of the
backbone: for the ``mn`` models the 384- to 3840-d average of the last feature maps). A file's
embedding is the mean over its windows. Written as ``.npy`` (one row per file), ``.npz``
(``embeddings``, ``files``, ``starts``, ``ends``: one row per file or window) or ``.parquet``
(the same columns; needs ``pyarrow``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from escnet.cards import CARDS
from escnet.data.audio import AudioFile
from escnet.deploy.windows import WindowScorer
from escnet.errors import AudioError, EscnetError
from escnet.files import atomic_write, new_output
from escnet.machine import resolve_device
from escnet.models import SoundClassifier
from escnet.runs import RunDir, load_model

FORMATS = (".npy", ".npz", ".parquet")


@dataclass
class Embeddings:
    """Rows of ``vectors`` ``(rows, dim)``: one per file, or per window (``starts``/``ends`` in
    seconds from the file's start; a file's row spans the whole file)."""

    files: list[str]
    starts: np.ndarray
    ends: np.ndarray
    vectors: np.ndarray


class Embedder:
    """Embeds recordings with a :class:`SoundClassifier` whose backbone has ``embed``, window by
    window through a :class:`~escnet.deploy.windows.WindowScorer`.

    Args:
        model: the classifier (eval mode is set here).
        device: where it runs.
        batch_size: windows per forward pass.
        silence_db: windows quieter than this get no embedding (``None``: every window has one).
        trim: embed a recording shorter than a window at its own length, as a published model
            is run (:class:`~escnet.deploy.windows.WindowScorer`); a trained run's model embeds
            windows padded as it was trained.
    """

    def __init__(self, model: SoundClassifier, device: str = "cpu", batch_size: int = 16,
                 silence_db: float | None = None, trim: bool = False) -> None:
        if not hasattr(model.backbone, "embed"):
            raise EscnetError(f"model {type(model.backbone).__name__}: has no embedding (the mn "
                              "models have one)")
        self.device = torch.device(resolve_device(device, "device"))
        self.model = model.to(self.device).eval()
        self.sample_rate = model.featurizer.sample_rate
        self.clip_samples = model.featurizer.clip_samples
        self.scorer = WindowScorer(self._embed, self.sample_rate, self.clip_samples, batch_size, silence_db,
                                   trim=trim)

    @classmethod
    def from_path(cls, spec: str | Path, fold: str | None = None, device: str = "cpu",
                  window: float | None = None) -> Embedder:
        """``spec``: the name of a pretrained card (``mn04_as``: the AudioSet model as published,
        with its front-end, on windows of its clip length or ``window`` seconds,
        :class:`~escnet.cards.PretrainedCard`), a run folder (``fold`` chooses among several
        fold models: :meth:`RunDir.model`) or a ``.pt`` checkpoint (windows of its clips)."""
        device = resolve_device(device, "device")  # before anything is loaded there
        card = CARDS.get(str(spec))
        if card is not None:
            if window is not None and not 0.5 <= window <= 60:
                raise EscnetError(f"window={window}: seconds of audio per window, 0.5 to 60")
            return cls(SoundClassifier.from_card(card, window), device, trim=True)
        path = Path(spec)
        if path.is_dir():
            return cls(load_model(RunDir(path).model(fold), device)[0], device)
        if not path.exists():
            names = ", ".join(n for n, c in CARDS.items() if c.family == "efficientat-mn")
            raise EscnetError(f"{spec}: not a run folder, a checkpoint or a pretrained name ({names})")
        if path.suffix.lower() == ".onnx":
            raise EscnetError(f"{spec}: an exported model gives probabilities, not embeddings: give the run "
                              "or checkpoint it was exported from, or a pretrained name")
        return cls(load_model(path, device)[0], device)

    @property
    def dim(self) -> int:
        return int(self.model.backbone.embed_dim)

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    @torch.inference_mode()
    def _embed(self, windows: np.ndarray) -> np.ndarray:
        """``(n, clip_samples)`` → ``(n, dim)``."""
        return self.model.embed(torch.from_numpy(windows).to(self.device)).float().cpu().numpy()

    def embed_file(self, path: str | Path, per_window: bool = False,
                   hop_seconds: float | None = None) -> Embeddings:
        """One row for the file (the mean of its windows' embeddings), or one per window
        (clip-length windows every ``hop_seconds``, default half a clip)."""
        with AudioFile(path) as audio:
            rows = [(w, v) for w, v in self.scorer.recording(audio, hop_seconds) if v is not None]
        if not rows:
            raise AudioError(f"{path}: silent (every window below {self.scorer.silence_db:g} dBFS): "
                             "nothing to embed")
        vectors = np.stack([v for _, v in rows])
        spans = np.array([w.seconds(self.sample_rate) for w, _ in rows])
        if per_window:
            return Embeddings([str(path)] * len(rows), spans[:, 0], spans[:, 1], vectors)
        return Embeddings([str(path)], np.array([0.0]), np.array([spans[:, 1].max()]),
                          vectors.mean(0, keepdims=True))


def concat(parts: list[Embeddings]) -> Embeddings:
    return Embeddings([f for p in parts for f in p.files], np.concatenate([p.starts for p in parts]),
                      np.concatenate([p.ends for p in parts]), np.concatenate([p.vectors for p in parts]))


def check_output(out: str | Path, per_window: bool) -> Path:
    """``out`` as a place embeddings can go (a format of :data:`FORMATS`, holding the rows asked
    for, not an existing file), or an :class:`EscnetError` saying why not: checked before any work."""
    out = new_output(out, "out", FORMATS)
    if out.suffix.lower() == ".npy" and per_window:
        raise EscnetError(f"out={out}: a .npy file holds one row per file; per-window "
                          "embeddings need their times: write .npz or .parquet")
    if out.suffix.lower() == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise EscnetError(f"out={out}: writing Parquet needs pyarrow (pip install pyarrow), or "
                          "write .npz")
    return out


def write_embeddings(result: Embeddings, out: str | Path, per_window: bool) -> Path:
    """Write ``result`` to ``out`` (by its suffix, :data:`FORMATS`); never over an existing file."""
    out = check_output(out, per_window)
    vectors = result.vectors.astype(np.float32)
    if out.suffix.lower() == ".npy":
        return atomic_write(out, lambda f: np.save(f, vectors))
    if out.suffix.lower() == ".npz":
        return atomic_write(out, lambda f: np.savez(f, embeddings=vectors, files=np.array(result.files),
                                                     starts=result.starts, ends=result.ends))
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"file": result.files, "start": result.starts, "end": result.ends,
                      "embedding": list(vectors)})
    return atomic_write(out, lambda f: pq.write_table(table, f))
