"""RFC 9162 §2.1 Merkle trees over SHA-256: hashing, proof generation, proof verification.

Vocabulary used throughout:

* **size** – number of leaves in a tree (``int``, ``0 <= size < 2**64``).
* **index** – 0-based leaf position.
* **hash** – a 32-byte SHA-256 digest (``bytes``).
* **node key** – ``(level, index)``: the *complete* subtree of ``2**level``
  leaves covering leaves ``[index * 2**level, (index + 1) * 2**level)``.
  Level 0 nodes are leaf hashes. Complete subtrees never change once all of
  their leaves exist, so a log can persist them append-only.
* **proof element keys** – a tuple of node keys, left to right, covering a
  contiguous leaf range. The element's hash is the Merkle Tree Hash (MTH) of
  that range, obtained by folding the subtree hashes *right to left*
  (:func:`fold_subtrees`). Most elements are one complete subtree; at most one
  element per proof (the tree's incomplete right edge) has several.

Proof generation is split in two pure steps so a storage backend can serve a
proof with **one batched read of O(log n) nodes**, synchronously through a
:class:`NodeReader` (:func:`inclusion_proof`, :func:`consistency_proof`,
:func:`root`) or asynchronously by hand::

    elements = inclusion_proof_keys(index, size)
    hashes = await db.fetch_nodes(required_nodes(elements))   # {(level, index): hash}
    proof = assemble_proof(elements, hashes)

Verification (:func:`verify_inclusion`, :func:`verify_consistency`) follows the
RFC 9162 §2.1.3.2 / §2.1.4.2 algorithms step by step and raises
:class:`~shared.tlog.errors.ProofError` on any failure.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

from shared.tlog.errors import ProofError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "MAX_TREE_SIZE",
    "NodeKey",
    "ProofElementKeys",
    "NodeReader",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "fold_subtrees",
    "subtree_keys",
    "root_keys",
    "inclusion_proof_keys",
    "consistency_proof_keys",
    "required_nodes",
    "assemble_proof",
    "root",
    "inclusion_proof",
    "consistency_proof",
    "root_from_inclusion_proof",
    "verify_inclusion",
    "verify_consistency",
    "CompactRange",
    "MemoryTree",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string (RFC 9162 §2.1.1)."""

MAX_TREE_SIZE = 2**64 - 1
"""Largest accepted tree size (sizes and indexes are uint64 on the wire)."""

NodeKey: TypeAlias = tuple[int, int]
"""``(level, index)`` of a complete subtree; see the module docstring."""

