"""Recipient adapters: how the transfer worker delivers records to a recipient, by its registry ``import_protocol``.

======== ================================================ ===============================================
protocol recipient                                        ``import_base_url`` is
======== ================================================ ===============================================
broker   the broker's recipient import contract (default)  the base of ``/transfers/{id}/batches/{n}``
solid    a Solid pod (Solid Protocol: LDP containers, PUT) the container the broker writes under
cozy     a Cozy cloud (cozy-stack data API)                the Cozy instance URL
======== ================================================ ===============================================

Every adapter has the same two steps, both idempotent:

- :meth:`Adapter.put_batch` ``(transfer_id, n, dataset, records)`` delivers batch ``n`` (records of
  dataset type ``dataset``); sending it again stores nothing twice. It returns the records the
  recipient refused (broker protocol only), or raises :class:`~services.transfer.errors.TransferEnded`
  (``destination_full``, ``recipient_error``) or :class:`~services.transfer.errors.Transient`.
- :meth:`Adapter.finish` ``(manifest)`` asks whether the recipient holds exactly what was delivered:
  ``manifest`` has the record count and the SHA-256 of the delivered records (RFC 8785, one a line).
  The broker protocol asks the recipient; the Solid and Cozy adapters read back every record they
  wrote, at its deterministic name, and recompute both.

A resumed transfer does not send again what was acknowledged before the crash: the worker replays
those records with :meth:`Adapter.skip_batch` so that ``finish`` still covers them.

Secrets (a Cozy token, a pod's bearer token) never sit in the registry: they come from the
broker's setting ``RECIPIENT_CREDENTIALS``, ``{"<recipient id>": {"bearer": "..."}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import TransferEnded

PROTOCOLS = ("broker", "solid", "cozy")
DEFAULT_PROTOCOL = "broker"

# send(method, url, **httpx kwargs) -> response, with the worker's retries of transient failures
Send = Callable[..., Awaitable[httpx.Response]]


@dataclass
class BatchAck:
    """What the recipient answered to a batch: ``refused`` maps a record's index in the batch to the reason."""

    refused: dict[int, str] = field(default_factory=dict)


@dataclass
class ManifestAck:
    """Whether the recipient holds exactly what the manifest says; ``status`` the HTTP status that said so
    (broker protocol), ``detail`` what the recipient (or the read-back) found."""

    match: bool
    status: int | None = None
    detail: dict[str, Any] | None = None


class Adapter:
    """Delivery to one recipient, for one transfer. Subclasses implement :meth:`put_batch` and :meth:`finish`."""

    protocol = "?"

    def __init__(self, recipient: dict[str, Any], *, send: Send, credentials: dict[str, str] | None = None,
                 broker_token: str = "", correlation_id: str = "") -> None:
        self.recipient = recipient
        self.base = str(recipient["import_base_url"]).rstrip("/")
        self.send = send
        self.credentials = dict(credentials or {})
        self.broker_token = broker_token
        self.correlation_id = correlation_id

    def headers(self) -> dict[str, str]:
        h = {"X-Correlation-Id": self.correlation_id} if self.correlation_id else {}
        if self.credentials.get("bearer"):
            h["Authorization"] = f"Bearer {self.credentials['bearer']}"
        return h

    async def put_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> BatchAck:
        raise NotImplementedError

    def skip_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> None:
        """Records of batch ``n`` delivered before a restart: nothing is sent; ``finish`` must still cover them."""

    async def finish(self, transfer_id: str, manifest: dict[str, Any]) -> ManifestAck:
        raise NotImplementedError


def recipient_failed(what: str, resp: httpx.Response, **extra: Any) -> TransferEnded:
    """The end of a transfer for a recipient's answer: 413/507 ``destination_full``, else ``recipient_error``.
    Only the status and the problem's title are kept (a body may echo records)."""
    from ..errors import problem_title

    if resp.status_code in (413, 507):
        return TransferEnded("failed", "destination_full", {"message": f"recipient answered {resp.status_code}: {problem_title(resp)} ({what})",
                                                            **extra})
    return TransferEnded("failed", "recipient_error", {"message": f"recipient answered {resp.status_code}: {problem_title(resp)} ({what})",
                                                       "status": resp.status_code, **extra})


def for_recipient(recipient: dict[str, Any], *, send: Send, credentials: dict[str, dict[str, str]], broker_token: str,
                  correlation_id: str = "") -> Adapter:
    """The adapter of ``recipient`` (a registry participant) by its ``import_protocol`` (default ``broker``)."""
    from .broker import BrokerAdapter
    from .cozy import CozyAdapter
    from .solid import SolidAdapter

    protocol = recipient.get("import_protocol") or DEFAULT_PROTOCOL
    classes: dict[str, type[Adapter]] = {"broker": BrokerAdapter, "solid": SolidAdapter, "cozy": CozyAdapter}
    if protocol not in classes:
        raise TransferEnded("failed", "recipient_error", {"message": f"recipient {recipient.get('id')} has an unknown import_protocol {protocol!r}"})
    return classes[protocol](recipient, send=send, credentials=credentials.get(str(recipient.get("id")), {}), broker_token=broker_token,
                             correlation_id=correlation_id)


__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Adapter", "BatchAck", "ManifestAck", "Send", "for_recipient", "recipient_failed"]
