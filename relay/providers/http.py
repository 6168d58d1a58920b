"""What SendGrid's and SparkPost's API legs share: the pooled client, the key,
and the translation of httpx's exceptions at our boundary (httpx's own
``map_httpcore_exceptions`` habit, one level up).

The translation keeps apart what the provider provably did not get from what
it may have got. A failure to connect, a TLS handshake refused, a pool or
write timeout: the request never reached the provider whole, so another
transport may carry the message now (``TransientError``). A read timeout, a
connection reset or a broken response once the request was written: the
provider may have taken the message and only its answer was lost
(``OutcomeUnknown``); sending it by SMTP now could deliver it twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from relay.core.errors import TransientError
from relay.core.settings import Secret
from relay.providers.chain import OutcomeUnknown


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
        options: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Secret] | None = None,
    ) -> None:
        # options and secrets: the whole row, for kinds whose API needs more
        # than a key (Mailgun's sending domain, SES's region and key pair).
        self.options: Mapping[str, Any] = options or {}
        self.secrets: Mapping[str, Secret] = secrets or {}
        self.name = name
        self.api_url = (api_url or self.default_url).rstrip("/")
        self.timeout = timeout
        self._key = api_key
        self._http = http
        self._own_http = own_http  # a client of its own (egress address, TLS options)

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.name!r}, api_url={self.api_url!r})"

    def _headers(self) -> dict[str, str]:
        """Headers of every request (the key); a leg that signs each request adds its own."""
        return {}

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request; a timeout or a connection failure is transient, in our words.

        ``headers`` add to (or replace) :meth:`_headers` for this request (a
        multipart body's boundary, SES's signature). Once the request is written, no answer is
        ``OutcomeUnknown``, not a refusal: the provider may have the message.
        """
        try:
            return await self._http.request(
                method,
                self.api_url + path,
                content=body,
                headers={**self._headers(), **(headers or {})},
                timeout=self.timeout,
            )
        except httpx.ReadTimeout as exc:
            raise OutcomeUnknown(
                f"{self.label} sent no answer within {self.timeout:g} s", transport="api"
            ) from exc
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise OutcomeUnknown(
                f"{self.label} connection lost awaiting the answer: {type(exc).__name__}",
                transport="api",
            ) from exc
        except httpx.TimeoutException as exc:  # connect, write or pool: never sent whole
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
