"""Typed configuration: one TOML file plus ``RELAY_*`` environment variables.

Every key has a type, a default and a description (``describe()`` lists them).
Lookup order, as Starlette does it: environment, then file, then default. An
environment variable is ``RELAY_<SECTION>_<KEY>`` upper-cased
(``RELAY_DATABASE_URL``, ``RELAY_LIMITS_MAX_RECIPIENTS``). A bad value fails
with the key's name, never with a traceback from deep inside.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.core.errors import ConfigError

LISTENER_NAMES = ("smtp", "submissions", "submission", "alt")


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _doc(
    description: str,
    default: Any = dataclasses.MISSING,
    *,
    choices: tuple[str, ...] = (),
    any_case: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    nonempty: bool = False,
    check: Callable[[Any], None] | None = None,
    **kw: Any,
) -> Any:
    """A key: its description and default, and what values it allows.

    ``choices`` are the only strings allowed (``any_case``: in any case);
    ``ge``/``gt``/``le`` bound a number, or every number of a tuple;
    ``nonempty`` refuses an empty string or tuple; ``check`` raises
    ValueError with a reason for anything else. ``load_settings`` checks every
    key this way, so a typo fails at start with the key named. A new key gets
    its checks by saying them here, nothing more.
    """
    rules = {
        "choices": choices,
        "any_case": any_case,
        "ge": ge,
        "gt": gt,
        "le": le,
        "nonempty": nonempty,
        "check": check,
    }
    metadata = {"doc": description, "rules": rules}
    if default is dataclasses.MISSING:
        return field(metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def _validate(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    """Raise ConfigError naming ``key`` if ``value`` breaks one of its rules."""
    choices: tuple[str, ...] = rules.get("choices", ())
    if choices:
        found = str(value).upper() if rules.get("any_case") else value
        allowed = [c.upper() for c in choices] if rules.get("any_case") else list(choices)
        if found not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    if rules.get("nonempty") and (value == "" or value == ()):
        raise ConfigError(f"{key}: must not be empty")
    numbers = value if isinstance(value, tuple) else (value,)
    for n in numbers:
        if not isinstance(n, int | float) or isinstance(n, bool):
            continue
        shown = f"{value!r}" if n == value else f"{n!r} in {value!r}"
        if not math.isfinite(n):  # nan passes every comparison
            raise ConfigError(f"{key}: {n!r} is not a finite number")
        if rules.get("ge") is not None and n < rules["ge"]:
            raise ConfigError(f"{key}: {shown} must be at least {rules['ge']:g}")
        if rules.get("gt") is not None and n <= rules["gt"]:
            raise ConfigError(f"{key}: {shown} must be more than {rules['gt']:g}")
        if rules.get("le") is not None and n > rules["le"]:
            raise ConfigError(f"{key}: {shown} must be at most {rules['le']:g}")
    check = rules.get("check")
    if check is not None:
        try:
            check(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {value!r} {exc}") from exc


def _host_port_or_empty(value: str) -> None:
    if value:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("is not host:port")


def _processes(value: int | str) -> None:
    if value == "auto":
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("must be 'auto' or a number of at least 1")


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as taskset and cgroup
    cpusets set it; os.cpu_count() counts the machine's), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not Linux
        return max(os.cpu_count() or 1, 1)


def resolve_processes(value: int | str) -> int:
    """``[server] processes`` as a number: 'auto' is the number of cores."""
    return cores() if value == "auto" else int(value)


NODE_ID_MAX = 64  # locked_by is 100 characters: the id, "/", the process index, "#", a run id


def _node_id(value: str) -> None:
    if len(value) > NODE_ID_MAX or "#" in value:
        raise ValueError(f"must be at most {NODE_ID_MAX} characters, with no '#'")


def _ip_addresses(value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"has {item!r}, which is not an IP address") from None


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _doc(
        "SQLAlchemy URL: sqlite:///var/relay.db or postgresql+psycopg://...",
        "sqlite:///var/relay.db",
        nonempty=True,
    )
    pool_size: int = _doc("Connections kept per process (PostgreSQL).", 10, ge=1)


@dataclass(frozen=True)
class ListenerSettings:
    name: str
    host: str
    port: int
    allow_plaintext_auth: bool = False

    @property
    def mode(self) -> str:
        """How TLS works here: implicit (465), required STARTTLS (587), optional."""
        return {"submissions": "implicit", "submission": "starttls-required"}.get(
            self.name, "starttls-optional"
        )


@dataclass(frozen=True)
class TLSSettings:
    cert: str = _doc("PEM certificate chain; empty makes a self-signed one under var/.", "")
    key: str = _doc("PEM private key for cert.", "")


@dataclass(frozen=True)
class AdminSettings:
    listen: str = _doc(
        "host:port of /metrics and the admin API; empty turns it off.",
        "127.0.0.1:8025",
        check=_host_port_or_empty,
    )
    console: bool = _doc(
        "Serve the web console at / on the admin listener (sign-in with `relay user create`).",
        True,
    )
    session_lifetime: float = _doc(
        "Seconds a console sign-in lasts without use (8 hours); each request renews it.",
        8 * 3600.0,
        gt=0,
        le=30 * 86400.0,
    )
    secure_cookie: str = _doc(
        "Mark the console's session cookie Secure: auto = when the request came over HTTPS "
        "(a TLS proxy saying so in X-Forwarded-Proto from 127.0.0.1), always, never.",
        "auto",
        choices=("auto", "always", "never"),
    )


def _http_url_or_empty(value: str) -> None:
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("is not an absolute http(s) URL")


@dataclass(frozen=True)
class WebhookSettings:
    listen: str = _doc(
        "host:port of the public listener (provider webhooks, one-click unsubscribe); "
        "empty turns it off.",
        "",
        check=_host_port_or_empty,
    )
    public_url: str = _doc(
        "Absolute http(s) URL at which providers and recipients reach that listener "
        "(https://relay.example.com); empty: no webhook URLs, no List-Unsubscribe.",
        "",
        check=_http_url_or_empty,
    )


@dataclass(frozen=True)
class ServerSettings:
    hostname: str = _doc(
        "Name in the greeting, EHLO and Received (never looked up).",
        "relay.localhost",
        nonempty=True,
    )
    var_dir: str = _doc(
        "Where the self-signed certificate and outbox live (kept 0700).", "var", nonempty=True
    )
    processes: int | str = _doc(
        "Processes sharing the listeners (SO_REUSEPORT): 'auto' (one per core this "
        "process may run on) or a number of at least 1.",
        "auto",
        check=_processes,
    )
    log_format: str = _doc("text or json", "text", choices=("text", "json"))
    log_level: str = _doc(
        "DEBUG, INFO, WARNING or ERROR",
        "INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        any_case=True,
    )
    node_id: str = _doc(
        "This node's name in queue claims, stable across restarts so a restarted node "
        "takes back its own claims at once; unique per running node. Empty: the host "
        "name and a digest of var_dir's absolute path. At most 64 characters.",
        "",
        check=_node_id,
    )
    shutdown_grace: float = _doc(
        "Seconds SIGTERM waits for open SMTP transactions and deliveries in flight; "
        "then they are cut off and their messages retried later.",
        30.0,
        ge=0,
    )


@dataclass(frozen=True)
class LimitSettings:
    # RFC 5321 4.5.3.1.10 asks for at least 100 recipients; we allow ten times that.
    max_message_size: int = _doc(
        "Largest message in bytes (SIZE; 552 5.3.4 past it).", 25 * 1024 * 1024, ge=1
    )
    max_recipients: int = _doc("Recipients per message (452 4.5.3 past it).", 1000, ge=1)
    max_connections_per_ip: int = _doc("Concurrent sessions per client address.", 100, ge=1)
    max_connections: int = _doc("Concurrent sessions per process.", 20000, ge=1)
    idle_timeout: float = _doc(
        "Seconds a client may stay silent between commands "
        "(RFC 5321 4.5.3.2.7 suggests 5 minutes).",
        300.0,
        gt=0,
    )
    max_header_bytes: int = _doc(
        "Largest header section in bytes (552 5.3.4 past it, before it is parsed).",
        1024 * 1024,
        ge=1000,  # RFC 5322 2.1.1: a field line alone may be 998 octets and CRLF
    )
    max_headers: int = _doc("Header fields per message (552 5.3.4 past it).", 1000, ge=1)
    # Account and credential limits (relay.limits; set with `relay account edit`).
    lease_units: int = _doc(
        "Most units of a rate or quota one process takes from the database at a time "
        "(fewer near the limit; unused ones lapse with their window), and most spare "
        "session slots it reserves. 500: a trip a few hundred messages; bench/ingest.py "
        "--limits measured 50 at 12-15% slower than no limits, 500 at 1-5%.",
        500,
        ge=1,
        le=1000,
    )
    lease_refresh: float = _doc(
        "Seconds a process trusts the limits it read for a credential before reading "
        "them again (an edit counts everywhere within this).",
        10.0,
        ge=0.5,
        le=3600,
    )
    session_lease: float = _doc(
        "Seconds a process's claim on concurrent sessions lasts unless renewed "
        "(renewed at a third of this; a crashed process's sessions free after it).",
        60.0,
        ge=3,
        le=3600,
    )


@dataclass(frozen=True)
class AuthSettings:
    max_failures_per_ip: int = _doc("Failed logins from one address before lock-out.", 10, ge=1)
    max_failures_per_user: int = _doc(
        "Failed logins for one username from one address before that pair is locked out; "
        "from many addresses together, before every login for it is slowed.",
        5,
        ge=1,
    )
    failure_window: float = _doc("Seconds over which failures are counted.", 300.0, gt=0)
    lockout: float = _doc(
        "Seconds a locked address or (username, address) is refused.", 300.0, ge=0
    )
    max_login_delay: float = _doc(
        "Longest delay, seconds, before answering a login for a username failing from many "
        "addresses (it doubles per failure from 0.5 s); 0 turns the slow-down off.",
        15.0,
        ge=0,
    )
    argon2_time_cost: int = _doc("argon2id iterations for new hashes.", 3, ge=1)
    # argon2 needs at least 8 KiB per lane (RFC 9106 3.1); we hash with one lane.
    argon2_memory_kib: int = _doc("argon2id memory for new hashes, KiB.", 65536, ge=8)
    max_credentials_per_domain: int = _doc("SMTP users a sending domain may have.", 5, ge=1)
    cache_size: int = _doc("Verified logins kept in memory.", 10000, ge=0)


@dataclass(frozen=True)
class QueueSettings:
    lifetime: float = _doc(
        "Seconds before an undelivered message fails (5 days).", 5 * 86400.0, gt=0
    )
    retry_schedule: tuple[float, ...] = _doc(
        "Seconds between attempts; the last repeats until the lifetime ends.",
        (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0),
        gt=0,
        nonempty=True,
    )
    batch_size: int = _doc("Messages one worker claims at a time.", 100, ge=1)
    lease: float = _doc("Seconds a claim is held before another node may take it.", 300.0, gt=0)
    poll_interval: float = _doc("Seconds between looks at the queue when idle.", 1.0, gt=0)
    workers: bool = _doc("Run delivery workers in this process.", True)
    hand_off: bool = _doc(
        "Give a message accepted while this process's worker has a free slot straight to "
        "it, written already claimed (no claim round trip); off: every message waits for "
        "a claim.",
        True,
    )
    in_flow_delay: float = _doc(
        "While this process's worker is behind (more mail due than it can start), MAIL FROM "
        "waits for a delivery to finish, at most this many seconds (Postfix's in_flow_delay): "
        "acceptance slows to the delivery rate instead of growing the queue; 0: never wait.",
        1.0,
        ge=0,
        le=10,
    )
    concurrency: int = _doc("Deliveries in flight per process.", 50, ge=1)
    provider_concurrency: int = _doc(
        "Deliveries in flight per provider, per process, when it answers quickly; more "
        "when its answers take longer (up to provider_concurrency_max).",
        20,
        ge=1,
    )
    provider_concurrency_max: int = _doc(
        "Most deliveries in flight per provider, per process: the limit grows toward it "
        "while the provider's answers take long but do not queue (200 ms for 500 msg/s "
        "needs 100). The pooled HTTP client keeps this many connections.",
        256,
        ge=1,
        le=10000,
    )


@dataclass(frozen=True)
class PolicySettings:
    default_unverified: str = _doc(
        "What to do with an unverified sender when neither credential nor account says: "
        "'auto' (pause campaign mail, drop the rest), reject, drop or pause.",
        "auto",
        choices=("auto", "reject", "drop", "pause"),
    )
    system_provider: str = _doc(
        "Provider used when an account has no route; empty: none. It must exist "
        "(checked by `relay serve` and `relay config check`).",
        "",
    )
    cache_seconds: float = _doc(
        "How often each process reads the policy generation (one tiny SELECT) to see "
        "whether anything policy, suppression or suspension decides by has changed: a "
        "change anywhere (API, CLI, another node) applies to the messages that start "
        "after at most this many seconds; 0: checked before every message.",
        0.5,
        ge=0,
        le=1,
    )
    cache_entries: int = _doc(
        "Decisions cached per process (per account and sender domain; least recently "
        "used go first); 0: no cache, every message reads the database.",
        10000,
        ge=0,
        le=1_000_000,
    )


@dataclass(frozen=True)
class ReputationSettings:
    """Per-account bounce and complaint rates (relay.reputation). SendGrid and
    SparkPost review accounts at about 5% bounces and 0.1% complaints; Gmail's
    sender guidelines ask for spam reports under 0.3%. Warn below, suspend at."""

    min_volume: int = _doc(
        "Delivered recipients a window needs before its rates are judged.", 500, ge=1
    )
    bounce_warn: float = _doc("Hard-bounce rate that warns the account.", 0.05, gt=0, le=1)
    bounce_suspend: float = _doc("Hard-bounce rate that suspends the account.", 0.10, gt=0, le=1)
    complaint_warn: float = _doc("Complaint rate that warns the account.", 0.001, gt=0, le=1)
    complaint_suspend: float = _doc("Complaint rate that suspends the account.", 0.003, gt=0, le=1)
    suspend_action: str = _doc(
        "A suspended account's new mail: 'reject' (550 5.7.1 at MAIL FROM) or "
        "'pause' (accepted and held).",
        "reject",
        choices=("reject", "pause"),
    )


@dataclass(frozen=True)
class DNSSettings:
    nameservers: tuple[str, ...] = _doc(
        "Resolvers for domain verification (IP addresses); empty: the system's.",
        (),
        check=_ip_addresses,
    )
    port: int = _doc("Port of those resolvers.", 53, ge=1, le=65535)
    timeout: float = _doc("Seconds a verification look-up may take.", 5.0, gt=0)


@dataclass(frozen=True)
class BillingSettings:
    price_per_1000: float = _doc("Price per thousand recipients on invoices.", 0.675, ge=0)


@dataclass(frozen=True)
class SuppressionSettings:
    at_rcpt: bool = _doc(
        "Refuse a suppressed recipient at RCPT TO (550 5.1.1), not only skip it at DATA.",
        False,
    )
    soft_bounce_limit: int = _doc(
        "Soft bounces in a row (since the address's last delivery) that suppress it.", 3, ge=1
    )
    soft_bounce_ttl: float = _doc("Seconds a soft-bounce suppression lasts.", 7 * 24 * 3600.0, gt=0)


@dataclass(frozen=True)
class SecretSettings:
    secret_key: Secret = _doc(  # noqa: RUF009 - immutable
        "Key that encrypts provider secrets at rest (RELAY_SECRET_KEY).", Secret("")
    )


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    listeners: tuple[ListenerSettings, ...] = ()
    tls: TLSSettings = field(default_factory=TLSSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    reputation: ReputationSettings = field(default_factory=ReputationSettings)
    billing: BillingSettings = field(default_factory=BillingSettings)
    dns: DNSSettings = field(default_factory=DNSSettings)
    suppression: SuppressionSettings = field(default_factory=SuppressionSettings)
    secrets: SecretSettings = field(default_factory=SecretSettings)
    source: str = ""

    @property
    def var_path(self) -> Path:
        return Path(self.server.var_dir)


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "tls": TLSSettings,
    "admin": AdminSettings,
    "webhooks": WebhookSettings,
    "server": ServerSettings,
    "limits": LimitSettings,
    "auth": AuthSettings,
    "queue": QueueSettings,
    "policy": PolicySettings,
    "reputation": ReputationSettings,
    "billing": BillingSettings,
    "dns": DNSSettings,
    "suppression": SuppressionSettings,
    "secrets": SecretSettings,
}


def _coerce(key: str, value: Any, default: Any, kind: str = "") -> Any:
    """Turn a TOML or environment value into the type of the default."""
    try:
        if kind == "int | str":  # a number or a word ("auto"): digits become the number
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(value)
            text = str(value).strip()
            return int(text) if text.lstrip("-").isdigit() else text
        if isinstance(default, Secret):
            return value if isinstance(value, Secret) else Secret(str(value))
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            if "str" in kind:  # the field's annotation, e.g. tuple[str, ...]
                return tuple(str(i).strip() for i in items if str(i).strip())
            return tuple(float(i) for i in items)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a valid {type(default).__name__}") from exc


def _did_you_mean(word: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """``; did you mean X?`` for the closest known name, or nothing (as git says it)."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]}?" if close else ""


