"""``portability-conformance``: check a participant's endpoints against the broker's two contracts.

    portability-conformance holder <export-base-url> --token <customer token> --dataset <dataset id>
    portability-conformance recipient <import-base-url> --token <broker token> [--dataset <dataset id>]

(until the script entry exists: ``python -m shared.conformance holder ...``.)

The contracts are the ones of README "The two contracts" and ``examples/contracts/``:

- **Holder export** (``holder-export.openapi.json``): ``GET /datasets/{dataset}/records?cursor=&limit=``
  with the data subject's bearer token; pages ``{"records": [...], "next_cursor": "..."}``, no
  ``next_cursor`` on the last page, stable opaque cursors, optional ``total`` and ``resume_cursor``;
  401 without or with an unknown token, 403 for a dataset the token does not cover, 400 for a bad
  cursor; errors are RFC 9457 problem details; 429/503 may carry ``Retry-After``.
- **Recipient import** (``recipient-import.openapi.json``): ``PUT /transfers/{id}/batches/{n}`` with
  ``Idempotency-Key: {id}:{n}`` (201 stored, 200 duplicate stored once), then
  ``PUT /transfers/{id}/manifest`` (200 ``match: true`` or 409 ``match: false``); the broker's bearer
  token; 413/507 mean the destination is full.

Each check gives one line: PASS, FAIL or SKIP (not applicable, or not observed) and a precise
message. The exit status is 0 when no check failed, 1 when one did, 2 for a usage error.
The recipient checks write to a fresh transfer id (``conformance-<uuid>``) and a second one for the
negative probes, so they never touch a real transfer.
"""

from __future__ import annotations

import email.utils
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.markup import escape

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
PROBLEM = "application/problem+json"

DEFAULT_PAGE_LIMIT = 10
DEFAULT_MAX_PAGES = 2000
MAX_EMPTY_PAGES = 100  # as the broker's transfer worker: more empty pages in a row end a transfer
MAX_LISTED = 3  # offending records / responses named in one message
RETRY_ATTEMPTS = 4  # tries of one request answered 429/503
RETRY_WAIT_CAP_S = 5.0  # longest wait honoured between those tries
DEFAULT_RETRY_WAIT_S = 1.0  # wait after a 429/503 without a valid Retry-After
TOKEN_ENV = "PORTABILITY_CONFORMANCE_TOKEN"

#: what each holder check verifies, and where the contract says so
HOLDER_CHECKS: dict[str, str] = {
    "auth.no_token": "no Authorization header -> 401 with WWW-Authenticate (holder export: 401 for a missing token)",
    "auth.forged_token": "an unknown bearer token -> 401 with WWW-Authenticate (holder export: 401 for an unknown token)",
    "auth.valid_token": "the given token -> 200 and a records page (holder export: GET /datasets/{dataset}/records)",
    "auth.uncovered_dataset": "a dataset the token does not cover -> 403 (holder export: 403)",
    "pagination.page_shape": "every page is {records: [objects], next_cursor?: string, total?: integer, resume_cursor?: string} (RecordsPage)",
    "pagination.limit": "no page holds more records than `limit` asked (holder export: limit)",
    "pagination.advance": "every next_cursor is new: never the cursor asked with, never one served before (cursors advance)",
    "pagination.last_page": "the walk ends on a page without next_cursor, within --max-pages (no next_cursor: last page)",
    "pagination.stable": "a cursor asked again returns the same page (cursors are stable)",
    "pagination.total": "`total`, when given, equals the records walked (RecordsPage.total)",
    "pagination.bad_cursor": "a cursor the holder never issued -> 400 (holder export: 400 bad cursor)",
    "records.schema": "every record validates against the dataset type's JSON Schema (2020-12, formats checked)",
    "records.units": "every record of an Enedis dataset type carries the unit of its type (catalogue units)",
    "errors.problem_json": "every 4xx is application/problem+json with type, title and status (RFC 9457)",
    "errors.retry_after": "every 429/503 carries Retry-After as delay-seconds or an HTTP-date (RFC 9110 10.2.3)",
}

#: what each recipient check verifies, and where the contract says so
RECIPIENT_CHECKS: dict[str, str] = {
    "auth.no_token": "batch and manifest PUTs without Authorization -> 401 (recipient import: 401)",
    "auth.wrong_token": "batch and manifest PUTs with a wrong bearer token -> 401 (recipient import: 401)",
    "idempotency.bad_key": "a batch with a wrong or missing Idempotency-Key -> 400 (recipient import: 400 bad key)",
    "batches.store": "batches 1 and 2 with Idempotency-Key {transfer_id}:{n} -> 201 (or 200) (recipient import)",
    "batches.duplicate": "batch 1 sent again is acknowledged (2xx) and stored once, shown by the manifest",
    "manifest.match": "the manifest of batch 1 + batch 2 (count, SHA-256) -> 200 {match: true}",
    "manifest.mismatch": "a wrong manifest (wrong order, wrong count) -> 409 {match: false}",
    "errors.problem_json": "every 4xx but the manifest's 409 is application/problem+json with type, title, status (RFC 9457)",
    "capacity.full": "413/507 (destination full), optional: reported when observed",
}


# ---- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One check: ``name`` (e.g. ``pagination.stable``), ``status`` (PASS/FAIL/SKIP), ``message``."""

    name: str
    status: str
    message: str


