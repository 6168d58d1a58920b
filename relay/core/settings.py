"""Typed configuration: one TOML file plus ``RELAY_*`` environment variables.

Every key has a type, a default and a description (``describe()`` lists them).
Lookup order, as Starlette does it: environment, then file, then default. An
environment variable is ``RELAY_<SECTION>_<KEY>`` upper-cased
(``RELAY_DATABASE_URL``, ``RELAY_LIMITS_MAX_RECIPIENTS``). A bad value fails
with the key's name, never with a traceback from deep inside.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
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


def _section(name: str, cls: type[Any], table: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"[{name}]: unknown key(s) {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for fname, f in known.items():
        default = f.default
        env_key = f"RELAY_{name}_{fname}".upper()
        if name == "secrets":
            env_key = f"RELAY_{fname}".upper()
        key = f"[{name}] {fname}"
        if env_key in env:
            key = env_key
            values[fname] = _coerce(key, env[env_key], default, str(f.type))
        elif fname in table:
            values[fname] = _coerce(key, table[fname], default, str(f.type))
        _validate(key, values.get(fname, default), f.metadata.get("rules", {}))
    return cls(**values)


def parse_hostport(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _listeners(table: Mapping[str, Any], env: Mapping[str, str]) -> tuple[ListenerSettings, ...]:
    out = []
    for name, raw in table.items():
        if name not in LISTENER_NAMES:
            raise ConfigError(
                f"[listeners]: unknown listener {name!r} (known: {', '.join(LISTENER_NAMES)})"
            )
        spec = {"listen": raw} if isinstance(raw, str) else dict(raw)
        env_key = f"RELAY_LISTENERS_{name.upper()}"
        if env_key in env:
            spec["listen"] = env[env_key]
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


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (``path`` or ``RELAY_CONFIG``), then apply the environment."""
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
    unknown = set(data) - set(_SECTIONS) - {"listeners"}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    sections = {
        name: _section(name, cls, data.get(name, {}), env) for name, cls in _SECTIONS.items()
    }
    listeners = _listeners(data.get("listeners", {}), env)
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
