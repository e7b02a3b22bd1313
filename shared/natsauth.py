"""Who may do what on NATS: one permission table per service, and the nats-server configuration made from it.

Each service connects with its own NATS user and may publish and subscribe only to the subjects of
:data:`ACCESS` below; the server refuses everything else ("Permissions Violation", logged by
:class:`shared.bus.Bus`). The same table configures

- the embedded nats-server of ``make run`` and the tests (:func:`server_config`, written by
  :mod:`shared.launcher` with random passwords at every start, mode 0600), and
- the Kubernetes NATS cluster (``deploy/k8s/base/config/nats-auth.conf``, made by
  ``python -m shared.natsauth k8s``; the passwords come from the Secret ``nats-passwords``).

Print the table with ``python -m shared.natsauth table``.

What a service may do, in NATS terms:

- **publish** to the JetStream subjects of its own events and jobs (through its outbox), to the
  request subjects it asks, to ``deadletter.<subject>`` for the subjects it serves or consumes, and
  to the JetStream API calls it makes: stream info (any broker stream), stream create (only the
  streams it owns, plus the shared ``DEAD_LETTER``), and create/info/next/ack of its own durable
  consumers only; the transfer service also uses its two key-value buckets;
- **subscribe** to the request subjects it answers, the event subjects it listens to without a
  consumer, and its own reply inbox ``_INBOX_<service>.>`` (so that no other service can read the
  answers it gets, such as holder access tokens); a service that answers requests has
  ``allow_responses`` (one reply per request, to the requester's inbox).

The ``admin`` user (the launcher, the tests, an operator) may do everything.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import subjects as s
from .subjects import StreamSpec

if TYPE_CHECKING:
    from .settings import Settings

SERVICES = ("registry", "consent", "transfer")
ADMIN = "admin"
USERS = (*SERVICES, ADMIN)

JS_API = "$JS.API"

# services/transfer/limits.py
HOLDER_SLOTS_BUCKET = "HOLDER_SLOTS"
HOLDER_RATE_BUCKET = "HOLDER_RATE"
# services/consent/log.py TRANSFER_ENDINGS: the consent service logs each transfer ending
TRANSFER_ENDINGS = ("completed", "partial", "failed", "cancelled")
# services/consent/notify.py: one consumer per notified party role
NOTIFIED_ROLES = ("holder", "recipient")
# shared/auth.py TokenVerifier (a service that checks the broker's access tokens): it asks the registry
# for the verification keys, and listens to revocations and participant status changes
TOKEN_VERIFIER_REQUESTS = (s.REGISTRY_OAUTH_JWKS,)
TOKEN_VERIFIER_LISTENS = (f"{s.REGISTRY_EVENTS}.oauth_token_revoked", f"{s.REGISTRY_EVENTS}.participant_status_changed")


def inbox_prefix(service: str) -> str:
    """The reply inbox prefix of a service's connection; only that service may subscribe under it."""
    return f"_INBOX_{service}"


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer a service creates (or updates) and reads."""

    stream: str
    durable: str
    filter_subject: str


@dataclass(frozen=True)
class Permissions:
    """A nats-server ``permissions`` map: publish allow, subscribe allow, allow_responses."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


