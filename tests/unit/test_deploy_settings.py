"""The Kubernetes manifests (deploy/k8s) set every setting the services read.

Each field of :class:`shared.settings.Settings` is an environment variable (its name upper-cased).
A field is either listed in :data:`SAFE_DEFAULTS`, with the reason its default is right in a
cluster, or it must be set in the manifests for every process that needs it (:data:`ONLY_FOR`
narrows that to some processes). A new field fails :func:`test_every_setting_is_classified` until
someone decides. The checks run on:

* the kustomize files themselves, read as plain YAML by :func:`render_files` (no kubectl): the base
  and both overlays, with their ConfigMap and Secret generators. Overlays change settings through
  generators only, so the patches they carry (resources, replicas, NetworkPolicies) are not needed;
* the real rendering, ``kubectl kustomize``, when a kubectl with kustomize v4+ is on PATH or in
  ``.venv/bin`` (``bash deploy/k8s/validate.sh`` installs one); skipped otherwise, with the reason.

The production overlay reads its Secrets from files that are never committed: both renderings use
a temporary copy of deploy/k8s with throw-away random ones, as validate.sh does.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.authclient import generate_keypair
from shared.settings import DEV_OAUTH_ISSUER, Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read deploy/k8s: add pyyaml to the test extras of pyproject.toml")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"

APIS = ("registry", "consent", "transfer")
PROCESSES = (*APIS, "transfer-worker")  # the Deployments of the broker, one container each
PACKAGE_OF = {"registry": "registry", "consent": "consent", "transfer": "transfer", "transfer-worker": "transfer"}

# Settings whose default is right in the cluster, so that the manifests need not set them.
SAFE_DEFAULTS: dict[str, str] = {
    "http_host": "the APIs get --host 0.0.0.0 on their command line (test_api_command_lines); the worker serves no HTTP",
    "http_port": "the APIs get --port 8080 on their command line (test_api_command_lines); the worker serves no HTTP",
    "db_schema_prefix": "empty gives the schemas registry, consent, transfer; only two installations sharing one database need one",
    "migrate": "each API pod migrates in its init container `migrate` (--migrate-only, test_migrations_run_before_serving); "
               "the serving processes and the workers only check the revision",
    "consent_max_days": "a business rule of the broker (365 days), not a property of the deployment",
    "transfer_page_limit": "tuning with a tested default (500 records a page)",
    "transfer_http_timeout_s": "tuning with a tested default (30 s per holder or recipient call)",
    "transfer_fetch_timeout_s": "tuning with a tested default (2 s per JetStream pull)",
    "transfer_ack_wait_s": "tuning with a tested default (60 s before a silent worker's job moves on)",
    "transfer_max_failures": "tuning with a tested default (10 failed deliveries)",
    "transfer_http_attempts": "tuning with a tested default (5 tries per call)",
    "transfer_retry_initial_s": "tuning with a tested default (0.2 s first backoff)",
    "transfer_retry_max_s": "tuning with a tested default (10 s longest backoff)",
    "nats_request_timeout_s": "tuning with a tested default (5 s per NATS request)",
    "max_request_bytes": "tuning with a tested default (1 MiB request bodies)",
    "log_checkpoint_interval_s": "tuning with a tested default (1 s between an append and its checkpoint)",
    "nats_creds_file": "the services log in with NATS_USER/NATS_PASSWORD (Secret nats-passwords); a creds file is for an operator/JWT NATS",
    "nats_tls_ca": "TLS to NATS is off inside the cluster by default; deploy/k8s/README.md (NATS: users, permissions and TLS) turns it on",
    "nats_tls_cert": "no client certificate unless the NATS server verifies clients (deploy/k8s/README.md, TLS)",
    "nats_tls_key": "no client certificate unless the NATS server verifies clients (deploy/k8s/README.md, TLS)",
    "nats_tls_handshake_first": "only with the server's tls { handshake_first: true } (deploy/k8s/README.md, TLS)",
    "consent_request_ttl_s": "a business rule of the broker (600 s for a person to finish a consent request)",
    "consent_sweep_interval_s": "tuning with a tested default (5 s between sweeps of expired consents and retries)",
    "consent_check_cache_s": "tuning with a tested default (1 s at most between a consent's change on another replica and "
                             "consent.check; its own changes empty the cache at once)",
    "consent_max_days_cap": "a business rule of the broker (1095 days, the ceiling of every holder's own cap), "
                            "not a property of the deployment",
    "session_ttl_s": "a business rule of the broker (8 h browser sessions on the consent pages)",
    "receipt_retired_keys": "none until the first rotation of RECEIPT_SIGNING_KEY; deploy/k8s/README.md "
                            "(Rotate the secrets) adds the old public key to consent-config then",
    "oauth_audience": "the issuer (OAUTH_ISSUER, broker-config): one value every process agrees on; "
                      "set it in broker-config only for an audience other than the registry's URL",
    "oauth_token_ttl_s": "tuning with a tested default (300 s access tokens); every process caps the lifetime "
                         "it accepts with it, so an override belongs in broker-config",
}

# Settings that only some processes read; every other setting not in SAFE_DEFAULTS is needed by
# all of them (the secrets too: shared.settings refuses their development values in every
# process in production, whether the process uses them or not; OAUTH_ISSUER likewise).
ONLY_FOR: dict[str, set[str]] = {
    "log_origin": {"consent"},
    "transfer_workers_in_process": {"transfer"},
    "public_url": {"consent"},  # the consent pages' public URL (consent-config)
    "holder_client_id": {"consent"},  # the broker's client at the holders' authorization servers (consent-config)
    "oauth_clients": {"registry"},  # the admins and regulators of the authorization server (registry-config)
}

# Settings whose value is secret: the processes that use the real value get it from a Secret; the
# others get an inert stand-in from the ConfigMap "secret-standins" (never the real Secret), which
# every broker container reads whole by envFrom (its env, from the Secret, wins for what it uses).
SECRET_USERS: dict[str, set[str]] = {
    "database_url": set(PROCESSES),
    "nats_password": set(PROCESSES),  # each process its own service's key of the Secret nats-passwords
    "broker_recipient_token": {"transfer-worker"},
    "token_encryption_key": {"consent"},
    "log_signing_key": {"consent"},
    # personal clouds' tokens (a Cozy's, a Solid pod's), by recipient id: only the workers deliver to recipients
    "recipient_credentials": {"transfer-worker"},
    "holder_client_secret": {"consent"},  # the consent service alone talks to the holders' authorization servers
    "holder_clients": {"consent"},  # per-holder client secrets ({} when none)
    "receipt_signing_key": {"consent"},  # signs the consent receipts and security events
    "oauth_signing_key": {"registry"},  # signs the access tokens; the other processes get a non-JSON stand-in
}
STANDINS = "secret-standins"

# Values the deployment pins.
PINNED: dict[str, dict[str, str]] = {p: {"NATS_URL": "nats://nats:4222"} for p in PROCESSES}  # the Service of nats.yaml
PINNED["transfer"]["TRANSFER_WORKERS_IN_PROCESS"] = "0"  # its workers run apart (transfer-worker)

# Environment variables the manifests may set that are not Settings fields.
EXTRA_ENV_PREFIXES = ("OTEL_",)

FIELDS = tuple(Settings.model_fields)


def env_name(field: str) -> str:
    return field.upper()


def needed_by(field: str) -> set[str]:
    return set() if field in SAFE_DEFAULTS else ONLY_FOR.get(field, set(PROCESSES))


# ---- reading the manifests ---------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize ``envs`` file: KEY=VALUE lines, # comments, blank lines."""
    out: dict[str, str] = {}
    for line in path.read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        out[key.strip()] = value
    return out


