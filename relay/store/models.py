"""The database schema, portable between SQLite and PostgreSQL.

Nothing here is SQLite-only: types are SQLAlchemy's generic ones, times are
timezone-aware UTC, and ids are strings or integers made by the database.
Migrations live in ``relay/store/migrations`` and are applied by ``relay
migrate`` (and at start-up).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names so migrations work the same on both engines.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        # SQLite stores text: keep it naive UTC so that it sorts and compares.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    """An agency (parent_id is NULL) or one of its sub-accounts.

    Names are unique within an agency's tree (the agency and its
    sub-accounts), and an agency's name among agencies, so that creating a
    name tells a tenant nothing about other trees (``relay.service.scope``
    resolves names, and ``AGENCY:NAME`` where one is ambiguous).
    """

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("tree_id", "name"),
        Index(
            "uq_accounts_agency_name",
            "name",
            unique=True,
            sqlite_where=text("parent_id IS NULL"),
            postgresql_where=text("parent_id IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    # The agency at the root of this account's tree: itself for an agency.
    tree_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # reject | drop | pause, or NULL for the default by credential purpose.
    unverified_policy: Mapped[str | None] = mapped_column(String(10))
    default_provider_id: Mapped[int | None] = mapped_column(Integer)
    subaccount_provider_id: Mapped[int | None] = mapped_column(Integer)
    assigned_provider_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # -- the feedback loop (migration 0005) --
    # Set while the account is suspended for its bounce or complaint rate.
    suspended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    suspended_reason: Mapped[str | None] = mapped_column(Text)
    # Rates count from here (migration 0006d): set by `relay account resume`,
    # so the events that suspended the account do not suspend it again.
    reputation_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Where notifications go: addresses (mail from the provider's test
    # address) and a URL (JSON, signed with HMAC-SHA256 by notify_secret,
    # sealed with RELAY_SECRET_KEY like provider secrets).
    notify_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    notify_url: Mapped[str | None] = mapped_column(String(2000))
    notify_secret: Mapped[str | None] = mapped_column(Text)
    # An agency's suppression list also applies to its sub-accounts.
    share_suppressions: Mapped[bool] = mapped_column(Boolean, default=False)
    # RFC 8058 one-click unsubscribe on campaign mail.
    unsubscribe: Mapped[bool] = mapped_column(Boolean, default=False)
    # Provider tracking; NULL leaves the provider's own setting.
    open_tracking: Mapped[bool | None] = mapped_column(Boolean)
    click_tracking: Mapped[bool | None] = mapped_column(Boolean)
    # -- sending limits (migration 0007a; relay.limits): NULL is no limit --
    max_messages_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_messages_per_hour: Mapped[int | None] = mapped_column(Integer)
    max_recipients_per_hour: Mapped[int | None] = mapped_column(Integer)
    max_recipients_per_day: Mapped[int | None] = mapped_column(Integer)
    max_sessions: Mapped[int | None] = mapped_column(Integer)

    parent: Mapped[Account | None] = relationship(remote_side=[id])


class Domain(Base):
    __tablename__ = "domains"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    account: Mapped[Account] = relationship()


class Credential(Base):
    """An SMTP user ``local@domain`` of a sending domain."""

    __tablename__ = "credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(320), unique=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(20), default="transactional")
    unverified_policy: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # -- sending limits (migration 0007a; relay.limits): NULL is no limit --
    max_messages_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_messages_per_hour: Mapped[int | None] = mapped_column(Integer)
    max_recipients_per_hour: Mapped[int | None] = mapped_column(Integer)
    max_recipients_per_day: Mapped[int | None] = mapped_column(Integer)
    max_sessions: Mapped[int | None] = mapped_column(Integer)

    domain: Mapped[Domain] = relationship()


class Sender(Base):
    """An address or a whole domain verified for an account."""

    __tablename__ = "senders"
    __table_args__ = (UniqueConstraint("account_id", "pattern"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # "user@example.com" or "example.com" (a domain covers every address in it).
    pattern: Mapped[str] = mapped_column(String(320))
    verified: Mapped[bool] = mapped_column(Boolean, default=True)
    dns_token: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # How it was verified (NULL while not verified): ``operator`` (say-so),
    # ``dns`` (TXT record), ``confirmation`` (a code mailed to the address).
    # Rows verified before migration 0003 are ``tenant`` (the audit log shows a
    # tenant token's say-so) or ``unreviewed``: ``relay sender list --review``.
    method: Mapped[str | None] = mapped_column(String(20))
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # An agency's own proof, extended to its sub-account: the agency's id.
    proof_account_id: Mapped[int | None] = mapped_column(Integer)


class SenderConfirmation(Base):
    """A code mailed to an address to prove the account may send as it.

    Only an HMAC of the code is stored. One row per (account, address): a new
    code replaces the old. ``tries`` counts answers; ``used_at`` ends it.
    ``sends`` counts codes mailed since ``window_start`` (a day's cap).
    """

    __tablename__ = "sender_confirmations"
    __table_args__ = (UniqueConstraint("account_id", "address"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    tries: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sends: Mapped[int] = mapped_column(Integer, default=1)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Provider(Base):
    """An outbound service an account sends through."""

    __tablename__ = "providers"
    # Names unique within the owner's agency tree, as accounts' are.
    __table_args__ = (UniqueConstraint("tree_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    tree_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the owner's tree
    kind: Mapped[str] = mapped_column(String(20))
    # Non-secret options (hosts, ports, TLS mode, ip pool, test address, domain).
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # API key and SMTP password, encrypted with RELAY_SECRET_KEY.
    secrets: Mapped[str | None] = mapped_column(Text)
    domain: Mapped[str | None] = mapped_column(String(253), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The unguessable path segment of this provider's event webhook
    # (``relay provider webhook NAME``); its signing key or basic-auth
    # credentials are among the sealed secrets (``webhook_key``).
    webhook_token: Mapped[str | None] = mapped_column(String(64), unique=True)


class Message(Base):
    """One accepted message: its envelope, state and route. The bytes are apart."""

    __tablename__ = "messages"
    __table_args__ = (
        # Workers look for due messages by state and time: indexed so a
        # deferred backlog never slows the claim of fresh mail.
        Index("ix_messages_due", "state", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    credential_id: Mapped[int | None] = mapped_column(Integer)
    mail_from: Mapped[str] = mapped_column(String(320))
    header_from: Mapped[str | None] = mapped_column(String(998))
    # queued | deferred | paused | delivered | failed | dropped
    state: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(Text)
    provider_id: Mapped[int | None] = mapped_column(Integer)
    campaign: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    locked_by: Mapped[str | None] = mapped_column(String(100))
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class MessageContent(Base):
    """The message bytes, kept out of the queue table so claims scan narrow rows."""

    __tablename__ = "message_contents"
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Recipient(Base):
    __tablename__ = "recipients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(3))  # to | cc | bcc
    # pending | delivered | failed | dropped
    state: Mapped[str] = mapped_column(String(10), default="pending")
    reply: Mapped[str | None] = mapped_column(Text)


class Attempt(Base):
    """One try of one provider by one transport."""

    __tablename__ = "attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(200))
    transport: Mapped[str] = mapped_column(String(10))  # api | smtp | file
    result: Mapped[str] = mapped_column(String(12))  # delivered | transient | permanent | ...
    code: Mapped[str | None] = mapped_column(String(20))
    text: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    duration: Mapped[float] = mapped_column(Float)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Usage(Base):
    """The billing ledger: append-only, one row per message, class and event.

    ``event`` is ``accepted`` (written in the spool's transaction) or the
    outcome (``delivered``, ``dropped``, ``failed``) written once, when the
    message reaches it. The unique key makes a repeated write fail rather than
    count twice, whatever retries, fallbacks, restarts or nodes do.
    """

    __tablename__ = "usage"
    __table_args__ = (
        UniqueConstraint("message_id", "kind", "event", name="uq_usage_event"),
        Index("ix_usage_account_day", "account_id", "day"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    day: Mapped[dt.date] = mapped_column(Date)
    message_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(3))
    event: Mapped[str] = mapped_column(String(10))
    recipients: Mapped[int] = mapped_column(Integer)


class ApiToken(Base):
    """A bearer token of the admin API, stored only as its SHA-256 digest.

    ``operator`` tokens see every account; any other token sees its account
    and, when that account is an agency, the agency's sub-accounts.
    """

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Hex SHA-256 of the whole token: looked up by equality, never reversed.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so that a listing can name it.
    prefix: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ConsoleUser(Base):
    """A person who signs in to the web console (``relay user create``).

    Acts as its account with that account's scope (an agency's user sees its
    sub-accounts), or as the operator with ``operator``. ``role`` viewer may
    read, admin may also change. The password is an argon2id hash, as SMTP's.
    """

    __tablename__ = "console_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    role: Mapped[str] = mapped_column(String(10))  # admin | viewer
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_sign_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ConsoleSession(Base):
    """A signed-in browser: the cookie's SHA-256 digest (the cookie is never stored)."""

    __tablename__ = "console_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("console_users.id", ondelete="CASCADE"), index=True
    )
    # Sent in every form and compared on every POST (synchroniser token).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEntry(Base):
    """One change asked through the API or the command line, and how it ended.

    Written before the change (``result`` = ``pending``) and completed after
    it, so a change is never made without its entry. Never holds a secret.
    """

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # "operator", "token:<id>" or "user:<id>" (console); via "cli", "api", "console" or
    # "local" (a direct call).
    actor: Mapped[str] = mapped_column(String(100))
    via: Mapped[str] = mapped_column(String(10))
    # The account of the token that acted, if any: its tenants may read the entry.
    actor_account_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(400))
    # The account the target belongs to, when it exists and the actor may see it.
    account_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # pending | ok | invalid | not_found | conflict | forbidden | error
    result: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """One provider event about one recipient, stored once per provider event id.

    ``message_id`` and ``recipient_id`` come from the ids Relay sends along
    with each delivery (SendGrid ``custom_args``, SparkPost ``metadata``), not
    from the event's address alone; ``account_id`` is the message's account.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("provider_id", "provider_event_id", name="uq_events_provider_event"),
        # Reputation reads an account's events by type over a window.
        Index("ix_events_account_type_at", "account_id", "type", "at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[int] = mapped_column(Integer)
    provider_event_id: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    message_id: Mapped[str | None] = mapped_column(String(32), index=True)
    recipient_id: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(320))
    # delivered | deferred | bounce | dropped | complaint | unsubscribe | open | click
    type: Mapped[str] = mapped_column(String(20))
    bounce_class: Mapped[str | None] = mapped_column(String(10))  # hard | soft
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookBatch(Base):
    """A batch of events already taken (SparkPost retries a batch by its id)."""

    __tablename__ = "webhook_batches"
    __table_args__ = (UniqueConstraint("provider_id", "batch_id", name="uq_webhook_batches"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Suppression(Base):
    """An address an account does not send to, and why."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("account_id", "address", name="uq_suppressions_address"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))  # as compared: see relay.core.addresses
    # hard_bounce | soft_bounce | complaint | unsubscribe | manual
    reason: Mapped[str] = mapped_column(String(20))
    # event | unsubscribe | manual | import | sync
    source: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # soft bounces


