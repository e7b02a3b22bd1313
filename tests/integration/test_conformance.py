"""The conformance kit (``shared.conformance``) against the reference participants and broken ones.

Every participant runs in uvicorn on a free port, in a thread of this process; the reference
holder serves the real Enedis v5 daily file. The reference holder and cloud pass every check;
each broken participant of ``tests/participants_broken.py`` fails, and the report names the check
and the reason.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from examples.cloud.app import create_app as create_cloud
from shared.conformance import app as cli
from shared.settings import DEV_RECIPIENT_TOKEN
from tests import participants_broken as broken

REPO = Path(__file__).resolve().parents[2]
DATASET = broken.HOLDER_DATASET


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port in a thread; yield its base URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def holder_token(url: str) -> str:
    r = httpx.post(f"{url}/dev/tokens", json={"customer_id": broken.HOLDER_CUSTOMER, "datasets": [DATASET]}, timeout=10)
    r.raise_for_status()
    return str(r.json()["access_token"])


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def lines(output: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, message), from the report's check lines."""
    out = {}
    for line in output.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP)\s+(\S+)\s+(.*)$", line)
        if m:
            out[m.group(2)] = (m.group(1), m.group(3))
    return out


@pytest.fixture(scope="module")
def reference_holder() -> Iterator[tuple[str, str]]:
    with serve(broken.reference_holder()) as url:
        yield url, holder_token(url)


@pytest.fixture(scope="module")
def reference_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(create_cloud(db_path=tmp_path_factory.mktemp("cloud") / "cloud.db")) as url:
        yield url


# ---- the reference participants pass ------------------------------------------------------------


