"""The HTTP API and web page of ``escnet serve``: FastAPI on uvicorn.

Endpoints: ``POST /v1/classify`` (an audio file as the raw body or a multipart upload),
``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, the page at ``/`` (static files shipped
in the package) and FastAPI's OpenAPI page at ``/docs``.

What protects the server: uploads are capped (``413``) before they are read, and decoded
from memory (a multipart upload is spooled by Starlette to a private temporary file, deleted
when the request ends; no client-supplied name ever reaches the file system); audio is capped
in duration by its header and again while it is decoded; inference runs on a pool of threads
off the event loop, and requests beyond the pool and a bounded queue are answered ``503`` with
``Retry-After`` instead of piling up; the threads and the queue are shared fairly among client
addresses (:mod:`escnet.serve.admission`). Every error is a JSON ``{"error": "..."}`` with
its status (``413``, ``415``, ``422``, ``503``); no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import escnet
from escnet.data.audio import AudioFile, stream_windows
from escnet.deploy.predict import Model, Predictor, load_model_file
from escnet.deploy.windows import Stopped
from escnet.errors import AudioTooLongError, EscnetError, UnreadableAudioError
from escnet.machine import PARENT_PID, die_with_parent
from escnet.serve.admission import REFUSAL_DELAY, Busy, FairAdmission, Limit, RateLimit
from escnet.serve.archive import ArchiveService
from escnet.serve.archive import router as archive_router
from escnet.serve.http import RequestError, audio_bytes
from escnet.serve.settings import ServeSettings
from escnet.serve.stream import run_stream

UPLOAD_NAME = "uploaded audio"
"""What error messages call an upload: the client's file name is never used."""

log = logging.getLogger("escnet")


LOOPBACK = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _address(netloc: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host[:port]`` (default port by ``scheme``), or ``None``."""
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "", parts.port or DEFAULT_PORTS.get(scheme, 80))
    except ValueError:
        return None


def _status(err: EscnetError) -> int:
    if isinstance(err, Stopped):
        return 503
    if isinstance(err, AudioTooLongError):
        return 413
    if isinstance(err, UnreadableAudioError):
        return 415
    return 422


def _logmel_image(model: Model, window: np.ndarray) -> dict | None:
    """The model's log-mel of a window as an 8-bit image (row 0 is the lowest mel band),
    base64 of ``(n_mels, frames)`` bytes, with the dB range it spans."""
    features = model.logmel(window)
    if features is None:
        return None
    db = 10 * features / math.log(10)  # natural log of power → dB
    top = float(db.max())
    low = max(float(db.min()), top - 80.0)
    scaled = np.clip((db - low) / max(top - low, 1e-6), 0, 1)
    pixels = np.round(scaled * 255).astype(np.uint8)
    return {"n_mels": int(pixels.shape[0]), "frames": int(pixels.shape[1]),
            "db_min": round(low, 2), "db_max": round(top, 2),
            "pixels": base64.b64encode(pixels.tobytes()).decode("ascii")}


class Service:
    """The model, its thread pool and admission control, shared by every request."""

    def __init__(self, settings: ServeSettings, model: Model | None = None,
                 stopping: Stopping | None = None) -> None:
        self.settings = settings
        self.model = model or load_model_file(settings.model, settings.device, threads=1)
        self.predictor = Predictor(self.model, max_windows=settings.max_windows)
        self.stopping = stopping or Stopping()
        """Set when the server is stopping: work in flight ends at its next batch (503)."""
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="escnet-infer")
        self.admission = FairAdmission(settings.threads, settings.queue)
        self.streams = Limit(settings.max_streams)

    def classify(self, data: bytes, top_k: int, timeline: bool, hop: float | None,
                 logmel: bool, received: float) -> dict:
        """Runs on a pool thread: decode, score, and say what came out, with how long that took
        (``elapsed_ms``) and how long the request waited for its thread since its body was in at
        ``received`` (``time.perf_counter()``; ``waited_ms``: its share of a busy server)."""
        tick = time.perf_counter()
        with AudioFile(data, UPLOAD_NAME, self.settings.max_seconds) as audio:
            prediction = self.predictor.predict_file(audio, top_k, hop_seconds=hop,
                                                     keep_timeline=timeline, stop=self.stopping)
            out = prediction.to_dict()
            out.pop("file")
            out["sample_rate"] = audio.sample_rate
            out["channels"] = audio.channels
        if prediction.timeline is not None:
            out["timeline"] = prediction.timeline.rows()
        if logmel:
            info = self.model.info
            with AudioFile(data, UPLOAD_NAME) as audio:  # the first window again: about a clip decoded
                blocks = audio.blocks(info.sample_rate, block_seconds=info.clip_seconds)
                first = next(stream_windows(blocks, info.clip_samples))[1]
            out["logmel"] = _logmel_image(self.model, first)
        out["elapsed_ms"] = round(1e3 * (time.perf_counter() - tick), 2)
        out["waited_ms"] = round(1e3 * (tick - received), 2)
        return out


DESCRIPTION = """Environmental sound classification with a trained escnet model.

**Live streams** (a WebSocket, not listed below):
`ws://HOST:PORT/v1/stream?sample_rate=SR&format=f32|s16`. Send binary frames of little-endian mono
PCM at that rate (at most 2 s each); the server answers text frames of JSON with a `type`: `"ready"`
first (classes, settings, limits), `"scores"` every hop and right after a sound begins (`time`,
`label`, `top`), and `"event"` (`label`, `state` `"start"` or `"end"`, `time` in seconds of stream,
`confidence`) once per event start and end. Send the text frame `"end"` to end every open event: the
server answers `"end"` and closes (1000). Optional parameters: `hop`, `window`, `on`, `off`,
`smooth`, `min_duration`, `max_gap`. Broken limits close the stream with a code and a reason: 1008
(bad parameter, too long, idle), 1003 (bad frame), 1007 (NaN samples), 1009 (frame too big), 1013
(too many streams), 1001 (server stopping)."""


class Stopping:
    """That the server is stopping: work in flight on the inference threads sees
    :meth:`is_set` at its next batch (answered 503); live streams on the event loop
    :meth:`wait` for it and are woken at once, so they close with their own code and reason
    before the server's shutdown closes their connections."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event = asyncio.Event()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that :meth:`wait` runs on."""
        self.loop = loop

    def set(self) -> None:
        """From any thread, a signal handler included."""
        self.flag.set()
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.event.set)

    def is_set(self) -> bool:
        return self.flag.is_set()

    async def wait(self) -> None:
        await self.event.wait()


