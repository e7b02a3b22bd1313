"""Unit tests for shared.tlog.note (C2SP signed-note) and shared.tlog.checkpoint (C2SP tlog-checkpoint)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.tlog import (
    Checkpoint,
    CheckpointError,
    ECDSAVerifier,
    MemoryTree,
    NoteError,
    Signer,
    TlogError,
    Verifier,
    open_checkpoint,
    open_note,
    parse_note,
    sign_note,
)
from shared.tlog.note import MAX_SIGNATURES, NoteSignature, key_id

SEED = bytes(range(32))
SIGNER = Signer.from_seed("example.com/log", SEED)
OTHER = Signer.from_seed("example.com/witness", bytes(32))
TEXT = "example.com/log\n3\n" + base64.b64encode(bytes(32)).decode() + "\n"


def test_error_hierarchy() -> None:
    assert issubclass(NoteError, TlogError) and issubclass(CheckpointError, TlogError)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def test_vkey_and_skey_roundtrip() -> None:
    v = Verifier.from_vkey(SIGNER.vkey)
    assert (v.name, v.key_id) == (SIGNER.name, SIGNER.key_id)
    assert v.vkey == SIGNER.vkey
    name, hex_id, b64 = SIGNER.vkey.split("+", 2)
    assert name == "example.com/log" and hex_id == SIGNER.key_id.hex()
    assert base64.b64decode(b64) == b"\x01" + SIGNER.public_key
    assert SIGNER.key_id == key_id(SIGNER.name, 1, SIGNER.public_key)
    again = Signer.from_skey(SIGNER.skey)
    assert again.vkey == SIGNER.vkey
    assert SIGNER.skey.startswith("PRIVATE+KEY+example.com/log+")


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "example.com/log",
        "example.com/log+00000000+" + base64.b64encode(b"\x01" + bytes(32)).decode(),  # wrong key id
        "example.com/log+ABCDEF01+AQ==",
        "bad name+" + "0" * 8 + "+AQ==",
        "name+0000000+AQ==",
        "name+00000000+not base64!",
        "name+00000000+" + base64.b64encode(b"\x09" + bytes(32)).decode(),  # unknown type
        "name+00000000+" + base64.b64encode(b"\x01" + bytes(31)).decode(),  # short key
    ],
)
def test_bad_vkeys(vkey: str) -> None:
    with pytest.raises(NoteError):
        Verifier.from_vkey(vkey)


def test_bad_skeys() -> None:
    with pytest.raises(NoteError):
        Signer.from_skey(SIGNER.skey.replace(SIGNER.key_id.hex(), "00000000"))
    with pytest.raises(NoteError):
        Signer.from_skey("PRIVATE+KEY+x")
    with pytest.raises(NoteError):
        Signer("bad+name", SIGNER._key)


def test_ecdsa_roundtrip() -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    der = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    v = ECDSAVerifier.from_spki("ecdsa.example", der)
    assert Verifier.from_vkey(v.vkey).key_id == v.key_id
    from cryptography.hazmat.primitives import hashes

    sig = priv.sign(TEXT.encode(), ec.ECDSA(hashes.SHA256()))
    note = TEXT + "\n" + NoteSignature("ecdsa.example", v.key_id, sig).to_line()
    assert open_note(note, [v]) == (TEXT, ["ecdsa.example"])
    pem = priv.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ECDSAVerifier.from_spki("ecdsa.example", pem.decode()).key_id == v.key_id
    with pytest.raises(NoteError):
        ECDSAVerifier("ecdsa.example", b"\x30\x00")


# ---------------------------------------------------------------------------
# Sign / open
# ---------------------------------------------------------------------------


def test_sign_open_roundtrip() -> None:
    note = sign_note(TEXT, SIGNER)
    assert note.startswith(TEXT + "\n\u2014 example.com/log ")
    assert open_note(note, [SIGNER.verifier()]) == (TEXT, ["example.com/log"])
    both = sign_note(TEXT, [SIGNER, OTHER])
    assert open_note(both, [SIGNER.verifier(), OTHER.verifier()]) == (TEXT, ["example.com/log", "example.com/witness"])
    assert open_note(both, [OTHER.verifier()]) == (TEXT, ["example.com/witness"])


def test_text_may_contain_blank_lines() -> None:
    text = "para one\n\npara two\n"
    note = sign_note(text, SIGNER)
    assert open_note(note, [SIGNER.verifier()])[0] == text


def test_unknown_keys_ignored_but_one_known_required() -> None:
    note = sign_note(TEXT, [OTHER, SIGNER])
    assert open_note(note, [SIGNER.verifier()])[1] == ["example.com/log"]
    with pytest.raises(NoteError, match="no valid signature"):
        open_note(sign_note(TEXT, OTHER), [SIGNER.verifier()])
    # Same name, different key (key id differs): ignored, not a failure.
    impostor = Signer.from_seed("example.com/log", bytes([7]) * 32)
    assert open_note(sign_note(TEXT, [impostor, SIGNER]), [SIGNER.verifier()])[1] == ["example.com/log"]


def test_known_key_bad_signature_rejects_note() -> None:
    note = sign_note(TEXT, [SIGNER, OTHER])
    forged = note.replace("\n3\n", "\n4\n")
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(forged, [SIGNER.verifier()])
    # Corrupt just the signature bytes of the known key.
    line = sign_note(TEXT, SIGNER).split("\n\n", 1)[1]
    sig = parse_note(TEXT + "\n" + line).signatures[0]
    bad = NoteSignature(sig.name, sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    with pytest.raises(NoteError):
        open_note(TEXT + "\n" + bad.to_line(), [SIGNER.verifier()])


def test_duplicate_signature_lines_counted_once() -> None:
    note = sign_note(TEXT, SIGNER)
    line = note.split("\n\n", 1)[1]
    assert open_note(note + line, [SIGNER.verifier()])[1] == ["example.com/log"]


def test_ambiguous_verifiers() -> None:
    with pytest.raises(NoteError):
        open_note(sign_note(TEXT, SIGNER), [SIGNER.verifier(), SIGNER.verifier()])


def _good_line() -> str:
    return sign_note(TEXT, SIGNER).split("\n\n", 1)[1]


@pytest.mark.parametrize(
    "note",
    [
        "",
        TEXT,  # no signatures
        TEXT + "\n",  # blank line, empty signature block
        TEXT + _good_line(),  # no blank line
        TEXT + "\n" + _good_line().rstrip("\n"),  # no final newline
        TEXT + "\n" + _good_line().replace("\u2014 ", "- ", 1),  # hyphen instead of em dash
        TEXT + "\n" + _good_line().replace("\u2014 ", "\u2014", 1),
        TEXT + "\n\u2014 example.com/log\n",  # no signature
        TEXT + "\n\u2014 example.com/log \n",
        TEXT + "\n\u2014 example.com/log AAAA\n",  # 3 bytes < 5
        TEXT + "\n\u2014 example.com/log AAAAAAA=\n",  # 5 bytes, wrong base64 length
        TEXT + "\n\u2014 example.com/log AAAAAAAA!\n",
        TEXT + "\n\u2014 bad+name AAAAAAAA\n",
        TEXT + "\n" + _good_line() + "garbage\n",
        TEXT + "\n" + _good_line() + "\n",  # trailing blank line makes the last block empty
        TEXT.replace("3", "3\r") + "\n" + _good_line(),  # control character
        TEXT.replace("3", "3\t") + "\n" + _good_line(),
        TEXT + "\n" + _good_line() * (MAX_SIGNATURES + 1),
    ],
)
def test_malformed_notes(note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, [SIGNER.verifier()])


def test_max_signatures_accepted() -> None:
    many = sign_note(TEXT, [SIGNER] + [Signer.from_seed(f"w{i}.example", bytes([i]) * 32) for i in range(15)])
    assert len(parse_note(many).signatures) == 16
    assert open_note(many, [SIGNER.verifier()])[1] == ["example.com/log"]


@pytest.mark.parametrize("text", ["", "no newline", "a\x01b\n", "\ud800\n"])
def test_sign_rejects_bad_text(text: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, SIGNER)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def test_checkpoint_roundtrip() -> None:
    tree = MemoryTree.from_leaves([b"a", b"b", b"c"])
    cp = Checkpoint("example.com/log", 3, tree.root(), ["ext one", "ext two"])
    text = cp.to_text()
    assert text == "example.com/log\n3\n" + base64.b64encode(tree.root()).decode() + "\next one\next two\n"
    assert Checkpoint.parse(text) == cp
    got, names = open_checkpoint(cp.sign(SIGNER), [SIGNER.verifier()], origin="example.com/log")
    assert got == cp and names == ["example.com/log"]
    with pytest.raises(CheckpointError):
        open_checkpoint(cp.sign(SIGNER), [SIGNER.verifier()], origin="example.com/other")
    empty = Checkpoint("o", 0, MemoryTree().root())
    assert Checkpoint.parse(empty.to_text()) == empty


ROOT_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "origin\n",
        "origin\n1\n",
        f"origin\n1\n{ROOT_B64}",  # no final newline
        f"\n1\n{ROOT_B64}\n",  # empty origin
        f"origin\n01\n{ROOT_B64}\n",  # leading zero
        f"origin\n+1\n{ROOT_B64}\n",
        f"origin\n 1\n{ROOT_B64}\n",
        f"origin\n-1\n{ROOT_B64}\n",
        f"origin\n1_0\n{ROOT_B64}\n",
        f"origin\n\uff11\n{ROOT_B64}\n",  # full-width digit
        f"origin\n{2**64}\n{ROOT_B64}\n",
        f"origin\n\n{ROOT_B64}\n",
        "origin\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "origin\n1\n" + base64.b64encode(bytes(33)).decode() + "\n",
        "origin\n1\n" + ROOT_B64.rstrip("=") + "\n",  # unpadded
        "origin\n1\n" + ROOT_B64[:-2] + "B=\n",  # non-canonical trailing bits
        "origin\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n",
        f"origin\n1\n{ROOT_B64}\n\n",  # empty extension line
        f"origin\n1\n{ROOT_B64}\next\n\n",
        f"ori\tgin\n1\n{ROOT_B64}\n",
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


def test_checkpoint_field_validation() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("", 1, bytes(32))
    with pytest.raises(CheckpointError):
        Checkpoint("o\nx", 1, bytes(32))
    with pytest.raises(CheckpointError):
        Checkpoint("o", -1, bytes(32))
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, bytes(31))
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, bytes(32), [""])
    assert Checkpoint.parse(f"origin\n{2**64 - 1}\n{ROOT_B64}\n").size == 2**64 - 1
