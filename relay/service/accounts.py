"""Accounts, sending domains, SMTP credentials and verified senders.

The one place these rules live: the command line (and later the admin API)
call these functions, which raise ``Invalid``, ``NotFound`` or ``Conflict``
with a message fit to show the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relay.auth.passwords import Hasher, generate_password
from relay.core.addresses import check_domain, check_sender, sender_matches, split_username
from relay.core.errors import Conflict, Invalid, NotFound, OperatorOnly
from relay.queue import held
from relay.service import dnsverify, scope
from relay.service.audit import arg, audited
from relay.store.models import Account, Credential, Domain, Sender, utcnow

if TYPE_CHECKING:
    import dns.resolver

PURPOSES = ("transactional", "campaign")
POLICIES = ("reject", "drop", "pause")


@dataclass(frozen=True)
class NewPassword:
    username: str
    password: str  # shown once, never stored in clear


def get_account(session: Session, name: str) -> Account:
    """The account ``name`` (or ``AGENCY:NAME``) as the current actor sees it."""
    found = scope.find_account(session, name)
    account = session.get(Account, found) if found is not None else None
    if account is None:
        raise NotFound(f"account {name!r} does not exist")
    return account


def check_name(name: str, what: str) -> str:
    """A new account or provider name: 1 to 200 characters, no ``:`` (it qualifies names)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid(f"{what} name must be 1 to 200 characters", "name")
    if scope.QUALIFIER in name:
        raise Invalid(f"{what} name may not contain {scope.QUALIFIER!r}", "name")
    return name


@audited("account.create", arg("name"), scope.of_new_account("agency"))
def create_account(
    engine: Engine, name: str, agency: str | None = None, policy: str | None = None
) -> Account:
    name = check_name(name, "account")
    if policy is not None and policy not in POLICIES:
        raise Invalid(f"policy must be one of {', '.join(POLICIES)}", "policy")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        parent = get_account(session, agency) if agency else None
        if parent is not None and parent.parent_id is not None:
            raise Invalid(f"{agency!r} is a sub-account; an agency has no parent", "agency")
        # Unique within the tree (a new agency's tree is its own, so among agencies).
        same = select(Account.id).where(Account.name == name)
        same = same.where(
            Account.tree_id == parent.tree_id if parent else Account.parent_id.is_(None)
        )
        if session.scalar(same) is not None:
            raise Conflict(f"account {name!r} already exists")
        account = Account(
            name=name,
            parent_id=parent.id if parent else None,
            tree_id=parent.tree_id if parent else None,
            unverified_policy=policy,
        )
        session.add(account)
        if parent is None:
            session.flush()  # an agency is the root of its own tree
            account.tree_id = account.id
    return account


def list_accounts(engine: Engine) -> list[tuple[Account, str | None]]:
    with Session(engine) as session:
        accounts = list(session.scalars(select(Account).order_by(Account.name)))
        names = {a.id: a.name for a in accounts}
        return [(a, names.get(a.parent_id) if a.parent_id else None) for a in accounts]


@audited("domain.add", arg("domain"), scope.of_account("account"))
def add_domain(engine: Engine, domain: str, account: str) -> Domain:
    domain = check_domain(domain)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        owner = get_account(session, account)
        if session.scalar(select(Domain.id).where(Domain.name == domain)) is not None:
            raise Conflict(f"domain {domain} already belongs to an account")
        row = Domain(name=domain, account_id=owner.id)
        session.add(row)
    return row


@audited("credential.create", arg("username"), scope.of_credential_domain("username"))
def create_credential(
    engine: Engine,
    hasher: Hasher,
    username: str,
    password: str | None,
    purpose: str = "transactional",
    limit: int = 5,
    policy: str | None = None,
) -> NewPassword:
    local, domain_name = split_username(username)
    if purpose not in PURPOSES:
        raise Invalid(f"purpose must be one of {', '.join(PURPOSES)}", "purpose")
    if policy is not None and policy not in POLICIES:
        raise Invalid(f"policy must be one of {', '.join(POLICIES)}", "policy")
    password = _password(password)
    full = f"{local}@{domain_name}"
    with Session(engine) as session, session.begin():
        domain = session.scalar(select(Domain).where(Domain.name == domain_name).with_for_update())
        if domain is None:
            raise NotFound(
                f"domain {domain_name} is not a sending domain of any account "
                f"(add it with: relay domain add {domain_name} --account NAME)"
            )
        if session.scalar(select(Credential.id).where(Credential.username == full)):
            raise Conflict(f"credential {full} already exists")
        count = session.scalar(select(func.count()).where(Credential.domain_id == domain.id))
        if (count or 0) >= limit:
            raise Conflict(
                f"domain {domain_name} already has {limit} credentials, the most "
                "a domain may have; delete one first"
            )
        session.add(
            Credential(
                username=full,
                domain_id=domain.id,
                purpose=purpose,
                unverified_policy=policy,
                password_hash=hasher.hash(password),
            )
        )
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict(f"credential {full} already exists") from exc
    return NewPassword(full, password)


