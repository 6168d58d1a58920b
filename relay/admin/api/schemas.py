"""The API's request and response bodies.

Request fields carry only the shape of the input (a type, no control
characters, a generous length bound so nothing huge reaches the database)
and, for choices, the service's own list as an ``enum`` in the document.
The rules themselves (name lengths, what a domain is, password length, the
credential limit) live in ``relay.service`` and come back as 422 with the
field named; they are not repeated here.

Secrets appear in exactly two places: ``NewPassword.password`` (once, at
create or reset) and ``AccountEdited.notify_secret`` (once, when a notify URL
is set), and nowhere else. No response carries a hash.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from relay.accounting.report import FORMATS
from relay.service.accounts import METHODS, POLICIES, PURPOSES, REVIEW
from relay.service.pages import MAX_LIMIT
from relay.service.queue import STATES

# No ASCII control characters (a NUL cannot even be stored by PostgreSQL).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def text(max_length: int = 320, min_length: int = 1) -> Any:
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=PRINTABLE)


def choice(values: tuple[str, ...]) -> Any:
    """Document the service's choices; the service checks them (422 with the field)."""
    return Field(json_schema_extra={"enum": list(values)})


Name = Annotated[str, text()]
Policy = Annotated[str, choice(POLICIES)]
Purpose = Annotated[str, choice(PURPOSES)]
State = Annotated[str, choice(STATES)]
Format = Annotated[str, choice(FORMATS)]


class Request(BaseModel):
    """A request body or query: unknown fields are refused, so that a typo
    (``?stat=paused``) is an error rather than a filter silently dropped."""

    model_config = ConfigDict(extra="forbid")


Cursor = Annotated[str, StringConstraints(max_length=400, pattern=r"^[A-Za-z0-9_-]*$")]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT)]
# Queue filters: a generous bound here, the service's rules (1 to 200) come back as 422.
Reason = Annotated[str, text(1000)]
Campaign = Annotated[str, text(1000)]


# -- accounts, domains, credentials, senders ----------------------------------------


class AccountIn(Request):
    name: Name
    agency: Name | None = Field(None, description="Make it a sub-account of this agency")
    policy: Policy | None = Field(None, description="What to do with unverified senders")


class AccountOut(BaseModel):
    name: str
    agency: str | None
    kind: str = Field(json_schema_extra={"enum": ["agency", "sub-account"]})
    unverified_policy: str | None
    created_at: dt.datetime
    notify: list[str] = Field(default_factory=list, description="Notification addresses")
    notify_url: str | None = Field(None, description="Signed JSON notifications (never the secret)")
    share_suppressions: bool = False
    unsubscribe: bool = False
    open_tracking: bool | None = Field(None, description="null: the provider's own setting")
    click_tracking: bool | None = None
    suspended_at: dt.datetime | None = None
    suspended_reason: str | None = None


Switch = Annotated[str, choice(("on", "off"))]
Tracking = Annotated[str, choice(("on", "off", "default"))]


class AccountPatch(Request):
    """Only the fields given change; ``notify: []`` and ``notify_url: ""`` clear."""

    notify: list[Annotated[str, text()]] | None = Field(None, max_length=100)
    notify_url: Annotated[str, text(2000, 0)] | None = Field(
        None, description="https (http to loopback); a new signing secret is returned once"
    )
    share_suppressions: Switch | None = Field(None, description="Agencies only")
    unsubscribe: Switch | None = None
    open_tracking: Tracking | None = None
    click_tracking: Tracking | None = None


class AccountEdited(AccountOut):
    changed: list[str]
    notify_secret: str | None = Field(
        None, description="The new secret that signs notification POSTs, shown this once"
    )


class NotificationOut(BaseModel):
    id: int
    kind: str
    subject: str
    detail: str | None
    created_at: dt.datetime
    mail_state: str = Field(json_schema_extra={"enum": ["pending", "sent", "failed", "none"]})
    mail_error: str | None
    webhook_state: str = Field(json_schema_extra={"enum": ["pending", "sent", "failed", "none"]})
    webhook_error: str | None


class ResumeOut(BaseModel):
    account: str
    was_suspended: bool
    released: list[str] = Field(description="Messages held while suspended, now queued")


