"""The person's pages: the consent screen, the OAuth 2.0 callback and the dashboard (server-rendered,
jinja2, English and French).

* ``GET /consent/{id}``: who receives what, from whom, why and for how long; Allow and Deny.
* ``POST /consent/{id}/decision``: Deny rejects; Allow starts the authorization code flow with PKCE S256
  (RFC 6749 section 4.1, RFC 7636) at the holder's authorization server.
* ``GET /oauth/callback``: checks the state (single use, 10 minutes, bound to the browser session that
  started the flow), exchanges the code, authorises the consent, issues its receipt.
* ``GET /me``: the person's consents (active and past) with the transfers made under each, and Revoke.
* ``GET /me/consents/{id}/revoke``: Revoke's confirmation page (what revoking does); "Yes, revoke" POSTs
  to the same path, which revokes.
* ``GET /me/login``: sign in to the dashboard through a data holder (the broker keeps no password).

Sessions: a random cookie (HttpOnly, SameSite=Lax, Secure and ``__Host-`` prefixed outside development)
whose SHA-256 is kept in ``web_sessions``; every form carries the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select

from shared import subjects
from shared.crypto import SecretBox
from shared.errors import BrokerError, Conflict, NotFound, Unavailable
from shared.runtime import Runtime

from . import holder_oauth, models, service
from .domain import check_transition
from .holder_oauth import HolderAuthError

log = logging.getLogger("consent.pages")
HERE = Path(__file__).parent
LANGS = {p.stem: json.loads(p.read_text("utf-8")) for p in sorted((HERE / "locales").glob("*.json"))}
DEFAULT_LANG = "en"
_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))

router = APIRouter(include_in_schema=False)
ANONYMOUS_SESSION_TTL_S = 1800
PENDING_REVOCATION_DELAY_S = 60.0  # fresh holder tokens are revoked after this unless the consent took them


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ---- language ---------------------------------------------------------------------------------------

def _lang(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get("lang")
    if asked in LANGS:
        return asked
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGS:
            return code
    return DEFAULT_LANG


def _translator(lang: str) -> Any:
    table = LANGS[lang]

    def t(key: str, **kw: Any) -> str:
        text = table.get(key) or LANGS[DEFAULT_LANG].get(key) or key
        return text.format(**kw) if kw else text

    return t


def _render(request: Request, template: str, status: int = 200, *, form_action: str = "'self'", **ctx: Any) -> HTMLResponse:
    """A page of ``template`` with headers that keep it out of frames and caches. ``form_action`` is the CSP
    ``form-action`` source list: only the broker itself, except on the consent screen, whose Allow ends at the
    holder's authorization server through a 303 redirect that browsers check against it too."""
    lang = _lang(request)
    ctx.setdefault("title", "")
    html = _env.get_template(template).render(lang=lang, t=_translator(lang), languages=[(k, v["lang_name"]) for k, v in LANGS.items()], **ctx)
    resp = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                                           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                           f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"})
    if request.query_params.get("lang") in LANGS:
        resp.set_cookie("lang", lang, max_age=365 * 86400, samesite="lax", httponly=True, secure=_secure(request))
    return resp


def _message(request: Request, status: int, title_key: str, message: str, *, link: str | None = None, link_text: str = "") -> HTMLResponse:
    t = _translator(_lang(request))
    return _render(request, "message.html", status, title=t(title_key), message=message, kind="error" if status >= 400 else "ok",
                   link=link, link_text=link_text)


# ---- sessions ----------------------------------------------------------------------------------------

def _secure(request: Request) -> bool:
    return _rt(request).settings.environment != "development"


def _cookie_name(request: Request) -> str:
    return "__Host-portability_session" if _secure(request) else "portability_session"


async def _session(request: Request) -> Any:
    sid = request.cookies.get(_cookie_name(request))
    if not sid:
        return None
    async with _rt(request).db.sessions() as s:
        row = (await s.execute(select(models.web_sessions).where(models.web_sessions.c.id_hash == _sha(sid)))).first()
    if row is None or service._aware(row.expires_at) <= datetime.now(UTC):
        return None
    return row