def _password(password: str | None) -> str:
    if password is None:
        return generate_password()
    if len(password) < 12:
        raise Invalid("password must be at least 12 characters", "password")
    if len(password) > 256:
        raise Invalid("password must be at most 256 characters", "password")
    return password


def _credential(session: Session, username: str) -> Credential:
    local, domain = split_username(username)
    row = session.scalar(select(Credential).where(Credential.username == f"{local}@{domain}"))
    if row is None:
        raise NotFound(f"credential {local}@{domain} does not exist")
    return row


@audited("credential.reset", arg("username"), scope.of_credential("username"))
def reset_credential(
    engine: Engine, hasher: Hasher, username: str, password: str | None
) -> NewPassword:
    password = _password(password)
    with Session(engine) as session, session.begin():
        row = _credential(session, username)
        # A new hash makes every cached login of the old password unreachable.
        row.password_hash = hasher.hash(password)
        row.updated_at = utcnow()
        name = row.username
    return NewPassword(name, password)


@audited("credential.delete", arg("username"), scope.of_credential("username"))
def delete_credential(engine: Engine, username: str) -> str:
    with Session(engine) as session, session.begin():
        row = _credential(session, username)
        name = row.username
        session.delete(row)
    return name


def list_credentials(engine: Engine, domain: str) -> list[Credential]:
    domain = check_domain(domain)
    with Session(engine) as session:
        row = session.scalar(select(Domain).where(Domain.name == domain))
        if row is None:
            raise NotFound(f"domain {domain} does not exist")
        return list(
            session.scalars(
                select(Credential)
                .where(Credential.domain_id == row.id)
                .order_by(Credential.username)
            )
        )


# How a verified sender was proved; the last two mark rows verified before proof
# was required (migration 0003), for the operator to review.
METHODS = ("operator", "dns", "confirmation")
REVIEW = ("tenant", "unreviewed")
# What an agency may extend to its sub-accounts: a proof of its own.
PROOFS = ("dns", "confirmation")

SAY_SO_REFUSED = (
    "only the operator verifies a sender by say-so; prove it instead: a domain by "
    "a DNS TXT record (relay sender verify-dns), an address by a code mailed to it "
    "(relay sender send-code, then relay sender confirm)"
)


@audited("sender.verify", arg("pattern"), scope.of_account("account"))
def verify_sender(engine: Engine, pattern: str, account: str) -> Sender:
    """Verify a sender by say-so: the operator's word (the command line on the
    host, an operator token), or an agency's for its sub-account of a sender
    the agency has proved on its own account (by DNS or a mailed code; the
    row records that proof). A tenant's own word is refused (``OperatorOnly``,
    403): it proves a domain by DNS and an address by a mailed code, as
    SendGrid's Sender Authentication and Single Sender Verification do.
    """
    pattern = check_sender(pattern)
    actor = scope.current()
    with Session(engine, expire_on_commit=False) as session, session.begin():
        owner = get_account(session, account)
        row = session.scalar(
            select(Sender).where(Sender.account_id == owner.id, Sender.pattern == pattern)
        )
        if actor.scope.everything:
            method, proof = "operator", None
        elif row is not None and row.verified:
            return row  # verified already: nothing to prove again
        else:
            method, proof = _agency_proof(session, actor.account_id, owner, pattern)
        if row is None:
            row = Sender(account_id=owner.id, pattern=pattern)
            session.add(row)
        row.verified, row.method, row.verified_at = True, method, utcnow()
        row.proof_account_id = proof
        account_id = owner.id
    _resume_paused(engine, account_id)
    return row


def _agency_proof(
    session: Session, agency_id: int | None, owner: Account, pattern: str
) -> tuple[str, int]:
    """The method of the proof the acting agency holds for ``pattern`` (its own
    domain proof covers the domain's addresses), for one of its sub-accounts."""
    if agency_id is not None and owner.parent_id == agency_id:
        proved = session.execute(
            select(Sender.pattern, Sender.method).where(
                Sender.account_id == agency_id,
                Sender.verified.is_(True),
                Sender.method.in_(PROOFS),
            )
        )
        for proved_pattern, method in proved:
            if method is not None and sender_matches(pattern, [proved_pattern]):
                return method, agency_id
    raise OperatorOnly(SAY_SO_REFUSED)


@dataclass(frozen=True)
class DNSChallenge:
    domain: str
    record: str  # the name to publish the TXT record at
    value: str  # the TXT value
    verified: bool


