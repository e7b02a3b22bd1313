"""NUL characters and lone surrogates are refused with a 400 problem before they reach a database
(PostgreSQL refuses NUL in text: they used to end in a 500 there, found by schemathesis)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from shared.http import BodyLimitMiddleware, TextGuardMiddleware, install_problem_handlers


class Body(BaseModel):
    text: str


def app() -> FastAPI:
    a = FastAPI()
    install_problem_handlers(a)

    @a.post("/echo")
    async def echo(body: Body) -> dict[str, str]:
        return {"text": body.text}

    @a.get("/q")
    async def q(text: str = "") -> dict[str, str]:
        return {"text": text}

    a.add_middleware(TextGuardMiddleware)
    a.add_middleware(BodyLimitMiddleware, max_bytes=1024)
    return a


@pytest.mark.parametrize("raw, status", [
    (b'{"text": "fine \\u00e9 \\ud83d\\ude00"}', 200),
    (b'{"text": "nul \\u0000 here"}', 400),
    (b'{"text": "lone high \\ud83d here"}', 400),
    (b'{"text": "lone low \\ude00 here"}', 400),
    (b'{"text": "a percent %00 is text"}', 200),
])
async def test_json_bodies(raw: bytes, status: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as c:
        r = await c.post("/echo", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        if status == 400:
            assert r.json()["code"] == "invalid_input"


async def test_queries_and_paths() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as c:
        assert (await c.get("/q", params={"text": "ok"})).status_code == 200
        assert (await c.get("/q?text=a%00b")).status_code == 400
        big = b'{"text": "' + b"x" * 2000 + b'"}'
        assert (await c.post("/echo", content=big, headers={"content-type": "application/json"})).status_code == 413
