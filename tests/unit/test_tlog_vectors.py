"""shared.tlog against the published vectors in /work/shared/vectors (read in place, never copied).

Covers every section of merkle_vectors.json and every signed note of
checkpoint_examples.txt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.tlog import (
    EMPTY_ROOT,
    Checkpoint,
    CheckpointError,
    CompactRange,
    ECDSAVerifier,
    MemoryTree,
    NoteError,
    ProofError,
    Verifier,
    fold_subtrees,
    leaf_hash,
    node_hash,
    open_checkpoint,
    open_note,
    parse_note,
    root,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    subtree_keys,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
MV: dict[str, Any] = json.loads((VECTORS / "merkle_vectors.json").read_text(encoding="utf-8"))
EXAMPLES_TEXT = (VECTORS / "checkpoint_examples.txt").read_text(encoding="utf-8")


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def hs(xs: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in xs]


LEAVES = hs(MV["leaves"])
TREE8 = MemoryTree.from_leaves(LEAVES)


# ---------------------------------------------------------------------------
# checkpoint_examples.txt
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    title: str
    source: str
    verifier: str
    status: str
    remark: str  # the optional "note:" header line
    note: str  # the signed note itself


def _load_examples() -> list[Example]:
    out = []
    for block in re.split(r"^### ", EXAMPLES_TEXT, flags=re.M)[1:]:
        title, rest = block.split("\n", 1)
        header, body = rest.split("=== BEGIN SIGNED NOTE ===\n", 1)
        note, _ = body.split("=== END SIGNED NOTE ===", 1)
        fields = dict(re.findall(r"^(source|verifier|status|note): (.*)$", header, flags=re.M))
        out.append(
            Example(title, fields["source"], fields["verifier"], fields["status"], fields.get("note", ""), note)
        )
    return out


EXAMPLES = _load_examples()


def example_verifier(ex: Example, key_name: str) -> Verifier:
    """The verifier key an example header states (C2SP vkey, or an ECDSA SPKI in base64 DER)."""
    if ex.verifier.startswith("ECDSA"):
        m = re.search(r"\(base64 DER\) (\S+)", ex.verifier)
        assert m
        return ECDSAVerifier.from_spki(key_name, m.group(1))
    return Verifier.from_vkey(ex.verifier.split()[0])


def test_examples_file_fully_loaded() -> None:
    assert len(EXAMPLES) == EXAMPLES_TEXT.count("=== BEGIN SIGNED NOTE ===") == 22
    assert sum(ex.status.startswith("VERIFIED") for ex in EXAMPLES) == 21


@pytest.mark.parametrize("ex", EXAMPLES, ids=[e.title[:60] for e in EXAMPLES])
def test_example_note_parses(ex: Example) -> None:
    parsed = parse_note(ex.note)
    assert parsed.text + "\n" + "".join(s.to_line() for s in parsed.signatures) == ex.note
    assert ex.note.startswith(parsed.text)
    if ex.remark.startswith("not a checkpoint"):
        with pytest.raises(CheckpointError):
            Checkpoint.parse(parsed.text)
        return
    cp = Checkpoint.parse(parsed.text)
    assert cp.to_text() == parsed.text
    assert cp.origin == parsed.text.split("\n", 1)[0]


@pytest.mark.parametrize(
    "ex", [e for e in EXAMPLES if e.status.startswith("VERIFIED")], ids=lambda e: e.title[:60]
)
def test_example_note_verifies(ex: Example) -> None:
    parsed = parse_note(ex.note)
    key_name = parsed.signatures[0].name
    verifier = example_verifier(ex, key_name)
    assert verifier.name == key_name
    assert verifier.key_id == parsed.signatures[0].key_id
    text, names = open_note(ex.note, [verifier])
    assert text == parsed.text
    assert names == [key_name]  # unknown-key witness lines are ignored, not reported
    # A verifier set without the signing key must reject the note.
    with pytest.raises(NoteError):
        open_note(ex.note, [])
    # Any change to the signed text must break the signature of the known key.
    tampered = ex.note.replace(text, text[:-2] + ("X" if text[-2] != "X" else "Y") + "\n", 1)
    with pytest.raises(NoteError):
        open_note(tampered, [verifier])


def test_unverifiable_example_is_rejected_without_key() -> None:
    (ex,) = [e for e in EXAMPLES if not e.status.startswith("VERIFIED")]
    with pytest.raises(NoteError):
        open_note(ex.note, [e_ver for e_ver in _tessera_verifiers()])
    cp = Checkpoint.parse(parse_note(ex.note).text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)


def test_witness_signatures_are_ignored() -> None:
    (ex,) = [e for e in EXAMPLES if "extra (unknown-key) witness" in e.title]
    parsed = parse_note(ex.note)
    assert [s.name for s in parsed.signatures] == ["sum.golang.org", "test.example.com", "test.example.com"]
    _, names = open_note(ex.note, [example_verifier(ex, "sum.golang.org")])
    assert names == ["sum.golang.org"]


def test_spec_example_key_id_recomputed() -> None:
    (ex,) = [e for e in EXAMPLES if e.title.startswith("C2SP signed-note spec example")]
    v = Verifier.from_vkey(ex.verifier.split()[0])
    assert v.key_id.hex() == "530d903a"
    assert v.vkey == ex.verifier.split()[0]
    # key id = SHA-256(name || 0x0A || 0x01 || pubkey)[:4]
    pub = base64.b64decode(v.vkey.split("+", 2)[2])[1:]
    assert hashlib.sha256(b"example.com/foo\n\x01" + pub).digest()[:4] == v.key_id


def test_rekor_ecdsa_key_id_is_spki_hash() -> None:
    (ex,) = [e for e in EXAMPLES if e.title.startswith("Rekor v1 public-good")]
    v = example_verifier(ex, "rekor.sigstore.dev")
    assert isinstance(v, ECDSAVerifier)
    assert hashlib.sha256(v.spki_der).hexdigest() == "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"
    assert Verifier.from_vkey(v.vkey).key_id == v.key_id


# ---------------------------------------------------------------------------
# Hashes, roots, stored nodes
# ---------------------------------------------------------------------------


def test_constants() -> None:
    assert MV["hash_algorithm"] == "SHA-256"
    assert EMPTY_ROOT.hex() == MV["empty_root"]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


def test_leaf_hashes() -> None:
    assert [leaf_hash(x).hex() for x in LEAVES] == MV["leaf_hashes"]
    assert [TREE8.leaf_hash_at(i).hex() for i in range(8)] == MV["leaf_hashes"]


def test_complete_subtree_node_hashes() -> None:
    by_level = MV["complete_subtree_node_hashes_by_level"]
    for level, row in by_level.items():
        for index, want in enumerate(row):
            assert TREE8.get_node(int(level), index).hex() == want
        with pytest.raises(KeyError):
            TREE8.get_node(int(level), len(row))
    assert TREE8.get_nodes([(3, 0), (0, 7)]) == [h(by_level["3"][0]), h(by_level["0"][7])]


@pytest.mark.parametrize("size", range(9))
def test_roots(size: int) -> None:
    want = MV["roots"][str(size)]
    lh = hs(MV["leaf_hashes"][:size])
    assert TREE8.root(size).hex() == want
    assert root(TREE8, size).hex() == want
    assert root_from_leaf_hashes(lh).hex() == want
    assert MemoryTree(lh).root().hex() == want
    assert CompactRange.from_reader(TREE8, size).root().hex() == want


@pytest.mark.parametrize("vec", MV["hasher_vectors"], ids=lambda v: v["desc"])
def test_hasher_vectors(vec: dict[str, str]) -> None:
    if "left_hex" in vec:
        got = node_hash(h(vec["left_hex"]), h(vec["right_hex"]))
    elif "leaf_input_hex" in vec:
        got = leaf_hash(h(vec["leaf_input_hex"]))
    else:
        got = root_from_leaf_hashes([])
    assert got.hex() == vec["expect"]


# ---------------------------------------------------------------------------
# Inclusion / consistency tables (generate from the 8 leaves, compare, verify)
# ---------------------------------------------------------------------------

INCLUSION = MV["inclusion"] + MV["derived_exhaustive_small"]["inclusion"]
CONSISTENCY = MV["consistency"] + MV["derived_exhaustive_small"]["consistency"]


def test_derived_tables_are_exhaustive() -> None:
    assert {(v["index"], v["size"]) for v in MV["derived_exhaustive_small"]["inclusion"]} == {
        (i, n) for n in range(1, 9) for i in range(n)
    }
    assert {(v["size1"], v["size2"]) for v in MV["derived_exhaustive_small"]["consistency"]} == {
        (m, n) for n in range(1, 9) for m in range(1, n + 1)
    }


@pytest.mark.parametrize("vec", INCLUSION, ids=lambda v: f"i{v['index']}-n{v['size']}")
def test_inclusion_table(vec: dict[str, Any]) -> None:
    index, size = vec["index"], vec["size"]
    proof = TREE8.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == vec["path"]
    lh = TREE8.leaf_hash_at(index)
    want_root = h(vec.get("root", MV["roots"][str(size)]))
    if "leaf_hash" in vec:
        assert lh == h(vec["leaf_hash"])
    verify_inclusion(lh, index, size, hs(vec["path"]), want_root)
    assert root_from_inclusion_proof(lh, index, size, hs(vec["path"])) == want_root


@pytest.mark.parametrize("vec", CONSISTENCY, ids=lambda v: f"m{v['size1']}-n{v['size2']}")
def test_consistency_table(vec: dict[str, Any]) -> None:
    size1, size2 = vec["size1"], vec["size2"]
    proof = TREE8.consistency_proof(size1, size2)
    assert [p.hex() for p in proof] == vec["proof"]
    root1 = h(vec.get("root1", MV["roots"][str(size1)]))
    root2 = h(vec.get("root2", MV["roots"][str(size2)]))
    assert root1 == TREE8.root(size1) and root2 == TREE8.root(size2)
    verify_consistency(size1, size2, hs(vec["proof"]), root1, root2)


# ---------------------------------------------------------------------------
# transparency-dev/merkle golden probes (positive and negative)
# ---------------------------------------------------------------------------

GOLDEN = MV["golden_probes"]


def test_golden_probe_counts() -> None:
    assert len(GOLDEN["inclusion"]) == 98 and len(GOLDEN["consistency"]) == 98
    assert sum(not p["want_error"] for p in GOLDEN["inclusion"] + GOLDEN["consistency"]) == 12


@pytest.mark.parametrize("probe", GOLDEN["inclusion"], ids=lambda p: p["file"].removeprefix("testdata/"))
def test_golden_inclusion(probe: dict[str, Any]) -> None:
    args = (h(probe["leaf_hash"]), probe["index"], probe["size"], hs(probe["path"]), h(probe["root"]))
    if probe["want_error"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("probe", GOLDEN["consistency"], ids=lambda p: p["file"].removeprefix("testdata/"))
def test_golden_consistency(probe: dict[str, Any]) -> None:
    args = (probe["size1"], probe["size2"], hs(probe["proof"]), h(probe["root1"]), h(probe["root2"]))
    if probe["want_error"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# ---------------------------------------------------------------------------
# Accumulated subtree vectors (draft-ietf-plants-merkle-tree-certs, tree D of 130 leaves)
# ---------------------------------------------------------------------------

ACC = MV["accumulated_subtree_vectors"]
D_SIZE = 130
D_LEAVES = [bytes([i]) for i in range(D_SIZE)]
D_TREE = MemoryTree.from_leaves(D_LEAVES)


@functools.lru_cache(maxsize=None)
def ref_mth(start: int, end: int) -> bytes:
    """Textbook recursive MTH(D[start:end]) (RFC 9162 §2.1.1), independent of shared.tlog's storage."""
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + D_LEAVES[start]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(start, start + k) + ref_mth(start + k, end)).digest()