def test_reference_holder_passes_every_check(reference_holder: tuple[str, str]) -> None:
    url, token = reference_holder
    # the real command line, as a user runs it (token from the environment)
    proc = subprocess.run([sys.executable, "-m", "shared.conformance", "holder", url, "--dataset", DATASET],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PORTABILITY_CONFORMANCE_TOKEN": token, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = lines(proc.stdout)
    assert not [c for c, (s, _) in checks.items() if s == "FAIL"]
    for name in ("auth.no_token", "auth.forged_token", "auth.valid_token", "auth.uncovered_dataset", "pagination.page_shape",
                 "pagination.limit", "pagination.advance", "pagination.last_page", "pagination.stable", "pagination.total",
                 "pagination.bad_cursor", "records.schema", "records.units", "errors.problem_json"):
        assert checks[name][0] == "PASS", (name, checks[name])
    assert checks["pagination.last_page"][1] == "page 37 has no next_cursor: 37 pages, 365 records"
    assert checks["records.units"][1] == "365 records carry unit 'Wh'"
    assert checks["errors.retry_after"] == ("SKIP", "no 429 or 503 was observed during the run")
    assert "0 failed" in proc.stdout and "conformant" in proc.stdout


def test_reference_holder_json_report_and_schema_file(reference_holder: tuple[str, str], tmp_path: Path) -> None:
    url, token = reference_holder
    from shared.catalogue import DATASET_TYPES

    schema_file = tmp_path / "daily.json"
    schema_file.write_text(json.dumps(DATASET_TYPES[DATASET].as_dict()), "utf-8")  # a dataset type holding its schema
    code, out = run_cli("holder", url, "--token", token, "--dataset", DATASET, "--dataset-schema-file", str(schema_file),
                        "--page-limit", "50", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["records.schema"]["message"] == "365 records valid against the given schema"
    assert by_name["pagination.limit"]["message"] == "limit=50 honoured: at most 50 records a page"


def test_throttling_holder_with_retry_after_passes() -> None:
    with serve(broken.holder_throttling(retry_after=True)) as url:
        code, out = run_cli("holder", url, "--token", holder_token(url), "--dataset", DATASET)
    assert code == 0, out
    status, message = lines(out)["errors.retry_after"]
    assert status == "PASS" and message.startswith("all ") and "carry a valid Retry-After ('0')" in message


def test_reference_cloud_passes_every_check(reference_cloud: str) -> None:
    code, out = run_cli("recipient", reference_cloud, "--token", DEV_RECIPIENT_TOKEN)
    assert code == 0, out
    checks = lines(out)
    for name in ("auth.no_token", "auth.wrong_token", "idempotency.bad_key", "batches.store", "batches.duplicate",
                 "manifest.match", "manifest.mismatch", "errors.problem_json"):
        assert checks[name][0] == "PASS", (name, checks[name])
    assert checks["batches.store"][1] == "batch 1 (3 records): 201; batch 2 (2 records): 201"
    assert checks["batches.duplicate"][1].startswith("batch 1 again: 200, stored once")
    assert checks["capacity.full"] == ("SKIP", "no 413 or 507 was observed (optional)")
    assert re.search(r"transfer id conformance-[0-9a-f-]{36} ", out)


def test_full_cloud_reports_capacity(tmp_path: Path) -> None:
    app = create_cloud(db_path=tmp_path / "full.db")
    with serve(app) as url:
        httpx.put(f"{url}/dev/faults", json={"capacity_records": 0}, timeout=10).raise_for_status()
        code, out = run_cli("recipient", url, "--token", DEV_RECIPIENT_TOKEN)
    checks = lines(out)
    assert checks["capacity.full"][0] == "PASS" and "batch 1 -> 507 ('Insufficient Storage')" in checks["capacity.full"][1]
    assert checks["batches.store"][0] == "FAIL" and code == 1
    assert "got 507 ('Insufficient Storage'): the recipient is full, so storing could not be checked" in checks["batches.store"][1]


# ---- broken holders fail, naming the check and the reason -----------------------------------------

BROKEN_HOLDERS: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    # name: (factory, {failing check: the reason its message gives})
    "no_auth": (broken.holder_without_auth, {
        "auth.no_token": "records without a token: expected 401, got 200 (the holder served records without a valid token)",
        "auth.forged_token": "records with a forged token: expected 401, got 200 (the holder served records without a valid token)",
    }),
    "repeating_cursor": (broken.holder_repeating_cursor, {
        "pagination.advance": "page 2 (asked with cursor 'eyJjIjoiMDEyMzQ1Njc4OTA…') handed back the same cursor as next_cursor: "
                              "the cursor does not advance",
    }),
    "wrong_units": (broken.holder_wrong_units, {
        "records.units": "265 of 365 records carry a wrong unit (enedis.v5.daily_consumption values are in Wh): "
                         "record 100 (page 11, index 0) has unit 'kWh', expected 'Wh'; "
                         "record 101 (page 11, index 1) has unit 'kWh', expected 'Wh'",
        "records.schema": "265 of 365 records break the enedis.v5.daily_consumption schema: "
                          "record 100 (page 11, index 0): 'Wh' was expected at /unit",
    }),
    "plain_errors": (broken.holder_plain_errors, {
        "errors.problem_json": "records without a token -> 401: content-type 'application/json', not application/problem+json, "
                               "body lacks 'type', 'title', 'status'",
    }),
    "ignoring_limit": (broken.holder_ignoring_limit, {
        "pagination.limit": "limit=10 not honoured: page 1 holds 100 records; page 2 holds 100 records",
    }),
    "429_without_retry_after": (lambda: broken.holder_throttling(retry_after=False), {
        "errors.retry_after": "-> 429 without Retry-After",
    }),
}


@pytest.mark.parametrize("name", sorted(BROKEN_HOLDERS))
def test_broken_holder_fails(name: str) -> None:
    factory, failing = BROKEN_HOLDERS[name]
    with serve(factory()) as url:
        code, out = run_cli("holder", url, "--token", holder_token(url), "--dataset", DATASET, "--retry-wait", "0.01")
    assert code == 1, out
    checks = lines(out)
    assert {c for c, (s, _) in checks.items() if s == "FAIL"} == set(failing), out
    for check, reason in failing.items():
        assert reason in checks[check][1], (check, checks[check][1])
    assert re.search(r"\d+ checks: \d+ passed, [1-9]\d* failed, \d+ skipped: NOT conformant", out)


def test_repeating_cursor_skips_what_the_walk_could_not_reach() -> None:
    with serve(broken.holder_repeating_cursor()) as url:
        code, out = run_cli("holder", url, "--token", holder_token(url), "--dataset", DATASET)
    checks = lines(out)
    assert code == 1
    assert checks["pagination.last_page"] == ("SKIP", "the walk stopped at page 2 (see pagination.advance)")
    assert checks["records.schema"] == ("PASS", "20 records valid against the enedis.v5.daily_consumption schema (the walk did not complete)")


def test_wrong_token_and_unreachable_holder() -> None:
    with serve(broken.reference_holder()) as url:
        code, out = run_cli("holder", url, "--token", "not-a-token", "--dataset", DATASET)
    assert code == 1
    status, message = lines(out)["auth.valid_token"]
    assert status == "FAIL" and message.startswith("records with the given token: expected 200, got 401 ('Unauthorized')")
    assert lines(out)["pagination.limit"][0] == "SKIP"

    code, out = run_cli("holder", url, "--token", "t", "--dataset", DATASET, "--timeout", "2")  # the server is gone
    assert code == 1 and lines(out)["reachable"][0] == "FAIL" and f"cannot reach {url}/datasets/{DATASET}/records" in out


def test_bad_schema_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": 12}), "utf-8")
    code, out = run_cli("holder", "http://127.0.0.1:9", "--token", "t", "--dataset", DATASET, "--dataset-schema-file", str(bad))
    assert code == 2 and "not a valid JSON Schema 2020-12" in re.sub(r"[\s│]+", " ", out)


# ---- broken clouds ------------------------------------------------------------------------------

BROKEN_CLOUDS: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    "no_dedup": (broken.cloud_without_dedup, {
        "batches.duplicate": "batch 1 sent again with the same Idempotency-Key was acknowledged 201 and stored twice: "
                             "the recipient holds 8 records, expected 5 (batch 1: 3, batch 2: 2)",
        "manifest.match": "expected 200 with match true, got 409 with match false: the recipient says it holds 8 records",
    }),
    "confirms_any_manifest": (broken.cloud_confirming_any_manifest, {
        "manifest.mismatch": "manifest with the records in another order: expected 409 with match false, got 200 with match true "
                             "(the recipient confirmed a wrong manifest); manifest with one record too many: expected 409",
    }),
}


@pytest.mark.parametrize("name", sorted(BROKEN_CLOUDS))
def test_broken_cloud_fails(name: str) -> None:
    factory, failing = BROKEN_CLOUDS[name]
    with serve(factory()) as url:
        code, out = run_cli("recipient", url, "--token", DEV_RECIPIENT_TOKEN)
    assert code == 1, out
    checks = lines(out)
    assert {c for c, (s, _) in checks.items() if s == "FAIL"} == set(failing), out
    for check, reason in failing.items():
        assert reason in checks[check][1], (check, checks[check][1])


def test_cloud_with_a_wrong_broker_token_fails_storing(reference_cloud: str) -> None:
    code, out = run_cli("recipient", reference_cloud, "--token", "not-the-broker-token")
    checks = lines(out)
    assert code == 1
    assert checks["batches.store"][0] == "FAIL" and "batch 1 (3 records): expected 201 or 200, got 401 ('Unauthorized')" in checks["batches.store"][1]
    assert checks["manifest.match"] == ("SKIP", "the batches were not stored (see batches.store)")