async def _ensure_session(request: Request, response: Response | None = None) -> tuple[Any, str | None]:
    """The browser's session, created if it has none: ``(row, new cookie value or None)``."""
    row = await _session(request)
    if row is not None:
        return row, None
    sid = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    # an anonymous session (a screen opened, nobody signed in yet) lives half an hour at most
    values = {"id_hash": _sha(sid), "identities": [], "csrf": secrets.token_urlsafe(24), "created_at": now,
              "expires_at": now + timedelta(seconds=min(ANONYMOUS_SESSION_TTL_S, _rt(request).settings.session_ttl_s))}
    async with _rt(request).db.unit_of_work() as s:
        await s.execute(models.web_sessions.delete().where(models.web_sessions.c.expires_at <= now))
        await s.execute(models.web_sessions.insert().values(**values))
    async with _rt(request).db.sessions() as s:
        row = (await s.execute(select(models.web_sessions).where(models.web_sessions.c.id_hash == values["id_hash"]))).one()
    return row, sid


def _set_cookie(request: Request, response: Response, sid: str | None) -> Response:
    if sid:
        response.set_cookie(_cookie_name(request), sid, max_age=_rt(request).settings.session_ttl_s, httponly=True, samesite="lax",
                            secure=_secure(request), path="/")
    return response


def _identities(session: Any) -> set[tuple[str, str]]:
    """The ``(holder id, customer id at that holder)`` pairs this browser proved by logging in at holders."""
    return {(str(h), str(sub)) for h, sub in (session.identities if session is not None else [])}


def _owns(session: Any, consent: dict[str, Any]) -> bool:
    """Is ``consent`` one of this browser's person's? Only the holder login proves it: the ``data_subject``
    a recipient wrote in its request proves nothing."""
    return consent.get("holder_subject") is not None and (consent["holder_id"], consent["holder_subject"]) in _identities(session)


async def _sign_in(request: Request, session: Any, identity: tuple[str, str]) -> str:
    """Add ``identity`` (holder id, customer id there) to the browser's session under a NEW session id and
    CSRF token (no session fixation): returns the new cookie value."""
    subjects_ = [list(x) for x in dict.fromkeys([*(tuple(i) for i in session.identities), identity])][-20:]
    sid = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    async with _rt(request).db.unit_of_work() as s:
        await s.execute(models.web_sessions.delete().where(models.web_sessions.c.id_hash == session.id_hash))
        await s.execute(models.web_sessions.insert().values(
            id_hash=_sha(sid), identities=subjects_, csrf=secrets.token_urlsafe(24), created_at=now,
            expires_at=now + timedelta(seconds=_rt(request).settings.session_ttl_s)))
    return sid


def _csrf_ok(session: Any, token: str) -> bool:
    return session is not None and hmac.compare_digest(str(session.csrf), token or "")


# ---- helpers -----------------------------------------------------------------------------------------

async def _participant(rt: Runtime, pid: str) -> dict[str, Any]:
    try:
        return await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": pid})
    except NotFound:
        return {"id": pid, "name": pid}


async def _name(rt: Runtime, pid: str) -> str:
    p = await _participant(rt, pid)
    return str(p.get("name") or pid)


async def _dataset_title(rt: Runtime, ds: str) -> str:
    try:
        d = await rt.require_bus().request(subjects.REGISTRY_DATASET_GET, {"dataset_id": ds})
        return str(d.get("title") or ds)
    except BrokerError:
        return ds


def _public_base(request: Request) -> str:
    return (_rt(request).settings.public_url or str(request.base_url)).rstrip("/")


def _callback_url(request: Request) -> str:
    return f"{_public_base(request)}/oauth/callback"


def _date(value: str | None, lang: str) -> str:
    if not value:
        return ""
    d = datetime.fromisoformat(value)
    return d.strftime("%d/%m/%Y") if lang == "fr" else d.strftime("%Y-%m-%d")


def _date_time(value: str | None, lang: str) -> str:
    if not value:
        return ""
    try:
        d = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return d.strftime("%d/%m/%Y %H:%M UTC") if lang == "fr" else d.strftime("%Y-%m-%d %H:%M UTC")


def _frequency_words(freq: str, lang: str) -> str:
    from shared.durations import duration_seconds

    secs = duration_seconds(freq)
    units = [(86400, ("day", "days"), ("jour", "jours")), (3600, ("hour", "hours"), ("heure", "heures")),
             (60, ("minute", "minutes"), ("minute", "minutes")), (1, ("second", "seconds"), ("seconde", "secondes"))]
    for size, en, fr in units:
        if secs % size == 0:
            n = secs // size
            words = fr if lang == "fr" else en
            return words[0] if n == 1 else f"{n} {words[1]}"
    return freq