def ref_path(m: int, start: int, end: int) -> list[bytes]:
    """PATH(m, D[start:end]) (RFC 9162 §2.1.3.1)."""
    n = end - start
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return ref_path(m, start, start + k) + [ref_mth(start + k, end)]
    return ref_path(m - k, start + k, end) + [ref_mth(start, start + k)]


def ref_subproof(start: int, end: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """Subtree [start, end) (relative to lo) consistency with D[lo:hi]: SUBPROOF generalised."""
    if start == 0 and end == hi - lo:
        return [] if b else [ref_mth(lo, hi)]
    k = 1 << ((hi - lo - 1).bit_length() - 1)
    if end <= k:
        return ref_subproof(start, end, lo, lo + k, b) + [ref_mth(lo + k, hi)]
    if start >= k:
        return ref_subproof(start - k, end - k, lo + k, hi, b) + [ref_mth(lo, lo + k)]
    assert start == 0
    return ref_subproof(0, end - k, lo + k, hi, False) + [ref_mth(lo, lo + k)]


def valid_subtree(start: int, end: int) -> bool:
    if start == 0 or start == end:
        return True
    return start % (1 << (end - start - 1).bit_length()) == 0


def proof_line(prefix: str, proof: list[bytes]) -> bytes:
    return (prefix + "".join(" " + p.hex() for p in proof) + "\n").encode()


def test_accumulated_subtree_hash() -> None:
    acc = hashlib.sha256()
    for end in range(D_SIZE + 1):
        for start in range(end + 1):
            if not valid_subtree(start, end):
                continue
            want = ref_mth(start, end)
            # Our storage-backed decomposition must agree with the textbook MTH for every valid subtree.
            assert fold_subtrees(D_TREE.get_nodes(subtree_keys(start, end))) == want
            acc.update(f"[{start}, {end}) {want.hex()}\n".encode())
    assert acc.hexdigest() == ACC["subtree_hash"]["sha256"]


def test_accumulated_subtree_inclusion() -> None:
    acc = hashlib.sha256()
    for end in range(D_SIZE + 1):
        for start in range(end + 1):
            if not valid_subtree(start, end):
                continue
            for index in range(start, end):
                proof = ref_path(index - start, start, end)
                if start == 0:  # exactly RFC 9162 inclusion proofs for every (index, size <= 130)
                    assert D_TREE.inclusion_proof(index, end) == proof
                    verify_inclusion(D_TREE.leaf_hash_at(index), index, end, proof, D_TREE.root(end))
                acc.update(proof_line(f"{index} [{start}, {end})", proof))
    assert acc.hexdigest() == ACC["subtree_inclusion"]["sha256"]


def test_accumulated_subtree_consistency() -> None:
    acc = hashlib.sha256()
    for n in range(D_SIZE + 1):
        for end in range(n + 1):
            for start in range(end + 1):
                if not valid_subtree(start, end):
                    continue
                proof = [] if start == end else ref_subproof(start, end, 0, n, True)
                if start == 0 and end > 0:  # exactly RFC 9162 PROOF(end, D[0:n])
                    assert D_TREE.consistency_proof(end, n) == proof
                    verify_consistency(end, n, proof, D_TREE.root(end), D_TREE.root(n))
                acc.update(proof_line(f"[{start}, {end}) {n}", proof))
    assert acc.hexdigest() == ACC["subtree_consistency"]["sha256"]


# ---------------------------------------------------------------------------
# Tessera test log: leaves, roots, tiles, signed checkpoints
# ---------------------------------------------------------------------------

TESSERA = MV["tessera_testdata_log"]
TESSERA_TREE = MemoryTree.from_leaves(hs(TESSERA["leaves_hex"]))


def _tessera_verifiers() -> list[Verifier]:
    return [Verifier.from_vkey(TESSERA["vkey"])]


def _tessera_notes() -> dict[int, str]:
    notes = {}
    for ex in EXAMPLES:
        m = re.fullmatch(r"Tessera testdata tiled log, checkpoint size (\d+)", ex.title)
        if m:
            assert ex.verifier.split()[0] == TESSERA["vkey"]
            notes[int(m.group(1))] = ex.note
    return notes


def test_tessera_leaves_and_roots() -> None:
    assert [x.encode("ascii").hex() for x in TESSERA["leaves_ascii"]] == TESSERA["leaves_hex"]
    assert [TESSERA_TREE.leaf_hash_at(i).hex() for i in range(TESSERA_TREE.size)] == TESSERA["leaf_hashes"]
    assert sorted(int(s) for s in TESSERA["roots"]) == list(range(16))
    for size, want in TESSERA["roots"].items():
        assert TESSERA_TREE.root(int(size)).hex() == want


def test_tessera_tiles() -> None:
    tile = TESSERA["tile_example"]
    width = int(tile["path"].rsplit(".p/", 1)[1])
    assert h(tile["hex"]) == b"".join(TESSERA_TREE.get_nodes([(0, i) for i in range(width)]))
    bundle = TESSERA["entry_bundle_example"]
    raw, entries = h(bundle["hex"]), []
    while raw:
        (length,) = struct.unpack(">H", raw[:2])
        entries.append(raw[2 : 2 + length])
        raw = raw[2 + length :]
    assert entries == hs(TESSERA["leaves_hex"][: int(bundle["path"].rsplit(".p/", 1)[1])])


def test_tessera_checkpoints_verify_and_match_tree() -> None:
    notes = _tessera_notes()
    assert sorted(notes) == list(range(16))
    cps: dict[int, Checkpoint] = {}
    for size, note in notes.items():
        cp, names = open_checkpoint(note, _tessera_verifiers(), origin=TESSERA["origin"])
        assert names == [TESSERA["origin"]]
        assert cp.size == size
        assert cp.root_hash.hex() == TESSERA["roots"][str(size)] == TESSERA_TREE.root(size).hex()
        assert cp.extensions == []
        cps[size] = cp
    # Our proofs link every pair of the log's own signed checkpoints.
    for m in range(1, 16):
        for n in range(m, 16):
            proof = TESSERA_TREE.consistency_proof(m, n)
            verify_consistency(m, n, proof, cps[m].root_hash, cps[n].root_hash)
        for i in range(m):
            proof = TESSERA_TREE.inclusion_proof(i, m)
            verify_inclusion(TESSERA_TREE.leaf_hash_at(i), i, m, proof, cps[m].root_hash)
    with pytest.raises(CheckpointError):
        open_checkpoint(notes[3], _tessera_verifiers(), origin="example.com/other")


# ---------------------------------------------------------------------------
# Real-world Rekor inclusion proofs
# ---------------------------------------------------------------------------

REAL = MV["real_world_inclusion"]


@pytest.mark.parametrize("vec", REAL, ids=lambda v: v["origin"])
def test_real_world_inclusion(vec: dict[str, Any]) -> None:
    lh, path, want = h(vec["leaf_hash"]), hs(vec["path"]), h(vec["root"])
    verify_inclusion(lh, vec["index"], vec["size"], path, want)
    # The bundled checkpoint commits to the same origin, size and root.
    cp = Checkpoint.parse(parse_note(vec["checkpoint"]).text)
    assert (cp.origin, cp.size, cp.root_hash) == (vec["origin"], vec["size"], want)
    # Negative: any single bit flip, a dropped or extra element, or a shifted index must fail.
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bytes([bad[i][0] ^ 0x80]) + bad[i][1:]
        with pytest.raises(ProofError):
            verify_inclusion(lh, vec["index"], vec["size"], bad, want)
    with pytest.raises(ProofError):
        verify_inclusion(lh, vec["index"], vec["size"], path[:-1], want)
    with pytest.raises(ProofError):
        verify_inclusion(lh, vec["index"], vec["size"], path + [path[-1]], want)
    with pytest.raises(ProofError):
        verify_inclusion(lh, vec["index"] - 1, vec["size"], path, want)


def test_real_world_checkpoint_signatures() -> None:
    rekor_v1 = next(e for e in EXAMPLES if e.title.startswith("Rekor v1 public-good"))
    v1 = example_verifier(rekor_v1, "rekor.sigstore.dev")
    assert REAL[0]["checkpoint"] == rekor_v1.note
    cp, names = open_checkpoint(REAL[0]["checkpoint"], [v1], origin=REAL[0]["origin"])
    assert names == ["rekor.sigstore.dev"] and cp.size == REAL[0]["size"]

    m = re.search(r"vkey (\S+)", REAL[1]["checkpoint_signature"])
    assert m
    cp, names = open_checkpoint(REAL[1]["checkpoint"], [Verifier.from_vkey(m.group(1))], origin=REAL[1]["origin"])
    assert names == [REAL[1]["origin"]] and cp.root_hash == h(REAL[1]["root"])

    # The staging Rekor v1 key is not given: parse only; no known key -> NoteError.
    assert "NOT verified" in REAL[2]["checkpoint_signature"]
    (sig,) = parse_note(REAL[2]["checkpoint"]).signatures
    assert sig.name == "rekor.sigstage.dev"
    with pytest.raises(NoteError):
        open_note(REAL[2]["checkpoint"], [v1])
