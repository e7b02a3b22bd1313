"""``portability``: run the whole broker locally, or play the main job once (``make run`` / ``make demo``)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import typer
from rich.console import Console

from .catalogue import UnknownFormat, parse_file
from .demo import CLOUD_ID, DEMO_PASSWORD, DemoFailed, client_as, consented_transfer, pick_customer_dataset, register_participants, summary_line
from .launcher import Stack, StartError

app = typer.Typer(add_completion=False, help="Data portability broker: local runs and demos.")
console = Console(highlight=False, soft_wrap=True)

DEFAULT_PORTS = {"registry": 8101, "consent": 8102, "transfer": 8103, "holder": 8201, "cloud": 8202, "nats": 4322}


def _stack(data_dir: Path, input_file: Path | None) -> Stack:
    return Stack(
        data_dir=data_dir,
        nats_url=os.environ.get("NATS_URL") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
        holder_files=[input_file] if input_file else None,
        ports=dict(DEFAULT_PORTS),
    )


def _main_job(stack: Stack, input_file: Path | None) -> tuple[int, dict[str, object]]:
    dataset = parse_file(input_file).dataset_id if input_file else None
    with httpx.Client(timeout=30) as client:
        register_participants(client, stack)
        console.print(f"registered data holder demo-holder ({stack.url('holder')}) and data recipient demo-cloud ({stack.url('cloud')})")
        customer, ds = pick_customer_dataset(client, stack, dataset)
        result = consented_transfer(client, stack, customer=customer, dataset=ds, say=console.print, through_pages=True)
    ok = result["status"] == "completed" and bool(result["identical"])
    console.print(("[green]the recipient holds exactly the records the holder served[/green]" if ok
                   else "[red]the recipient does NOT hold exactly the records the holder served[/red]"))
    return (0 if ok else 1), summary_line(result)


def _invite_person(stack: Stack) -> None:
    """Ask for one more consent and tell the person where to click through it in a browser."""
    try:
        with httpx.Client(timeout=30) as client, client_as(stack, CLOUD_ID) as cloud:
            customer, ds = pick_customer_dataset(client, stack)
            r = cloud.post(f"{stack.url('consent')}/consents", json={
                "data_subject": "you", "holder_id": "demo-holder", "recipient_id": "demo-cloud", "datasets": [ds],
                "purpose": "Show my energy use in my personal cloud", "duration_days": 90, "one_off": True})
            r.raise_for_status()
    except (httpx.HTTPError, DemoFailed) as exc:
        console.print(f"[yellow]could not prepare a consent to click through: {exc}[/yellow]")
        return
    console.print(f"[bold]Try it in a browser:[/bold] open {stack.url('consent')}/consent/{r.json()['id']} , click Allow, "
                  f"log in at the holder as customer {customer} with password {DEMO_PASSWORD}; then see {stack.url('consent')}/me "
                  f"(the request expires unanswered after 10 minutes)")


def _check_input(input_file: Path | None) -> None:
    if input_file is None:
        return
    if not input_file.is_file():
        _fail(f"{input_file}: no such file" if not input_file.exists() else f"{input_file}: not a file", 2)
    try:
        parse_file(input_file)
    except (UnknownFormat, OSError, ValueError) as exc:
        _fail(f"cannot serve {input_file}: {exc}", 2)


def _fail(message: str, code: int) -> None:
    console.print(f"[red]{message}[/red]")
    print(json.dumps({"status": "error", "error": message}), flush=True)
    raise typer.Exit(code)


def _lock(data_dir: Path) -> object:
    """Hold ``<data_dir>/broker.lock`` while running: two brokers must not share one folder."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / "broker.lock", "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        _fail(f"another broker is running from {data_dir} (pid {f.read().strip() or '?'}); stop it first", 1)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _start(data_dir: Path, input_file: Path | None) -> Stack:
    _check_input(input_file)
    stack = _stack(data_dir, input_file)
    console.print("starting NATS, registry, consent, transfer, reference holder and cloud...")
    try:
        stack.start()
    except StartError as exc:
        _fail(str(exc), 1)
    console.print(f"NATS {stack.nats_server_url or stack.nats_url}" + (" (embedded, one user per service)" if stack.nats else ""))
    for name, p in stack.procs.items():
        console.print(f"  {name:<9} {p.url}")
    return stack


