"""``relay queue ...``: list, show, retry, release and discard messages."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from relay.cli._common import (
    Progress,
    Verbs,
    add_format,
    add_group,
    add_verb,
    open_db,
    print_block,
    print_json,
    print_rows,
    read_quickly,
)
from relay.core.settings import Settings


def cmd_queue_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.sender is None and args.reason is None and args.campaign is None:
        from relay.service import quick

        a = args
        quickly = read_quickly(settings, lambda db: quick.messages(db, a.state, a.account, a.limit))
        if quickly is not None:
            print_messages(quickly, args.format)
            return 0
    from relay.service.pages import MAX_LIMIT
    from relay.service.queue import page_messages

    engine = open_db(settings)
    found: list[Any] = []
    cursor = None
    # Page after page up to --limit, as the remote form does through the API.
    for _ in range(max(1, -(-args.limit // MAX_LIMIT))):
        page = page_messages(
            engine,
            state=args.state,
            account=args.account,
            sender=args.sender,
            reason=args.reason,
            campaign=args.campaign,
            cursor=cursor,
            limit=max(1, min(MAX_LIMIT, args.limit - len(found))),
        )
        found += page.items
        cursor = page.next_cursor
        if cursor is None or len(found) >= args.limit:
            break
    items = [
        {
            "id": m.id,
            "state": m.state,
            "account": a,
            "mail_from": m.mail_from,
            "size": m.size,
            "attempts": m.attempts,
            "created_at": m.created_at.isoformat(),
            "reason": m.reason,
        }
        for m, a in found[: max(args.limit, 0)]
    ]
    print_messages(items, args.format)
    return 0


def print_messages(items: Sequence[dict[str, Any]], fmt: str) -> None:
    """``queue list``, locally and remotely (the API's fields; times in ISO 8601)."""
    if fmt == "json":
        print_json(list(items))
        return
    rows = [
        (
            m["id"],
            m["state"],
            m["account"],
            m["mail_from"],
            m["size"],
            m["attempts"],
            m["created_at"][:19].replace("T", " "),
            m["reason"] or "",
        )
        for m in items
    ]
    print_rows(rows, ("ID", "STATE", "ACCOUNT", "FROM", "SIZE", "TRIES", "CREATED", "REASON"))


def print_message(view: dict[str, Any], fmt: str) -> None:
    """``queue show``, locally and remotely: ``key: value`` lines, then the recipients,
    the attempts and the providers' events as tables; or the same as JSON."""
    if fmt == "json":
        print_json(view)
    else:
        print_block(view)


def cmd_queue_show(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import quick

    quickly = read_quickly(settings, lambda db: quick.message(db, args.id))
    if quickly is not None:
        print_message(quickly, args.format)
        return 0
    from relay.service.queue import show_message

    view = show_message(open_db(settings), args.id)
    m = view.message
    out = {
        "id": m.id,
        "state": m.state,
        "reason": m.reason,
        "account": view.account,
        "from": m.mail_from,
        "header_from": m.header_from,
        "size": m.size,
        "campaign": m.campaign,
        "attempts": m.attempts,
        "created": m.created_at.isoformat(),
        "next_attempt": m.next_attempt_at.isoformat(),
        "expires": m.expires_at.isoformat(),
        "recipients": [
            {"address": r.address, "kind": r.kind, "state": r.state, "reply": r.reply}
            for r in view.recipients
        ],
        "history": [
            {
                "at": a.at.isoformat(),
                "provider": a.provider,
                "transport": a.transport,
                "result": a.result,
                "code": a.code,
                "text": a.text,
                "duration": round(a.duration, 4),
            }
            for a in view.attempts
        ],
        "events": [
            {
                "at": e.at.isoformat(),
                "type": e.type,
                "address": e.address,
                "bounce_class": e.bounce_class,
                "detail": e.detail,
                "provider": e.provider,
            }
            for e in view.events
        ],
    }
    print_message(out, args.format)
    return 0


def cmd_queue_retry(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import retry_message

    retry_message(open_db(settings), args.id)
    print(f"{args.id} is due now; a running relay delivers it within its poll interval")
    return 0


def bulk_progress(args: argparse.Namespace, doing: str) -> Progress | None:
    """Progress on standard error for a bulk release or discard (one transaction: it
    says when it began and how long it took)."""
    if args.id:
        return None
    meter = Progress()
    whose = " ".join(f"{k} {v}" for k, v in (("from", args.sender), ("of", args.account)) if v)
    meter.say(f"{doing} every paused message {whose}".rstrip())
    return meter


def cmd_queue_release(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import release_messages

    meter = bulk_progress(args, "releasing")
    moved = release_messages(open_db(settings), args.id, **_held(args))
    if meter:
        meter.say(f"released {len(moved)}")
    print(f"released {len(moved)} paused message(s)" + "".join(f"\n  {m}" for m in moved))
    return 0


def cmd_queue_discard(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service.queue import discard_messages

    meter = bulk_progress(args, "discarding")
    rows = discard_messages(open_db(settings), args.id, **_held(args))
    ids = sorted({r[0] for r in rows})
    if meter:
        meter.say(f"discarded {len(ids)}")
    print(
        f"discarded {len(ids)} paused message(s), recorded as dropped"
        + "".join(f"\n  {m}" for m in ids)
    )
    return 0


def _held(args: argparse.Namespace) -> dict[str, str | None]:
    """The listing's filters, which select paused mail in bulk."""
    keys = ("sender", "account", "reason", "campaign")
    return {key: getattr(args, key) for key in keys}


def _add_filters(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument("--sender", help=f"{what} from this address or domain (envelope or From)")
    s.add_argument("--account", help=f"{what} of this account")
    s.add_argument("--reason", help=f"{what} whose reason contains these words (any case)")
    s.add_argument("--campaign", help=f"{what} of this campaign (exactly)")


def register(sub: Verbs) -> None:
    q = add_group(sub, "queue", "the message queue")
    s = add_verb(q, "list", cmd_queue_list, "list messages, newest first")
    s.add_argument("--state", help="queued, deferred, paused, delivered, failed or dropped")
    s.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    _add_filters(s, "messages")
    add_format(s)
    s = add_verb(q, "show", cmd_queue_show, "one message with its recipients, attempts and events")
    s.add_argument("id")
    add_format(s)
    s = add_verb(q, "retry", cmd_queue_retry, "deliver a queued or deferred message now")
    s.add_argument("id")
    for verb, handler, what in (
        ("release", cmd_queue_release, "deliver paused mail now"),
        ("discard", cmd_queue_discard, "drop paused mail (recorded as dropped)"),
    ):
        s = add_verb(q, verb, handler, f"{what}: one message, or in bulk by filters")
        s.add_argument("id", nargs="?")
        _add_filters(s, "every paused message")