ProofElementKeys: TypeAlias = tuple[NodeKey, ...]
"""Complete subtrees (left to right) whose right-to-left fold is one proof element."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


@runtime_checkable
class NodeReader(Protocol):
    """Read access to stored complete-subtree hashes.

    Implementations must return the hash of the complete subtree ``(level,
    index)`` (see module docstring) and raise :class:`KeyError` if it is not
    stored (e.g. not complete yet).
    """

    def get_node(self, level: int, index: int) -> bytes:
        """Return the 32-byte hash of complete subtree ``(level, index)``; KeyError if absent."""
        ...

    def get_nodes(self, keys: Sequence[NodeKey]) -> Sequence[bytes]:
        """Batch variant of :meth:`get_node`: hashes in the same order as ``keys``."""
        ...


# ---------------------------------------------------------------------------
# Hashing (RFC 9162 §2.1.1)
# ---------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Return the leaf hash ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1); 32 bytes."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1); 32 bytes.

    ``left``/``right`` are normally 32-byte hashes but are hashed as given.
    """
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Fold subtree hashes right to left: ``h[0] ∘ (h[1] ∘ (… ∘ h[-1]))`` with ``∘ = node_hash``.

    Given the hashes of the complete subtrees returned by :func:`subtree_keys`
    for a range, this is that range's MTH. Empty input yields :data:`EMPTY_ROOT`.
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return MTH(D[n]) for the given leaf hashes (RFC 9162 §2.1.1); O(n) time, O(log n) space.

    ``hashes`` are leaf hashes (already ``0x00``-prefixed and hashed), not raw
    leaf inputs. The MTH of zero leaves is :data:`EMPTY_ROOT`.
    """
    cr = CompactRange()
    for h in hashes:
        cr.append(h)
    return cr.root()


# ---------------------------------------------------------------------------
# Which nodes a proof needs (pure index arithmetic)
# ---------------------------------------------------------------------------


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > MAX_TREE_SIZE:
        raise ValueError(f"{name} {value} out of range [0, 2**64)")
    return value


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_keys(start: int, end: int) -> ProofElementKeys:
    """Decompose leaf range ``[start, end)`` into complete subtrees, left to right.

    The range must be a subtree of some RFC 9162 tree: ``start`` must be a
    multiple of the smallest power of two ``>= end - start`` (always true for
    ``start == 0`` and for every range the RFC recursion visits). Then
    ``fold_subtrees([hash(k) for k in subtree_keys(start, end)]) ==
    MTH(D[start:end])``. Returns ``()`` for an empty range.

    Raises ValueError for a range that is not such a subtree.
    """
    _check_int(start, "start")
    _check_int(end, "end")
    if end < start:
        raise ValueError(f"end {end} < start {start}")
    n = end - start
    if n and start % (1 << (n - 1).bit_length()):
        raise ValueError(f"[{start}, {end}) is not an aligned subtree range")
    keys: list[NodeKey] = []
    pos = start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            keys.append((level, pos >> level))
            pos += 1 << level
    return tuple(keys)


def root_keys(size: int) -> ProofElementKeys:
    """Node keys whose right-to-left fold is the root MTH(D[size]); ``()`` for size 0.

    These are also the "peaks" a :class:`CompactRange` of ``size`` leaves holds.
    """
    return subtree_keys(0, size)


def inclusion_proof_keys(index: int, size: int) -> list[ProofElementKeys]:
    """Which nodes make up the audit path PATH(index, D[size]) (RFC 9162 §2.1.3.1).

    Returns one :data:`ProofElementKeys` per proof element, in proof order
    (leaf level first). Raises ValueError unless ``0 <= index < size``.
    """
    _check_int(index, "index")
    _check_int(size, "size")
    if index >= size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    elements: list[ProofElementKeys] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            elements.append(subtree_keys(lo + k, hi))
            hi = lo + k
        else:
            elements.append(subtree_keys(lo, lo + k))
            lo += k
    elements.reverse()
    return elements


def consistency_proof_keys(size1: int, size2: int) -> list[ProofElementKeys]:
    """Which nodes make up the consistency proof PROOF(size1, D[size2]) (RFC 9162 §2.1.4.1).

    Returns one :data:`ProofElementKeys` per proof element, in proof order.
    ``size1 == size2`` gives ``[]``. Raises ValueError unless
    ``0 < size1 <= size2`` (a proof from the empty tree is not defined by the
    RFC and is rejected by :func:`verify_consistency`).
    """
    _check_int(size1, "size1")
    _check_int(size2, "size2")
    if not 0 < size1 <= size2:
        raise ValueError(f"need 0 < size1 <= size2, got size1={size1} size2={size2}")
    elements: list[ProofElementKeys] = []
    lo, hi, complete_prefix = 0, size2, True  # complete_prefix is the RFC's SUBPROOF flag b
    while size1 != hi:
        k = _split(hi - lo)
        if size1 <= lo + k:
            elements.append(subtree_keys(lo + k, hi))
            hi = lo + k
        else:
            elements.append(subtree_keys(lo, lo + k))
            lo += k
            complete_prefix = False
    if not complete_prefix:
        elements.append(subtree_keys(lo, hi))
    elements.reverse()
    return elements


def required_nodes(elements: Iterable[ProofElementKeys]) -> list[NodeKey]:
    """Flatten proof element keys into the distinct node keys to fetch, in first-use order."""
    seen: dict[NodeKey, None] = {}
    for element in elements:
        for key in element:
            seen.setdefault(key, None)
    return list(seen)


def assemble_proof(elements: Sequence[ProofElementKeys], nodes: Mapping[NodeKey, bytes]) -> list[bytes]:
    """Turn proof element keys plus fetched node hashes into the proof (list of 32-byte hashes).

    Raises KeyError if ``nodes`` lacks a required key.
    """
    return [fold_subtrees([nodes[key] for key in element]) for element in elements]


def _read(reader: NodeReader, elements: Sequence[ProofElementKeys]) -> list[bytes]:
    keys = required_nodes(elements)
    hashes = reader.get_nodes(keys) if keys else []
    if len(hashes) != len(keys):
        raise KeyError(f"reader returned {len(hashes)} hashes for {len(keys)} keys")
    return assemble_proof(elements, dict(zip(keys, hashes)))


def root(reader: NodeReader, size: int) -> bytes:
    """Return MTH(D[size]) from stored complete subtrees: at most log2(size)+1 node reads."""
    return fold_subtrees(_read(reader, [(key,) for key in root_keys(size)]))


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    """Return the RFC 9162 §2.1.3.1 audit path for leaf ``index`` in the tree of ``size`` leaves.

    One ``reader.get_nodes`` call of O(log size) keys. Raises ValueError unless
    ``0 <= index < size``; KeyError if the reader lacks a node.
    """
    return _read(reader, inclusion_proof_keys(index, size))


def consistency_proof(reader: NodeReader, size1: int, size2: int) -> list[bytes]:
    """Return the RFC 9162 §2.1.4.1 consistency proof between tree sizes ``size1`` and ``size2``.

    One ``reader.get_nodes`` call of O(log size2) keys. Raises ValueError unless
    ``0 < size1 <= size2``; KeyError if the reader lacks a node.
    """
    return _read(reader, consistency_proof_keys(size1, size2))


# ---------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2)
# ---------------------------------------------------------------------------


def _proof_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise ProofError(f"{name} must be an int in [0, 2**64), got {value!r}")
    return value


def _proof_hash(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes")
    return value


def _proof_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise ProofError(f"{name} must be bytes")
    return value


def _proof_list(proof: object) -> list[bytes]:
    if isinstance(proof, (bytes, str)) or not isinstance(proof, Sequence):
        raise ProofError("proof must be a sequence of hashes")
    return [_proof_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Compute the root implied by an audit path (RFC 9162 §2.1.3.2 steps 1–5, minus the root compare).

    ``leaf_hash`` and each proof element must be 32 bytes. Raises ProofError if
    ``index >= size``, if the proof has the wrong number of elements for
    ``(index, size)``, or on malformed input.
    """
    h = _proof_hash(leaf_hash, "leaf hash")
    index = _proof_int(index, "index")
    size = _proof_int(size, "size")
    path = _proof_list(proof)
    # 1. leaf_index >= tree_size fails.
    if index >= size:
        raise ProofError(f"index {index} >= size {size}")
    # 2./3.
    fn, sn, r = index, size - 1, h
    # 4.
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 5. (sn part)
    if sn != 0:
        raise ProofError("inclusion proof too short")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Verify that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with root ``root``.

    RFC 9162 §2.1.3.2. Returns None on success; raises ProofError otherwise
    (including ``size == 0``, ``index >= size``, non-32-byte leaf hash or proof
    elements, wrong proof length, root mismatch).
    """
    want = _proof_bytes(root, "root")
    got = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if not hmac.compare_digest(got, want):
        raise ProofError("inclusion proof does not lead to the given root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Verify that the tree (size1, root1) is a prefix of the tree (size2, root2).

    RFC 9162 §2.1.4.2 for ``0 < size1 < size2``, plus the policy of
    transparency-dev/merkle's golden tests for the edge cases the RFC leaves
    open:

    * ``size1 == 0`` is rejected (nothing to prove; RFC 9162 requires ``0 < first``),
    * ``size2 < size1`` is rejected,
    * ``size1 == size2`` requires an empty proof and ``root1 == root2``
      (byte equality, any length).

    Returns None on success; raises ProofError otherwise.
    """
    size1 = _proof_int(size1, "size1")
    size2 = _proof_int(size2, "size2")
    r1 = _proof_bytes(root1, "root1")
    r2 = _proof_bytes(root2, "root2")
    path = _proof_list(proof)
    if size1 == 0:
        raise ProofError("consistency from an empty tree (size1 == 0) is not verifiable")
    if size2 < size1:
        raise ProofError(f"size2 {size2} < size1 {size1}")
    if size1 == size2:
        if path:
            raise ProofError("size1 == size2 but proof is not empty")
        if not hmac.compare_digest(r1, r2):
            raise ProofError("size1 == size2 but roots differ")
        return
    _proof_hash(r1, "root1")
    _proof_hash(r2, "root2")
    # 1.
    if not path:
        raise ProofError("empty consistency proof")
    # 2.
    if size1 & (size1 - 1) == 0:
        path.insert(0, r1)
    # 3.
    fn, sn = size1 - 1, size2 - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise ProofError("consistency proof too short")
    ok1 = hmac.compare_digest(fr, r1)
    ok2 = hmac.compare_digest(sr, r2)
    if not (ok1 and ok2):
        raise ProofError("consistency proof does not match the given roots")


