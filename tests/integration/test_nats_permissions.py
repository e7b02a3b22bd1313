"""Each service connects to NATS as its own user and may use only its own subjects (shared/natsauth.py).

The embedded nats-server is started by the launcher (shared/launcher.py) on a free port with the
generated configuration, as ``make run`` and the other integration tests start it; the tests connect
through :class:`shared.bus.Bus` with the credentials the launcher gives each service's processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from shared import envelope, natsauth, subjects
from shared.bus import Bus
from shared.launcher import Stack
from shared.settings import Settings

pytestmark = pytest.mark.e2e


def settings_for(stack: Stack, user: str) -> Settings:
    """The NATS settings the launcher gives the processes of ``user``."""
    return Settings(**{k.lower(): v for k, v in stack.nats_env(user).items()})


async def connect_as(stack: Stack, user: str) -> Bus:
    s = settings_for(stack, user)
    return await asyncio.wait_for(Bus.connect(s.nats_url, user, settings=s), 10)


async def admin(stack: Stack) -> nats.NATS:
    return await nats.connect(stack.nats_url or "", allow_reconnect=False, tls=stack.admin_tls_context())


async def until(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def violations(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The permission violations the Bus logged, lower-cased (as nats-py reports them)."""
    return [r.getMessage().lower() for r in caplog.records if r.name == "shared.bus" and "permissions violation" in r.getMessage().lower()]


@pytest.fixture(scope="module")
def nats_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Only the embedded nats-server, with the permission table, on a free port."""
    stack = Stack(data_dir=tmp_path_factory.mktemp("natsauth"))
    stack.start_nats()
    try:
        yield stack
    finally:
        stack.stop()


# ---- the table matches the code ------------------------------------------------------------------


class _FakeRuntime:
    """Enough of shared.runtime.Runtime to build the services' consumer specs without running anything."""

    def __init__(self) -> None:
        self.settings = Settings()

    def require_bus(self) -> Any:
        return object()


def test_the_table_grants_every_consumer_and_bucket_the_services_use() -> None:
    """A consumer, bucket or subject added to a service must be added to shared/natsauth.py too:
    the server would refuse it (and the Bus would log "permissions violation")."""
    from services.consent import handlers as consent_handlers
    from services.consent import notify
    from services.consent.log import TRANSFER_ENDINGS
    from services.transfer import limits, schedule, worker
    from shared import auth

    rt: Any = _FakeRuntime()
    consent_specs = [consent_handlers.transfer_events_consumer(rt).spec, consent_handlers.registry_events_consumer(rt).spec,
                     *(c.spec for c in consent_handlers.transfer_log_consumers(rt)),
                     *(notify.consumer(rt, role).spec for role in natsauth.NOTIFIED_ROLES)]
    transfer_specs = [worker.consumer_spec(rt), schedule.consent_events_consumer(rt).spec]
    for service, specs in (("consent", consent_specs), ("transfer", transfer_specs)):
        declared = {(c.stream, c.durable, c.filter_subject) for c in natsauth.ACCESS[service].consumers}
        used = {(sp.stream, sp.durable, sp.filter_subject) for sp in specs}
        assert used == declared, f"{service}: consumers in the code {sorted(used)} != shared/natsauth.py {sorted(declared)}"
    assert natsauth.TRANSFER_ENDINGS == TRANSFER_ENDINGS
    assert {auth.TOKEN_REVOKED, auth.PARTICIPANT_STATUS_CHANGED} == set(natsauth.TOKEN_VERIFIER_LISTENS)
    assert set(natsauth.ACCESS["transfer"].kv_buckets) == {limits.SLOTS_BUCKET, limits.RATE_BUCKET}
    # every stream has one owner (the dead-letter stream is everyone's)
    owners = [spec.name for a in natsauth.ACCESS.values() for spec in a.owns_streams]
    assert sorted(owners) == sorted(spec.name for spec in subjects.ALL_STREAMS if spec is not subjects.STREAM_DEAD_LETTER)


def test_the_kubernetes_nats_config_is_the_rendered_table() -> None:
    committed = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "config" / "nats-auth.conf"
    assert committed.read_text("utf-8") == natsauth.k8s_auth_config(), (
        "deploy/k8s/base/config/nats-auth.conf is stale: python -m shared.natsauth k8s > deploy/k8s/base/config/nats-auth.conf")


# ---- the server enforces it --------------------------------------------------------------------


def test_the_server_config_is_private_and_each_service_gets_only_its_own_password(nats_stack: Stack) -> None:
    conf = nats_stack.data_dir / "nats-server.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert set(nats_stack.nats_passwords) == set(natsauth.USERS)
    assert len(set(nats_stack.nats_passwords.values())) == len(natsauth.USERS)
    for user in natsauth.SERVICES:
        env = nats_stack.nats_env(user)
        assert env["NATS_USER"] == user and env["NATS_PASSWORD"] == nats_stack.nats_passwords[user]
        assert "@" not in env["NATS_URL"], "the services' URL carries no credentials"
    assert "NATS_PASSWORD" not in nats_stack.nats_env(None), "the reference participants get no NATS credentials"


