"""The archive's endpoints and the labelling page of ``escnet serve --db ARCHIVE`` (and ``escnet
label ARCHIVE``): search by an uploaded or recorded example or by a window, listen to a window
with a second of context and see its spectrogram, label it, learn and rank the next batch.

Every call runs on a thread of its own pool, one at a time (the archive is one SQLite
connection; learning takes a second or two), and answers JSON (``{"error": ...}`` with 404 for
a window not in the archive, 422 for a bad request).
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from escnet.archive import labels as archive_labels
from escnet.archive.db import Archive
from escnet.archive.learn import Learned, learn, rank
from escnet.archive.search import Query as SearchQuery
from escnet.archive.search import embed_query, embedder_of, search, window_query
from escnet.data.audio import AudioFile
from escnet.errors import EscnetError
from escnet.serve.http import RequestError, audio_bytes


class LabelRequest(BaseModel):
    ids: list[int]
    label: str
    kind: str = "positive"


class LearnRequest(BaseModel):
    label: str
    top: int = 10


class ArchiveService:
    """The archive a server was started with, the last classifier learned per label, and the
    one thread that touches them."""

    def __init__(self, path: str) -> None:
        self.archive = Archive(path)
        self.learned: dict[str, Learned] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="escnet-archive")
        self.lock = threading.Lock()

    async def run(self, work, *args):
        """``work(*args)`` on the archive's thread; a user's mistake is a :class:`RequestError`
        (404 for a window that is not there)."""
        def guarded():
            with self.lock:
                return work(*args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, guarded)
        except EscnetError as err:
            raise RequestError(404 if str(err).startswith("window ") else 422, str(err)) from None

    # --- work, on the archive's thread ---------------------------------------------------

    def summary(self) -> dict:
        out = self.archive.summary()
        out["estimates"] = {label: learned.estimate.get("labels", {}).get(label)
                            for label, learned in self.learned.items()}
        return out

    def hits(self, query: SearchQuery, top: int) -> list[dict]:
        return [h.to_dict() for h in search(self.archive, query, top)]

    def upload_query(self, data: bytes, top: int) -> list[dict]:
        with AudioFile(data, "uploaded audio") as audio:
            return self.hits(embed_query(self.archive, audio), top)

    def like(self, window: int, top: int) -> list[dict]:
        return self.hits(window_query(self.archive, window), top)

    def wav(self, window: int) -> bytes:
        audio, rate, _ = archive_labels.clip_of(self.archive, window)
        out = io.BytesIO()
        sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
        return out.getvalue()

    def spectrogram(self, window: int) -> dict:
        """The window's log-mel (with its second of context either side) as an 8-bit image."""
        import torch

        audio, rate, offset = archive_labels.clip_of(self.archive, window)
        embedder = embedder_of(self.archive.meta["model"], float(self.archive.meta["window"]))
        with torch.inference_mode():
            features = embedder.model.featurizer(torch.from_numpy(audio[None]))[0][0].numpy()
        db = 10 * features / math.log(10) if embedder.model.featurizer.frontend == "logmel" else features
        top, low = float(db.max()), float(db.min())
        pixels = np.round(255 * np.clip((db - low) / max(top - low, 1e-6), 0, 1)).astype(np.uint8)
        return {"n_mels": int(pixels.shape[0]), "frames": int(pixels.shape[1]), "offset": offset,
                "seconds": len(audio) / rate, "pixels": base64.b64encode(pixels.tobytes()).decode()}

    def label(self, request: LabelRequest) -> dict:
        made = archive_labels.label_windows(self.archive, request.ids, request.label, request.kind, "page")
        return {"batch": made[0].batch, "labels": [m.to_dict() for m in made], "summary": self.summary()}

    def undo(self) -> dict:
        undone = self.archive.undo()
        return {"undone": [u.to_dict() for u in undone], "summary": self.summary()}

    def learn_and_rank(self, request: LearnRequest) -> dict:
        learned = learn(self.archive, [request.label])
        self.learned[request.label] = learned
        chosen = rank(self.archive, learned, request.label, request.top)
        return {"estimate": learned.estimate.get("labels", {}).get(request.label),
                "counts": learned.counts, "summary": self.summary(),
                "rank": [{**w.to_dict(), "score": round(p, 5)} for w, p in chosen]}


def router(service: ArchiveService, max_bytes: int) -> APIRouter:
    """The archive's endpoints under ``/v1/archive``."""
    api = APIRouter(prefix="/v1/archive", tags=["archive"])

    @api.get("", summary="What the archive holds: files, hours, windows, labels, estimates")
    async def summary() -> dict:
        return await service.run(service.summary)

    @api.post("/search", summary="The windows nearest an uploaded example (raw body or multipart)")
    async def search_upload(request: Request, top: int = Query(10, ge=1, le=200)) -> list[dict]:
        return await service.run(service.upload_query, await audio_bytes(request, max_bytes), top)

    @api.get("/search", summary="The windows nearest a window of the archive")
    async def search_like(like: int, top: int = Query(10, ge=1, le=200)) -> list[dict]:
        return await service.run(service.like, like, top)

    @api.get("/windows/{window}/audio", summary="The window with a second of context either side (WAV)")
    async def audio(window: int) -> Response:
        return Response(await service.run(service.wav, window), media_type="audio/wav")

    @api.get("/windows/{window}/spectrogram", summary="Its log-mel as an 8-bit image")
    async def spectrogram(window: int) -> dict:
        return await service.run(service.spectrogram, window)

    @api.post("/labels", summary="Label windows (positive, negative or uncertain) as one batch")
    async def label(request: LabelRequest) -> dict:
        return await service.run(service.label, request)

    @api.post("/undo", summary="Undo the last batch of labels")
    async def undo() -> dict:
        return await service.run(service.undo)

    @api.post("/learn", summary="Learn a label's classifier, then the windows to label next")
    async def learn_rank(request: LearnRequest) -> dict:
        return await service.run(service.learn_and_rank, request)

    return api
