"""HTTP helpers shared by the services' FastAPI apps: RFC 9457 problem details and health."""

from __future__ import annotations

import json
import re

from .redact import redact
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import BrokerError, InvalidInput

log = logging.getLogger("shared.http")

PROBLEM = "application/problem+json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "Problem details (RFC 9457)", "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}
    for code in (400, 404, 409, 422, 503)
}


def known_query(request: Request) -> None:
    """A route dependency refusing query parameters the route does not declare (400 problem, ``unknown`` and
    ``allowed`` listed): a filter misspelt or not offered must not silently answer everything."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        allowed |= {p.alias for p in sub.query_params}
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise InvalidInput(f"unknown query parameter(s): {', '.join(unknown)}", unknown=unknown, allowed=sorted(allowed))


def problem_response(problem: dict[str, Any]) -> JSONResponse:
    return JSONResponse(problem, status_code=int(problem["status"]), media_type=PROBLEM)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves the app as ``application/problem+json``; internal errors hide their cause."""

    @app.exception_handler(BrokerError)
    async def _broker_error(_: Request, exc: BrokerError) -> JSONResponse:
        return problem_response(exc.to_problem())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()[:20]
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}"
        return problem_response(
            {"type": "https://portability.example/problems/invalid_input", "title": "Invalid input", "status": 422,
             "detail": detail, "code": "invalid_input", "errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "detail": str(exc.detail),
             "code": "http_error"}
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem_response(BrokerError("internal error").to_problem())


class BodyTooLarge(Exception):
    pass


_NUL = re.compile(rb"\\u0000")
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                             rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


class TextGuardMiddleware:
    """Refuse, with a 400 problem, requests whose JSON body, path or query carry a NUL character or a lone
    UTF-16 surrogate: no database stores them (PostgreSQL refuses NUL in text, neither encodes a lone
    surrogate), so they would otherwise end in a 500. Sits inside :class:`BodyLimitMiddleware` (bodies are
    bounded before they are read here)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b"") or b"\x00" in scope.get("path", "").encode("utf-8", "surrogatepass"):
            await self._refuse(send)
            return
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        if b"json" not in content_type:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # a disconnect: let the app see it
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"\x00" in body or _NUL.search(body) or _LONE_SURROGATE.search(body):
            await self._refuse(send)
            return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(InvalidInput("NUL characters and lone UTF-16 surrogates are not accepted").to_problem()).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a 413 problem, whether or not they announce a length."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = too_large = False

        async def limited_receive() -> Any:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if too_large and not started:
                # the app caught BodyTooLarge while parsing (FastAPI answers 400 "error parsing the body"): answer 413
                started = True
                await self._refuse(send)
            if too_large:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            pass
        if too_large and not started:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"type": "https://portability.example/problems/too_large", "title": "Request body too large",
                           "status": 413, "detail": f"the body may not exceed {self.max_bytes} bytes", "code": "too_large"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace_id, span_id, correlation_id (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        from . import telemetry

        trace_id, span_id = telemetry.current_ids()
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "trace_id": trace_id, "span_id": span_id, "correlation_id": telemetry.correlation_id.get(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, ensure_ascii=False))


class RedactingFormatter(logging.Formatter):
    """The text format, with secrets masked (:func:`shared.redact.redact`)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Logs to stderr, as text (development) or JSON lines carrying trace and correlation ids (``LOG_FORMAT=json``)."""
    import time

    handler = logging.StreamHandler()
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # their DEBUG lines carry statement parameters and token responses: never below INFO
    for noisy in ("aiosqlite", "asyncpg", "authlib", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)  # statements with their parameters
