"""``portability-audit``: a regulator's offline verifier of the consent log.

It trusts nothing the operator says except through the log's public key::

    portability-audit http://127.0.0.1:8102 [--public-key VKEY] [--state PATH] [--sample N]

1. Fetch the latest checkpoint (``GET /log/checkpoint``) and check its C2SP signed-note signature
   with the log's Ed25519 key: the one given with ``--public-key``, else the one pinned in the
   state file, else the one the log serves (``GET /log/public-key``), pinned on first use. Its
   origin line must be the key's name (C2SP tlog-checkpoint: a verifier checks the origin it
   expects; the broker's ``LOG_ORIGIN`` is both) and the origin verified last time.
2. Check the RFC 9162 section 2.1.4 consistency proof from the checkpoint trusted last time (kept
   in the state file) to this one: the log only grew.
3. Fetch every entry (``GET /log/export.jsonl``), recompute each leaf hash from the entry's RFC 8785
   canonical JSON (RFC 9162 section 2.1.1), compare it with the hash the log stores and with the
   one verified last time, and recompute the root (which must be the signed one). When it is not,
   or when the consistency proof of step 2 fails, a binary search with consistency proofs names the
   first entry not covered by the signed root.
4. Check RFC 9162 section 2.1.3 inclusion proofs for every entry not verified before and for a
   random sample of the others.
5. Remember the checkpoint and every verified leaf hash (``<state>`` and its leaves file).

Exit codes:

* 0: everything verifies.
* 1: a mismatch, the log does not verify: a checkpoint whose signature does not verify, that is not
  a checkpoint, or whose origin is not the log's; a log that shrank or forked; a changed, missing,
  extra or swapped entry; an entry that is not I-JSON (NaN, an integer beyond 2**53, a lone
  surrogate, nesting too deep to parse: it cannot be the canonical JSON the log hashed); a proof
  that was received and does not verify (wrong hashes, wrong number of hashes, a hash that is not
  32 bytes of hex). ``mismatch at index N: ...`` names the first entry that does not match, when
  there is one.
* 2: nothing could be concluded: a usage error (a malformed or non-canonical ``--public-key``,
  unusable regulator credentials), a state file that is unreadable or does not hold together, or
  a network problem: a connection error, a timeout, an HTTP error status (also while looking for
  the entry to blame: a transient error never names an index), or an answer that is not what was
  asked (a checkpoint that is not a signed note, a proof that is not a JSON object with a
  ``proof`` list, an export line that is not JSON) or that is larger than its limit.

Limits (the broker's answers are far below them; a larger answer is exit 2, as the verifier does not
read it): :data:`MAX_ANSWER` (64 KiB) for the public key, the checkpoint and each proof (a proof in a
tree below 2**64 entries holds at most 65 hashes of 64 hex digits, under 5 KiB); :data:`MAX_LINE`
(1 MiB) for one line of the export (an entry of services/consent/log.py is a few hundred bytes: ids
of at most 128 characters, at most 20 datasets). Answers are asked and accepted with the identity content coding only, so that
the limits bound what is held in memory. ``--timeout`` bounds each whole request (the public key,
the checkpoint, each proof, with the token request it may need); the export, which may stream
millions of entries, must send each entry within ``--timeout`` seconds of the previous one.

The state is ``<state>`` (JSON, version 2), which names its leaves file ``<state>.leaves.<16 hex>``
(32 bytes per verified leaf) and pins its size and SHA-256. Saving writes the new leaves file, then
replaces the JSON atomically, and only then deletes the old leaves file: a run interrupted at any
point leaves the previous state (or the new one) loadable. Version 1 (leaves in ``<state>.leaves``)
is still read, and replaced by version 2 on the next save. Do not run two verifiers on one state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import reprlib
import tempfile
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import typer

from shared.canonical import canonical
from shared.tlog import (
    Checkpoint,
    CompactRange,
    MemoryTree,
    NoteError,
    ProofError,
    TlogError,
    Verifier,
    leaf_hash,
    open_note,
    parse_note,
    verify_consistency,
    verify_inclusion,
)
from shared.tlog.merkle import MAX_TREE_SIZE

DEFAULT_STATE = Path("~/.portability-audit/state.json")

MAX_ANSWER = 64 * 1024
"""Most bytes read for the public key, the checkpoint or one proof."""

MAX_LINE = 1024 * 1024
"""Most bytes of one line of ``/log/export.jsonl`` (one entry with its index and leaf hash)."""

STATE_VERSION = 2


class Mismatch(Exception):
    """The log does not verify; ``index`` is the first entry that does not match (None if none is to blame)."""

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message)
        self.index, self.message = index, message

    def __str__(self) -> str:
        return f"mismatch at index {self.index}: {self.message}" if self.index is not None else f"mismatch: {self.message}"


class AuditError(Exception):
    """A usage, state-file or network problem: nothing could be concluded about the log."""


class ProofUnavailable(AuditError):
    """The log did not serve a proof (an HTTP error status, a network error, a timeout, an answer that is not
    a JSON object with a ``proof`` list): nothing can be concluded from it, and no index is blamed."""


_show = reprlib.Repr()
_show.maxlevel, _show.maxstring, _show.maxother, _show.maxlist, _show.maxdict = 2, 40, 40, 4, 4


def _shown(value: Any) -> str:
    """A short, bounded repr of a served value (never recursing deeply, whatever the log served)."""
    try:
        return _show.repr(value)
    except (ValueError, RecursionError):  # e.g. an int too long to print
        return f"<{type(value).__name__}>"


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _why(exc: BaseException) -> str:
    """``Type: message`` of an exception, for the reason in a mismatch (one short line)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return _one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 160)


