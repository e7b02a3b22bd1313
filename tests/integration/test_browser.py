"""A real person's path through the broker, in a real headless Chromium (Debian's ``chromium``):
consent screen, holder login, Allow, the transfer completes, the dashboard shows it, Revoke and its
confirmation page (Cancel, then "Yes, revoke"), the dashboard shows it revoked, and the recipient received
the notification."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.catalogue import parse_file
from shared.demo import client_as, CLOUD_ID, DEMO_PASSWORD, HOLDER_ID
from shared.launcher import Stack
from tests.conftest import running_stack

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DAILY = "enedis.v5.daily_consumption"
DAILY_FILE = "enedis_v5_daily_consumption_myelectricaldatapy.json"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by `make install` (test extras)")
if not Path(CHROMIUM).exists():
    if os.environ.get("REQUIRE_BROWSER"):  # .ci/run installs it and sets this: there, no browser is a failure
        raise RuntimeError(f"no chromium at {CHROMIUM}")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)", allow_module_level=True)


def wait_for(what: Callable[[], Any], timeout: float = 60.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


@pytest.fixture(scope="module")
def bstack(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("browser"), [real_dir / DAILY_FILE]) as s:
        yield s


def test_a_person_allows_sees_and_revokes_a_consent_in_a_browser(bstack: Stack, real_dir: Path) -> None:
    customer = str(parse_file(real_dir / DAILY_FILE).subject_key)
    c = client_as(bstack, "admin")
    consent = c.post(f"{bstack.url('consent')}/consents", json={
        "data_subject": "browser-alice", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [DAILY],
        "purpose": "Show my electricity use in my personal cloud", "duration_days": 30, "one_off": False, "frequency": "P1D"}).json()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(locale="en-GB")
            # the consent screen, in plain words
            page.goto(f"{bstack.url('consent')}/consent/{consent['id']}")
            assert "Share your data?" in page.content()
            assert "Demo personal cloud asks to receive your data from Demo electricity distributor." in page.inner_text("#asks")
            assert page.inner_text("#purpose") == "Show my electricity use in my personal cloud"
            page.click("button[value=allow]")
            # the holder's login page
            page.wait_for_selector("input[name=password]")
            page.fill("input[name=username]", customer)
            page.fill("input[name=password]", DEMO_PASSWORD)
            page.click("button[value=allow]")
            # back on the broker's dashboard
            page.wait_for_url(f"{bstack.url('consent')}/me*")
            card = f"#consent-{consent['id']}"
            assert page.get_attribute(card, "data-status") == "authorised"
            assert "Done:" in page.inner_text("#flash")
            # the recurring consent's first transfer runs at once; the dashboard shows it with its record count
            def shown() -> bool:
                page.reload()
                return "data-transfer=" in page.content()

            wait_for(shown, timeout=60)
            assert "365 records" in (page.text_content(f"{card} .transfers") or "")
            # Revoke opens a confirmation page that says what revoking does; Cancel changes nothing
            confirm_url = f"{bstack.url('consent')}/me/consents/{consent['id']}/revoke"
            page.click(f"{card} button.danger")
            page.wait_for_url(f"{confirm_url}*")  # a GET form with no field: the URL ends in "?"
            assert "Revoke this consent?" in page.content()
            assert ("You are about to take back the consent that lets Demo personal cloud receive your data from "
                    "Demo electricity distributor.") in page.inner_text("#revoke-asks")
            assert "has already received stays with Demo personal cloud" in page.inner_text("#revoke-effects")
            page.click("#cancel-revoke")
            page.wait_for_url(f"{bstack.url('consent')}/me")
            assert page.get_attribute(card, "data-status") == "authorised"
            # Revoke again, confirm, and the dashboard shows it revoked
            page.click(f"{card} button.danger")
            page.wait_for_url(f"{confirm_url}*")  # a GET form with no field: the URL ends in "?"
            page.click("#confirm-revoke")
            page.wait_for_url("**/me?revoked=*")
            assert page.get_attribute(card, "data-status") == "revoked"
            assert "Consent revoked" in page.inner_text("#flash")
        finally:
            browser.close()
    assert c.get(f"{bstack.url('consent')}/consents/{consent['id']}").json()["status"] == "revoked"

    def revoked_notification() -> list[Any]:
        got = c.get(f"{bstack.url('cloud')}/dev/notifications").json()["notifications"]
        return [n for n in got if n["sub_id"]["id"] == consent["id"] and any(k.endswith("consent-revoked") for k in n["events"])]

    assert len(wait_for(revoked_notification, timeout=30)) == 1
    c.close()
