"""The API docs pages work with no internet: every script, style and icon they
load is served by the relay itself (issue 16, item 7)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.support import RelayThread


class _Refs(HTMLParser):
    """Every URL a page makes the browser load: src=, href=, spec-url= and url: '...' in scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", data)
        self.urls += re.findall(r"""https?://[^\s'"<>)]+""", data)


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_the_docs_pages_load_nothing_from_outside(relay: RelayThread, page: str) -> None:
    base = f"http://127.0.0.1:{relay.relay.admin_port}"
    url = f"{base}/api/v1/{page}"
    html = httpx.get(url, timeout=10)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    parser = _Refs()
    parser.feed(html.text)
    assert parser.urls, "the page loads no assets at all?"
    scripts = 0
    for ref in parser.urls:
        absolute = urljoin(url, ref)
        assert urlsplit(absolute).netloc == urlsplit(base).netloc, f"{page} loads {ref}"
        answer = httpx.get(absolute, timeout=10)
        assert answer.status_code == 200, f"{ref}: {answer.status_code}"
        scripts += absolute.endswith(".js")
        if absolute.endswith(".js"):
            assert len(answer.content) > 100_000  # the real bundle, not a placeholder
    assert scripts >= 1
    assert "/api/v1/openapi.json" in parser.urls  # the document the page renders