# ---------------------------------------------------------------------------
# Append-only state
# ---------------------------------------------------------------------------


class CompactRange:
    """The O(log n) right-edge state of a growing tree: hashes of the :func:`root_keys` subtrees.

    ``append`` adds one leaf hash and returns every complete-subtree node it
    completes, which is exactly what a persistent log must store (the reference
    for DB-backed implementations: load ``peaks`` with
    ``reader.get_nodes(root_keys(size))``, append, write the returned nodes).
    """

    __slots__ = ("_size", "_peaks")

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        """Start from a tree of ``size`` leaves whose root_keys(size) hashes are ``peaks``.

        Raises ValueError if ``len(peaks) != popcount(size)`` or a peak is not 32 bytes.
        """
        _check_int(size, "size")
        if len(peaks) != size.bit_count():
            raise ValueError(f"size {size} needs {size.bit_count()} peaks, got {len(peaks)}")
        if any(len(p) != HASH_SIZE for p in peaks):
            raise ValueError("peaks must be 32-byte hashes")
        self._size = size
        self._peaks: list[bytes] = list(peaks)

    @classmethod
    def from_reader(cls, reader: NodeReader, size: int) -> CompactRange:
        """Load the compact range of a stored tree of ``size`` leaves (one batched read)."""
        keys = list(root_keys(size))
        return cls(size, list(reader.get_nodes(keys)) if keys else [])

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """Hashes of :func:`root_keys` ``(size)``, left to right (largest subtree first)."""
        return tuple(self._peaks)

    def append(self, leaf_hash: bytes) -> list[tuple[NodeKey, bytes]]:
        """Append one leaf hash (32 bytes); return the newly complete nodes ``[((level, index), hash)]``.

        The first entry is the leaf itself ``((0, old_size), leaf_hash)``, then
        each completed ancestor bottom-up. O(log n) worst case, O(1) amortised.
        """
        if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
            raise ValueError("leaf hash must be 32 bytes")
        if self._size >= MAX_TREE_SIZE:
            raise ValueError("tree is full")
        index, level, h = self._size, 0, leaf_hash
        new: list[tuple[NodeKey, bytes]] = [((0, index), h)]
        while index & 1:
            h = node_hash(self._peaks.pop(), h)
            index >>= 1
            level += 1
            new.append(((level, index), h))
        self._peaks.append(h)
        self._size += 1
        return new

    def root(self) -> bytes:
        """MTH of the leaves appended so far (:data:`EMPTY_ROOT` when empty)."""
        return fold_subtrees(self._peaks)


