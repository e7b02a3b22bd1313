"""Property tests (hypothesis) for shared.tlog.merkle on one shared 2,000-leaf MemoryTree.

Every generated proof verifies; every altered proof (bit flip, dropped element,
inserted element, wrong index/size, wrong leaf) fails with ProofError.
"""

from __future__ import annotations

import functools
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.tlog import (
    CompactRange,
    MemoryTree,
    ProofError,
    consistency_proof_keys,
    inclusion_proof_keys,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

N = 2000
TREE = MemoryTree.from_leaves(i.to_bytes(4, "big") for i in range(N))
LEAF_HASHES = [TREE.leaf_hash_at(i) for i in range(N)]


def _roots() -> list[bytes]:
    cr, out = CompactRange(), [CompactRange().root()]
    for lh in LEAF_HASHES:
        cr.append(lh)
        out.append(cr.root())
    return out


ROOTS = _roots()  # ROOTS[size] for size in 0..N, computed incrementally (independent of NodeReader reads)

PROPS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.lru_cache(maxsize=None)
def ref_mth(start: int, end: int) -> bytes:
    """Textbook recursive MTH over LEAF_HASHES[start:end] (RFC 9162 §2.1.1)."""
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return LEAF_HASHES[start]
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(start, start + k) + ref_mth(start + k, end)).digest()


