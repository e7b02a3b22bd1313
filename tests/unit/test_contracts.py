import json

from examples.contracts import HERE, documents


def test_committed_contracts_match_the_reference_apps() -> None:
    for name, doc in documents().items():
        committed = json.loads((HERE / name).read_text("utf-8"))
        assert committed == json.loads(json.dumps(doc)), f"{name} is stale: run `make contracts`"


def test_contracts_hold_only_the_contract_paths() -> None:
    docs = documents()
    assert set(docs["holder-export.openapi.json"]["paths"]) == {"/datasets/{dataset}/records"}
    assert set(docs["recipient-import.openapi.json"]["paths"]) == {
        "/transfers/{transfer_id}/batches/{n}", "/transfers/{transfer_id}/manifest"}
