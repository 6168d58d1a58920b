"""The API's request and response bodies.

Request fields carry only the shape of the input (a type, no control
characters, a generous length bound so nothing huge reaches the database)
and, for choices, the service's own list as an ``enum`` in the document.
The rules themselves (name lengths, what a domain is, password length, the
credential limit) live in ``relay.service`` and come back as 422 with the
field named; they are not repeated here.

Secrets appear in exactly two places: ``NewPassword.password`` (once, at
create or reset) and nowhere else. No response carries a hash.
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
    sender: Name | None = Field(None, description="An address, or a domain for all its addresses")
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


class MessageDetail(MessageOut):
    header_from: str | None
    campaign: str | None
    expires_at: dt.datetime
    finished_at: dt.datetime | None
    recipients: list[RecipientOut]
    history: list[AttemptOut]


class HeldIn(Request):
    """Paused mail in bulk: by sender, by account, or both."""

    sender: Name | None = None
    account: Name | None = None


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
    actor: str = Field(description="operator, or token:<id>")
    via: str = Field(json_schema_extra={"enum": ["api", "cli", "local"]})
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
