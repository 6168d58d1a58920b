"""The queue: list with filters and cursor pages, show with every attempt, and the
operator's moves (retry, release, discard), one message or paused mail in bulk."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from relay.admin.api import schemas as s
from relay.admin.api.auth import Authenticated, Caller
from relay.admin.api.errors import responses
from relay.service import queue, scope
from relay.store.models import Message

router = APIRouter(prefix="/queue", tags=["queue"], responses=responses(401, 429))

QueueId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def _summary(m: Message, account: str) -> s.MessageOut:
    return s.MessageOut(
        id=m.id,
        state=m.state,
        reason=m.reason,
        account=account,
        mail_from=m.mail_from,
        size=m.size,
        attempts=m.attempts,
        created_at=m.created_at,
        next_attempt_at=m.next_attempt_at,
    )


@router.get("", summary="Messages, newest first, a page at a time", responses=responses(404, 422))
def list_messages(caller: Authenticated, q: Annotated[s.QueueQuery, Query()]) -> s.MessagePage:
    page = queue.page_messages(
        caller.engine,
        caller.scope,
        state=q.state,
        account=q.account,
        sender=q.sender,
        reason=q.reason,
        campaign=q.campaign,
        cursor=q.cursor,
        limit=q.limit,
    )
    return s.MessagePage(
        items=[_summary(m, a) for m, a in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{queue_id}",
    summary="One message with its recipients, every attempt and the providers' events",
    responses=responses(404, 422),
)
def show_message(queue_id: QueueId, caller: Authenticated) -> s.MessageDetail:
    caller.run(scope.require, caller.engine, scope.of_message(), queue_id=queue_id)
    view = queue.show_message(caller.engine, queue_id)
    m = view.message
    return s.MessageDetail(
        **_summary(m, view.account).model_dump(),
        header_from=m.header_from,
        campaign=m.campaign,
        expires_at=m.expires_at,
        finished_at=m.finished_at,
        recipients=[
            s.RecipientOut(address=r.address, kind=r.kind, state=r.state, reply=r.reply)
            for r in view.recipients
        ],
        history=[
            s.AttemptOut(
                at=a.at,
                provider=a.provider,
                transport=a.transport,
                result=a.result,
                code=a.code,
                text=a.text,
                duration=a.duration,
            )
            for a in view.attempts
        ],
        events=[
            s.EventOut(
                at=e.at,
                type=e.type,
                address=e.address,
                bounce_class=e.bounce_class,
                detail=e.detail,
                provider=e.provider,
            )
            for e in view.events
        ],
    )


@router.post(
    "/{queue_id}/retry",
    summary="Deliver a queued or deferred message now",
    responses=responses(404, 409, 422),
)
def retry(queue_id: QueueId, caller: Authenticated) -> s.Moved:
    caller.run(queue.retry_message, caller.engine, queue_id)
    return s.Moved(messages=[queue_id])


@router.post(
    "/{queue_id}/release",
    summary="Deliver a paused message now, whatever held it",
    responses=responses(404, 409, 422),
)
def release(queue_id: QueueId, caller: Authenticated) -> s.Moved:
    return s.Moved(messages=caller.run(queue.release_messages, caller.engine, queue_id))


@router.post(
    "/{queue_id}/discard",
    summary="Drop a paused message for good (recorded as dropped)",
    responses=responses(404, 409, 422),
)
def discard(queue_id: QueueId, caller: Authenticated) -> s.Moved:
    rows = caller.run(queue.discard_messages, caller.engine, queue_id)
    return s.Moved(messages=sorted({r[0] for r in rows}))


@router.post(
    "/release",
    summary="Deliver paused mail now, in bulk by the listing's filters",
    responses=responses(404, 422),
)
def release_bulk(body: s.HeldIn, caller: Authenticated) -> s.Moved:
    moved: list[str] = []
    for account in _accounts_for(caller, body):
        moved += caller.run(queue.release_messages, caller.engine, account=account, **_held(body))
    return s.Moved(messages=moved)


@router.post(
    "/discard",
    summary="Drop paused mail, in bulk by the listing's filters (recorded as dropped)",
    responses=responses(404, 422),
)
def discard_bulk(body: s.HeldIn, caller: Authenticated) -> s.Moved:
    ids: set[str] = set()
    for account in _accounts_for(caller, body):
        rows = caller.run(queue.discard_messages, caller.engine, account=account, **_held(body))
        ids.update(r[0] for r in rows)
    return s.Moved(messages=sorted(ids))


def _held(body: s.HeldIn) -> dict[str, str | None]:
    """The filters besides the account, as the service takes them."""
    return {"sender": body.sender, "reason": body.reason, "campaign": body.campaign}


def _accounts_for(caller: Caller, body: s.HeldIn) -> list[str | None]:
    """The service's bulk calls to make. Without an account, an operator's one
    call covers every account; a tenant's is made once per account of its own
    that holds such mail, so that it never reaches another tenant's queue."""
    filtered = body.sender or body.reason or body.campaign
    if body.account or not filtered or caller.scope.everything:
        return [body.account]
    return list(
        queue.accounts_holding(
            caller.engine,
            caller.scope,
            body.sender,
            reason=body.reason,
            campaign=body.campaign,
        )
    )
