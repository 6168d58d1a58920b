"""The isolation matrix: a token never reads or changes another tenant's data, and
cannot tell whether it exists.

For each (attacker, victim) pair, every operation on the victim's account,
domain, credential, sender and messages must answer 404 with the very body a
name that does not exist gets (the "ghost"), and must change nothing. Lists
must not mention the victim at all. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from relay.core.settings import Settings
from relay.store.models import (
    Account,
    AuditEntry,
    Credential,
    Domain,
    Message,
    Provider,
    Sender,
    SenderConfirmation,
)
from tests.api_support import Api, Tenant, World, api_settings, build_world, error
from tests.support import RelayThread

GHOST = Tenant(
    "ghost",
    "agency-ghost",
    "",
    "ghost-smtp",
    "ghost.test",
    "app@ghost.test",
    "GHOSTPAUSED0000",
    "GHOSTQUEUED0000",
)


@dataclass(frozen=True)
class Op:
    name: str
    call: Callable[[Api, Tenant, Tenant], httpx.Response]  # (client, target, attacker)
    needs_domain: bool = False  # agencies have no domain, credential or mail


def _ops() -> list[Op]:
    def op(name: str, domain: bool = False) -> Callable[[Any], Op]:
        def make(fn: Callable[..., httpx.Response]) -> Op:
            takes_attacker = fn.__code__.co_argcount == 3
            return Op(name, fn if takes_attacker else lambda a, t, me: fn(a, t), domain)

        return make

    return [
        op("show account")(lambda a, t: a.get(f"/accounts/{t.account}")),
        op("list domains")(lambda a, t: a.get(f"/accounts/{t.account}/domains")),
        op("add domain")(
            lambda a, t: a.post(f"/accounts/{t.account}/domains", {"domain": "n.test"})
        ),
        op("make sub-account")(
            lambda a, t: a.post("/accounts", {"name": "evil", "agency": t.account})
        ),
        op("list senders")(lambda a, t: a.get(f"/accounts/{t.account}/senders")),
        op("verify sender")(
            lambda a, t: a.post(f"/accounts/{t.account}/senders", {"sender": "x.test"})
        ),
        op("dns challenge")(
            lambda a, t: a.post(f"/accounts/{t.account}/senders/dns", {"domain": "x.test"})
        ),
        op("mail a code")(
            lambda a, t: a.post(f"/accounts/{t.account}/senders/x@example.org/confirmation")
        ),
        op("confirm a code")(
            lambda a, t: a.post(
                f"/accounts/{t.account}/senders/x@example.org/confirm", {"code": "12345678"}
            )
        ),
        op("remove sender", True)(
            lambda a, t: a.delete(f"/accounts/{t.account}/senders/{t.domain}")
        ),
        op("list credentials", True)(lambda a, t: a.get(f"/domains/{t.domain}/credentials")),
        op("create credential", True)(
            lambda a, t: a.post("/credentials", {"username": f"evil@{t.domain}"})
        ),
        op("reset credential", True)(lambda a, t: a.post(f"/credentials/{t.username}/reset")),
        op("delete credential", True)(lambda a, t: a.delete(f"/credentials/{t.username}")),
        op("show message", True)(lambda a, t: a.get(f"/queue/{t.queued}")),
        op("retry", True)(lambda a, t: a.post(f"/queue/{t.queued}/retry")),
        op("release", True)(lambda a, t: a.post(f"/queue/{t.paused}/release")),
        op("discard", True)(lambda a, t: a.post(f"/queue/{t.paused}/discard")),
        op("release account")(lambda a, t: a.post("/queue/release", {"account": t.account})),
        op("discard account")(lambda a, t: a.post("/queue/discard", {"account": t.account})),
        op("queue of account")(lambda a, t: a.get("/queue", params={"account": t.account})),
        op("usage of account")(lambda a, t: a.get("/usage", params={"account": t.account})),
        op("audit of account")(lambda a, t: a.get("/audit", params={"account": t.account})),
        op("show provider")(lambda a, t: a.get(f"/providers/{t.provider}")),
        op("test provider")(
            lambda a, t: a.post(f"/providers/{t.provider}/test", {"to": "x@example.org"})
        ),
        op("provider egress")(lambda a, t: a.get(f"/providers/{t.provider}/egress")),
        op("remove provider")(lambda a, t: a.delete(f"/providers/{t.provider}")),
        op("set default")(
            lambda a, t, me: a(
                "PUT", f"/accounts/{t.account}/default-provider", json={"provider": me.provider}
            )
        ),
        op("default to theirs")(
            lambda a, t, me: a(
                "PUT", f"/accounts/{me.account}/default-provider", json={"provider": t.provider}
            )
        ),
        op("assign")(
            lambda a, t, me: a(
                "PUT", f"/accounts/{t.account}/assigned-provider", json={"provider": me.provider}
            )
        ),
        op("assign to theirs")(
            lambda a, t, me: a(
                "PUT", f"/accounts/{me.account}/assigned-provider", json={"provider": t.provider}
            )
        ),
        op("unassign")(lambda a, t: a.delete(f"/accounts/{t.account}/assigned-provider")),
    ]


OPS = _ops()
PAIRS = [
    ("agency-a", "agency-b"),  # an agency against another agency ...
    ("agency-a", "b-one"),  # ... and its sub-account
    ("a-one", "a-two"),  # a sub-account against its sibling ...
    ("a-one", "agency-a"),  # ... and its own agency
    ("b-one", "a-one"),
]


@pytest.fixture
def db_url(any_db_url: str) -> str:
    return any_db_url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(tmp_path / "var", db_url)


@pytest.fixture
def world(settings: Settings, engine: Engine) -> World:
    return build_world(settings, engine)


@pytest.fixture
def served(settings: Settings, engine: Engine, world: World) -> Iterator[RelayThread]:
    thread = RelayThread(settings, engine).start()
    yield thread
    thread.stop()


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a leaked change could touch."""
    with engine.connect() as conn:
        return {
            "credentials": conn.execute(
                select(Credential.username, Credential.password_hash).order_by(Credential.id)
            ).all(),
            "domains": conn.execute(select(Domain.name).order_by(Domain.id)).all(),
            "senders": conn.execute(select(Sender.pattern, Sender.verified)).all(),
            "confirmations": conn.execute(select(SenderConfirmation.id)).all(),
            "messages": conn.execute(
                select(Message.id, Message.state, Message.next_attempt_at).order_by(Message.id)
            ).all(),
            "providers": conn.execute(select(Provider.name).order_by(Provider.id)).all(),
            "routes": conn.execute(
                select(
                    Account.name,
                    Account.default_provider_id,
                    Account.subaccount_provider_id,
                    Account.assigned_provider_id,
                ).order_by(Account.id)
            ).all(),
        }


