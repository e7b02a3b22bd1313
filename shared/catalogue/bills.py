"""Bills in the ``io.cozy.bills`` shape.

Two sources:

1. a JSON list of bill-like documents ``[{type, date, vendor, amount}, ...]`` (the MesInfos
   pilot's ``factures_telephone.json``: SFR, Uber, vente-privee; *not* Orange);
2. a Cozy "ACH" import file (``{"<doctype>": [docs...]}``, e.g. the cozy-banks demo): only its
   ``io.cozy.bills`` documents are read. The other doctypes of the file (bank accounts and
   operations, files, groups, recurrences, recipients) are not bills and are not read.

One record per bill document, unchanged (fields of cozy-doctypes ``docs/io.cozy.bills.md`` plus
those seen in the files; an unknown field makes the record fail its schema rather than be dropped).

Quirks and decisions (``quirks()`` codes in brackets):

- ACH **Handlebars templates** left unexpanded (``"io.cozy.files:{{reference 'io.cozy.files' 0
  '_id' }}"``): kept verbatim, flagged [``unexpanded_template``] (the reference only means
  something inside the ACH import);
- **stub documents** (only ``_id``/``invoice``/``vendor``, no ``amount``/``date``): accepted (the
  schema requires neither), flagged [``incomplete_bill``];
- a **duplicated ``_id``** (``b0`` twice in the demo): both kept, flagged [``duplicate_id``];
- a **negative ``amount``** (vente-privée ``-78.35``; io.cozy.bills says "always positive, even for
  a refund"): kept, flagged [``negative_amount``];
- inconsistent ``type`` labels (``Mobile``, ``shop``, ``Taxi``, ``healthExpenses``,
  ``health_costs``): kept verbatim (accepted);
- JSON numbers are kept as numbers: ``48.50`` in the source is the number 48.5 (same value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _util as u

BILLS_ID = "cozy.bills"
ACH_BILLS_KEY = "io.cozy.bills"
_SIMPLE_KEYS = {"type", "date", "vendor", "amount"}

_DT = {"type": "string", "pattern": f"^{u.ISO_DATE}(T[0-9]{{2}}:[0-9]{{2}}(:[0-9]{{2}}(\\.[0-9]+)?)?{u.ISO_OFFSET}?)?$"}
_S = u.string
_FILE_REF = _S(512)

BILLS: dict[str, Any] = {
    "id": BILLS_ID,
    "version": 1,
    "title": "Bill (io.cozy.bills)",
    "description": "One record per bill document, unchanged: `type`, `subtype`, `date`, `vendor`, `amount`, "
    "`isRefund`, `originalAmount`, `originalDate`, `originalOperation`, `socialSecurityRefund`, "
    "`isThirdPartyPayer`, `invoice` (io.cozy.files reference), `_id`, `demo`... Read from a bill-like JSON list "
    "(MesInfos `factures_telephone.json`) or from the `io.cozy.bills` documents of a Cozy ACH file. "
    "Units: `amount`, `originalAmount`, `socialSecurityRefund`, `groupAmount` in EUR (the sources carry no "
    "currency; `currency` is kept when present). Time: `date` (bill emission or refund date) and `originalDate` "
    "(date of the original expense) are ISO 8601, UTC when they end in Z. "
    "Quirks: unexpanded ACH Handlebars templates are kept verbatim and flagged `unexpanded_template`; stub bills "
    "without amount/date are accepted and flagged `incomplete_bill`; a duplicated `_id` is kept and flagged "
    "`duplicate_id`; a negative amount (io.cozy.bills amounts are always positive) is kept and flagged "
    "`negative_amount`; `invalid_date` is flagged; inconsistent `type` labels are accepted verbatim.",
    "units": {"amount": "EUR", "originalAmount": "EUR", "socialSecurityRefund": "EUR", "groupAmount": "EUR"},
    "schema": u.record_schema(
        {
            "_id": _S(128), "_rev": _S(64), "type": _S(64), "subtype": _S(256), "date": _DT, "originalDate": _DT,
            "vendor": _S(128), "amount": {"type": "number"}, "originalAmount": {"type": "number"},
            "groupAmount": {"type": "number"}, "socialSecurityRefund": {"type": "number"}, "currency": _S(8),
            "isRefund": {"type": "boolean"}, "isThirdPartyPayer": {"type": "boolean"},
            "originalOperation": _S(256), "invoice": _FILE_REF, "invoices": {"type": "array", "items": _FILE_REF},
            "content": _S(4096), "filename": _S(512), "vendorRef": _S(128), "demo": {"type": "boolean"},
            "debitOperations": {"type": "array", "items": _S(256)}, "creditOperations": {"type": "array", "items": _S(256)},
        },
        minProperties=1,
    ),
}


def parse(doc: Any, path: Path) -> Any:
    """Records of a bill list or of the io.cozy.bills part of an ACH file, or ``None``."""
    from .registry import ParsedFile

    if isinstance(doc, dict) and isinstance(doc.get(ACH_BILLS_KEY), list) and all(k.startswith("io.cozy.") for k in doc):
        bills = doc[ACH_BILLS_KEY]
        if not all(isinstance(b, dict) for b in bills):
            return None
        return ParsedFile(dataset_id=BILLS_ID, subject_key="", records=list(bills))
    if (isinstance(doc, list) and doc and all(isinstance(b, dict) and set(b) <= _SIMPLE_KEYS and {"vendor", "amount"} <= set(b) for b in doc)):
        return ParsedFile(dataset_id=BILLS_ID, subject_key="", records=list(doc))
    return None


def _template_fields(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)] if "{{" in value and "}}" in value else []
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _template_fields(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [hit for k, v in enumerate(value) for hit in _template_fields(v, f"{path}.{k}")]
    return []


def _bills(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = u.invalid_dates(records, ["date", "originalDate"])
    seen: dict[Any, int] = {}
    for i, r in enumerate(records):
        for field, value in _template_fields(r, ""):
            out.append(u.quirk(i, "unexpanded_template", field, value, "ACH Handlebars template left unexpanded; kept verbatim"))
        missing = [k for k in ("amount", "date") if k not in r]
        if missing:
            out.append(u.quirk(i, "incomplete_bill", None, None, f"no {' and no '.join(missing)}; record kept as served"))
        amount = r.get("amount")
        if isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount < 0:
            out.append(u.quirk(i, "negative_amount", "amount", amount, "io.cozy.bills amounts are always positive; kept as served"))
        if "_id" in r:
            if r["_id"] in seen:
                out.append(u.quirk(i, "duplicate_id", "_id", r["_id"], f"_id already used at position {seen[r['_id']]}; both kept",
                                   related=[seen[r["_id"]]]))
            else:
                seen[r["_id"]] = i
    return out


QUIRK_CHECKS = {BILLS_ID: _bills}
