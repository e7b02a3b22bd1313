"""Who may call what: every route of every service, with every role and with no token, against one table;
and tenant isolation between two holders and two clouds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.authclient import dev_participant_key, public_jwks
from shared.catalogue import DATASET_TYPES
from shared.demo import CLOUD_ID, HOLDER_ID, client_as, register_participants
from shared.launcher import Stack

pytestmark = pytest.mark.e2e

DAILY = "enedis.v5.daily_consumption"
CUSTOMER = "01234567890"
ROLES = ("none", "holder", "recipient", "regulator", "admin")
OK, DENIED, NO_TOKEN = "ok", "403", "401"

PUBLIC = dict.fromkeys(ROLES, OK)
PARTY = {"none": NO_TOKEN, "holder": OK, "recipient": OK, "regulator": DENIED, "admin": OK}
RECIPIENT_ONLY = {"none": NO_TOKEN, "holder": DENIED, "recipient": OK, "regulator": DENIED, "admin": OK}
ADMIN_ONLY = {"none": NO_TOKEN, "holder": DENIED, "recipient": DENIED, "regulator": DENIED, "admin": OK}
REGULATOR = {"none": NO_TOKEN, "holder": DENIED, "recipient": DENIED, "regulator": OK, "admin": OK}

# (service, method, path) -> outcome by role. A route missing here fails the test.
TABLE: dict[tuple[str, str, str], dict[str, str]] = {
    ("registry", "GET", "/healthz"): PUBLIC,
    ("registry", "GET", "/readyz"): PUBLIC,
    ("registry", "GET", "/metrics"): REGULATOR,
    ("registry", "POST", "/participants"): ADMIN_ONLY,
    ("registry", "GET", "/participants"): PUBLIC,
    ("registry", "PUT", "/participants/{participant_id}"): ADMIN_ONLY,
    ("registry", "GET", "/participants/{participant_id}"): PUBLIC,
    ("registry", "GET", "/changes"): ADMIN_ONLY,
    ("registry", "POST", "/participants/{participant_id}/status"): ADMIN_ONLY,
    ("registry", "GET", "/datasets"): PUBLIC,
    ("registry", "POST", "/datasets"): ADMIN_ONLY,
    ("registry", "GET", "/datasets/{dataset_id}"): PUBLIC,
    # the authorization server authenticates its clients itself (private_key_jwt), not with bearer tokens
    ("registry", "POST", "/oauth/token"): PUBLIC,
    ("registry", "POST", "/oauth/introspect"): PUBLIC,
    ("registry", "POST", "/oauth/revoke"): PUBLIC,
    ("registry", "GET", "/oauth/jwks"): PUBLIC,
    ("registry", "GET", "/.well-known/oauth-authorization-server"): PUBLIC,
    ("consent", "GET", "/healthz"): PUBLIC,
    ("consent", "GET", "/readyz"): PUBLIC,
    ("consent", "GET", "/metrics"): REGULATOR,
    ("consent", "GET", "/.well-known/jwks.json"): PUBLIC,
    ("consent", "POST", "/consents"): RECIPIENT_ONLY,
    ("consent", "GET", "/consents"): PARTY,
    ("consent", "GET", "/consents/{consent_id}"): PARTY,
    ("consent", "POST", "/consents/{consent_id}/authorise"): ADMIN_ONLY,  # development only
    ("consent", "POST", "/consents/{consent_id}/reject"): PARTY,
    ("consent", "POST", "/consents/{consent_id}/revoke"): PARTY,
    ("consent", "POST", "/consents/{consent_id}/amend"): RECIPIENT_ONLY,
    ("consent", "GET", "/consents/{consent_id}/receipt"): PARTY,
    ("consent", "GET", "/consents/{consent_id}/receipt/proof"): PARTY,
    ("consent", "POST", "/consents/{consent_id}/holder-check"): PARTY,
    ("consent", "DELETE", "/subjects/{data_subject}"): ADMIN_ONLY,
    # what a person may check about their own receipt needs no account: checkpoints, keys and proofs
    ("consent", "GET", "/log/checkpoint"): PUBLIC,
    ("consent", "GET", "/log/public-key"): PUBLIC,
    ("consent", "GET", "/log/proof/inclusion"): PUBLIC,
    ("consent", "GET", "/log/proof/consistency"): PUBLIC,
    ("consent", "GET", "/log/entries"): REGULATOR,
    ("consent", "GET", "/log/export.jsonl"): REGULATOR,
    ("transfer", "GET", "/healthz"): PUBLIC,
    ("transfer", "GET", "/readyz"): PUBLIC,
    ("transfer", "GET", "/metrics"): REGULATOR,
    ("transfer", "POST", "/transfers"): PARTY,
    ("transfer", "GET", "/transfers"): PARTY,
    ("transfer", "GET", "/transfers/{transfer_id}"): PARTY,
    ("transfer", "POST", "/transfers/{transfer_id}/resume"): PARTY,
}
# routes outside the OpenAPI documents: the person's pages (browser sessions and CSRF tokens, see
# test_consent_flows.py) and /metrics, listed above
HIDDEN = {("registry", "GET", "/metrics"), ("consent", "GET", "/metrics"), ("transfer", "GET", "/metrics")}


def outcome(resp: httpx.Response) -> str:
    """401; 403 for a refusal of the caller (scope or tenant); anything else passed the access check
    (a 404, 409 or 422 is about the request, not the caller)."""
    if resp.status_code == 401:
        return NO_TOKEN
    if resp.status_code == 403:
        body: Any = resp.json() if "json" in resp.headers.get("content-type", "") else {}
        if body.get("reason") == "not_a_party" or "insufficient_scope" in resp.headers.get("www-authenticate", ""):
            return DENIED
    return OK


def openapi_routes(stack: Stack) -> set[tuple[str, str, str]]:
    """Every operation of the running services' OpenAPI documents (fetched over HTTP: building the apps in
    this process would install OpenTelemetry's httpx instrumentation here, and rewrite other tests' traceparents)."""
    out = set()
    for name in ("registry", "consent", "transfer"):
        for path, ops in httpx.get(f"{stack.url(name)}/openapi.json").json()["paths"].items():
            out |= {(name, method.upper(), path) for method in ops}
    return out


def test_the_table_covers_every_route(stack: Stack) -> None:
    assert set(TABLE) == openapi_routes(stack) | HIDDEN


@pytest.fixture(scope="module")
def ids(stack: Stack) -> dict[str, str]:
    """An authorised consent between the demo holder and cloud with a transfer, and a requested one."""
    with httpx.Client(timeout=30) as plain, client_as(stack, "admin") as admin, client_as(stack, CLOUD_ID) as cloud:
        register_participants(plain, stack)
        admin.put(f"{stack.url('registry')}/participants/acl-spare", json={
            "name": "spare", "roles": ["recipient"], "import_base_url": "http://127.0.0.1:9/", "allow_private_network": True}).raise_for_status()
        body = {"data_subject": "acl-subject", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [DAILY],
                "purpose": "access tests", "one_off": False}
        authorised = cloud.post(f"{stack.url('consent')}/consents", json=body).json()["id"]
        requested = cloud.post(f"{stack.url('consent')}/consents", json=body).json()["id"]
        token = plain.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY]}).json()
        admin.post(f"{stack.url('consent')}/consents/{authorised}/authorise", json=token).raise_for_status()
        transfer = cloud.post(f"{stack.url('transfer')}/transfers", json={"consent_id": authorised, "dataset": DAILY}).json()["id"]
    return {"authorised": authorised, "requested": requested, "transfer": transfer}


def call(stack: Stack, client: httpx.Client, key: tuple[str, str, str], ids: dict[str, str]) -> httpx.Response:
    service, method, path = key
    consent = ids["requested"] if path.endswith(("/reject", "/authorise")) else ids["authorised"]
    url = stack.url(service) + path.format(participant_id="acl-spare", dataset_id=DAILY, consent_id=consent,
                                           transfer_id=ids["transfer"], data_subject="acl-nobody")
    body: dict[str, Any] | None = {
        ("registry", "POST", "/participants"): {"name": "x", "roles": ["recipient"], "import_base_url": "http://127.0.0.1:9/",
                                                "allow_private_network": True},
        ("registry", "PUT", "/participants/{participant_id}"): {"name": "spare", "roles": ["recipient"],
                                                                "import_base_url": "http://127.0.0.1:9/", "allow_private_network": True},
        ("registry", "POST", "/participants/{participant_id}/status"): {"status": "active", "reason": "access tests"},
        ("registry", "POST", "/datasets"): {"id": "acl.test", "version": 1, "title": "t", "description": "d", "schema": {"type": "object"}},
        ("consent", "POST", "/consents"): {"data_subject": "acl-subject", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                           "datasets": [DAILY], "purpose": "access tests"},
        ("consent", "POST", "/consents/{consent_id}/authorise"): {"access_token": "x"},
        ("consent", "POST", "/consents/{consent_id}/revoke"): {},
        ("consent", "POST", "/consents/{consent_id}/amend"): {"purpose": "access tests, amended"},
        ("transfer", "POST", "/transfers"): {"consent_id": ids["authorised"], "dataset": DAILY},
    }.get(key)
    if method == "GET":
        params = {"index": 0, "size": 1} if path.endswith("/inclusion") else {"first": 1, "second": 1} if path.endswith("/consistency") else None
        return client.get(url, params=params)
    if service == "registry" and path.startswith("/oauth/"):
        return client.post(url, data={"grant_type": "client_credentials"})
    return client.request(method, url, json=body)


def test_every_route_with_every_role(stack: Stack, ids: dict[str, str]) -> None:
    clients = {"none": httpx.Client(timeout=30), "holder": client_as(stack, HOLDER_ID), "recipient": client_as(stack, CLOUD_ID),
               "regulator": client_as(stack, "regulator"), "admin": client_as(stack, "admin")}
    wrong = []
    try:
        # the mutating calls last, the revocation at the very end
        order = sorted(TABLE, key=lambda k: (k[1] != "GET", k[2].endswith("/revoke")))
        for key in order:
            for role in ROLES:
                resp = call(stack, clients[role], key, ids)
                got = outcome(resp)
                if got != TABLE[key][role]:
                    wrong.append(f"{key} as {role}: expected {TABLE[key][role]}, got {resp.status_code} {resp.text[:150]}")
    finally:
        for c in clients.values():
            c.close()
    assert not wrong, "\n".join(wrong)


# ---- tenant isolation --------------------------------------------------------------------------------

HOLDER_2, CLOUD_2 = "acl-holder-2", "acl-cloud-2"


@pytest.fixture(scope="module")
def second_pair(stack: Stack, ids: dict[str, str]) -> Iterator[None]:
    datasets = sorted(DATASET_TYPES)
    with client_as(stack, "admin") as admin:
        admin.put(f"{stack.url('registry')}/participants/{HOLDER_2}", json={
            "name": "Second holder", "roles": ["holder"], "export_base_url": stack.url("holder"), "datasets_offered": datasets,
            "authorization_server_metadata_url": f"{stack.url('holder')}/.well-known/oauth-authorization-server",
            "jwks": public_jwks(dev_participant_key(HOLDER_2)), "allow_private_network": True}).raise_for_status()
        admin.put(f"{stack.url('registry')}/participants/{CLOUD_2}", json={
            "name": "Second cloud", "roles": ["recipient"], "import_base_url": stack.url("cloud"), "datasets_accepted": datasets,
            "jwks": public_jwks(dev_participant_key(CLOUD_2)), "allow_private_network": True}).raise_for_status()
    yield


def test_a_cloud_sees_and_touches_only_its_own_consents_and_transfers(stack: Stack, ids: dict[str, str], second_pair: None) -> None:
    with client_as(stack, CLOUD_2) as other, client_as(stack, CLOUD_ID) as owner:
        theirs = other.post(f"{stack.url('consent')}/consents", json={
            "data_subject": "acl-bea", "holder_id": HOLDER_ID, "recipient_id": CLOUD_2, "datasets": [DAILY], "purpose": "isolation"})
        assert theirs.status_code == 201, theirs.text
        for method, url, body in [
            ("GET", f"{stack.url('consent')}/consents/{ids['authorised']}", None),
            ("GET", f"{stack.url('consent')}/consents/{ids['authorised']}/receipt", None),
            ("GET", f"{stack.url('consent')}/consents/{ids['authorised']}/receipt/proof", None),
            ("POST", f"{stack.url('consent')}/consents/{ids['requested']}/reject", None),
            ("POST", f"{stack.url('consent')}/consents/{ids['authorised']}/amend", {"purpose": "mine now"}),
            ("POST", f"{stack.url('transfer')}/transfers", {"consent_id": ids["authorised"], "dataset": DAILY}),
            ("GET", f"{stack.url('transfer')}/transfers/{ids['transfer']}", None),
            ("POST", f"{stack.url('transfer')}/transfers/{ids['transfer']}/resume", None),
            # asking in another recipient's name
            ("POST", f"{stack.url('consent')}/consents", {"data_subject": "x", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                          "datasets": [DAILY], "purpose": "impersonation"}),
        ]:
            r = other.request(method, url, json=body)
            assert r.status_code == 403 and r.json()["reason"] == "not_a_party", (method, url, r.text)
        listed = other.get(f"{stack.url('consent')}/consents").json()["consents"]
        assert {c["recipient_id"] for c in listed} == {CLOUD_2} and theirs.json()["id"] in {c["id"] for c in listed}
        assert other.get(f"{stack.url('transfer')}/transfers").json()["transfers"] == []
        # and the owner does not see the other cloud's
        mine = owner.get(f"{stack.url('consent')}/consents", params={"limit": 500}).json()["consents"]
        assert CLOUD_2 not in {c["recipient_id"] for c in mine}


def test_a_holder_sees_only_consents_it_holds_data_for(stack: Stack, ids: dict[str, str], second_pair: None) -> None:
    with client_as(stack, HOLDER_2) as other, client_as(stack, HOLDER_ID) as holder:
        for method, path in [("GET", f"/consents/{ids['authorised']}"), ("POST", f"/consents/{ids['authorised']}/revoke"),
                             ("POST", f"/consents/{ids['authorised']}/holder-check")]:
            r = other.request(method, f"{stack.url('consent')}{path}", json={} if method == "POST" else None)
            assert r.status_code == 403 and r.json()["reason"] == "not_a_party", (path, r.text)
        assert other.get(f"{stack.url('consent')}/consents").json()["consents"] == []
        assert other.get(f"{stack.url('transfer')}/transfers/{ids['transfer']}").status_code == 403
        assert ids["authorised"] in {c["id"] for c in holder.get(f"{stack.url('consent')}/consents", params={"limit": 500}).json()["consents"]}
        assert holder.get(f"{stack.url('transfer')}/transfers/{ids['transfer']}").status_code == 200
        # a holder cannot ask for consents: that is a recipient's act
        r = holder.post(f"{stack.url('consent')}/consents", json={"data_subject": "x", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                                  "datasets": [DAILY], "purpose": "p"})
        assert r.status_code == 403


def test_the_change_history_names_the_admin_who_made_each_change(stack: Stack, ids: dict[str, str]) -> None:
    with client_as(stack, "admin") as admin:
        admin.post(f"{stack.url('registry')}/participants/acl-spare/status", json={"status": "active", "reason": "history"}).raise_for_status()
        changes = admin.get(f"{stack.url('registry')}/changes", params={"target": "acl-spare"}).json()["changes"]
    assert changes and {c["actor"] for c in changes} == {"dev-admin"}, changes
