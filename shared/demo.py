"""The main job, played end to end against a running :class:`~shared.launcher.Stack`:
register the participants, ask for a consent, authorise it, run one transfer, and check
that the recipient holds exactly the records the holder served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

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


def register_participants(client: httpx.Client, stack: Stack) -> None:
    datasets = sorted(DATASET_TYPES)
    _ok(client.put(f"{stack.url('registry')}/participants/{HOLDER_ID}", json={
        "name": "Demo electricity distributor", "roles": ["holder"], "export_base_url": stack.url("holder"),
        "oauth_token_url": f"{stack.url('holder')}/oauth/token", "datasets_offered": datasets, "allow_private_network": True}))
    _ok(client.put(f"{stack.url('registry')}/participants/{CLOUD_ID}", json={
        "name": "Demo personal cloud", "roles": ["recipient"], "import_base_url": stack.url("cloud"),
        "datasets_accepted": datasets, "allow_private_network": True}))


def pick_customer_dataset(client: httpx.Client, stack: Stack, dataset: str | None = None) -> tuple[str, str]:
    customers: dict[str, dict[str, int]] = _ok(client.get(f"{stack.url('holder')}/dev/customers"))["customers"]
    for customer, sets in customers.items():
        for ds in sorted(sets, key=lambda d: (d != "enedis.v5.daily_consumption", d)):
            if dataset is None or ds == dataset:
                return customer, ds
    raise DemoFailed("the holder has no data to serve")


def consented_transfer(
    client: httpx.Client, stack: Stack, *, customer: str, dataset: str, data_subject: str = DATA_SUBJECT,
    say: Callable[[str], None] = lambda _m: None, timeout: float = 120.0,
) -> dict[str, Any]:
    """Consent, authorise, transfer, wait; returns the summary with ``holder_records`` and ``cloud_records``."""
    consent = _ok(client.post(f"{stack.url('consent')}/consents", json={
        "data_subject": data_subject, "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [dataset],
        "purpose": "Show my electricity use in my personal cloud", "duration_days": 30, "one_off": True}))
    say(f"consent {consent['id']} requested: {dataset} from {HOLDER_ID} to {CLOUD_ID}")
    token = _ok(client.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": customer, "datasets": [dataset]}))
    consent = _ok(client.post(f"{stack.url('consent')}/consents/{consent['id']}/authorise", json=token))
    say(f"consent {consent['id']} {consent['status']} by the data subject (holder customer {customer})")
    transfer = _ok(client.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": dataset}))
    say(f"transfer {transfer['id']} queued")
    deadline = time.monotonic() + timeout
    while transfer["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise DemoFailed(f"transfer {transfer['id']} still {transfer['status']} after {timeout}s")
        time.sleep(0.2)
        transfer = _ok(client.get(f"{stack.url('transfer')}/transfers/{transfer['id']}"))
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
