"""Guards on the URLs the broker calls on behalf of participants (SSRF): absolute https URLs (http too
in development), no credentials, and no loopback, private or link-local address unless the participant's
registry entry allows it (``allow_private_network``)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from .errors import InvalidInput


async def check_address(host: str, field: str) -> None:
    """Refuse a host that is, or resolves to, a loopback, private, link-local or otherwise
    non-public address (the SSRF guard). A name that does not resolve yet is let through."""
    import ipaddress

    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for a in addresses:
        if not a.is_global or a.is_multicast:
            raise InvalidInput(f"{field} points to a non-public address ({a}); set allow_private_network to allow it")


def check_url(url: str | None, field: str, *, development: bool) -> None:
    """An endpoint URL: absolute, https (http too in development), no credentials, no spaces."""
    if url is None:
        return
    allowed = {"https", "http"} if development else {"https"}
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidInput(f"{field} is not a valid URL") from None
    if parts.scheme not in allowed or not parts.hostname or any(ch.isspace() for ch in url):
        raise InvalidInput(f"{field} must be an absolute {' or '.join(sorted(allowed))} URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(f"{field} must not carry credentials")
    if parts.query or parts.fragment:
        raise InvalidInput(f"{field} must not have a query or fragment")