@app.command()
def demo(
    input_file: Path | None = typer.Option(None, "--input", help="a real-format holder file to serve instead of the sample"),
    data_dir: Path = typer.Option(Path("var"), help="where databases, NATS data and logs go"),
) -> None:
    """Start everything, run one consented transfer, stop; exit 0 if the recipient holds exactly the holder's records."""
    lock = _lock(data_dir)
    _ignore_signals_while_stopping = _stop_on_signals()
    stack = _start(data_dir, input_file)
    code, summary = 1, {"status": "error", "error": "interrupted"}
    try:
        code, summary = _main_job(stack, input_file)
    except DemoFailed as exc:
        console.print(f"[red]{exc}[/red]")
        summary = {"status": "error", "error": str(exc)}
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        _ignore_signals_while_stopping()
        stack.stop()
        del lock
    print(json.dumps(summary), flush=True)
    raise typer.Exit(code)


def _stop_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGHUP interrupt like Ctrl-C; returns a function that then ignores all three,
    so that a second Ctrl-C cannot cut the clean-up short and leave processes behind."""

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)

    def ignore() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)

    return ignore


@app.command()
def run(
    input_file: Path | None = typer.Option(None, "--input", help="a real-format holder file to serve instead of the sample"),
    data_dir: Path = typer.Option(Path("var"), help="where databases, NATS data and logs go"),
) -> None:
    """Start everything, run one consented transfer, then keep serving until Ctrl-C."""
    lock = _lock(data_dir)
    _check_input(input_file)
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    stack = _start(data_dir, input_file)
    try:
        try:
            _code, summary = _main_job(stack, input_file)
            print(json.dumps(summary), flush=True)
        except DemoFailed as exc:
            console.print(f"[red]{exc}[/red]")
        _invite_person(stack)
        console.print(f"serving; logs in {data_dir / 'logs'}; API docs at {stack.url('consent')}/docs; Ctrl-C stops everything")
        while not stopping:
            for p in stack.procs.values():
                if not p.alive():
                    console.print(f"[red]{p.name} exited:[/red]\n{p.log_tail()}")
                    stopping = True
            time.sleep(0.5)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        console.print("stopping...")
        stack.stop()
        del lock
    sys.exit(0)


credentials_app = typer.Typer(add_completion=False, help="Credentials of participants and regulators at the broker.")
app.add_typer(credentials_app, name="credentials")


@credentials_app.command("new")
def credentials_new(
    client_id: str = typer.Argument(..., help="your participant id in the registry (or a regulator's client id)"),
    out: Path = typer.Option(Path("."), help="folder for the private key file"),
    alg: str = typer.Option("ES256", help="ES256 or Ed25519"),
) -> None:
    """Make a key pair: the private JWK goes to ``<out>/<client_id>.private.jwk.json`` (mode 0600, keep it);
    the public JWK Set is printed, for the ``jwks`` of your registry entry (RFC 7517)."""
    from .authclient import generate_keypair

    private, public = generate_keypair(alg)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{client_id}.private.jwk.json"
    if path.exists():
        _fail(f"{path} exists: not overwriting a private key", 2)
    path.touch(mode=0o600)
    path.write_text(json.dumps(private), "utf-8")
    Console(stderr=True).print(f"private key written to {path} (never share it); the public JWK Set follows", style="green")
    print(json.dumps(public))


@credentials_app.command("token")
def credentials_token(
    client_id: str = typer.Option(..., envvar="PORTABILITY_CLIENT_ID", help="your client id"),
    key_file: Path = typer.Option(..., envvar="PORTABILITY_KEY_FILE", help="your private key (JWK or PEM)"),
    registry: str = typer.Option(os.environ.get("REGISTRY_URL", "http://127.0.0.1:8101"), help="the broker's registry"),
    scope: str | None = typer.Option(None, help="holder, recipient, regulator or admin (default: all of yours)"),
) -> None:
    """Get an access token (client credentials grant with private_key_jwt, RFC 7523) and print it."""
    from .authclient import TokenError, TokenSource

    try:
        print(TokenSource(client_id, key_file.read_text("utf-8"), f"{registry.rstrip('/')}/oauth/token", scope=scope).token())
    except (TokenError, httpx.HTTPError, OSError) as exc:
        _fail(f"no token: {exc}", 1)


@credentials_app.command("dev-token")
def credentials_dev_token(
    who: str = typer.Argument(..., help="admin, regulator, demo-holder or demo-cloud"),
    registry: str = typer.Option(os.environ.get("REGISTRY_URL", "http://127.0.0.1:8101"), help="the broker's registry"),
) -> None:
    """An access token of a development identity of the local broker (``make run``): the built-in admin and
    regulator, or the demo holder and cloud (their keys are derived from public seeds: development only)."""
    from .authclient import TokenError
    from .demo import credentials as dev_credentials_of

    class _Local:
        def url(self, name: str) -> str:
            return registry

    try:
        print(dev_credentials_of(_Local(), who).source().token())  # type: ignore[arg-type]
    except (TokenError, httpx.HTTPError) as exc:
        _fail(f"no token for {who}: {exc}", 1)


transfer_app = typer.Typer(add_completion=False, help="Transfers.")
app.add_typer(transfer_app, name="transfer")


@transfer_app.command("watch")
def transfer_watch(
    transfer_id: str = typer.Argument(..., help="the transfer id"),
    url: str = typer.Option(os.environ.get("TRANSFER_URL", "http://127.0.0.1:8103"), help="the transfer service"),
    interval: float = typer.Option(0.5, min=0.05, help="seconds between two looks"),
    token: str | None = typer.Option(None, envvar="PORTABILITY_TOKEN", help="an access token of a party to the transfer"),
) -> None:
    """Show a transfer's progress (records, bytes, rate, ETA) until it ends; exit 0 if it completed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"} if token else None) as client:
        def fetch() -> dict[str, object]:
            try:
                r = client.get(f"{url}/transfers/{transfer_id}")
            except httpx.HTTPError as exc:
                console.print(f"[red]cannot reach {url}: {exc}[/red]")
                raise typer.Exit(2) from None
            if r.status_code == 404:
                console.print(f"[red]no transfer {transfer_id}[/red]")
                raise typer.Exit(2)
            if r.status_code in (401, 403):
                console.print(f"[red]not allowed to see transfer {transfer_id} ({r.status_code}): give a party's token "
                              "with --token or PORTABILITY_TOKEN[/red]")
                raise typer.Exit(2)
            r.raise_for_status()
            return dict(r.json())

        t = fetch()
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.fields[total_text]} records"),
                   TextColumn("{task.fields[mb]:.2f} MB"), TextColumn("{task.fields[rate]:,.0f} rec/s"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(str(t["status"]), total=None, total_text="?", mb=0.0, rate=0.0)
            while True:
                total = t.get("total")
                if t["status"] == "completed":  # all there is: the holder's total may count records left out (data window)
                    total = t["records"]
                progress.update(task, description=str(t["status"]), completed=float(t["records"]),  # type: ignore[arg-type]
                                total=float(total) if total else None, total_text=f"{total:,}" if total else "?",  # type: ignore[str-format]
                                mb=float(t["bytes"]) / 1e6, rate=float(t.get("rate_records_per_s") or 0.0))  # type: ignore[arg-type]
                if t["status"] in ("completed", "partial", "failed", "cancelled"):
                    break
                time.sleep(interval)
                t = fetch()
    line = f"transfer {transfer_id} {t['status']}: {t['records']} records, {t['bytes']} bytes"
    if t.get("reason"):
        line += f" ({t['reason']}: {(t.get('error') or {}).get('message', '')})"  # type: ignore[union-attr]
    elif (t.get("error") or {}).get("outside_window"):  # type: ignore[union-attr]
        line += f" ({t['error']['outside_window']['message']})"  # type: ignore[index]
    console.print(line)
    raise typer.Exit(0 if t["status"] == "completed" else 1)


receipt_app = typer.Typer(add_completion=False, help="Consent receipts.")
app.add_typer(receipt_app, name="receipt")


@receipt_app.command("verify")
def receipt_verify(
    proof_file: Path = typer.Argument(..., help="a receipt proof: the JSON file the dashboard's receipt page downloads"),
    public_key: str | None = typer.Option(None, "--public-key", envvar="PORTABILITY_LOG_KEY",
                                          help="the consent log's public key as its operator publishes it "
                                               "(<name>+<key id>+<base64>); default: the one in the file, which proves less"),
    receipt_keys: str | None = typer.Option(None, "--receipt-keys",
                                            help="the broker's receipt keys (JWK Set): a file, or a URL such as the file's "
                                                 "receipt_keys; default: the receipt's signature is not checked"),
) -> None:
    """Check offline that a consent receipt is in the consent log (shared.receiptproof): the checkpoint's
    signature, the entry's inclusion proof up to its root, and that the entry says what the receipt says.
    Exit 0 verified, 1 mismatch, 2 unreadable file, malformed key or network error."""
    from .receiptproof import MAX_PROOF_BYTES, BadProof, ProofMismatch, verify_receipt_proof

    try:
        if proof_file.stat().st_size > MAX_PROOF_BYTES:
            raise BadProof(f"{proof_file} is larger than a receipt proof can be ({MAX_PROOF_BYTES} bytes)")
        bundle = json.loads(proof_file.read_text("utf-8"))
        if not isinstance(bundle, dict):
            raise BadProof("not a JSON object")
        key = public_key or bundle.get("log_public_key")
        if not isinstance(key, str):
            raise BadProof("no log public key: give --public-key")
        jwks = None
        if receipt_keys:
            if receipt_keys.startswith(("http://", "https://")):
                r = httpx.get(receipt_keys, timeout=10).raise_for_status()
                if len(r.content) > MAX_PROOF_BYTES:
                    raise BadProof(f"{receipt_keys} answered more than {MAX_PROOF_BYTES} bytes")
                raw = r.text
            else:
                raw = Path(receipt_keys).read_text("utf-8")
            jwks = json.loads(raw)  # verify_receipt_proof checks it is a JWK Set of Ed25519 keys
        done = verify_receipt_proof(bundle, log_key=key, receipt_jwks=jwks)
    except ProofMismatch as exc:
        console.print(f"[red]mismatch: {exc}[/red]")
        raise typer.Exit(1) from None
    except (BadProof, ValueError, RecursionError, OSError, httpx.HTTPError, httpx.InvalidURL) as exc:
        console.print(f"[red]error: {exc}[/red]")
        raise typer.Exit(2) from None
    except Exception as exc:  # a failure of the check itself or of its inputs: nothing concluded
        console.print(f"[red]error: unexpected {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(2) from None
    for line in done:
        console.print(f"ok: {line}")
    if not public_key:
        console.print("[yellow]note: the log's key came from the file itself; compare it with the one the operator publishes "
                      "(--public-key)[/yellow]")
    if jwks is None:
        console.print("[yellow]note: the receipt's signature was not checked (--receipt-keys)[/yellow]")
    console.print("verified")


if __name__ == "__main__":
    app()
