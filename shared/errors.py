"""One exception hierarchy for the whole broker.

Every error a service raises on purpose is a :class:`BrokerError`. Each carries an
HTTP status and a short machine-readable ``code`` so that the same error becomes an
RFC 9457 problem-details body over HTTP (see :mod:`shared.http`) and an error reply
over NATS (see :mod:`shared.bus`), and comes back as the same class on the other side.

    BrokerError
    ├── InvalidInput        400  bad request body, bad NATS message
    ├── Unauthorized        401
    ├── Forbidden           403
    ├── NotFound            404
    ├── Conflict            409  a transition that the state does not allow
    ├── Unprocessable       422  well-formed but refers to something it may not
    └── Unavailable         503  a dependency (a NATS responder, a participant) is down
"""

from __future__ import annotations

from typing import Any, ClassVar


class BrokerError(Exception):
    """Base of every deliberate error. ``detail`` is safe to show to the caller."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        """The RFC 9457 problem-details object (``type``, ``title``, ``status``, ``detail`` + extras)."""
        body: dict[str, Any] = {
            "type": f"https://portability.example/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        body.update(self.extra)
        return body


class InvalidInput(BrokerError):
    status, code, title = 400, "invalid_input", "Invalid input"


class Unauthorized(BrokerError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(BrokerError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(BrokerError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(BrokerError):
    status, code, title = 409, "conflict", "Conflict with the current state"


class Unprocessable(BrokerError):
    status, code, title = 422, "unprocessable", "Request refers to something it may not"


class Unavailable(BrokerError):
    status, code, title = 503, "unavailable", "A dependency is unavailable"


_BY_CODE: dict[str, type[BrokerError]] = {
    cls.code: cls
    for cls in (BrokerError, InvalidInput, Unauthorized, Forbidden, NotFound, Conflict, Unprocessable, Unavailable)
}


def from_problem(problem: dict[str, Any]) -> BrokerError:
    """Rebuild the error a remote service raised from its problem object."""
    cls = _BY_CODE.get(str(problem.get("code")), BrokerError)
    extra = {k: v for k, v in problem.items() if k not in {"type", "title", "status", "detail", "code"}}
    return cls(str(problem.get("detail", "remote error")), **extra)