@dataclass(frozen=True)
class ServiceAccess:
    """What one service does on NATS; :meth:`permissions` turns it into the server's terms."""

    name: str
    serves: tuple[str, ...] = ()  # request/reply subjects it answers (Bus.serve)
    requests: tuple[str, ...] = ()  # request/reply subjects it asks (Bus.request)
    publishes: tuple[str, ...] = ()  # JetStream subjects it publishes to (outbox relay, Bus.publish)
    listens: tuple[str, ...] = ()  # event subjects it subscribes to directly, without a consumer
    owns_streams: tuple[StreamSpec, ...] = ()  # the streams it creates
    consumers: tuple[Consumer, ...] = ()  # its durable pull consumers
    kv_buckets: tuple[str, ...] = ()  # key-value buckets it creates, reads and writes

    @property
    def dead_letter_subjects(self) -> tuple[str, ...]:
        """``deadletter.<subject>`` of every subject it serves or consumes (Bus.dead_letter)."""
        return tuple(s.dead_letter_subject(x) for x in (*self.serves, *(c.filter_subject for c in self.consumers)))

    def permissions(self) -> Permissions:
        pub: list[str] = [*self.publishes, *self.requests, *self.dead_letter_subjects]
        # ensure_streams (shared/bus.py) looks at every broker stream, and creates only its own and the
        # shared dead-letter stream
        pub += [f"{JS_API}.STREAM.INFO.{spec.name}" for spec in s.ALL_STREAMS]
        # ... or updates them when the retention setting changed
        pub += [f"{JS_API}.STREAM.{verb}.{spec.name}" for spec in (*self.owns_streams, s.STREAM_DEAD_LETTER)
                for verb in ("CREATE", "UPDATE")]
        for c in self.consumers:
            pub += [
                # create or update (shared/consumer.py ensure_consumer): nats-py uses one of these forms
                f"{JS_API}.CONSUMER.CREATE.{c.stream}.{c.durable}",
                f"{JS_API}.CONSUMER.CREATE.{c.stream}.{c.durable}.>",
                f"{JS_API}.CONSUMER.DURABLE.CREATE.{c.stream}.{c.durable}",
                f"{JS_API}.CONSUMER.INFO.{c.stream}.{c.durable}",
                f"{JS_API}.CONSUMER.MSG.NEXT.{c.stream}.{c.durable}",
                # ack, nak, term, in-progress of the messages it was given
                f"$JS.ACK.{c.stream}.{c.durable}.>",
            ]
        for bucket in self.kv_buckets:
            stream = f"KV_{bucket}"
            pub += [
                f"$KV.{bucket}.>",
                f"{JS_API}.STREAM.INFO.{stream}",
                f"{JS_API}.STREAM.CREATE.{stream}",
                f"{JS_API}.DIRECT.GET.{stream}",
                f"{JS_API}.DIRECT.GET.{stream}.>",
                f"{JS_API}.STREAM.MSG.GET.{stream}",
            ]
        sub = [*self.serves, *self.listens, f"{inbox_prefix(self.name)}.>"]
        return Permissions(publish=_unique(pub), subscribe=_unique(sub), allow_responses=bool(self.serves))


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


ACCESS: dict[str, ServiceAccess] = {
    "registry": ServiceAccess(
        "registry",
        serves=(s.REGISTRY_PARTICIPANT_GET, s.REGISTRY_DATASET_GET, s.REGISTRY_OAUTH_JWKS),
        publishes=(f"{s.REGISTRY_EVENTS}.>",),
        owns_streams=(s.STREAM_REGISTRY_EVENTS,),
    ),
    "consent": ServiceAccess(
        "consent",
        serves=(s.CONSENT_CHECK, s.CONSENT_TOKEN_GET),
        requests=(s.REGISTRY_PARTICIPANT_GET, s.REGISTRY_DATASET_GET, *TOKEN_VERIFIER_REQUESTS),
        publishes=(f"{s.CONSENT_EVENTS}.>",),
        # services/consent/handlers.py: every replica's consent.check cache forgets on any replica's change
        listens=(*TOKEN_VERIFIER_LISTENS, f"{s.CONSENT_EVENTS}.>"),
        owns_streams=(s.STREAM_CONSENT_EVENTS,),
        consumers=(
            # services/consent/handlers.py
            Consumer(s.STREAM_TRANSFER_EVENTS.name, "consent-transfer-completed", f"{s.TRANSFER_EVENTS}.completed"),
            *(Consumer(s.STREAM_TRANSFER_EVENTS.name, f"consent-log-transfer-{ending}", f"{s.TRANSFER_EVENTS}.{ending}")
              for ending in TRANSFER_ENDINGS if ending != "completed"),
            Consumer(s.STREAM_REGISTRY_EVENTS.name, "consent-registry-status", f"{s.REGISTRY_EVENTS}.participant_status_changed"),
            # services/consent/notify.py
            *(Consumer(s.STREAM_CONSENT_EVENTS.name, f"consent-notify-{role}", f"{s.CONSENT_EVENTS}.>") for role in NOTIFIED_ROLES),
        ),
    ),
    "transfer": ServiceAccess(
        "transfer",
        requests=(s.CONSENT_CHECK, s.CONSENT_TOKEN_GET, s.REGISTRY_PARTICIPANT_GET, s.REGISTRY_DATASET_GET, *TOKEN_VERIFIER_REQUESTS),
        publishes=(s.TRANSFER_JOBS, f"{s.TRANSFER_EVENTS}.>"),
        # services/transfer/worker.py Cancellations: revocations and suspensions reach running workers at once
        # (registry.events.> also covers the token verifier's subjects)
        listens=(f"{s.CONSENT_EVENTS}.>", f"{s.REGISTRY_EVENTS}.>"),
        owns_streams=(s.STREAM_TRANSFER_JOBS, s.STREAM_TRANSFER_EVENTS),
        consumers=(
            # services/transfer/worker.py (the work queue) and schedule.py (recurring consents)
            Consumer(s.STREAM_TRANSFER_JOBS.name, s.TRANSFER_WORKERS_DURABLE, s.TRANSFER_JOBS),
            Consumer(s.STREAM_CONSENT_EVENTS.name, "transfer-consent-events", f"{s.CONSENT_EVENTS}.>"),
        ),
        kv_buckets=(HOLDER_SLOTS_BUCKET, HOLDER_RATE_BUCKET),
    ),
}