def ref_path(m: int, start: int, end: int) -> list[bytes]:
    """PATH(m, D[start:end]) (RFC 9162 §2.1.3.1)."""
    if end - start == 1:
        return []
    k = 1 << ((end - start - 1).bit_length() - 1)
    if m < k:
        return ref_path(m, start, start + k) + [ref_mth(start + k, end)]
    return ref_path(m - k, start + k, end) + [ref_mth(start, start + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 §2.1.4.1)."""

    def sub(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if b else [ref_mth(lo, hi)]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if m <= k:
            return sub(m, lo, lo + k, b) + [ref_mth(lo + k, hi)]
        return sub(m - k, lo + k, hi, False) + [ref_mth(lo, lo + k)]

    return sub(m, 0, n, True)


index_and_size = st.integers(1, N).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n)))
size_pair = st.integers(1, N).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n)))


def _flip(proof: list[bytes], data: st.DataObject) -> list[bytes]:
    i = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 8 * len(proof[i]) - 1), label="bit")
    elem = bytearray(proof[i])
    elem[bit // 8] ^= 1 << (bit % 8)
    return proof[:i] + [bytes(elem)] + proof[i + 1 :]


def _insert(proof: list[bytes], data: st.DataObject) -> list[bytes]:
    pos = data.draw(st.integers(0, len(proof)), label="position")
    extra = data.draw(
        st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(proof or [ROOTS[1]])), label="extra"
    )
    return proof[:pos] + [extra] + proof[pos:]


def _drop(proof: list[bytes], data: st.DataObject) -> list[bytes]:
    i = data.draw(st.integers(0, len(proof) - 1), label="dropped")
    return proof[:i] + proof[i + 1 :]


# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------


def test_roots_agree_for_every_size() -> None:
    for size in range(N + 1):
        assert TREE.root(size) == ROOTS[size]
    assert ROOTS[N] == root_from_leaf_hashes(LEAF_HASHES) == ref_mth(0, N)


@PROPS
@given(st.integers(0, N))
def test_root_matches_textbook_mth(size: int) -> None:
    assert TREE.root(size) == ref_mth(0, size)


# ---------------------------------------------------------------------------
# Inclusion
# ---------------------------------------------------------------------------


@PROPS
@given(index_and_size)
def test_inclusion_proof_verifies(args: tuple[int, int]) -> None:
    index, size = args
    proof = TREE.inclusion_proof(index, size)
    assert proof == ref_path(index, 0, size)
    assert len(proof) == len(inclusion_proof_keys(index, size)) <= (size - 1).bit_length()
    verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size])


@PROPS
@given(index_and_size, st.data())
def test_altered_inclusion_proof_fails(args: tuple[int, int], data: st.DataObject) -> None:
    index, size = args
    proof = TREE.inclusion_proof(index, size)
    lh, rt = LEAF_HASHES[index], ROOTS[size]
    mutations = ["insert", "index", "size", "leaf", "root"] + (["flip", "drop"] if proof else [])
    kind = data.draw(st.sampled_from(mutations), label="mutation")
    i, n, p = index, size, proof
    if kind == "flip":
        p = _flip(proof, data)
    elif kind == "drop":
        p = _drop(proof, data)
    elif kind == "insert":
        p = _insert(proof, data)
    elif kind == "index":
        i = data.draw(st.integers(0, N + 5).filter(lambda x: x != index), label="wrong index")
    elif kind == "size":
        # Against the genuine root of the claimed size: a proof for another size never fits.
        n = data.draw(st.integers(0, N).filter(lambda x: x != size), label="wrong size")
        rt = ROOTS[n]
    elif kind == "leaf":
        j = data.draw(st.integers(0, N - 1).filter(lambda x: x != index), label="other leaf")
        lh = LEAF_HASHES[j]
    else:
        rt = data.draw(st.sampled_from(ROOTS).filter(lambda r: r != ROOTS[size]), label="wrong root")
    with pytest.raises(ProofError):
        verify_inclusion(lh, i, n, p, rt)


@settings(PROPS, max_examples=200)
@given(index_and_size, st.integers(0, N + 5))
def test_inclusion_size_is_bound_by_proof_shape(args: tuple[int, int], other: int) -> None:
    """With the *same* root, another size verifies only if it gives the same audit-path shape.

    (RFC 9162 §2.1.3.2 uses tree_size only to steer left/right, so e.g. leaf 0's
    proof for size 5 also "fits" size 6; the root is what binds the size.)
    """
    index, size = args
    proof = TREE.inclusion_proof(index, size)

    def shape(n: int) -> tuple[bool, ...] | None:
        if index >= n:
            return None
        return tuple(keys[0][1] << keys[0][0] > index for keys in inclusion_proof_keys(index, n))

    if other != size and shape(other) != shape(size):
        with pytest.raises(ProofError):
            verify_inclusion(LEAF_HASHES[index], index, other, proof, ROOTS[size])
    else:
        verify_inclusion(LEAF_HASHES[index], index, other, proof, ROOTS[size])


# ---------------------------------------------------------------------------
# Consistency
# ---------------------------------------------------------------------------


@PROPS
@given(size_pair)
def test_consistency_proof_verifies(args: tuple[int, int]) -> None:
    size1, size2 = args
    proof = TREE.consistency_proof(size1, size2)
    assert proof == ref_proof(size1, size2)
    assert len(proof) == len(consistency_proof_keys(size1, size2))
    verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])


@PROPS
@given(size_pair, st.data())
def test_altered_consistency_proof_fails(args: tuple[int, int], data: st.DataObject) -> None:
    size1, size2 = args
    proof = TREE.consistency_proof(size1, size2)
    r1, r2 = ROOTS[size1], ROOTS[size2]
    mutations = ["insert", "size1", "size2", "root1", "root2", "swap"] + (["flip", "drop"] if proof else [])
    kind = data.draw(st.sampled_from(mutations), label="mutation")
    m, n, p = size1, size2, proof
    if kind == "flip":
        p = _flip(proof, data)
    elif kind == "drop":
        p = _drop(proof, data)
    elif kind == "insert":
        p = _insert(proof, data)
    elif kind == "size1":
        m = data.draw(st.integers(0, N).filter(lambda x: x != size1), label="wrong size1")
        r1 = ROOTS[m]
    elif kind == "size2":
        n = data.draw(st.integers(0, N).filter(lambda x: x != size2), label="wrong size2")
        r2 = ROOTS[n]
    elif kind == "root1":
        r1 = data.draw(st.sampled_from(ROOTS).filter(lambda r: r != ROOTS[size1]), label="wrong root1")
    elif kind == "root2":
        r2 = data.draw(st.sampled_from(ROOTS).filter(lambda r: r != ROOTS[size2]), label="wrong root2")
    else:
        if size1 == size2:
            m = 0  # swapping equal roots is a no-op; claim the empty tree instead (always rejected)
        r1, r2 = r2, r1
    with pytest.raises(ProofError):
        verify_consistency(m, n, p, r1, r2)


@PROPS
@given(size_pair, st.integers(1, N))
def test_consistency_composes_with_inclusion(args: tuple[int, int], extra: int) -> None:
    """A leaf proven in the old tree is provable in the new one, and proofs chain transitively."""
    size1, size2 = args
    size3 = min(N, size2 + extra)
    index = size1 - 1
    verify_inclusion(LEAF_HASHES[index], index, size2, TREE.inclusion_proof(index, size2), ROOTS[size2])
    verify_consistency(size2, size3, TREE.consistency_proof(size2, size3), ROOTS[size2], ROOTS[size3])
    verify_consistency(size1, size3, TREE.consistency_proof(size1, size3), ROOTS[size1], ROOTS[size3])