# ---- the consent screen ------------------------------------------------------------------------------

@router.get("/consent/{consent_id}", response_class=HTMLResponse)
async def consent_screen(consent_id: str, request: Request) -> Response:
    rt = _rt(request)
    t = _translator(_lang(request))
    try:
        c = await service.get_consent(rt, consent_id=consent_id)
    except NotFound:
        return _message(request, 404, "error_title", t("not_found"))
    session, sid = await _ensure_session(request)
    if c["status"] != "requested":
        return _set_cookie(request, _message(request, 200, "title_screen", t("already", status=t(f"status_{c['status']}")),
                                             link="/me", link_text=t("dashboard")), sid)
    await service.set_flow_step(rt, consent_id=consent_id, step="screen")
    lang = _lang(request)
    holder_name, recipient_name = await _name(rt, c["holder_id"]), await _name(rt, c["recipient_id"])
    window = _window_words(c, lang, holder_name) or t("window_all", holder=holder_name)
    how_often = t("one_off") if c["one_off"] else t("recurring", frequency=_frequency_words(c["frequency"] or "P1D", lang))
    datasets = [{"id": ds, "title": await _dataset_title(rt, ds)} for ds in c["datasets"]]
    resp = _render(request, "screen.html", form_action="'self' *", title=t("title_screen"), consent=c, holder_name=holder_name, recipient_name=recipient_name,
                   datasets=datasets, window=window, how_often=how_often, expires=_date(c["expires_at"], lang), csrf=session.csrf)
    return _set_cookie(request, resp, sid)


@router.post("/consent/{consent_id}/decision", response_class=HTMLResponse)
async def consent_decision(consent_id: str, request: Request, action: str = Form(max_length=8), csrf: str = Form("", max_length=100)) -> Response:
    rt = _rt(request)
    t = _translator(_lang(request))
    session = await _session(request)
    if not _csrf_ok(session, csrf):
        return _message(request, 403, "error_title", t("csrf"), link=f"/consent/{consent_id}", link_text=t("title_screen"))
    try:
        c = await service.get_consent(rt, consent_id=consent_id)
    except NotFound:
        return _message(request, 404, "error_title", t("not_found"))
    holder_name, recipient_name = await _name(rt, c["holder_id"]), await _name(rt, c["recipient_id"])
    if c["status"] != "requested":
        return _message(request, 409, "title_screen", t("already", status=t(f"status_{c['status']}")), link="/me", link_text=t("dashboard"))
    if action == "deny":
        try:
            await service.reject(rt, consent_id=consent_id)
        except Conflict as exc:
            return _message(request, 409, "title_screen", t("already", status=t(f"status_{exc.extra.get('current_status')}")))
        return _message(request, 200, "denied_title", t("denied", recipient=recipient_name, holder=holder_name))
    if action != "allow":
        return _message(request, 400, "error_title", t("csrf"))
    holder = await _participant(rt, c["holder_id"])
    redirect_uri = _callback_url(request)
    try:
        url, state, verifier = await holder_oauth.authorization_url(rt.settings, holder, redirect_uri=redirect_uri, scope=c["datasets"],
                                                                    login_hint=c.get("holder_subject"), ui_locales=_lang(request))
    except BrokerError:
        return _message(request, 502, "error_title", t("holder_down", holder=holder_name), link=f"/consent/{consent_id}", link_text=t("title_screen"))
    await _start_flow(rt, kind="consent", state=state, verifier=verifier, holder_id=c["holder_id"], consent_id=consent_id,
                      session_hash=session.id_hash, redirect_uri=redirect_uri)
    await service.set_flow_step(rt, consent_id=consent_id, step="holder_login")
    return RedirectResponse(url, status_code=303)


