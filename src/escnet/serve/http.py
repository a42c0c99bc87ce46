"""What every endpoint shares: errors answered in JSON, and reading an upload within its limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser


class RequestError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (by its
    declared length before anything is read, or while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > limit:
            raise RequestError(413, f"upload of {int(declared) / 2**20:.1f} MB is over the limit of "
                               f"{limit / 2**20:g} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"upload is over the limit of {limit / 2**20:g} MB")
        chunks.append(chunk)
    return b"".join(chunks)


async def audio_bytes(request: Request, limit: int) -> bytes:
    """The uploaded file: the only file field of a multipart form, or the raw body."""
    body = await _read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                     max_part_size=limit).parse()
    except MultiPartException as err:
        raise RequestError(422, f"bad multipart upload: {err.message}") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise RequestError(422, "no file in the multipart upload (send it as a file field, "
                               "e.g. curl -F file=@clip.wav)")
        return await files[0].read()
    finally:
        await form.close()  # the spooled temporary file goes with it


