"""Pure unit tests of the shared package and the consent rules."""

from __future__ import annotations

import hashlib
import json

import pytest

from services.consent.domain import STATES, TRANSITIONS, check_transition
from shared import envelope
from shared.canonical import RecordDigest, canonical, records_digest
from shared.crypto import DEV_KEY_B64, SealError, SecretBox
from shared.errors import BrokerError, Conflict, InvalidInput, NotFound, Unavailable, from_problem
from shared.settings import Settings


def test_envelope_round_trip_and_schema_checks() -> None:
    env = envelope.make("consent.check", {"consent_id": "c1", "dataset": "d"}, correlation_id="corr")
    assert envelope.decode(envelope.encode(env), expected_type="consent.check") == env
    assert set(env) == {"id", "type", "time", "correlation_id", "data"}
    with pytest.raises(InvalidInput, match="data"):
        envelope.make("consent.check", {"consent_id": "c1"})
    with pytest.raises(InvalidInput, match="unknown message type"):
        envelope.make("no.such.type", {})
    with pytest.raises(InvalidInput, match="expected a message of type"):
        envelope.decode(envelope.encode(env), expected_type="consent.token.get")
    with pytest.raises(InvalidInput, match="not a JSON message"):
        envelope.decode(b"\xff")
    with pytest.raises(InvalidInput, match="over the"):
        envelope.decode(b" " * (envelope.MAX_MESSAGE_BYTES + 1))
    bad_time = dict(env, time="yesterday")
    with pytest.raises(InvalidInput, match="date-time"):
        envelope.validate(bad_time)
    assert envelope.make("transfer.events.completed", {"transfer": {"id": "t1", "status": "completed"}})["type"] == "transfer.events.completed"
    with pytest.raises(InvalidInput, match="data"):  # the members the handlers read are typed
        envelope.make("transfer.events.completed", {"transfer": {"id": 1, "status": "completed"}})


