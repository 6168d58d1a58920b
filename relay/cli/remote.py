"""The command line against a remote relay: ``relay --url URL --token TOKEN VERB ...``.

Each verb becomes one request to the admin API (``/api/v1``), and its answer
is printed exactly as the local verb prints the service's answer, so a
script cannot tell the two apart (tests/test_api_cli.py runs both and
compares). The rules are the server's: this module only translates.
An API error becomes ``relay: error: <its message>`` and exit status 1, as
a local one does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from relay.cli.accounts import print_accounts, print_credentials, print_edited, print_resumed
from relay.cli.limits import limit_body, limit_options_given, print_limited, print_limits
from relay.cli.providers import (
    TESTING,
    print_provider,
    print_provider_list,
    print_webhook,
    progress,
)
from relay.cli.queue import bulk_progress, print_message, print_messages
from relay.cli.senders import check_review, code_sent, print_senders
from relay.cli.tokens import print_audit
from relay.core.errors import RelayError

API = "/api/v1"
PAGE = 500  # the API's largest page


class Remote:
    """A client of one relay's admin API with one token."""

    def __init__(self, url: str, token: str, transport: httpx.BaseTransport | None = None) -> None:
        base = url.rstrip("/").removesuffix(API)
        self.url = base
        self._client = httpx.Client(
            base_url=base + API,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise RelayError(f"cannot reach the relay at {self.url}: {exc}") from None
        if response.is_error:
            raise RelayError(_message(response))
        return response

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.call(method, path, **kw).json()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"the relay answered {response.status_code} {response.reason_phrase}"


def part(value: str) -> str:
    """A value as one path segment."""
    return quote(value, safe="@")


def _iso(value: str | None) -> str | None:
    """The API's RFC 3339 time as the local command prints it (``isoformat``)."""
    return dt.datetime.fromisoformat(value).isoformat() if value else None


# -- the verbs --------------------------------------------------------------------


def account_create(r: Remote, args: argparse.Namespace) -> None:
    body = {"name": args.name, "agency": args.agency, "policy": args.policy}
    account = r.json("POST", "/accounts", json=body)
    kind = f"sub-account of {args.agency}" if args.agency else "agency"
    print(f"created account {account['name']} ({kind})")


def account_list(r: Remote, args: argparse.Namespace) -> None:
    keys = ("name", "agency", "unverified_policy", "suspended_at", "suspended_reason")
    print_accounts([{k: a[k] for k in keys} for a in r.json("GET", "/accounts")], args)


def account_resume(r: Remote, args: argparse.Namespace) -> None:
    done = r.json("POST", f"/accounts/{part(args.name)}/resume")
    print(print_resumed(done["account"], done["was_suspended"], len(done["released"])))


def account_edit(r: Remote, args: argparse.Namespace) -> None:
    body = {
        "notify": [] if args.no_notify else args.notify,
        "notify_url": args.notify_url,
        "share_suppressions": args.share_suppressions,
        "unsubscribe": args.unsubscribe,
        "open_tracking": args.open_tracking,
        "click_tracking": args.click_tracking,
    }
    body = {key: value for key, value in body.items() if value is not None}
    limits = None
    if limit_options_given(args):  # as the local verb: the limits first
        limits = r.json("PATCH", f"/accounts/{part(args.name)}/limits", json=limit_body(args))
        if not body:
            print_limits(limits)
            return
    a = r.json("PATCH", f"/accounts/{part(args.name)}", json=body)
    print_edited(a["name"], a["changed"], a, a["notify_secret"])
    if limits is not None:
        print_limits(limits)


def domain_add(r: Remote, args: argparse.Namespace) -> None:
    path = f"/accounts/{part(args.account)}/domains"
    domain = r.json("POST", path, json={"domain": args.domain})
    print(f"added domain {domain['name']} to account {args.account}")


def _shown_once(args: argparse.Namespace, new: dict[str, Any]) -> None:
    if args.password is None:
        print(f"password: {new['password']}")
        print("(shown once: it is stored only as a hash)")


def credential_create(r: Remote, args: argparse.Namespace) -> None:
    body = {
        "username": args.username,
        "password": args.password,
        "purpose": args.purpose,
        "policy": args.policy,
    }
    new = r.json("POST", "/credentials", json=body)
    print(f"created credential {new['username']}")
    _shown_once(args, new)


def credential_reset(r: Remote, args: argparse.Namespace) -> None:
    path = f"/credentials/{part(args.username)}/reset"
    new = r.json("POST", path, json={"password": args.password})
    print(f"reset the password of {new['username']}; the old one no longer works")
    _shown_once(args, new)


def credential_delete(r: Remote, args: argparse.Namespace) -> None:
    gone = r.json("DELETE", f"/credentials/{part(args.username)}")
    print(f"deleted credential {gone['username']}")


def credential_edit(r: Remote, args: argparse.Namespace) -> None:
    path = f"/credentials/{part(args.username)}/limits"
    print_limits(r.json("PATCH", path, json=limit_body(args)))


def credential_list(r: Remote, args: argparse.Namespace) -> None:
    keys = ("username", "purpose", "unverified_policy")
    items = [
        {
            **{k: c[k] for k in keys},
            "created_at": _iso(c["created_at"]),
            "password_set_at": _iso(c["password_set_at"]),
        }
        for c in r.json("GET", f"/domains/{part(args.domain)}/credentials")
    ]
    print_credentials(items, args.format)


def sender_verify(r: Remote, args: argparse.Namespace) -> None:
    path = f"/accounts/{part(args.account)}/senders"
    row = r.json("POST", path, json={"sender": args.sender})
    what = "address" if row["kind"] == "address" else "domain (every address in it)"
    print(f"verified {row['sender']} for account {args.account}: {what}")


def sender_verify_dns(r: Remote, args: argparse.Namespace) -> int:
    path = f"/accounts/{part(args.account)}/senders/dns"
    found = r.json("POST", path, json={"domain": args.domain})
    if found["verified"]:
        print(f"verified {found['domain']} for account {args.account} by DNS")
        return 0
    print(
        "publish this record, then run the command again:\n"
        f'  {found["record"]}. TXT "{found["value"]}"'
    )
    return 3  # as the local verb: not verified yet


def sender_list(r: Remote, args: argparse.Namespace) -> None:
    keys = ("sender", "verified", "method", "verified_at", "proved_by")

    def item(s: dict[str, Any]) -> dict[str, Any]:
        return {**{k: s[k] for k in keys}, "verified_at": _iso(s["verified_at"])}

    if args.account is None:
        check_review(args)
        items = [{"account": s["account"], **item(s)} for s in r.json("GET", "/senders/review")]
    else:
        params = {"review": "true"} if args.review else {}
        path = f"/accounts/{part(args.account)}/senders"
        items = [item(s) for s in r.json("GET", path, params=params)]
    print_senders(items, args.format)


def sender_send_code(r: Remote, args: argparse.Namespace) -> None:
    path = f"/accounts/{part(args.account)}/senders/{part(args.sender)}/confirmation"
    sent = r.json("POST", path)
    expires = dt.datetime.fromisoformat(sent["expires_at"])
    print(code_sent(sent["sender"], sent["sent_from"], expires, args.account))


def sender_confirm(r: Remote, args: argparse.Namespace) -> None:
    path = f"/accounts/{part(args.account)}/senders/{part(args.sender)}/confirm"
    row = r.json("POST", path, json={"code": args.code})
    print(f"verified {row['sender']} for account {args.account} by confirmation")


def sender_remove(r: Remote, args: argparse.Namespace) -> None:
    r.call("DELETE", f"/accounts/{part(args.account)}/senders/{part(args.sender)}")
    print(f"removed {args.sender} from account {args.account}")


def queue_list(r: Remote, args: argparse.Namespace) -> None:
    keys = ("id", "state", "account", "mail_from", "size", "attempts", "created_at", "reason")
    items = [
        {**{k: m[k] for k in keys}, "created_at": _iso(m["created_at"])} for m in _messages(r, args)
    ]
    print_messages(items, args.format)


def _messages(r: Remote, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Up to ``--limit`` messages the filters select, newest first, page after page."""
    out: list[dict[str, Any]] = []
    cursor = None
    limit = args.limit
    filters = {k: getattr(args, k) for k in ("state", "account", "sender", "reason", "campaign")}
    while len(out) < limit:
        params = {**filters, "cursor": cursor, "limit": min(PAGE, limit - len(out))}
        page = r.json("GET", "/queue", params={k: v for k, v in params.items() if v is not None})
        out += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return out


def queue_show(r: Remote, args: argparse.Namespace) -> None:
    m = r.json("GET", f"/queue/{part(args.id)}")
    out = {
        "id": m["id"],
        "state": m["state"],
        "reason": m["reason"],
        "account": m["account"],
        "from": m["mail_from"],
        "header_from": m["header_from"],
        "size": m["size"],
        "campaign": m["campaign"],
        "attempts": m["attempts"],
        "created": _iso(m["created_at"]),
        "next_attempt": _iso(m["next_attempt_at"]),
        "expires": _iso(m["expires_at"]),
        "recipients": m["recipients"],
        "history": [
            {**a, "at": _iso(a["at"]), "duration": round(a["duration"], 4)} for a in m["history"]
        ],
        "events": [{**e, "at": _iso(e["at"])} for e in m.get("events", [])],
    }
    print_message(out, args.format)


def queue_retry(r: Remote, args: argparse.Namespace) -> None:
    r.call("POST", f"/queue/{part(args.id)}/retry")
    print(f"{args.id} is due now; a running relay delivers it within its poll interval")


def _held(r: Remote, args: argparse.Namespace, verb: str) -> list[str]:
    if args.id:
        moved = r.json("POST", f"/queue/{part(args.id)}/{verb}")
    else:
        keys = ("sender", "account", "reason", "campaign")
        moved = r.json("POST", f"/queue/{verb}", json={k: getattr(args, k) for k in keys})
    return list(moved["messages"])


def queue_release(r: Remote, args: argparse.Namespace) -> None:
    meter = bulk_progress(args, "releasing")
    moved = _held(r, args, "release")
    if meter:
        meter.say(f"released {len(moved)}")
    print(f"released {len(moved)} paused message(s)" + "".join(f"\n  {m}" for m in moved))


def queue_discard(r: Remote, args: argparse.Namespace) -> None:
    meter = bulk_progress(args, "discarding")
    ids = sorted(_held(r, args, "discard"))
    if meter:
        meter.say(f"discarded {len(ids)}")
    print(
        f"discarded {len(ids)} paused message(s), recorded as dropped"
        + "".join(f"\n  {m}" for m in ids)
    )


def usage(r: Remote, args: argparse.Namespace) -> None:
    if args.limits:
        if args.account:
            print_limits(r.json("GET", f"/accounts/{part(args.account)}/limits"))
        else:
            print_limited(r.json("GET", "/limits"))
        return
    params = {"account": args.account, "from": args.first, "to": args.last, "format": args.format}
    response = r.call("GET", "/usage", params={k: v for k, v in params.items() if v is not None})
    if args.format == "json":
        # As relay.accounting.report.render_json prints the same dict.
        sys.stdout.write(json.dumps(response.json(), indent=2) + "\n")
    else:
        sys.stdout.write(response.text)


def audit(r: Remote, args: argparse.Namespace) -> None:
    params = {"account": args.account, "limit": args.limit}
    page = r.json("GET", "/audit", params={k: v for k, v in params.items() if v is not None})
    print_audit(page["items"], args.format)


def provider_list(r: Remote, args: argparse.Namespace) -> None:
    keys = ("name", "kind", "transports", "account", "domain", "ip_pool")
    items = [{k: p.get(k) for k in keys} for p in r.json("GET", "/providers")]
    print_provider_list(items, args.format)


def provider_show(r: Remote, args: argparse.Namespace) -> None:
    print_provider(r.json("GET", f"/providers/{part(args.name)}"), args.format)


def provider_test(r: Remote, args: argparse.Namespace) -> int:
    leg_done = progress(args.name, TESTING)  # the API answers once, with every leg
    result = r.json("POST", f"/providers/{part(args.name)}/test", json={"to": args.to})
    for leg in result["legs"]:
        leg_done(leg["transport"], leg["ok"])
    for leg in result["legs"]:
        print(f"{leg['transport']}: {'ok' if leg['ok'] else 'FAILED'}: {leg['detail']}")
    return 0 if result["ok"] else 1


def provider_webhook(r: Remote, args: argparse.Namespace) -> None:
    print_webhook(r.json("GET", f"/providers/{part(args.name)}/webhook"))


def provider_ips(r: Remote, args: argparse.Namespace) -> None:
    for row in r.json("GET", f"/providers/{part(args.name)}/egress"):
        print(f"{row['transport']}\t{row['address']}")


def provider_remove(r: Remote, args: argparse.Namespace) -> None:
    params = {"replacement": args.replacement} if args.replacement else {}
    moved = r.json("DELETE", f"/providers/{part(args.name)}", params=params)["moved"]
    tail = f"; {', '.join(moved)} now use {args.replacement}" if moved else ""
    print(f"removed provider {args.name}{tail}")


def provider_default(r: Remote, args: argparse.Namespace) -> None:
    body = {"provider": args.name, "for": args.scope}
    r.call("PUT", f"/accounts/{part(args.account)}/default-provider", json=body)
    scope = "its sub-accounts" if args.scope == "subaccounts" else "itself"
    print(f"{args.account} now sends through {args.name} by default for {scope}")


def provider_assign(r: Remote, args: argparse.Namespace) -> None:
    path = f"/accounts/{part(args.account)}/assigned-provider"
    r.call("PUT", path, json={"provider": args.name})
    print(f"{args.account} now sends through {args.name}")


def provider_unassign(r: Remote, args: argparse.Namespace) -> None:
    r.call("DELETE", f"/accounts/{part(args.account)}/assigned-provider")
    print(f"{args.account} is no longer assigned; its defaults apply")


# A verb prints its answer; it may return the exit status (None: 0).
Verb = Callable[[Remote, argparse.Namespace], int | None]

VERBS: dict[tuple[str, str | None], Verb] = {
    ("account", "create"): account_create,
    ("account", "list"): account_list,
    ("account", "edit"): account_edit,
    ("account", "resume"): account_resume,
    ("domain", "add"): domain_add,
    ("credential", "create"): credential_create,
    ("credential", "reset"): credential_reset,
    ("credential", "delete"): credential_delete,
    ("credential", "list"): credential_list,
    ("credential", "edit"): credential_edit,
    ("sender", "verify"): sender_verify,
    ("sender", "verify-dns"): sender_verify_dns,
    ("sender", "list"): sender_list,
    ("sender", "send-code"): sender_send_code,
    ("sender", "confirm"): sender_confirm,
    ("sender", "remove"): sender_remove,
    ("queue", "list"): queue_list,
    ("queue", "show"): queue_show,
    ("queue", "retry"): queue_retry,
    ("queue", "release"): queue_release,
    ("queue", "discard"): queue_discard,
    ("usage", None): usage,
    ("audit", None): audit,
    ("provider", "list"): provider_list,
    ("provider", "show"): provider_show,
    ("provider", "test"): provider_test,
    ("provider", "ips"): provider_ips,
    ("provider", "webhook"): provider_webhook,
    ("provider", "remove"): provider_remove,
    ("provider", "default"): provider_default,
    ("provider", "assign"): provider_assign,
    ("provider", "unassign"): provider_unassign,
}


def run(args: argparse.Namespace, url: str, token: str | None) -> int:
    """Run the parsed verb against the relay at ``url``."""
    verb = getattr(args, f"{args.command}_verb", None)
    handler = VERBS.get((args.command, verb))
    if handler is None:
        name = " ".join(p for p in (args.command, verb) if p)
        raise RelayError(f"relay {name} works on this machine only; drop --url")
    if not token:
        raise RelayError("--url needs a token: --token or RELAY_TOKEN")
    remote = Remote(url, token)
    try:
        return handler(remote, args) or 0
    finally:
        remote.close()
