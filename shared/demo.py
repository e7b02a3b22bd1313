"""The main job, played end to end against a running :class:`~shared.launcher.Stack`:
register the participants, ask for a consent, authorise it, run one transfer, and check
that the recipient holds exactly the records the holder served.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from .authclient import BearerAuth, ClientCredentials, dev_credentials, dev_participant_key, public_jwks
from .canonical import RecordDigest
from .catalogue import DATASET_TYPES
from .launcher import Stack
from examples.cloud.app import DEV_OWNER_TOKEN

HOLDER_ID = "demo-holder"
CLOUD_ID = "demo-cloud"
DATA_SUBJECT = "demo-subject"


class DemoFailed(RuntimeError):
    pass


def _ok(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise DemoFailed(f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def credentials(stack: Stack, who: str) -> ClientCredentials:
    """Development credentials at the broker: ``admin``, ``regulator``, or a demo participant's id
    (private_key_jwt with a key derived from the id; the demo registers its public key)."""
    if who in ("admin", "regulator"):
        return dev_credentials(who, stack.url("registry"))  # type: ignore[arg-type]
    scope = {HOLDER_ID: "holder", CLOUD_ID: "recipient"}.get(who)
    return ClientCredentials(who, dev_participant_key(who), f"{stack.url('registry')}/oauth/token", scope=scope)


def client_as(stack: Stack, who: str, **kwargs: Any) -> httpx.Client:
    """An httpx client calling the broker as ``who`` (see :func:`credentials`): each request carries its
    access token (client credentials grant, RFC 6749 section 4.4, private_key_jwt, RFC 7523). A request
    with its own ``Authorization`` header keeps it."""
    kwargs.setdefault("timeout", 30)
    return httpx.Client(auth=BearerAuth(credentials(stack, who).source()), **kwargs)


def register_participants(client: httpx.Client, stack: Stack) -> None:
    """Register the demo holder and cloud (as the development admin), with their public keys."""
    datasets = sorted(DATASET_TYPES)
    with client_as(stack, "admin") as admin:
        _register(admin, stack, datasets)


def _register(client: httpx.Client, stack: Stack, datasets: list[str]) -> None:
    _ok(client.put(f"{stack.url('registry')}/participants/{HOLDER_ID}", json={
        "name": "Demo electricity distributor", "roles": ["holder"], "export_base_url": stack.url("holder"),
        "oauth_token_url": f"{stack.url('holder')}/oauth/token",
        "authorization_server_metadata_url": f"{stack.url('holder')}/.well-known/oauth-authorization-server",
        "jwks": public_jwks(dev_participant_key(HOLDER_ID)), "datasets_offered": datasets, "allow_private_network": True}))
    _ok(client.put(f"{stack.url('registry')}/participants/{CLOUD_ID}", json={
        "name": "Demo personal cloud", "roles": ["recipient"], "import_base_url": stack.url("cloud"),
        "notification_url": f"{stack.url('cloud')}/notifications", "jwks": public_jwks(dev_participant_key(CLOUD_ID)),
        "datasets_accepted": datasets, "allow_private_network": True}))


def pick_customer_dataset(client: httpx.Client, stack: Stack, dataset: str | None = None) -> tuple[str, str]:
    customers: dict[str, dict[str, int]] = _ok(client.get(f"{stack.url('holder')}/dev/customers"))["customers"]
    for customer, sets in customers.items():
        for ds in sorted(sets, key=lambda d: (d != "enedis.v5.daily_consumption", d)):
            if dataset is None or ds == dataset:
                return customer, ds
    raise DemoFailed("the holder has no data to serve")


DEMO_PASSWORD = "demo"  # the reference holder's demo customers' password (HOLDER_DEMO_PASSWORD)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def allow_through_pages(stack: Stack, consent_id: str, *, customer: str, password: str = DEMO_PASSWORD,
                        browser: httpx.Client | None = None) -> httpx.Client:
    """Play the data subject with plain HTTP, as a browser would: open the consent screen, click Allow,
    log in at the holder's authorization server, come back to the broker's callback and land on the
    dashboard. Returns the "browser" (its cookie jar holds the broker session)."""
    b = browser or httpx.Client(timeout=30)
    screen = b.get(f"{stack.url('consent')}/consent/{consent_id}")
    if screen.status_code != 200 or not _CSRF.search(screen.text):
        raise DemoFailed(f"consent screen: {screen.status_code} {screen.text[:300]}")
    allow = b.post(f"{stack.url('consent')}/consent/{consent_id}/decision", data={"csrf": _CSRF.search(screen.text)[1], "action": "allow"})
    if allow.status_code != 303:
        raise DemoFailed(f"Allow: {allow.status_code} {allow.text[:300]}")
    login_url = allow.headers["location"]
    page = b.get(login_url)
    if page.status_code != 200:
        raise DemoFailed(f"holder login page: {page.status_code} {page.text[:300]}")
    login = b.post(login_url, data={"username": customer, "password": password, "action": "allow"})
    if login.status_code not in (302, 303):
        raise DemoFailed(f"holder login: {login.status_code} {login.text[:300]}")
    back = b.get(login.headers["location"])
    if back.status_code != 303 or not back.headers["location"].startswith("/me"):
        raise DemoFailed(f"broker callback: {back.status_code} {back.text[:300]}")
    dashboard = b.get(f"{stack.url('consent')}{back.headers['location']}")
    if dashboard.status_code != 200 or f"consent-{consent_id}" not in dashboard.text:
        raise DemoFailed(f"dashboard: {dashboard.status_code} {dashboard.text[:300]}")
    return b


def consented_transfer(
    client: httpx.Client, stack: Stack, *, customer: str, dataset: str, data_subject: str = DATA_SUBJECT,
    say: Callable[[str], None] = lambda _m: None, timeout: float = 120.0, through_pages: bool = False,
) -> dict[str, Any]:
    """Consent, authorise, transfer, wait; returns the summary with ``holder_records`` and ``cloud_records``.

    ``through_pages``: the data subject allows the consent on the broker's consent screen and logs in at the
    holder (:func:`allow_through_pages`); otherwise (tests that are about transfers) a development token of
    the holder is handed to the broker's development-only ``/authorise`` route (as the development admin).
    The recipient asks for the consent and starts the transfer with its own credentials."""
    with client_as(stack, CLOUD_ID) as cloud, client_as(stack, "admin") as admin:
        return _consented_transfer(client, cloud, admin, stack, customer=customer, dataset=dataset, data_subject=data_subject, say=say,
                                   timeout=timeout, through_pages=through_pages)


def _consented_transfer(client: httpx.Client, cloud: httpx.Client, admin: httpx.Client, stack: Stack, *, customer: str, dataset: str,
                        data_subject: str, say: Callable[[str], None], timeout: float, through_pages: bool) -> dict[str, Any]:
    consent = _ok(cloud.post(f"{stack.url('consent')}/consents", json={
        "data_subject": data_subject, "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [dataset],
        "purpose": "Show my electricity use in my personal cloud", "duration_days": 30, "one_off": True}))
    say(f"consent {consent['id']} requested: {dataset} from {HOLDER_ID} to {CLOUD_ID}")
    if through_pages:
        say(f"the data subject opens {stack.url('consent')}/consent/{consent['id']}, clicks Allow and logs in at the holder as {customer}")
        allow_through_pages(stack, consent["id"], customer=customer).close()
        consent = _ok(cloud.get(f"{stack.url('consent')}/consents/{consent['id']}"))
    else:
        token = _ok(client.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": customer, "datasets": [dataset]}))
        consent = _ok(admin.post(f"{stack.url('consent')}/consents/{consent['id']}/authorise", json=token))
    say(f"consent {consent['id']} {consent['status']} by the data subject (holder customer {customer}); its signed receipt is on "
        f"the person's dashboard {stack.url('consent')}/me and, for the parties, at GET /consents/{consent['id']}/receipt")
    transfer = _ok(cloud.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": dataset}))
    say(f"transfer {transfer['id']} queued")
    deadline = time.monotonic() + timeout
    while transfer["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise DemoFailed(f"transfer {transfer['id']} still {transfer['status']} after {timeout}s")
        time.sleep(0.2)
        transfer = _ok(cloud.get(f"{stack.url('transfer')}/transfers/{transfer['id']}"))
    say(f"transfer {transfer['id']} {transfer['status']}: {transfer['records']} records in {transfer['batches']} batches"
        + (f" ({transfer['reason']}: {transfer['error']})" if transfer["reason"] else ""))
    held = holder_records(client, stack, customer, dataset)
    got = cloud_records(client, stack, transfer["id"])
    d = RecordDigest()
    d.update(got)
    return {
        "consent_id": consent["id"], "transfer_id": transfer["id"], "status": transfer["status"], "records": d.count,
        "bytes": d.bytes, "sha256": d.hexdigest(), "dataset": dataset, "identical": got == held,
        "transfer": transfer, "holder_records": held, "cloud_records": got,
    }


def holder_records(client: httpx.Client, stack: Stack, customer: str, dataset: str) -> list[Any]:
    """Every record the reference holder serves for ``customer`` and ``dataset``."""
    return list(_ok(client.get(f"{stack.url('holder')}/dev/records/{dataset}", params={"customer_id": customer}))["records"])


def cloud_records(client: httpx.Client, stack: Stack, transfer_id: str) -> list[Any]:
    """What the reference cloud holds for a transfer, read with its owner's token."""
    return list(_ok(client.get(f"{stack.url('cloud')}/transfers/{transfer_id}/records",
                               headers={"Authorization": f"Bearer {DEV_OWNER_TOKEN}"}))["records"])


def summary_line(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("consent_id", "transfer_id", "status", "records", "bytes", "sha256")}
