"""Unit tests for the storage-facing parts of shared.tlog.merkle: node keys, readers, CompactRange, bench."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shared.tlog import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    NodeKey,
    NodeReader,
    ProofError,
    assemble_proof,
    consistency_proof,
    consistency_proof_keys,
    inclusion_proof,
    inclusion_proof_keys,
    leaf_hash,
    required_nodes,
    root,
    root_keys,
    subtree_keys,
    verify_consistency,
    verify_inclusion,
)
from shared.tlog.bench import bench

TREE = MemoryTree.from_leaves(i.to_bytes(2, "big") for i in range(300))


class CountingReader:
    """NodeReader over a MemoryTree that records batch calls."""

    def __init__(self, tree: MemoryTree) -> None:
        self.tree = tree
        self.batches: list[list[NodeKey]] = []

    def get_node(self, level: int, index: int) -> bytes:
        raise AssertionError("proof generation must use the batch call")

    def get_nodes(self, keys: Sequence[NodeKey]) -> Sequence[bytes]:
        self.batches.append(list(keys))
        return self.tree.get_nodes(keys)


def test_memory_tree_is_a_node_reader() -> None:
    assert isinstance(TREE, NodeReader)
    assert isinstance(CountingReader(TREE), NodeReader)


def test_subtree_keys() -> None:
    assert subtree_keys(0, 0) == ()
    assert subtree_keys(0, 13) == ((3, 0), (2, 2), (0, 12))
    assert subtree_keys(8, 13) == ((2, 2), (0, 12))
    assert root_keys(8) == ((3, 0),)
    with pytest.raises(ValueError):
        subtree_keys(4, 13)  # 9 leaves starting at 4: not a subtree of any RFC 9162 tree
    with pytest.raises(ValueError):
        subtree_keys(5, 4)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 255, 256, 257, 300])
def test_one_batched_read_of_log_n_nodes(size: int) -> None:
    reader = CountingReader(TREE)
    for index in {0, size // 2, size - 1}:
        reader.batches.clear()
        proof = inclusion_proof(reader, index, size)
        assert len(reader.batches) <= 1
        n_keys = sum(len(b) for b in reader.batches)
        assert n_keys <= 2 * max(1, size.bit_length())
        verify_inclusion(TREE.leaf_hash_at(index), index, size, proof, TREE.root(size))
    for size1 in {1, size // 2 or 1, size}:
        reader.batches.clear()
        proof = consistency_proof(reader, size1, size)
        assert len(reader.batches) <= 1
        assert sum(len(b) for b in reader.batches) <= 2 * size.bit_length() + 1
        verify_consistency(size1, size, proof, TREE.root(size1), TREE.root(size))
    reader.batches.clear()
    assert root(reader, size) == TREE.root(size)
    assert len(reader.batches) == 1 and len(reader.batches[0]) == size.bit_count()


def test_async_style_assembly() -> None:
    elements = inclusion_proof_keys(5, 13)
    keys = required_nodes(elements)
    fetched = dict(zip(keys, TREE.get_nodes(keys)))
    assert assemble_proof(elements, fetched) == TREE.inclusion_proof(5, 13)
    # The incomplete right edge [8, 13) is one proof element folded from two stored subtrees.
    assert ((2, 2), (0, 12)) in elements
    elements = consistency_proof_keys(6, 13)
    keys = required_nodes(elements)
    assert assemble_proof(elements, dict(zip(keys, TREE.get_nodes(keys)))) == TREE.consistency_proof(6, 13)


def test_generation_argument_errors() -> None:
    for args in [(0, 0), (5, 5), (-1, 5)]:
        with pytest.raises(ValueError):
            inclusion_proof_keys(*args)
    for args in [(0, 5), (6, 5), (0, 0)]:
        with pytest.raises(ValueError):
            consistency_proof_keys(*args)
    assert consistency_proof_keys(5, 5) == []
    with pytest.raises(ValueError):
        TREE.inclusion_proof(0, TREE.size + 1)
    with pytest.raises(ValueError):
        TREE.root(TREE.size + 1)
    with pytest.raises(TypeError):
        inclusion_proof_keys(True, 5)
    with pytest.raises(KeyError):
        inclusion_proof(MemoryTree.from_leaves([b"x"]), 0, 2)


def test_verify_rejects_bad_types() -> None:
    lh, proof, rt = TREE.leaf_hash_at(1), TREE.inclusion_proof(1, 4), TREE.root(4)
    verify_inclusion(lh, 1, 4, proof, rt)
    for bad in [
        (lh.hex(), 1, 4, proof, rt),
        (lh, "1", 4, proof, rt),
        (lh, 1, 4.0, proof, rt),
        (lh, 1, 4, b"".join(proof), rt),
        (lh, 1, 4, [p.hex() for p in proof], rt),
        (lh, 1, 4, proof, rt.hex()),
        (lh, True, 4, proof, rt),
        (lh, -1, 4, proof, rt),
        (lh, 1, 2**64, proof, rt),
    ]:
        with pytest.raises(ProofError):
            verify_inclusion(*bad)  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        verify_consistency(2, 4, [p[:31] for p in TREE.consistency_proof(2, 4)], TREE.root(2), TREE.root(4))


def test_compact_range_emits_nodes_to_persist() -> None:
    cr = CompactRange()
    assert cr.root() == EMPTY_ROOT and cr.peaks == ()
    stored: dict[NodeKey, bytes] = {}
    for i in range(300):
        new = cr.append(leaf_hash(i.to_bytes(2, "big")))
        assert new[0][0] == (0, i)
        stored.update(new)
        assert cr.root() == TREE.root(i + 1)
        assert cr.peaks == tuple(TREE.get_nodes(root_keys(i + 1)))
    assert stored == {(lvl, idx): TREE.get_node(lvl, idx) for lvl in range(9) for idx in range(300 >> lvl)}
    # Resume from persisted state.
    resumed = CompactRange.from_reader(TREE, 299)
    resumed.append(TREE.leaf_hash_at(299))
    assert resumed.root() == TREE.root()
    with pytest.raises(ValueError):
        CompactRange(3, [EMPTY_ROOT])
    with pytest.raises(ValueError):
        cr.append(b"short")


def test_bench_smoke() -> None:
    result = bench(64, queries=50)
    assert result["n"] == 64 and result["queries"] == 50
    for key in ("inclusion_p50_ms", "inclusion_p99_ms", "consistency_p50_ms", "consistency_p99_ms"):
        assert 0 <= result[key] < 1000
    assert result["inclusion_p50_ms"] <= result["inclusion_p99_ms"]
