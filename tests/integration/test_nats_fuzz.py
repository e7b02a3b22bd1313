"""Bad input over NATS: 1,000 random malformed messages on every subject the services answer or
consume, on a broker of its own; then every question got an error reply, every message a durable
consumer fetched was dead-lettered with its reason (once per consumer: none acked as valid, none
left to be retried), every process still serves, and a consented transfer still completes.

"Every subject": each request subject, and each subject a durable consumer reads (its filter, found
on the running server; ``consent.events.>`` gets its 1,000 spread over the consent event names);
the event subjects that only core subscriptions read get 100 each (those drop what is malformed,
with a log line, and dead-letter nothing).

The messages (seeded, so a failure replays): random bytes and invalid UTF-8, JSON that is not an
object, truncated JSON, envelopes with a field missing, of the wrong type, too long or extra, a
wrong or unknown ``type``, an impossible ``time``, data that breaks the schema of its type (a field
missing, of the wrong type, too long, extra, a lone surrogate), absurd nesting and numbers, and
garbage NATS headers (``traceparent`` and others). They are sent as the NATS ``admin`` user
(``Stack.nats_url``), the only one allowed to publish on every subject.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from nats.js import JetStreamContext

from shared import envelope, subjects
from shared.catalogue import parse_file
from shared.demo import consented_transfer
from shared.launcher import Stack

from ..conftest import REAL_ENEDIS_FILES, running_stack

pytestmark = pytest.mark.e2e

PER_SUBJECT = 1000
SEED = 20260
CORE_ONLY = 100  # events on each subject no durable consumer reads
NO_INBOX = 20  # questions of each request subject published without a reply inbox: dead-lettered
LOAD_CURVE = "enedis_v5_consumption_load_curve_myelectricaldata.json"

# request subject -> a valid question (the malformed ones are mutations of it, among others)
REQUESTS: dict[str, dict[str, Any]] = {
    subjects.REGISTRY_PARTICIPANT_GET: {"participant_id": "fuzz-participant"},
    subjects.REGISTRY_DATASET_GET: {"dataset_id": "fuzz.dataset"},
    subjects.REGISTRY_OAUTH_JWKS: {},
    subjects.CONSENT_CHECK: {"consent_id": "fuzz-consent", "dataset": "fuzz.dataset"},
    subjects.CONSENT_TOKEN_GET: {"consent_id": "fuzz-consent", "refresh": False},
}
EVENT_NAMES = {
    subjects.CONSENT_EVENTS: ("requested", "authorised", "rejected", "revoked", "expired", "consumed", "superseded"),
    subjects.TRANSFER_EVENTS: ("queued", "started", "progress", "completed", "partial", "failed", "cancelled"),
    subjects.REGISTRY_EVENTS: ("participant_registered", "participant_updated", "participant_status_changed", "dataset_registered",
                               "oauth_token_revoked"),
}
ENTITY = {subjects.CONSENT_EVENTS: "consent", subjects.TRANSFER_EVENTS: "transfer", subjects.REGISTRY_EVENTS: "participant"}


def valid_data(msg_type: str) -> dict[str, Any]:
    """A message of ``msg_type`` as a service would send it (with ids that exist nowhere)."""
    if msg_type in REQUESTS:
        return dict(REQUESTS[msg_type])
    if msg_type == "transfer.job":
        return {"transfer_id": "fuzz-transfer", "consent_id": "fuzz-consent", "dataset": "fuzz.dataset"}
    family, name = msg_type.rsplit(".", 1)
    if name == "oauth_token_revoked":
        return {"jti": "fuzz-jti", "client_id": "fuzz-client", "exp": 1, "revoked_by": "fuzz", "revoked_at": "2026-01-01T00:00:00Z"}
    if name == "dataset_registered":
        return {"dataset": {"id": "fuzz.dataset", "version": 1}}
    entity = {"id": f"fuzz-{name}", "status": name}
    if family == subjects.CONSENT_EVENTS:
        entity |= {"holder_id": "fuzz-holder", "recipient_id": "fuzz-recipient", "datasets": ["fuzz.dataset"], "one_off": True}
    if family == subjects.TRANSFER_EVENTS:
        entity |= {"consent_id": "fuzz-consent", "dataset": "fuzz.dataset"}
    return {ENTITY[family]: entity}


WRONG: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", [], [1, "a"], {}, {"a": {"b": []}}]


def _wrong(rng: random.Random, current: Any) -> Any:
    """A value of another JSON type than ``current``, or a string too long (over the schemas' 128)."""
    if isinstance(current, str) and rng.random() < 0.4:  # too long, or not Unicode text (a lone surrogate)
        return rng.choice(["x" * 129, "x" * 5000, "x" * 100_000, "a\udc00", "\ud800"])
    value = rng.choice(WRONG)
    same = type(value) is type(current) or (isinstance(value, (int, float)) and isinstance(current, (int, float))
                                             and not isinstance(value, bool) and not isinstance(current, bool))
    return value if not same else "x" * 129 if isinstance(current, str) else None


def _mutate_question(rng: random.Random, data: dict[str, Any]) -> Any:
    """A question or job that breaks its schema: a field missing, of the wrong type or too long, or an extra one."""
    data = dict(data)
    required = [k for k in data if k != "refresh"]
    kind = rng.randrange(4)
    if kind == 0 and required:
        data.pop(rng.choice(required))
    elif kind == 1 and data:
        key = rng.choice(sorted(data))
        data[key] = _wrong(rng, data[key])
    elif kind == 2 and "consent_id" in data and rng.random() < 0.5:
        data["rejected_token_sha256"] = rng.choice(["XYZ", "0" * 63, "g" * 64, 5])
    else:
        data[rng.choice(["zz", "Consent_id", "participant", "id"])] = rng.choice([1, "x", None, {}])
    return data


def _mutate_event(rng: random.Random, data: dict[str, Any]) -> Any:
    """An event whose data breaks the event schema: the entity (consent, transfer, participant, dataset) of the
    wrong type or without its id, one of its fields of the wrong type, or no data at all."""
    entity = next((k for k in ("consent", "transfer", "participant", "dataset") if k in data), None)
    data = json.loads(json.dumps(data))
    kind = rng.randrange(4)
    if entity is None or kind == 0:
        return {}
    if kind == 1:
        data[entity] = rng.choice([None, "x", 1, True, [data[entity]], {k: v for k, v in data[entity].items() if k != "id"}])
    else:
        field = "id" if kind == 2 else rng.choice(sorted(data[entity]))
        data[entity][field] = _wrong(rng, data[entity][field])  # none of these fields may be null
    return data


def malformed(rng: random.Random, msg_type: str) -> bytes:
    """One message that the schema of ``msg_type`` (or the envelope's) refuses."""
    good = envelope.make(msg_type, valid_data(msg_type), check=False)
    kind = rng.randrange(13)
    if kind == 0:  # random bytes, often not UTF-8
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    if kind == 1:  # JSON that is not an object
        return json.dumps(rng.choice([None, 1, -2.5, "text", [], [good], True, [[["x"]]]])).encode()
    if kind == 2:  # truncated JSON
        text = envelope.encode(good)
        return text[: rng.randrange(1, len(text) - 1)]
    if kind == 3:  # an envelope field missing
        env = dict(good)
        env.pop(rng.choice(sorted(env)))
        return json.dumps(env).encode()
    if kind == 4:  # an envelope field of the wrong type, or too long
        env = dict(good)
        field = rng.choice(["id", "type", "time", "correlation_id", "data"])
        env[field] = rng.choice([None, 1, [], {}, True, "", "x" * rng.choice([129, 10_000])] if field != "data" else [None, 1, [], "x", True])
        if field == "type" and isinstance(env[field], str) and env[field]:
            env[field] = "X" + env[field]
        return json.dumps(env).encode()
    if kind == 5:  # an extra envelope field
        return json.dumps({**good, rng.choice(["extra", "Data", "reply", "id2"]): rng.choice([1, "x", None, {}])}).encode()
    if kind == 6:  # a wrong type: another message type, an unknown one, or not a type name at all
        other = rng.choice(["consent.check", "transfer.job", "reply", "deadletter", "nonsense.type", "consent.events.x",
                            "registry.events.participant_updated", "UPPER.case", "a b", "../../etc/passwd", "é"])
        if other == msg_type:  # (an event's type is its subject: another event name is a wrong type too)
            other = "nonsense.type"
        return json.dumps({**good, "type": other}).encode()
    if kind == 7:  # an impossible time
        return json.dumps({**good, "time": rng.choice(["yesterday", "2026-13-45T00:00:00Z", "2026-01-01", "", "0", "2026-01-01T25:00:00Z"])}).encode()
    if kind == 8 or kind == 9:  # data that breaks the schema of its type
        mutate = _mutate_event if ".events." in msg_type else _mutate_question
        return json.dumps({**good, "data": mutate(rng, good["data"])}).encode()
    if kind == 10:  # absurd nesting or numbers
        return rng.choice([b"[" * 50_000, b"{\"a\":" * 20_000, b'{"id": ' + b"9" * 5000 + b"}",
                           json.dumps({**good, "id": 1e308 * 10}).encode(), b'{"id": NaN}'])
    if kind == 11:  # invalid UTF-8 inside an otherwise well-formed envelope
        text = envelope.encode(good)
        at = text.index(b'"id":"') + 6
        return text[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + text[at:]
    # big: a long string where a short one belongs (under NATS' 1 MiB payload limit)
    env = dict(good)
    env[rng.choice(["id", "correlation_id"])] = "x" * (900_000 if rng.random() < 0.05 else rng.choice([1000, 100_000]))
    return json.dumps(env).encode()


def garbage_headers(rng: random.Random) -> dict[str, str] | None:
    return rng.choice([
        None, {},
        {"traceparent": "garbage"},
        {"traceparent": "00-" + "z" * 32 + "-" + "0" * 16 + "-01"},
        {"traceparent": "ff-" + "0" * 32 + "-" + "0" * 16 + "-00", "tracestate": "=,=" * 100},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "x" * 4000},
        {"X-Garbage": "é" * 50, "Content-Type": "application/xml"},
        {"baggage": "k=" + "v" * 2000, "Nats-Msg-Id": ""},
    ])


def _plan(filters: set[str]) -> Iterator[tuple[str, str]]:
    """(subject, message type) of every JetStream message to send: PER_SUBJECT on each subject a durable consumer
    reads (its filter; a wildcard one spread over the event names it matches), and CORE_ONLY on each other event
    subject (read only by core subscriptions: the transfer workers' cancellation listener, the token verifiers)."""
    events = [f"{family}.{name}" for family, names in EVENT_NAMES.items() for name in names]
    for f in sorted(filters):
        concrete = [e for e in events if _matches(f, e)] if "*" in f or ">" in f else [f]
        for i in range(PER_SUBJECT):
            subject = concrete[i % len(concrete)]
            yield subject, "transfer.job" if subject == subjects.TRANSFER_JOBS else subject
    for subject in events:
        if not any(_matches(f, subject) for f in filters):
            for _ in range(CORE_ONLY):
                yield subject, subject


async def _gather_chunked(coros: list[Any], size: int = 200) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(coros), size):
        out += await asyncio.gather(*coros[i:i + size], return_exceptions=True)
    return out


