"""The settings of ``escnet serve``, each declared once: its default, its bounds and its help
(the CLI builds its options from these fields; a new limit is one field here). No FastAPI
import: the CLI reads them before the server's libraries are loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from escnet.errors import EscnetError
from escnet.machine import available_cores


def _setting(default: Any, help: str, check: tuple[Any, str] | None = None, metavar: str | None = None
             ) -> Any:
    """A field with its help, its check ``(predicate of the value, why it fails)`` and a
    metavar for its option."""
    return field(default=default, metadata={"help": help, "check": check, "metavar": metavar})


@dataclass
class ServeSettings:
    """``escnet serve`` settings. A value out of bounds raises :class:`EscnetError` naming the
    setting (``queue=-1: ...``)."""

    model: str = ""
    """A run directory, a ``.pt`` checkpoint or an exported ``.onnx`` file (ONNX Runtime, the
    fast path; the others need PyTorch); empty with ``db`` (the labelling page alone)."""
    host: str = _setting("127.0.0.1", "address to listen on: 127.0.0.1 is this machine only")
    port: int = _setting(8000, "port", (lambda v: 0 <= v <= 65535, "a port is 0 to 65535"))
    workers: int = _setting(1, "server processes, each with the model",
                            (lambda v: 1 <= v <= 64, "must be 1 to 64 (each process holds "
                                                         "the model in memory)"))
    threads: int = _setting(0, "inference threads per process (0: one per core)",
                            (lambda v: 0 <= v <= 1024, "must be 0 (one per core) to 1024"))
    queue: int = _setting(64, "requests that may wait for a thread; more are answered 503 with "
                          "Retry-After, to the client holding the most",
                          (lambda v: v >= 0, "must be 0 or more"), "N")
    max_upload_mb: float = _setting(20.0, "largest upload, MB",
                                    (lambda v: 0 < v <= 4096, "must be above 0 and at most 4096 MB "
                                     "(an upload is held in memory)"), "MB")
    max_seconds: float = _setting(600.0, "longest audio accepted, seconds",
                                  (lambda v: 0 < v <= 86400, "must be above 0 and at most 86400 s "
                                   "(a day)"), "S")
    device: str = _setting("cpu", "PyTorch models: cpu, cuda or cuda:N")
    max_windows: int = _setting(1000, "most clip-length windows one request may cost, its length "
                                "and hop together",
                                (lambda v: 2 <= v <= 10**6, "must be 2 to 1000000"), "N")
    body_seconds: float = _setting(30.0, "an upload must arrive within this; slow senders never "
                                   "hold an inference thread",
                                   (lambda v: 0 < v <= 3600, "must be above 0 and at most 3600 s"), "S")
    max_streams: int = _setting(32, "live streams (/v1/stream) open at once (0: none)",
                                (lambda v: 0 <= v <= 10000, "must be 0 (no live streams) to 10000"), "N")
    stream_seconds: float = _setting(3600.0, "longest live stream, seconds of audio",
                                     (lambda v: 1 <= v <= 7 * 86400, "must be 1 s to a week"), "S")
    idle_seconds: float = _setting(10.0, "a live stream that sends no sound (digital silence "
                                   "counts as none) or reads none of the server's messages for "
                                   "this long is closed",
                                   (lambda v: 0.1 <= v <= 3600, "must be 0.1 to 3600 s"), "S")
    rate_limit: float = _setting(0.0, "requests a second one client address may make (of each "
                                 "worker); more wait their turn, up to 1 s, then 429 (0: no "
                                 "limit)", (lambda v: v == 0 or 0.01 <= v <= 1e6, "must be 0 (no "
                                               "limit) or 0.01 to 1000000 requests a second"), "R")
    db: str = _setting("", "an archive (escnet index) to search and label from the page at /label "
                       "(the page at /, without a model)", metavar="ARCHIVE")
    allow_origins: tuple[str, ...] = _setting((), "a web origin (https://app.example.org) whose "
                                              "pages may use this server from a browser, besides "
                                              "its own page; repeat for more",
                                              metavar="ORIGIN")
    """(``null`` for sandboxed pages and local files.)"""

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check and not (_finite(value) and check[0](value)):
                raise EscnetError(f"{f.name}={value}: {check[1]}")
        if not (self.model or self.db):
            raise EscnetError("model=: give a model to serve, an archive (db), or both")
        self.allow_origins = tuple(web_origin(o) for o in self.allow_origins)
        self.threads = self.threads or available_cores()

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def web_origin(text: str) -> str:
    """A web origin as browsers send it (``scheme://host[:port]``, lower case), or ``null``."""
    origin = text.strip().lower().rstrip("/")
    if origin == "null":
        return origin
    try:
        parts = urlsplit(origin)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path and \
            not parts.query and not parts.fragment and parts.username is None
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        ok = False
    if not ok:
        raise EscnetError(f"allow_origins={text!r}: not a web origin; give scheme://host[:port], e.g. "
                          "https://app.example.org, or null")
    return origin