# ---------------------------------------------------------------------------
# Where the log comes from
# ---------------------------------------------------------------------------


class LogSource(Protocol):
    """What the verifier reads from a log (the regulator API of the consent service).

    Every method raises AuditError (for proofs: ProofUnavailable) when the log could not be read: nothing is
    concluded from that. ``inclusion_proof`` and ``consistency_proof`` may raise ProofError for a proof that was
    received but is malformed (a hash that is not hex): that is a proof that does not verify. ``entries`` may
    raise ``Mismatch(index)`` for an entry that was received but cannot be parsed as I-JSON.
    """

    async def public_key(self) -> str: ...
    async def checkpoint(self) -> str: ...
    def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]: ...
    async def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    async def consistency_proof(self, first: int, second: int) -> list[bytes]: ...


def _describe(exc: httpx.HTTPError) -> str:
    """What went wrong on the wire, on one line (``ConnectError: [Errno 111] Connection refused``)."""
    return _one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 200)


def _target(path: str, params: dict[str, int] | None) -> str:
    query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
    return f"GET {path}" + (f"?{query}" if query else "")


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


class HttpLogSource:
    """The consent service's ``/log`` API at ``base_url`` (httpx; ``transport`` for tests).

    ``timeout`` (seconds) bounds each whole request but the export, and the wait for each entry of the export;
    answers are read as they stream, at most ``max_answer`` bytes for the key, the checkpoint and a proof, and
    ``max_line`` bytes for one export line (AuditError beyond). Only the identity content coding is accepted.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 16, auth: httpx.Auth | None = None, max_answer: int = MAX_ANSWER,
                 max_line: int = MAX_LINE) -> None:
        self.timeout, self.max_answer, self.max_line = timeout, max_answer, max_line
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport, auth=auth,
                                        limits=httpx.Limits(max_connections=max_connections),
                                        headers={"Accept-Encoding": "identity"})

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _check(self, r: httpx.Response, target: str, error: type[AuditError]) -> None:
        """Raise ``error`` unless ``r`` is a 200 in the identity coding (the message quotes the start of an error body)."""
        coding = r.headers.get("content-encoding", "").strip().lower()
        if r.status_code != 200:
            head = bytearray()
            if coding in ("", "identity"):  # never inflate what a hostile log compressed
                async with aclosing(r.aiter_bytes()) as chunks:
                    async for chunk in chunks:
                        head += chunk
                        if len(head) >= 200:
                            break
            hint = (" (reading entries needs a regulator: --token, or --client-id, --key-file and --token-url)"
                    if r.status_code in (401, 403) and "export" in target else "")
            body = _one_line(bytes(head[:200]).decode("utf-8", "replace"), 200)
            raise error(f"{target}: HTTP {r.status_code} {body}".rstrip() + hint)
        if coding not in ("", "identity"):
            raise error(f"{target}: the log answered in the content coding {coding!r}, only 'identity' was accepted")

    async def _answer(self, path: str, params: dict[str, int] | None, what: str,
                      error: type[AuditError] = AuditError) -> bytes:
        """The body of ``GET path``: status 200, read whole within ``timeout`` seconds, at most ``max_answer`` bytes.
        Raises ``error`` for anything else (an HTTP status, a network error, a timeout, a larger answer)."""
        target = _target(path, params)
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.stream("GET", path, params=params) as r:
                    await self._check(r, target, error)
                    length = r.headers.get("content-length", "")
                    if length.isdigit() and int(length) > self.max_answer:
                        raise error(f"the log answered more than {self.max_answer} bytes for {what} ({target})")
                    body = bytearray()
                    async with aclosing(r.aiter_bytes()) as chunks:
                        async for chunk in chunks:
                            body += chunk
                            if len(body) > self.max_answer:
                                raise error(f"the log answered more than {self.max_answer} bytes for {what} ({target})")
                    return bytes(body)
        except TimeoutError:
            raise error(f"{target}: no complete answer within {self.timeout:g} s (--timeout)") from None
        except httpx.HTTPError as exc:
            raise error(f"{target}: {_describe(exc)}") from None

    async def _text(self, path: str, what: str) -> str:
        body = await self._answer(path, None, what)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise AuditError(f"the log did not answer {what} (GET {path}): not UTF-8") from None

    async def public_key(self) -> str:
        return (await self._text("/log/public-key", "a public key")).strip()

    async def checkpoint(self) -> str:
        return await self._text("/log/checkpoint", "a checkpoint")

    async def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]:
        """``GET /log/export.jsonl``: one ``{"index", "entry", "leaf_hash"}`` object per line, yielded as parsed.

        Raises AuditError for an HTTP error, a network error, a line that is not UTF-8 JSON or not an object, a
        line longer than ``max_line`` bytes, and when the headers, or an entry after the previous one, take longer
        than ``timeout`` seconds. Raises ``Mismatch(index)`` for a line that is JSON beyond what can be parsed
        (nested too deeply, an integer of thousands of digits): an entry that cannot be the one the log hashed.
        """
        path, params = "/log/export.jsonl", {"start": start, "end": end}
        target = _target(path, params)
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(self.timeout):
                    r = await stack.enter_async_context(self.client.stream("GET", path, params=params))
                    await self._check(r, target, AuditError)
            except TimeoutError:
                raise AuditError(f"{target}: no answer within {self.timeout:g} s (--timeout)") from None
            except httpx.HTTPError as exc:
                raise AuditError(f"{target}: {_describe(exc)}") from None
            chunks = await stack.enter_async_context(aclosing(r.aiter_bytes()))
            index, pending, deadline = start, b"", loop.time() + self.timeout
            progressed = False
            while True:
                if progressed:  # an entry was yielded since the last read: the next one gets a fresh --timeout
                    deadline, progressed = loop.time() + self.timeout, False
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    raise AuditError(f"{target}: entry {index} did not arrive within {self.timeout:g} s of the previous "
                                     "one (--timeout)") from None
                except httpx.HTTPError as exc:
                    raise AuditError(f"{target}: {_describe(exc)} (reading entry {index})") from None
                if chunk is None:
                    break
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if len(line) > self.max_line:
                        raise AuditError(self._too_long(index, target))
                    if line and not line.isspace():
                        item = self._parse(line, index, target)
                        yield item
                        index += 1
                        progressed = True
                if len(pending) > self.max_line:
                    raise AuditError(self._too_long(index, target))
            if pending and not pending.isspace():
                yield self._parse(pending, index, target)

    def _too_long(self, index: int, target: str) -> str:
        return f"the log answered more than {self.max_line} bytes for one line of the export (entry {index}, {target})"

    @staticmethod
    def _parse(line: bytes, index: int, target: str) -> dict[str, Any]:
        """One export line, where entry ``index`` is expected (every line before it was one entry)."""
        try:
            item = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise AuditError(f"{target} served a line that is not UTF-8 where entry {index} was expected") from None
        except json.JSONDecodeError:
            raise AuditError(f"{target} served a line that is not JSON where entry {index} was expected: "
                             f"{line[:100]!r}") from None
        except (ValueError, RecursionError) as exc:  # JSON, but beyond what can be parsed (depth, digits)
            raise Mismatch(index, f"the entry is not I-JSON / cannot be canonicalized ({_why(exc)})") from None
        if not isinstance(item, dict):
            raise AuditError(f"{target} served a line that is not a JSON object where entry {index} was expected")
        return item

    async def _proof(self, path: str, params: dict[str, int], what: str) -> list[bytes]:
        """The ``proof`` list of hex hashes at ``path``. ProofUnavailable if the log did not answer one (an HTTP or
        network error, a timeout, an answer that is not a JSON object with a ``proof`` list); ProofError if the
        list holds something other than hex strings (a received proof that cannot verify)."""
        body = await self._answer(path, params, what, ProofUnavailable)
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise ProofUnavailable(f"the log did not answer {what} ({_target(path, params)}): not JSON") from None
        proof = doc.get("proof") if isinstance(doc, dict) else None
        if not isinstance(proof, list):
            raise ProofUnavailable(f"the log did not answer {what} ({_target(path, params)}): no \"proof\" list")
        if not all(isinstance(h, str) and _HEX.fullmatch(h) for h in proof):
            raise ProofError(f"{what} holds an element that is not a hex string")
        return [bytes.fromhex(h) for h in proof]

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return await self._proof("/log/proof/inclusion", {"index": index, "size": size},
                                 f"the inclusion proof of entry {index} in the tree of {size}")

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return await self._proof("/log/proof/consistency", {"first": first, "second": second},
                                 f"the consistency proof from {first} to {second} entries")


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
    """Where version 1 kept the leaves (``<state>.leaves``)."""
    return path.with_name(path.name + ".leaves")


def _leaves_name(path: Path, digest: str) -> str:
    """The leaves file of version 2: ``<state>.leaves.<first 16 hex digits of its SHA-256>``."""
    return f"{path.name}.leaves.{digest[:16]}"


def _ours(path: Path, name: str) -> bool:
    """True if ``name`` is a leaves file that :func:`save_state` writes for ``path`` (version 1 or 2)."""
    return re.fullmatch(re.escape(path.name) + r"\.leaves(\.[0-9a-f]{16})?", name) is not None


_REQUIRED: Any = object()


def _field(doc: dict[str, Any], key: str, kind: type, default: Any = _REQUIRED) -> Any:
    """``doc[key]`` if it is a ``kind`` (never a bool), ``default`` if absent and optional; ValueError otherwise."""
    if key not in doc:
        if default is _REQUIRED:
            raise ValueError(f"{key!r} is missing")
        return default
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{key!r} is not a {kind.__name__}: {_shown(value)}")
    return value


def _hex32(doc: dict[str, Any], key: str) -> bytes:
    value = _field(doc, key, str)
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{key!r} is not 32 bytes of lowercase hex: {_shown(value)}")
    return bytes.fromhex(value)


def _referenced_leaves(path: Path, doc: dict[str, Any]) -> str:
    """The name of the leaves file that the state document ``doc`` of ``path`` names (version 1: ``<state>.leaves``)."""
    if doc.get("version", 1) == 1:
        return _leaves_path(path).name
    name = _field(doc, "leaves_file", str)
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"'leaves_file' is not a file name: {_shown(name)}")
    return name


def load_state(path: Path) -> TrustedState | None:
    """Read the state ``path`` (JSON, version 1 or 2) and the leaves file it names (32 bytes per verified leaf);
    None if ``path`` does not exist.

    Every field is checked: ``size`` an int in [0, 2**64), ``root_hash`` and ``leaves_sha256`` 32 bytes of
    lowercase hex, ``public_key`` a canonical verifier key, ``origin`` a non-empty line, ``checkpoint``,
    ``verified_at`` and ``log_url`` strings, and the leaves file ``32 * size`` bytes with that SHA-256. Raises
    AuditError (``state file ... is unreadable: ...``) otherwise: a damaged state is never blamed on the log.
    """
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        version = doc.get("version", 1)
        if type(version) is not int or version not in (1, STATE_VERSION):
            raise ValueError(f"unknown version {_shown(version)}")
        size = _field(doc, "size", int)
        if not 0 <= size <= MAX_TREE_SIZE:
            raise ValueError(f"'size' is out of range: {size}")
        root_hash = _hex32(doc, "root_hash")
        public_key = _field(doc, "public_key", str)
        if _canonical_vkey(public_key).vkey != public_key:
            raise ValueError("'public_key' is not a canonical verifier key")
        origin = _field(doc, "origin", str)
        if not origin or any(ch < "\x20" for ch in origin):
            raise ValueError(f"'origin' is not a checkpoint origin line: {_shown(origin)}")
        note = _field(doc, "checkpoint", str)
        verified_at = _field(doc, "verified_at", str, "")
        log_url = _field(doc, "log_url", str, "")
        digest = _hex32(doc, "leaves_sha256").hex()
        leaves_file = path.with_name(_referenced_leaves(path, doc))
        with leaves_file.open("rb") as f:
            if os.fstat(f.fileno()).st_size != 32 * size:
                raise ValueError(f"the leaves file {leaves_file.name} does not hold {size} hashes of 32 bytes")
            blob = f.read()
        if len(blob) != 32 * size or hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError(f"the leaves file {leaves_file.name} does not match the state file")
        return TrustedState(public_key=public_key, origin=origin, size=size, root_hash=root_hash, note=note,
                            leaves=[blob[i:i + 32] for i in range(0, len(blob), 32)], verified_at=verified_at, log_url=log_url)
    except (OSError, ValueError, TypeError, RecursionError, TlogError) as exc:
        raise AuditError(f"state file {path} is unreadable: {_one_line(str(exc) or type(exc).__name__)}") from None


def _write_durably(target: Path, data: bytes) -> None:
    """Write ``data`` to a fresh temporary file beside ``target``, flush it to disk, and rename it to ``target``."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sync_dir(directory: Path) -> None:
    """Flush a directory's entries (the renames) to disk, where the system allows it (POSIX)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_state(path: Path, state: TrustedState) -> None:
    """Write the state so that an interruption at any point leaves a loadable state, the previous or the new one.

    1. the leaves go to a new file ``<state>.leaves.<16 hex of their SHA-256>`` (written aside, then renamed);
    2. the JSON, which names that file and pins its SHA-256, replaces ``<state>`` atomically (the commit point);
    3. only then is the leaves file the previous JSON named deleted.

    Raises OSError if a write fails; the new leaves file is then removed, the previous state is untouched.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    blob = b"".join(state.leaves)
    digest = hashlib.sha256(blob).hexdigest()
    name = _leaves_name(path, digest)
    previous: str | None = None
    with contextlib.suppress(OSError, ValueError, TypeError, RecursionError):
        old = json.loads(path.read_text("utf-8"))
        previous = _referenced_leaves(path, old) if isinstance(old, dict) else None
    doc = {"version": STATE_VERSION, "log_url": state.log_url, "public_key": state.public_key, "origin": state.origin,
           "size": state.size, "root_hash": state.root_hash.hex(), "checkpoint": state.note, "verified_at": state.verified_at,
           "leaves_file": name, "leaves_sha256": digest}
    leaves = directory / name
    existed = leaves.exists()  # the same leaves as before (the log did not grow): kept whatever happens
    _write_durably(leaves, blob)
    _sync_dir(directory)  # the leaves file exists on disk before the JSON that names it
    try:
        _write_durably(path, json.dumps(doc, indent=2).encode("utf-8"))
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                leaves.unlink()
        raise
    _sync_dir(directory)
    if previous and previous != name and _ours(path, previous):
        with contextlib.suppress(OSError):
            (directory / previous).unlink()


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
    public_key: str = ""


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
    :func:`shared.canonical.canonical`. Raises what it raises for values that are not JSON, and RecursionError
    for values nested too deeply."""
    if _plain(obj):
        try:
            return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return canonical(obj)


def entry_leaf_hash(item: dict[str, Any], index: int) -> bytes:
    """Leaf hash of a served entry: SHA-256(0x00 || RFC 8785 canonical JSON of ``item["entry"]``) (RFC 9162 2.1.1).
    Raises Mismatch(index) if the entry is not a JSON object, is not I-JSON (NaN, an infinity, an integer beyond
    2**53, a lone surrogate, nesting too deep), or the stored leaf hash differs."""
    entry = item.get("entry")
    if not isinstance(entry, dict):
        raise Mismatch(index, "the stored entry is not a JSON object")
    try:
        h = leaf_hash(canonical_json(entry))
    except (ValueError, TypeError, RecursionError) as exc:  # rfc8785's CanonicalizationError is a ValueError
        raise Mismatch(index, f"the entry is not I-JSON / cannot be canonicalized ({_why(exc)})") from None
    stored = item.get("leaf_hash")
    if stored != h.hex():
        shown = f"{stored[:16]}..." if isinstance(stored, str) else _shown(stored)
        raise Mismatch(index, f"the stored leaf hash {shown} is not the hash of the stored entry {h.hex()[:16]}...")
    return h


def _canonical_vkey(key: str) -> Verifier:
    """The verifier of the key string ``key`` (``<name>+<hex id>+<base64>``). Raises TlogError if it is malformed,
    or if its base64 is not the canonical (strict, padded) encoding of the key."""
    verifier = Verifier.from_vkey(key)
    if key.split("+", 2)[2] != verifier.vkey.split("+", 2)[2]:
        raise NoteError("the key is not in canonical base64")
    return verifier


async def _first_bad_index(source: LogSource, leaves: Sequence[bytes], size: int, signed_root: bytes) -> int:
    """The first index whose leaf is not the one the signed tree commits to: binary search over prefixes, each
    checked with a consistency proof (RFC 9162 2.1.4) against the signed root. O(log n) proofs.

    Only a received proof that does not verify makes a prefix bad; a proof the log did not serve raises
    AuditError (ProofUnavailable): a transient error never blames an index."""
    tree = MemoryTree(leaves)

    async def good(m: int) -> bool:
        if m == 0:
            return True
        try:
            verify_consistency(m, size, await source.consistency_proof(m, size), tree.root(m), signed_root)
        except TlogError:
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


async def _trusted_key(source: LogSource, state: TrustedState | None, public_key: str | None) -> tuple[Verifier, bool]:
    """The log's verifier: ``public_key``, else the pinned one, else the one the log serves (pinned now: True)."""
    if public_key is not None:
        what, key = "", public_key
    elif state is not None:
        what, key = " (pinned in the state file)", state.public_key
    else:
        what, key = " (served by the log)", await source.public_key()
    try:
        verifier = _canonical_vkey(key)
    except TlogError as exc:
        shown = repr(key) if isinstance(key, str) and len(key) <= 200 else _shown(key)
        raise AuditError(f"bad public key {shown}{what}: {exc}") from None
    if public_key is not None and state is not None and verifier.vkey != state.public_key:
        raise AuditError("--public-key differs from the key pinned in the state file")
    return verifier, public_key is None and state is None