async def _durables(js: JetStreamContext) -> dict[tuple[str, str], str]:
    """(stream, durable) -> filter subject, for every durable consumer of the broker's streams."""
    out = {}
    for spec in subjects.ALL_STREAMS:
        if spec.name == subjects.STREAM_DEAD_LETTER.name:
            continue
        for info in await js.consumers_info(spec.name):
            out[(spec.name, info.name)] = info.config.filter_subject or ">"
    return out


def _matches(filter_subject: str, subject: str) -> bool:
    f, s = filter_subject.split("."), subject.split(".")
    for i, token in enumerate(f):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(f) == len(s)


async def _dead_letter_counts(js: JetStreamContext) -> Counter[str]:
    info = await js.stream_info(subjects.STREAM_DEAD_LETTER.name, subjects_filter=f"{subjects.DEAD_LETTER}.>")
    return Counter({k.removeprefix(f"{subjects.DEAD_LETTER}."): v for k, v in (info.state.subjects or {}).items()})


async def _sample_dead_letters(js: JetStreamContext, subject: str, n: int) -> list[dict[str, Any]]:
    sub = await js.subscribe(subjects.dead_letter_subject(subject), ordered_consumer=True)
    out: list[dict[str, Any]] = []
    try:
        while len(out) < n:
            try:
                msg = await sub.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                break
            out.append(envelope.decode(msg.data, expected_type="deadletter")["data"])
    finally:
        await sub.unsubscribe()
    return out


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("nats-fuzz"), [real_dir / name for name in REAL_ENEDIS_FILES]) as s:
        yield s