class MemoryTree:
    """In-memory append-only Merkle tree storing every complete subtree node.

    Implements :class:`NodeReader`; the reference model for a DB-backed log.
    Memory: about 2n hashes for n leaves.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Create a tree, optionally pre-filled with leaf hashes (not raw leaf data)."""
        self._levels: list[list[bytes]] = []
        self._range = CompactRange()
        for h in leaf_hashes:
            self.append_hash(h)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MemoryTree:
        """Build a tree from raw leaf inputs (each hashed with :func:`leaf_hash`)."""
        return cls(leaf_hash(d) for d in leaves)

    def __len__(self) -> int:
        return self._range.size

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._range.size

    def append(self, data: bytes) -> int:
        """Append raw leaf input ``data``; return its leaf index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, h: bytes) -> int:
        """Append a 32-byte leaf hash; store every node it completes; return its leaf index."""
        index = self._range.size
        for (level, idx), node in self._range.append(h):
            if level == len(self._levels):
                self._levels.append([])
            row = self._levels[level]
            assert idx == len(row), "nodes are completed in order"
            row.append(node)
        return index

    def get_node(self, level: int, index: int) -> bytes:
        """Hash of complete subtree ``(level, index)``; KeyError if not (yet) complete."""
        if 0 <= level < len(self._levels) and 0 <= index < len(self._levels[level]):
            return self._levels[level][index]
        raise KeyError((level, index))

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        """Hashes of ``keys`` in order; KeyError on the first missing key."""
        return [self.get_node(level, index) for level, index in keys]

    def leaf_hash_at(self, index: int) -> bytes:
        """Leaf hash of leaf ``index``; KeyError if out of range."""
        return self.get_node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all). ValueError if ``size > self.size``."""
        size = self.size if size is None else size
        self._check_size(size)
        if size == self.size:
            return self._range.root()
        return root(self, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of the first ``size`` leaves (default: all)."""
        size = self.size if size is None else size
        self._check_size(size)
        return inclusion_proof(self, index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` (default: current size)."""
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        return consistency_proof(self, size1, size2)

    def _check_size(self, size: int) -> None:
        _check_int(size, "size")
        if size > self.size:
            raise ValueError(f"size {size} > tree size {self.size}")