@dataclass
class Report:
    """The results of one run against one participant (``role`` is ``holder`` or ``recipient``)."""

    role: str
    base_url: str
    dataset: str
    results: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, status: str, message: str) -> CheckResult:
        """Record the result of check ``name``."""
        r = CheckResult(name, status, message)
        self.results.append(r)
        return r

    def get(self, name: str) -> CheckResult | None:
        """The result of check ``name``, or ``None`` if it did not run."""
        return next((r for r in self.results if r.name == name), None)

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that failed, in report order."""
        return [r for r in self.results if r.status == FAIL]

    @property
    def ok(self) -> bool:
        """True when no check failed (SKIPs do not fail a run)."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"role", "base_url", "dataset", "ok", "notes", "checks": [{"name", "status", "message", "verifies"}]}``."""
        described = HOLDER_CHECKS if self.role == "holder" else RECIPIENT_CHECKS
        return {
            "role": self.role, "base_url": self.base_url, "dataset": self.dataset, "ok": self.ok, "notes": self.notes,
            "checks": [{"name": r.name, "status": r.status, "message": r.message, "verifies": described.get(r.name, "")}
                       for r in self.results],
        }


# ---- helpers shared by both roles ----------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 section 10.2.3), or ``None`` if invalid.

    Valid values are delay-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``);
    a date in the past gives 0.
    """
    if value is None:
        return None
    v = value.strip()
    if v.isascii() and v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def problem_issues(resp: httpx.Response) -> list[str]:
    """What keeps ``resp`` from being RFC 9457 problem details; empty when it is one.

    Checked: media type ``application/problem+json``; a JSON object body with ``type`` (string),
    ``title`` (string) and ``status`` (integer equal to the HTTP status).
    """
    issues: list[str] = []
    ctype = resp.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != PROBLEM:
        issues.append(f"content-type {ctype or '(none)'!r}, not {PROBLEM}")
    try:
        body = resp.json()
    except ValueError:
        issues.append(f"body is not JSON ({_snippet(resp.text)})")
        return issues
    if not isinstance(body, dict):
        issues.append(f"body is a JSON {type(body).__name__}, not an object")
        return issues
    missing = [k for k in ("type", "title", "status") if k not in body]
    if missing:
        issues.append("body lacks " + ", ".join(repr(k) for k in missing))
    for k in ("type", "title"):
        if k in body and not isinstance(body[k], str):
            issues.append(f"{k!r} is not a string")
    if "status" in body and (not isinstance(body["status"], int) or isinstance(body["status"], bool)):
        issues.append("'status' is not an integer")
    elif "status" in body and body["status"] != resp.status_code:
        issues.append(f"'status' is {body['status']} but the HTTP status is {resp.status_code}")
    return issues


def _snippet(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _short(cursor: str | None, n: int = 24) -> str:
    if cursor is None:
        return "(none)"
    return repr(cursor if len(cursor) <= n else cursor[: n - 1] + "…")


def _title(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return _snippet(resp.text)
    if isinstance(body, dict) and isinstance(body.get("title"), str):
        return repr(body["title"])
    return _snippet(resp.text)


def _more(items: list[str], total: int) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f" (and {total - MAX_LISTED} more)" if total > MAX_LISTED else "")


class _Http:
    """One httpx client, a log of every answer (for the error-format and Retry-After checks)."""

    def __init__(self, client: httpx.Client, retry_wait: float = DEFAULT_RETRY_WAIT_S) -> None:
        self.client, self.retry_wait = client, retry_wait
        self.answers: list[tuple[str, httpx.Response]] = []  # (what was asked, answer)
        self.throttled: list[tuple[str, httpx.Response]] = []  # 429/503 answers
        self.last_error: str | None = None

    def request(self, label: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        """The answer (after waiting out up to RETRY_ATTEMPTS 429/503), or ``None`` if the request failed."""
        resp: httpx.Response | None = None
        for attempt in range(RETRY_ATTEMPTS):
            try:
                resp = self.client.request(method, url, **kw)
            except httpx.HTTPError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                return None
            self.answers.append((label, resp))
            if resp.status_code not in (429, 503):
                return resp
            self.throttled.append((label, resp))
            if attempt + 1 < RETRY_ATTEMPTS:
                wait = parse_retry_after(resp.headers.get("Retry-After"))
                time.sleep(min(self.retry_wait if wait is None else wait, RETRY_WAIT_CAP_S))
        return resp

    def failed(self, label: str) -> str:
        return f"{label}: request failed ({self.last_error})"


def _problem_check(report: Report, answers: list[tuple[str, httpx.Response]]) -> None:
    bad: list[str] = []
    errors = [(label, r) for label, r in answers if 400 <= r.status_code < 500]
    for label, r in errors:
        issues = problem_issues(r)
        if issues:
            bad.append(f"{label} -> {r.status_code}: " + ", ".join(issues))
    if not errors:
        report.add("errors.problem_json", SKIP, "no 4xx answer was observed")
    elif bad:
        report.add("errors.problem_json", FAIL,
                   f"{len(bad)} of {len(errors)} error answers are not RFC 9457 problem details: {_more(bad, len(bad))}")
    else:
        statuses = sorted({r.status_code for _, r in errors})
        report.add("errors.problem_json", PASS,
                   f"{len(errors)} error answers ({', '.join(map(str, statuses))}), each {PROBLEM} with type, title, status")


def _retry_after_check(report: Report, throttled: list[tuple[str, httpx.Response]]) -> None:
    if not throttled:
        report.add("errors.retry_after", SKIP, "no 429 or 503 was observed during the run")
        return
    bad = []
    for label, r in throttled:
        value = r.headers.get("Retry-After")
        if value is None:
            bad.append(f"{label} -> {r.status_code} without Retry-After")
        elif parse_retry_after(value) is None:
            bad.append(f"{label} -> {r.status_code} with Retry-After {value!r}: neither delay-seconds nor an HTTP-date")
    if bad:
        report.add("errors.retry_after", FAIL, f"{len(bad)} of {len(throttled)} 429/503 answers: {_more(bad, len(bad))}")
    else:
        values = sorted({r.headers['Retry-After'] for _, r in throttled})
        report.add("errors.retry_after", PASS,
                   f"all {len(throttled)} 429/503 answers carry a valid Retry-After ({', '.join(map(repr, values[:MAX_LISTED]))})")


# ---- dataset schemas -------------------------------------------------------------------------


def load_schema_file(path: Path) -> dict[str, Any]:
    """A record JSON Schema from ``path``: a bare schema, or a dataset type description holding one under ``schema``.

    Raises ``ValueError`` when the file is not JSON, holds no schema, or the schema is not a valid 2020-12 schema.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        doc = json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("schema"), dict) and "$schema" not in doc and "type" not in doc:
        doc = doc["schema"]
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON Schema object")
    try:
        Draft202012Validator.check_schema(doc)
    except SchemaError as exc:
        raise ValueError(f"{path}: not a valid JSON Schema 2020-12: {exc.message}") from None
    return doc


