"""Keep secrets out of logs and traces: bearer tokens, JWTs, OAuth codes and states, passwords.

:func:`redact` rewrites free text (a log line); :func:`redact_url` the query of a URL (an OAuth callback
``?code=...&state=...``). Used by the log formatters (shared/http.py) and the span hooks (shared/telemetry.py).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: query parameters and fields whose values are secrets (RFC 6749, RFC 7636, RFC 7009, RFC 7523)
SECRET_NAMES = ("access_token", "refresh_token", "id_token", "token", "code", "code_verifier", "state", "client_secret",
                "client_assertion", "password", "assertion", "csrf")
MASK = "[redacted]"

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_FIELD = re.compile(r"""(?i)(["']?\b(?:%s)\b["']?\s*[:=]\s*["']?)(?!\[redacted\])([^"'&\s,;})\]]{4,})""" % "|".join(SECRET_NAMES))
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+@")


def redact(text: str) -> str:
    """``text`` with JWTs, bearer/basic credentials, ``name=value`` or ``"name": "value"`` secrets and
    passwords in URLs masked."""
    text = _JWT.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m[1]} {MASK}", text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m[1]}{MASK}@", text)
    return _FIELD.sub(lambda m: f"{m[1]}{MASK}", text)


def redact_url(url: str) -> str:
    """``url`` with the values of secret query parameters (and any password) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    query = urlencode([(k, MASK if k.lower() in SECRET_NAMES else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="[]")
    netloc = parts.netloc
    if "@" in netloc and ":" in netloc.split("@", 1)[0]:
        netloc = netloc.split(":", 1)[0] + ":" + MASK + "@" + netloc.split("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