async def _start_flow(rt: Runtime, *, kind: str, state: str, verifier: str, holder_id: str, consent_id: str | None,
                      session_hash: str, redirect_uri: str) -> None:
    box = SecretBox(rt.settings.token_encryption_key)
    now = datetime.now(UTC)
    async with rt.db.unit_of_work() as s:
        await s.execute(models.auth_flows.delete().where(models.auth_flows.c.created_at <= now - timedelta(days=1)))
        await s.execute(models.auth_flows.insert().values(
            state_hash=_sha(state), kind=kind, consent_id=consent_id, holder_id=holder_id, session_hash=session_hash,
            verifier_sealed=box.seal({"v": verifier}, aad=_sha(state)), redirect_uri=redirect_uri, created_at=now))


async def _take_flow(rt: Runtime, state: str, session: Any) -> tuple[Any, str] | None:
    """The flow of ``state`` if it is valid: unused (marked used now, atomically), younger than the request
    TTL, and started by this browser session. None otherwise (expired, replayed, forged)."""
    if not state or len(state) > 200:
        return None
    h = _sha(state)
    now = datetime.now(UTC)
    t = models.auth_flows
    async with rt.db.unit_of_work() as s:
        row = (await s.execute(select(t).where(t.c.state_hash == h))).first()
        if row is None or row.used_at is not None:
            return None
        # another browser replaying the callback must not spend the flow of the one that started it
        if session is None or not hmac.compare_digest(str(row.session_hash or ""), str(session.id_hash)):
            return None
        res = await s.execute(t.update().where(t.c.state_hash == h).where(t.c.used_at.is_(None)).values(used_at=now))
        if res.rowcount != 1:
            return None
    if service._aware(row.created_at) < now - timedelta(seconds=rt.settings.consent_request_ttl_s):
        return None
    verifier = SecretBox(rt.settings.token_encryption_key).open(row.verifier_sealed, aad=h)["v"]
    return row, verifier


@router.get("/oauth/callback", response_class=HTMLResponse)
async def oauth_callback(request: Request, state: str = Query("", max_length=200), code: str | None = Query(None, max_length=2048),
                         error: str | None = Query(None, max_length=100), error_description: str | None = Query(None, max_length=500),
                         iss: str | None = Query(None, max_length=500)) -> Response:
    """The holder's authorization server sends the person back here (RFC 6749 section 4.1.2)."""
    rt = _rt(request)
    t = _translator(_lang(request))
    session = await _session(request)
    taken = await _take_flow(rt, state, session)
    if taken is None:
        return _message(request, 400, "error_title", t("flow_invalid"))
    flow, verifier = taken
    holder = await _participant(rt, flow.holder_id)
    holder_name = str(holder.get("name") or flow.holder_id)
    back = f"/consent/{flow.consent_id}" if flow.consent_id else "/me"
    if error or not code:
        return _message(request, 400, "error_title", t("holder_refused", holder=holder_name, error=(error or "no code")[:100]),
                        link=back, link_text=t("title_screen"))
    if flow.consent_id:
        await service.set_flow_step(rt, consent_id=flow.consent_id, step="callback")
    try:
        meta = await holder_oauth.metadata(holder, development=rt.settings.environment == "development")
        holder_oauth.check_issuer_parameter(meta, iss)
        token = await holder_oauth.exchange_code(rt.settings, holder, code=code, redirect_uri=flow.redirect_uri, code_verifier=verifier)
    except HolderAuthError as exc:
        return _message(request, 400, "error_title", t("holder_refused", holder=holder_name, error=exc.error), link=back, link_text=t("title_screen"))
    except Unavailable:
        return _message(request, 502, "error_title", t("holder_down", holder=holder_name), link=back, link_text=t("title_screen"))
    # queued at once, so that a crash from here on cannot leave live tokens behind; authorise() takes it back
    pending = await service.queue_token_revocation(rt, consent_id=flow.consent_id or f"login:{flow.state_hash[:16]}",
                                                   holder_id=flow.holder_id, token=token, delay_s=PENDING_REVOCATION_DELAY_S)
    sub = str(token.get("sub") or "")[:128]
    if not sub:
        # without the holder saying who logged in, nobody could later see or revoke the consent on the dashboard
        return _message(request, 502, "error_title", t("holder_refused", holder=holder_name, error="no subject (sub) in the token response"),
                        link=back, link_text=t("title_screen"))
    if flow.kind == "login":  # the tokens only proved who logged in: they stay queued for revocation
        return _set_cookie(request, RedirectResponse("/me", status_code=303), await _sign_in(request, session, (flow.holder_id, sub)))
    assert flow.consent_id is not None
    c = await service.get_consent(rt, consent_id=flow.consent_id)
    try:
        c = await service.authorise(rt, consent_id=flow.consent_id, token=token, holder_subject=sub, pending_revocation=pending,
                                    receipt=await service.receipt_writer(rt, c, base_url=_public_base(request)))
    except Conflict as exc:
        # a second Allow that finished later, or a consent that changed meanwhile: the new token stays queued for revocation
        return _message(request, 409, "title_screen", t("already", status=t(f"status_{exc.extra.get('current_status')}")),
                        link="/me", link_text=t("dashboard"))
    sid = await _sign_in(request, session, (flow.holder_id, sub))
    try:
        await service.confirm_with_holder(rt, consent_id=c["id"])
    except BrokerError as exc:
        log.warning("holder check of consent %s failed: %s", c["id"], exc)
    return _set_cookie(request, RedirectResponse(f"/me?done={c['id']}", status_code=303), sid)