async def _signed_checkpoint(source: LogSource, verifier: Verifier, state: TrustedState | None) -> tuple[Checkpoint, str]:
    """The log's latest checkpoint and its note. AuditError if the answer is not a signed note at all; Mismatch if
    its signature does not verify, it is not a checkpoint, or its origin is not the key's name or the pinned one."""
    note = await source.checkpoint()
    try:
        parse_note(note)
    except TlogError as exc:
        raise AuditError(f"the log did not answer a checkpoint: {exc} ({_shown(note)})") from None
    key = f"{verifier.name}+{verifier.key_id.hex()}"
    try:
        text, _ = open_note(note, [verifier])
    except TlogError as exc:
        raise Mismatch(None, f"the checkpoint does not verify with key {key}: {exc}") from None
    try:
        cp = Checkpoint.parse(text)
    except TlogError as exc:
        raise Mismatch(None, f"the note signed with key {key} is not a checkpoint: {exc}") from None
    if cp.origin != verifier.name:
        raise Mismatch(None, f"the checkpoint's origin {_shown(cp.origin)} is not the log's, the name of its key "
                             f"{_shown(verifier.name)}")
    if state is not None and cp.origin != state.origin:
        raise Mismatch(None, f"the checkpoint's origin {_shown(cp.origin)} is not {_shown(state.origin)}, the origin "
                             f"verified on {state.verified_at}")
    return cp, note