def same_as_ghost(response: httpx.Response, ghost: httpx.Response, victim: Tenant) -> bool:
    """The body, with the ghost's names put back to the victim's, is the same."""
    text = ghost.text
    fields = ("account", "provider", "domain", "username", "paused", "queued")
    for field in sorted(fields, key=lambda f: -len(getattr(GHOST, f))):  # longest first
        mine, theirs = getattr(GHOST, field), getattr(victim, field)
        if mine and theirs:
            text = text.replace(mine, theirs)
    return response.text == text


def test_a_token_cannot_see_or_touch_another_tenant(
    served: RelayThread, engine: Engine, world: World
) -> None:
    before = snapshot(engine)
    operator = Api(served, world.operator)
    try:
        for attacker, victim in PAIRS:
            api = Api(served, world[attacker].token)
            try:
                attack(api, operator, world[victim], world[attacker])
            finally:
                api.close()
    finally:
        operator.close()
    assert snapshot(engine) == before


def attack(api: Api, operator: Api, target: Tenant, me: Tenant) -> None:
    """Every operation on ``target``: 404, word for word as for a ghost."""
    for op in OPS:
        if op.needs_domain and target.domain is None:
            continue
        answer, ghost = op.call(api, target, me), op.call(api, GHOST, me)
        where = (op.name, target.account)
        assert answer.status_code == 404, (*where, answer.text)
        assert same_as_ghost(answer, ghost, target), (*where, answer.text, ghost.text)
        # Not a route missing for everyone: the message names the target.
        assert error(answer)["message"] != "Not Found", where
        if op.name.startswith(("show", "list", "queue", "usage")):
            assert op.call(operator, target, me).status_code == 200, where


def test_lists_never_mention_another_tenant(served: RelayThread, world: World) -> None:
    for attacker, victim in PAIRS:
        target = world[victim]
        secrets = [target.provider, target.domain, target.paused, target.queued]
        if target.account != world[attacker].agency:  # a sub-account's rows name its agency
            secrets.append(target.account)
        api = Api(served, world[attacker].token)
        try:
            for path in ("/accounts", "/providers", "/queue", "/usage", "/audit"):
                answer = api.get(path)
                assert answer.status_code == 200
                for value in filter(None, secrets):
                    assert value not in answer.text, (attacker, path, value)
        finally:
            api.close()


def test_bulk_by_sender_stays_within_the_tokens_accounts(
    served: RelayThread, engine: Engine, world: World
) -> None:
    """A tenant may release or discard by sender: only its own paused mail moves."""
    api = Api(served, world["a-one"].token)
    try:
        for verb in ("release", "discard"):
            moved = api.post(f"/queue/{verb}", {"sender": "b-one.test"})
            assert moved.json() == {"messages": []}
        everything = api.post("/queue/release", {})
        assert everything.status_code == 403  # every account's paused mail: operators only
        assert api.post("/queue/release", {"sender": "a-one.test"}).json() == {
            "messages": [world["a-one"].paused]
        }
    finally:
        api.close()
    with engine.connect() as conn:
        state = conn.scalar(select(Message.state).where(Message.id == world["b-one"].paused))
    assert state == "paused"


def test_an_agency_reaches_its_sub_accounts(served: RelayThread, world: World) -> None:
    agency = Api(served, world["agency-a"].token)
    try:
        assert agency.get("/accounts/a-two/senders").status_code == 200
        reset = agency.post(f"/credentials/{world['a-two'].username}/reset")
        assert reset.status_code == 200 and reset.json()["password"]
        assert agency.get(f"/queue/{world['a-one'].paused}").status_code == 200
        listed = {m["account"] for m in agency.get("/queue").json()["items"]}
        assert listed == {"a-one", "a-two"}
    finally:
        agency.close()


def test_attempts_are_audited_but_never_shown_to_the_victim(
    served: RelayThread, engine: Engine, world: World
) -> None:
    attacker, victim = Api(served, world["a-one"].token), Api(served, world["b-one"].token)
    try:
        attacker.post(f"/credentials/{world['b-one'].username}/reset")
        mine = attacker.get("/audit").json()["items"]
        assert (mine[0]["action"], mine[0]["result"]) == ("credential.reset", "not_found")
        assert mine[0]["account"] is None  # not attributed to the account it could not see
        theirs = victim.get("/audit").json()["items"]
        assert all(e["actor"] == "operator" for e in theirs)  # only the world's set-up
    finally:
        attacker.close()
        victim.close()
    with engine.connect() as conn:
        refused = conn.scalar(select(func.count()).where(AuditEntry.result == "not_found"))
    assert refused == 1