# ---- the dashboard -----------------------------------------------------------------------------------

@router.get("/me", response_class=HTMLResponse)
async def dashboard(request: Request, done: str | None = Query(None, max_length=64), revoked: str | None = Query(None, max_length=64)) -> Response:
    rt = _rt(request)
    t = _translator(_lang(request))
    lang = _lang(request)
    session, sid = await _ensure_session(request)
    if not session.identities:
        holders = [{"id": h, "name": await _name(rt, h)} for h in await service.known_holders(rt)]
        return _set_cookie(request, _render(request, "sign_in.html", title=t("sign_in"), holders=holders), sid)
    consents = await service.consents_of_identities(rt, identities=sorted(_identities(session)), limit=500)
    transfers = await service.transfers_by_consent(rt, consent_ids=[c["id"] for c in consents])
    with_receipt = await service.consents_with_receipt(rt, consent_ids=[c["id"] for c in consents])
    names: dict[str, str] = {}
    titles: dict[str, str] = {}
    for c in consents:
        for pid in (c["holder_id"], c["recipient_id"]):
            if pid not in names:
                names[pid] = await _name(rt, pid)
        for ds in c["datasets"]:
            if ds not in titles:
                titles[ds] = await _dataset_title(rt, ds)
        trs = transfers.get(c["id"], [])
        for tr in trs:
            if tr.get("dataset") and tr["dataset"] not in titles:
                titles[tr["dataset"]] = await _dataset_title(rt, tr["dataset"])
            tr.update(time_text=_date_time(tr.get("time"), lang), dataset_title=titles.get(tr.get("dataset") or "", tr.get("dataset")))
        c.update(holder_name=names[c["holder_id"]], recipient_name=names[c["recipient_id"]], dataset_titles=[titles[d] for d in c["datasets"]],
                 expires=_date(c["expires_at"], lang), transfers=trs, has_receipt=c["id"] in with_receipt,
                 window=(_window_words(c, lang, names[c["holder_id"]]) or "").rstrip(".") or None)
    active = [c for c in consents if c["status"] in ("authorised", "requested")]
    past = [c for c in consents if c["status"] not in ("authorised", "requested")]
    flash = None
    for cid, key in ((done, "authorised_ok"), (revoked, "revoked_ok")):
        match = next((c for c in consents if c["id"] == cid), None)
        if match:
            flash = t(key, recipient=match["recipient_name"], holder=match["holder_name"])
    resp = _render(request, "dashboard.html", title=t("dashboard"), sections=[("active", active), ("past", past)], csrf=session.csrf, flash=flash)
    return _set_cookie(request, resp, sid)


def _window_words(c: dict[str, Any], lang: str, holder_name: str) -> str | None:
    """The consent's data window in plain words ("From 2 January 2025 to 3 January 2025."), None without one."""
    t = _translator(lang)
    if c.get("data_from") and c.get("data_to"):
        return str(t("window_range", start=_date(c["data_from"], lang), end=_date(c["data_to"], lang)))
    if c.get("data_from"):
        return str(t("window_from", start=_date(c["data_from"], lang)))
    if c.get("data_to"):
        return str(t("window_to", end=_date(c["data_to"], lang)))
    return None


