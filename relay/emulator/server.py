"""Start and stop the emulator: three HTTP APIs (SendGrid, SparkPost, Mailgun) and an
SMTP sink on loopback.

The HTTP apps are served by uvicorn inside the running event loop (a
``uvicorn.Server`` whose ``capture_signals`` does nothing, so the host
process keeps its own signal handlers); the SMTP sink by aiosmtpd through
``loop.create_server``. Port 0 picks a free port; the bound ports are on the
returned :class:`Emulator`. Only loopback addresses are accepted: the
emulator accepts any mail and must never face a network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from relay.emulator import events, mailgun, sendgrid, ses, sparkpost
from relay.emulator.events import EventPoster
from relay.emulator.faults import ApiState
from relay.emulator.mailgun import MailgunState
from relay.emulator.smtp import HOSTNAME, SmtpSink, start_sink

DEFAULT_API_KEY = "emulator-key"


class _InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _Http:
    server: _InLoopServer
    task: asyncio.Task[None]
    port: int


@dataclass
class Emulator:
    """A running emulator: its states (to drive and inspect) and its addresses."""

    host: str
    sendgrid: ApiState
    sparkpost: ApiState
    smtp: SmtpSink
    mailgun: MailgunState = field(default_factory=lambda: MailgunState(DEFAULT_API_KEY))
    sendgrid_port: int = 0
    sparkpost_port: int = 0
    mailgun_port: int = 0
    smtp_port: int = 0
    smtps_port: int | None = None
    ca_pem: bytes | None = field(default=None, repr=False)
    events: EventPoster = field(default_factory=EventPoster)
    # Amazon SES v2 (relay.emulator.ses): the key is its access key id and secret.
    ses: ApiState = field(default_factory=lambda: ApiState(DEFAULT_API_KEY))
    ses_port: int = 0
    _http: list[_Http] = field(default_factory=list, repr=False)
    _smtp_servers: list[asyncio.Server] = field(default_factory=list, repr=False)

    @property
    def sendgrid_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.sendgrid_port}"

    @property
    def sparkpost_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.sparkpost_port}"

    @property
    def mailgun_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.mailgun_port}"

    @property
    def ses_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ses_port}"

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts the emulator's certificate authority."""
        if self.ca_pem is None:
            raise RuntimeError("the emulator was started without TLS")
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))

    def provider_options(self, kind: str, *, smtp_tls: str = "none") -> dict[str, Any]:
        """Options that point a provider of ``kind`` at this emulator."""
        port = self.smtps_port if smtp_tls == "implicit" else self.smtp_port
        options: dict[str, Any] = {"smtp_host": self.host, "smtp_port": port, "smtp_tls": smtp_tls}
        if kind == "sendgrid":
            options["api_url"] = self.sendgrid_url
        elif kind == "sparkpost":
            options["api_url"] = self.sparkpost_url
        elif kind == "mailgun":
            options["api_url"] = self.mailgun_url
            options["sending_domain"] = mailgun.DOMAIN
        elif kind == "ses":
            options.update(api_url=self.ses_url, region=ses.REGION, access_key_id=self.ses.api_key)
        return options

    def set_events_url(
        self, kind: str, url: str | None, auth: tuple[str, str] | None = None
    ) -> None:
        """Post ``kind``'s events (sendgrid | sparkpost | mailgun) to ``url`` after each delivery.

        ``auth``: the (user, password) SparkPost's webhook sends as basic auth.
        SendGrid's are signed with :attr:`sendgrid_events_key`'s private half,
        Mailgun's with :attr:`mailgun_signing_key`.
        """
        self.events.set_url(kind, url, auth)

    @property
    def sendgrid_events_key(self) -> str:
        """The Event Webhook verification key, as SendGrid's console shows it."""
        return self.events.sendgrid_public_key

    @property
    def mailgun_signing_key(self) -> str:
        """The HTTP webhook signing key, as Mailgun's console shows it."""
        return self.events.mailgun_key

    async def flush_events(self) -> None:
        """Wait for the event posts under way (tests: then look at the receiver)."""
        await self.events.flush()

    def wait_for_events(self, timeout: float = 20.0) -> None:
        """From another thread (the emulator in a thread of its own): wait for the posts."""
        loop = self.events.loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self.events.flush(), loop).result(timeout)

    def _wire_events(self) -> None:
        suppressed = self.sparkpost.suppressed
        self.sendgrid.on_accepted = lambda body, mid: self.events.sendgrid(
            events.sendgrid_recipients(body), mid, categories=body.get("categories") or []
        )
        self.sparkpost.on_accepted = lambda body, tid: self.events.sparkpost(
            events.sparkpost_recipients(body, suppressed),
            tid,
            campaign_id=str(body.get("campaign_id") or ""),
        )
        self.mailgun.on_accepted = lambda form, mid: self.events.mailgun(
            events.mailgun_recipients(form, mid), mid, self.mailgun.suppressed
        )
        self.smtp.on_message = lambda message: events.smtp_delivery(self.events, message)

    def describe(self) -> str:
        lines = [
            f"SendGrid API   {self.sendgrid_url}",
            f"SparkPost API  {self.sparkpost_url}",
            f"SMTP           {self.host}:{self.smtp_port}"
            + (" (STARTTLS)" if self.smtp.tls_context else ""),
        ]
        if self.smtps_port is not None:
            lines.append(f"SMTPS          {self.host}:{self.smtps_port} (implicit TLS)")
        lines.append(f"Mailgun API    {self.mailgun_url} (domain {mailgun.DOMAIN})")
        lines.append(
            f"Amazon SES API {self.ses_url} (region {ses.REGION}, access key id = the key)"
        )
        for kind in events.KINDS:
            url = self.events.url(kind)
            if url:
                lines.append(f"{kind} events -> {url}")
        lines.append(f"SendGrid Event Webhook verification key  {self.sendgrid_events_key}")
        lines.append(f"Mailgun HTTP webhook signing key  {self.mailgun_signing_key}")
        return "\n".join(lines)

    def drop_http_connections(self) -> int:
        """Close every idle keep-alive HTTP connection, as a provider's load balancer
        does (its idle timeout), without telling the sender; the number closed."""
        dropped = 0
        for http in self._http:
            for connection in list(http.server.server_state.connections):
                connection.shutdown()  # uvicorn's: closes it now unless a request is running
                dropped += 1
        return dropped

    def open_http_connections(self) -> int:
        """HTTP connections open now, over all the emulated APIs."""
        return sum(len(http.server.server_state.connections) for http in self._http)

    async def aclose(self) -> None:
        self.sendgrid.wake()
        self.sparkpost.wake()
        self.mailgun.wake()
        self.ses.wake()
        for http in self._http:
            http.server.should_exit = True
        await asyncio.gather(*(http.task for http in self._http), return_exceptions=True)
        for server in self._smtp_servers:
            server.close()
        self.smtp.disconnect_all()
        for server in self._smtp_servers:
            await server.wait_closed()
        await self.events.aclose()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the emulator listens on loopback only, not {host!r}")


