"""The consent log verifier (shared/audit.py) against an in-memory log whose served entries can be
tampered with while its Merkle nodes stay honest, as when somebody edits the entries table."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shared import audit
from shared.audit import (
    AuditError,
    HttpLogSource,
    Mismatch,
    Report,
    TrustedState,
    app,
    canonical_json,
    load_state,
    save_state,
    verify_log,
)
from shared.canonical import canonical
from shared.tlog import Checkpoint, MemoryTree, Signer, leaf_hash, sign_note

ORIGIN = "test.example/consent-log"
SIGNER = Signer.from_seed(ORIGIN, bytes(range(32)))


def entry(i: int) -> dict[str, Any]:
    return {"v": 1, "event": "requested", "consent_id": f"c{i}", "subject": f"{i:064x}", "time": f"2026-01-01T00:00:{i % 60:02d}Z"}


class MemoryLog:
    """A log: entries as served (``served``, tamperable) and the honest tree behind proofs and checkpoints."""

    def __init__(self, n: int, signer: Signer = SIGNER, origin: str = ORIGIN) -> None:
        self.signer, self.origin = signer, origin
        self.tree = MemoryTree()
        self.served: list[dict[str, Any]] = []
        self.note = ""
        self.extend([entry(i) for i in range(n)])

    def extend(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            h = leaf_hash(canonical(e))
            self.served.append({"index": self.tree.size, "entry": e, "leaf_hash": h.hex()})
            self.tree.append_hash(h)
        self.note = Checkpoint(self.origin, self.tree.size, self.tree.root()).sign(self.signer)

    async def public_key(self) -> str:
        return self.signer.vkey

    async def checkpoint(self) -> str:
        return self.note

    async def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]:
        for item in self.served:
            if start <= item["index"] < end:
                yield copy.deepcopy(item)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.tree.inclusion_proof(index, size)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.tree.consistency_proof(first, second)


async def verified(log: MemoryLog, state: TrustedState | None = None) -> TrustedState:
    report, new = await verify_log(log, state=state, rng=random.Random(1))
    assert report.size == log.tree.size
    return new


async def mismatch(log: MemoryLog, state: TrustedState | None) -> Mismatch:
    with pytest.raises(Mismatch) as exc:
        await verify_log(log, state=state, rng=random.Random(1))
    return exc.value


async def test_a_sound_log_verifies_and_then_only_grows() -> None:
    log = MemoryLog(37)
    state = await verified(log)
    assert state.size == 37 and len(state.leaves) == 37 and state.public_key == SIGNER.vkey
    log.extend([entry(i) for i in range(37, 50)])
    report, state2 = await verify_log(log, state=state, sample=5, rng=random.Random(2))
    assert (report.new_entries, report.consistency_from, report.inclusion_proofs) == (13, 37, 13 + 5)
    assert state2.size == 50 and state2.leaves[:37] == state.leaves
    empty = MemoryLog(0)
    assert (await verified(empty)).size == 0


@pytest.mark.parametrize("pinned", [True, False])
async def test_one_changed_byte_is_named(pinned: bool) -> None:
    log = MemoryLog(40)
    state = await verified(log) if pinned else None
    log.served[17]["entry"]["consent_id"] = "c18"  # the stored leaf hash is left as it was
    m = await mismatch(log, state)
    assert m.index == 17 and "leaf hash" in m.message
    log.served[17]["leaf_hash"] = leaf_hash(canonical(log.served[17]["entry"])).hex()  # and now recomputed too
    m = await mismatch(log, state)
    assert m.index == 17
    assert ("verified on" in m.message) if pinned else ("root" in m.message)


@pytest.mark.parametrize("pinned", [True, False])
async def test_a_deleted_entry_is_named(pinned: bool) -> None:
    log = MemoryLog(40)
    state = await verified(log) if pinned else None
    del log.served[23]
    m = await mismatch(log, state)
    assert m.index == 23 and "missing" in m.message
    del log.served[-1]  # the last one
    log.served.insert(23, copy.deepcopy(MemoryLog(40).served[23]))
    m = await mismatch(log, state)
    assert m.index == 39 and "missing" in m.message


@pytest.mark.parametrize("pinned", [True, False])
async def test_two_swapped_entries_are_named(pinned: bool) -> None:
    log = MemoryLog(40)
    state = await verified(log) if pinned else None
    a, b = log.served[5], log.served[30]
    a["entry"], b["entry"] = b["entry"], a["entry"]
    a["leaf_hash"], b["leaf_hash"] = b["leaf_hash"], a["leaf_hash"]
    m = await mismatch(log, state)
    assert m.index == 5


async def test_a_rewritten_history_signed_with_the_operators_key_is_caught_by_the_pinned_state() -> None:
    log = MemoryLog(40)
    state = await verified(log)
    forged = MemoryLog(0)
    forged.extend([entry(i) for i in range(25)] + [entry(1000 + i) for i in range(30)])  # truncated at 25, regrown
    m = await mismatch(forged, state)
    assert m.index == 25 and "consistency proof" in m.message
    assert (await verified(forged)).size == 55  # without the pinned state nothing tells
    shorter = MemoryLog(30)
    m = await mismatch(shorter, state)
    assert m.index == 30 and "shrank" in m.message
    same_size = MemoryLog(0)
    same_size.extend([entry(i) for i in range(39)] + [entry(999)])
    m = await mismatch(same_size, state)
    assert m.index == 39 and "consistency proof" in m.message


async def test_bad_signature_other_key_and_bad_proofs() -> None:
    log = MemoryLog(10)
    state = await verified(log)
    log.note = log.note.replace("\n10\n", "\n11\n")
    m = await mismatch(log, state)
    assert m.index is None and "does not verify" in m.message
    other = MemoryLog(10, Signer.from_seed(ORIGIN, bytes(32)))
    m = await mismatch(other, state)  # signed by a key that is not the pinned one
    assert m.index is None
    with pytest.raises(AuditError, match="differs from the key pinned"):
        await verify_log(other, state=state, public_key=other.signer.vkey)
    with pytest.raises(AuditError, match="bad public key"):
        await verify_log(log, state=None, public_key="not-a-key")

    class BadProofs(MemoryLog):
        async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
            proof = self.tree.inclusion_proof(index, size)
            return [bytes(32)] + proof[1:] if index == 7 else proof

    bad = BadProofs(12)
    m = await mismatch(bad, None)
    assert m.index == 7 and "inclusion proof" in m.message


async def test_non_object_entry_and_extra_entries() -> None:
    log = MemoryLog(8)
    log.served[3]["entry"] = '{"v":1, broken'
    m = await mismatch(log, None)
    assert m.index == 3 and "not a JSON object" in m.message
    log = MemoryLog(8)
    log.served.insert(4, copy.deepcopy(log.served[4]))
    m = await mismatch(log, None)
    assert m.index == 5 and "missing" in m.message


def test_state_file_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    assert load_state(path) is None
    st = TrustedState(public_key=SIGNER.vkey, origin=ORIGIN, size=2, root_hash=bytes(32), note="n\n", leaves=[b"a" * 32, b"b" * 32],
                      verified_at="2026-01-01T00:00:00Z")
    save_state(path, st)
    assert load_state(path) == st
    leaves = path.with_name(json.loads(path.read_text("utf-8"))["leaves_file"])  # the leaves file the state names
    leaves.write_bytes(b"a" * 64)
    with pytest.raises(AuditError, match="unreadable"):
        load_state(path)
    path.write_text("{", "utf-8")
    with pytest.raises(AuditError):
        load_state(path)


def test_cli_usage_and_network_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["http://127.0.0.1:9", "--state", str(tmp_path / "st.json"), "--timeout", "2"])
    assert r.exit_code == 2, r.output
    r = runner.invoke(app, ["http://127.0.0.1:9", "--state", str(tmp_path / "st.json"), "--sample", "-1"])
    assert r.exit_code == 2
    (tmp_path / "bad.json").write_text(json.dumps({"size": 1}), "utf-8")
    r = runner.invoke(app, ["http://127.0.0.1:9", "--state", str(tmp_path / "bad.json")])
    assert r.exit_code == 2 and "unreadable" in r.output


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_the_fast_canonical_json_is_rfc_8785(value: Any) -> None:
    try:
        want = canonical(value)
    except Exception as exc:  # not representable in JCS (e.g. lone surrogates): the fast path must refuse too
        with pytest.raises(type(exc)):
            canonical_json(value)
        return
    assert canonical_json(value) == want
    entry_like = {"v": 1, "event": "x\u0000\u001f\"\\\u2028é😀", "n": 2**53 - 1, "m": 1 - 2**53, "l": [None, True, "a"]}
    assert canonical_json(entry_like) == canonical(entry_like)


# ---- the /log HTTP API of a MemoryLog, in process (httpx.MockTransport), and answers a hostile log may give ----------

Route = Callable[[httpx.Request], "httpx.Response | None"]


def log_api(log: MemoryLog, routes: dict[str, Route] | None = None) -> httpx.MockTransport:
    """The consent service's read-only ``/log`` API over ``log``; ``routes`` maps a path to a handler that answers
    instead (or returns None to let the honest API answer)."""

    async def handle(request: httpx.Request) -> httpx.Response:
        path, q = request.url.path, request.url.params
        if routes and path in routes:
            answer = routes[path](request)
            if answer is not None:
                return answer
        if path == "/log/public-key":
            return httpx.Response(200, text=await log.public_key())
        if path == "/log/checkpoint":
            return httpx.Response(200, text=await log.checkpoint())
        if path == "/log/export.jsonl":
            return httpx.Response(200, content="".join(line + "\n" for line in export_lines(log, int(q["start"]), int(q["end"]))))
        if path == "/log/proof/inclusion":
            proof = await log.inclusion_proof(int(q["index"]), int(q["size"]))
        elif path == "/log/proof/consistency":
            proof = await log.consistency_proof(int(q["first"]), int(q["second"]))
        else:
            return httpx.Response(404)
        return httpx.Response(200, json={"proof": [h.hex() for h in proof]})

    return httpx.MockTransport(handle)


def export_lines(log: MemoryLog, start: int = 0, end: int | None = None) -> list[str]:
    return [json.dumps(item) for item in log.served if start <= item["index"] < (log.tree.size if end is None else end)]


async def over_http(log: MemoryLog, state: TrustedState | None = None, routes: dict[str, Route] | None = None,
                    **options: Any) -> tuple[Report, TrustedState]:
    source = HttpLogSource("http://log", transport=log_api(log, routes), **options)
    try:
        return await verify_log(source, state=state, rng=random.Random(1))
    finally:
        await source.aclose()


class Trickle(httpx.AsyncByteStream):
    """A body sent ``step`` bytes at a time, ``pause`` seconds apart; ``sent`` counts what was sent."""

    def __init__(self, data: bytes | Callable[[], bytes], step: int, pause: float = 0.0, total: int | None = None) -> None:
        self.data, self.step, self.pause, self.total, self.sent = data, step, pause, total, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if callable(self.data):  # endless: the same chunk again and again, up to ``total`` bytes
            chunk = self.data()
            while self.total is None or self.sent < self.total:
                self.sent += len(chunk)
                yield chunk
                await asyncio.sleep(self.pause)
            return
        for i in range(0, len(self.data), self.step):
            if i:
                await asyncio.sleep(self.pause)
            self.sent += len(self.data[i:i + self.step])
            yield self.data[i:i + self.step]


def fail(status: int = 503, body: str = "busy") -> Route:
    return lambda request: httpx.Response(status, text=body)


def raise_(exc: Exception) -> Route:
    def route(request: httpx.Request) -> httpx.Response:
        raise exc
    return route


def tampered(n: int, k: int) -> MemoryLog:
    """A log of ``n`` whose served entry ``k`` was changed and its stored leaf hash recomputed (the tree is honest)."""
    log = MemoryLog(n)
    log.served[k]["entry"]["event"] = "revoked"
    log.served[k]["leaf_hash"] = leaf_hash(canonical(log.served[k]["entry"])).hex()
    return log


def cli(monkeypatch: pytest.MonkeyPatch, transport: httpx.AsyncBaseTransport, *args: str) -> Any:
    """``portability-audit http://log ARGS`` with the log behind ``transport``."""
    monkeypatch.setattr(audit, "HttpLogSource", lambda url, **kw: HttpLogSource(url, transport=transport, **kw))
    return CliRunner().invoke(app, ["http://log", *args])