def test_canonical_json_and_record_digest_follow_rfc8785() -> None:
    assert canonical({"b": 1, "a": [1.0, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    records = [{"value": "1", "date": "2022-01-01"}, {"date": "2022-01-02", "value": "2"}]
    expected = hashlib.sha256(b'{"date":"2022-01-01","value":"1"}\n{"date":"2022-01-02","value":"2"}\n').hexdigest()
    assert records_digest(records) == expected
    d = RecordDigest()
    d.update(records[:1])
    d.update(records[1:])
    assert (d.hexdigest(), d.count, d.bytes) == (expected, 2, 68)
    assert records_digest([]) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("current", sorted(STATES))
@pytest.mark.parametrize("target", sorted(STATES))
def test_every_consent_transition_is_allowed_or_refused_with_the_current_state(current: str, target: str) -> None:
    allowed = {("requested", "authorised"), ("requested", "rejected"), ("authorised", "revoked"),
               ("authorised", "expired"), ("authorised", "consumed"), ("authorised", "superseded"), ("requested", "expired")}
    if (current, target) in allowed:
        check_transition(current, target, consent_id="c")
    else:
        with pytest.raises(Conflict) as exc:
            check_transition(current, target, consent_id="c")
        assert exc.value.to_problem()["current_status"] == current
    assert sum(len(v) for v in TRANSITIONS.values()) == len(allowed)


def test_errors_survive_a_round_trip_as_problem_details() -> None:
    for err in (NotFound("x"), Conflict("y", current_status="revoked"), Unavailable("z"), InvalidInput("w")):
        back = from_problem(json.loads(json.dumps(err.to_problem())))
        assert type(back) is type(err) and back.detail == err.detail and back.extra == err.extra
    assert type(from_problem({"code": "weird", "detail": "?"})) is BrokerError


def test_settings_refuse_development_secrets_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.authclient import DEV_ADMIN_KEY, DEV_SIGNING_KEY, generate_keypair, public_jwks
    from shared.settings import DEV_HOLDER_CLIENT_SECRET, DEV_OAUTH_ISSUER, DEV_RECEIPT_SIGNING_KEY

    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="BROKER_RECIPIENT_TOKEN"):
        Settings()
    monkeypatch.setenv("BROKER_RECIPIENT_TOKEN", "a-real-secret")
    with pytest.raises(ValueError, match="TOKEN_ENCRYPTION_KEY"):
        Settings()
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEY", "A" * 43 + "=")
    with pytest.raises(ValueError, match="LOG_SIGNING_KEY"):
        Settings()
    monkeypatch.setenv("LOG_SIGNING_KEY", "B" * 43 + "=")
    with pytest.raises(ValueError, match="HOLDER_CLIENT_SECRET"):
        Settings()
    monkeypatch.setenv("HOLDER_CLIENT_SECRET", DEV_HOLDER_CLIENT_SECRET)
    with pytest.raises(ValueError, match="HOLDER_CLIENT_SECRET"):
        Settings()
    monkeypatch.setenv("HOLDER_CLIENT_SECRET", "a-real-client-secret")
    with pytest.raises(ValueError, match="RECEIPT_SIGNING_KEY"):
        Settings()
    monkeypatch.setenv("RECEIPT_SIGNING_KEY", DEV_RECEIPT_SIGNING_KEY)
    with pytest.raises(ValueError, match="RECEIPT_SIGNING_KEY"):
        Settings()
    monkeypatch.setenv("RECEIPT_SIGNING_KEY", "C" * 43 + "=")
    with pytest.raises(ValueError, match="OAUTH_ISSUER must be set"):
        Settings()
    monkeypatch.setenv("OAUTH_ISSUER", DEV_OAUTH_ISSUER)
    with pytest.raises(ValueError, match="OAUTH_ISSUER must be set"):
        Settings()
    monkeypatch.setenv("OAUTH_ISSUER", "http://registry.broker.example.org")
    with pytest.raises(ValueError, match="OAUTH_ISSUER must be an https URL"):
        Settings()
    monkeypatch.setenv("OAUTH_ISSUER", "https://registry.broker.example.org")
    with pytest.raises(ValueError, match="OAUTH_SIGNING_KEY must be set"):
        Settings()
    monkeypatch.setenv("OAUTH_SIGNING_KEY", json.dumps(DEV_SIGNING_KEY))
    with pytest.raises(ValueError, match="OAUTH_SIGNING_KEY must not be the development key"):
        Settings()
    monkeypatch.setenv("OAUTH_SIGNING_KEY", json.dumps({"keys": [generate_keypair()[0], DEV_SIGNING_KEY]}))
    with pytest.raises(ValueError, match="OAUTH_SIGNING_KEY must not be the development key"):
        Settings()
    # a process that signs no access token gets an inert, non-JSON stand-in (deploy/k8s: secret-standins)
    monkeypatch.setenv("OAUTH_SIGNING_KEY", "unused-in-this-service")
    assert Settings().environment == "production"
    monkeypatch.setenv("OAUTH_SIGNING_KEY", json.dumps(generate_keypair()[0]))
    assert Settings().environment == "production"
    monkeypatch.setenv("OAUTH_CLIENTS", json.dumps([{"client_id": "dev-admin", "role": "admin", "jwks": public_jwks(DEV_ADMIN_KEY)}]))
    with pytest.raises(ValueError, match="OAUTH_CLIENTS: 'dev-admin' uses a development key"):
        Settings()
    monkeypatch.setenv("OAUTH_CLIENTS", json.dumps([{"client_id": "admin", "role": "admin", "jwks": generate_keypair("Ed25519")[1]}]))
    monkeypatch.setenv("PUBLIC_URL", "http://consent.broker.example.org")
    with pytest.raises(ValueError, match="PUBLIC_URL must be https"):
        Settings()
    monkeypatch.setenv("PUBLIC_URL", "https://consent.broker.example.org")
    assert Settings().environment == "production"
    # development accepts every development value
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    assert Settings().environment == "development"


def test_database_urls() -> None:
    s = Settings(database_url="postgresql://u@h:5432/db", db_schema_prefix="t_")
    assert s.database_url_for("consent") == "postgresql+asyncpg://u@h:5432/db"
    assert s.schema_for("consent") == "t_consent"
    assert Settings(database_url=None).database_url_for("registry").startswith("sqlite+aiosqlite:///")


def test_sealed_tokens_open_only_with_their_key_and_row() -> None:
    box = SecretBox(DEV_KEY_B64)
    sealed = box.seal({"access_token": "secret"}, aad="consent-1")
    assert "secret" not in sealed
    assert box.open(sealed, aad="consent-1") == {"access_token": "secret"}
    with pytest.raises(SealError):
        box.open(sealed, aad="consent-2")
    with pytest.raises(SealError):
        SecretBox("B" * 43 + "=").open(sealed, aad="consent-1")


def test_the_consent_check_cache_keeps_authorised_rows_briefly_and_never_across_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.consent import service

    now = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: now[0])
    cache = service.ValidConsents(ttl_s=1.0, max_entries=3)
    epoch = cache.epoch
    cache.put("c1", "row1", {"id": "c1"}, epoch=epoch)
    assert cache.get("c1") == ("row1", {"id": "c1"})
    now[0] += 1.01  # older than the TTL: read again
    assert cache.get("c1") is None
    # a check that read the database while a consent changed does not keep what it read
    epoch = cache.epoch
    cache.forget_all()
    cache.put("c2", "stale", {"id": "c2"}, epoch=epoch)
    assert cache.get("c2") is None
    cache.put("c2", "fresh", {"id": "c2"}, epoch=cache.epoch)
    assert cache.get("c2") == ("fresh", {"id": "c2"})
    cache.forget_all()  # any change empties it
    assert cache.get("c2") is None
    for i in range(5):  # bounded: full means emptied, never grown
        cache.put(f"x{i}", "r", {}, epoch=cache.epoch)
    assert sum(cache.get(f"x{i}") is not None for i in range(5)) <= 3
    off = service.ValidConsents(ttl_s=0)  # CONSENT_CHECK_CACHE_S=0: always the database
    off.put("c", "r", {}, epoch=off.epoch)
    assert off.get("c") is None


async def test_the_outbox_relay_prunes_published_events_past_the_retention(tmp_path: Path) -> None:
    """Published events older than the retention go (they name people; nothing reads them once published);
    unpublished ones and recent ones stay; a retention of 0 keeps everything."""
    import os
    import uuid
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import MetaData, select, text

    from shared.db import Database
    from shared.outbox import OutboxRelay, outbox_table

    md = MetaData()
    table = outbox_table(md)
    settings = Settings(database_url=os.environ.get("DATABASE_URL") or None, data_dir=tmp_path, db_schema_prefix=f"x{uuid.uuid4().hex[:8]}_")
    db = Database(settings.database_url_for("consent"), md, settings.schema_for("consent"))
    await db.create_all()
    try:
        now = datetime.now(UTC)
        async with db.unit_of_work() as s:
            for n, published in enumerate([now - timedelta(days=40), now - timedelta(days=10), None, now - timedelta(days=31)]):
                await s.execute(table.insert().values(id=f"e{n}", subject="consent.events.x", envelope="{}", headers={},
                                                      created_at=now - timedelta(days=41), published_at=published))
        assert await OutboxRelay(db, table, None, keep_published_s=0).prune() == 0  # type: ignore[arg-type]
        assert await OutboxRelay(db, table, None, keep_published_s=30 * 86400).prune() == 2  # type: ignore[arg-type]
        async with db.sessions() as s:
            assert sorted((await s.execute(select(table.c.id))).scalars()) == ["e1", "e2"]
    finally:
        if db.schema:
            async with db.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE'))
        await db.dispose()