def _listening_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP given explicitly: asyncio then sets TCP_NODELAY on accepted
    # connections (DESIGN.md, "Pitfalls measured on these machines").
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _serve_http(app: Any, host: str, port: int) -> _Http:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        ws="none",
        http="h11",
        timeout_graceful_shutdown=2,
    )
    server = _InLoopServer(config)
    sock = _listening_socket(host, port)
    bound = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()
            raise RuntimeError("the HTTP emulator stopped while starting")
        await asyncio.sleep(0.005)
    return _Http(server, task, bound)


def _make_tls() -> tuple[ssl.SSLContext, bytes]:
    """A throwaway CA and a certificate for loopback (trustme, a test dependency)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost", HOSTNAME)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ca.cert_pem.bytes()


async def serve_emulator(
    host: str = "127.0.0.1",
    sendgrid_port: int = 0,
    sparkpost_port: int = 0,
    smtp_port: int = 0,
    *,
    smtps_port: int | None = None,
    api_key: str = DEFAULT_API_KEY,
    smtp_users: dict[str, str] | None = None,
    starttls: bool = False,
    tls_context: ssl.SSLContext | None = None,
    ca_pem: bytes | None = None,
    mailgun_port: int = 0,
    ses_port: int = 0,
) -> Emulator:
    """Start the emulator on ``host`` (loopback only) and return it running.

    SMTP users default to the providers' relay users (``apikey``,
    ``SMTP_Injection``, ``postmaster@`` the Mailgun domain) with ``api_key``
    as password, and SES's (``api_key`` as access key id, the SMTP password
    derived from it); ``{}`` turns AUTH off.
    TLS: pass a server ``tls_context`` (and the ``ca_pem`` clients should
    trust), or ``starttls=True`` / a ``smtps_port`` to have one made.
    """
    _require_loopback(host)
    if tls_context is None and (starttls or smtps_port is not None):
        tls_context, ca_pem = _make_tls()
    relay_users = ("apikey", "SMTP_Injection", f"postmaster@{mailgun.DOMAIN}")
    users = {user: api_key for user in relay_users} if smtp_users is None else smtp_users
    if smtp_users is None:  # SES: the key id, and the SMTP password derived from the key
        users[api_key] = ses.smtp_password(api_key)
    emulator = Emulator(
        host,
        ApiState(api_key),
        ApiState(api_key),
        SmtpSink(users=users, tls_context=tls_context),
        mailgun=MailgunState(api_key),
        ca_pem=ca_pem,
        ses=ApiState(api_key),
    )
    emulator._wire_events()
    try:
        await _start(
            emulator, sendgrid_port, sparkpost_port, smtp_port, smtps_port, mailgun_port, ses_port
        )
    except BaseException:
        await emulator.aclose()
        raise
    return emulator


async def _start(
    emulator: Emulator,
    sendgrid_port: int,
    sparkpost_port: int,
    smtp_port: int,
    smtps_port: int | None,
    mailgun_port: int = 0,
    ses_port: int = 0,
) -> None:
    host = emulator.host
    for app, port in (
        (sendgrid.create_app(emulator.sendgrid), sendgrid_port),
        (sparkpost.create_app(emulator.sparkpost), sparkpost_port),
        (mailgun.create_app(emulator.mailgun), mailgun_port),
        (ses.create_app(emulator.ses), ses_port),
    ):
        emulator._http.append(await _serve_http(app, host, port))
    ports = [h.port for h in emulator._http]
    (
        emulator.sendgrid_port,
        emulator.sparkpost_port,
        emulator.mailgun_port,
        emulator.ses_port,
    ) = ports
    smtp = await start_sink(emulator.smtp, host, smtp_port)
    emulator._smtp_servers.append(smtp)
    emulator.smtp_port = smtp.sockets[0].getsockname()[1]
    if smtps_port is not None:
        smtps = await start_sink(emulator.smtp, host, smtps_port, implicit_tls=True)
        emulator._smtp_servers.append(smtps)
        emulator.smtps_port = smtps.sockets[0].getsockname()[1]


# -- relay emulate -----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay emulate",
        description=(
            "Fake SendGrid, SparkPost, Mailgun and Amazon SES APIs and an SMTP sink, on loopback."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument(
        "--sendgrid-port", type=int, default=0, metavar="P", help="SendGrid's API (0: any free)"
    )
    parser.add_argument(
        "--sparkpost-port", type=int, default=0, metavar="P", help="SparkPost's API (0: any free)"
    )
    parser.add_argument(
        "--smtp-port", type=int, default=0, metavar="P", help="the SMTP sink (0: any free)"
    )
    parser.add_argument(
        "--mailgun-port", type=int, default=0, metavar="P", help="Mailgun API port (0: any free)"
    )
    parser.add_argument(
        "--ses-port", type=int, default=0, metavar="P", help="the Amazon SES v2 API's port"
    )
    parser.add_argument(
        "--smtps-port",
        type=int,
        default=None,
        metavar="P",
        help="also listen with implicit TLS on this port",
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        metavar="K",
        help="the key the APIs and the SMTP AUTH accept",
    )
    parser.add_argument("--starttls", action="store_true", help="offer STARTTLS on SMTP")
    parser.add_argument(
        "--sendgrid-events-url",
        metavar="URL",
        help="post SendGrid's Event Webhook events (signed) here after each delivery",
    )
    parser.add_argument(
        "--sparkpost-events-url",
        metavar="URL",
        help="post SparkPost's webhook batches here after each delivery",
    )
    parser.add_argument(
        "--sparkpost-events-auth",
        metavar="USER:PASS",
        help="the basic auth SparkPost's webhook sends",
    )
    parser.add_argument(
        "--mailgun-events-url",
        metavar="URL",
        help="post Mailgun's webhook events (signed with the key it prints) here",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        help="write the CA certificate clients should trust here",
    )
    return parser


async def _run(args: argparse.Namespace) -> None:
    emulator = await serve_emulator(
        args.host,
        args.sendgrid_port,
        args.sparkpost_port,
        args.smtp_port,
        smtps_port=args.smtps_port,
        api_key=args.api_key,
        starttls=args.starttls,
        mailgun_port=args.mailgun_port,
        ses_port=args.ses_port,
    )
    if args.mailgun_events_url:
        emulator.set_events_url("mailgun", args.mailgun_events_url)
    if args.sendgrid_events_url:
        emulator.set_events_url("sendgrid", args.sendgrid_events_url)
    if args.sparkpost_events_url:
        user, _, password = (args.sparkpost_events_auth or "").partition(":")
        auth = (user, password) if args.sparkpost_events_auth else None
        emulator.set_events_url("sparkpost", args.sparkpost_events_url, auth)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.ca_file is not None and emulator.ca_pem is not None:
            args.ca_file.write_bytes(emulator.ca_pem)
            print(f"CA certificate  {args.ca_file}")
        print(emulator.describe(), flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await emulator.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """``relay emulate``: print the bound addresses, run until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    try:
        _require_loopback(args.host)
    except ValueError as exc:
        _parser().error(str(exc))
    if args.sparkpost_events_auth and ":" not in args.sparkpost_events_auth:
        _parser().error("--sparkpost-events-auth is USER:PASS")
    asyncio.run(_run(args))
    return 0
