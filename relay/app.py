"""The composition root and its lifespan.

``Relay.start`` builds everything in order (database, spool, auth, policy,
providers, workers, listeners, admin); ``Relay.stop`` takes it down in
reverse on SIGTERM, within ``[server] shutdown_grace``: stop accepting and stop
claiming at once, let open transactions and in-flight deliveries finish
(idle sessions are told 421 and closed), cut off what is still running when
the grace ends (its messages are retried later), give back leases, close
providers and the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from starlette.routing import BaseRoute

from relay.accounting.counters import Counters
from relay.admin.api import make_api
from relay.admin.api.context import ApiContext
from relay.admin.http import AdminServer, make_app
from relay.auth.authenticator import Authenticator
from relay.auth.passwords import make_hasher
from relay.console import ConsoleContext, make_console
from relay.core.crypto import derive_key, secret_box, secret_key
from relay.core.events import EventSink
from relay.core.files import secure_var
from relay.core.metrics import Metrics, scrape_registry
from relay.core.settings import ListenerSettings, Settings, parse_hostport
from relay.core.unsubscribe import UNSUBSCRIBE_LABEL
from relay.delivery.pool import ProviderPool
from relay.delivery.throttle import Throttle
from relay.delivery.worker import Deliverer, Worker, node_identity
from relay.intake import Intake, IntakeConfig
from relay.limits.leases import Limits
from relay.limits.usage import refresh_gauges as limit_gauges
from relay.queue import store
from relay.queue.spool import Spool
from relay.queue.sweeper import PausedExpiry
from relay.reputation.gauges import ReputationGauges
from relay.reputation.sink import events_sink as reputation_sink
from relay.reputation.suspension import SuspensionCheck
from relay.routing.policy import Policy
from relay.service.notifications import Notifier
from relay.service.providers import check_references
from relay.smtp import listeners as smtp_listeners
from relay.smtp.handler import HandlerConfig, SessionHandler
from relay.smtp.listeners import Listener, bind_socket
from relay.smtp.protocol import ConnectionTracker, quiet_aiosmtpd
from relay.smtp.tls import server_context
from relay.store.engine import make_engine, migrate
from relay.store.generation import DecisionCache
from relay.suppression import lists as suppression_lists
from relay.suppression.check import SuppressionCheck
from relay.suppression.sink import events_sink as suppression_sink
from relay.webhooks.app import make_webhook_app
from relay.webhooks.unsubscribe import routes as unsubscribe_routes

log = logging.getLogger("relay")

SHUTDOWN_GRACE = 30.0
# Of the grace, what is kept for writing the last outcomes and closing down.
CLOSING_SHARE, CLOSING_MAX = 0.1, 2.0
# Reputation gauges every this many rounds of the 5 s gauge loop: their
# queries scan a week of the ledger and events.
REPUTATION_EVERY = 12


class Relay:
    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        sockets: dict[str, Any] | None = None,
        process_index: int = 0,
    ) -> None:
        self.settings = settings
        self.process_index = process_index
        self.engine = engine or make_engine(settings.database.url, settings.database.pool_size)
        self.metrics = Metrics()
        self.counters = Counters(self.metrics, self.engine)
        self.listeners: list[Listener] = []
        self._presockets = sockets or {}
        self.tracker = ConnectionTracker(
            settings.limits.max_connections_per_ip,
            settings.limits.max_connections,
            on_change=lambda listener, delta: self.metrics.smtp_sessions.labels(listener).inc(
                delta
            ),
        )
        self.worker: Worker | None = None
        self._admin: AdminServer | None = None
        self._admin_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._sweeper_task: asyncio.Task[None] | None = None
        self._notifier_task: asyncio.Task[None] | None = None
        self._limits_task: asyncio.Task[None] | None = None
        # Account and credential limits, this process's leases and sessions.
        self.limits = Limits(
            self.engine,
            settings.limits,
            on_limited=lambda account, limit: self.metrics.limited.labels(account, limit).inc(),
        )
        self.notifier: Notifier | None = None
        # Trust for the notifier's provider and POST connections (None: the
        # system store; tests put the emulator's CA here).
        self.notify_tls: ssl.SSLContext | None = None
        self.admin_port: int | None = None
        # What stored provider events go to (suppression, reputation), and the
        # public routes served beside the webhooks (one-click unsubscribe).
        self.event_sinks: list[EventSink] = []
        self.webhook_routes: list[BaseRoute] = []
        self._webhooks: AdminServer | None = None
        self._webhooks_task: asyncio.Task[None] | None = None
        self.webhooks_port: int | None = None

    # -- start ----------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        quiet_aiosmtpd()
        await asyncio.to_thread(secure_var, s.var_path)
        await asyncio.to_thread(migrate, self.engine)
        await asyncio.to_thread(check_references, self.engine, s.policy)
        tls = server_context(s)
        box = secret_box(s)
        self.spool = Spool(self.engine, s.queue.lifetime)
        # Notices (campaign paused, circuit open; reputation's, once wired) are
        # recorded and sent by one task with a bounded queue, off the hot path.
        self.notifier = Notifier(
            self.engine, box, s.policy, s.server.hostname, tls_context=self.notify_tls
        )
        self._notifier_task = self.notifier.start()
        # What stored provider events feed, after each webhook batch's commit,
        # in a worker thread: the suppression lists, then the reputation judge
        # (which raises notices). Beside the webhooks: one-click unsubscribe.
        self.event_sinks.append(suppression_sink(self.engine, s.suppression))
        self.event_sinks.append(reputation_sink(self.engine, s.reputation, self.notifier.notify))
        unsubscribe_key = derive_key(secret_key(s), UNSUBSCRIBE_LABEL)
        self.webhook_routes.extend(unsubscribe_routes(unsubscribe_key, self._unsubscribe))
        self.pool = ProviderPool(
            self.engine,
            box,
            s.var_path / "outbox",
            s.server.hostname,
            on_circuit_open=self.notifier.circuit_open,
            http_connections=max(s.queue.concurrency, s.queue.provider_concurrency_max),
        )
        if s.queue.workers:
            deliverer = Deliverer(self.pool, s.queue)
            self.worker = Worker(
                self.engine,
                s.queue,
                deliverer,
                on_outcome=self.counters.count_outcome,
                identity=node_identity(s.server, s.var_path, self.process_index),
            )
            # Providers' max_rate, max_connections and pauses, with every other
            # process; this process's slots are leased under its worker token.
            deliverer.throttle = Throttle(
                self.engine,
                self.worker.token,
                on_throttled=lambda p, why: self.metrics.provider_throttled.labels(p, why).inc(),
                on_pause=lambda p, left: self.metrics.provider_paused.labels(p).set(left),
            )
            self.spool.on_commit(self.worker.spooled)
            self.worker.in_flow.on_wait = self._in_flow_waited
            if s.queue.hand_off:
                self.spool.hand_off(self.worker)
        self.spool.on_commit(self.counters.count_accepted)
        # What policy, suppression and suspension decide per account, kept per
        # process until a change anywhere moves the generation (relay.store.generation).
        self.decisions = decisions = DecisionCache(
            self.engine, s.policy.cache_seconds, s.policy.cache_entries
        )
        config = HandlerConfig(
            s.limits.max_recipients,
            on_auth_failure=[self.counters.count_auth_failure],
            on_lockout=[self.counters.count_lockout],
            suspension=(
                SuspensionCheck(self.engine, decisions).refusal
                if s.reputation.suspend_action == "reject"
                else None
            ),
            limits=self.limits,
            in_flow=self.worker.in_flow.admit if self.worker is not None else None,
        )
        intake = Intake(
            IntakeConfig(
                s.server.hostname,
                s.limits.max_header_bytes,
                s.limits.max_headers,
                suppress_at_rcpt=s.suppression.at_rcpt,
                observers=[self.counters.observe],
                public_url=s.webhooks.public_url,
                unsubscribe_key=unsubscribe_key,
                notify=self.notifier.notify,
            ),
            Policy(self.engine, s.policy, s.reputation.suspend_action, decisions),
            self.spool,
            SuppressionCheck(self.engine, decisions),
        )
        handler = SessionHandler(config, Authenticator(self.engine, s.auth, make_hasher(s)), intake)
        self.listeners = [Listener(item, self._socket(item)) for item in s.listeners]
        await smtp_listeners.start(
            self.listeners, handler, tls, s.server.hostname, s.limits, self.tracker
        )
        for item in self.listeners:
            self.metrics.smtp_sessions.labels(item.settings.name).set(0)
        if self.worker:
            self.worker.start()
        self._gauge_task = asyncio.create_task(self._gauges())
        self._limits_task = asyncio.create_task(self.limits.run())
        sweeper = PausedExpiry(self.engine, on_expired=self.counters.count_expired)
        self._sweeper_task = asyncio.create_task(sweeper.run())
        await self._start_admin()
        await self._start_webhooks()

    def _unsubscribe(
        self, account_id: int, address: str, reason: str, source: str, detail: str | None
    ) -> None:
        """A one-click unsubscribe POST: onto the account's list (idempotent)."""
        suppression_lists.add(self.engine, account_id, address, reason, source, detail)

    def _in_flow_waited(self, seconds: float) -> None:
        self.metrics.in_flow_waits.inc()
        self.metrics.in_flow_wait_seconds.inc(seconds)

    def _shares_ports(self) -> bool:
        """SO_REUSEPORT only when ``relay serve`` started this as one of several
        processes: it puts their number in the settings. Settings that still say
        "auto" come from a caller running the relay in its own process (tests),
        which binds alone."""
        processes = self.settings.server.processes
        return isinstance(processes, int) and processes > 1

    def _socket(self, item: ListenerSettings) -> Any:
        if item.name in self._presockets:
            return self._presockets[item.name]
        return bind_socket(item, reuse_port=self._shares_ports())

    async def _start_admin(self) -> None:
        if not self.settings.admin.listen:
            return
        host, port = parse_hostport("[admin] listen", self.settings.admin.listen)
        sock = self._presockets.get("admin") or bind_socket(
            ListenerSettings("admin", host, port), reuse_port=self._shares_ports()
        )
        self.admin_port = int(sock.getsockname()[1])
        s = self.settings
        api = make_api(
            ApiContext(
                self.engine,
                s,
                make_hasher(s),
                secret_box(s),
                self.ready,
                notify=self.notifier.notify if self.notifier else None,
            )
        )
        console = None
        if s.admin.console:
            console = make_console(
                ConsoleContext(
                    self.engine,
                    s,
                    make_hasher(s),
                    secret_box(s),
                    notify=self.notifier.notify if self.notifier else None,
                )
            )
        self._admin = AdminServer(make_app(self.registry, self.ready, api, console), sock)
        self._admin_task = asyncio.create_task(self._admin.serve())

    async def _start_webhooks(self) -> None:
        """The public listener for provider events, apart from the private admin one."""
        s = self.settings
        if not s.webhooks.listen:
            return
        host, port = parse_hostport("[webhooks] listen", s.webhooks.listen)
        sock = self._presockets.get("webhooks") or bind_socket(
            ListenerSettings("webhooks", host, port), reuse_port=self._shares_ports()
        )
        self.webhooks_port = int(sock.getsockname()[1])
        app = make_webhook_app(
            self.engine, secret_box(s), self.metrics, self.event_sinks, self.webhook_routes
        )
        self._webhooks = AdminServer(app, sock)
        self._webhooks_task = asyncio.create_task(self._webhooks.serve())

    def registry(self) -> CollectorRegistry:
        return scrape_registry(self.metrics)

    async def ready(self) -> dict[str, bool]:
        def ping() -> bool:
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return True
            except Exception:
                return False

        return {
            "database": await asyncio.to_thread(ping),
            "spool": self.spool.healthy,
            "listeners": all(
                i.server is not None and i.server.is_serving() for i in self.listeners
            ),
        }

    # -- housekeeping -------------------------------------------------------

    async def _gauges(self) -> None:
        """Queue and quota gauges every few seconds; reputation gauges every minute."""
        reputation = ReputationGauges(
            self.engine, self.metrics, self.settings.reputation.min_volume
        )
        rounds = 0
        while True:
            if rounds % REPUTATION_EVERY == 0:
                try:
                    await asyncio.to_thread(reputation.refresh)
                except Exception as exc:
                    log.warning("reputation gauges: %s", exc)
            rounds += 1
            try:
                await asyncio.to_thread(self._limit_gauges)
            except Exception as exc:
                log.warning("limit gauges: %s", exc)
            try:
                counts = await asyncio.to_thread(store.queue_counts, self.engine)
                for state, n in counts.items():
                    self.metrics.queue_messages.labels(state).set(n)
                self.metrics.spool_healthy.set(1 if self.spool.healthy else 0)
            except Exception as exc:
                log.warning("queue gauges: %s", exc)
            await asyncio.sleep(5)

    def _limit_gauges(self) -> None:
        with self.engine.connect() as conn:
            limit_gauges(conn, self.metrics, time.time())

    # -- stop -----------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """Take everything down within ``grace`` seconds (``[server] shutdown_grace``)."""
        grace = self.settings.server.shutdown_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # The open work gets the grace less a share kept for closing down.
        work = max(grace - min(grace * CLOSING_SHARE, CLOSING_MAX), 0.0)
        log.info("stopping: no new connections; waiting for open transactions")
        await smtp_listeners.stop_accepting(self.listeners)
        # No new claims from now on; deliveries in flight run alongside the
        # sessions' last transactions.
        worker_stop = asyncio.create_task(self.worker.stop(work)) if self.worker else None
        await self._drain_sessions(work)
        await self.spool.aclose()
        if worker_stop is not None:
            await worker_stop
        for task in (self._gauge_task, self._sweeper_task, self._limits_task):
            if task:
                task.cancel()
        for server, task in (
            (self._admin, self._admin_task),
            (self._webhooks, self._webhooks_task),
        ):
            if server and task:
                server.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, max(deadline - loop.time(), 0.5))
        if self.notifier is not None:
            await self.notifier.aclose(max(deadline - loop.time(), 0.5))
        await self.pool.aclose()
        try:
            await asyncio.to_thread(self.limits.close)
        except Exception as exc:  # its rows expire on their own
            log.warning("limits: giving back sessions: %s", exc)
        self.engine.dispose()
        log.info("stopped")

    async def _drain_sessions(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        goodbye = b"421 4.3.2 Service shutting down\r\n"
        while loop.time() < deadline:
            open_ = [s for s in self.tracker.sessions if not s.closing]
            if not open_:
                break
            for session in open_:
                if not session.in_transaction:
                    session.close_with(goodbye)
            await asyncio.sleep(0.05)
        for session in list(self.tracker.sessions):
            session.close_with(goodbye)
            session.abort()


async def run(
    settings: Settings,
    sockets: dict[str, Any] | None = None,
    ready: asyncio.Event | None = None,
    process_index: int = 0,
    on_started: Callable[[Relay], None] | None = None,
) -> None:
    relay = Relay(settings, sockets=sockets, process_index=process_index)
    await relay.start()
    if on_started is not None:  # every port is bound (``relay demo`` prints only now)
        on_started(relay)
    for item in relay.listeners:
        log.info(
            "listening: %s on %s:%d (%s)",
            item.settings.name,
            item.settings.host,
            item.port,
            item.settings.mode,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready:
        ready.set()
    await stop.wait()
    await relay.stop()
