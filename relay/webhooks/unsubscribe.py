"""One-click unsubscribe (RFC 8058): ``GET`` and ``POST /u/{token}`` on the public listener.

Intake puts ``List-Unsubscribe: <PUBLIC/u/TOKEN>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` on the campaign mail of
an account that asks for it; the token (``relay.core.unsubscribe``) names
the account, the recipient and the campaign, and is checked with a MAC, no
look-up.

- ``POST`` with the body ``List-Unsubscribe=One-Click`` (what a mailbox
  provider sends when the reader clicks its unsubscribe button, RFC 8058 3.2,
  urlencoded or multipart/form-data; and what this page's own form sends)
  suppresses the recipient for the account with reason ``unsubscribe``.
  Idempotent: the suppression write is (account, address) unique, so a
  second click changes nothing. 200 and a short page, never a redirect
  (RFC 8058 3.2: the POST must not need one to be followed).
- ``GET`` shows a page with a button that makes that POST, and changes
  nothing: mail filters and link scanners fetch every URL in a message, and
  an unsubscribe on GET would unsubscribe everyone they scan for.
- A token that is not ours (forged, altered, made with another key) is 404,
  and nothing is read or stored. A POST without the one-click body is 400.

Errors are a short HTML page for a browser (``Accept: text/html``), the
admin API's JSON error body for anything else. The pages carry no script,
no outside resource, and ask not to be cached, indexed or framed, nor to
send the token on as a referrer.

The suppression write is not this module's: ``routes`` is given a
``suppress`` callable (the suppression service's), called on a worker
thread.
"""

from __future__ import annotations

import asyncio
import html
import logging
import urllib.parse
from collections.abc import Callable
from email import policy as email_policy
from email.parser import BytesParser

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from relay.core.errors import NotFound
from relay.core.unsubscribe import Unsubscribe, read_token

log = logging.getLogger("relay.webhooks")

# suppress(account_id, address, reason, source, detail): adds the suppression,
# or leaves the one already there; raises NotFound if the account is gone.
Suppress = Callable[[int, str, str, str, str | None], None]

REASON = "unsubscribe"
SOURCE = "unsubscribe"
MAX_BODY = 16 * 1024  # a one-click body is 26 bytes; a multipart one a few hundred
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em}}</style>
</head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = _PAGE.format(title=html.escape(title), body=body)
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def _error(request: Request, status: int, code: str, message: str) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return _page(message, "", status)
    body = {"error": {"code": code, "message": message, "field": None}}
    return JSONResponse(body, status_code=status, headers=_HEADERS)


def _one_click(content_type: str, body: bytes) -> bool:
    """Whether ``body`` is RFC 8058's ``List-Unsubscribe=One-Click``, either form encoding."""
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return "One-Click" in fields.get("List-Unsubscribe", [])
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        form = BytesParser(policy=email_policy.HTTP).parsebytes(head + body)
        if not form.is_multipart():
            return False
        for part in form.walk():
            name = part.get_param("name", header="content-disposition")
            value = part.get_payload(decode=True)
            if (
                name == "List-Unsubscribe"
                and isinstance(value, bytes)
                and value.strip() == b"One-Click"
            ):
                return True
    return False


async def _body(request: Request) -> bytes | None:
    """The request body, or None past ``MAX_BODY``."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            return None
    return data


def routes(key: bytes, suppress: Suppress) -> list[Route]:
    """``/u/{token}`` for GET and POST, tokens checked with ``key``
    (``derive_key(secret_key, UNSUBSCRIBE_LABEL)``, as intake makes them)."""

    def token_of(request: Request) -> Unsubscribe | None:
        return read_token(key, request.path_params["token"])

    async def confirm(request: Request) -> Response:
        found = token_of(request)
        if found is None:
            return _error(request, 404, "not_found", "This unsubscribe link is not valid.")
        body = (
            f"<p>Stop mail to <strong>{html.escape(found.recipient)}</strong> "
            "from this sender?</p>\n"
            '<form method="post">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", body)

    async def unsubscribe(request: Request) -> Response:
        found = token_of(request)
        if found is None:
            return _error(request, 404, "not_found", "This unsubscribe link is not valid.")
        body = await _body(request)
        if body is None:
            return _error(request, 413, "too_large", "Request body too large.")
        if not _one_click(request.headers.get("content-type", ""), body):
            message = "Expected the one-click body List-Unsubscribe=One-Click (RFC 8058)."
            return _error(request, 400, "invalid", message)
        detail = "one-click" + (f", campaign {found.campaign}" if found.campaign else "")
        try:
            await asyncio.to_thread(
                suppress, found.account_id, found.recipient, REASON, SOURCE, detail
            )
        except NotFound:
            return _error(request, 404, "not_found", "This unsubscribe link is not valid.")
        log.info(
            "unsubscribe: account_id=%d to=<%s> campaign=%r",
            found.account_id,
            found.recipient,
            found.campaign,
        )
        address = html.escape(found.recipient)
        return _page("Unsubscribed", f"<p>{address} will get no more mail from this sender.</p>")

    return [
        Route("/u/{token}", confirm, methods=["GET"]),
        Route("/u/{token}", unsubscribe, methods=["POST"]),
    ]
