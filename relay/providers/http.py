"""What SendGrid's and SparkPost's API legs share: the pooled client, the key,
and the translation of httpx's exceptions at our boundary (httpx's own
``map_httpcore_exceptions`` habit, one level up)."""

from __future__ import annotations

import httpx

from relay.core.errors import TransientError
from relay.core.settings import Secret


class HttpApi:
    """Base of an API leg. Subclasses set ``label`` and ``_headers``."""

    label = "API"
    default_url = ""

    def __init__(
        self,
        name: str,
        api_key: Secret,
        *,
        http: httpx.AsyncClient,
        api_url: str | None = None,
        timeout: float = 30.0,
        own_http: bool = False,
    ) -> None:
        self.name = name
        self.api_url = (api_url or self.default_url).rstrip("/")
        self.timeout = timeout
        self._key = api_key
        self._http = http
        self._own_http = own_http  # a client of its own (egress address, TLS options)

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.name!r}, api_url={self.api_url!r})"

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def _request(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        """One request; a timeout or a connection failure is transient, in our words."""
        try:
            return await self._http.request(
                method,
                self.api_url + path,
                content=body,
                headers=self._headers(),
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"{self.label} timed out after {self.timeout:g} s", transport="api"
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise TransientError(
                f"{self.label} unreachable: {type(exc).__name__}: {exc}", transport="api"
            ) from exc

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