async def test_the_server_refuses_a_service_publishing_outside_its_subjects(nats_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="shared.bus")
    watcher = await admin(nats_stack)
    seen: list[str] = []

    async def record(msg: Any) -> None:
        seen.append(msg.subject)

    sub = await watcher.subscribe(">", cb=record)
    await watcher.flush()
    js = watcher.jetstream()
    before = (await js.stream_info(subjects.STREAM_CONSENT_EVENTS.name)).state.messages
    transfer = await connect_as(nats_stack, "transfer")
    try:
        # a transfer worker that would fake a revocation in the registry's or the consent service's name
        forged = envelope.make("registry.events.participant_status_changed", {"participant": {"id": "h", "status": "revoked"}})
        await transfer.nc.publish("registry.events.participant_status_changed", envelope.encode(forged))
        await transfer.nc.flush()
        with pytest.raises(nats.errors.TimeoutError):  # refused: the stream never answers
            await transfer.js.publish(f"{subjects.CONSENT_EVENTS}.revoked", b"{}", timeout=1.0)
        assert await until(lambda: len(violations(caplog)) >= 2), caplog.text
        text = "\n".join(violations(caplog))
        assert 'publish to "registry.events.participant_status_changed"' in text
        assert f'publish to "{subjects.CONSENT_EVENTS}.revoked"' in text
        await watcher.flush()
        await asyncio.sleep(0.2)
        assert not [x for x in seen if x.startswith((subjects.REGISTRY_EVENTS, subjects.CONSENT_EVENTS))], seen
        assert (await js.stream_info(subjects.STREAM_CONSENT_EVENTS.name)).state.messages == before

        # its own subjects still work, on the same connection
        caplog.clear()
        await transfer.publish(f"{subjects.TRANSFER_EVENTS}.started", b"{}", msg_id=uuid.uuid4().hex, attempts=1)
        assert await until(lambda: f"{subjects.TRANSFER_EVENTS}.started" in seen)
        assert violations(caplog) == []
    finally:
        await transfer.close()
        await sub.unsubscribe()
        await watcher.close()


