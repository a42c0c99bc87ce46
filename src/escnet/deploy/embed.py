"""Embeddings for users' own pipelines: a model's pooled features before its head, per file or
per window, from a pretrained name (``mn04_as``) or a trained run (``escnet embed``).

An embedding is what the model's trunk makes of a clip-length window (:meth:`embed` of the
backbone: for the ``mn`` models the 384- to 3840-d average of the last feature maps). A file's
embedding is the mean over its windows. Written as ``.npy`` (one row per file), ``.npz``
(``embeddings``, ``files``, ``starts``, ``ends``: one row per file or window) or ``.parquet``
(the same columns; needs ``pyarrow``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from escnet.config import load_config
from escnet.data.audio import AudioFile, stream_windows
from escnet.errors import EscnetError
from escnet.files import atomic_write
from escnet.models import SoundClassifier
from escnet.models.mobilenet import AUDIOSET, AUDIOSET_CLASSES
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
    """Embeds recordings with a :class:`SoundClassifier` whose backbone has ``embed``.

    Args:
        model: the classifier (eval mode is set here).
        device: where it runs.
        batch_size: windows per forward pass.
    """

    def __init__(self, model: SoundClassifier, device: str = "cpu", batch_size: int = 16) -> None:
        if not hasattr(model.backbone, "embed"):
            raise EscnetError(f"model {type(model.backbone).__name__}: has no embedding (the mn "
                              "models have one)")
        self.model, self.device, self.batch_size = model.to(device).eval(), torch.device(device), batch_size
        self.sample_rate = model.featurizer.sample_rate
        self.clip_samples = model.featurizer.clip_samples

    @classmethod
    def from_path(cls, spec: str | Path, fold: str | None = None, device: str = "cpu") -> Embedder:
        """``spec``: an official pretrained name (``mn04_as``: the AudioSet model with its own
        front-end), a run folder (``fold`` chooses among several fold models) or a ``.pt``
        checkpoint."""
        if str(spec) in AUDIOSET:
            config = load_config(None, {"model.name": str(spec)[:4], "model.pretrained": str(spec),
                                        "model.num_classes": AUDIOSET_CLASSES, "model.args": {}},
                                 preset="pretrained-probe")
            return cls(SoundClassifier.from_config(config), device)
        path = Path(spec)
        if path.is_dir():
            run = RunDir(path)
            have = run.model_folds()
            if fold is None and len(have) > 1:
                raise EscnetError(f"{path}: folds {', '.join(have)} have models; choose one with --fold")
            if fold is not None and fold not in have:
                raise EscnetError(f"--fold {fold}: no fold-{fold}/last.pt in {path} (folds with a "
                                  f"model: {', '.join(have)})")
            return cls(run.load_model(fold or have[0], device=device)[0], device)
        if not path.exists():
            raise EscnetError(f"{spec}: not a run folder, a checkpoint or a pretrained name "
                              f"({', '.join(AUDIOSET)})")
        return cls(load_model(path, device)[0], device)

    @property
    def dim(self) -> int:
        return int(self.model.backbone.embed_dim)

    @torch.inference_mode()
    def _embed(self, windows: list[np.ndarray]) -> np.ndarray:
        wav = torch.from_numpy(np.stack(windows)).to(self.device)
        return self.model.embed(wav).float().cpu().numpy()

    def embed_file(self, path: str | Path, per_window: bool = False,
                   hop_seconds: float | None = None) -> Embeddings:
        """One row for the file (the mean of its windows' embeddings), or one per window
        (clip-length windows every ``hop_seconds``, default half a clip)."""
        if hop_seconds is not None and not (np.isfinite(hop_seconds) and hop_seconds > 0):
            raise EscnetError(f"--hop {hop_seconds}: must be a positive number of seconds")
        hop = max(1, round(hop_seconds * self.sample_rate)) if hop_seconds else None
        starts, ends, vectors, pending = [], [], [], []
        with AudioFile(path) as audio:
            for start, window, valid in stream_windows(audio.blocks(self.sample_rate),
                                                       self.clip_samples, hop):
                starts.append(start / self.sample_rate)
                ends.append((start + valid) / self.sample_rate)
                pending.append(window)
                if len(pending) == self.batch_size:
                    vectors.append(self._embed(pending))
                    pending = []
            if pending:
                vectors.append(self._embed(pending))
        rows = np.concatenate(vectors)
        if per_window:
            return Embeddings([str(path)] * len(rows), np.array(starts), np.array(ends), rows)
        return Embeddings([str(path)], np.array([0.0]), np.array([max(ends)]), rows.mean(0, keepdims=True))


def concat(parts: list[Embeddings]) -> Embeddings:
    return Embeddings([f for p in parts for f in p.files], np.concatenate([p.starts for p in parts]),
                      np.concatenate([p.ends for p in parts]), np.concatenate([p.vectors for p in parts]))


def check_output(out: str | Path, per_window: bool) -> Path:
    """``out`` as a place embeddings can go (a format of :data:`FORMATS`, holding the rows asked
    for, not an existing file), or an :class:`EscnetError` saying why not: checked before any work."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise EscnetError(f"--out {out}: must end in {', '.join(FORMATS)}")
    if out.exists():
        raise EscnetError(f"--out {out}: already exists; choose another name (escnet does not "
                          "overwrite it)")
    if out.suffix == ".npy" and per_window:
        raise EscnetError(f"--out {out}: a .npy file holds one row per file; per-window "
                          "embeddings need their times: write .npz or .parquet")
    return out


def write_embeddings(result: Embeddings, out: str | Path, per_window: bool) -> Path:
    """Write ``result`` to ``out`` (by its suffix, :data:`FORMATS`); never over an existing file."""
    out = check_output(out, per_window)
    vectors = result.vectors.astype(np.float32)
    if out.suffix == ".npy":
        return atomic_write(out, lambda f: np.save(f, vectors))
    if out.suffix == ".npz":
        return atomic_write(out, lambda f: np.savez(f, embeddings=vectors, files=np.array(result.files),
                                                     starts=result.starts, ends=result.ends))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EscnetError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow), or "
                          "write .npz") from None
    table = pa.table({"file": result.files, "start": result.starts, "end": result.ends,
                      "embedding": list(vectors)})
    return atomic_write(out, lambda f: pq.write_table(table, f))