async def test_malformed_messages_on_every_subject(fuzz_stack: Stack, real_dir: Path) -> None:
    stack = fuzz_stack
    rng = random.Random(SEED)
    started = time.monotonic()
    nc = await nats.connect(stack.nats_url, max_reconnect_attempts=0)
    js = nc.jetstream()
    try:
        durables = await _durables(js)
        before = await _dead_letter_counts(js)

        # 1. questions: each gets an error reply (invalid_input), none a time-out or "no responders"
        async def ask(subject: str, payload: bytes, headers: dict[str, str] | None) -> tuple[str, bytes, Any]:
            try:
                msg = await nc.request(subject, payload, timeout=10, headers=headers)
            except Exception as exc:  # noqa: BLE001 - reported below with the payload
                return subject, payload, exc
            return subject, payload, envelope.decode(msg.data, expected_type="reply")["data"]

        questions = [(subject, malformed(rng, subject), garbage_headers(rng)) for subject in REQUESTS for _ in range(PER_SUBJECT)]
        for subject in REQUESTS:  # as long as NATS allows: an error reply that quoted it would not fit
            env = envelope.make(subject, REQUESTS[subject], check=False)
            questions.append((subject, envelope.encode({**env, "id": "x" * (nc.max_payload - 200 - len(envelope.encode(env)))}), None))
        answers = await _gather_chunked([ask(*q) for q in questions])
        bad = [(s, p[:200], a) for s, p, a in answers if not isinstance(a, dict) or a.get("ok") is not False
               or a["error"].get("code") != "invalid_input" or a["error"].get("status") != 400 or not a["error"].get("detail")]
        assert not bad, f"{len(bad)} of {len(answers)} malformed questions were not refused as invalid_input; first ones: {bad[:5]}"
        asked = time.monotonic()

        # 2. questions without a reply inbox, jobs and events: dead-lettered by whoever reads them
        marker = uuid.uuid4().hex
        for subject in REQUESTS:
            for i in range(NO_INBOX):
                await nc.publish(subject, f"no inbox {marker} {i}".encode() if i == 0 else malformed(rng, subject), headers=garbage_headers(rng))
        plan = list(_plan(set(durables.values())))
        sent: Counter[str] = Counter(subject for subject, _ in plan)
        payloads = [(subject, malformed(rng, msg_type)) for subject, msg_type in plan]
        payloads += [(subject, f"sentinel {marker}".encode()) for subject in sorted(sent)]  # one findable message per subject
        sent.update(sorted(set(sent)))

        async def publish(subject: str, payload: bytes) -> Any:
            return await js.publish(subject, payload, headers={**(garbage_headers(rng) or {}), "Nats-Msg-Id": uuid.uuid4().hex}, timeout=10)

        acks = await _gather_chunked([publish(s, p) for s, p in payloads])
        failed = [a for a in acks if isinstance(a, Exception)]
        assert not failed, failed[:3]
        await nc.flush()
        published = time.monotonic()

        # every durable consumer of what we sent works through its backlog
        hit = {key: f for key, f in durables.items() if any(_matches(f, s) for s in sent)}
        assert {k[1] for k in hit} >= {subjects.TRANSFER_WORKERS_DURABLE, "consent-notify-holder", "consent-notify-recipient",
                                       "transfer-consent-events", "consent-registry-status", "consent-transfer-completed"}, hit
        deadline = time.monotonic() + 60
        while True:
            infos = {key: await js.consumer_info(*key) for key in hit}
            pending = {key[1]: (i.num_pending, i.num_ack_pending, i.num_redelivered) for key, i in infos.items()
                       if i.num_pending or i.num_ack_pending}
            if not pending:
                break
            assert time.monotonic() < deadline, f"consumers still busy after 60 s (pending, ack pending, redelivered): {pending}"
            await asyncio.sleep(0.5)
        drained = time.monotonic()

        # each consumer dead-lettered every message it read: none was acked as if it were valid, none is retried
        after = await _dead_letter_counts(js)
        new = after - before
        read: list[str] = []  # subjects a durable consumer reads (the others only core subscribers, which drop what is malformed)
        for subject, n in sorted(sent.items()):
            readers = [name for (_, name), f in hit.items() if _matches(f, subject)]
            assert new[subject] == n * len(readers), (subject, n, readers, new[subject])
            read += [subject] if readers else []
        for subject in REQUESTS:
            assert new[subject] == NO_INBOX, (subject, new[subject])
        # sample check: the dead letters carry the subject, the payload and a reason
        assert len(read) >= 10, read
        for subject in [*read[::3], *REQUESTS]:
            letters = await _sample_dead_letters(js, subject, 30)
            assert letters, subject
            for letter in letters:
                assert letter["subject"] == subject and letter["reason"] and letter["deliveries"] >= 1, letter
            if subject in sent:
                mine = [d for d in await _sample_dead_letters(js, subject, new[subject] + before[subject]) if marker in d["payload"]]
                assert mine and all(d["reason"].startswith("malformed message: not a JSON message") for d in mine), (subject, mine)
    finally:
        await nc.close()

    # every process still serves
    with httpx.Client(timeout=5) as c:
        for p in stack.procs.values():
            assert p.alive(), f"{p.name} died:\n{p.log_tail()}"
            if p.url:
                r = c.get(f"{p.url}{p.health}")
                assert r.status_code == 200, (p.name, r.text)

    # and a consented transfer still completes
    parsed = parse_file(real_dir / LOAD_CURVE)

    def transfer() -> dict[str, Any]:
        with httpx.Client(timeout=30) as c:
            return consented_transfer(c, stack, customer=parsed.subject_key, dataset=parsed.dataset_id, timeout=60)

    result = await asyncio.to_thread(transfer)
    assert result["status"] == "completed" and result["cloud_records"] == parsed.records, result["transfer"]
    print(f"\n{len(questions)} questions answered in {asked - started:.1f} s; {len(payloads)} jobs and events published in "
          f"{published - asked:.1f} s, all dead-lettered {drained - published:.1f} s later ({sum(new.values())} dead letters); "
          f"transfer completed; {time.monotonic() - started:.1f} s in all")