def _generated(kind: str, spec: dict[str, Any], where: Path) -> dict[str, Any]:
    data: dict[str, str] = {}
    for env_file in spec.get("envs", []):
        data.update(read_env_file(where / env_file))
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for entry in spec.get("files", []):
        key, _, file = entry.rpartition("=")
        data[key or Path(file).name] = (where / file).read_text("utf-8")
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}, "data": data}


def render_files(directory: Path) -> list[dict[str, Any]]:
    """Objects of a kustomization read from its files: resources (files or directories) and the
    ConfigMap/Secret generators with their behaviours (create, merge, replace). Names carry no hash
    suffix and Secret data stays plain text. Patches, images and replicas are left out."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text("utf-8"))
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        target = (directory / res).resolve()
        docs.extend(render_files(target) if target.is_dir() else load_docs(target))
    for key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in k.get(key, []):
            new = _generated(kind, spec, directory)
            behavior = spec.get("behavior", "create")
            old = next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == spec["name"]), None)
            if behavior == "create":
                assert old is None, f"{directory}: {kind} {spec['name']} generated twice"
                docs.append(new)
            else:
                assert old is not None, f"{directory}: {behavior} of a missing {kind} {spec['name']}"
                old["data"] = {**old["data"], **new["data"]} if behavior == "merge" else new["data"]
    return docs


def kubectl() -> str | None:
    """A kubectl whose built-in kustomize is v4 or later."""
    for candidate in (shutil.which("kubectl"), str(REPO / ".venv" / "bin" / "kubectl")):
        if not candidate or not Path(candidate).exists():
            continue
        try:
            out = subprocess.run([candidate, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"Kustomize Version: v?(\d+)", out)
        if m and int(m.group(1)) >= 4:
            return candidate
    return None


def render_kubectl(directory: Path) -> list[dict[str, Any]]:
    binary = kubectl()
    if binary is None:
        pytest.skip("no kubectl with kustomize v4+ on PATH or in .venv/bin (bash deploy/k8s/validate.sh installs one); "
                    "the same checks ran on the kustomize files")
    done = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    for d in docs:
        if d["kind"] == "Secret":
            d["data"] = {k: base64.b64decode(v).decode("utf-8") for k, v in (d.get("data") or {}).items()}
            d["data"].update(d.pop("stringData", None) or {})
    return docs


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s copied, with throw-away random production secret files (never the real ones)."""
    copy = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, copy)
    out = copy / "overlays" / "production" / "secrets"
    for old in out.glob("*.env"):
        old.unlink()
    (out / "broker-secrets.env").write_text(
        f"BROKER_RECIPIENT_TOKEN={secrets.token_urlsafe(32)}\n"
        f"TOKEN_ENCRYPTION_KEY={base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}\n"
        f"LOG_SIGNING_KEY={base64.b64encode(secrets.token_bytes(32)).decode()}\n"
        f"HOLDER_CLIENT_SECRET={secrets.token_urlsafe(32)}\n"
        f"HOLDER_CLIENTS={json.dumps({'holder-x': {'client_id': 'broker', 'client_secret': secrets.token_urlsafe(16)}})}\n"
        f"RECEIPT_SIGNING_KEY={base64.b64encode(secrets.token_bytes(32)).decode()}\n"
        f"OAUTH_SIGNING_KEY={json.dumps(generate_keypair('ES256')[0], separators=(',', ':'))}\n"
        f"RECIPIENT_CREDENTIALS={json.dumps({'cozy-x': {'bearer': secrets.token_urlsafe(32)}})}\n")
    for s in ("registry", "consent", "transfer"):
        (out / f"{s}-database.env").write_text(f"DATABASE_URL=postgresql://{s}:{secrets.token_hex(8)}@db.test.invalid:5432/{s}\n")
    (out / "nats-passwords.env").write_text("".join(f"{u}_NATS_PASSWORD=n{secrets.token_hex(32)}\n"
                                                    for u in ("REGISTRY", "CONSENT", "TRANSFER", "ADMIN")))
    return copy