def _section(
    name: str,
    cls: type[Any],
    table: Mapping[str, Any],
    env: Mapping[str, str],
    sources: dict[str, str] | None = None,
    origin: str = "",
) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for typo in sorted(set(table) - set(known)):
        raise ConfigError(f"unknown key {name}.{typo}{_did_you_mean(typo, known)}")
    values: dict[str, Any] = {}
    for fname, f in known.items():
        default = f.default
        env_key = f"RELAY_{name}_{fname}".upper()
        if name == "secrets":
            env_key = f"RELAY_{fname}".upper()
        key = f"[{name}] {fname}"
        source = "default"
        if env_key in env:
            key = env_key
            source = f"env {env_key}"
            values[fname] = _coerce(key, env[env_key], default, str(f.type))
        elif fname in table:
            source = origin or "file"
            values[fname] = _coerce(key, table[fname], default, str(f.type))
        _validate(key, values.get(fname, default), f.metadata.get("rules", {}))
        if sources is not None:
            sources[f"{name}.{fname}"] = source
    return cls(**values)


def parse_hostport(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _listeners(
    table: Mapping[str, Any],
    env: Mapping[str, str],
    sources: dict[str, str] | None = None,
    origin: str = "",
) -> tuple[ListenerSettings, ...]:
    out = []
    for name in table:
        if name not in LISTENER_NAMES:
            raise ConfigError(
                f"unknown listener listeners.{name}{_did_you_mean(name, LISTENER_NAMES)} "
                f"(known: {', '.join(LISTENER_NAMES)})"
            )
    for name in LISTENER_NAMES:
        raw = table.get(name, "")
        spec = {"listen": raw} if isinstance(raw, str) else dict(raw)
        for typo in sorted(set(spec) - {"listen", "allow_plaintext_auth"}):
            known = ("listen", "allow_plaintext_auth")
            raise ConfigError(f"unknown key listeners.{name}.{typo}{_did_you_mean(typo, known)}")
        env_key = f"RELAY_LISTENERS_{name.upper()}"
        source = (origin or "file") if name in table else "default"
        if env_key in env:
            spec["listen"] = env[env_key]
            source = f"env {env_key}"
        if sources is not None:
            sources[f"listeners.{name}"] = source
        if not spec.get("listen"):
            continue
        host, port = parse_hostport(f"[listeners] {name}", str(spec["listen"]))
        plain = _coerce(
            f"[listeners.{name}] allow_plaintext_auth",
            spec.get("allow_plaintext_auth", False),
            False,
        )
        out.append(ListenerSettings(name, host, port, plain))
    return tuple(out)


def _no_shared_ports(
    listeners: tuple[ListenerSettings, ...], admin: AdminSettings, webhooks: WebhookSettings
) -> None:
    """Two listeners on one address would fail at bind, after the others opened: say so now.

    A wildcard address (0.0.0.0, ::) takes the port on every address; port 0
    (any free port) never clashes.
    """
    named = [(f"[listeners] {item.name}", item.host, item.port) for item in listeners]
    for key, value in (("[admin] listen", admin.listen), ("[webhooks] listen", webhooks.listen)):
        if value:
            named.append((key, *parse_hostport(key, value)))
    wildcard = ("0.0.0.0", "::")
    for i, (key, host, port) in enumerate(named):
        for other, other_host, other_port in named[:i]:
            same = host == other_host or host in wildcard or other_host in wildcard
            if port and port == other_port and same:
                raise ConfigError(f"{key}: {host}:{port} is taken by {other} ({other_host}:{port})")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sources: dict[str, str] | None = None,
) -> Settings:
    """Read the TOML file (``path`` or ``RELAY_CONFIG``), then apply the environment.

    ``sources``, if given, is filled with where each key's value came from
    (``section.key`` to ``default``, ``file PATH`` or ``env RELAY_...``), for
    ``relay config check``.
    """
    env = os.environ if env is None else env
    path = path or env.get("RELAY_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    for key, value in (overrides or {}).items():
        data.setdefault(key, {}).update(value)
    known = [*_SECTIONS, "listeners"]
    for typo in sorted(set(data) - set(known)):
        raise ConfigError(f"unknown section {typo}{_did_you_mean(typo, known)}")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: {table!r} is not a [{name}] section")
    origin = f"file {path}" if path else "file"
    sections = {
        name: _section(name, cls, data.get(name, {}), env, sources, origin)
        for name, cls in _SECTIONS.items()
    }
    listeners = _listeners(data.get("listeners", {}), env, sources, origin)
    _no_shared_ports(listeners, sections["admin"], sections["webhooks"])
    if bool(sections["tls"].cert) != bool(sections["tls"].key):
        raise ConfigError("[tls] cert and key go together: set both, or neither")
    rep = sections["reputation"]
    for what in ("bounce", "complaint"):
        if getattr(rep, f"{what}_warn") > getattr(rep, f"{what}_suspend"):
            raise ConfigError(f"[reputation] {what}_warn must not be above {what}_suspend")
    return Settings(listeners=listeners, source=str(path or ""), **sections)


def describe() -> list[tuple[str, str, str]]:
    """Every key with its default and description, for docs and `relay config`."""
    rows = []
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((f"[{name}] {f.name}", repr(f.default), f.metadata.get("doc", "")))
    return rows


def _shown(value: Any) -> Any:
    """A value as `relay config check` shows it: secrets masked, URLs without passwords."""
    if isinstance(value, Secret):
        return "********" if value else ""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            return parts._replace(netloc=f"{user}:********@{host}").geturl()
    return value


def effective(settings: Settings, sources: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """Every key: its value as in force (secrets masked) and where it came from.

    ``sources`` is what ``load_settings(..., sources=...)`` filled in; a key it
    lacks is shown as coming from its default.
    """
    rows: list[tuple[str, Any, str]] = []
    for name in _SECTIONS:
        section = getattr(settings, name)
        for f in dataclasses.fields(section):
            key = f"{name}.{f.name}"
            rows.append((key, _shown(getattr(section, f.name)), sources.get(key, "default")))
    by_name = {item.name: item for item in settings.listeners}
    for name in LISTENER_NAMES:
        key = f"listeners.{name}"
        item = by_name.get(name)
        shown = f"{item.host}:{item.port}" if item else ""
        if item and item.allow_plaintext_auth:
            shown += " (plaintext AUTH allowed)"
        rows.append((key, shown, sources.get(key, "default")))
    return rows


def _toml_value(value: Any) -> str:
    if isinstance(value, Secret):
        value = value.reveal()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# What config/relay.toml listens on: the four SMTP ports of README's "Run it for real".
EXAMPLE_LISTENERS = {
    "smtp": ("0.0.0.0:25", "port 25, STARTTLS offered (server to server)"),
    "submissions": ("0.0.0.0:465", "implicit TLS (RFC 8314)"),
    "submission": ("0.0.0.0:587", "STARTTLS required before AUTH and MAIL (RFC 6409)"),
    "alt": ("0.0.0.0:2525", "STARTTLS offered, for clients whose network blocks 25 and 587"),
}


def example_toml() -> str:
    """A commented configuration file with every key at its default (config/relay.toml).

    Made from the declarations above, so it cannot leave a key out: a new key
    shows up here once it has its ``_doc``. Listeners are the one exception to
    "at its default": with none, the relay would not listen at all.
    """
    import textwrap

    def comment(text: str) -> list[str]:
        return textwrap.wrap(text, 98, initial_indent="# ", subsequent_indent="# ")

    lines = [
        "# Relay's configuration file, with every key at its default.",
        "#",
        "# `relay config check --config FILE` reads it as `relay serve` would, prints every",
        "# key's value and where it came from, and names the first mistake. Any key can be",
        "# set by the environment instead, as RELAY_<SECTION>_<KEY> (RELAY_DATABASE_URL),",
        "# which wins over this file; secrets are better kept there than here.",
        "# Regenerate with `relay config example > config/relay.toml`.",
        "",
        "[listeners]",
        '# name = "host:port"; leave one out (or set it to "") to turn it off. A listener',
        '# may also be a table: [listeners.alt] listen = "127.0.0.1:2525",',
        "# allow_plaintext_auth = true (AUTH without TLS: loopback use only).",
    ]
    for name, (listen, doc) in EXAMPLE_LISTENERS.items():
        lines.append(f"{name} = {_toml_value(listen)}  # {doc}")
    for name, cls in _SECTIONS.items():
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc", "")
            if name == "secrets":
                doc += " Empty: made once under var_dir; nodes sharing a database share it."
            lines += comment(doc)
            lines.append(f"{f.name} = {_toml_value(f.default)}")
    return "\n".join(lines) + "\n"


def env_names() -> list[str]:
    """Every environment variable that sets a key (``RELAY_SERVER_HOSTNAME``, ...)."""
    names = [f"RELAY_LISTENERS_{name.upper()}" for name in LISTENER_NAMES]
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            prefix = "RELAY" if name == "secrets" else f"RELAY_{name.upper()}"
            names.append(f"{prefix}_{f.name.upper()}")
    return names


def env_typos(env: Mapping[str, str]) -> list[str]:
    """``RELAY_*`` variables that set nothing but are one slip from a key's name.

    The environment holds other programs' variables too (and the command
    line's own: RELAY_URL, RELAY_TOKEN, secrets' ``*_FILE`` forms), so only a
    near miss is reported, and as a warning: it may be meant for something else.
    """
    known = env_names()
    found = []
    for name in sorted(env):
        if name.startswith("RELAY_") and name not in known and not name.endswith("_FILE"):
            hint = _did_you_mean(name, known, cutoff=0.85)  # RELAY_URL is not ..._DATABASE_URL
            if hint:
                found.append(f"{name} sets nothing{hint}")
    return found
