"""A fake SendGrid v3 API: ``POST /v3/mail/send`` and ``GET /v3/scopes``.

It checks what SendGrid checks (its mail/send reference, "Limitations" and
the errors it returns), each refusal a 400 whose ``errors`` name the field:

* ``Authorization: Bearer <key>`` (401 otherwise), JSON (415), 30 MB (413);
* ``personalizations``: 1 to 1000, each with a non-empty ``to``, at most 1000
  recipients in all, no address twice in one personalization across to, cc
  and bcc (case-insensitive), no recipient name with a comma or semicolon
  (the real API accepts those and then drops the mail: refusing is kinder);
* ``from`` with an email; ``subject`` unless every personalization has one;
* ``content``: non-empty values, text/plain first, then text/html;
* ``reply_to`` or ``reply_to_list``, not both;
* ``headers`` (top and personalization): string values, none of the reserved
  names; ``categories``: at most 10, unique, 255 characters each;
* ``attachments``: base64 content, a filename, inline ones with a content_id;
* ``ip_pool_name`` of 2 to 64 characters; ``custom_args`` an object of strings.

Accepted: 202 with ``X-Message-Id`` (200 without an id in sandbox mode).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.emulator.faults import ApiState, Fault, Received, auth_scheme, control_routes

MAX_BYTES = 30 * 1024 * 1024
MAX_RECIPIENTS = 1000
RESERVED = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Problem = tuple[str, str | None]  # (message, field)


def _errors(
    status: int, problems: list[Problem], headers: dict[str, str] | None = None
) -> Response:
    body = {"errors": [{"message": m, "field": f, "help": None} for m, f in problems]}
    return JSONResponse(body, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    if fault.kind == "rate_limit":
        reset = str(int(time.time() + fault.seconds) + 1)
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset,
        }
        return _errors(429, [("too many requests", None)], headers)
    return _errors(fault.status, [(fault.message, fault.code)])


# -- validation --------------------------------------------------------------


def _check_email(item: Any, where: str) -> Iterator[Problem]:
    if not isinstance(item, dict) or not isinstance(item.get("email"), str):
        yield "The email object must have an email", where
    elif not _EMAIL.match(item["email"]):
        yield "Does not contain a valid address.", f"{where}.email"
    elif "name" in item and not isinstance(item["name"], str):
        yield "The name must be a string", f"{where}.name"


def _check_people(p: dict[str, Any], i: int) -> Iterator[Problem]:
    seen: set[str] = set()
    for kind in ("to", "cc", "bcc"):
        people = p.get(kind, [])
        if not isinstance(people, list):
            yield f"The {kind} field must be an array", f"personalizations.{i}.{kind}"
            continue
        for j, item in enumerate(people):
            where = f"personalizations.{i}.{kind}.{j}"
            found = list(_check_email(item, where))
            yield from found
            if found:
                continue
            if re.search(r"[,;]", item.get("name", "")):
                yield "The name may not contain a comma or semicolon", f"{where}.name"
            key = item["email"].lower()
            if key in seen:
                yield (
                    "Each email address in the personalization block should be unique "
                    f"between to, cc, and bcc. We found the first duplicate instance of "
                    f"[{item['email']}] in the personalizations.{i}.{kind} field.",
                    f"personalizations.{i}.{kind}",
                )
            seen.add(key)


def _check_personalizations(body: dict[str, Any]) -> Iterator[Problem]:
    items = body.get("personalizations")
    if not isinstance(items, list) or not items:
        yield (
            "The personalizations field is required and must have at least one item.",
            "personalizations",
        )
        return
    if len(items) > 1000:
        yield "The personalizations field may not have more than 1000 items.", "personalizations"
    total = 0
    for i, p in enumerate(items):
        if not isinstance(p, dict) or not isinstance(p.get("to"), list) or not p["to"]:
            yield (
                "The to array is required for all personalization objects, and must "
                "have at least one email object with a valid email address.",
                f"personalizations.{i}.to",
            )
            continue
        total += sum(len(p.get(k) or []) for k in ("to", "cc", "bcc"))
        yield from _check_people(p, i)
        yield from _check_headers(p.get("headers"), f"personalizations.{i}.headers")
        yield from _check_args(p.get("custom_args"), f"personalizations.{i}.custom_args")
    if total > MAX_RECIPIENTS:
        yield (
            f"The total number of recipients must be no more than {MAX_RECIPIENTS}.",
            "personalizations",
        )


def _check_subject(body: dict[str, Any]) -> Iterator[Problem]:
    if isinstance(body.get("subject"), str) and body["subject"]:
        return
    items = body.get("personalizations") or []
    if items and all(isinstance(p, dict) and p.get("subject") for p in items):
        return
    if not body.get("template_id"):
        yield (
            "The subject is required. You can get around this requirement if you use a "
            "template with a subject defined or if every personalization has a subject "
            "defined.",
            "subject",
        )


def _check_content(body: dict[str, Any]) -> Iterator[Problem]:
    content = body.get("content")
    if content is None and body.get("template_id"):
        return
    if not isinstance(content, list) or not content:
        yield (
            "Unless a valid template_id is provided, the content parameter is required. "
            "There must be at least one defined content block.",
            "content",
        )
        return
    types = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not block.get("type") or not block.get("value"):
            yield (
                "The content value must be a string at least one character in length.",
                f"content.{i}.value",
            )
            continue
        types.append(block["type"])
    order = [t for t in types if t in ("text/plain", "text/html")]
    if order != types[: len(order)] or order not in (
        [],
        ["text/plain"],
        ["text/html"],
        ["text/plain", "text/html"],
    ):
        yield (
            "If present, text/plain and text/html may only be provided in order, "
            "followed by any other content.",
            "content",
        )


def _check_headers(headers: Any, where: str) -> Iterator[Problem]:
    if headers is None:
        return
    if not isinstance(headers, dict):
        yield "The headers parameter must be a collection of key/value pairs", where
        return
    for name, value in headers.items():
        if name.lower() in RESERVED:
            yield (
                f"The {name} header is a reserved header and may not be overridden.",
                f"{where}.{name}",
            )
        if not isinstance(value, str):
            yield (
                "Invalid type. Expected: string, given: " + type(value).__name__,
                f"{where}.{name}",
            )


def _check_args(args: Any, where: str) -> Iterator[Problem]:
    if args is None:
        return
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        yield "custom_args must be an object of string values", where


def _check_attachments(body: dict[str, Any]) -> Iterator[Problem]:
    for i, item in enumerate(body.get("attachments") or []):
        where = f"attachments.{i}"
        try:
            base64.b64decode(item.get("content") or "", validate=True)
        except (binascii.Error, ValueError):
            yield "The attachment content must be base64 encoded.", f"{where}.content"
        if not item.get("content"):
            yield "The attachment content is required.", f"{where}.content"
        if not item.get("filename"):
            yield "The attachment filename is required.", f"{where}.filename"
        disposition = item.get("disposition", "attachment")
        if disposition not in ("inline", "attachment"):
            yield "disposition must be inline or attachment", f"{where}.disposition"
        if disposition == "inline" and not item.get("content_id"):
            yield (
                "The content_id parameter is required when disposition is inline.",
                f"{where}.content_id",
            )


def _check_misc(body: dict[str, Any]) -> Iterator[Problem]:
    yield from _check_email(body.get("from"), "from")
    if "reply_to" in body and "reply_to_list" in body:
        yield (
            "You can either choose to use reply_to field or reply_to_list but not both.",
            "reply_to",
        )
    yield from _check_headers(body.get("headers"), "headers")
    categories = body.get("categories") or []
    if len(categories) > 10 or len(set(categories)) != len(categories):
        yield "Categories may have at most 10 unique items.", "categories"
    if any(not isinstance(c, str) or len(c) > 255 for c in categories):
        yield "A category name cannot exceed 255 characters.", "categories"
    pool = body.get("ip_pool_name")
    if pool is not None and not (isinstance(pool, str) and 2 <= len(pool) <= 64):
        yield "The ip_pool_name must be between 2 and 64 characters.", "ip_pool_name"
    yield from _check_args(body.get("custom_args"), "custom_args")


def validate(body: Any) -> list[Problem]:
    """Every refusal SendGrid would give for this request body."""
    if not isinstance(body, dict):
        return [("Bad Request", None)]
    checks = (
        _check_personalizations,
        _check_misc,
        _check_subject,
        _check_content,
        _check_attachments,
    )
    return [problem for check in checks for problem in check(body)]


# -- the app -----------------------------------------------------------------


def _authorized(state: ApiState, request: Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {state.api_key}"


def _sandbox(body: dict[str, Any]) -> bool:
    settings = body.get("mail_settings") or {}
    return bool((settings.get("sandbox_mode") or {}).get("enable"))


def create_app(state: ApiState) -> Starlette:
    async def mail_send(request: Request) -> Response:
        raw = await request.body()
        seen = Received(
            "POST",
            "/v3/mail/send",
            auth_scheme(request.headers.get("authorization")),
            None,
            len(raw),
            peer=f"{request.client.host}:{request.client.port}" if request.client else "",
        )
        state.arrive(seen)
        status = 500  # cancelled or crashed: counted as answered all the same
        try:
            response = await _mail_send(state, request, raw, seen)
            status = response.status_code
        finally:
            state.answered(seen, status)
        return response

    async def scopes(request: Request) -> Response:
        if not _authorized(state, request):
            return _errors(401, [("authorization required", None)])
        return JSONResponse({"scopes": ["mail.send", "scopes.read"]})

    async def suppression_list(request: Request) -> Response:
        """GET /v3/suppression/{bounces,spam_reports,unsubscribes}, paged by
        ``limit`` (at most 500) and ``offset``, as SendGrid's are."""
        if not _authorized(state, request):
            return _errors(401, [("authorization required", None)])
        name = request.path_params["name"]
        try:
            limit = min(int(request.query_params.get("limit", "500")), 500)
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _errors(400, [("limit and offset must be integers", None)])
        entries = state.lists.get(name, [])
        return JSONResponse(entries[offset : offset + limit])

    routes = [
        Route("/v3/mail/send", mail_send, methods=["POST"]),
        Route("/v3/scopes", scopes, methods=["GET"]),
        Route(
            "/v3/suppression/{name:str}",
            suppression_list,
            methods=["GET"],
        ),
        *control_routes(state),
    ]
    return Starlette(routes=routes)


async def _mail_send(state: ApiState, request: Request, raw: bytes, seen: Received) -> Response:
    fault = await state.misbehave()
    if fault is not None:
        return _fault_response(fault)
    if not _authorized(state, request):
        return _errors(
            401, [("The provided authorization grant is invalid, expired, or revoked", None)]
        )
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _errors(415, [("Content-Type should be application/json.", None)])
    if len(raw) > MAX_BYTES:
        return _errors(
            413, [("The JSON payload you have included in your request is too large.", None)]
        )
    try:
        seen.body = json.loads(raw)
    except ValueError:
        return _errors(400, [("Bad Request", None)])
    problems = validate(seen.body)
    if problems:
        return _errors(400, problems)
    if _sandbox(seen.body):
        return Response(status_code=200)
    seen.message_id = secrets.token_urlsafe(16)
    if state.on_accepted is not None:
        state.on_accepted(seen.body, seen.message_id)
    return Response(status_code=202, headers={"X-Message-Id": seen.message_id})