async def test_event_streams_keep_events_for_the_retention_and_follow_a_change(nats_stack: Stack,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Events name people: the event streams keep them EVENT_RETENTION_DAYS (default 30), the work queue
    of transfer jobs keeps its jobs until done; a service started with another retention updates its streams."""
    nc = await admin(nats_stack)
    js = nc.jetstream()
    default_s = Settings().event_retention_days * 86400
    bus = await connect_as(nats_stack, "consent")
    try:
        for spec in subjects.ALL_STREAMS:
            age = (await js.stream_info(spec.name)).config.max_age or 0
            assert age == (0 if spec.work_queue else default_s), (spec.name, age)
        await bus.ensure_streams(natsauth.owned_streams("consent"), max_age_s=86400)
        for spec in natsauth.owned_streams("consent"):
            assert (await js.stream_info(spec.name)).config.max_age == 86400
        assert (await js.stream_info(subjects.STREAM_TRANSFER_EVENTS.name)).config.max_age == default_s  # not the consent's
        assert not violations(caplog)
    finally:
        await bus.ensure_streams(natsauth.owned_streams("consent"), max_age_s=default_s)  # as the other tests expect
        await bus.close()
        await nc.close()


async def test_requests_and_replies_work_between_the_services(nats_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="shared.bus")
    registry = await connect_as(nats_stack, "registry")
    consent = await connect_as(nats_stack, "consent")
    transfer = await connect_as(nats_stack, "transfer")
    try:
        async def dataset(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
            return {"id": data["dataset_id"]}

        async def check(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
            # the consent service asks the registry in turn
            return {"valid": True, "dataset": await consent.request(subjects.REGISTRY_DATASET_GET, {"dataset_id": data["dataset"]})}

        await registry.serve(subjects.REGISTRY_DATASET_GET, dataset, queue="registry")
        await consent.serve(subjects.CONSENT_CHECK, check, queue="consent")
        answer = await transfer.request(subjects.CONSENT_CHECK, {"consent_id": "c1", "dataset": "d1"}, timeout=5)
        assert answer == {"valid": True, "dataset": {"id": "d1"}}
        assert violations(caplog) == []
    finally:
        for bus in (transfer, consent, registry):
            await bus.close()


async def test_a_service_cannot_read_what_is_not_for_it(nats_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """No service can read another's replies (holder tokens go to the transfer service's inbox),
    take another's requests, or pull another's jobs."""
    caplog.set_level(logging.ERROR, logger="shared.bus")
    registry = await connect_as(nats_stack, "registry")
    consent = await connect_as(nats_stack, "consent")
    try:
        await registry.nc.subscribe(f"{natsauth.inbox_prefix('transfer')}.>")
        await registry.nc.subscribe(subjects.CONSENT_TOKEN_GET)
        await registry.nc.flush()
        with pytest.raises(nats.errors.TimeoutError):  # the transfer workers' queue is not the consent service's
            await consent.nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_TRANSFER_JOBS.name}.{subjects.TRANSFER_WORKERS_DURABLE}",
                                     b'{"batch": 1, "no_wait": true}', timeout=1.0)
        assert await until(lambda: len(violations(caplog)) >= 3), caplog.text
        text = "\n".join(violations(caplog))
        assert f'subscription to "{natsauth.inbox_prefix("transfer")}.>"'.lower() in text
        assert f'subscription to "{subjects.CONSENT_TOKEN_GET}"' in text
        assert "$JS.API.CONSUMER.MSG.NEXT.TRANSFER_JOBS".lower() in text
    finally:
        await consent.close()
        await registry.close()


@pytest.mark.parametrize(("user", "password"), [("transfer", "wrong"), ("mallory", "anything"), (None, None)],
                         ids=["wrong-password", "unknown-user", "no-credentials"])
async def test_unknown_users_and_wrong_passwords_cannot_connect(nats_stack: Stack, user: str | None, password: str | None) -> None:
    async def quiet(_exc: Exception) -> None:
        pass

    with pytest.raises((nats.errors.AuthorizationError, nats.errors.Error)) as refused:
        await nats.connect(nats_stack.nats_server_url or "", user=user, password=password, allow_reconnect=False,
                           connect_timeout=2, error_cb=quiet)
    assert "authorization" in str(refused.value).lower() or isinstance(refused.value, nats.errors.AuthorizationError)


# ---- TLS ---------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test NATS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("natstls")
    ca, cert, key = _certificates(data)
    stack = Stack(data_dir=data, nats_tls=natsauth.ServerTls(cert_file=cert, key_file=key, ca_file=ca))
    stack.start_nats()
    try:
        yield stack
    finally:
        stack.stop()


async def test_services_connect_over_tls_with_their_credentials(tls_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="shared.bus")
    assert (tls_stack.nats_server_url or "").startswith("tls://")
    assert tls_stack.nats_env("consent")["NATS_TLS_CA"]
    consent = await connect_as(tls_stack, "consent")
    try:
        await consent.publish(f"{subjects.CONSENT_EVENTS}.granted", b"{}", msg_id=uuid.uuid4().hex, attempts=1)
        await consent.nc.publish("transfer.jobs", b"forged job")
        await consent.nc.flush()
        assert await until(lambda: len(violations(caplog)) >= 1), "permissions apply over TLS too"
    finally:
        await consent.close()
    # a client that does not trust the server's CA is refused by its own TLS check
    with pytest.raises(Exception, match="(?i)certificate"):
        await nats.connect(tls_stack.nats_server_url or "", user="consent", password=tls_stack.nats_passwords["consent"],
                           allow_reconnect=False, connect_timeout=2)


async def test_the_password_never_goes_over_plaintext_when_tls_is_configured(nats_stack: Stack, tls_stack: Stack,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Settings that ask for TLS, pointed at a server without TLS: the Bus does not send the password."""
    caplog.set_level(logging.WARNING, logger="shared.bus")
    s = settings_for(nats_stack, "transfer").model_copy(update={"nats_tls_ca": Path(tls_stack.nats_env("transfer")["NATS_TLS_CA"])})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Bus.connect(s.nats_url, "transfer", settings=s, connect_timeout=1), 2.0)
    assert "the password is not sent" in caplog.text


async def test_bus_connect_refuses_half_set_credentials_and_development_passwords_in_production() -> None:
    with pytest.raises(ValueError, match="NATS_USER and NATS_PASSWORD"):
        await Bus.connect("nats://127.0.0.1:1", "transfer", settings=Settings(nats_user="transfer"))
    placeholders = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "placeholders" / "nats-passwords.env"
    values = dict(line.split("=", 1) for line in placeholders.read_text("utf-8").splitlines() if line and not line.startswith("#"))
    assert values == {natsauth.password_variable(u): natsauth.dev_password(u) for u in natsauth.USERS}
    production = Settings().model_copy(update={"environment": "production", "nats_user": "transfer",
                                               "nats_password": natsauth.dev_password("transfer")})
    with pytest.raises(ValueError, match="NATS_PASSWORD must be set outside development mode"):
        await Bus.connect("nats://127.0.0.1:1", "transfer", settings=production)


def test_a_retention_nats_cannot_keep_is_refused_at_start_with_the_reason(tmp_path: Path) -> None:
    """Under the 120 s dedupe window NATS refuses the streams: the setting is refused first, saying why."""
    from shared.launcher import StartError

    stack = Stack(data_dir=tmp_path, extra_env={"EVENT_RETENTION_DAYS": "0.001"})
    try:
        with pytest.raises(StartError, match="at least 1 day"):
            stack.start_nats()
    finally:
        stack.stop()