ADMIN_PERMISSIONS = Permissions(publish=(">",), subscribe=(">",))


def permissions(user: str) -> Permissions:
    return ADMIN_PERMISSIONS if user == ADMIN else ACCESS[user].permissions()


def owned_streams(service: str) -> tuple[StreamSpec, ...]:
    """The streams ``service`` may create: its own and the shared dead-letter stream."""
    return (*ACCESS[service].owns_streams, s.STREAM_DEAD_LETTER)


# ---- the server's configuration --------------------------------------------------------------


def _q(value: str) -> str:
    """A quoted string of the nats-server configuration language."""
    return json.dumps(value)


def _list(items: tuple[str, ...], indent: str) -> str:
    inner = "".join(f"{indent}  {_q(i)}\n" for i in items)
    return f"[\n{inner}{indent}]"


def authorization_block(password: Callable[[str], str], users: tuple[str, ...] = USERS) -> str:
    """The ``authorization { users = [...] }`` block; ``password(user)`` gives the configuration
    token of each password: a quoted literal, or an unquoted ``$VARIABLE`` taken from the environment."""
    out = ["authorization {", "  users = ["]
    for user in users:
        p = permissions(user)
        ind = "        "
        out += [
            "    {",
            f"      user: {_q(user)}",
            f"      password: {password(user)}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(p.publish, ind)} }}",
            f"        subscribe: {{ allow: {_list(p.subscribe, ind)} }}",
        ]
        if p.allow_responses:
            out.append("        allow_responses: true")
        out += ["      }", "    }"]
    out += ["  ]", "}"]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ServerTls:
    """TLS of the server's client port: its certificate and key; with ``ca_file``, client
    certificates signed by it are verified (and required when ``verify``)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify: bool = False
    handshake_first: bool = False

    def block(self) -> str:
        lines = ["tls {", f"  cert_file: {_q(str(self.cert_file))}", f"  key_file: {_q(str(self.key_file))}"]
        if self.ca_file:
            lines.append(f"  ca_file: {_q(str(self.ca_file))}")
        if self.verify:
            lines.append("  verify: true")
        if self.handshake_first:
            lines.append("  handshake_first: true")
        lines.append("  timeout: 2")
        return "\n".join(lines) + "\n}\n"


def server_config(*, host: str, port: int, store_dir: Path, passwords: Mapping[str, str] | None,
                  tls: ServerTls | None = None) -> str:
    """The whole configuration of a single embedded nats-server with JetStream; with ``passwords``
    (user -> password, every user of :data:`USERS`), the permission table is enforced."""
    parts = [
        "# Written by shared/launcher.py from shared/natsauth.py at each start; the passwords change every time.",
        f"listen: {_q(f'{host}:{port}')}",
        f"jetstream {{\n  store_dir: {_q(str(store_dir))}\n}}",
    ]
    if passwords is not None:
        missing = set(USERS) - set(passwords)
        if missing:
            raise ValueError(f"no password for {sorted(missing)}")
        parts.append(authorization_block(lambda user: _q(passwords[user])))
    if tls is not None:
        parts.append(tls.block())
    return "\n".join(parts) + "\n"


def password_variable(user: str) -> str:
    """The environment variable holding ``user``'s password on the Kubernetes NATS pods."""
    return f"{user.upper()}_NATS_PASSWORD"


