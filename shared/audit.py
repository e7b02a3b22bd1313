"""``portability-audit``: a regulator's offline verifier of the consent log.

It trusts nothing the operator says except through the log's public key::

    portability-audit http://127.0.0.1:8102 [--public-key VKEY] [--state PATH] [--sample N]

1. Fetch the latest checkpoint (``GET /log/checkpoint``) and check its C2SP signed-note signature
   with the log's Ed25519 key: the one given with ``--public-key``, else the one pinned in the
   state file, else the one the log serves (``GET /log/public-key``), pinned on first use.
2. Check the RFC 9162 section 2.1.4 consistency proof from the checkpoint trusted last time (kept
   in the state file) to this one: the log only grew.
3. Fetch every entry (``GET /log/export.jsonl``), recompute each leaf hash from the entry's RFC 8785
   canonical JSON (RFC 9162 section 2.1.1), compare it with the hash the log stores and with the
   one verified last time, and recompute the root (which must be the signed one).
4. Check RFC 9162 section 2.1.3 inclusion proofs for every entry not verified before and for a
   random sample of the others.
5. Remember the checkpoint and every verified leaf hash (``<state>`` and ``<state>.leaves``).

Exit 0 when everything verifies, 1 on a mismatch (``mismatch at index N: ...`` names the first
entry that does not match, when there is one), 2 on a usage, state-file or network error.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import typer

from shared.canonical import canonical
from shared.tlog import (
    CompactRange,
    MemoryTree,
    TlogError,
    Verifier,
    leaf_hash,
    open_checkpoint,
    verify_consistency,
    verify_inclusion,
)

DEFAULT_STATE = Path("~/.portability-audit/state.json")


class Mismatch(Exception):
    """The log does not verify; ``index`` is the first entry that does not match (None if none is to blame)."""

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message)
        self.index, self.message = index, message

    def __str__(self) -> str:
        return f"mismatch at index {self.index}: {self.message}" if self.index is not None else f"mismatch: {self.message}"


class AuditError(Exception):
    """A usage, state-file or network problem: nothing could be concluded about the log."""


class ProofUnavailable(Exception):
    """The log did not serve a proof it should be able to serve (an HTTP error status)."""


# ---------------------------------------------------------------------------
# Where the log comes from
# ---------------------------------------------------------------------------


class LogSource(Protocol):
    """What the verifier reads from a log (the regulator API of the consent service)."""

    async def public_key(self) -> str: ...
    async def checkpoint(self) -> str: ...
    def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]: ...
    async def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    async def consistency_proof(self, first: int, second: int) -> list[bytes]: ...


class HttpLogSource:
    """The consent service's ``/log`` API at ``base_url`` (httpx; ``transport`` for tests)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 16, auth: httpx.Auth | None = None) -> None:
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport, auth=auth,
                                        limits=httpx.Limits(max_connections=max_connections))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _text(self, path: str) -> str:
        r = await self.client.get(path)
        if r.status_code != 200:
            raise AuditError(f"GET {path}: HTTP {r.status_code} {r.text[:200]}")
        return r.text

    async def public_key(self) -> str:
        return (await self._text("/log/public-key")).strip()

    async def checkpoint(self) -> str:
        return await self._text("/log/checkpoint")

    async def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]:
        """``GET /log/export.jsonl``: one ``{"index", "entry", "leaf_hash"}`` per line. AuditError on a bad line."""
        async with self.client.stream("GET", "/log/export.jsonl", params={"start": start, "end": end}) as r:
            if r.status_code != 200:
                raise AuditError(f"GET /log/export.jsonl: HTTP {r.status_code}" + (" (reading entries needs a regulator: --token, or --client-id, --key-file and --token-url)" if r.status_code in (401, 403) else ""))
            async for line in r.aiter_lines():
                if line.strip():
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise AuditError(f"/log/export.jsonl served a line that is not JSON: {line[:100]!r}") from None
                    if not isinstance(item, dict):
                        raise AuditError("/log/export.jsonl served a line that is not an object")
                    yield item

    async def _proof(self, path: str, params: dict[str, int]) -> list[bytes]:
        r = await self.client.get(path, params=params)
        if r.status_code != 200:
            raise ProofUnavailable(f"GET {path} {params}: HTTP {r.status_code} {r.text[:200]}")
        try:
            return [bytes.fromhex(h) for h in r.json()["proof"]]
        except (ValueError, KeyError, TypeError):
            raise ProofUnavailable(f"GET {path} {params}: malformed proof") from None

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return await self._proof("/log/proof/inclusion", {"index": index, "size": size})

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return await self._proof("/log/proof/consistency", {"first": first, "second": second})