@dataclass(frozen=True)
class Source:
    kind: str  # "ConfigMap", "Secret" or "value"
    name: str  # object name, without a kustomize hash suffix
    value: str


def base_name(name: str, kind: str) -> str:
    """The name before kustomize's hash suffix (``broker-config-9644htfbf5`` -> ``broker-config``)."""
    m = re.fullmatch(r"(.+)-[a-z0-9]{10}", name)
    return m.group(1) if m and kind in ("ConfigMap", "Secret") else name


def _object(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"{kind} {name} is referenced but not defined"
    return found[0]


def container_env(docs: list[dict[str, Any]], deployment: str) -> dict[str, Source]:
    """The environment of the Deployment's container, as Kubernetes builds it: envFrom in order,
    then env (which wins)."""
    dep = _object(docs, "Deployment", deployment)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env: dict[str, Source] = {}
    for ref in container.get("envFrom", []):
        kind, key = ("ConfigMap", "configMapRef") if "configMapRef" in ref else ("Secret", "secretRef")
        obj = _object(docs, kind, ref[key]["name"])
        for k, v in (obj.get("data") or {}).items():
            env[k] = Source(kind, base_name(ref[key]["name"], kind), str(v))
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = Source("value", "", str(e["value"]))
            continue
        vf = e["valueFrom"]
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in vf:
                obj = _object(docs, kind, vf[key]["name"])
                assert vf[key]["key"] in (obj.get("data") or {}), f"{deployment}: {kind} {vf[key]['name']} has no key {vf[key]['key']}"
                env[e["name"]] = Source(kind, base_name(vf[key]["name"], kind), str(obj["data"][vf[key]["key"]]))
    return env


# ---- the renderings ----------------------------------------------------------------------------

Render = Callable[[Path], list[dict[str, Any]]]
RENDERINGS = [
    pytest.param("base", render_files, id="files-base"),
    pytest.param("dev", render_files, id="files-dev"),
    pytest.param("production", render_files, id="files-production"),
    pytest.param("dev", render_kubectl, id="kubectl-dev"),
    pytest.param("production", render_kubectl, id="kubectl-production"),
]
EXPECTED_ENVIRONMENT = {"base": "production", "dev": "development", "production": "production"}


@pytest.fixture(scope="module")
def rendered(k8s_copy: Path) -> Callable[[str, Render], list[dict[str, Any]]]:
    cache: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def get(target: str, render: Render) -> list[dict[str, Any]]:
        key = (target, render.__name__)
        if key not in cache:
            cache[key] = render(k8s_copy / ("base" if target == "base" else f"overlays/{target}"))
        return cache[key]

    return get


# ---- tests ---------------------------------------------------------------------------------------


def test_every_setting_is_classified() -> None:
    stale = sorted((set(SAFE_DEFAULTS) | set(ONLY_FOR) | set(SECRET_USERS)) - set(FIELDS))
    assert not stale, f"listed here but no longer a field of shared.settings.Settings: {stale}"
    both = sorted(set(SAFE_DEFAULTS) & (set(ONLY_FOR) | set(SECRET_USERS)))
    assert not both, f"both safe by default and required: {both}"
    assert all(reason.strip() for reason in SAFE_DEFAULTS.values())


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_needed_settings_are_set(target: str, render: Render, rendered: Any) -> None:
    docs = rendered(target, render)
    missing = []
    for process in PROCESSES:
        env = container_env(docs, process)
        for field in FIELDS:
            if process in needed_by(field) and (env_name(field) not in env or env[env_name(field)].value == ""):
                missing.append(f"{process}: {env_name(field)}")
    assert not missing, (
        "settings the services read but the manifests do not set (set them in deploy/k8s/base/config/*.env "
        f"or a Secret, or list them in SAFE_DEFAULTS with the reason): {missing}")


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_manifests_set_only_real_settings(target: str, render: Render, rendered: Any) -> None:
    """A renamed or misspelt setting would be ignored by the services: catch it here."""
    docs = rendered(target, render)
    known = {env_name(f) for f in FIELDS}
    unknown = sorted({f"{p}: {k}" for p in PROCESSES for k in container_env(docs, p)
                      if k not in known and not k.startswith(EXTRA_ENV_PREFIXES)})
    assert not unknown, f"environment variables that no field of shared.settings.Settings reads: {unknown}"


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_pinned_values_and_environment(target: str, render: Render, rendered: Any) -> None:
    docs = rendered(target, render)
    for process in PROCESSES:
        env = container_env(docs, process)
        assert env["ENVIRONMENT"].value == EXPECTED_ENVIRONMENT[target], process
        for key, value in PINNED[process].items():
            assert env[key].value == value, f"{process}: {key}"


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_secrets_only_where_used(target: str, render: Render, rendered: Any) -> None:
    docs = rendered(target, render)
    for field, users in SECRET_USERS.items():
        name = env_name(field)
        for process in PROCESSES:
            src = container_env(docs, process)[name]
            if process in users:
                assert src.kind == "Secret", f"{process}: {name} must come from a Secret, not {src}"
            else:
                assert (src.kind, src.name) == ("ConfigMap", STANDINS), f"{process} does not use {name}: it gets the stand-in, not {src}"
    for d in docs:  # no secret value in a ConfigMap, other than the stand-ins
        if d["kind"] == "ConfigMap" and base_name(d["metadata"]["name"], "ConfigMap") != STANDINS:
            leaked = sorted(set(d.get("data") or {}) & {env_name(f) for f in SECRET_USERS})
            assert not leaked, f"ConfigMap {d['metadata']['name']} carries secrets: {leaked}"


def test_secret_users_match_the_code() -> None:
    """A service that starts reading a secret must get the real one, not the stand-in."""
    for field, users in SECRET_USERS.items():
        if field in ("database_url", "nats_password"):  # every process has its own
            continue
        for package in ("registry", "consent", "transfer"):
            text = "\n".join(p.read_text("utf-8") for p in (REPO / "services" / package).rglob("*.py"))
            if re.search(rf"\b{field}\b", text):
                owners = {p for p, pkg in PACKAGE_OF.items() if pkg == package}
                assert owners & users, f"services/{package} reads {field}: give the real Secret to one of {sorted(owners)}"
        shared_code = [p for p in (REPO / "shared").rglob("*.py") if p.name != "settings.py" and re.search(rf"\b{field}\b", p.read_text("utf-8"))]
        assert not shared_code, f"{field} is read by shared code {shared_code}: every process may then need the real value"


def _settings_from(env: dict[str, Source], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as m:
        for field in FIELDS:
            m.delenv(env_name(field), raising=False)
        for key, src in env.items():
            m.setenv(key, src.value)
        return Settings()


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_services_start_with_these_settings(target: str, render: Render, rendered: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() accepts each process's environment in dev and production; the base alone, with
    ENVIRONMENT=production, the development issuer and development secrets, is refused by every
    process, and still by every process that uses a secret once it names an issuer."""
    docs = rendered(target, render)
    for process in PROCESSES:
        env = container_env(docs, process)
        # (a development NATS password is refused when the Bus connects, not by Settings: shared/natsauth.py)
        uses_dev_secret = any(process in users for f, users in SECRET_USERS.items() if f not in ("database_url", "nats_password"))
        if target == "base":
            assert env["OAUTH_ISSUER"].value == DEV_OAUTH_ISSUER, process
            with pytest.raises(ValueError, match="must be set outside development mode"):
                _settings_from(env, monkeypatch)
            env = {**env, "OAUTH_ISSUER": Source("value", "", "https://registry.test.invalid")}
            if uses_dev_secret:
                with pytest.raises(ValueError, match="(must be set|must not be the development key) outside development mode"):
                    _settings_from(env, monkeypatch)
                continue
        settings = _settings_from(env, monkeypatch)
        assert settings.environment == EXPECTED_ENVIRONMENT[target]
        assert settings.database_url and settings.database_url.startswith("postgresql://"), process
        assert settings.database_url_for(PACKAGE_OF[process]).startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(("target", "render"), [r for r in RENDERINGS if r.values[0] != "base"])
def test_keys_and_clients_load(target: str, render: Render, rendered: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON and key values survive the rendering: the registry loads its signing key and its API
    clients, the consent service its receipt signer. Production names this installation: https URLs
    other than the base's, and an admin client (else no one could register a participant)."""
    from services.consent import receipts
    from services.registry import oauth
    from shared import authclient

    docs = rendered(target, render)
    base = rendered("base", render_files)
    registry = _settings_from(container_env(docs, "registry"), monkeypatch)
    signer = authclient.load_private_key(registry.oauth_signing_key or "")
    assert authclient.signing_alg(signer) in ("ES256", "Ed25519")
    clients = oauth.load_clients(registry)
    assert any("admin" in c.roles for c in clients.values()), "no admin client: nobody can register participants"
    consent = _settings_from(container_env(docs, "consent"), monkeypatch)
    assert receipts.signer_from_settings(consent).jwks()["keys"]
    urls = {p: _settings_from(container_env(docs, p), monkeypatch).oauth_issuer for p in PROCESSES}
    assert len(set(urls.values())) == 1, f"every process must expect the same issuer: {urls}"
    if target == "production":
        base_consent = container_env(base, "consent")
        assert consent.public_url and consent.public_url.startswith("https://") and consent.public_url != base_consent["PUBLIC_URL"].value
        assert registry.oauth_issuer.startswith("https://") and registry.oauth_issuer != DEV_OAUTH_ISSUER
        assert consent.log_origin != base_consent["LOG_ORIGIN"].value


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_api_command_lines(target: str, render: Render, rendered: Any) -> None:
    docs = rendered(target, render)
    for name in APIS:
        (c,) = _object(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert c["args"] == [f"services.{name}", "--host", "0.0.0.0", "--port", "8080"], name
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in c["ports"], name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        svc = _object(docs, "Service", name)
        assert svc["spec"]["ports"][0]["targetPort"] == "http", name
    (w,) = _object(docs, "Deployment", "transfer-worker")["spec"]["template"]["spec"]["containers"]
    assert w["args"][:2] == ["services.transfer", "worker"]
    assert "ports" not in w and "readinessProbe" not in w and "livenessProbe" not in w


@pytest.mark.parametrize(("target", "render"), RENDERINGS)
def test_migrations_run_before_serving(target: str, render: Render, rendered: Any) -> None:
    """Each API pod brings its database to the head revision in an init container with exactly the
    serving container's environment; nothing else migrates."""
    docs = rendered(target, render)
    for name in APIS:
        pod = _object(docs, "Deployment", name)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        (main,) = pod["containers"]
        assert init["name"] == "migrate" and init["args"] == [f"services.{name}", "--migrate-only"], name
        assert init["image"] == main["image"], name
        assert (init.get("envFrom"), init.get("env")) == (main.get("envFrom"), main.get("env")), f"{name}: the migrate init container's environment differs"
        assert "--migrate" not in main["args"], name
    for process in PROCESSES:
        env = container_env(docs, process)
        assert env.get("MIGRATE", Source("value", "", "false")).value.lower() in ("false", "0", ""), process
    assert "initContainers" not in _object(docs, "Deployment", "transfer-worker")["spec"]["template"]["spec"]
