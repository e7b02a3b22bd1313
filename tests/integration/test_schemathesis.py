"""Bad input over HTTP: schemathesis against the OpenAPI document of each service and of the two
reference participants, on a broker of its own (nothing shared with the other test modules, so
even the destructive operations, such as suspending a participant or revoking a consent, run).

For every operation, valid and invalid requests (schemathesis' positive and negative generation)
are sent with the credentials the operation expects (the development admin at the broker, a
holder access token at the holder, the broker's or the owner's token at the cloud), and again
without any. Every response must be documented: no 5xx, a documented status code, the documented
content type and a body that matches the documented schema. Half of the valid requests name
things that exist (the demo participants, a dataset, a consent and a transfer of a completed
transfer), so that the fuzzing reaches past the 404s.

Excluded: the reference participants' ``PUT /dev/faults``, which injects 5xx answers and delays on
purpose.

Deterministic (``derandomize``), no shrinking, a few dozen examples per operation: about a minute.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from examples.cloud.app import DEV_OWNER_TOKEN
from shared.catalogue import parse_file
from shared.demo import CLOUD_ID, DATA_SUBJECT, HOLDER_ID, client_as, consented_transfer, credentials
from shared.launcher import Stack
from shared.settings import DEV_RECIPIENT_TOKEN, Settings

from ..conftest import REAL_ENEDIS_FILES, running_stack

pytestmark = pytest.mark.e2e

SERVICES = ("registry", "consent", "transfer", "holder", "cloud")
BROKER = ("registry", "consent", "transfer")
# (method, path) never called: they break the participant on purpose (injected 5xx and delays)
EXCLUDED = {("PUT", "/dev/faults")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = {True: 25, False: 8}  # per operation and generation mode; with credentials / without
LOAD_CURVE = "enedis_v5_consumption_load_curve_myelectricaldata.json"


@dataclass
class Known:
    """Things that exist on the broker under test, to put in the path of half of the valid requests."""

    consent_id: str
    transfer_id: str
    dataset: str
    customer: str

    def path_values(self) -> dict[str, list[str]]:
        return {"participant_id": [HOLDER_ID, CLOUD_ID], "consent_id": [self.consent_id], "transfer_id": [self.transfer_id],
                "dataset_id": [self.dataset], "dataset": [self.dataset], "data_subject": [DATA_SUBJECT]}


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[tuple[Stack, Known]]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    with running_stack(data_dir, [real_dir / name for name in REAL_ENEDIS_FILES]) as s:
        parsed = parse_file(real_dir / LOAD_CURVE)
        with httpx.Client(timeout=30) as c:
            done = consented_transfer(c, s, customer=parsed.subject_key, dataset=parsed.dataset_id)
        assert done["status"] == "completed", done["transfer"]
        yield s, Known(done["consent_id"], done["transfer_id"], parsed.dataset_id, parsed.subject_key)


def _holder_token(stack: Stack, known: Known) -> str:
    with httpx.Client(timeout=10) as c:
        r = c.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": known.customer, "datasets": [known.dataset],
                                                                "expires_in": 3600})
        return str(r.raise_for_status().json()["access_token"])


def _auth(stack: Stack, known: Known, service: str) -> Callable[[str], dict[str, str]]:
    """The headers an operation (by path) of ``service`` expects."""
    if service in BROKER:
        source = credentials(stack, "admin").source()
        return lambda path: {"Authorization": f"Bearer {source.token()}"}
    if service == "holder":
        token = _holder_token(stack, known)
        return lambda path: {"Authorization": f"Bearer {token}"}
    return lambda path: {"Authorization": f"Bearer {DEV_OWNER_TOKEN if path.endswith('/records') else DEV_RECIPIENT_TOKEN}"}


def _point_at_known(case: Any, known: Known, n: int) -> None:
    """Put existing ids in the path of a valid request (and, at the cloud, the Idempotency-Key it asks for)."""
    values = known.path_values()
    for name in list(case.path_parameters or {}):
        if name in values:
            case.path_parameters[name] = values[name][n % len(values[name])]
    if case.operation.path == "/transfers/{transfer_id}/batches/{n}" and case.headers is not None:
        case.headers["Idempotency-Key"] = f"{case.path_parameters['transfer_id']}:{case.path_parameters['n']}"


@pytest.mark.parametrize("authorised", [True, False], ids=["credentials", "anonymous"])
@pytest.mark.parametrize("service", SERVICES)
def test_every_response_is_documented(api_stack: tuple[Stack, Known], service: str, authorised: bool) -> None:
    stack, known = api_stack
    base = stack.url(service)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    headers_for = _auth(stack, known, service) if authorised else (lambda path: {})
    failures: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        operations += 1
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=2 * MAX_EXAMPLES[authorised], derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: Any) -> None:
            n = sum(statuses.values())
            if case.meta is not None and case.meta.generation.mode.is_positive and n % 2:
                _point_at_known(case, known, n // 2)
            headers = headers_for(operation.path)
            try:
                response = case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=30)
                statuses[response.status_code] += 1
            except (AssertionError, FailureGroup) as exc:
                statuses[0] += 1
                for failure in exc.exceptions if isinstance(exc, FailureGroup) else [exc]:
                    key = f"{operation.label}: {getattr(failure, 'title', type(failure).__name__)}"
                    failures.setdefault(key, f"{failure}\n{case.as_curl_command(headers=headers, base_url=base)}")

        run()
    for name, p in stack.procs.items():
        assert p.alive(), f"{name} died:\n{p.log_tail()}"
    print(f"\n{service} ({'credentials' if authorised else 'anonymous'}): {operations} operations, {sum(statuses.values())} "
          f"calls in {time.monotonic() - started:.1f} s; statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    if authorised:  # the credentials work: some requests got through
        assert sum(v for k, v in statuses.items() if 200 <= k < 300) > 0


@pytest.mark.parametrize("service", BROKER)
def test_bodies_over_the_limit_are_refused(api_stack: tuple[Stack, Known], service: str) -> None:
    """A body over MAX_REQUEST_BYTES is a 413 problem, announced or streamed (chunked, no Content-Length)."""
    stack, _ = api_stack
    path = {"registry": "/participants", "consent": "/consents", "transfer": "/transfers"}[service]
    body = b'{"x": "' + b"a" * Settings().max_request_bytes + b'"}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    with client_as(stack, "admin") as c:
        for content in (body, chunks()):
            r = c.post(f"{stack.url(service)}{path}", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json", r.text[:300]


def test_page_sizes_are_bounded(api_stack: tuple[Stack, Known]) -> None:
    """Every paged listing documents (and enforces) a largest page."""
    stack, _ = api_stack
    seen = 0
    with client_as(stack, "admin") as c:
        for service in SERVICES:
            doc = c.get(f"{stack.url(service)}/openapi.json").json()
            for path, item in doc["paths"].items():
                for method, op in item.items():
                    for p in op.get("parameters", []):
                        if p["in"] == "query" and p["name"] in ("limit", "page_size", "per_page"):
                            seen += 1
                            assert "maximum" in p["schema"], (service, method, path, p)
                            if method == "get" and "{" not in path:
                                r = c.get(f"{stack.url(service)}{path}", params={p["name"]: p["schema"]["maximum"] + 1})
                                assert r.status_code in (401, 422), (service, path, r.status_code)
    assert seen >= 5
