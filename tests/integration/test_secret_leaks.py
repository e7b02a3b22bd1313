"""No secret in logs, traces or error bodies: an end-to-end run (consent screen, holder login, transfer,
revocation, a refresh of the holder token, errors) with every log and span captured, then searched for
every secret it used."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.consent import models
from shared.catalogue import parse_file
from shared.crypto import SecretBox
from shared.demo import CLOUD_ID, HOLDER_ID, allow_through_pages, client_as, credentials
from shared.settings import DEV_HOLDER_CLIENT_SECRET, DEV_RECIPIENT_TOKEN, Settings
from tests.conftest import running_stack
from tests.integration.test_consent_log import ConsentDb

pytestmark = pytest.mark.e2e

DAILY = "enedis.v5.daily_consumption"
DAILY_FILE = "enedis_v5_daily_consumption_myelectricaldatapy.json"


def wait_for(what: Any, timeout: float = 60.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return got


def test_no_secret_reaches_logs_traces_or_error_bodies(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> None:
    data_dir = tmp_path_factory.mktemp("leaks")
    customer = str(parse_file(real_dir / DAILY_FILE).subject_key)
    secrets: dict[str, str] = {}
    bodies: list[str] = []
    with running_stack(data_dir, [real_dir / DAILY_FILE], env={"LOG_LEVEL": "DEBUG", "OTEL_SPANS_FILE": str(data_dir / "spans")}) as s, \
            client_as(s, CLOUD_ID) as cloud, client_as(s, "admin") as admin:
        secrets.update({f"nats password of {k}": v for k, v in (s.nats_passwords or {}).items()})
        # the person's path: screen, Allow, holder login (its authorization code), callback, dashboard
        consent = cloud.post(f"{s.url('consent')}/consents", json={
            "data_subject": "leak-alice", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [DAILY],
            "purpose": "leak test", "one_off": False}).json()
        codes: list[str] = []

        def keep_code(resp: httpx.Response) -> None:
            m = re.search(r"[?&]code=([^&]+)", resp.headers.get("location", ""))
            if m:
                codes.append(m[1])

        with closing(httpx.Client(timeout=30, event_hooks={"response": [keep_code]})) as browser:
            allow_through_pages(s, consent["id"], customer=customer, browser=browser)
            secrets["session cookie"] = next(c.value for c in browser.cookies.jar if "session" in c.name)
            secrets["csrf token"] = re.search(r'name="csrf" value="([^"]+)"', browser.get(f"{s.url('consent')}/me").text)[1]  # type: ignore[index]
        secrets["authorization code"] = codes[0]

        async def sealed(sess: Any) -> Any:
            return (await sess.execute(select(models.holder_tokens.c.sealed).where(models.holder_tokens.c.consent_id == consent["id"]))).scalar_one()

        token = SecretBox(Settings().token_encryption_key).open(ConsentDb(s).run(sealed), aad=consent["id"])
        secrets["holder access token"] = token["access_token"]
        secrets["holder refresh token"] = token["refresh_token"]
        secrets["broker access token (recipient)"] = credentials(s, CLOUD_ID).source().token()
        secrets["broker access token (admin)"] = credentials(s, "admin").source().token()
        secrets["broker token at recipients"] = DEV_RECIPIENT_TOKEN
        secrets["broker client secret at the holder"] = DEV_HOLDER_CLIENT_SECRET
        # a transfer whose holder token has expired: the worker refreshes it (rotating the refresh token)
        httpx.post(f"{s.url('holder')}/dev/expire-tokens").raise_for_status()
        t = cloud.post(f"{s.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": DAILY}).json()
        done = wait_for(lambda: (x := cloud.get(f"{s.url('transfer')}/transfers/{t['id']}").json())["status"] not in ("queued", "running") and x)
        assert done["status"] == "completed", done
        token = SecretBox(Settings().token_encryption_key).open(ConsentDb(s).run(sealed), aad=consent["id"])
        secrets["refreshed holder access token"] = token["access_token"]
        secrets["rotated holder refresh token"] = token["refresh_token"]
        # error paths: bad tokens, a forged callback, a replayed authorization code at the token endpoint
        for r in (httpx.get(f"{s.url('consent')}/consents/{consent['id']}", headers={"Authorization": f"Bearer {secrets['holder access token']}"}),
                  httpx.get(f"{s.url('transfer')}/transfers", headers={"Authorization": "Bearer " + secrets["broker access token (admin)"][:-4] + "AAAA"}),
                  httpx.get(f"{s.url('consent')}/oauth/callback", params={"state": "forged", "code": secrets["authorization code"]}),
                  admin.post(f"{s.url('consent')}/consents/{consent['id']}/authorise", json={"access_token": secrets["holder access token"]})):
            assert r.status_code >= 400
            bodies.append(r.text)
        assert cloud.post(f"{s.url('consent')}/consents/{consent['id']}/revoke", json={}).status_code == 200
        wait_for(lambda: httpx.get(f"{s.url('holder')}/grant", headers={"Authorization": f"Bearer {secrets['refreshed holder access token']}"})
                 .status_code == 401)
        # every answer of the consent API about this consent
        bodies.append(admin.get(f"{s.url('consent')}/consents/{consent['id']}").text)
        bodies.append(admin.get(f"{s.url('consent')}/consents/{consent['id']}/receipt").text)
        bodies.append(admin.get(f"{s.url('transfer')}/transfers/{t['id']}").text)
    captured = {str(p.relative_to(data_dir)): p.read_text("utf-8", errors="replace")
                for p in data_dir.rglob("*") if p.is_file() and (p.suffix == ".log" or p.name.startswith("spans."))}
    assert any(name.startswith("spans.consent") for name in captured), sorted(captured)
    assert sum(len(text) for text in captured.values()) > 10_000  # the logs are really there
    leaks = [f"{what} in {where}" for what, value in secrets.items() if value
             for where, text in [*captured.items(), *((f"error body {i}", b) for i, b in enumerate(bodies))] if value in text]
    assert not leaks, "\n".join(leaks)
