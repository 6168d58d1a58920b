"""The providers' own suppression lists, read so that history counts from day one.

``relay suppression sync --provider NAME`` (``relay.service.suppressions``)
reads the provider's lists here and adds each address to the list of the
account that owns the provider (an agency's provider: the agency's list,
which its sub-accounts see when it shares). Synchronous on purpose: the
service layer runs it on a worker thread (the CLI, or the API's thread pool),
never on the relay's event loop.

- SendGrid: ``GET /v3/suppression/bounces`` (``hard_bounce``),
  ``/v3/suppression/spam_reports`` (``complaint``), ``/v3/suppression/unsubscribes``
  (``unsubscribe``), paged by ``limit`` (500) and ``offset``; ``created`` is
  a Unix time.
- SparkPost: its suppression list through the ``sparkpost`` package
  (``SuppressionList.list``); the entry's ``source`` says why: "Spam
  Complaint" (``complaint``), "Unsubscribe" and "List Unsubscribe"
  (``unsubscribe``), "Bounce Rule" (``hard_bounce``), anything else
  ("Manually Added", "Compliance") ``manual``.
- Mailgun: ``GET /v3/{domain}/bounces`` (``hard_bounce``), ``/complaints``
  (``complaint``), ``/unsubscribes`` (``unsubscribe``) with basic auth
  ``api:KEY``, ``limit`` 1000 a page, following ``paging.next`` until a page
  comes back empty (Mailgun's own cursor paging); ``created_at`` is an RFC
  2822 date.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass
from typing import Any

import httpx

from relay.core.errors import TransientError
from relay.suppression import lists

SENDGRID_LISTS = {
    "bounces": lists.HARD_BOUNCE,
    "spam_reports": lists.COMPLAINT,
    "unsubscribes": lists.UNSUBSCRIBE,
}
SENDGRID_PAGE = 500
MAILGUN_LISTS = {
    "bounces": lists.HARD_BOUNCE,
    "complaints": lists.COMPLAINT,
    "unsubscribes": lists.UNSUBSCRIBE,
}
MAILGUN_PAGE = 1000
MAILGUN_MAX_PAGES = 10_000  # a bound on the loop: ten million entries a list
SPARKPOST_LIMIT = 10000
_SPARKPOST_SOURCES = {
    "spam complaint": lists.COMPLAINT,
    "unsubscribe": lists.UNSUBSCRIBE,
    "list unsubscribe": lists.UNSUBSCRIBE,
    "bounce rule": lists.HARD_BOUNCE,
}


@dataclass(frozen=True)
class Synced:
    """One entry of a provider's list, in our words."""

    address: str
    reason: str
    created_at: dt.datetime | None
    detail: str


def sendgrid(api_url: str, api_key: str, timeout: float = 30.0) -> list[Synced]:
    """Every entry of SendGrid's bounces, spam reports and unsubscribes."""
    out: list[Synced] = []
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout) as client:
        for name, reason in SENDGRID_LISTS.items():
            offset = 0
            while True:
                params = {"limit": SENDGRID_PAGE, "offset": offset}
                try:
                    response = client.get(f"/v3/suppression/{name}", params=params)
                except httpx.HTTPError as exc:
                    raise TransientError(f"SendGrid {name}: {exc}") from exc
                if response.status_code != 200:
                    raise TransientError(f"SendGrid {name}: HTTP {response.status_code}")
                page = response.json()
                for item in page:
                    out.append(_sendgrid_entry(name, reason, item))
                if len(page) < SENDGRID_PAGE:
                    break
                offset += SENDGRID_PAGE
    return out


def _sendgrid_entry(name: str, reason: str, item: dict[str, Any]) -> Synced:
    created = item.get("created")
    at = dt.datetime.fromtimestamp(int(created), dt.UTC) if created else None
    why = item.get("reason") or item.get("status") or ""
    detail = f"SendGrid {name}" + (f": {why}" if why else "")
    return Synced(str(item.get("email", "")), reason, at, detail)


def sparkpost(api_url: str, api_key: str) -> list[Synced]:
    """Every entry of SparkPost's suppression list, through the ``sparkpost`` package."""
    from sparkpost.exceptions import SparkPostAPIException
    from sparkpost.suppression_list import SuppressionList

    # The package's SparkPost() always builds an https:// URL from a host
    # name; the resource itself takes the base URL as given (EU, emulator).
    resource = SuppressionList(f"{api_url.rstrip('/')}/api/v1", api_key)
    try:
        results = resource.list(limit=SPARKPOST_LIMIT)
    except SparkPostAPIException as exc:
        raise TransientError(f"SparkPost suppression list: HTTP {exc.status}") from exc
    except OSError as exc:  # requests' connection errors
        raise TransientError(f"SparkPost suppression list: {exc}") from exc
    return [_sparkpost_entry(item) for item in results or []]


def _sparkpost_entry(item: dict[str, Any]) -> Synced:
    source = str(item.get("source") or "")
    reason = _SPARKPOST_SOURCES.get(source.lower(), lists.MANUAL)
    created = item.get("created") or item.get("updated")
    at = None
    if created:
        try:
            at = dt.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        except ValueError:
            at = None
    detail = f"SparkPost {source or 'suppression list'}"
    if item.get("description"):
        detail += f": {item['description']}"
    return Synced(str(item.get("recipient", "")), reason, at, detail)


def mailgun(api_url: str, domain: str, api_key: str, timeout: float = 30.0) -> list[Synced]:
    """Every entry of Mailgun's bounces, complaints and unsubscribes for ``domain``."""
    out: list[Synced] = []
    auth = httpx.BasicAuth("api", api_key)
    with httpx.Client(base_url=api_url.rstrip("/"), auth=auth, timeout=timeout) as client:
        for name, reason in MAILGUN_LISTS.items():
            url: str = f"/v3/{domain}/{name}?limit={MAILGUN_PAGE}"
            for _ in range(MAILGUN_MAX_PAGES):
                try:
                    response = client.get(url)
                except httpx.HTTPError as exc:
                    raise TransientError(f"Mailgun {name}: {exc}") from exc
                if response.status_code != 200:
                    raise TransientError(f"Mailgun {name}: HTTP {response.status_code}")
                page = response.json()
                items = page.get("items") or []
                out += [_mailgun_entry(name, reason, item) for item in items]
                following = (page.get("paging") or {}).get("next")
                if not items or not following or _path_of(str(following)) == url:
                    break
                url = _path_of(str(following))
    return out


def _path_of(following: str) -> str:
    """Mailgun's next page as a path and query on the API we were given: its
    absolute URL names the public host (not the EU one, nor the emulator), and
    the key must go nowhere else."""
    return httpx.URL(following).raw_path.decode("ascii")


def _mailgun_entry(name: str, reason: str, item: dict[str, Any]) -> Synced:
    at = None
    if item.get("created_at"):
        try:
            at = email.utils.parsedate_to_datetime(str(item["created_at"]))
        except (TypeError, ValueError):
            at = None
    why = item.get("error") or item.get("code") or ""
    detail = f"Mailgun {name}" + (f": {why}" if why else "")
    return Synced(str(item.get("address", "")), reason, at, detail)
