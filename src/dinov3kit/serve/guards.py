"""What keeps the server up and its answers uniform: a request-body size limit, JSON errors for every
failure (the page shows their `error` text), and a Server-Timing header on every answer."""

from __future__ import annotations

import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..images import ImageLoadError
from .explorer import NotFoundError, UnavailableError

logger = logging.getLogger("dinov3kit.serve")

#: Room for the multipart envelope and form fields around an upload.
FORM_OVERHEAD = 256 * 1024


class UploadTooLargeError(ValueError):
    """An uploaded file over the upload limit."""


def read_upload(file, limit: int) -> bytes:
    """The bytes of an `UploadFile`, refusing more than `limit` (413) without reading past it."""
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLargeError(f"{file.filename or 'the upload'} is larger than the {limit / 2**20:g} MB upload limit")
    return data


class TooLargeError(Exception):
    """A request body over the limit (raised while it is being received)."""


def _json_message(status: int, message: str) -> tuple[dict, bytes]:
    body = json.dumps({"error": message, "status": status}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, body


class BodyLimit:
    """ASGI middleware refusing request bodies over `max_bytes` with a 413 JSON error, whether the size
    is announced (Content-Length) or not (chunked): the body is counted as it arrives, never buffered here."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request is larger than the {self.max_bytes // 2**20} MB limit of this server"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_error(send, 413, message)
            return
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise TooLargeError(message)
            return event

        async def guarded_send(event):
            nonlocal started
            if over:  # the app answered the aborted body (FastAPI turns it into a 400): answer 413 instead
                if event["type"] == "http.response.start" and not started:
                    started = True
                    await _send_error(send, 413, message)
                return
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except TooLargeError:
            if not started:
                await _send_error(send, 413, message)


async def _send_error(send, status: int, message: str) -> None:
    start, body = _json_message(status, message)
    await send(start)
    await send({"type": "http.response.body", "body": body})


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(header: str) -> str:
    """The host of a Host header without its port ("[::1]:8000" → "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware answering 400 (JSON) to requests whose Host header is not one of `allowed`: a page
    on another site that rebinds its DNS name to 127.0.0.1 cannot read a loopback server's API then."""

    def __init__(self, app, allowed: tuple[str, ...] = LOOPBACK_NAMES) -> None:
        self.app, self.allowed = app, tuple(name.lower() for name in allowed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.allowed:
                await _send_error(send, 400, f"unexpected Host header {header!r}: this server answers {', '.join(self.allowed)}")
                return
        await self.app(scope, receive, send)


class ServerTiming:
    """ASGI middleware adding `Server-Timing: app;dur=<ms>` (request received → answer started)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(event):
            if event["type"] == "http.response.start":
                duration = (time.perf_counter() - start) * 1000
                event = {**event, "headers": [*event.get("headers", []), (b"server-timing", f"app;dur={duration:.3f}".encode())]}
            await send(event)

        await self.app(scope, receive, timed_send)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure becomes a JSON answer {"error": message, "status": code}; bad input gets a 4xx."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or API route: {request.url.path} (the API is listed at /docs)"
        return error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(problems), "status": 422, "details": jsonable(exc.errors())}, status_code=422)

    @app.exception_handler(UploadTooLargeError)
    async def too_large(request: Request, exc: UploadTooLargeError) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(ImageLoadError)
    async def bad_image(request: Request, exc: ImageLoadError) -> JSONResponse:
        return error(422, f"not a usable image: {exc.reason}")

    @app.exception_handler(UnavailableError)
    async def unavailable(request: Request, exc: UnavailableError) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("error answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}: {exc}); the server goes on")


def jsonable(value):
    """`value` with anything JSON cannot hold (exceptions in validation contexts, bytes) as text."""
    return json.loads(json.dumps(value, default=str))