class DomainIn(Request):
    domain: Name


class DomainOut(BaseModel):
    name: str
    account: str
    created_at: dt.datetime


class CredentialIn(Request):
    username: Name = Field(description="local@domain; the domain must be the account's")
    password: Annotated[str, text(1000)] | None = Field(
        None, description="At least 12 characters; omit to have one generated"
    )
    purpose: Purpose = "transactional"
    policy: Policy | None = None


class PasswordIn(Request):
    password: Annotated[str, text(1000)] | None = Field(
        None, description="At least 12 characters; omit to have one generated"
    )


class NewPassword(BaseModel):
    username: str
    password: str | None = Field(
        description="The generated password, shown this once; null when the request chose it"
    )


class Deleted(BaseModel):
    username: str


class CredentialOut(BaseModel):
    username: str
    purpose: str
    unverified_policy: str | None
    created_at: dt.datetime
    password_set_at: dt.datetime


class SenderIn(Request):
    sender: Name = Field(description="An address, a domain, or *@domain")


class SenderOut(BaseModel):
    sender: str
    kind: str = Field(json_schema_extra={"enum": ["address", "domain"]})
    verified: bool
    method: str | None = Field(
        json_schema_extra={"enum": [*METHODS, *REVIEW]},
        description="How it was verified; null while not verified. `tenant` and "
        "`unreviewed`: verified before proof was required, for the operator to review",
    )
    verified_at: dt.datetime | None
    proved_by: str | None = Field(
        description="The agency whose own proof verified it for this sub-account; null: its own"
    )


class ReviewedSenderOut(SenderOut):
    account: str


class SenderQuery(Request):
    review: bool = Field(False, description="Only senders verified without proof (to review)")


class CodeSent(BaseModel):
    sender: str
    state: str = Field(json_schema_extra={"enum": ["pending"]})
    sent_from: str = Field(description="The code comes from this address")
    expires_at: dt.datetime


class CodeIn(Request):
    code: Annotated[str, text(40)] = Field(description="The code mailed to the address")


class DnsIn(Request):
    domain: Name


class DnsOut(BaseModel):
    domain: str
    record: str = Field(description="Publish a TXT record at this name ...")
    value: str = Field(description="... with this value")
    verified: bool


# -- the queue ---------------------------------------------------------------------


class QueueQuery(Request):
    state: State | None = None
    account: Name | None = None
    sender: Name | None = Field(
        None,
        description="Envelope sender or header From: an address, or a domain for all its addresses",
    )
    reason: Reason | None = Field(None, description="Words the reason contains (any case)")
    campaign: Campaign | None = Field(None, description="The campaign, exactly")
    cursor: Cursor | None = Field(None, description="`next_cursor` of the page before")
    limit: Limit = 100


class MessageOut(BaseModel):
    id: str
    state: str
    reason: str | None
    account: str
    mail_from: str
    size: int
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


class RecipientOut(BaseModel):
    address: str
    kind: str
    state: str
    reply: str | None


class AttemptOut(BaseModel):
    at: dt.datetime
    provider: str
    transport: str
    result: str
    code: str | None
    text: str | None
    duration: float


class EventOut(BaseModel):
    """What a provider reported about one recipient, from its event webhook."""

    at: dt.datetime
    type: str = Field(
        description="delivered, deferred, bounce, dropped, complaint, unsubscribe, open or click"
    )
    address: str
    bounce_class: str | None = Field(description="hard or soft, for a bounce")
    detail: str | None
    provider: str | None


class MessageDetail(MessageOut):
    header_from: str | None
    campaign: str | None
    expires_at: dt.datetime
    finished_at: dt.datetime | None
    recipients: list[RecipientOut]
    history: list[AttemptOut]
    events: list[EventOut] = Field(default_factory=list)


class HeldIn(Request):
    """Paused mail in bulk, selected as the queue listing's filters select it."""

    sender: Name | None = None
    account: Name | None = None
    reason: Reason | None = Field(None, description="Words the reason contains (any case)")
    campaign: Campaign | None = Field(None, description="The campaign, exactly")


class Moved(BaseModel):
    messages: list[str] = Field(description="Queue ids of the messages this changed")


# -- usage, audit, health ------------------------------------------------------------


