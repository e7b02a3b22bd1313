"""The person's side of a consent, over real processes: the consent screen, the holder's OAuth 2.0 login
(authorization code + PKCE), callbacks that are replayed, forged or late, receipts, the dashboard,
revocation by each party, notifications, expiry and abandoned requests."""

from __future__ import annotations

import html
import json
import re
import threading
from contextlib import closing
import time
from urllib.parse import parse_qs, urlsplit
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import update

from services.consent import models, receipts
from shared.catalogue import parse_file
from shared.demo import client_as, CLOUD_ID, DEMO_PASSWORD, HOLDER_ID, allow_through_pages
from shared.launcher import Stack
from tests.conftest import running_stack
from tests.integration.test_consent_log import ConsentDb
from tests.unit.test_receipts import KANTARA, load_jsonc

pytestmark = pytest.mark.e2e

DAILY = "enedis.v5.daily_consumption"
DAILY_FILE = "enedis_v5_daily_consumption_myelectricaldatapy.json"
CURVE_FILE = "enedis_v5_consumption_load_curve_myelectricaldatapy.json"
OTHER_FILE = "enedis_v5_consumption_load_curve_myelectricaldata.json"  # another customer: 99999999999991
OTHER_CUSTOMER = "99999999999991"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
REQUEST_TTL_S = 8


@pytest.fixture(scope="module")
def fl(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("flows"), [real_dir / DAILY_FILE, real_dir / CURVE_FILE, real_dir / OTHER_FILE],
                       env={"CONSENT_SWEEP_INTERVAL_S": "0.3", "CONSENT_REQUEST_TTL_S": str(REQUEST_TTL_S)}) as s:
        yield s


@pytest.fixture(scope="module")
def c(fl: Stack) -> Iterator[httpx.Client]:
    with client_as(fl, "admin") as client:
        yield client


@pytest.fixture(scope="module")
def customer(real_dir: Path) -> str:
    return str(parse_file(real_dir / DAILY_FILE).subject_key)


