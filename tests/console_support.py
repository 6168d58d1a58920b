"""Helpers for the console tests: console users on the API tests' world, an HTTP session.

``ConsoleClient`` is httpx against the admin listener keeping cookies, as a
browser would: it reads the CSRF token from the page it was given, as the
browser sends it back from the form.
"""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
from sqlalchemy import Engine

from relay.auth.passwords import make_hasher
from relay.core.settings import Settings
from relay.service import console_users
from tests.support import RelayThread

USER_PASSWORD = "console-password-1"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def make_user(
    settings: Settings,
    engine: Engine,
    email: str,
    account: str | None,
    role: str = "admin",
    operator: bool = False,
) -> str:
    hasher = make_hasher(settings)
    console_users.create_user(engine, hasher, email, account, role, operator, USER_PASSWORD)
    return email


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "no CSRF field on the page"
    return html.unescape(found.group(1))


def text_of(page: str) -> str:
    """The page's text without tags, whitespace collapsed (for assertions on wording)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


class ConsoleClient:
    def __init__(self, relay: RelayThread) -> None:
        assert relay.relay is not None and relay.relay.admin_port
        self.base = f"http://127.0.0.1:{relay.relay.admin_port}"
        self.client = httpx.Client(base_url=self.base, timeout=20, follow_redirects=False)
        self.csrf = ""

    def sign_in(self, email: str, password: str = USER_PASSWORD) -> httpx.Response:
        form = self.client.get("/sign-in")
        data = {"csrf": csrf_of(form.text), "email": email, "password": password, "next": "/"}
        response = self.client.post("/sign-in", data=data)
        if response.status_code == 303:
            self.csrf = csrf_of(self.client.get("/").text)
        return response

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(
        self, path: str, data: dict[str, str] | None = None, csrf: bool = True
    ) -> httpx.Response:
        body = dict(data or {})
        if csrf:
            body["csrf"] = self.csrf
        return self.client.post(path, data=body)

    def close(self) -> None:
        self.client.close()
