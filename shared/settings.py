"""Settings of every service, from the environment (pydantic-settings).

Names are the environment variables, upper-cased: ``DATABASE_URL``, ``NATS_URL``, ...
A service refuses development secrets when ``ENVIRONMENT`` is not ``development``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_RECIPIENT_TOKEN = "dev-broker-recipient-token"
DEV_TOKEN_ENCRYPTION_KEY = "cG9ydGFiaWxpdHktZGV2LWtleS1ub3Qtc2VjcmV0ISE="  # shared.crypto.DEV_KEY_B64
DEV_OAUTH_ISSUER = "https://portability-broker.example"  # the development issuer, refused outside development
DEV_RECEIPT_SIGNING_KEY = "cG9ydGFiaWxpdHktZGV2LXJlY2VpcHQta2V5LW5vdCE="  # base64 of an Ed25519 seed; development only
DEV_HOLDER_CLIENT_SECRET = "dev-broker-secret"  # the reference holder's development client secret


class Settings(BaseSettings):
    """Settings shared by the three services.

    ``database_url``: SQLAlchemy URL; ``None`` means a SQLite file ``<data_dir>/<service>.db``.
    A ``postgresql://`` URL is used with the asyncpg driver, and each service keeps its
    tables in its own PostgreSQL schema ``<db_schema_prefix><service>``.
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: str | None = None
    db_schema_prefix: str = ""
    nats_url: str = "nats://127.0.0.1:4222"
    # replicas of the JetStream streams and key-value buckets the services create (3 on a 3-node cluster)
    nats_stream_replicas: int = 1
    # how long the event streams (registry, consent, transfer events, dead letters) keep a message, and the
    # outbox tables an event already published, in days; 0 keeps them for ever (shared/bus.py ensure_streams)
    event_retention_days: float = Field(default=30.0, ge=0, le=3650, allow_inf_nan=False)
    # ---- NATS credentials and TLS (shared/natsauth.py; each service has its own user and subjects) ----
    # this process's NATS user and password: set by the launcher for its embedded server, from the
    # Secret "nats-passwords" in Kubernetes; none for a server without authentication (a local dev one)
    nats_user: str | None = None
    nats_password: str | None = None
    # or a NATS credentials file (user JWT and nkey seed; needs the nkeys package)
    nats_creds_file: Path | None = None
    # TLS: the CA bundle that signed the server's certificate (default: the system's), and a client
    # certificate and key when the server verifies clients; a tls:// NATS_URL needs TLS too
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # TLS before the server's first message (the server's tls { handshake_first: true })
    nats_tls_handshake_first: bool = False
    data_dir: Path = Path("var")
    http_host: str = "127.0.0.1"
    http_port: int = 0
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # bring the database to the latest migration at start (also the --migrate flag)
    migrate: bool = False
    # bearer token the broker presents to recipients' import endpoints
    broker_recipient_token: str = DEV_RECIPIENT_TOKEN
    # AES-256-GCM key (base64url, 32 bytes) sealing holder tokens at rest
    token_encryption_key: str = DEV_TOKEN_ENCRYPTION_KEY
    # longest consent a data holder may be asked for, in days
    consent_max_days: int = 365
    # transfer tuning
    transfer_page_limit: int = 500
    transfer_http_timeout_s: float = 30.0
    transfer_workers_in_process: int = 1
    transfer_fetch_timeout_s: float = 2.0
    transfer_ack_wait_s: float = 60.0
    transfer_max_failures: int = 10
    transfer_http_attempts: int = 5
    transfer_retry_initial_s: float = 0.2
    transfer_retry_max_s: float = 10.0
    nats_request_timeout_s: float = 5.0
    max_request_bytes: int = 1024 * 1024
    # consent log (RFC 9162 style, C2SP signed checkpoints): Ed25519 seed (base64, 32 bytes) signing the
    # checkpoints (the default is the development key, refused outside development), the log's origin
    # line and signer name, and the longest wait in seconds between an append and its checkpoint
    log_signing_key: str = "cG9ydGFiaWxpdHktZGV2LWxvZy1rZXktbm90LXNlYyE="
    log_origin: str = "portability-broker.example/consent-log"
    log_checkpoint_interval_s: float = 1.0
    # ---- the person's pages and the OAuth 2.0 client of the holders' authorization servers ----
    # the consent service's URL as people's browsers reach it (redirect_uri, links); default: the request's
    public_url: str | None = None
    # the broker's client at every holder's authorization server (RFC 6749 section 2.3.1: client_secret_basic);
    # per-holder overrides as JSON {"<holder id>": {"client_id": "...", "client_secret": "..."}}
    holder_client_id: str = "portability-broker"
    holder_client_secret: str = DEV_HOLDER_CLIENT_SECRET
    holder_clients: dict[str, dict[str, str]] = {}
    # a consent request whose person did not finish within this many seconds expires (counted as abandoned)
    consent_request_ttl_s: int = 600
    # how often the consent service sweeps expired consents, and retries notifications and token revocations
    consent_sweep_interval_s: float = 5.0
    # consent.check answers an authorised consent read within this many seconds without reading it again; every
    # change of a consent empties that cache (events from other replicas too); 0 reads the database every time; at most 5
    consent_check_cache_s: float = Field(default=1.0, ge=0, le=5)
    # the longest consent any holder may allow (a holder sets its own cap up to this, in the registry)
    consent_max_days_cap: int = 1095
    # the person's browser session on the broker's pages, in seconds; cookies are Secure outside development
    session_ttl_s: int = 8 * 3600
    # receipt signing key: Ed25519 seed (base64, 32 bytes); default: the development key
    receipt_signing_key: str | None = None
    # earlier receipt keys still served in the JWK Set (comma-separated base64 public keys, or a JSON JWK Set)
    receipt_retired_keys: str | None = None

    # ---- the broker as OAuth 2.0 authorization server of its own API (services/registry/oauth.py, shared/auth.py) ----
    # issuer identifier (RFC 8414 section 2; ``iss`` of the access tokens, RFC 9068 section 2.2): outside development,
    # the registry's public https base URL, under which /oauth/token and /.well-known/oauth-authorization-server are
    # reached (and what client assertions name as audience, RFC 7523 section 3)
    oauth_issuer: str = DEV_OAUTH_ISSUER
    # ``aud`` of the access tokens, which every service checks (RFC 9068 section 4); default: the issuer
    oauth_audience: str | None = None
    # private JWK (JSON) signing the access tokens: EC P-256 (ES256) or OKP Ed25519; default: the development key
    oauth_signing_key: str | None = None
    # lifetime of an access token, in seconds
    oauth_token_ttl_s: int = 300
    # the clients that are not participants (regulators, admins): a JSON list, or the path of a JSON file, of
    # {"client_id": ..., "role": "regulator" | "admin", "jwks": {...} | "jwks_uri": ...}; development mode adds
    # a development admin and regulator (shared.authclient.DEV_CLIENTS)
    oauth_clients: str | None = None

    # ---- personal clouds (services/transfer/adapters): secrets of recipients whose import_protocol is not the
    # broker's own, by recipient id, as JSON: {"<recipient id>": {"bearer": "<token>"}} (a Cozy's OAuth token,
    # a Solid pod's bearer token); a recipient without an entry gets no Authorization header (an open pod)
    recipient_credentials: dict[str, dict[str, str]] = {}

    @field_validator("event_retention_days")
    @classmethod
    def _a_day_or_more(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("EVENT_RETENTION_DAYS is 0 (keep for ever) or at least 1 day")
        return value

    @model_validator(mode="after")
    def _refuse_dev_secrets(self) -> Settings:
        if self.environment != "development" and self.broker_recipient_token == DEV_RECIPIENT_TOKEN:
            raise ValueError("BROKER_RECIPIENT_TOKEN must be set outside development mode")
        if self.environment != "development" and self.token_encryption_key == DEV_TOKEN_ENCRYPTION_KEY:
            raise ValueError("TOKEN_ENCRYPTION_KEY must be set outside development mode")
        if self.environment != "development" and self.log_signing_key == type(self).model_fields["log_signing_key"].default:
            raise ValueError("LOG_SIGNING_KEY must be set outside development mode")
        if self.environment != "development" and self.holder_client_secret == DEV_HOLDER_CLIENT_SECRET:
            raise ValueError("HOLDER_CLIENT_SECRET must be set outside development mode")
        if self.environment != "development" and self.receipt_signing_key in (None, "", DEV_RECEIPT_SIGNING_KEY):
            raise ValueError("RECEIPT_SIGNING_KEY must be set outside development mode")
        if self.environment != "development" and self.public_url and not self.public_url.startswith("https://"):
            raise ValueError("PUBLIC_URL must be https outside development mode")
        import base64

        if len(base64.b64decode(self.log_signing_key.encode("ascii"), validate=True)) != 32:
            raise ValueError("LOG_SIGNING_KEY must be the base64 of a 32-byte Ed25519 seed")
        return self

    @model_validator(mode="after")
    def _check_oauth(self) -> Settings:
        """The authorization server's settings; development keys and clients are refused outside development."""
        if not 30 <= self.oauth_token_ttl_s <= 3600:
            raise ValueError("OAUTH_TOKEN_TTL_S must be between 30 and 3600 seconds")
        if self.environment == "development":
            return self
        if self.oauth_issuer == DEV_OAUTH_ISSUER:
            raise ValueError("OAUTH_ISSUER must be set outside development mode")
        if not self.oauth_issuer.startswith("https://") or "?" in self.oauth_issuer or "#" in self.oauth_issuer:
            raise ValueError("OAUTH_ISSUER must be an https URL without query or fragment (RFC 8414 section 2)")
        if not self.oauth_signing_key:
            raise ValueError("OAUTH_SIGNING_KEY must be set outside development mode")
        import json

        from .authclient import is_dev_key  # only here: it pulls in authlib

        try:  # a private JWK, or a JWK Set whose first key signs; the registry checks it in full when it starts
            signing = json.loads(self.oauth_signing_key)
        except ValueError:
            signing = None  # an inert stand-in, in a process that does not sign (it only needs to be set)
        if isinstance(signing, dict) and any(is_dev_key(k) for k in (signing["keys"] if "keys" in signing else [signing])):
            raise ValueError("OAUTH_SIGNING_KEY must not be the development key outside development mode")
        if self.oauth_clients and self.oauth_clients.lstrip().startswith("["):
            for client in json.loads(self.oauth_clients):
                if any(is_dev_key(k) for k in ((client.get("jwks") or {}).get("keys") or [])):
                    raise ValueError(f"OAUTH_CLIENTS: {client.get('client_id')!r} uses a development key outside development mode")
        return self

    def database_url_for(self, service: str) -> str:
        """The async SQLAlchemy URL this service should use."""
        url = self.database_url
        if not url:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.db').resolve()}"
        for plain in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain):]
        if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://"):]
        return url

    def schema_for(self, service: str) -> str:
        return f"{self.db_schema_prefix}{service}"


def get_settings() -> Settings:
    return Settings()