# ---------------------------------------------------------------------------
# What the verifier remembers
# ---------------------------------------------------------------------------


@dataclass
class TrustedState:
    """The last verified checkpoint (``note``, ``size``, ``root_hash``), the pinned key and every verified leaf hash."""

    public_key: str
    origin: str
    size: int
    root_hash: bytes
    note: str
    leaves: list[bytes] = field(default_factory=list)
    verified_at: str = ""
    log_url: str = ""


def _leaves_path(path: Path) -> Path:
    return path.with_name(path.name + ".leaves")


def load_state(path: Path) -> TrustedState | None:
    """Read ``path`` (JSON) and ``path.leaves`` (32 bytes per verified leaf); None if ``path`` does not exist.
    Raises AuditError if either is unreadable or they do not match each other."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
        blob = _leaves_path(path).read_bytes()
        size = int(doc["size"])
        if len(blob) != 32 * size or hashlib.sha256(blob).hexdigest() != doc["leaves_sha256"]:
            raise ValueError("the leaves file does not match the state file")
        return TrustedState(public_key=str(doc["public_key"]), origin=str(doc["origin"]), size=size,
                            root_hash=bytes.fromhex(doc["root_hash"]), note=str(doc["checkpoint"]),
                            leaves=[blob[i:i + 32] for i in range(0, len(blob), 32)],
                            verified_at=str(doc.get("verified_at", "")), log_url=str(doc.get("log_url", "")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"state file {path} is unreadable: {exc}") from None


def save_state(path: Path, state: TrustedState) -> None:
    """Write the state atomically (leaves first, then the JSON that names their digest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = b"".join(state.leaves)
    doc = {"version": 1, "log_url": state.log_url, "public_key": state.public_key, "origin": state.origin, "size": state.size,
           "root_hash": state.root_hash.hex(), "checkpoint": state.note, "verified_at": state.verified_at,
           "leaves_sha256": hashlib.sha256(blob).hexdigest()}
    for target, data in ((_leaves_path(path), blob), (path, json.dumps(doc, indent=2).encode("utf-8"))):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------


@dataclass
class Report:
    size: int
    root_hash: bytes
    new_entries: int
    inclusion_proofs: int
    consistency_from: int | None
    pinned_key: bool
    seconds: float


_SAFE_INT = 2**53 - 1  # the I-JSON safe integers (RFC 7493), as rfc8785 checks them


def _plain(obj: Any) -> bool:
    """True if ``obj`` is JSON made only of ASCII-keyed objects, arrays, strings, booleans, null and integers
    of magnitude < 2**53: the values whose RFC 8785 form is exactly Python's sorted compact ``json.dumps``."""
    if obj is None or isinstance(obj, (str, bool)):
        return True
    if isinstance(obj, int):
        return -_SAFE_INT <= obj <= _SAFE_INT
    if isinstance(obj, list):
        return all(_plain(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in obj.items())
    return False


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON of ``obj`` (UTF-8 bytes), about 4x faster than :func:`shared.canonical.canonical`
    for the values of :func:`_plain`: for those, JCS orders keys as Python does (ASCII keys), writes integers
    below 2**53 in plain decimal, and escapes strings exactly as ``json.dumps(ensure_ascii=False)`` (the
    quotation mark, the backslash and the controls below U+0020 with the same short and lowercase
    ``\\u00xx`` forms). Anything else (floats, big integers, non-ASCII keys, lone surrogates) goes through
    :func:`shared.canonical.canonical`. Raises what it raises for values that are not JSON."""
    if _plain(obj):
        try:
            return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return canonical(obj)


def entry_leaf_hash(item: dict[str, Any], index: int) -> bytes:
    """Leaf hash of a served entry: SHA-256(0x00 || RFC 8785 canonical JSON of ``item["entry"]``) (RFC 9162 2.1.1).
    Raises Mismatch(index) if the entry is not a JSON object or the stored leaf hash differs."""
    entry = item.get("entry")
    if not isinstance(entry, dict):
        raise Mismatch(index, "the stored entry is not a JSON object")
    h = leaf_hash(canonical_json(entry))
    if item.get("leaf_hash") != h.hex():
        stored = str(item.get("leaf_hash"))[:16]
        raise Mismatch(index, f"the stored leaf hash {stored}... is not the hash of the stored entry {h.hex()[:16]}...")
    return h


async def _first_bad_index(source: LogSource, leaves: Sequence[bytes], size: int, signed_root: bytes) -> int:
    """The first index whose leaf is not the one the signed tree commits to: binary search over prefixes, each
    checked with a consistency proof (RFC 9162 2.1.4) against the signed root. O(log n) proofs."""
    tree = MemoryTree(leaves)

    async def good(m: int) -> bool:
        if m == 0:
            return True
        try:
            verify_consistency(m, size, await source.consistency_proof(m, size), tree.root(m), signed_root)
        except (TlogError, ProofUnavailable):
            return False
        return True

    lo, hi = 0, size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await good(mid):
            lo = mid
        else:
            hi = mid
    return lo


async def verify_log(source: LogSource, *, state: TrustedState | None, public_key: str | None = None, sample: int = 64,
                     concurrency: int = 16, rng: random.Random | None = None, log_url: str = "") -> tuple[Report, TrustedState]:
    """Verify the log against its signed checkpoint and the trusted ``state`` (None on first use).

    Returns the report and the new state to keep. Raises Mismatch (the log does not verify: a bad
    signature, a log that shrank or forked, a changed, missing or extra entry, a bad proof) or
    AuditError (a key that differs from the pinned one, a malformed key, a network error).
    """
    t0 = time.perf_counter()
    rng = rng or random.Random()
    pinned_now = False
    if public_key is not None:
        if state is not None and state.public_key != public_key:
            raise AuditError("--public-key differs from the key pinned in the state file")
        key = public_key
    elif state is not None:
        key = state.public_key
    else:
        key, pinned_now = await source.public_key(), True
    try:
        verifier = Verifier.from_vkey(key)
    except TlogError as exc:
        raise AuditError(f"bad public key {key!r}: {exc}") from None

    # 1. the signed checkpoint
    note = await source.checkpoint()
    try:
        cp, _ = open_checkpoint(note, [verifier], origin=state.origin if state else None)
    except TlogError as exc:
        raise Mismatch(None, f"the checkpoint does not verify with key {verifier.name}+{verifier.key_id.hex()}: {exc}") from None
    old = state.size if state else 0
    if state is not None and cp.size < old:
        raise Mismatch(cp.size, f"the log shrank: the checkpoint says {cp.size} entries, {old} were verified before")

    # 2. consistency with the checkpoint trusted last time
    consistency_error: str | None = None
    if state is not None and old > 0:
        try:
            proof = [] if cp.size == old else await source.consistency_proof(old, cp.size)
            verify_consistency(old, cp.size, proof, state.root_hash, cp.root_hash)
        except (TlogError, ProofUnavailable) as exc:
            consistency_error = f"the consistency proof from the checkpoint verified on {state.verified_at} (size {old}) fails ({exc})"

    # 3. every entry, against its stored hash, the pinned hashes and the signed root
    leaves: list[bytes] = []
    cr = CompactRange()
    also = f"; {consistency_error}" if consistency_error else ""
    async with aclosing(source.entries(0, cp.size)) as items:
        async for item in items:
            i = len(leaves)
            if i >= cp.size:
                raise Mismatch(i, f"the log serves more entries than the {cp.size} its checkpoint signs")
            if item.get("index") != i:
                raise Mismatch(i, f"entry {i} is missing (the log serves index {item.get('index')} next){also}")
            h = entry_leaf_hash(item, i)
            if state is not None and i < old and h != state.leaves[i]:
                raise Mismatch(i, f"the entry differs from the one verified on {state.verified_at}{also}")
            leaves.append(h)
            cr.append(h)
    if len(leaves) < cp.size:
        raise Mismatch(len(leaves), f"entry {len(leaves)} is missing: the log serves {len(leaves)} entries, the checkpoint says {cp.size}")
    if consistency_error:
        raise Mismatch(None, consistency_error)
    if cr.root() != cp.root_hash:
        bad = await _first_bad_index(source, leaves, cp.size, cp.root_hash)
        raise Mismatch(bad, "the entry is not the one the signed checkpoint commits to (the root recomputed from the entries differs)")

    # 4. inclusion proofs: every new entry, and a sample of the others
    picks = sorted(set(range(old, cp.size)) | set(rng.sample(range(old), min(sample, old))))
    todo = iter(picks)
    problems: dict[int, str] = {}

    async def prover() -> None:  # ``concurrency`` of these share the queue: memory stays flat for any log size
        for i in todo:
            try:
                verify_inclusion(leaves[i], i, cp.size, await source.inclusion_proof(i, cp.size), cp.root_hash)
            except (TlogError, ProofUnavailable) as exc:
                problems[i] = f"its inclusion proof in the tree of {cp.size} entries does not verify ({exc})"

    await asyncio.gather(*(prover() for _ in range(max(1, concurrency))))
    if problems:
        first = min(problems)
        raise Mismatch(first, problems[first])

    new_state = TrustedState(public_key=verifier.vkey, origin=cp.origin, size=cp.size, root_hash=cp.root_hash, note=note,
                             leaves=leaves, verified_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                             log_url=log_url)
    report = Report(size=cp.size, root_hash=cp.root_hash, new_entries=cp.size - old, inclusion_proofs=len(picks),
                    consistency_from=old if state is not None and old > 0 else None, pinned_key=pinned_now,
                    seconds=time.perf_counter() - t0)
    return report, new_state


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0] if __doc__ else None)


class _StaticBearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


def _auth(token: str | None, client_id: str | None, key_file: Path | None, token_url: str | None) -> httpx.Auth | None:
    """The regulator's credentials: a bearer token, or a client id + private key (private_key_jwt, RFC 7523)
    exchanged at the broker's token endpoint (client credentials grant, scope ``regulator``)."""
    if token:
        return _StaticBearer(token)
    if client_id or key_file or token_url:
        if not (client_id and key_file and token_url):
            raise AuditError("--client-id, --key-file and --token-url go together")
        from .authclient import AsyncTokenSource, BearerAuth

        return BearerAuth(AsyncTokenSource(client_id, key_file.read_text("utf-8"), token_url, scope="regulator"))
    return None


async def _run(base_url: str, public_key: str | None, state_path: Path, sample: int, concurrency: int, timeout: float,
               auth: httpx.Auth | None = None) -> Report:
    state = load_state(state_path)
    source = HttpLogSource(base_url, timeout=timeout, max_connections=concurrency, auth=auth)
    try:
        report, new_state = await verify_log(source, state=state, public_key=public_key, sample=sample,
                                             concurrency=concurrency, log_url=base_url)
    finally:
        await source.aclose()
    save_state(state_path, new_state)
    return report


@app.command()
def verify(
    base_url: Annotated[str, typer.Argument(help="the consent service, e.g. http://127.0.0.1:8102")],
    public_key: Annotated[str | None, typer.Option(
        "--public-key", help="the log's verifier key <name>+<hex id>+<base64>; default: the one pinned in the state file, "
        "else the log's (pinned on first use)")] = None,
    state: Annotated[Path, typer.Option(
        "--state", help="where the last trusted checkpoint and the verified leaf hashes are kept")] = DEFAULT_STATE,
    sample: Annotated[int, typer.Option(min=0, help="inclusion proofs checked for already verified entries (random)")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="proof requests in flight")] = 16,
    timeout: Annotated[float, typer.Option(min=0.1, help="HTTP timeout in seconds")] = 30.0,
    token: Annotated[str | None, typer.Option(envvar="PORTABILITY_TOKEN", help="a regulator's access token")] = None,
    client_id: Annotated[str | None, typer.Option(envvar="PORTABILITY_CLIENT_ID", help="the regulator's client id")] = None,
    key_file: Annotated[Path | None, typer.Option(envvar="PORTABILITY_KEY_FILE", help="the regulator's private key (JWK or PEM)")] = None,
    token_url: Annotated[str | None, typer.Option(envvar="PORTABILITY_TOKEN_URL", help="the broker's token endpoint")] = None,
) -> None:
    """Verify the consent log at BASE_URL. Exit 0 verified, 1 mismatch, 2 usage or network error.

    Reading entries needs the regulator role: give ``--token``, or ``--client-id``, ``--key-file`` and
    ``--token-url`` (the registry's ``/oauth/token``)."""
    state_path = state.expanduser()
    try:
        report = asyncio.run(_run(base_url, public_key, state_path, sample, concurrency, timeout,
                                  _auth(token, client_id, key_file, token_url)))
    except Mismatch as exc:
        typer.echo(str(exc))
        raise typer.Exit(1) from None
    except (AuditError, httpx.HTTPError, OSError) as exc:
        typer.echo(f"error: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(2) from None
    root = base64.b64encode(report.root_hash).decode("ascii")
    if report.pinned_key:
        typer.echo(f"pinned the log's public key in {state_path} (trust on first use)")
    since = f", consistent with the {report.consistency_from} entries verified before" if report.consistency_from else ""
    typer.echo(f"verified: {report.size} entries, root {root}{since}; {report.new_entries} new, "
               f"{report.inclusion_proofs} inclusion proofs, {report.seconds:.2f}s")


if __name__ == "__main__":  # pragma: no cover - ``python -m shared.audit``
    app()