class PolicyGeneration(Base):
    """One row, one counter: it moves in the same transaction as any write that
    changes what the message path decides (relay.store.generation). Triggers of
    migration 0008c move it, whoever writes: the service layer, the webhooks,
    the reputation monitor, an operator's SQL."""

    __tablename__ = "policy_generation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Notification(Base):
    """One thing an account was told (or is to be told), deduplicated by key."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # campaign_paused | reputation_warning | suspended | provider_failed | circuit_open
    kind: Mapped[str] = mapped_column(String(40))
    # e.g. "campaign_paused:<account>:<campaign>:<day>": one notification per key.
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    subject: Mapped[str] = mapped_column(String(300))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # pending | sent | failed | none (no address or URL set)
    mail_state: Mapped[str] = mapped_column(String(10), default="pending")
    mail_error: Mapped[str | None] = mapped_column(Text)
    webhook_state: Mapped[str] = mapped_column(String(10), default="pending")
    webhook_error: Mapped[str | None] = mapped_column(Text)


class LimitCounter(Base):
    """Units of a limit taken in one window, by every process of every node.

    ``subject`` is ``a:<account id>`` or ``c:<credential id>``; ``name`` a
    limit (``relay.core.limits``); ``period`` the window's first second (UTC
    epoch; 0 for the row that serialises session admissions). Processes take
    leases of units with one conditional UPDATE (``used + n <= limit``), so
    the sum over processes never passes the limit (``relay.limits.leases``).
    """

    __tablename__ = "limit_counters"
    subject: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    period: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, default=0)


class LimitSession(Base):
    """Open SMTP sessions of a subject held by one process (``holder``).

    Refreshed by the holder's heartbeat; a row past ``expires_at`` (epoch
    seconds) is a crashed holder's and no longer counts.
    """

    __tablename__ = "limit_sessions"
    subject: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[int] = mapped_column(BigInteger)


class ProviderThrottle(Base):
    """A provider's shared sending budget: the token bucket of its ``max_rate``
    and the pause its own 429/Retry-After asked for (``relay.delivery.throttle``).

    Times are epoch seconds of the nodes' clocks (NTP-synchronised, like the
    leases). No foreign key: a removed provider's row is inert.
    """

    __tablename__ = "provider_throttle"
    provider_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tokens: Mapped[float] = mapped_column(Float, default=0.0)
    refilled_at: Mapped[float] = mapped_column(Float, default=0.0)
    paused_until: Mapped[float | None] = mapped_column(Float)
    # The share of max_rate in force: halved by each pause, back to 1 over a minute.
    rate_factor: Mapped[float] = mapped_column(Float, default=1.0)


class ProviderLease(Base):
    """Connection slots of a provider's ``max_connections`` held by one process
    (its worker token) until ``expires_at``: a killed process frees them then."""

    __tablename__ = "provider_leases"
    provider_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float)
