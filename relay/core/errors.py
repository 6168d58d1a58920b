"""The exception tree of Relay.

::

    RelayError
    ├── ConfigError              bad configuration; names the key
    ├── NotFound                 an account, domain, credential ... does not exist
    ├── OperatorOnly             only an operator may do this (the admin API answers 403)
    ├── Conflict                 it exists already, or a limit forbids it
    ├── Invalid                  malformed input (address, domain, option)
    ├── SpoolError               the queue cannot persist (ingress answers 451 4.3.0)
    └── ProviderError            raised by relay.providers, carries the provider's code and text
        ├── TransientError       try again later (4xx, 5xx of an API, timeouts)
        ├── PermanentError       never retry (5xx reply to a recipient, 400 payload)
        │   └── PayloadRejected  the API cannot take this form; its SMTP relay may
        └── CredentialsError     the provider refused our key or login

Exceptions that can reach an SMTP client carry their reply (``.reply``).
"""

from __future__ import annotations

from relay.core.replies import Reply


class RelayError(Exception):
    """Base of every error Relay raises on purpose."""

    reply: Reply | None = None


class ConfigError(RelayError):
    pass


class NotFound(RelayError):
    pass


class OperatorOnly(RelayError):
    """Only an operator may do this (the admin API answers 403)."""


class Conflict(RelayError):
    pass


class Invalid(RelayError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class WebhookRefused(RelayError):
    """A provider's webhook request failed its authentication: nothing of it is stored.

    ``status`` is 401 when credentials are missing or malformed, 403 when they
    are present and wrong (bad signature, stale timestamp, wrong password).
    """

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class SpoolError(RelayError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        from relay.core.replies import SPOOL_UNAVAILABLE

        self.reply = SPOOL_UNAVAILABLE


class ProviderError(RelayError):
    """A provider said no. ``code`` and ``text`` are the provider's own."""

    def __init__(
        self,
        text: str,
        code: int | str | None = None,
        *,
        transport: str = "",
        retry_after: float | None = None,
        recipients: dict[str, str] | None = None,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.transport = transport
        self.retry_after = retry_after
        # Per-recipient failures when the provider rejected only some of them.
        self.recipients = recipients or {}

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class TransientError(ProviderError):
    pass


class PermanentError(ProviderError):
    pass


class PayloadRejected(PermanentError):
    """The API refused the form of the request, not the message's sender or recipients.

    The same message may still go by the provider's SMTP relay, which takes the
    MIME as it is (``relay.providers.chain`` falls back on it).
    """


class CredentialsError(ProviderError):
    pass
