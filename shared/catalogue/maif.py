"""MAIF (insurer) data: the MesInfos pilot's ``fr.maif.maifuser.*`` documents and the EPA ``io.cozy.identities`` document.

The pilot API answered ``{"MesInfos": {contract, home, foyer, paymentTerms, insuranceClaim[], client}}``;
the konnector wrapped each part into a Cozy document. The files hold those documents:

=====================================  ==========================  =====================================
source (JSON list of wrappers)          dataset id                  one record per
=====================================  ==========================  =====================================
``[{"contrat": [...]}]``                ``maif.contract``           item of ``contrat`` (insured object)
``[{"home": [...]}]``                   ``maif.home``               item of ``home`` (insured dwelling)
``[{"foyer": {...}}]``                  ``maif.foyer``              ``foyer`` object (household + members)
``[{"societaire": {...}}]``             ``maif.societaire``         ``societaire`` object (the member)
``[{"paymentterms": {...}}]``           ``maif.payment_terms``      ``paymentterms`` object
``[{"docType": "InsuranceClaim"...}]``  ``maif.claim``              claim document (home or vehicle)
``{"contact": {"maif": ...}, ...}``     ``maif.identity``           the io.cozy.identities document
=====================================  ==========================  =====================================

Records are the inner objects, unchanged (the one-key wrapper is the konnector's envelope).

Quirks and decisions (``quirks()`` codes in brackets):

- claim ``address.postCode`` ``"6900"`` (4 digits, typo of 69006) is accepted, kept, and flagged
  [``invalid_postcode``]; the same check runs on every French address of these types;
- the IBAN ``FR76300039876087612`` is too short (fake): accepted, kept, flagged [``invalid_iban``]
  (length for the country and ISO 13616 mod-97 check);
- contract ``objects`` is an object although the MesInfos dictionary says a one-element list:
  both shapes are accepted by the schema;
- ``montantTarifTtc`` is ``226.74`` on one contract and ``312`` (integer) on the other: kept;
- the member number is ``"1234567"`` in contract/home/payment terms and ``"1234567N"`` in the
  claims and ``referenceClient``: kept as served, not reconciled;
- claim ``timestamp`` is local time without zone or seconds (``2015-07-20T19:00``): accepted;
- home ``patrimoineMobilier`` is "3 501 à 6 800 " + U+0080: the '€' was mis-decoded into the C1
  control character U+0080 (its Windows-1252 byte read as Latin-1). Kept verbatim (no
  "repair" to '€'), flagged [``control_character``, a check run on every dataset type];
- label strings keep their stray spaces (``"à  titre"``); empty
  ``birthplace`` objects are kept; ``codeEmployeur`` ``"A renseigner"`` (placeholder) is kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from . import _util as u

CONTRACT_ID = "maif.contract"
HOME_ID = "maif.home"
FOYER_ID = "maif.foyer"
SOCIETAIRE_ID = "maif.societaire"
PAYMENT_TERMS_ID = "maif.payment_terms"
CLAIM_ID = "maif.claim"
IDENTITY_ID = "maif.identity"

_S = u.string
_DATE = {"type": "string", "pattern": f"^{u.ISO_DATE}$", "format": "date"}
_LOCAL_TS = {"type": "string", "pattern": f"^{u.ISO_DATE}T[0-9]{{2}}:[0-9]{{2}}(:[0-9]{{2}})?$"}
_ADDRESS = u.obj({k: _S(256) for k in ("street", "postCode", "city", "country", "numeroPays", "deliveryOffice",
                                       "inseeCode", "residence")})
_NAME = u.obj({k: _S(128) for k in ("codeTitrePersonne", "prefix", "family", "given", "maiden")})
_PERSON = {
    "name": _NAME, "email": _S(256), "telMobile": _S(32), "birthdate": _DATE, "birthplace": {"type": "object"},
    "codeProfessionSocietaire": _S(16), "profession": _S(128),
}
_SOCIETAIRE_NO = _S(32)

_TIME_NONE = "Time: dates are calendar days (YYYY-MM-DD); date-times are local time without zone (YYYY-MM-DDTHH:MM:SS). "
_QUIRK_DOC = ("Quirks: values kept verbatim (stray spaces in labels, placeholders, member number '1234567' vs "
              "'1234567N' across files, not reconciled); `quirks()` flags `invalid_postcode` (French postcode not 5 "
              "digits, e.g. claim '6900': accepted and flagged), `invalid_iban` (accepted and flagged) and "
              "`invalid_date`.")


def _t(id_: str, title: str, description: str, units: dict[str, str], schema: dict[str, Any]) -> dict[str, Any]:
    return {"id": id_, "version": 1, "title": title, "description": description, "units": units, "schema": schema}


CONTRACT = _t(
    CONTRACT_ID, "MAIF insurance contract (MesInfos)",
    "One record per item of `contrat` in a `fr.maif.maifuser.contrat` document, unchanged: one insured object. "
    "`name` is the product code (NOR = home 'RAQVAM', VAM = car), `formuleBase` the formula, `societaire` the member "
    "number, `objects` the insured object (`lieu[].address` or `vehicule[].immatriculationVehicule`). "
    "Units: `montantTarifTtc` is the annual premium in EUR incl. tax. " + _TIME_NONE +
    "`startDate` is the contract start (local midnight). `objects` may be an object (as served) or a list (as the "
    "MesInfos dictionary says): both accepted. " + _QUIRK_DOC,
    {"montantTarifTtc": "EUR/year incl. tax"},
    u.record_schema({
        "name": _S(16), "formuleBase": _S(128), "montantTarifTtc": {"type": "number"}, "startDate": _LOCAL_TS,
        "societaire": _SOCIETAIRE_NO,
        "objects": {"anyOf": [{"$ref": "#/$defs/objects"}, {"type": "array", "items": {"$ref": "#/$defs/objects"}}]},
    }, ["name", "societaire"], **{"$defs": {"objects": u.obj({
        "startDate": _LOCAL_TS,
        "lieu": {"type": "array", "items": u.obj({"address": _ADDRESS})},
        "vehicule": {"type": "array", "items": u.obj({"immatriculationVehicule": _S(32)})},
    })}}),
)

HOME = _t(
    HOME_ID, "MAIF insured home (MesInfos)",
    "One record per item of `home` in a `fr.maif.maifuser.home` document, unchanged: the insured dwelling, as MAIF "
    "code/label pairs (`codeNatureLieuRisque`/`natureLieu`, `codeJuridique`/`situationJuridiqueLieu`, "
    "`codePieceLieuRisque`/`nombrePieces`, `codeTrancheMobilier`/`patrimoineMobilier`). Units: "
    "`patrimoineMobilier` is a band of furniture value in EUR, as a French label ('3 501 à 6 800 €'). Time: none "
    "(no time field). " + _QUIRK_DOC + " In the MesInfos sample the '€' of `patrimoineMobilier` is the mis-decoded "
    "control character U+0080: kept verbatim and flagged `control_character`.",
    {"patrimoineMobilier": "EUR (band label)"},
    u.record_schema({
        "address": _ADDRESS, "codeJuridique": _S(16), "codeNatureLieuRisque": _S(16), "codePieceLieuRisque": _S(16),
        "codeTrancheMobilier": _S(16), "natureLieu": _S(128), "nombrePieces": _S(128), "patrimoineMobilier": _S(128),
        "situationJuridiqueLieu": _S(128), "societaire": _SOCIETAIRE_NO,
    }, ["address", "societaire"]),
)

FOYER = _t(
    FOYER_ID, "MAIF household (MesInfos foyer)",
    "One record per `foyer` object of a `fr.maif.maifuser.foyer` document, unchanged: the household `name` (MAIF "
    "household id), its `address` (with `inseeCode`, `deliveryOffice`) and `membres[]` (name, email, telMobile, "
    "birthdate, profession, `codeQualitePersonne`/`quality`). Units: none. " + _TIME_NONE + _QUIRK_DOC,
    {},
    u.record_schema({
        "name": _S(64), "address": _ADDRESS,
        "membres": {"type": "array", "items": u.obj({**_PERSON, "codeQualitePersonne": _S(16), "quality": _S(128)})},
    }, ["name", "membres"]),
)

SOCIETAIRE = _t(
    SOCIETAIRE_ID, "MAIF member (MesInfos sociétaire)",
    "One record per `societaire` object of a `fr.maif.maifuser.societaire` document, unchanged: the member's name, "
    "email, phone, birthdate, profession, family situation code/label (`codeSituationFamiliale`/`familySituation`), "
    "`codeActif` and `referenceClient` (member number). Units: none. " + _TIME_NONE + _QUIRK_DOC,
    {},
    u.record_schema({**_PERSON, "codeSituationFamiliale": _S(16), "familySituation": _S(128), "codeActif": _S(64),
                     "referenceClient": _SOCIETAIRE_NO}, ["name", "referenceClient"]),
)

PAYMENT_TERMS = _t(
    PAYMENT_TERMS_ID, "MAIF payment terms (MesInfos)",
    "One record per `paymentterms` object of a `fr.maif.maifuser.paymentterms` document, unchanged: the bank "
    "details `rib{bic, iban}`, the payment mode label `modePaiement` ('Prélèvement (1 fois)' = one direct debit a "
    "year) and the member number `societaire`. Units: none (no amount). Time: none. " + _QUIRK_DOC,
    {},
    u.record_schema({
        "rib": u.obj({"bic": {"type": "string", "pattern": "^[A-Z0-9]{8}([A-Z0-9]{3})?$"},
                      "iban": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}$"}}, ["iban"]),
        "modePaiement": _S(128), "societaire": _SOCIETAIRE_NO,
    }, ["rib", "societaire"]),
)

CLAIM = _t(
    CLAIM_ID, "MAIF insurance claim (MesInfos sinistre, home or vehicle)",
    "One record per claim document (`docType` 'InsuranceClaim', stored in Cozy as `fr.maif.maifuser.sinistre`), "
    "unchanged. `type` 'Habitation' (home: `natureLieu`, `address`) or 'Vehicule' (car: `immatriculationVehicule`, "
    "`driver`); common: `societaire`, `ref` (claim reference), `lieuSurvenance`, `typeLieuSurvenance`. Units: none "
    "(no amount). Time: `timestamp` is the time of the event, French local time without zone or seconds "
    "('2015-07-20T19:00'), accepted as served. " + _QUIRK_DOC,
    {},
    u.record_schema({
        "docType": {"const": "InsuranceClaim"}, "docTypeVersion": _S(64), "type": {"enum": ["Habitation", "Vehicule"]},
        "societaire": _SOCIETAIRE_NO, "timestamp": _LOCAL_TS, "lieuSurvenance": _S(128), "ref": _S(64),
        "typeLieuSurvenance": _S(128), "natureLieu": _S(128), "address": _ADDRESS,
        "immatriculationVehicule": _S(32), "driver": _NAME,
    }, ["docType", "type", "societaire", "timestamp", "ref"],
        allOf=[{"if": {"properties": {"type": {"const": "Vehicule"}}}, "then": {"required": ["immatriculationVehicule"]}}]),
)

_STR_LIST = lambda key: {"type": "array", "items": u.obj({key: _S(256)}, [key], additional=True)}  # noqa: E731
IDENTITY = _t(
    IDENTITY_ID, "MAIF member identity (io.cozy.identities, MAIF EPA konnector)",
    "One record per `io.cozy.identities` document written by the MAIF 'EPA' konnector, unchanged: `identifier`, "
    "`contact{fullname, name{familyName, givenName}, birthday, email[], address[], phone[], maif{codeCivilite, "
    "identifiant, numeroSocietaire, codeSexe, profession{...}, ...}}` and `cozyMetadata`. Units: none. Time: "
    "`contact.birthday` is a calendar day (YYYY-MM-DD); `cozyMetadata` dates are ISO 8601 UTC. " + _QUIRK_DOC,
    {},
    u.record_schema({
        "_id": _S(64), "_rev": _S(64), "identifier": _S(256), "cozyMetadata": {"type": "object"},
        "contact": u.obj({
            "fullname": _S(256), "name": u.obj({"familyName": _S(128), "givenName": _S(128)}, additional=True),
            "birthday": _DATE, "email": _STR_LIST("address"),
            "address": {"type": "array", "items": u.obj({k: _S(256) for k in ("street", "postcode", "city", "country")},
                                                        additional=True)},
            "phone": _STR_LIST("number"),
            "maif": u.obj({"numeroSocietaire": _SOCIETAIRE_NO}, ["numeroSocietaire"], additional=True),
        }, ["maif"], additional=True),
    }, ["contact"]),
)

_WRAPPED = {"contrat": CONTRACT_ID, "home": HOME_ID}
_SINGLE = {"foyer": FOYER_ID, "societaire": SOCIETAIRE_ID, "paymentterms": PAYMENT_TERMS_ID}


def parse(doc: Any, path: Path) -> Any:
    """Records of a MAIF document file, or ``None`` if ``doc`` is not one."""
    from .registry import ParsedFile

    if isinstance(doc, dict) and isinstance(doc.get("contact"), dict) and isinstance(doc["contact"].get("maif"), dict):
        return ParsedFile(dataset_id=IDENTITY_ID, subject_key=str(doc["contact"]["maif"].get("numeroSocietaire", "")), records=[doc])
    if not isinstance(doc, list) or not doc or not all(isinstance(x, dict) for x in doc):
        return None
    if all(x.get("docType") == "InsuranceClaim" for x in doc):
        dataset_id, records = CLAIM_ID, list(doc)
    elif all(len(x) == 1 for x in doc) and len({next(iter(x)) for x in doc}) == 1:
        key = next(iter(doc[0]))
        if key in _WRAPPED and all(isinstance(x[key], list) for x in doc):
            dataset_id, records = _WRAPPED[key], [item for x in doc for item in x[key]]
        elif key in _SINGLE and all(isinstance(x[key], dict) for x in doc):
            dataset_id, records = _SINGLE[key], [x[key] for x in doc]
        else:
            return None
    else:
        return None
    subject_field = {FOYER_ID: "name", SOCIETAIRE_ID: "referenceClient"}.get(dataset_id, "societaire")
    subjects = {r.get(subject_field) for r in records if isinstance(r, dict)}
    return ParsedFile(dataset_id=dataset_id, subject_key=str(subjects.pop()) if len(subjects) == 1 else "", records=records)


# -- quirks --------------------------------------------------------------------------------------

_IBAN_LENGTHS = {"FR": 27, "MC": 27, "DE": 22, "BE": 16, "ES": 24, "IT": 27, "LU": 20, "CH": 21, "GB": 22, "NL": 18, "PT": 25}


def iban_problem(iban: str) -> str | None:
    """Why ``iban`` is not a valid IBAN (length for its country, mod-97), or ``None``."""
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]+", s):
        return "not an IBAN spelling"
    expected = _IBAN_LENGTHS.get(s[:2])
    if expected is not None and len(s) != expected:
        return f"{len(s)} characters, {s[:2]} IBANs have {expected}"
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    if int(digits) % 97 != 1:
        return "mod-97 check digits do not match"
    return None


def _addresses(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(record.get("address"), dict):
        out.append(("address", record["address"]))
    objects = record.get("objects")
    for k, obj in enumerate(objects if isinstance(objects, list) else [objects] if isinstance(objects, dict) else []):
        prefix = "objects" if isinstance(objects, dict) else f"objects.{k}"
        for j, lieu in enumerate(obj.get("lieu") or [] if isinstance(obj, dict) else []):
            if isinstance(lieu, dict) and isinstance(lieu.get("address"), dict):
                out.append((f"{prefix}.lieu.{j}.address", lieu["address"]))
    contact = record.get("contact")
    if isinstance(contact, dict):
        for j, a in enumerate(contact.get("address") or []):
            if isinstance(a, dict):
                out.append((f"contact.address.{j}", a))
    return out


def _checks(date_fields: list[str]) -> Any:
    def check(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = u.invalid_dates(records, date_fields)
        for i, r in enumerate(records):
            for where, addr in _addresses(r):
                country = str(addr.get("country", "FRANCE")).upper()
                for key in ("postCode", "postcode"):
                    pc = addr.get(key)
                    if isinstance(pc, str) and country in ("FRANCE", "FR") and not re.fullmatch(r"[0-9]{5}", pc):
                        out.append(u.quirk(i, "invalid_postcode", f"{where}.{key}", pc,
                                           "a French postcode has 5 digits; kept as served, not corrected"))
            iban = u.get_path(r, "rib.iban")
            if isinstance(iban, str) and (why := iban_problem(iban)):
                out.append(u.quirk(i, "invalid_iban", "rib.iban", iban, f"invalid IBAN ({why}); kept as served"))
        return out
    return check


QUIRK_CHECKS = {
    CONTRACT_ID: _checks(["startDate", "objects.startDate"]),
    HOME_ID: _checks([]),
    FOYER_ID: _checks([]),
    SOCIETAIRE_ID: _checks(["birthdate"]),
    PAYMENT_TERMS_ID: _checks([]),
    CLAIM_ID: _checks(["timestamp"]),
    IDENTITY_ID: _checks(["contact.birthday"]),
}