async def verify_log(source: LogSource, *, state: TrustedState | None, public_key: str | None = None, sample: int = 64,
                     concurrency: int = 16, rng: random.Random | None = None, log_url: str = "") -> tuple[Report, TrustedState]:
    """Verify the log against its signed checkpoint and the trusted ``state`` (None on first use).

    Returns the report and the new state to keep. Raises Mismatch (the log does not verify: a bad
    signature or origin, a log that shrank or forked, a changed, missing or extra entry, an entry that is
    not I-JSON, a received proof that does not verify) or AuditError (a key that differs from the pinned
    one, a malformed key, a state that does not hold together, a network error, a proof or an answer the
    log did not serve: nothing is concluded, and no index is blamed on a transient error).
    """
    t0 = time.perf_counter()
    rng = rng or random.Random()
    verifier, pinned_now = await _trusted_key(source, state, public_key)

    # 1. the signed checkpoint
    cp, note = await _signed_checkpoint(source, verifier, state)
    old = state.size if state else 0
    if state is not None and cp.size < old:
        raise Mismatch(cp.size, f"the log shrank: the checkpoint says {cp.size} entries, {old} were verified before")

    # 2. consistency with the checkpoint trusted last time (a proof the log does not serve: AuditError)
    consistency_error: str | None = None
    if state is not None and old > 0:
        proof = [] if cp.size == old else await source.consistency_proof(old, cp.size)
        try:
            verify_consistency(old, cp.size, proof, state.root_hash, cp.root_hash)
        except TlogError as exc:
            consistency_error = f"the consistency proof from the checkpoint verified on {state.verified_at} (size {old}) fails ({exc})"

    # 3. every entry, against its stored hash, the pinned hashes and the signed root
    leaves: list[bytes] = []
    cr = CompactRange()
    old_root: bytes | None = None
    also = f"; {consistency_error}" if consistency_error else ""
    async with aclosing(source.entries(0, cp.size)) as items:
        async for item in items:
            i = len(leaves)
            if i >= cp.size:
                raise Mismatch(i, f"the log serves more entries than the {cp.size} its checkpoint signs")
            served = item.get("index")
            if type(served) is not int or served != i:
                raise Mismatch(i, f"entry {i} is missing (the log serves index {_shown(served)} next){also}")
            h = entry_leaf_hash(item, i)
            if state is not None and i < old and h != state.leaves[i]:
                raise Mismatch(i, f"the entry differs from the one verified on {state.verified_at}{also}")
            leaves.append(h)
            cr.append(h)
            if len(leaves) == old:
                old_root = cr.root()
    if len(leaves) < cp.size:
        raise Mismatch(len(leaves), f"entry {len(leaves)} is missing: the log serves {len(leaves)} entries, the checkpoint says {cp.size}")
    if state is not None and old > 0 and old_root != state.root_hash:
        # the first ``old`` entries are the state's leaves: the state's root is not theirs, the state is damaged
        raise AuditError(f"the state file does not hold together: its {old} leaf hashes do not hash to its root "
                         f"{state.root_hash.hex()[:16]}... (not the log's doing; verify again without it)")
    if cr.root() != cp.root_hash or consistency_error:
        if cr.root() == cp.root_hash:  # the entries are both trees' leaves: only the served proof is wrong
            raise Mismatch(None, f"{consistency_error}, though the entries match both checkpoints")
        try:
            bad = await _first_bad_index(source, leaves, cp.size, cp.root_hash)
        except AuditError as exc:
            raise AuditError(f"the entries do not hash to the signed root, and looking for the first one not covered "
                             f"by it failed: {exc}") from None
        raise Mismatch(bad, "the entry is not the one the signed checkpoint commits to (the root recomputed from the "
                            f"entries differs){also}")

    # 4. inclusion proofs: every new entry, and a sample of the others
    picks = sorted(set(range(old, cp.size)) | set(rng.sample(range(old), min(sample, old))))
    todo = iter(picks)
    problems: dict[int, str] = {}
    unavailable: list[AuditError] = []

    async def prover() -> None:  # ``concurrency`` of these share the queue: memory stays flat for any log size
        for i in todo:
            if unavailable:
                return
            try:
                proof = await source.inclusion_proof(i, cp.size)
                verify_inclusion(leaves[i], i, cp.size, proof, cp.root_hash)
            except TlogError as exc:
                problems[i] = f"its inclusion proof in the tree of {cp.size} entries does not verify ({exc})"
            except AuditError as exc:  # not served: stop, and conclude nothing
                unavailable.append(exc)
                return

    await asyncio.gather(*(prover() for _ in range(max(1, concurrency))))
    if unavailable:
        raise unavailable[0]
    if problems:
        first = min(problems)
        raise Mismatch(first, problems[first])

    new_state = TrustedState(public_key=verifier.vkey, origin=cp.origin, size=cp.size, root_hash=cp.root_hash, note=note,
                             leaves=leaves, verified_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                             log_url=log_url)
    report = Report(size=cp.size, root_hash=cp.root_hash, new_entries=cp.size - old, inclusion_proofs=len(picks),
                    consistency_from=old if state is not None and old > 0 else None, pinned_key=pinned_now,
                    seconds=time.perf_counter() - t0, public_key=verifier.vkey)
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
    exchanged at the broker's token endpoint (client credentials grant, scope ``regulator``).

    Raises AuditError for an incomplete set of options, or a key file that cannot be read or holds no usable
    private key. A token endpoint that refuses the credentials, or cannot be reached, makes the first request
    raise AuditError."""
    if token:
        return _StaticBearer(token)
    if client_id or key_file or token_url:
        if not (client_id and key_file and token_url):
            raise AuditError("--client-id, --key-file and --token-url go together")
        from .authclient import AsyncTokenSource, BearerAuth, TokenError

        class RegulatorTokens(AsyncTokenSource):
            """Tokens for the regulator; a refusal or an unreachable endpoint is AuditError (exit 2)."""

            async def token(self) -> str:
                try:
                    return await super().token()
                except TokenError as exc:
                    raise AuditError(f"the token endpoint {token_url} refused the regulator's credentials "
                                     f"(--client-id {client_id}, --key-file {key_file}): {_one_line(str(exc))}") from None
                except httpx.HTTPError as exc:
                    raise AuditError(f"could not get a token from {token_url}: {_describe(exc)}") from None

        try:
            key = key_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditError(f"cannot read --key-file {key_file}: {_one_line(str(exc))}") from None
        try:
            source = RegulatorTokens(client_id, key, token_url, scope="regulator")
        except Exception as exc:  # joserfc, cryptography and json raise many kinds for a key that is not one
            raise AuditError(f"--key-file {key_file} holds no usable private key (a JWK or PEM of an Ed25519, P-256 "
                             f"or RSA key): {_one_line(str(exc) or type(exc).__name__)}") from None
        return BearerAuth(source)
    return None


async def _run(base_url: str, public_key: str | None, state_path: Path, sample: int, concurrency: int, timeout: float,
               auth: httpx.Auth | None = None) -> Report:
    try:
        state = load_state(state_path)
        source = HttpLogSource(base_url, timeout=timeout, max_connections=concurrency, auth=auth)
        try:
            report, new_state = await verify_log(source, state=state, public_key=public_key, sample=sample,
                                                 concurrency=concurrency, log_url=base_url)
        finally:
            await source.aclose()
    finally:
        tokens = getattr(auth, "source", None)
        if tokens is not None and hasattr(tokens, "aclose"):
            await tokens.aclose()
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
    timeout: Annotated[float, typer.Option(min=0.1, help=(
        "seconds for each whole HTTP request (the public key, the checkpoint, each proof, with its token request); "
        "the entry export may take longer, but must send each entry within this many seconds of the previous one"))] = 30.0,
    token: Annotated[str | None, typer.Option(envvar="PORTABILITY_TOKEN", help="a regulator's access token")] = None,
    client_id: Annotated[str | None, typer.Option(envvar="PORTABILITY_CLIENT_ID", help="the regulator's client id")] = None,
    key_file: Annotated[Path | None, typer.Option(envvar="PORTABILITY_KEY_FILE", help="the regulator's private key (JWK or PEM)")] = None,
    token_url: Annotated[str | None, typer.Option(envvar="PORTABILITY_TOKEN_URL", help="the broker's token endpoint")] = None,
) -> None:
    """Verify the consent log at BASE_URL. Exit 0 verified, 1 mismatch, 2 usage, state-file or network error.

    Reading entries needs the regulator role: give ``--token``, or ``--client-id``, ``--key-file`` and
    ``--token-url`` (the registry's ``/oauth/token``)."""
    state_path = state.expanduser()
    try:
        report = asyncio.run(_run(base_url, public_key, state_path, sample, concurrency, timeout,
                                  _auth(token, client_id, key_file, token_url)))
    except Mismatch as exc:
        typer.echo(_one_line(str(exc), 2000))
        raise typer.Exit(1) from None
    except (AuditError, httpx.HTTPError, OSError) as exc:
        typer.echo(f"error: {_one_line(str(exc) or type(exc).__name__, 2000)}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a failure of the verifier itself or of its inputs: no conclusion about the log
        typer.echo(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc), 2000)}", err=True)
        raise typer.Exit(2) from None
    root = base64.b64encode(report.root_hash).decode("ascii")
    if report.pinned_key:
        typer.echo(f"pinned the log's public key in {state_path} (trust on first use): {report.public_key}\n"
                   "compare it with the key the log's operator publishes (outside this log), or give it with --public-key")
    since = f", consistent with the {report.consistency_from} entries verified before" if report.consistency_from else ""
    typer.echo(f"verified: {report.size} entries, root {root}{since}; {report.new_entries} new, "
               f"{report.inclusion_proofs} inclusion proofs, {report.seconds:.2f}s")


if __name__ == "__main__":  # pragma: no cover - ``python -m shared.audit``
    app()
