"""A fake SparkPost API: ``POST /api/v1/transmissions`` and ``GET /api/v1/account``.

It checks what SparkPost checks, with SparkPost's extended error codes:

* ``Authorization: <key>``, the bare key (or Basic with the key as user);
  "Bearer <key>" is refused like any wrong key (401);
* JSON (415, code 1700);
* ``recipients``: a non-empty list of addresses (422, 1400), each valid (1300);
* ``content``: required (1400); ``email_rfc822`` must be the only field of
  ``content`` (422, 1301 "Invalid combination of fields"), a non-empty string
  whose header has a From field (422, 3020);
* ``options`` an object; ``campaign_id`` at most 64 bytes (1300).

Recipients told to :meth:`~relay.emulator.faults.ApiState.suppress` are
rejected: some of them give a 200 whose ``results`` count them in
``total_rejected_recipients``; all of them give 400, code 1902 ("Message
generation rejected"), as the real service does for a suppressed recipient.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.emulator.faults import ApiState, Fault, Received, auth_scheme, control_routes

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Problem = tuple[str, str, str]  # (message, code, description)


def _errors(
    status: int, problems: list[Problem], headers: dict[str, str] | None = None
) -> Response:
    body = {"errors": [{"message": m, "code": c, "description": d} for m, c, d in problems]}
    return JSONResponse(body, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    if fault.kind == "rate_limit":
        retry = str(int(fault.seconds) + 1)
        return _errors(429, [("Too many requests", "", "rate limited")], {"Retry-After": retry})
    return _errors(fault.status, [(fault.message, fault.code or "", "emulated")])


def _authorized(state: ApiState, header: str | None) -> bool:
    if header == state.api_key:
        return True
    basic = "Basic " + base64.b64encode(f"{state.api_key}:".encode()).decode()
    return header == basic


def _address(item: Any) -> str | None:
    address = item.get("address") if isinstance(item, dict) else None
    if isinstance(address, str):
        return address
    if isinstance(address, dict) and isinstance(address.get("email"), str):
        return str(address["email"])
    return None


def _check_recipients(body: dict[str, Any]) -> list[Problem]:
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        return [("Required field is missing", "1400", "recipients is required")]
    for i, item in enumerate(recipients):
        address = _address(item)
        if address is None or not _EMAIL.match(address):
            return [("invalid data format/type", "1300", f"Invalid recipient address {i}")]
        header_to = item["address"].get("header_to") if isinstance(item["address"], dict) else None
        if header_to is not None and not isinstance(header_to, str):
            return [("invalid data format/type", "1300", "header_to must be a string")]
    return []


def _check_content(body: dict[str, Any]) -> list[Problem]:
    content = body.get("content")
    if not isinstance(content, dict) or not content:
        return [("Required field is missing", "1400", "content is required")]
    if "email_rfc822" not in content:
        return []
    if len(content) > 1:
        others = ", ".join(sorted(k for k in content if k != "email_rfc822"))
        return [
            (
                "Invalid combination of fields",
                "1301",
                f"email_rfc822 cannot be combined with {others}",
            )
        ]
    rfc822 = content["email_rfc822"]
    if not isinstance(rfc822, str) or not rfc822.strip():
        return [("invalid data format/type", "1300", "email_rfc822 must be a non-empty string")]
    header = BytesHeaderParser(policy=SMTPUTF8).parsebytes(rfc822.encode("utf-8"))
    if header.get("from") is None:
        return [("template mime parsing error", "3020", "the message has no From header")]
    return []


def _check_options(body: dict[str, Any]) -> list[Problem]:
    options = body.get("options", {})
    if not isinstance(options, dict):
        return [("invalid data format/type", "1300", "options must be an object")]
    substitutions = options.get("perform_substitutions", True)
    if not isinstance(substitutions, bool):
        return [("invalid data format/type", "1300", "perform_substitutions is a boolean")]
    campaign = body.get("campaign_id")
    if campaign is not None and len(str(campaign).encode("utf-8")) > 64:
        return [("invalid data format/type", "1300", "campaign_id is longer than 64 bytes")]
    return []


def validate(body: Any) -> list[Problem]:
    """SparkPost's first refusal for this transmission (it reports one at a time)."""
    if not isinstance(body, dict):
        return [("invalid data format/type", "1300", "the body must be an object")]
    for check in (_check_recipients, _check_content, _check_options):
        problems = check(body)
        if problems:
            return problems
    return []


def _results(state: ApiState, body: dict[str, Any], seen: Received) -> Response:
    addresses = [_address(item) or "" for item in body["recipients"]]
    rejected = sum(1 for a in addresses if a.lower() in state.suppressed)
    if rejected == len(addresses):
        return _errors(
            400,
            [
                (
                    "Message generation rejected",
                    "1902",
                    "recipient address was suppressed due to customer policy",
                )
            ],
        )
    seen.message_id = str(int(time.time() * 1000)) + secrets.token_hex(4)
    results = {
        "total_rejected_recipients": rejected,
        "total_accepted_recipients": len(addresses) - rejected,
        "id": seen.message_id,
    }
    if state.on_accepted is not None:
        state.on_accepted(body, seen.message_id)
    return JSONResponse({"results": results})


def create_app(state: ApiState) -> Starlette:
    async def transmissions(request: Request) -> Response:
        raw = await request.body()
        header = request.headers.get("authorization")
        seen = Received("POST", "/api/v1/transmissions", auth_scheme(header), None, len(raw))
        state.arrive(seen)
        status = 500  # cancelled or crashed: counted as answered all the same
        try:
            response = await _transmissions(state, request, raw, seen)
            status = response.status_code
        finally:
            state.answered(seen, status)
        return response

    async def account(request: Request) -> Response:
        if not _authorized(state, request.headers.get("authorization")):
            return _errors(401, [("Unauthorized.", "", "")])
        return JSONResponse({"results": {"customer_id": 1, "status": "active"}})

    async def suppression_list(request: Request) -> Response:
        """GET /api/v1/suppression-list: the seeded entries, up to ``limit``."""
        if not _authorized(state, request.headers.get("authorization")):
            return _errors(401, [("Unauthorized.", "", "")])
        limit = int(request.query_params.get("limit", "10000") or 10000)
        return JSONResponse({"results": state.lists.get("suppression-list", [])[:limit]})

    routes = [
        Route("/api/v1/transmissions", transmissions, methods=["POST"]),
        Route("/api/v1/suppression-list", suppression_list, methods=["GET"]),
        Route("/api/v1/account", account, methods=["GET"]),
        *control_routes(state),
    ]
    return Starlette(routes=routes)


async def _transmissions(state: ApiState, request: Request, raw: bytes, seen: Received) -> Response:
    fault = await state.misbehave()
    if fault is not None:
        return _fault_response(fault)
    if not _authorized(state, request.headers.get("authorization")):
        return _errors(401, [("Unauthorized.", "", "")])
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _errors(415, [("Unsupported Content-Type header", "1700", "")])
    try:
        seen.body = json.loads(raw)
    except ValueError:
        return _errors(400, [("invalid data format/type", "1300", "Problems parsing JSON")])
    problems = validate(seen.body)
    if problems:
        status = 400 if problems[0][1] == "1300" and not isinstance(seen.body, dict) else 422
        return _errors(status, problems)
    return _results(state, seen.body, seen)