async def _own_consent(request: Request, session: Any, consent_id: str) -> dict[str, Any] | Response:
    """The consent ``consent_id`` if it is one of the session's identities', else the page to answer:
    404 unknown, 403 someone else's (the revoke routes' shared lookup)."""
    t = _translator(_lang(request))
    try:
        c = await service.get_consent(_rt(request), consent_id=consent_id)
    except NotFound:
        return _message(request, 404, "error_title", t("not_found"), link="/me", link_text=t("dashboard"))
    if not _owns(session, c):
        return _message(request, 403, "error_title", t("not_yours"), link="/me", link_text=t("dashboard"))
    return c


@router.get("/me/consents/{consent_id}/revoke", response_class=HTMLResponse)
async def dashboard_revoke_confirm(consent_id: str, request: Request) -> Response:
    """Revoke's confirmation page (no JavaScript needed): what revoking does, in plain words (the recipient
    and the holder named, the datasets; no more transfers; what was sent stays with the recipient, who must
    be asked to delete it), a "Yes, revoke" form that POSTs to this path with the session's CSRF token, and
    Cancel (back to ``/me``). Changes nothing: no session is created, the consent is only read.

    Checks what the POST checks, in the same order, with the same statuses: 403 without a signed-in session
    (where the POST checks the CSRF token: a browser that proved no identity at a holder is refused before
    any lookup, so consent ids cannot be probed), 404 unknown consent, 403 someone else's, 303 to
    ``/me?revoked={id}`` if it is already revoked (the POST is idempotent), 409 if it can no longer be
    revoked (rejected, expired, consumed, superseded, or still requested)."""
    rt = _rt(request)
    t = _translator(_lang(request))
    session = await _session(request)
    if session is None or not session.identities:
        return _message(request, 403, "error_title", t("signed_out"), link="/me", link_text=t("dashboard"))
    c = await _own_consent(request, session, consent_id)
    if isinstance(c, Response):
        return c
    if c["status"] == "revoked":
        return RedirectResponse(f"/me?revoked={c['id']}", status_code=303)
    try:
        check_transition(c["status"], "revoked", consent_id=c["id"])
    except Conflict:
        return _message(request, 409, "revoke_title", t("already", status=t(f"status_{c['status']}")), link="/me", link_text=t("dashboard"))
    return _render(request, "revoke.html", title=t("revoke_title"), consent=c, holder_name=await _name(rt, c["holder_id"]),
                   recipient_name=await _name(rt, c["recipient_id"]), dataset_titles=[await _dataset_title(rt, d) for d in c["datasets"]],
                   csrf=session.csrf)


@router.post("/me/consents/{consent_id}/revoke", response_class=HTMLResponse)
async def dashboard_revoke(consent_id: str, request: Request, csrf: str = Form("", max_length=100)) -> Response:
    """The confirmation page's "Yes, revoke" (and any form or client that POSTs here with the session's
    CSRF token): revokes at once, by the data subject, then back to ``/me?revoked={id}`` (303). 403 bad or
    missing CSRF token, 404 unknown consent, 403 someone else's, 409 not revocable; revoking a revoked
    consent changes nothing and answers like the first time."""
    rt = _rt(request)
    t = _translator(_lang(request))
    session = await _session(request)
    if not _csrf_ok(session, csrf):
        return _message(request, 403, "error_title", t("csrf"), link="/me", link_text=t("dashboard"))
    owned = await _own_consent(request, session, consent_id)
    if isinstance(owned, Response):
        return owned
    try:
        await service.revoke(rt, consent_id=consent_id, by="data_subject")
    except Conflict as exc:
        return _message(request, 409, "revoke_title", t("already", status=t(f"status_{exc.extra.get('current_status')}")),
                        link="/me", link_text=t("dashboard"))
    return RedirectResponse(f"/me?revoked={consent_id}", status_code=303)


@router.get("/me/consents/{consent_id}/receipt/proof")
async def dashboard_receipt_proof(consent_id: str, request: Request) -> Response:
    """The person's own receipt proof (JSON download; :mod:`shared.receiptproof`): their receipt, its entry in
    the consent log, the latest signed checkpoint and the inclusion proof. 403 for someone else's."""
    from fastapi.responses import JSONResponse

    from .app import receipt_proof_document

    t = _translator(_lang(request))
    c = await _own_consent(request, await _session(request), consent_id)
    if isinstance(c, Response):
        return c
    try:
        doc = await receipt_proof_document(request, consent_id)
    except NotFound:
        return _message(request, 404, "error_title", t("not_found"), link="/me", link_text=t("dashboard"))
    except Unavailable:
        return _message(request, 503, "error_title", t("proof_not_yet"), link=f"/me/consents/{consent_id}/receipt/proof",
                        link_text=t("try_again"))
    return JSONResponse(doc, headers={"Cache-Control": "no-store",
                                      "Content-Disposition": f'attachment; filename="receipt-proof-{consent_id}.json"'})


