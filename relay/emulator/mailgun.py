"""A fake Mailgun API: ``POST /v3/{domain}/messages.mime`` and ``GET /v4/domains/{domain}``.

It checks what Mailgun checks, answering ``{"message": ...}`` as Mailgun does:

* HTTP basic auth, user ``api``, the key as password (401 "Forbidden" otherwise);
* the domain: one told to be ``unknown`` is 404 "Domain not found"; a
  ``disabled`` one is 403; any other is known (``active`` unless told);
* ``multipart/form-data`` (RFC 7578), read with the stdlib's MIME parser, not
  Relay's code: a ``message`` part (400 "'message' parameter is missing")
  whose header has a From field, and at least one ``to`` field with a valid
  address (400 "'to' parameter is missing" / "... is not a valid address").

Recipients told to :meth:`~relay.emulator.faults.ApiState.suppress` are
accepted (Mailgun queues, then reports them ``failed`` with reason
``suppress-bounce``). What was received is recorded: the form's fields as a
dict of lists (``message`` decoded for reading), and the exact bytes of the
``message`` part in :attr:`MailgunState.mime` by Mailgun id.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import HTTP, SMTPUTF8
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.emulator.faults import ApiState, Fault, Received, auth_scheme, control_routes

DOMAIN = "mg.example.com"  # the emulator's default sending domain
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class MailgunState(ApiState):
    """Mailgun's state: its domains' states and the MIME of each accepted message."""

    # Domain -> state: "active", "unverified", "disabled", or "unknown" (404).
    # A domain not named here is active.
    domains: dict[str, str] = field(default_factory=dict)
    mime: dict[str, bytes] = field(default_factory=dict)

    def reset(self) -> None:
        super().reset()
        self.domains.clear()
        self.mime.clear()


def _answer(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    if fault.kind == "rate_limit":
        retry = str(int(fault.seconds) + 1)
        return _answer(429, "Too many requests", {"Retry-After": retry})
    return _answer(fault.status, fault.message)


def _authorized(state: ApiState, header: str | None) -> bool:
    token = base64.b64encode(f"api:{state.api_key}".encode()).decode("ascii")
    return header == f"Basic {token}"


def parse_form(content_type: str, raw: bytes) -> dict[str, list[Any]]:
    """A multipart/form-data body (RFC 7578) as name -> values (bytes for file parts).

    Split on the boundary by hand (RFC 2046 5.1.1) so a part's bytes are exactly
    what was sent; each part's header is read with the stdlib's parser.
    """
    head = BytesHeaderParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode()
    )
    boundary = head.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("no boundary")
    delimiter = b"--" + boundary.encode("ascii")
    chunks = raw.split(b"\r\n" + delimiter)
    first = chunks[0]
    if not first.startswith(delimiter):
        raise ValueError("the body does not start with the boundary")
    chunks[0] = first[len(delimiter) :]
    out: dict[str, list[Any]] = {}
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        part_head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without a header")
        header = BytesHeaderParser(policy=HTTP).parsebytes(part_head.lstrip(b"\r\n") + b"\r\n\r\n")
        name = header.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ValueError("a part without a name")
        value: Any = data if header.get_filename() else data.decode("utf-8")
        out.setdefault(name, []).append(value)
    return out


def _check(form: dict[str, list[Any]]) -> str | None:
    """Mailgun's refusal of this form, if any (it reports one at a time)."""
    messages = form.get("message") or []
    if not messages or not isinstance(messages[0], bytes) or not messages[0].strip():
        return "'message' parameter is missing"
    tos = form.get("to") or []
    if not tos:
        return "'to' parameter is missing"
    for to in tos:
        if not isinstance(to, str) or not _EMAIL.match(to):
            return f"'to' parameter is not a valid address. please check documentation: {to!r}"
    header = BytesHeaderParser(policy=SMTPUTF8).parsebytes(messages[0])
    if header.get("from") is None:
        return "'from' parameter is missing"
    return None


def _domain_refusal(state: MailgunState, domain: str) -> Response | None:
    status = state.domains.get(domain, "active")
    if status == "unknown":
        return _answer(404, "Domain not found")
    if status == "disabled":
        return _answer(403, f"Domain {domain} is disabled")
    return None