@audited("sender.verify_dns", arg("domain"), scope.of_account("account"))
def verify_sender_dns(
    engine: Engine, domain: str, account: str, resolver: dns.resolver.Resolver
) -> DNSChallenge:
    """Verify a whole domain by a TXT record: make the token once, then look it up."""
    domain = check_domain(domain)
    with Session(engine) as session, session.begin():
        owner = get_account(session, account)
        row = session.scalar(
            select(Sender).where(Sender.account_id == owner.id, Sender.pattern == domain)
        )
        if row is None:
            row = Sender(
                account_id=owner.id, pattern=domain, verified=False, dns_token=dnsverify.new_token()
            )
            session.add(row)
        elif row.dns_token is None:
            row.dns_token = dnsverify.new_token()
        token, already, account_id = row.dns_token, row.verified, owner.id
    assert token is not None
    found = already or dnsverify.txt_has_token(resolver, domain, token)
    if found and not already:
        with Session(engine) as session, session.begin():
            session.execute(
                update(Sender)
                .where(Sender.account_id == account_id, Sender.pattern == domain)
                .values(verified=True, method="dns", verified_at=utcnow(), proof_account_id=None)
            )
        _resume_paused(engine, account_id)
    return DNSChallenge(domain, dnsverify.record_name(domain), dnsverify.record_value(token), found)


def _resume_paused(engine: Engine, account_id: int) -> list[str]:
    """Mail paused for this account's unverified senders resumes by itself."""
    with Session(engine) as session:
        patterns = list(
            session.scalars(
                select(Sender.pattern).where(
                    Sender.account_id == account_id, Sender.verified.is_(True)
                )
            )
        )
    return held.resume_verified(
        engine, account_id, lambda address: sender_matches(address, patterns)
    )


def list_senders(engine: Engine, account: str, review: bool = False) -> list[Sender]:
    """An account's senders; ``review``: only those verified before proof was
    required and not confirmed since (methods ``tenant`` and ``unreviewed``)."""
    with Session(engine) as session:
        owner = get_account(session, account)
        query = select(Sender).where(Sender.account_id == owner.id)
        if review:
            query = query.where(Sender.verified.is_(True), Sender.method.in_(REVIEW))
        return list(session.scalars(query.order_by(Sender.pattern)))


def senders_to_review(engine: Engine, seen_by: scope.Scope) -> list[tuple[Sender, str]]:
    """Every sender (of the accounts ``seen_by`` sees) verified before proof was
    required and not verified again since, with its account's name."""
    query = (
        select(Sender, Account.name)
        .join(Account, Account.id == Sender.account_id)
        .where(Sender.verified.is_(True), Sender.method.in_(REVIEW))
        .order_by(Account.name, Sender.pattern)
    )
    if seen_by.accounts is not None:
        query = query.where(Sender.account_id.in_(seen_by.accounts))
    with Session(engine) as session:
        return [(row, name) for row, name in session.execute(query).all()]


@audited("sender.remove", arg("pattern"), scope.of_account("account"))
def remove_sender(engine: Engine, pattern: str, account: str) -> None:
    pattern = check_sender(pattern)
    with Session(engine) as session, session.begin():
        owner = get_account(session, account)
        row = session.scalar(
            select(Sender).where(Sender.account_id == owner.id, Sender.pattern == pattern)
        )
        if row is None:
            raise NotFound(f"{pattern} is not a sender of account {account}")
        session.delete(row)


@dataclass(frozen=True)
class Resumed:
    account: str
    was_suspended: bool
    released: list[str]  # mail held while suspended (suspend_action = pause), now queued


@audited("account.resume", arg("name"), scope.of_account("name"))
def resume_account(engine: Engine, name: str) -> Resumed:
    """Lift a reputation suspension: new mail is accepted at once, on every node.

    The operator, or an agency for its sub-account, may resume; a suspended
    account may not resume itself (its token sees it, so the refusal hides
    nothing). Its rates count afresh from now (``reputation_since``), so the
    bounces that suspended it do not suspend it again; mail held while it was
    suspended is queued.
    """
    actor = scope.current()
    with Session(engine, expire_on_commit=False) as session, session.begin():
        account = get_account(session, name)
        if not actor.scope.everything and actor.account_id == account.id:
            raise OperatorOnly("a suspended account is resumed by its agency or the operator")
        was = account.suspended_at is not None
        account.suspended_at = None
        account.suspended_reason = None
        account.reputation_since = utcnow()
        account_id = account.id
    ready = [
        mid
        for mid, _, _, _, reason in held.paused(engine, account_id)
        if (reason or "").startswith("account suspended")
    ]
    return Resumed(name, was, held.release(engine, ready))
