"""How a transfer step fails: shared by the worker and the recipient adapters (:mod:`.adapters`)."""

from __future__ import annotations

from typing import Any

import httpx


class TransferEnded(Exception):
    """The transfer reached an end other than completion: ``status``, ``reason`` and ``error``."""

    def __init__(self, status: str, reason: str, error: dict[str, Any]) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason, self.error = status, reason, error


class Transient(Exception):
    """A participant answered 5xx/429 or could not be reached; ``retry_after`` in seconds if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def problem_title(resp: httpx.Response) -> str:
    """The title of a participant's problem-details answer, never its body: an error body may
    echo personal data, which the broker must not keep (it goes into ``transfer.error``)."""
    if resp.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            body = resp.json()
            if isinstance(body, dict) and isinstance(body.get("title"), str):
                return str(body["title"])[:120]
        except ValueError:
            pass
    return resp.reason_phrase or "error"