def _recorded(form: dict[str, list[Any]]) -> dict[str, list[str]]:
    """The form as JSON can show it: the MIME decoded for reading (exact bytes apart)."""
    return {
        k: [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in vs]
        for k, vs in form.items()
    }


def create_app(state: MailgunState) -> Starlette:
    async def messages_mime(request: Request) -> Response:
        raw = await request.body()
        domain = request.path_params["domain"]
        header = request.headers.get("authorization")
        path = f"/v3/{domain}/messages.mime"
        seen = Received("POST", path, auth_scheme(header), None, len(raw))
        state.received.append(seen)
        response = await _messages(state, request, domain, raw, seen)
        seen.status = response.status_code
        return response

    async def get_domain(request: Request) -> Response:
        if not _authorized(state, request.headers.get("authorization")):
            return _answer(401, "Forbidden")
        domain = request.path_params["domain"]
        status = state.domains.get(domain, "active")
        if status == "unknown":
            return _answer(404, "Domain not found")
        body: dict[str, Any] = {
            "name": domain,
            "state": status,
            "is_disabled": status == "disabled",
            "type": "custom",
        }
        if status == "disabled":
            body["disabled"] = {"code": "10", "reason": "abuse: the account is under review"}
        return JSONResponse(
            {"domain": body, "receiving_dns_records": [], "sending_dns_records": []}
        )

    async def suppressions(request: Request) -> Response:
        """GET /v3/{domain}/bounces|complaints|unsubscribes: the seeded entries, paged
        as Mailgun pages them (``limit``; ``paging.next`` names the last address)."""
        if not _authorized(state, request.headers.get("authorization")):
            return _answer(401, "Forbidden")
        refusal = _domain_refusal(state, request.path_params["domain"])
        if refusal is not None:
            return refusal
        name = request.url.path.rsplit("/", 1)[1]
        entries = state.lists.get(name, [])
        limit = min(int(request.query_params.get("limit", "100") or 100), 1000)
        start = 0
        after = request.query_params.get("address")
        if request.query_params.get("page") == "next" and after:
            found = [i for i, e in enumerate(entries) if e.get("address") == after]
            start = found[0] + 1 if found else len(entries)
        items = entries[start : start + limit]
        base = str(request.url.replace(query=""))
        last = items[-1]["address"] if items else (after or "")
        paging = {
            "first": f"{base}?page=first&limit={limit}",
            "next": f"{base}?page=next&address={last}&limit={limit}",
            "last": f"{base}?page=last&limit={limit}",
        }
        return JSONResponse({"items": items, "paging": paging})

    routes = [
        Route("/v3/{domain}/messages.mime", messages_mime, methods=["POST"]),
        *[
            Route(f"/v3/{{domain}}/{name}", suppressions, methods=["GET"], name=name)
            for name in ("bounces", "complaints", "unsubscribes")
        ],
        Route("/v4/domains/{domain}", get_domain, methods=["GET"]),
        Route("/v3/domains/{domain}", get_domain, methods=["GET"]),
        *control_routes(state),
    ]
    return Starlette(routes=routes)


async def _messages(
    state: MailgunState, request: Request, domain: str, raw: bytes, seen: Received
) -> Response:
    fault = await state.misbehave()
    if fault is not None:
        return _fault_response(fault)
    if not _authorized(state, request.headers.get("authorization")):
        return _answer(401, "Forbidden")
    refusal = _domain_refusal(state, domain)
    if refusal is not None:
        return refusal
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return _answer(400, "the body must be multipart/form-data")
    try:
        form = parse_form(content_type, raw)
    except (ValueError, UnicodeDecodeError):
        return _answer(400, "malformed multipart/form-data")
    seen.body = _recorded(form)
    problem = _check(form)
    if problem is not None:
        return _answer(400, problem)
    seen.message_id = f"<{int(time.time() * 1000)}.{secrets.token_hex(6)}@{domain}>"
    state.mime[seen.message_id] = form["message"][0]
    if state.on_accepted is not None:
        state.on_accepted(form, seen.message_id)
    return JSONResponse({"id": seen.message_id, "message": "Queued. Thank you."})