@router.get("/me/consents/{consent_id}/receipt")
async def dashboard_receipt(consent_id: str, request: Request) -> Response:
    """The person's own consent receipt: a page (or, with ``Accept: application/json``, the compact JWS and
    its payload); 403 for someone else's."""
    from fastapi.responses import JSONResponse

    rt = _rt(request)
    t = _translator(_lang(request))
    c = await _own_consent(request, await _session(request), consent_id)
    if isinstance(c, Response):
        return c
    try:
        rec = await service.get_receipt(rt, consent_id=consent_id)
    except NotFound:
        return _message(request, 404, "error_title", t("not_found"), link="/me", link_text=t("dashboard"))
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(rec, headers={"Cache-Control": "no-store"})
    issued = rec["payload"].get("iat")
    return _render(request, "receipt.html", title=t("receipt"), payload=rec["payload"], jws=rec["jws"], log_index=rec["log_index"],
                   consent=c, holder_name=await _name(rt, c["holder_id"]), recipient_name=await _name(rt, c["recipient_id"]),
                   dataset_titles=[await _dataset_title(rt, d) for d in c["datasets"]],
                   issued=_date_time(datetime.fromtimestamp(int(issued), UTC).isoformat(), _lang(request)) if issued else "")


@router.get("/me/login", response_class=HTMLResponse)
async def dashboard_login(request: Request, holder_id: str = Query(min_length=1, max_length=64)) -> Response:
    """Sign in to the dashboard through a data holder's authorization server (the holder proves who the
    person is; the consents whose ``holder_subject`` it names become visible)."""
    rt = _rt(request)
    t = _translator(_lang(request))
    session, sid = await _ensure_session(request)
    try:
        holder = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": holder_id})
    except NotFound:
        return _message(request, 404, "error_title", t("not_found"))
    redirect_uri = _callback_url(request)
    # only who the person is ("openid", when the holder's authorization server supports it); else a scope it knows
    # for sure: a dataset consents asked it for (the token is revoked at once, no data is read)
    try:
        meta = await holder_oauth.metadata(holder, development=rt.settings.environment == "development")
    except BrokerError:
        return _message(request, 502, "error_title", t("holder_down", holder=holder.get("name") or holder_id))
    if holder_oauth.IDENTITY_SCOPE in (meta.get("scopes_supported") or []):
        scope = [holder_oauth.IDENTITY_SCOPE]
    else:
        known = await service.a_dataset_of_holder(rt, holder_id=holder_id)
        scope = [known] if known else list(holder.get("datasets_offered") or [])[:1]
    try:
        url, state, verifier = await holder_oauth.authorization_url(rt.settings, holder, redirect_uri=redirect_uri, scope=scope,
                                                                    ui_locales=_lang(request))
    except BrokerError:
        return _message(request, 502, "error_title", t("holder_down", holder=holder.get("name") or holder_id))
    await _start_flow(rt, kind="login", state=state, verifier=verifier, holder_id=holder_id, consent_id=None,
                      session_hash=session.id_hash, redirect_uri=redirect_uri)
    return _set_cookie(request, RedirectResponse(url, status_code=303), sid)


@router.post("/me/logout", response_class=HTMLResponse)
async def dashboard_logout(request: Request, csrf: str = Form("", max_length=100)) -> Response:
    session = await _session(request)
    if not _csrf_ok(session, csrf):
        return _message(request, 403, "error_title", _translator(_lang(request))("csrf"))
    async with _rt(request).db.unit_of_work() as s:
        await s.execute(models.web_sessions.delete().where(models.web_sessions.c.id_hash == session.id_hash))
    resp = RedirectResponse("/me", status_code=303)
    resp.delete_cookie(_cookie_name(request), path="/", secure=_secure(request), httponly=True, samesite="lax")
    return resp