def one_error_line(result: Any, code: int = 2) -> str:
    """The output of a run that ended with ``code`` and one line, no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    if code == 2:
        assert lines[0].startswith("error: "), lines
    return lines[0]


# ---- 1. credentials, and anything unexpected: exit 2, one line --------------------------------------------------


def test_bad_regulator_credentials_and_unexpected_failures_exit_2_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from shared import authclient

    api = log_api(MemoryLog(5))
    creds = ["--state", str(tmp_path / "st.json"), "--client-id", "regulator-1", "--token-url", "http://registry/oauth/token"]
    (tmp_path / "empty.jwk").write_text("{}", "utf-8")
    out = one_error_line(cli(monkeypatch, api, *creds, "--key-file", str(tmp_path / "empty.jwk")))
    assert "holds no usable private key" in out and "unsupported JWK key type" in out
    (tmp_path / "garbage.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", "utf-8")
    assert "holds no usable private key" in one_error_line(cli(monkeypatch, api, *creds, "--key-file", str(tmp_path / "garbage.pem")))
    assert "cannot read --key-file" in one_error_line(cli(monkeypatch, api, *creds, "--key-file", str(tmp_path / "absent.jwk")))

    private, _ = authclient.generate_keypair()
    (tmp_path / "key.jwk").write_text(json.dumps(private), "utf-8")
    token_endpoint: list[Route] = [lambda request: httpx.Response(401, json={"error": "invalid_client"})]

    def token_client(self: authclient.AsyncTokenSource) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: token_endpoint[0](request)))
        return self._http

    monkeypatch.setattr(authclient.AsyncTokenSource, "_client", token_client)
    out = one_error_line(cli(monkeypatch, api, *creds, "--key-file", str(tmp_path / "key.jwk")))
    assert "refused the regulator's credentials" in out and "invalid_client" in out
    token_endpoint[0] = raise_(httpx.ConnectError("connection refused"))
    assert "could not get a token" in one_error_line(cli(monkeypatch, api, *creds, "--key-file", str(tmp_path / "key.jwk")))
    token_endpoint[0] = lambda request: httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 60})
    r = cli(monkeypatch, api, *creds, "--key-file", str(tmp_path / "key.jwk"))
    assert r.exit_code == 0, r.output  # and good credentials work

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(audit, "verify_log", broken)
    out = one_error_line(cli(monkeypatch, api, "--state", str(tmp_path / "st2.json")))
    assert "unexpected RuntimeError: something nobody foresaw" in out


# ---- 2. a proof the log did not serve is "could not check", never a mismatch ------------------------------------


async def test_transient_http_errors_never_blame_an_index() -> None:
    m = await mismatch_over_http(tampered(12, 9))
    assert m.index == 9  # the honest baseline: over HTTP too, the bisection names it
    for route in (fail(503), fail(500, "oops"), raise_(httpx.ConnectError("refused")), raise_(httpx.ReadTimeout("slow"))):
        with pytest.raises(AuditError) as exc:  # the entries do not hash to the signed root, but the bisection cannot run
            await over_http(tampered(12, 9), routes={"/log/proof/consistency": route})
        assert "first one not covered" in str(exc.value) and not isinstance(exc.value, Mismatch)
    log = MemoryLog(12)
    with pytest.raises(AuditError, match="HTTP 503"):
        await over_http(log, routes={"/log/proof/inclusion": lambda r: fail()(r) if r.url.params["index"] == "7" else None})
    _, state = await over_http(MemoryLog(8))
    for route in (fail(503), raise_(httpx.ConnectError("refused"))):
        with pytest.raises(AuditError, match="consistency"):
            await over_http(log, state, routes={"/log/proof/consistency": route})
    for route in (lambda r: httpx.Response(200, text="<html>oops</html>"), lambda r: httpx.Response(200, json={"detail": "later"})):
        with pytest.raises(AuditError, match="did not answer the inclusion proof"):
            await over_http(log, routes={"/log/proof/inclusion": route})


async def test_a_received_proof_that_is_malformed_is_a_mismatch() -> None:
    log = MemoryLog(12)

    def proof_of_7(hashes: Callable[[list[str]], list[Any]]) -> Route:
        def route(request: httpx.Request) -> httpx.Response | None:
            if request.url.params["index"] != "7":
                return None
            honest = [h.hex() for h in log.tree.inclusion_proof(7, 12)]
            return httpx.Response(200, json={"proof": hashes(honest)})
        return route

    for bad in (lambda p: [p[0][:62]] + p[1:], lambda p: p + ["00" * 32], lambda p: p[:-1], lambda p: ["zz" * 32] + p[1:],
                lambda p: [7] + p[1:]):
        with pytest.raises(Mismatch) as exc:
            await over_http(log, routes={"/log/proof/inclusion": proof_of_7(bad)})
        assert exc.value.index == 7 and "inclusion proof" in exc.value.message


async def mismatch_over_http(log: MemoryLog, state: TrustedState | None = None, routes: dict[str, Route] | None = None) -> Mismatch:
    with pytest.raises(Mismatch) as exc:
        await over_http(log, state, routes)
    return exc.value


# ---- 3. entries that are not I-JSON: a mismatch at their index, never a crash -----------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", str(2**60), '"\\ud800"', '{"\\udc00": 1}', "1e400",
                                   "9" * 5000, "[" * 200_000 + "]" * 200_000])
async def test_entries_that_are_not_i_json_are_named(value: str) -> None:
    log = MemoryLog(8)
    lines = export_lines(log)
    lines[4] = '{"index": 4, "entry": {"v": %s}, "leaf_hash": "%s"}' % (value, "00" * 32)
    body = "\n".join(lines) + "\n"
    m = await mismatch_over_http(log, routes={"/log/export.jsonl": lambda r: httpx.Response(200, text=body)})
    assert m.index == 4 and "not I-JSON / cannot be canonicalized" in m.message, m


async def test_an_entry_nested_too_deeply_in_process_is_named() -> None:
    class Deep(MemoryLog):
        async def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]:
            for item in self.served:  # no deepcopy: it would recurse too
                yield item

    log = Deep(6)
    nested: Any = []
    for _ in range(5000):
        nested = [nested]
    log.served[2] = {"index": 2, "entry": {"v": nested}, "leaf_hash": "00" * 32}
    m = await mismatch(log, None)
    assert m.index == 2 and "nested too deeply" in m.message
    log.served[2] = {"index": nested, "entry": {}, "leaf_hash": nested}
    m = await mismatch(log, None)
    assert m.index == 2 and "missing" in m.message  # shown shortly, without recursing


async def test_an_export_line_that_is_not_json_is_exit_2() -> None:
    log = MemoryLog(8)
    lines = export_lines(log)
    lines[3] = "<html>oops</html>"
    with pytest.raises(AuditError, match="not JSON where entry 3 was expected"):
        await over_http(log, routes={"/log/export.jsonl": lambda r: httpx.Response(200, text="\n".join(lines))})


# ---- 4. a damaged state file: exit 2, never blamed on the log ---------------------------------------------------


async def test_a_damaged_state_file_is_never_blamed_on_the_log(tmp_path: Path) -> None:
    log = MemoryLog(13)
    state = await verified(log)
    path = tmp_path / "state.json"
    save_state(path, state)
    good = json.loads(path.read_text("utf-8"))
    damages: list[tuple[str, Any]] = [
        ("root_hash", "00"), ("root_hash", "AB" * 32), ("root_hash", None), ("size", -1), ("size", "13"), ("size", True),
        ("size", 13.0), ("size", 2**64), ("public_key", "x"), ("public_key", SIGNER.vkey + "="), ("public_key", 7),
        ("origin", ""), ("origin", "a\nb"), ("origin", 5), ("checkpoint", None), ("verified_at", 3), ("log_url", []),
        ("leaves_sha256", "00" * 32), ("leaves_sha256", "00"), ("leaves_file", "../elsewhere"), ("leaves_file", "nope"),
        ("version", 3), ("version", True),
    ]
    for key, value in damages:
        path.write_text(json.dumps({**good, key: value}), "utf-8")
        with pytest.raises(AuditError, match="unreadable"):
            load_state(path)
    for doc in ([], "state", {k: v for k, v in good.items() if k != "origin"}):
        path.write_text(json.dumps(doc), "utf-8")
        with pytest.raises(AuditError, match="unreadable"):
            load_state(path)
    path.write_text(json.dumps({**good, "root_hash": "ab" * 32}), "utf-8")  # well formed, but not the leaves' root
    damaged = load_state(path)
    with pytest.raises(AuditError, match="does not hold together"):
        await verify_log(log, state=damaged, rng=random.Random(1))


def test_a_damaged_state_file_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    api = log_api(MemoryLog(13))
    path = tmp_path / "state.json"
    r = cli(monkeypatch, api, "--state", str(path))
    assert r.exit_code == 0 and "pinned the log's public key" in r.output, r.output
    path.write_text(json.dumps({**json.loads(path.read_text("utf-8")), "root_hash": "00"}), "utf-8")
    out = one_error_line(cli(monkeypatch, api, "--state", str(path)))
    assert f"state file {path} is unreadable" in out and "root_hash" in out


# ---- 5. answers larger than their limit are refused while they stream -------------------------------------------


async def test_oversized_answers_are_refused_while_streaming() -> None:
    log = MemoryLog(8)
    for path in ("/log/checkpoint", "/log/public-key", "/log/proof/inclusion"):
        streams: list[Trickle] = []

        def endless_answer(request: httpx.Request, streams: list[Trickle] = streams) -> httpx.Response:
            streams.append(Trickle(lambda: b"A" * 65536, 0, total=400 << 20))
            return httpx.Response(200, stream=streams[-1])

        with pytest.raises(AuditError, match="more than 65536 bytes for"):
            await over_http(log, routes={path: endless_answer})
        assert streams and all(t.sent <= 2 * 65536 for t in streams)  # it stopped reading: 400 MiB were on offer
    with pytest.raises(AuditError, match="more than 65536 bytes for a checkpoint"):  # said upfront
        await over_http(log, routes={"/log/checkpoint": lambda r: httpx.Response(200, headers={"content-length": str(400 << 20)},
                                                                                 content=b"x")})
    endless = Trickle(lambda: b"A" * 65536, 0, total=400 << 20)  # one export line that never ends
    with pytest.raises(AuditError, match=r"more than 1048576 bytes for one line of the export \(entry 0"):
        await over_http(log, routes={"/log/export.jsonl": lambda r: httpx.Response(200, stream=endless)})
    assert endless.sent <= (1 << 20) + 4 * 65536
    lines = export_lines(log)
    lines[5] = json.dumps({"index": 5, "entry": {"v": "x" * (1 << 20)}, "leaf_hash": "00"})
    with pytest.raises(AuditError, match=r"one line of the export \(entry 5"):
        await over_http(log, routes={"/log/export.jsonl": lambda r: httpx.Response(200, text="\n".join(lines) + "\n")})
    gz = {"/log/checkpoint": lambda r: httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"\x1f\x8b")}
    with pytest.raises(AuditError, match="content coding 'gzip'"):
        await over_http(log, routes=gz)
    report, _ = await over_http(log, max_answer=8192, max_line=4096)  # the broker's answers are far below the limits
    assert report.size == 8


# ---- 6. --timeout bounds each whole request; the export must make progress --------------------------------------


async def test_timeout_bounds_each_whole_request_and_the_export_must_progress() -> None:
    log = MemoryLog(8)
    note = log.note.encode()
    for path, body in (("/log/checkpoint", lambda r: note), ("/log/proof/inclusion", lambda r: json.dumps(
            {"proof": [h.hex() for h in log.tree.inclusion_proof(int(r.url.params["index"]), 8)]}).encode())):
        t0 = time.monotonic()
        with pytest.raises(AuditError, match=r"no complete answer within 0.3 s"):
            await over_http(log, routes={path: lambda r, b=body: httpx.Response(200, stream=Trickle(b(r), 10, 0.05))},
                            timeout=0.3)
        assert time.monotonic() - t0 < 1.5  # each read was quick: only a bound on the whole request stops it
    lines = [(line + "\n").encode() for line in export_lines(log)]

    class Paced(httpx.AsyncByteStream):  # one whole entry every 0.1 s: 0.8 s in all, more than the timeout
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for line in lines:
                await asyncio.sleep(0.1)
                yield line

    report, _ = await over_http(log, routes={"/log/export.jsonl": lambda r: httpx.Response(200, stream=Paced())}, timeout=0.4)
    assert report.size == 8
    body = b"".join(lines)
    t0 = time.monotonic()
    with pytest.raises(AuditError, match="entry 0 did not arrive within 0.4 s of the previous one"):
        await over_http(log, routes={"/log/export.jsonl": lambda r: httpx.Response(200, stream=Trickle(body, 20, 0.1))},
                        timeout=0.4)
    assert time.monotonic() - t0 < 2


# ---- 7. an interrupted save keeps the previous state ------------------------------------------------------------


async def test_an_interrupted_save_keeps_the_previous_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = MemoryLog(10)
    first = await verified(log)
    path = tmp_path / "state.json"
    save_state(path, first)
    log.extend([entry(i) for i in range(10, 14)])
    second = await verified(log, first)
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise OSError("killed before the state file was replaced")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="killed"):
        save_state(path, second)
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_state(path) == first  # the next run starts from the previous state...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", json.loads(path.read_text("utf-8"))["leaves_file"]]
    again = await verified(log, first)  # ...and verifies, and saves
    save_state(path, again)
    assert load_state(path) == again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", json.loads(path.read_text("utf-8"))["leaves_file"]]
    save_state(path, again)  # the same leaves again: the file is kept
    assert load_state(path) == again

    legacy = tmp_path / "v1" / "state.json"  # the version 1 layout is still read, and replaced on the next save
    legacy.parent.mkdir()
    blob = b"".join(first.leaves)
    legacy.with_name("state.json.leaves").write_bytes(blob)
    legacy.write_text(json.dumps({"version": 1, "log_url": "", "public_key": first.public_key, "origin": first.origin,
                                  "size": first.size, "root_hash": first.root_hash.hex(), "checkpoint": first.note,
                                  "verified_at": first.verified_at, "leaves_sha256": hashlib.sha256(blob).hexdigest()}), "utf-8")
    assert load_state(legacy) == first
    save_state(legacy, second)
    assert load_state(legacy) == second and not legacy.with_name("state.json.leaves").exists()


# ---- 8. a fork under the pinned size is named -------------------------------------------------------------------


async def test_a_fork_under_the_pinned_size_is_named() -> None:
    state = await verified(MemoryLog(13))
    fork = MemoryLog(0)
    fork.extend([entry(i) for i in range(3)] + [entry(1000 + i) for i in range(13)])  # signs another tree from index 3
    honest = MemoryLog(13)
    fork.served = honest.served + fork.served[13:]  # ...but serves the 13 entries verified before, and 3 new ones
    m = await mismatch(fork, state)
    assert m.index == 3 and "consistency proof" in m.message, m
    m = await mismatch_over_http(fork, state)
    assert m.index == 3, m


# ---- 9. the checkpoint's origin is the key's name, and the one verified before ----------------------------------


async def test_the_checkpoint_origin_must_be_the_key_name_and_the_pinned_one() -> None:
    other = MemoryLog(8, origin="some-other-log.example/staging")  # signed with the log's key
    for key in (None, SIGNER.vkey):
        with pytest.raises(Mismatch, match="origin 'some-other-log.example/staging' is not the log's") as exc:
            await verify_log(other, state=None, public_key=key)
        assert exc.value.index is None
    log = MemoryLog(8)
    state = await verified(log)
    state.origin = "older.example/consent-log"
    with pytest.raises(Mismatch, match="is not 'older.example/consent-log', the origin verified on"):
        await verify_log(log, state=state)


# ---- 10. and 11. a non-canonical key is a usage error; an answer that is not a checkpoint is exit 2 -------------


async def test_a_public_key_in_non_canonical_base64_is_refused() -> None:
    log = MemoryLog(4)
    for key in (SIGNER.vkey + "=", SIGNER.vkey + "==", SIGNER.vkey[:-1] + "\n"):
        with pytest.raises(AuditError, match="bad public key"):
            await verify_log(log, state=None, public_key=key)
    with pytest.raises(AuditError, match=r"bad public key .*served by the log"):
        await over_http(log, routes={"/log/public-key": lambda r: httpx.Response(200, text=SIGNER.vkey + "=")})


def test_checkpoints_that_are_not_signed_notes_exit_2_and_bad_signatures_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                                                 tmp_path: Path) -> None:
    log = MemoryLog(6)
    state = ["--state", str(tmp_path / "st.json")]
    r = cli(monkeypatch, log_api(log), *state, "--public-key", SIGNER.vkey + "=")
    assert "bad public key" in one_error_line(r)
    for body in ("<html>oops</html>", "", "6\nroot\n", log.note.replace("\u2014", "-")):
        r = cli(monkeypatch, log_api(log, {"/log/checkpoint": lambda r, b=body: httpx.Response(200, text=b)}), *state)
        assert "the log did not answer a checkpoint" in one_error_line(r)
    for body, says in ((log.note.replace("\n6\n", "\n7\n"), "does not verify"), (sign_note("hello\n", SIGNER), "is not a checkpoint")):
        r = cli(monkeypatch, log_api(log, {"/log/checkpoint": lambda r, b=body: httpx.Response(200, text=b)}), *state)
        assert says in one_error_line(r, 1)
    r = cli(monkeypatch, log_api(log, {"/log/checkpoint": fail(503)}), *state)
    assert "HTTP 503" in one_error_line(r)
    r = cli(monkeypatch, log_api(log), *state)
    assert r.exit_code == 0 and "verified: 6 entries" in r.output, r.output
    log.extend([entry(6)])
    r = cli(monkeypatch, log_api(log), *state)
    assert r.exit_code == 0 and "consistent with the 6 entries verified before; 1 new" in r.output, r.output