def k8s_auth_config() -> str:
    """``deploy/k8s/base/config/nats-auth.conf``, included by ``nats.conf``: the users with the
    permission table; each password is the environment variable :func:`password_variable`
    (``REGISTRY_NATS_PASSWORD``, ...), set from the Secret ``nats-passwords``."""
    head = (
        "# GENERATED from shared/natsauth.py: do not edit; regenerate with\n"
        "#   python -m shared.natsauth k8s > deploy/k8s/base/config/nats-auth.conf\n"
        "# (bash deploy/k8s/validate.sh fails when this file is stale).\n"
        "# One user per broker service, allowed only its own subjects; the passwords are environment\n"
        "# variables of the nats pods, from the Secret \"nats-passwords\" (see deploy/k8s/README.md).\n"
    )
    return head + authorization_block(lambda user: f"${password_variable(user)}")


# ---- the client side (shared/bus.py) ---------------------------------------------------------


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for NATS_TLS_CA / NATS_TLS_CERT / NATS_TLS_KEY; None when none is set."""
    ca, cert, key = settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key
    if not (ca or cert or key or settings.nats_tls_handshake_first):
        return None
    if bool(cert) != bool(key):
        raise ValueError("NATS_TLS_CERT and NATS_TLS_KEY go together (a client certificate and its key)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class ClientAuth:
    """How a service authenticates to NATS, from its settings."""

    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    tls: ssl.SSLContext | None = None
    tls_handshake_first: bool = False
    require_tls: bool = False


def dev_password(user: str) -> str:
    """The public development password of ``user`` (deploy/k8s/base/placeholders/nats-passwords.env)."""
    return f"dev-{user}-nats-password"


def client_auth(settings: Settings, url: str) -> ClientAuth:
    """NATS_USER/NATS_PASSWORD, NATS_CREDS_FILE and TLS from ``settings``; raises ValueError on a
    half-set pair, or a development password outside development. ``require_tls`` when TLS is
    configured or the URL is ``tls://``."""
    if bool(settings.nats_user) != bool(settings.nats_password):
        raise ValueError("NATS_USER and NATS_PASSWORD go together")
    if settings.environment != "development" and settings.nats_password in {dev_password(u) for u in USERS}:
        raise ValueError("NATS_PASSWORD must be set outside development mode (it is the public development one)")
    if settings.nats_creds_file and settings.nats_user:
        raise ValueError("set either NATS_CREDS_FILE or NATS_USER/NATS_PASSWORD, not both")
    ctx = tls_context(settings)
    return ClientAuth(
        user=settings.nats_user or None,
        password=settings.nats_password or None,
        creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
        tls=ctx,
        tls_handshake_first=bool(settings.nats_tls_handshake_first),
        require_tls=ctx is not None or url.startswith("tls://"),
    )


def redact_url(url: str) -> str:
    """``url`` without the password it may carry (``nats://user:secret@host`` -> ``nats://user:***@host``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ---- documentation -----------------------------------------------------------------------------


def table_markdown() -> str:
    rows = ["| user | publish (allow) | subscribe (allow) | allow_responses |", "|---|---|---|---|"]
    for user in USERS:
        p = permissions(user)
        rows.append(f"| `{user}` | {'<br>'.join(f'`{x}`' for x in p.publish)} | "
                    f"{'<br>'.join(f'`{x}`' for x in p.subscribe)} | {'yes' if p.allow_responses else 'no'} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args == ["k8s"]:
        sys.stdout.write(k8s_auth_config())
    elif args == ["table"]:
        sys.stdout.write(table_markdown())
    else:
        sys.stderr.write("usage: python -m shared.natsauth k8s|table\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