def catalogue_schema(dataset: str) -> dict[str, Any] | None:
    """The record schema of ``dataset`` in ``shared.catalogue.DATASET_TYPES``, or ``None`` if it has none."""
    from shared.catalogue import DATASET_TYPES

    t = DATASET_TYPES.get(dataset)
    return t.schema if t else None


def expected_unit(dataset: str, schema: dict[str, Any] | None = None) -> str | None:
    """The unit every record of an Enedis dataset type must carry (the ``const`` of its ``unit`` property).

    ``None`` for non-Enedis types and for Enedis types whose records carry no unit. Taken from the
    catalogue type when there is one, else from ``schema``.
    """
    if not dataset.startswith("enedis."):
        return None
    s = catalogue_schema(dataset) or schema or {}
    unit = (s.get("properties") or {}).get("unit")
    if isinstance(unit, dict) and isinstance(unit.get("const"), str):
        return unit["const"]
    return None


# ---- holder -------------------------------------------------------------------------------------


@dataclass
class _Page:
    number: int  # 1-based
    cursor: str | None  # the cursor it was asked with
    start: int  # position of its first record
    records: list[Any]
    next_cursor: str | None
    total: Any


def _page_shape(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return [f"body is a JSON {type(body).__name__}, not an object"]
    issues = []
    recs = body.get("records")
    if "records" not in body:
        issues.append("no 'records'")
    elif not isinstance(recs, list):
        issues.append(f"'records' is a {type(recs).__name__}, not an array")
    else:
        odd = [i for i, r in enumerate(recs) if not isinstance(r, dict)]
        if odd:
            issues.append(f"records at index {', '.join(map(str, odd[:MAX_LISTED]))} are not objects")
    nc = body.get("next_cursor")
    if nc is not None and not isinstance(nc, str):
        issues.append(f"'next_cursor' is a {type(nc).__name__}, not a string")
    total = body.get("total")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        issues.append(f"'total' is {total!r}, not a non-negative integer")
    rc = body.get("resume_cursor")
    if rc is not None and (not isinstance(rc, str) or len(rc) > 2048):
        issues.append("'resume_cursor' is not a string of at most 2048 characters")
    return issues


class _HolderRun:
    def __init__(self, http: _Http, report: Report, base_url: str, token: str, dataset: str,
                 schema: dict[str, Any] | None, schema_note: str, page_limit: int, max_pages: int) -> None:
        self.http, self.report = http, report
        self.url = f"{base_url.rstrip('/')}/datasets/{quote(dataset, safe='')}/records"
        self.base_url = base_url.rstrip("/")
        self.token, self.dataset = token, dataset
        self.schema, self.schema_note = schema, schema_note
        self.limit, self.max_pages = page_limit, max_pages
        self.pages: list[_Page] = []
        self.walk_stopped: str | None = None  # why the walk ended early
        self.walk_complete = False

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, label: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response | None:
        return self.http.request(label, "GET", self.url, params={k: v for k, v in params.items() if v is not None},
                                 headers=headers or {})

    def run(self) -> None:
        if not self.check_auth():
            return
        self.walk()
        self.check_pages()
        self.check_stable()
        self.check_bad_cursor()
        self.check_records()
        _problem_check(self.report, self.http.answers)
        _retry_after_check(self.report, self.http.throttled)

    # -- authentication

    def _expect_401(self, name: str, what: str, resp: httpx.Response | None) -> None:
        if resp is None:
            self.report.add(name, FAIL, self.http.failed(what))
        elif resp.status_code != 401:
            extra = " (the holder served records without a valid token)" if resp.status_code == 200 else f" ({_title(resp)})"
            self.report.add(name, FAIL, f"{what}: expected 401, got {resp.status_code}{extra}")
        elif not resp.headers.get("WWW-Authenticate"):
            self.report.add(name, FAIL, f"{what}: 401 without a WWW-Authenticate header (RFC 6750 section 3)")
        else:
            self.report.add(name, PASS, f"{what}: 401 with WWW-Authenticate: {resp.headers['WWW-Authenticate']}")

    def check_auth(self) -> bool:
        r = self.get("records without a token", limit=1)
        if r is None:
            self.report.add("reachable", FAIL, f"cannot reach {self.url}: {self.http.last_error}")
            for name in HOLDER_CHECKS:
                self.report.add(name, SKIP, "the holder could not be reached")
            return False
        self._expect_401("auth.no_token", "records without a token", r)
        forged = f"conformance-forged-{secrets.token_urlsafe(24)}"
        self._expect_401("auth.forged_token", "records with a forged token",
                         self.get("records with a forged token", {"Authorization": f"Bearer {forged}"}, limit=1))
        r = self.get("records with the given token", self.auth(), limit=1)
        if r is None:
            self.report.add("auth.valid_token", FAIL, self.http.failed("records with the given token"))
        elif r.status_code != 200:
            self.report.add("auth.valid_token", FAIL,
                            f"records with the given token: expected 200, got {r.status_code} ({_title(r)}); "
                            f"is --token a valid token of a customer for dataset {self.dataset}?")
        else:
            try:
                body = r.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                self.report.add("auth.valid_token", FAIL, f"records with the given token: 200 but not a records page ({_snippet(r.text)})")
            else:
                self.report.add("auth.valid_token", PASS, "records with the given token: 200 and a records page")
        if self.report.results[-1].status == FAIL:
            for name in list(HOLDER_CHECKS)[3:]:
                if name not in ("errors.problem_json", "errors.retry_after"):
                    self.report.add(name, SKIP, "the given token does not work (see auth.valid_token)")
            _problem_check(self.report, self.http.answers)
            _retry_after_check(self.report, self.http.throttled)
            return False
        other = "conformance.uncovered-dataset"
        r = self.http.request("records of a dataset the token does not cover", "GET",
                              f"{self.base_url}/datasets/{other}/records", params={"limit": 1}, headers=self.auth())
        if r is None:
            self.report.add("auth.uncovered_dataset", FAIL, self.http.failed(f"records of {other}"))
        elif r.status_code == 403:
            self.report.add("auth.uncovered_dataset", PASS, f"records of {other} with the token: 403")
        elif r.status_code == 404:
            self.report.add("auth.uncovered_dataset", PASS, f"records of {other} with the token: 404 (unknown dataset; 403 also fits)")
        else:
            self.report.add("auth.uncovered_dataset", FAIL,
                            f"records of {other}, which the token does not cover: expected 403, got {r.status_code}")
        return True

    # -- the walk

    def walk(self) -> None:
        cursor: str | None = None
        served_by: dict[str, int] = {}  # next_cursor -> page that handed it out
        position, empty_run = 0, 0
        self.shape_issues: list[str] = []
        self.advance_issue: str | None = None
        for number in range(1, self.max_pages + 1):
            label = f"page {number} (cursor {_short(cursor)})"
            r = self.get(label, self.auth(), cursor=cursor, limit=self.limit)
            if r is None:
                self.walk_stopped = self.http.failed(label)
                return
            if r.status_code != 200:
                self.walk_stopped = f"{label}: HTTP {r.status_code} ({_title(r)})"
                return
            try:
                body = r.json()
            except ValueError:
                self.shape_issues.append(f"{label}: body is not JSON ({_snippet(r.text)})")
                self.walk_stopped = f"{label} is not a records page"
                return
            issues = _page_shape(body)
            if issues:
                self.shape_issues.append(f"{label}: " + ", ".join(issues))
                if not isinstance(body, dict) or not isinstance(body.get("records"), list) or \
                        (body.get("next_cursor") is not None and not isinstance(body.get("next_cursor"), str)):
                    self.walk_stopped = f"{label} is not a records page"
                    return
            records = body["records"]
            next_cursor = body.get("next_cursor") or None
            self.pages.append(_Page(number, cursor, position, records, next_cursor, body.get("total")))
            position += len(records)
            if next_cursor is None:
                self.walk_complete = True
                return
            if next_cursor == cursor:
                self.advance_issue = (f"page {number} (asked with cursor {_short(cursor)}) handed back the same cursor "
                                      f"as next_cursor: the cursor does not advance")
            elif next_cursor in served_by:
                self.advance_issue = (f"page {number}'s next_cursor {_short(next_cursor)} was already handed out by "
                                      f"page {served_by[next_cursor]}: the cursors loop")
            if self.advance_issue:
                self.walk_stopped = f"the walk stopped at page {number} (see pagination.advance)"
                return
            empty_run = 0 if records else empty_run + 1
            if empty_run > MAX_EMPTY_PAGES:
                self.advance_issue = f"{empty_run} empty pages in a row with a next_cursor, up to page {number} (the broker stops at {MAX_EMPTY_PAGES})"
                self.walk_stopped = f"the walk stopped at page {number} (see pagination.advance)"
                return
            served_by[next_cursor] = number
            cursor = next_cursor
        self.walk_stopped = f"no last page within --max-pages {self.max_pages} (limit {self.limit})"

    def check_pages(self) -> None:
        rep, pages = self.report, self.pages
        n_records = sum(len(p.records) for p in pages)
        walked = f"{len(pages)} pages, {n_records} records"
        if self.shape_issues:
            rep.add("pagination.page_shape", FAIL, _more(self.shape_issues, len(self.shape_issues)))
        elif not pages:
            rep.add("pagination.page_shape", FAIL, self.walk_stopped or "no page was served")
        else:
            rep.add("pagination.page_shape", PASS, f"{walked}: every page is a records page")
        over = [f"page {p.number} holds {len(p.records)} records" for p in pages if len(p.records) > self.limit]
        if over:
            rep.add("pagination.limit", FAIL, f"limit={self.limit} not honoured: {_more(over, len(over))}")
        elif pages:
            rep.add("pagination.limit", PASS, f"limit={self.limit} honoured: at most {max(len(p.records) for p in pages)} records a page")
        else:
            rep.add("pagination.limit", SKIP, "no page was served")
        if self.advance_issue:
            rep.add("pagination.advance", FAIL, self.advance_issue)
        elif len(pages) > 1:
            rep.add("pagination.advance", PASS, f"{len(pages) - 1} cursors, each new")
        elif pages and self.walk_complete:
            rep.add("pagination.advance", SKIP, f"a single page for limit={self.limit}: no cursor to follow")
        else:
            rep.add("pagination.advance", SKIP, self.walk_stopped or "no page was served")
        if self.walk_complete:
            rep.add("pagination.last_page", PASS, f"page {pages[-1].number} has no next_cursor: {walked}")
        elif self.advance_issue:
            rep.add("pagination.last_page", SKIP, self.walk_stopped or "")
        else:
            rep.add("pagination.last_page", FAIL, self.walk_stopped or "the walk did not end")
        totals = [(p.number, p.total) for p in pages if isinstance(p.total, int) and not isinstance(p.total, bool)]
        if not totals:
            rep.add("pagination.total", SKIP, "no page carries total")
        elif not self.walk_complete:
            rep.add("pagination.total", SKIP, "the walk did not reach the last page")
        else:
            wrong = [f"page {n} says total {t}" for n, t in totals if t != n_records]
            if wrong:
                rep.add("pagination.total", FAIL, f"the walk found {n_records} records but {_more(wrong, len(wrong))}")
            else:
                rep.add("pagination.total", PASS, f"total {n_records} on {len(totals)} pages equals the records walked")

    def check_stable(self) -> None:
        pages = self.pages
        if not pages:
            self.report.add("pagination.stable", SKIP, "no page was served")
            return
        picks = sorted({0, 1, len(pages) // 2, len(pages) - 1} & set(range(len(pages))))
        diffs = []
        for i in picks:
            p = pages[i]
            label = f"page {p.number} again (cursor {_short(p.cursor)})"
            r = self.get(label, self.auth(), cursor=p.cursor, limit=self.limit)
            if r is None:
                diffs.append(self.http.failed(label))
                continue
            if r.status_code != 200:
                diffs.append(f"{label}: HTTP {r.status_code} ({_title(r)})")
                continue
            try:
                body = r.json()
                records, nc = body["records"], body.get("next_cursor") or None
            except (ValueError, KeyError, TypeError):
                diffs.append(f"{label}: not a records page")
                continue
            if records != p.records:
                first = next((k for k, (a, b) in enumerate(zip(records, p.records)) if a != b), min(len(records), len(p.records)))
                diffs.append(f"{label}: different records ({len(records)} now, {len(p.records)} before; first difference at index {first}, "
                             f"position {p.start + first})")
            elif (nc is None) != (p.next_cursor is None):
                diffs.append(f"{label}: next_cursor {'now absent' if nc is None else 'now present'}, "
                             f"{'present' if p.next_cursor else 'absent'} before")
        if diffs:
            self.report.add("pagination.stable", FAIL, _more(diffs, len(diffs)))
        else:
            self.report.add("pagination.stable", PASS,
                            f"pages {', '.join(str(pages[i].number) for i in picks)} asked again: the same records")

    def check_bad_cursor(self) -> None:
        bad = "conformance~not~a~cursor"
        r = self.get("records with a cursor the holder never issued", self.auth(), cursor=bad, limit=self.limit)
        if r is None:
            self.report.add("pagination.bad_cursor", FAIL, self.http.failed("records with a bad cursor"))
        elif r.status_code == 400:
            self.report.add("pagination.bad_cursor", PASS, f"cursor {bad!r}: 400 ({_title(r)})")
        else:
            self.report.add("pagination.bad_cursor", FAIL, f"cursor {bad!r}, never issued: expected 400, got {r.status_code}")

    # -- records

    def _where(self, position: int) -> str:
        for p in self.pages:
            if p.start <= position < p.start + len(p.records):
                return f"record {position} (page {p.number}, index {position - p.start})"
        return f"record {position}"

    def records(self) -> Iterator[tuple[int, Any]]:
        for p in self.pages:
            for i, rec in enumerate(p.records):
                yield p.start + i, rec

    def check_records(self) -> None:
        rep = self.report
        n = sum(len(p.records) for p in self.pages)
        partial = "" if self.walk_complete else " (the walk did not complete)"
        if self.schema is None:
            rep.add("records.schema", SKIP, self.schema_note)
        elif not n:
            rep.add("records.schema", SKIP, "no record was served")
        else:
            from jsonschema import Draft202012Validator, FormatChecker
            from referencing import Registry

            # an empty registry, as the broker's worker: a schema may refer only inside itself
            validator = Draft202012Validator(self.schema, format_checker=FormatChecker(), registry=Registry())
            bad: list[str] = []
            count = 0
            for pos, rec in self.records():
                err = next(iter(validator.iter_errors(rec)), None)
                if err is not None:
                    count += 1
                    if len(bad) < MAX_LISTED:
                        path = "/" + "/".join(map(str, err.absolute_path))
                        bad.append(f"{self._where(pos)}: {err.message} at {path}")
            if count:
                rep.add("records.schema", FAIL, f"{count} of {n} records break the {self.schema_note} schema{partial}: {_more(bad, count)}")
            else:
                rep.add("records.schema", PASS, f"{n} records valid against the {self.schema_note} schema{partial}")
        unit = expected_unit(self.dataset, self.schema)
        if unit is None:
            why = "not an Enedis dataset type" if not self.dataset.startswith("enedis.") else "its records carry no unit"
            rep.add("records.units", SKIP, f"{self.dataset}: {why}")
        elif not n:
            rep.add("records.units", SKIP, "no record was served")
        else:
            wrong: list[str] = []
            count = 0
            for pos, rec in self.records():
                got = rec.get("unit", "(missing)") if isinstance(rec, dict) else "(not an object)"
                if got != unit:
                    count += 1
                    if len(wrong) < MAX_LISTED:
                        wrong.append(f"{self._where(pos)} has unit {got!r}, expected {unit!r}")
            if count:
                rep.add("records.units", FAIL,
                        f"{count} of {n} records carry a wrong unit ({self.dataset} values are in {unit}){partial}: {_more(wrong, count)}")
            else:
                rep.add("records.units", PASS, f"{n} records carry unit {unit!r}{partial}")


def check_holder(base_url: str, token: str, dataset: str, *, schema: dict[str, Any] | None = None,
                 use_catalogue: bool = True, page_limit: int = DEFAULT_PAGE_LIMIT, max_pages: int = DEFAULT_MAX_PAGES,
                 timeout: float = 10.0, retry_wait: float = DEFAULT_RETRY_WAIT_S, client: httpx.Client | None = None) -> Report:
    """Check a holder's export endpoint (README "The two contracts", holder export) for ``dataset``.

    ``base_url`` is the holder's export base URL; ``token`` a valid bearer token of one customer
    covering ``dataset``. Records are validated against ``schema`` when given, else (with
    ``use_catalogue``) against the catalogue type of ``dataset``. Walks every page with
    ``limit=page_limit``, up to ``max_pages`` pages. A 429/503 is asked again (up to 4 tries) after its
    ``Retry-After`` (at most 5 s) or, without a valid one, ``retry_wait`` seconds. Returns a :class:`Report` whose checks are
    those of :data:`HOLDER_CHECKS` (plus ``reachable`` when the holder cannot be reached); never
    raises for a misbehaving holder.
    """
    report = Report("holder", base_url, dataset)
    if schema is not None:
        note = "given"
    elif use_catalogue and (schema := catalogue_schema(dataset)) is not None:
        note = dataset
    else:
        note = (f"{dataset} is not in the catalogue: pass --dataset-schema-file" if use_catalogue
                else "--no-catalogue and no --dataset-schema-file: records not validated")
    own = client is None
    c = client or httpx.Client(timeout=timeout)
    try:
        _HolderRun(_Http(c, retry_wait), report, base_url, token, dataset, schema, note, page_limit, max_pages).run()
    finally:
        if own:
            c.close()
    return report


# ---- recipient -------------------------------------------------------------------------------------


def sample_records(dataset: str, n: int = 5) -> list[dict[str, Any]]:
    """``n`` made-up records for ``dataset``: valid Enedis daily or load-curve records for those types,
    else generic objects (pass real ones with ``--records-file`` to a recipient that validates)."""
    from shared.catalogue import enedis_v5

    if dataset == enedis_v5.DAILY_ID:
        return [{"usage_point_id": "00000000000000", "date": f"2000-01-{i + 1:02d}", "value": str(1000 + i),
                 "unit": "Wh", "measuring_period": "P1D"} for i in range(n)]
    if dataset == enedis_v5.LOAD_CURVE_ID:
        return [{"usage_point_id": "00000000000000", "date": f"2000-01-01 {(i + 1) // 2:02d}:{30 * ((i + 1) % 2):02d}:00",
                 "value": str(500 + i), "unit": "W", "interval_length": "PT30M"} for i in range(n)]
    return [{"conformance": True, "n": i} for i in range(n)]


def load_records_file(path: Path) -> list[dict[str, Any]]:
    """Records from ``path``: a real-format file the catalogue reads, or a JSON array of objects.

    Raises ``ValueError`` when it is neither, or holds fewer than two records.
    """
    from shared.catalogue import UnknownFormat, parse_file

    try:
        records: Any = parse_file(path).records
    except UnknownFormat:
        try:
            records = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: neither a format of the catalogue nor JSON ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: not a JSON array of objects")
    if len(records) < 2:
        raise ValueError(f"{path}: at least 2 records are needed (two batches)")
    return records


class _RecipientRun:
    def __init__(self, http: _Http, report: Report, base_url: str, token: str, dataset: str,
                 records: list[dict[str, Any]], transfer_id: str) -> None:
        self.http, self.report = http, report
        self.base = base_url.rstrip("/")
        self.token, self.dataset = token, dataset
        cut = max(1, (len(records) + 1) // 2)
        self.batch1, self.batch2 = records[:cut], records[cut:]
        self.tid = transfer_id
        self.probe = f"conformance-{uuid.uuid4()}"
        self.full: list[str] = []  # 413/507 observed

    def put(self, label: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response | None:
        r = self.http.request(label, "PUT", f"{self.base}{path}", json=body, headers=headers)
        if r is not None and r.status_code in (413, 507):
            self.full.append(f"{label} -> {r.status_code} ({_title(r)})")
        return r

    def batch(self, label: str, tid: str, n: int, records: list[dict[str, Any]], *, token: str | None = "",
              key: str | None = "") -> httpx.Response | None:
        headers = {}
        tok = self.token if token == "" else token
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        k = f"{tid}:{n}" if key == "" else key
        if k is not None:
            headers["Idempotency-Key"] = k
        return self.put(label, f"/transfers/{tid}/batches/{n}", {"dataset": self.dataset, "records": records}, headers)

    def manifest(self, label: str, tid: str, records: int, sha256: str, token: str | None = "") -> httpx.Response | None:
        tok = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {tok}"} if tok is not None else {}
        return self.put(label, f"/transfers/{tid}/manifest", {"dataset": self.dataset, "records": records, "sha256": sha256}, headers)

    def expect(self, name: str, probes: list[tuple[str, httpx.Response | None]], status: int) -> None:
        wrong = []
        for label, r in probes:
            if r is None:
                wrong.append(self.http.failed(label))
            elif r.status_code != status:
                wrong.append(f"{label}: expected {status}, got {r.status_code}"
                             + (" (accepted without a valid token)" if status == 401 and r.is_success else ""))
        if wrong:
            self.report.add(name, FAIL, "; ".join(wrong))
        else:
            self.report.add(name, PASS, "; ".join(f"{label}: {status}" for label, _ in probes))

    def run(self) -> None:
        from shared.canonical import RecordDigest

        rep = self.report
        first = self.batch("batch 1 without a token", self.probe, 1, self.batch1, token=None)
        if first is None:
            rep.add("reachable", FAIL, f"cannot reach {self.base}: {self.http.last_error}")
            for name in RECIPIENT_CHECKS:
                rep.add(name, SKIP, "the recipient could not be reached")
            return
        zero = "0" * 64
        self.expect("auth.no_token", [
            ("batch without a token", first),
            ("manifest without a token", self.manifest("manifest without a token", self.probe, 0, zero, token=None)),
        ], 401)
        wrong = f"conformance-wrong-{secrets.token_urlsafe(18)}"
        self.expect("auth.wrong_token", [
            ("batch with a wrong token", self.batch("batch with a wrong token", self.probe, 1, self.batch1, token=wrong)),
            ("manifest with a wrong token", self.manifest("manifest with a wrong token", self.probe, 0, zero, token=wrong)),
        ], 401)
        self.expect("idempotency.bad_key", [
            (f"batch 1 with Idempotency-Key {self.probe}:2",
             self.batch(f"batch 1 with Idempotency-Key {self.probe}:2", self.probe, 1, self.batch1, key=f"{self.probe}:2")),
            ("batch 1 without Idempotency-Key", self.batch("batch 1 without Idempotency-Key", self.probe, 1, self.batch1, key=None)),
        ], 400)

        b1 = self.batch("batch 1", self.tid, 1, self.batch1)
        b1_again = self.batch("batch 1 again", self.tid, 1, self.batch1)
        b2 = self.batch("batch 2", self.tid, 2, self.batch2)
        stored = [("batch 1", b1, len(self.batch1)), ("batch 2", b2, len(self.batch2))]
        bad = [self.http.failed(label) if r is None else
               f"{label} ({k} records): expected 201 or 200, got {r.status_code} ({_title(r)})"
               + (": the recipient is full, so storing could not be checked" if r.status_code in (413, 507) else "")
               for label, r, k in stored if r is None or r.status_code not in (200, 201)]
        if bad:
            rep.add("batches.store", FAIL, "; ".join(bad))
        else:
            rep.add("batches.store", PASS, "; ".join(f"{label} ({k} records): {r.status_code}" for label, r, k in stored if r))
        stored_ok = not bad

        digest = RecordDigest()
        digest.update(self.batch1 + self.batch2)
        expected_n, expected_sha = digest.count, digest.hexdigest()
        m = self.manifest("manifest of batches 1+2", self.tid, expected_n, expected_sha) if stored_ok else None
        body = _json(m)
        matched = m is not None and m.status_code == 200 and body.get("match") is True
        held = body.get("records")

        # batches.duplicate: acknowledged, and stored once (shown by the manifest)
        if b1_again is None:
            rep.add("batches.duplicate", FAIL, self.http.failed("batch 1 again"))
        elif b1_again.status_code not in (200, 201):
            rep.add("batches.duplicate", FAIL, f"batch 1 again (same Idempotency-Key): expected 200, got {b1_again.status_code} ({_title(b1_again)})")
        elif not stored_ok:
            rep.add("batches.duplicate", SKIP, f"batch 1 again: {b1_again.status_code}; storing once not verifiable (see batches.store)")
        elif matched:
            rep.add("batches.duplicate", PASS,
                    f"batch 1 again: {b1_again.status_code}, stored once (the manifest of batches 1+2, {expected_n} records, matches)")
        elif held == 2 * len(self.batch1) + len(self.batch2):
            rep.add("batches.duplicate", FAIL,
                    f"batch 1 sent again with the same Idempotency-Key was acknowledged {b1_again.status_code} and stored twice: "
                    f"the recipient holds {held} records, expected {expected_n} (batch 1: {len(self.batch1)}, batch 2: {len(self.batch2)})")
        else:
            rep.add("batches.duplicate", FAIL,
                    f"batch 1 again: {b1_again.status_code}, but the manifest of batches 1+2 was not confirmed, so storing once is not shown "
                    "(see manifest.match)")

        if not stored_ok:
            rep.add("manifest.match", SKIP, "the batches were not stored (see batches.store)")
            rep.add("manifest.mismatch", SKIP, "the batches were not stored (see batches.store)")
        else:
            if m is None:
                rep.add("manifest.match", FAIL, self.http.failed("manifest of batches 1+2"))
            elif matched:
                rep.add("manifest.match", PASS, f"manifest of batches 1+2 ({expected_n} records, sha256 {expected_sha[:12]}…): 200, match true")
            else:
                holds = (f": the recipient says it holds {held} records (sha256 {str(body.get('sha256'))[:12]}…)"
                         if held is not None else "")
                rep.add("manifest.match", FAIL,
                        f"manifest of batches 1+2 ({expected_n} records, sha256 {expected_sha[:12]}…): expected 200 with match true, "
                        f"got {m.status_code} with match {json.dumps(body.get('match'))}{holds}")
            swapped = RecordDigest()
            swapped.update(self.batch2 + self.batch1)
            wrongs = [
                ("manifest with the records in another order", expected_n, swapped.hexdigest()),
                ("manifest with one record too many", expected_n + 1, expected_sha),
            ]
            problems = []
            for label, n, sha in wrongs:
                r = self.manifest(label, self.tid, n, sha)
                if r is None:
                    problems.append(self.http.failed(label))
                    continue
                b = _json(r)
                if r.status_code != 409 or b.get("match") is not False:
                    verdict = " (the recipient confirmed a wrong manifest)" if r.status_code == 200 else ""
                    problems.append(f"{label}: expected 409 with match false, got {r.status_code} with match {json.dumps(b.get('match'))}{verdict}")
            if problems:
                rep.add("manifest.mismatch", FAIL, "; ".join(problems))
            else:
                rep.add("manifest.mismatch", PASS, "; ".join(f"{label}: 409, match false" for label, _, _ in wrongs))

        # the manifest's 409 is a ManifestAck by contract, not a problem
        answers = [(label, r) for label, r in self.http.answers if not (r.status_code == 409 and "manifest" in label)]
        _problem_check(rep, answers)
        if self.full:
            rep.add("capacity.full", PASS, f"destination full observed: {_more(self.full, len(self.full))}")
        else:
            rep.add("capacity.full", SKIP, "no 413 or 507 was observed (optional)")


def _json(r: httpx.Response | None) -> dict[str, Any]:
    if r is None:
        return {}
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def check_recipient(base_url: str, token: str, dataset: str = "enedis.v5.daily_consumption", *,
                    records: list[dict[str, Any]] | None = None, transfer_id: str | None = None,
                    timeout: float = 10.0, retry_wait: float = DEFAULT_RETRY_WAIT_S, client: httpx.Client | None = None) -> Report:
    """Check a recipient's import endpoint (README "The two contracts", recipient import).

    ``base_url`` is the recipient's import base URL, ``token`` the broker's bearer token there.
    ``records`` (at least 2; default :func:`sample_records`) are split into batch 1 and batch 2 of
    a fresh transfer ``transfer_id`` (default ``conformance-<uuid>``); negative probes use a second
    fresh id. Returns a :class:`Report` with the checks of :data:`RECIPIENT_CHECKS` (plus
    ``reachable`` when the recipient cannot be reached); never raises for a misbehaving recipient.
    Raises ``ValueError`` for fewer than 2 records.
    """
    records = list(records if records is not None else sample_records(dataset))
    if len(records) < 2:
        raise ValueError("at least 2 records are needed (two batches)")
    tid = transfer_id or f"conformance-{uuid.uuid4()}"
    report = Report("recipient", base_url, dataset)
    own = client is None
    c = client or httpx.Client(timeout=timeout)
    try:
        run = _RecipientRun(_Http(c, retry_wait), report, base_url, token, dataset, records, tid)
        report.notes.append(f"transfer id {tid} (batches {len(run.batch1)} + {len(run.batch2)} records); probes on {run.probe}")
        run.run()
    finally:
        if own:
            c.close()
    return report


# ---- output and the command line ------------------------------------------------------------------

_STYLE = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}


def render(report: Report, console: Console) -> None:
    """Print ``report``: a heading, one line per check (status, name, message), and a summary line."""
    what = "Holder export" if report.role == "holder" else "Recipient import"
    console.print(f"[bold]{what} conformance[/bold]: {escape(report.base_url)}  dataset {escape(report.dataset)}")
    for note in report.notes:
        console.print(f"  {escape(note)}", style="dim")
    width = max((len(r.name) for r in report.results), default=10)
    for r in report.results:
        console.print(f"[{_STYLE[r.status]}]{r.status}[/]  {r.name.ljust(width)}  {escape(r.message)}")
    counts = {s: sum(1 for r in report.results if r.status == s) for s in (PASS, FAIL, SKIP)}
    verdict = "[green]conformant[/green]" if report.ok else "[bold red]NOT conformant[/bold red]"
    console.print(f"{len(report.results)} checks: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped: {verdict}")


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Check a data holder's export or a data recipient's import endpoint against the broker's contracts.")


def _finish(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
    else:
        render(report, Console(highlight=False, soft_wrap=True))
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def holder(
    base_url: str = typer.Argument(..., help="the holder's export base URL (where /datasets/{dataset}/records lives)"),
    token: str = typer.Option(..., envvar=TOKEN_ENV, help="a valid bearer token of one customer, covering --dataset"),
    dataset: str = typer.Option(..., help="the dataset id to walk, e.g. enedis.v5.daily_consumption"),
    dataset_schema_file: Path | None = typer.Option(None, help="a JSON Schema (or dataset type with `schema`) for one record"),
    catalogue: bool = typer.Option(True, help="validate records against the catalogue type of --dataset (when no schema file)"),
    page_limit: int = typer.Option(DEFAULT_PAGE_LIMIT, min=1, max=1000, help="`limit` asked for each page"),
    max_pages: int = typer.Option(DEFAULT_MAX_PAGES, min=2, help="stop walking after this many pages (a FAIL)"),
    timeout: float = typer.Option(10.0, min=0.1, help="seconds per HTTP request"),
    retry_wait: float = typer.Option(DEFAULT_RETRY_WAIT_S, min=0, help="seconds to wait after a 429/503 without a valid Retry-After"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check a data holder's export endpoint (holder-export.openapi.json). Exit 1 if a check fails."""
    schema = None
    if dataset_schema_file is not None:
        try:
            schema = load_schema_file(dataset_schema_file)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--dataset-schema-file") from None
    report = check_holder(base_url, token, dataset, schema=schema, use_catalogue=catalogue, page_limit=page_limit,
                          max_pages=max_pages, timeout=timeout, retry_wait=retry_wait)
    _finish(report, as_json)


@app.command()
def recipient(
    base_url: str = typer.Argument(..., help="the recipient's import base URL (where /transfers/... lives)"),
    token: str = typer.Option(..., envvar=TOKEN_ENV, help="the broker's bearer token at this recipient"),
    dataset: str = typer.Option("enedis.v5.daily_consumption", help="the dataset id the test batches claim"),
    records_file: Path | None = typer.Option(None, help="records to send: a real-format file the catalogue reads, or a JSON array"),
    timeout: float = typer.Option(10.0, min=0.1, help="seconds per HTTP request"),
    retry_wait: float = typer.Option(DEFAULT_RETRY_WAIT_S, min=0, help="seconds to wait after a 429/503 without a valid Retry-After"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check a data recipient's import endpoint (recipient-import.openapi.json) with a fresh transfer id. Exit 1 if a check fails."""
    records = None
    if records_file is not None:
        try:
            records = load_records_file(records_file)[:6]
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--records-file") from None
    report = check_recipient(base_url, token, dataset, records=records, timeout=timeout, retry_wait=retry_wait)
    _finish(report, as_json)


if __name__ == "__main__":
    app()
