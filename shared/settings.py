"""Settings of every service, from the environment (pydantic-settings).

Names are the environment variables, upper-cased: ``DATABASE_URL``, ``NATS_URL``, ...
A service refuses development secrets when ``ENVIRONMENT`` is not ``development``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_RECIPIENT_TOKEN = "dev-broker-recipient-token"
DEV_TOKEN_ENCRYPTION_KEY = "cG9ydGFiaWxpdHktZGV2LWtleS1ub3Qtc2VjcmV0ISE="  # shared.crypto.DEV_KEY_B64


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

    @model_validator(mode="after")
    def _refuse_dev_secrets(self) -> Settings:
        if self.environment != "development" and self.broker_recipient_token == DEV_RECIPIENT_TOKEN:
            raise ValueError("BROKER_RECIPIENT_TOKEN must be set outside development mode")
        if self.environment != "development" and self.token_encryption_key == DEV_TOKEN_ENCRYPTION_KEY:
            raise ValueError("TOKEN_ENCRYPTION_KEY must be set outside development mode")
        if self.environment != "development" and self.log_signing_key == type(self).model_fields["log_signing_key"].default:
            raise ValueError("LOG_SIGNING_KEY must be set outside development mode")
        import base64

        if len(base64.b64decode(self.log_signing_key.encode("ascii"), validate=True)) != 32:
            raise ValueError("LOG_SIGNING_KEY must be the base64 of a 32-byte Ed25519 seed")
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