def wait_for(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def ask(c: httpx.Client, s: Stack, subject: str, **extra: Any) -> dict[str, Any]:
    body = {"data_subject": subject, "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [DAILY],
            "purpose": "Show my electricity use in my personal cloud", "one_off": True, **extra}
    r = c.post(f"{s.url('consent')}/consents", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def consent(c: httpx.Client, s: Stack, cid: str) -> dict[str, Any]:
    r = c.get(f"{s.url('consent')}/consents/{cid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def start_allow(s: Stack, cid: str, browser: httpx.Client) -> str:
    """Open the screen and click Allow: the holder's authorization URL."""
    screen = browser.get(f"{s.url('consent')}/consent/{cid}")
    assert screen.status_code == 200, screen.text
    r = browser.post(f"{s.url('consent')}/consent/{cid}/decision", data={"csrf": CSRF.search(screen.text)[1], "action": "allow"})
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


def holder_login(browser: httpx.Client, url: str, customer: str, *, action: str = "allow", password: str = DEMO_PASSWORD) -> str:
    """Log in at the holder: the callback URL it sends the browser to."""
    assert browser.get(url).status_code == 200
    r = browser.post(url, data={"username": customer, "password": password, "action": action})
    assert r.status_code in (302, 303), r.text
    return str(r.headers["location"])


def log_events(c: httpx.Client, s: Stack, cid: str) -> list[str]:
    r = c.get(f"{s.url('consent')}/log/entries", params={"consent_id": cid})
    assert r.status_code == 200
    return [e["entry"]["event"] for e in r.json()["entries"]]


def notifications(c: httpx.Client, s: Stack, cid: str) -> list[dict[str, Any]]:
    got = c.get(f"{s.url('cloud')}/dev/notifications").json()["notifications"]
    return [n for n in got if n["sub_id"]["id"] == cid]


def grant_status(c: httpx.Client, s: Stack, access_token: str) -> int:
    return c.get(f"{s.url('holder')}/grant", headers={"Authorization": f"Bearer {access_token}"}).status_code


# ---- allow, receipts, dashboard ---------------------------------------------------------------------

def test_allow_through_the_holder_login_authorises_with_a_signed_receipt(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-alice")
    with closing(allow_through_pages(fl, cons["id"], customer=customer)) as browser:
        after = consent(c, fl, cons["id"])
        assert after["status"] == "authorised"
        assert after["holder_subject"] == customer
        assert after["holder_check"] == "confirmed"
        assert "token" not in json.dumps(after).lower().replace("holder_check", "")
        # the receipt: a JWS verified with the served keys, carrying the log index of the authorisation entry
        rec = c.get(f"{fl.url('consent')}/consents/{cons['id']}/receipt").json()
        jwks = c.get(f"{fl.url('consent')}/.well-known/jwks.json").json()
        payload = receipts.verify_receipt(rec["jws"], jwks)
        assert payload == rec["payload"]
        schema = load_jsonc(KANTARA / "kantara-consent-receipt-v1_1-schema.jsonc")
        jsonschema.Draft4Validator(schema).validate(payload)
        entry = c.get(f"{fl.url('consent')}/log/entries", params={"start": rec["log_index"], "limit": 1}).json()["entries"][0]
        assert entry["entry"]["event"] == "authorised" and entry["entry"]["consent_id"] == cons["id"]
        assert json.dumps(payload).count(cons["id"]) >= 1 and str(rec["log_index"]) in json.dumps(payload)
        # the dashboard lists it as active, in English and in French
        page = browser.get(f"{fl.url('consent')}/me")
        assert f'id="consent-{cons["id"]}" data-status="authorised"' in page.text and "Revoke" in page.text
        fr = browser.get(f"{fl.url('consent')}/me", params={"lang": "fr"})
        assert "Vos consentements" in fr.text and "Retirer" in fr.text
    # the recipient was told (a signed Security Event Token)
    got = wait_for(lambda: notifications(c, fl, cons["id"]))
    assert any(k.endswith("consent-authorised") for n in got for k in n["events"])


def test_deny_rejects_and_a_second_decision_changes_nothing(c: httpx.Client, fl: Stack) -> None:
    cons = ask(c, fl, "flow-bob")
    with httpx.Client(timeout=30) as browser:
        screen = browser.get(f"{fl.url('consent')}/consent/{cons['id']}")
        token = CSRF.search(screen.text)[1]
        r = browser.post(f"{fl.url('consent')}/consent/{cons['id']}/decision", data={"csrf": token, "action": "deny"})
        assert r.status_code == 200 and "refused" in r.text
        again = browser.post(f"{fl.url('consent')}/consent/{cons['id']}/decision", data={"csrf": token, "action": "allow"})
        assert again.status_code == 409
    assert consent(c, fl, cons["id"])["status"] == "rejected"
    assert log_events(c, fl, cons["id"]) == ["requested", "rejected"]


def test_forms_without_the_sessions_csrf_token_are_refused(c: httpx.Client, fl: Stack) -> None:
    cons = ask(c, fl, "flow-carol")
    with httpx.Client(timeout=30) as browser:
        browser.get(f"{fl.url('consent')}/consent/{cons['id']}")
        r = browser.post(f"{fl.url('consent')}/consent/{cons['id']}/decision", data={"csrf": "forged", "action": "deny"})
        assert r.status_code == 403
    with httpx.Client(timeout=30) as stranger:  # no session at all
        r = stranger.post(f"{fl.url('consent')}/consent/{cons['id']}/decision", data={"action": "allow"})
        assert r.status_code == 403
    assert consent(c, fl, cons["id"])["status"] == "requested"


def test_replayed_forged_foreign_and_failed_callbacks_change_nothing(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-dave")
    with httpx.Client(timeout=30) as browser:
        # the holder refuses (the person clicks Deny there): an error page, the consent stays requested
        back = holder_login(browser, start_allow(fl, cons["id"], browser), customer, action="deny")
        r = browser.get(back)
        assert r.status_code == 400 and "access_denied" in r.text
        assert consent(c, fl, cons["id"])["status"] == "requested"
        # a forged state
        assert browser.get(f"{fl.url('consent')}/oauth/callback", params={"state": "forged", "code": "x"}).status_code == 400
        # a callback opened in another browser (no session of the flow): refused, without spending the flow of
        # the browser that started it
        back = holder_login(browser, start_allow(fl, cons["id"], browser), customer)
        with httpx.Client(timeout=30) as other:
            assert other.get(back).status_code == 400
        assert consent(c, fl, cons["id"])["status"] == "requested"
        assert browser.get(back).status_code == 303
        # the same callback replayed
        assert browser.get(back).status_code == 400
    assert consent(c, fl, cons["id"])["status"] == "authorised"
    assert log_events(c, fl, cons["id"]) == ["requested", "authorised"]


def test_a_code_forged_for_a_good_state_is_refused_by_the_holder(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-erin")
    with httpx.Client(timeout=30) as browser:
        back = holder_login(browser, start_allow(fl, cons["id"], browser), customer)
        forged = re.sub(r"code=[^&]+", "code=forged-code", back)
        r = browser.get(forged)
        assert r.status_code == 400 and "invalid_grant" in r.text
    assert consent(c, fl, cons["id"])["status"] == "requested"


def test_two_clicks_on_allow_authorise_once(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-frank")
    with httpx.Client(timeout=30) as browser:
        first = start_allow(fl, cons["id"], browser)
        second = start_allow(fl, cons["id"], browser)
        back1 = holder_login(browser, first, customer)
        back2 = holder_login(browser, second, customer)
        assert browser.get(back1).status_code == 303
        # the first sign-in renewed the session (no fixation), so the second flow no longer belongs to it
        r = browser.get(back2)
        assert r.status_code in (400, 409), r.text
    assert consent(c, fl, cons["id"])["status"] == "authorised"
    assert log_events(c, fl, cons["id"]) == ["requested", "authorised"]


# ---- revocation ------------------------------------------------------------------------------------

def _sealed_access_token(fl: Stack, cid: str) -> str | None:
    from services.consent import models as m
    from sqlalchemy import select

    from shared.crypto import SecretBox
    from shared.settings import Settings

    async def work(s: Any) -> Any:
        return (await s.execute(select(m.holder_tokens.c.sealed).where(m.holder_tokens.c.consent_id == cid))).scalar_one_or_none()

    sealed = ConsentDb(fl).run(work)
    return SecretBox(Settings().token_encryption_key).open(sealed, aad=cid)["access_token"] if sealed else None


def test_revoke_on_the_dashboard_revokes_the_holder_token_and_notifies_the_recipient(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-gina")
    with closing(allow_through_pages(fl, cons["id"], customer=customer)) as browser:
        access = _sealed_access_token(fl, cons["id"])
        assert access and grant_status(c, fl, access) == 200
        page = browser.get(f"{fl.url('consent')}/me")
        r = browser.post(f"{fl.url('consent')}/me/consents/{cons['id']}/revoke", data={"csrf": CSRF.search(page.text)[1]})
        assert r.status_code == 303
        page = browser.get(f"{fl.url('consent')}{r.headers['location']}")
        assert f'id="consent-{cons["id"]}" data-status="revoked"' in page.text
    after = consent(c, fl, cons["id"])
    assert after["status"] == "revoked" and after["status_reason"] == "revoked by the data subject"
    assert _sealed_access_token(fl, cons["id"]) is None  # deleted at the broker
    wait_for(lambda: grant_status(c, fl, access) == 401)  # and revoked at the holder (RFC 7009)
    got = wait_for(lambda: [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("revoked") for k in n["events"])])
    assert len(got) == 1 and list(got[0]["events"].values())[0]["by"] == "data_subject"


def test_a_person_cannot_revoke_someone_elses_consent(c: httpx.Client, fl: Stack, customer: str) -> None:
    # the same data_subject on both requests: what a recipient writes proves nothing, the holder login does
    mine = ask(c, fl, "flow-hugo")
    theirs = ask(c, fl, "flow-hugo")
    allow_through_pages(fl, theirs["id"], customer=OTHER_CUSTOMER).close()
    with closing(allow_through_pages(fl, mine["id"], customer=customer)) as browser:
        page = browser.get(f"{fl.url('consent')}/me")
        assert mine["id"] in page.text and theirs["id"] not in page.text  # only the data subject of this browser
        r = browser.post(f"{fl.url('consent')}/me/consents/{theirs['id']}/revoke", data={"csrf": CSRF.search(page.text)[1]})  # type: ignore[index]
        assert r.status_code == 403
        assert browser.get(f"{fl.url('consent')}/me/consents/{theirs['id']}/receipt").status_code == 403
        assert browser.get(f"{fl.url('consent')}/me/consents/{mine['id']}/receipt").status_code == 200
    with httpx.Client(timeout=30) as stranger:
        page = stranger.get(f"{fl.url('consent')}/me")
        assert "Sign in" in page.text
        token = CSRF.search(stranger.get(f"{fl.url('consent')}/consent/{mine['id']}").text)
        r = stranger.post(f"{fl.url('consent')}/me/consents/{theirs['id']}/revoke", data={"csrf": token[1] if token else "x"})
        assert r.status_code == 403
    assert consent(c, fl, theirs["id"])["status"] == "authorised"


def test_revoke_asks_for_confirmation_on_a_page_that_changes_nothing(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-iris")
    url = f"{fl.url('consent')}/me/consents/{cons['id']}/revoke"
    title = c.get(f"{fl.url('registry')}/datasets/{DAILY}").json()["title"]
    with closing(allow_through_pages(fl, cons["id"], customer=customer)) as browser:
        dashboard = browser.get(f"{fl.url('consent')}/me")
        # Revoke on the dashboard only opens the confirmation page (a GET form: no CSRF token in a URL)
        assert f'<form method="get" action="/me/consents/{cons["id"]}/revoke">' in dashboard.text
        before = log_events(c, fl, cons["id"])
        for _ in range(2):
            page = browser.get(url)
            assert page.status_code == 200, page.text
        assert consent(c, fl, cons["id"])["status"] == "authorised" and log_events(c, fl, cons["id"]) == before
        assert not [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("revoked") for k in n["events"])]
        # the same headers as the other pages
        assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # its form, like the dashboard's, may only post to the broker (only the consent screen's Allow ends elsewhere)
        for p in (page, dashboard):
            assert "form-action 'self';" in p.headers["content-security-policy"], p.headers
        screen = browser.get(f"{fl.url('consent')}/consent/{ask(c, fl, 'flow-iris-2')['id']}")
        assert "form-action 'self' *;" in screen.headers["content-security-policy"]
        # in plain words: who, from whom, what, and what revoking does and does not do
        assert "Revoke this consent?" in page.text
        assert ("You are about to take back the consent that lets Demo personal cloud receive your data from "
                "Demo electricity distributor.") in page.text
        assert '<dd id="revoke-recipient">Demo personal cloud</dd>' in page.text
        assert '<dd id="revoke-holder">Demo electricity distributor</dd>' in page.text
        assert f"<li>{html.escape(title)}</li>" in page.text
        assert "Demo personal cloud will receive no more of your data from Demo electricity distributor" in page.text
        assert "What Demo personal cloud has already received stays with Demo personal cloud" in page.text
        assert "To have it deleted, ask Demo personal cloud directly" in page.text
        # "Yes, revoke" is the existing POST with the session's CSRF token; Cancel goes back to the dashboard
        assert f'<form method="post" action="/me/consents/{cons["id"]}/revoke">' in page.text
        assert CSRF.search(page.text)[1] == CSRF.search(dashboard.text)[1]  # type: ignore[index]
        assert ">Yes, revoke</button>" in page.text and 'id="cancel-revoke" href="/me">Cancel</a>' in page.text
        # in French, by Accept-Language or ?lang=
        fr = browser.get(url, headers={"Accept-Language": "fr-FR,fr;q=0.9"})
        assert fr.status_code == 200 and '<html lang="fr">' in fr.text and "Retirer ce consentement ?" in fr.text
        fr = browser.get(url, params={"lang": "fr"})
        assert fr.status_code == 200 and '<html lang="fr">' in fr.text
        assert "Vous allez retirer le consentement qui permet à Demo personal cloud de recevoir vos données de " \
               "Demo electricity distributor." in fr.text
        assert "Demo personal cloud ne recevra plus aucune de vos données de Demo electricity distributor" in fr.text
        assert "Ce que Demo personal cloud a déjà reçu reste en sa possession" in fr.text
        assert ">Oui, retirer</button>" in fr.text and ">Annuler</a>" in fr.text and CSRF.search(fr.text)
        assert consent(c, fl, cons["id"])["status"] == "authorised" and log_events(c, fl, cons["id"]) == before
        # confirming revokes; the page of a revoked consent then answers as the POST does (back to the dashboard)
        r = browser.post(url, data={"csrf": CSRF.search(page.text)[1]})  # type: ignore[index]
        assert r.status_code == 303 and r.headers["location"] == f"/me?revoked={cons['id']}"
        again = browser.get(url)
        assert again.status_code == 303 and again.headers["location"] == f"/me?revoked={cons['id']}"
    assert consent(c, fl, cons["id"])["status"] == "revoked"
    assert log_events(c, fl, cons["id"]).count("revoked") == 1


def test_the_revoke_confirmation_page_refuses_what_the_post_refuses(c: httpx.Client, fl: Stack, customer: str) -> None:
    mine, theirs = ask(c, fl, "flow-ivan"), ask(c, fl, "flow-ivan")
    allow_through_pages(fl, theirs["id"], customer=OTHER_CUSTOMER).close()
    base = f"{fl.url('consent')}/me/consents"
    with closing(allow_through_pages(fl, mine["id"], customer=customer)) as browser:
        token = CSRF.search(browser.get(f"{fl.url('consent')}/me").text)[1]  # type: ignore[index]
        # someone else's consent: 403 on the page as on the POST, and no name of theirs shown
        page = browser.get(f"{base}/{theirs['id']}/revoke")
        assert page.status_code == 403 and "This consent is not one of yours." in page.text and "Revoke this consent?" not in page.text
        assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
        assert browser.post(f"{base}/{theirs['id']}/revoke", data={"csrf": token}).status_code == 403
        # an unknown consent: 404 on both
        assert browser.get(f"{base}/no-such-consent/revoke").status_code == 404
        assert browser.post(f"{base}/no-such-consent/revoke", data={"csrf": token}).status_code == 404
        # a consent that ended otherwise (expired) cannot be revoked: 409 on both, nothing changed
        async def due(s: Any) -> None:
            await s.execute(update(models.consents).where(models.consents.c.id == mine["id"])
                            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))

        ConsentDb(fl).run(due)
        wait_for(lambda: consent(c, fl, mine["id"])["status"] == "expired", timeout=15)
        page = browser.get(f"{base}/{mine['id']}/revoke")
        assert page.status_code == 409 and "already expired" in page.text and "Yes, revoke" not in page.text
        assert browser.post(f"{base}/{mine['id']}/revoke", data={"csrf": token}).status_code == 409
    # no signed-in session (a new browser, or an anonymous one): 403, before any lookup
    with httpx.Client(timeout=30) as stranger:
        for cid in (theirs["id"], "no-such-consent"):
            page = stranger.get(f"{base}/{cid}/revoke")
            assert page.status_code == 403 and "You are not signed in" in page.text
        stranger.get(f"{fl.url('consent')}/me")  # an anonymous session, with no identity proved at a holder
        assert stranger.get(f"{base}/{theirs['id']}/revoke").status_code == 403
    assert consent(c, fl, theirs["id"])["status"] == "authorised"
    assert log_events(c, fl, theirs["id"]) == ["requested", "authorised"]
    assert log_events(c, fl, mine["id"]) == ["requested", "authorised", "expired"]


def test_parties_revoke_through_the_api_and_crossing_revocations_end_in_one(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-jules")
    allow_through_pages(fl, cons["id"], customer=customer).close()
    results: list[int] = []

    def revoke(who: str) -> None:
        with client_as(fl, who) as party:  # each with its own credentials; "by" comes from who calls
            results.append(party.post(f"{fl.url('consent')}/consents/{cons['id']}/revoke", json={}).status_code)

    threads = [threading.Thread(target=revoke, args=(who,)) for who in (HOLDER_ID, CLOUD_ID)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [200, 200]
    assert log_events(c, fl, cons["id"]).count("revoked") == 1
    time.sleep(1.5)  # any second notification would have arrived by now
    revoked = [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("revoked") for k in n["events"])]
    by = list(revoked[0]["events"].values())[0]["by"] if revoked else None
    # the recipient hears of it once, and only if the holder was the one that revoked
    assert len(revoked) == (1 if by == "holder" else 0)


def test_notifications_are_retried_until_a_recipient_that_was_down_acknowledges(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-kim")
    allow_through_pages(fl, cons["id"], customer=customer).close()
    assert c.put(f"{fl.url('cloud')}/dev/faults", json={"notifications_down": True}).status_code == 200
    try:
        with client_as(fl, HOLDER_ID) as holder:
            assert holder.post(f"{fl.url('consent')}/consents/{cons['id']}/revoke", json={}).status_code == 200
        time.sleep(2.5)
        assert not [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("revoked") for k in n["events"])]
    finally:
        assert c.put(f"{fl.url('cloud')}/dev/faults", json={}).status_code == 200
    got = wait_for(lambda: [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("revoked") for k in n["events"])], timeout=40)
    assert len(got) == 1


# ---- expiry, abandoned requests, amendments, holder check ----------------------------------------------

def test_an_authorised_consent_expires_on_time_without_any_request(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-lea")
    allow_through_pages(fl, cons["id"], customer=customer).close()
    access = _sealed_access_token(fl, cons["id"])

    async def due(s: Any) -> None:
        await s.execute(update(models.consents).where(models.consents.c.id == cons["id"])
                        .values(expires_at=datetime.now(UTC) + timedelta(seconds=1)))

    ConsentDb(fl).run(due)
    after = wait_for(lambda: (x := consent(c, fl, cons["id"]))["status"] == "expired" and x, timeout=15)
    assert after["status_reason"] == "expired"
    assert log_events(c, fl, cons["id"]) == ["requested", "authorised", "expired"]
    wait_for(lambda: grant_status(c, fl, str(access)) == 401)
    wait_for(lambda: [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("expired") for k in n["events"])])


def test_an_abandoned_request_expires_and_says_where_the_person_stopped(c: httpx.Client, fl: Stack) -> None:
    never = ask(c, fl, "flow-max")
    opened = ask(c, fl, "flow-nina")
    at_holder = ask(c, fl, "flow-oscar")
    with httpx.Client(timeout=30) as browser:
        browser.get(f"{fl.url('consent')}/consent/{opened['id']}")
        start_allow(fl, at_holder["id"], browser)
    reasons = wait_for(lambda: all(consent(c, fl, x["id"])["status"] == "expired" for x in (never, opened, at_holder))
                       and [consent(c, fl, x["id"])["status_reason"] for x in (never, opened, at_holder)], timeout=REQUEST_TTL_S + 20)
    assert reasons == ["abandoned at not_opened", "abandoned at screen", "abandoned at holder_login"]
    metrics = c.get(f"{fl.url('consent')}/metrics").text
    assert re.search(r'consent_requests_abandoned_total\{[^}]*step="holder_login"[^}]*\} 1', metrics)


def test_an_amended_consent_supersedes_the_old_one_when_allowed(c: httpx.Client, fl: Stack, customer: str) -> None:
    old = ask(c, fl, "flow-paul")
    allow_through_pages(fl, old["id"], customer=customer).close()
    r = c.post(f"{fl.url('consent')}/consents/{old['id']}/amend", json={"purpose": "Compare my use with last year", "duration_days": 30})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["supersedes"] == old["id"] and new["status"] == "requested"
    assert consent(c, fl, old["id"])["status"] == "authorised"  # until the person allows the amendment
    allow_through_pages(fl, new["id"], customer=customer).close()
    before = consent(c, fl, old["id"])
    assert before["status"] == "superseded" and before["superseded_by"] == new["id"]
    assert consent(c, fl, new["id"])["status"] == "authorised"
    assert c.post(f"{fl.url('consent')}/consents/{old['id']}/amend", json={"purpose": "again"}).status_code == 409


def test_a_holder_that_lost_the_consent_is_reported_as_such(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-quinn")
    allow_through_pages(fl, cons["id"], customer=customer).close()
    assert c.post(f"{fl.url('holder')}/dev/revoke-all", params={"customer_id": customer}).status_code == 200
    r = c.post(f"{fl.url('consent')}/consents/{cons['id']}/holder-check")
    assert r.status_code == 200 and r.json()["holder_check"] == "holder_lost_consent"


def test_consent_fields_and_the_holders_cap(c: httpx.Client, fl: Stack) -> None:
    cons = ask(c, fl, "flow-rose", purpose_category="dpv:ServiceProvision", data_from="2024-01-01", data_to="2024-12-31",
               duration_days=365)
    assert (cons["purpose_category"], cons["legal_basis"], cons["data_from"], cons["data_to"]) == (
        "dpv:ServiceProvision", "dpv:Consent", "2024-01-01", "2024-12-31")
    r = c.post(f"{fl.url('consent')}/consents", json={"data_subject": "x", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                      "datasets": [DAILY], "purpose": "p", "duration_days": 400})
    assert r.status_code == 422 and "at most 365 days" in r.text
    r = c.post(f"{fl.url('consent')}/consents", json={"data_subject": "x", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                      "datasets": [DAILY], "purpose": "p", "data_from": "2025-01-02", "data_to": "2025-01-01"})
    assert r.status_code == 400
    screen = httpx.get(f"{fl.url('consent')}/consent/{cons['id']}", headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    assert "Partager vos données" in screen.text and "Du 01/01/2024 au 31/12/2024." in screen.text



def test_signing_in_again_through_the_holder_shows_that_customers_consents(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-sam")
    allow_through_pages(fl, cons["id"], customer=customer).close()
    with httpx.Client(timeout=30) as browser:  # another day, another browser
        page = browser.get(f"{fl.url('consent')}/me")
        assert "Sign in with" in page.text and f"/me/login?holder_id={HOLDER_ID}" in page.text
        r = browser.get(f"{fl.url('consent')}/me/login", params={"holder_id": HOLDER_ID})
        assert r.status_code == 303
        # a sign-in asks the holder only who the person is (scope openid): its page shares no data
        assert parse_qs(urlsplit(str(r.headers["location"])).query)["scope"] == ["openid"]
        holder_page = browser.get(str(r.headers["location"]), headers={"Accept-Language": "en"})
        assert "Sign in to" in holder_page.text and "none of your data is shared" in holder_page.text
        assert "Share your data" not in holder_page.text
        back = holder_login(browser, str(r.headers["location"]), customer)
        r = browser.get(back)
        assert r.status_code == 303 and r.headers["location"] == "/me"
        page = browser.get(f"{fl.url('consent')}/me")
        assert f'id="consent-{cons["id"]}"' in page.text
    with httpx.Client(timeout=30) as other:  # somebody else, signed in as another customer, does not see it
        r = other.get(f"{fl.url('consent')}/me/login", params={"holder_id": HOLDER_ID})
        other.get(holder_login(other, str(r.headers["location"]), OTHER_CUSTOMER))
        assert f'id="consent-{cons["id"]}"' not in other.get(f"{fl.url('consent')}/me").text


def test_the_holder_login_speaks_the_language_of_the_consent_screen(c: httpx.Client, fl: Stack, customer: str) -> None:
    """?lang=fr on the broker's screen goes to the holder as ui_locales=fr (OpenID Connect), and its login page is French."""
    cons = ask(c, fl, "flow-francais")
    with httpx.Client(timeout=30) as browser:
        screen = browser.get(f"{fl.url('consent')}/consent/{cons['id']}", params={"lang": "fr"})
        assert screen.status_code == 200 and 'lang="fr"' in screen.text
        r = browser.post(f"{fl.url('consent')}/consent/{cons['id']}/decision", data={"csrf": CSRF.search(screen.text)[1], "action": "allow"})
        location = str(r.headers["location"])
        assert "ui_locales=fr" in location
        page = browser.get(location)  # no Accept-Language: the holder follows ui_locales
        assert page.status_code == 200 and 'lang="fr"' in page.text, page.text[:300]


def test_the_dashboard_shows_a_consents_data_window(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-window", data_from="2025-01-02", data_to="2025-01-03")
    with closing(allow_through_pages(fl, cons["id"], customer=customer)) as browser:
        page = browser.get(f"{fl.url('consent')}/me", params={"lang": "en"})
        assert page.status_code == 200
        assert "From 2025-01-02 to 2025-01-03" in page.text, page.text
        assert "Du 02/01/2025 au 03/01/2025" in browser.get(f"{fl.url('consent')}/me", params={"lang": "fr"}).text


def test_erasing_a_data_subject_ends_their_consents_and_dashboard_sessions(c: httpx.Client, fl: Stack, customer: str) -> None:
    cons = ask(c, fl, "flow-erased@example.org")
    with closing(allow_through_pages(fl, cons["id"], customer=customer)) as browser:
        assert f'id="consent-{cons["id"]}"' in browser.get(f"{fl.url('consent')}/me").text
        assert consent(c, fl, cons["id"])["holder_subject"] == customer
        r = c.delete(f"{fl.url('consent')}/subjects/flow-erased@example.org")
        assert r.status_code == 200 and r.json()["consents_ended"] == 1, r.text
        # that browser is signed out: nothing of the person is shown any more
        page = browser.get(f"{fl.url('consent')}/me")
        assert f'id="consent-{cons["id"]}"' not in page.text and "flow-erased" not in page.text
        assert browser.get(f"{fl.url('consent')}/me/consents/{cons['id']}/receipt").status_code in (403, 404)
    after = consent(c, fl, cons["id"])
    assert after["status"] == "revoked" and after["holder_subject"] is None and after["data_subject"].startswith("erased:")
    assert _sealed_access_token(fl, cons["id"]) is None
    got = wait_for(lambda: [n for n in notifications(c, fl, cons["id"]) if any(k.endswith("revoked") for k in n["events"])])
    assert "GDPR Art. 17" in json.dumps(got[0]["events"]), got


def test_a_person_downloads_a_receipt_proof_that_anyone_checks_offline(c: httpx.Client, fl: Stack, customer: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shared.cli import app as cli

    cons = ask(c, fl, "flow-proof")
    base = fl.url("consent")
    with closing(allow_through_pages(fl, cons["id"], customer=customer)) as browser:
        page = browser.get(f"{base}/me/consents/{cons['id']}/receipt")
        assert f'href="/me/consents/{cons["id"]}/receipt/proof"' in page.text and "portability receipt verify" in page.text
        r = wait_for(lambda: (x := browser.get(f"{base}/me/consents/{cons['id']}/receipt/proof")).status_code == 200 and x, timeout=10)
        assert "attachment" in r.headers["content-disposition"]
        doc = r.json()
        other = ask(c, fl, "flow-proof-2")  # someone else's consent: not this browser's
        assert browser.get(f"{base}/me/consents/{other['id']}/receipt/proof").status_code in (403, 404)
    # the parties get the same document from the API
    assert c.get(f"{base}/consents/{cons['id']}/receipt/proof").json()["log_index"] == doc["log_index"]
    assert doc["format"] == "portability-receipt-proof/1" and doc["entry"]["consent_id"] == cons["id"]
    key = c.get(f"{base}/log/public-key").text
    (tmp_path / "keys.json").write_text(c.get(f"{base}/.well-known/jwks.json").text)

    def verify(document: Any, *extra: str) -> tuple[int, str]:
        path = tmp_path / "proof.json"
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        out = CliRunner().invoke(cli, ["receipt", "verify", str(path), *extra])
        return out.exit_code, out.output

    code, out = verify(doc, "--public-key", key, "--receipt-keys", str(tmp_path / "keys.json"))
    assert code == 0 and "verified" in out and "signature verifies" in out, out
    code, out = verify(doc)  # the key in the file: verifies, and says what that proves
    assert code == 0 and "compare it with the one the operator publishes" in out, out
    # what a dishonest broker or a changed file would show
    forged = json.loads(json.dumps(doc))
    forged["entry"]["datasets"] = ["enedis.v5.consumption_load_curve"]
    code, out = verify(forged, "--public-key", key)
    assert code == 1 and "the leaf hash given is not the hash of the entry" in out, out
    del forged["leaf_hash"]
    code, out = verify(forged, "--public-key", key)
    assert code == 1 and f"entry {doc['log_index']} is not in the signed tree" in out, out
    other_key = receipts_vkey_of_another_log()
    code, out = verify(doc, "--public-key", other_key)
    assert code == 1 and "does not verify with the log's key" in out, out
    swapped = dict(doc, receipt=c.get(f"{base}/consents/{cons['id']}/receipt").json()["jws"].replace(".", ".x", 1))
    code, out = verify(swapped, "--public-key", key, "--receipt-keys", str(tmp_path / "keys.json"))
    assert code in (1, 2), out
    code, out = verify("not json", "--public-key", key)
    assert code == 2, out
    code, out = verify(doc, "--public-key", "nonsense")
    assert code == 2 and "malformed" in out, out


def receipts_vkey_of_another_log() -> str:
    """The key of another log of the same name (a log the broker's operator could run on the side)."""
    from shared.tlog import Signer

    return Signer.generate("portability-broker.example/consent-log").vkey