def _stop_on_signals(stopping: Stopping) -> None:
    """SIGINT and SIGTERM also set ``stopping``, so work in flight ends at its next batch
    (answered 503 in JSON) instead of being cancelled when the graceful-shutdown time runs out
    (a text 500), and live streams close with their reason. Chained in front of the server's
    own handlers, in every worker process; signals are only the main thread's to handle (not
    under a test client)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def handler(number: int, frame, previous=previous) -> None:
            stopping.set()
            if callable(previous):
                previous(number, frame)

        signal.signal(sig, handler)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(settings: ServeSettings, model: Model | None = None) -> FastAPI:
    """The application for ``settings`` (``model``: one already loaded, e.g. in tests).
    ``app.state.stopping`` is the event that ends work in flight (set on SIGTERM by
    :func:`serve`, else when the app shuts down)."""
    service: dict[str, Service] = {}
    failure: list[str] = []
    stopping = Stopping()
    archive = ArchiveService(settings.db) if settings.db else None

    def load() -> None:
        if not settings.model:  # the labelling page alone
            return
        try:
            service["ready"] = Service(settings, model, stopping)
        except EscnetError as err:
            failure.append(str(err))
            log.error("escnet serve: error: %s", err)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stopping.attach(asyncio.get_running_loop())
        _stop_on_signals(stopping)
        # load off the event loop, so /healthz answers (and /readyz says 503) while it loads
        loading = asyncio.create_task(asyncio.to_thread(load))
        yield
        await loading
        if "ready" in service:  # work in flight stops at its next batch, answered 503
            running = service.pop("ready")
            running.stopping.set()
            running.pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="escnet", version=escnet.__version__, lifespan=lifespan,
                  description=DESCRIPTION)
    app.state.stopping = stopping

    def ready() -> Service:
        if not settings.model:
            raise RequestError(404, "this server has no model: it serves an archive's labelling page")
        if failure:
            raise RequestError(503, f"the model could not be loaded: {failure[0]}")
        if "ready" not in service:
            raise RequestError(503, "the model is still loading", {"Retry-After": "1"})
        return service["ready"]

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return _error(err.status, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:  # a bug: say so, no traceback
        return _error(500, f"internal error ({type(err).__name__}); the server log has details")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and requests are served")
    async def readyz() -> dict:
        if settings.model:
            ready()
        return {"status": "ready"}

    @app.get("/v1/model", summary="What the model is")
    async def model_info() -> dict:
        s = ready()
        info = s.model.info.public()
        info["limits"] = {"max_upload_mb": settings.max_upload_mb,
                          "max_seconds": settings.max_seconds, "max_windows": settings.max_windows}
        return info

    @app.post("/v1/classify", summary="Classify an audio file",
              description="The file as the raw request body, or as the file field of a multipart "
              "form (WAV, FLAC, OGG, MP3; any sample rate and channel count). Returns `label`: "
              "the answer, a class name or `\"unknown\"` when the sound is unlike all of the "
              "model's classes (then `sounds_like` lists what an AudioSet head hears in it, for "
              "models that have one), and the top classes with calibrated probabilities, "
              "averaged over clip-length windows; with `timeline=true` also each window's label "
              "(silent windows get none).")
    async def classify(request: Request, top_k: int = Query(5, ge=1, le=1000),
                       timeline: bool = False, hop: float | None = None,
                       logmel: bool = False) -> dict:
        s = ready()
        try:  # the body first: a slow sender holds a connection, never an inference slot
            data = await asyncio.wait_for(audio_bytes(request, settings.max_bytes),
                                          settings.body_seconds)
        except TimeoutError:
            raise RequestError(408, f"upload not received within {settings.body_seconds:g} s") from None
        received = time.perf_counter()
        try:  # an inference slot, shared fairly among client addresses
            async with s.admission.slot(request.client.host if request.client else ""):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(s.pool, s.classify, data, top_k, timeline, hop,
                                                  logmel, received)
        except Busy as err:
            if err.pushy:  # it has work in progress: answered when it may retry, not at once,
                del data   # so that a client retrying at once cannot make refusals a flood
                await asyncio.sleep(REFUSAL_DELAY)
            raise RequestError(503, str(err), {"Retry-After": str(REFUSAL_DELAY)}) from None
        except EscnetError as err:
            raise RequestError(_status(err), str(err)) from None

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        if failure or "ready" not in service:
            await ws.accept()
            await ws.close(1013, "the model is not loaded" + (f": {failure[0][:80]}" if failure else
                                                              " yet; retry shortly"))
            return
        await run_stream(ws, service["ready"])

    static = resources.files("escnet.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / ("index.html" if settings.model else "label.html")))

    if archive is not None:
        app.include_router(archive_router(archive, settings.max_bytes))

        @app.get("/label", include_in_schema=False)
        async def label_page() -> FileResponse:
            return FileResponse(str(static / "label.html"))

    if settings.rate_limit:
        app.add_middleware(_RateLimited, rate=settings.rate_limit)
    app.add_middleware(_SameOrigin, listen_host=settings.host, allowed=settings.allow_origins)
    return app


class _SameOrigin:
    """ASGI middleware: only the server's own page, and pages of the origins allowed, may use it
    from a browser. A browser names the page a request comes from in ``Origin`` (on every
    WebSocket handshake and every ``POST``); a request whose ``Origin`` is neither the server's
    own (the host and port its ``Host`` header names) nor allowed is refused before routing:
    HTTP 403 in JSON, or a refused WebSocket handshake (HTTP 403). A server listening on a
    loopback address also refuses a ``Host`` that is not a loopback name (nor an allowed
    origin's host): a page whose domain was made to resolve to 127.0.0.1 (DNS rebinding) is
    same-origin with itself, never with ``localhost``. Requests without ``Origin`` (curl,
    scripts, other programs) pass: no web page can send one without it."""

    def __init__(self, app, listen_host: str, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, set(allowed)
        hosts = {a[0] for o in allowed if o != "null" and (a := _address(urlsplit(o).netloc, "http"))}
        self.hosts = {*LOOPBACK, *hosts} if listen_host in LOOPBACK else None

    def refusal(self, scope) -> str | None:
        """Why a request is refused, or ``None``."""
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scheme = scope.get("scheme", "http")
        host = _address(headers.get(b"host", ""), scheme)
        if self.hosts is not None and (host is None or host[0] not in self.hosts):
            return (f"Host {headers.get(b'host', '')[:80]!r} is not this server's (it listens on a "
                    "loopback address; its owner may allow a web page's origin)")
        origin = headers.get(b"origin")
        if origin is None or origin.lower().rstrip("/") in self.allowed:
            return None
        parts = urlsplit(origin.lower())
        theirs = _address(parts.netloc, parts.scheme) if parts.scheme in DEFAULT_PORTS else None
        if theirs is not None and theirs == host:
            return None
        return (f"cross-origin request from {origin[:80]!r} refused; the server's owner may allow "
                "that origin")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and (why := self.refusal(scope)):
            await _deny(scope, receive, send, 403, why)
            return
        await self.app(scope, receive, send)


async def _deny(scope, receive, send, status: int, message: str,
                headers: dict[str, str] | None = None) -> None:
    """Answer a request before routing with ``status`` and ``{"error": message}``, a WebSocket
    handshake too (ASGI's ``websocket.http.response``, which uvicorn speaks; a server without it
    refuses the handshake with its own 403)."""
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        response = _error(status, message, headers)
        if scope["type"] == "websocket":
            await send({"type": "websocket.http.response.start", "status": status,
                        "headers": response.raw_headers})
            await send({"type": "websocket.http.response.body", "body": response.body})
            return
        await response(scope, receive, send)
        return
    await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


class _RateLimited:
    """ASGI middleware: a :class:`RateLimit` of ``rate`` requests a second per client address,
    checked when a request's headers are in, before routing: a request (or WebSocket handshake)
    over it waits its turn, or, if that is more than a second away, is answered 429 in JSON after
    that second, so retrying at once does not get a client more."""

    def __init__(self, app, rate: float) -> None:
        self.app, self.rate, self.limit = app, rate, RateLimit(rate)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            wait = self.limit.wait(client[0] if client else "", time.monotonic())
            if wait is None:
                await asyncio.sleep(REFUSAL_DELAY)
                await _deny(scope, receive, send, 429, f"over the rate limit of {self.rate:g} requests "
                            "a second from one address; retry shortly", {"Retry-After": str(REFUSAL_DELAY)})
                return
            if wait:
                await asyncio.sleep(wait)
        await self.app(scope, receive, send)


WS_MAX_SIZE = 4 << 20
"""Bytes a WebSocket frame may have before the WebSocket layer closes the connection (1009)
without reading it: above any frame a stream may send (2 s of 192 kHz float32 is 1.5 MB), which
the stream refuses itself, with its reason."""
GRACE_SECONDS = 5
"""After SIGTERM, requests in flight get this long to finish; work still running then stops at
its next batch of windows (answered 503), so the process is gone within about
``GRACE_SECONDS`` plus one batch."""


def _check_port(host: str, port: int) -> None:
    """Fail in one line, before the model loads, when ``host:port`` cannot be listened on."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        why = "already in use (another server?)" if err.errno == errno.EADDRINUSE else err.strerror
        raise EscnetError(f"port={port}: cannot listen on {host}:{port}: {why}; choose another port"
                          ) from None


def app_from_environment() -> FastAPI:
    """For uvicorn's ``--workers``: each worker process builds the app from the settings the
    parent put in ``ESCNET_SERVE``, and exits as soon as that parent is gone (a ``kill -9`` of
    ``escnet serve`` leaves no worker serving)."""
    import json

    die_with_parent()
    return create_app(ServeSettings(**json.loads(os.environ["ESCNET_SERVE"])))


def serve(settings: ServeSettings) -> None:
    """Run the server until SIGINT/SIGTERM; requests in flight are finished first."""
    import json

    import uvicorn

    # a bad model or archive: said now, before the port is taken
    model = load_model_file(settings.model, settings.device, threads=1) if settings.model else None
    _check_port(settings.host, settings.port)
    # A live stream slowed to real time lets its frames queue in the connection, the client's
    # pongs behind them: a keepalive would time out and drop a client that is only fast. Dead
    # or silent clients are closed by the stream's own idle rules, clients that read nothing
    # once the messages they leave unread fill the connection; frames over WS_MAX_SIZE are cut
    # off by the WebSocket layer before they are read. No per-message compression: PCM barely
    # deflates, and compressing it both ways cost a tenth of a core at 48 streams.
    common = {"host": settings.host, "port": settings.port, "log_level": "info",
              "timeout_graceful_shutdown": GRACE_SECONDS, "ws_ping_timeout": None,
              "ws_max_size": WS_MAX_SIZE, "ws_per_message_deflate": False}
    if settings.workers == 1:
        uvicorn.Server(uvicorn.Config(create_app(settings, model), **common)).run()
        return
    os.environ["ESCNET_SERVE"] = json.dumps(asdict(settings))
    os.environ[PARENT_PID] = str(os.getpid())
    uvicorn.run("escnet.serve.app:app_from_environment", factory=True, workers=settings.workers,
                **common)
