"""The listening sockets: 25 and 2525 (STARTTLS offered), 587 (STARTTLS
required, RFC 6409), 465 (implicit TLS, RFC 8314).

Production owns its event loop: sockets are bound here, then handed to
``loop.create_server``. A socket that cannot be bound says why.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from relay.core.errors import ConfigError
from relay.core.settings import LimitSettings, ListenerSettings
from relay.smtp.handler import SessionHandler
from relay.smtp.protocol import ConnectionTracker, RelaySMTP

BACKLOG = 4096  # pending connections per listener (the kernel caps it at somaxconn)


def bind_socket(listener: ListenerSettings, reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket, or a ConfigError that says why not."""
    where = f"{listener.host}:{listener.port}"
    try:
        infos = socket.getaddrinfo(
            listener.host,
            listener.port,
            type=socket.SOCK_STREAM,
            proto=socket.IPPROTO_TCP,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise ConfigError(f"listener {listener.name}: cannot resolve {where}: {exc}") from exc
    family, kind, proto, _, addr = infos[0]
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose
    # protocol reads as TCP, and without it multi-line replies wait on Nagle.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"listener {listener.name} cannot bind {where}: {_why(exc, listener.port)}"
        ) from exc
    sock.setblocking(False)
    return sock


def _why(exc: OSError, port: int) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied (port {port} is privileged: run as root, grant "
            "CAP_NET_BIND_SERVICE, or use a port above 1023)"
        )
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another server is listening there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


@dataclass
class Listener:
    settings: ListenerSettings
    sock: socket.socket
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def protocol_kwargs(
    listener: ListenerSettings, tls: ssl.SSLContext, hostname: str, limits: LimitSettings
) -> dict[str, Any]:
    common: dict[str, Any] = {
        "hostname": hostname,
        "ident": "Relay ESMTP",
        "data_size_limit": limits.max_message_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "timeout": limits.idle_timeout,
        "auth_required": True,
        # RelaySMTP's own: the header section is measured while DATA is read.
        "max_header_bytes": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }
    if listener.mode == "implicit":
        # No STARTTLS to offer: the whole connection is TLS (see RelaySMTP).
        return {**common, "tls_context": None, "auth_require_tls": True}
    return {
        **common,
        "tls_context": tls,
        "require_starttls": listener.mode == "starttls-required",
        "auth_require_tls": not listener.allow_plaintext_auth,
    }


async def start(
    listeners: list[Listener],
    handler: SessionHandler,
    tls: ssl.SSLContext,
    hostname: str,
    limits: LimitSettings,
    tracker: ConnectionTracker,
) -> None:
    loop = asyncio.get_running_loop()
    for item in listeners:
        kwargs = protocol_kwargs(item.settings, tls, hostname, limits)
        name = item.settings.name

        def factory(kwargs: dict[str, Any] = kwargs, name: str = name) -> RelaySMTP:
            return RelaySMTP(handler, listener=name, tracker=tracker, loop=loop, **kwargs)

        ssl_ctx = tls if item.settings.mode == "implicit" else None
        # create_server listens again with its own backlog (100 by default),
        # which dropped bursts of new sessions: keep bind_socket's.
        item.server = await loop.create_server(
            factory,
            sock=item.sock,
            ssl=ssl_ctx,
            backlog=BACKLOG,
            ssl_handshake_timeout=30 if ssl_ctx else None,
        )


async def stop_accepting(listeners: list[Listener]) -> None:
    for item in listeners:
        if item.server is not None:
            item.server.close()
