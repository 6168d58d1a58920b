"""A fake Amazon SES v2 API: ``SendEmail`` (raw content), ``GetAccount``, ``GetEmailIdentity``.

The emulator's key plays both halves of an IAM key pair: the access key id
a provider row names (``access_key_id``) and its secret. A request must be
Signature Version 4 for the ``ses`` service with that key id in its
credential scope, else 403 ``UnrecognizedClientException`` (the signature
itself is not recomputed: tests of the signer use moto and botocore). Errors
are SES's REST-JSON shape: ``x-amzn-ErrorType`` and ``{"message": ...}``.

``SendEmail`` checks what SES checks: ``Content.Raw.Data`` base64 of a
message with a From field (400 ``BadRequestException``), 1 to 50 recipients
in ``Destination`` (400 ``BadRequestException``), a sender whose address or
domain is a verified identity (400 ``MessageRejected``). Identities: every
one is verified unless tests seed the ``identities`` list
(``state.seed_list("identities", {"identity": "example.com"})``), which then
names the only verified ones. Faults (``/_emulator/fail`` with ``code`` as
the error type, ``rate-limit`` as 429 ``TooManyRequestsException``) as for
the other APIs.

The SMTP sink takes the SES SMTP login: the key id as user and
:func:`smtp_password` of the key as password (AWS's derivation, computed
here as AWS's console does, apart from the relay's own).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.emulator.faults import ApiState, Fault, Received, control_routes

REGION = "us-east-1"
MAX_RECIPIENTS = 50
_CREDENTIAL = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/\s]+)/\d{8}/([a-z0-9-]+)/ses/aws4_request"
)


def smtp_password(secret_access_key: str, region: str = REGION) -> str:
    """The SES SMTP password of a secret access key (AWS's documented derivation)."""
    key = ("AWS4" + secret_access_key).encode()
    for part in ("11111111", region, "ses", "aws4_request", "SendRawEmail"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"\x04" + key).decode()


def _error(status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    headers = {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.ses/"}
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after) + 1)
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> Response:
    if fault.kind == "rate_limit":
        return _error(429, "TooManyRequestsException", "Too many requests", fault.seconds)
    code = fault.code or ("InternalFailure" if fault.status >= 500 else "BadRequestException")
    return _error(fault.status, code, fault.message)


def _authorized(state: ApiState, header: str | None) -> bool:
    match = _CREDENTIAL.match(header or "")
    return match is not None and hmac.compare_digest(match.group(1), state.api_key)


def _verified(state: ApiState, address: str) -> bool:
    seeded = state.lists.get("identities")
    if seeded is None:
        return True
    names = {str(entry.get("identity", "")).lower() for entry in seeded}
    address = address.lower()
    return address in names or address.rpartition("@")[2] in names


def _sender(raw: bytes) -> str | None:
    header = BytesHeaderParser(policy=SMTPUTF8).parsebytes(raw)
    value = header.get("from")
    if value is None:
        return None
    match = re.search(r"<([^>]+)>", str(value))
    return match.group(1) if match else str(value).strip()


def validate(state: ApiState, body: Any) -> tuple[str, str] | None:
    """SES's refusal of this SendEmail body as (error type, message), or None."""
    if not isinstance(body, dict):
        return "BadRequestException", "the body must be an object"
    destination = body.get("Destination") or {}
    to = [
        a
        for key in ("ToAddresses", "CcAddresses", "BccAddresses")
        for a in destination.get(key, [])
    ]
    if not to:
        return "BadRequestException", "Destination must name at least one recipient"
    if len(to) > MAX_RECIPIENTS:
        return "BadRequestException", f"Recipient count exceeds {MAX_RECIPIENTS}"
    try:
        raw = base64.b64decode(body["Content"]["Raw"]["Data"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        return "BadRequestException", "Content.Raw.Data must be base64 of the message"
    sender = body.get("FromEmailAddress") or _sender(raw)
    if not sender or _sender(raw) is None:
        return "BadRequestException", "the message has no From field"
    if not _verified(state, str(sender)):
        return "MessageRejected", f"Email address is not verified: {sender}"
    return None


def create_app(state: ApiState) -> Starlette:
    async def send_email(request: Request) -> Response:
        raw = await request.body()
        seen = Received("POST", "/v2/email/outbound-emails", "AWS4", None, len(raw))
        state.received.append(seen)
        response = await _send(state, request, raw, seen)
        seen.status = response.status_code
        return response

    async def account(request: Request) -> Response:
        if not _authorized(state, request.headers.get("authorization")):
            return _error(403, "UnrecognizedClientException", "The security token is invalid.")
        return JSONResponse(
            {
                "SendingEnabled": True,
                "ProductionAccessEnabled": True,
                "EnforcementStatus": "HEALTHY",
                "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0},
            }
        )

    async def identity(request: Request) -> Response:
        if not _authorized(state, request.headers.get("authorization")):
            return _error(403, "UnrecognizedClientException", "The security token is invalid.")
        name = unquote(request.path_params["identity"])
        if not _verified(state, name):
            return _error(404, "NotFoundException", f"Email identity {name} does not exist.")
        kind = "EMAIL_ADDRESS" if "@" in name else "DOMAIN"
        return JSONResponse(
            {
                "IdentityType": kind,
                "VerifiedForSendingStatus": True,
                "VerificationStatus": "SUCCESS",
            }
        )

    routes = [
        Route("/v2/email/outbound-emails", send_email, methods=["POST"]),
        Route("/v2/email/account", account, methods=["GET"]),
        Route("/v2/email/identities/{identity:path}", identity, methods=["GET"]),
        *control_routes(state),
    ]
    return Starlette(routes=routes)


async def _send(state: ApiState, request: Request, raw: bytes, seen: Received) -> Response:
    fault = await state.misbehave()
    if fault is not None:
        return _fault_response(fault)
    if not _authorized(state, request.headers.get("authorization")):
        return _error(403, "UnrecognizedClientException", "The security token is invalid.")
    try:
        seen.body = json.loads(raw)
    except ValueError:
        return _error(400, "BadRequestException", "the body is not JSON")
    refusal = validate(state, seen.body)
    if refusal is not None:
        return _error(400, *refusal)
    seen.message_id = f"0100{secrets.token_hex(8)}-{secrets.token_hex(4)}-000000"
    if state.on_accepted is not None:
        state.on_accepted(seen.body, seen.message_id)
    return JSONResponse({"MessageId": seen.message_id})