class ClassCounts(BaseModel):
    recipients: int
    delivered: int
    dropped: int
    failed: int
    pending: int


class UsageLine(ClassCounts):
    account: str
    agency: str
    type: str = Field(json_schema_extra={"enum": ["agency", "sub-account", "agency-total"]})
    messages: int
    cost: str = Field(description="Decimal, 4 places")
    classes: dict[str, ClassCounts]


class UsageReport(BaseModel):
    first_day: dt.date | None
    last_day: dt.date | None
    price_per_1000: str
    cost_rounding: str
    lines: list[UsageLine]


class UsageQuery(Request):
    account: Name | None = Field(None, description="An agency brings its sub-accounts")
    first: Annotated[str, text(40)] | None = Field(
        None, alias="from", description="First UTC day, YYYY-MM-DD"
    )
    last: Annotated[str, text(40)] | None = Field(
        None, alias="to", description="Last UTC day (inclusive)"
    )
    format: Format = "json"


class AuditQuery(Request):
    account: Name | None = None
    cursor: Cursor | None = None
    limit: Limit = 100


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str = Field(description="operator, token:<id>, or user:<id> (a console user)")
    via: str = Field(json_schema_extra={"enum": ["api", "cli", "local", "console"]})
    action: str
    target: str
    account: str | None
    result: str
    detail: str | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(json_schema_extra={"enum": ["ok", "unavailable"]})
    checks: dict[str, bool]


# -- suppression lists ----------------------------------------------------------------

SUPPRESSION_REASONS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual")
ADD_REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")


class SuppressionQuery(Request):
    reason: Annotated[str, choice(SUPPRESSION_REASONS)] | None = None
    contains: Annotated[str, text(320)] | None = Field(
        None, description="Only addresses containing this text"
    )
    offset: Annotated[int, Field(ge=0, le=10**9)] = 0
    limit: Limit = 100


class SuppressionIn(Request):
    address: Name = Field(description="The address (domain compared in any case)")
    reason: Annotated[str, choice(ADD_REASONS)] = "manual"
    detail: Annotated[str, text(2000)] | None = None


class SuppressionOut(BaseModel):
    address: str
    reason: str = Field(json_schema_extra={"enum": list(SUPPRESSION_REASONS)})
    source: str = Field(description="event | unsubscribe | manual | import | sync")
    created_at: dt.datetime
    expires_at: dt.datetime | None = Field(description="Soft bounces only")
    detail: str | None


class SuppressionAdded(SuppressionOut):
    changed: bool = Field(
        description="false: the address was already suppressed for an equal or stronger reason"
    )


class SuppressionPage(BaseModel):
    items: list[SuppressionOut]
    total: int = Field(description="Entries matching the filter, over all pages")
    offset: int


# -- sending limits ------------------------------------------------------------------

Spec = Annotated[str, text(40)]


class LimitsPatch(Request):
    """Only the fields given change. ``max_messages``: ``N/min`` or ``N/hour`` (a list
    for both); ``max_recipients``: ``N/hour`` or ``N/day``; ``off`` clears every
    window of its kind, ``off/min`` one. ``max_sessions``: a number or ``off``."""

    max_messages: list[Spec] | Spec | None = Field(None, examples=["100/min"])
    max_recipients: list[Spec] | Spec | None = Field(None, examples=["50000/day"])
    max_sessions: int | Spec | None = Field(None, examples=[5])


class LimitUseOut(BaseModel):
    limit: str = Field(
        json_schema_extra={
            "enum": [
                "messages_per_minute",
                "messages_per_hour",
                "recipients_per_hour",
                "recipients_per_day",
                "sessions",
            ]
        }
    )
    value: str = Field(description="As written: 100/min, 50000/day, 5")
    max: int
    used: int = Field(
        description="Taken in the current window by every process (sent, plus units "
        "leased and not yet spent); sessions: open now"
    )
    remaining: int
    resets_at: str | None = Field(description="When the window ends (UTC); null for sessions")


class LimitsOut(BaseModel):
    subject: str = Field(description='"account NAME" or "credential USER@DOMAIN"')
    limits: list[LimitUseOut]
    changed: list[str] = Field(default_factory=list)
