"""Amazon SES v2: ``SendEmail`` with raw content, signed with SigV4, and SES's SMTP interface.

Neither boto3 nor aiobotocore sends: boto3 blocks the event loop, and both
would bring a second HTTP stack beside the shared ``httpx.AsyncClient``.
botocore's own signer (``SigV4Auth`` over an ``AWSRequest``) computes the
Signature Version 4 headers and the request goes on the shared client like
SendGrid's and SparkPost's. Signing hashes the body: for a large message
(over :data:`SIGN_OFF_LOOP`) it runs in a worker thread, not on the loop
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html).

SendEmail (``POST /v2/email/outbound-emails``,
https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html)
takes the MIME as it is in ``Content.Raw.Data`` (base64 of the bytes, Bcc
removed), every envelope recipient in ``Destination.ToAddresses`` (SES sends
to those, not to the header fields), the ``configuration_set`` option as
``ConfigurationSetName`` (where the events go), and Relay's ids as
``EmailTags``, which come back in each event's ``mail.tags``. SES takes at
most 50 recipients a message; a larger one is ``PayloadRejected``, and the
SMTP interface has the same ceiling.

Errors (REST-JSON: the code in ``x-amzn-ErrorType`` or the body's
``__type``/``code``) become ours in :data:`SES_CODES`, then by status in
:data:`SES_STATUS` (https://docs.aws.amazon.com/ses/latest/APIReference-V2/CommonErrors.html)::

    200                        accepted: MessageId
    MessageRejected, MailFromDomainNotVerifiedException
                               PermanentError (content or sender refused)
    BadRequestException        PayloadRejected: our request; the SMTP leg may take it
    NotFoundException          TransientError: a configuration set that is not
                               there is the operator's fix, not the message's fault
    TooManyRequestsException, ThrottlingException, Throttling, 429
                               TransientError (Retry-After when given)
    LimitExceededException     TransientError: the daily quota resets by itself
    AccountSuspendedException, SendingPausedException, 403 (signature,
    unknown key, access denied)
                               CredentialsError: the account cannot send
    5xx                        TransientError

SMTP interface: ``email-smtp.{region}.amazonaws.com``, 587 STARTTLS, the
access key id as user and the SMTP password derived from the secret access
key (:func:`smtp_password`) unless ``smtp_password`` is given; the
configuration set and Relay's ids ride in ``X-SES-CONFIGURATION-SET`` and
``X-SES-MESSAGE-TAGS`` (https://docs.aws.amazon.com/ses/latest/dg/event-publishing-send-email.html).

The live check (:meth:`SesApi.check`) reads the account (``GetAccount``:
sending enabled, production access, enforcement status) and the test
address's identity, or its domain's (``GetEmailIdentity``), and refuses a
paused account or an unverified identity in SES's words; it sends nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from relay.core.errors import (
    CredentialsError,
    Invalid,
    PayloadRejected,
    PermanentError,
    ProviderError,
    TransientError,
)
from relay.core.message import OutboundMessage
from relay.core.settings import Secret
from relay.providers import ses_events
from relay.providers.base import Health, Receipt
from relay.providers.headers import has_field, header_field, without_bcc
from relay.providers.http import HttpApi
from relay.providers.kind import Prepare, ProviderKind, SmtpRelay, Webhook

API_URL = "https://email.{region}.amazonaws.com"
SMTP_HOST = "email-smtp.{region}.amazonaws.com"
SMTP_PORT = 587
SEND_PATH = "/v2/email/outbound-emails"
SIGNING_NAME = "ses"  # SES v2 signs as "ses", like v1
MAX_RECIPIENTS = 50  # per message, API and SMTP alike (SES quotas)
# Bodies larger than this are signed in a worker thread (SHA-256 of the body
# and botocore's request handling cost about 1 ms a MB).
SIGN_OFF_LOOP = 256 * 1024
# An AWS region name: us-east-1, eu-central-2, us-gov-west-1, cn-north-1...
REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
# Tag names and values: ASCII letters, digits, _ and - (256 at most); ours fit.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
CAMPAIGN_TAG = "relay_campaign"

SES_STATUS: dict[int, type[ProviderError] | None] = {
    200: None,
    400: PermanentError,
    401: CredentialsError,
    403: CredentialsError,
    404: TransientError,
    409: PermanentError,
    413: PayloadRejected,
    429: TransientError,
}
SES_CODES: dict[str, type[ProviderError]] = {
    "MessageRejected": PermanentError,
    "MailFromDomainNotVerifiedException": PermanentError,
    "BadRequestException": PayloadRejected,
    "NotFoundException": TransientError,
    "TooManyRequestsException": TransientError,
    "ThrottlingException": TransientError,
    "Throttling": TransientError,
    "LimitExceededException": TransientError,
    "AccountSuspendedException": CredentialsError,
    "SendingPausedException": CredentialsError,
    "AccessDeniedException": CredentialsError,
    "InvalidSignatureException": CredentialsError,
    "SignatureDoesNotMatch": CredentialsError,
    "IncompleteSignature": CredentialsError,
    "InvalidClientTokenId": CredentialsError,
    "UnrecognizedClientException": CredentialsError,
    "MissingAuthenticationToken": CredentialsError,
    "ExpiredTokenException": CredentialsError,
}


def classify(status: int, code: str | None) -> type[ProviderError] | None:
    """The outcome of a SendEmail response: SES's error code first, then the status."""
    if status < 400:
        return None if 200 <= status < 300 else TransientError
    if code in SES_CODES:
        return SES_CODES[code]
    if status in SES_STATUS:
        return SES_STATUS[status]
    return PermanentError if status < 500 else TransientError


def error_code(response: httpx.Response, data: Any) -> str | None:
    """SES's error code: ``x-amzn-ErrorType`` (``Code:uri``), else the body's ``__type``/``code``.

    A ``__type`` may be namespaced (``com.amazonaws...#Code``); the name is after ``#``.
    """
    raw = response.headers.get("x-amzn-errortype", "").split(":", 1)[0]
    if not raw and isinstance(data, dict):
        raw = str(data.get("__type") or data.get("code") or data.get("Code") or "")
    return raw.rsplit("#", 1)[-1] or None


def error_text(response: httpx.Response, data: Any) -> str:
    if isinstance(data, dict):
        text = data.get("message") or data.get("Message")
        if text:
            return str(text)
    body = response.text.strip()
    return body[:500] if body else f"HTTP {response.status_code}"


def smtp_password(secret_access_key: str, region: str) -> str:
    """The SES SMTP password of an IAM secret access key in ``region``.

    AWS's documented derivation ("Obtaining Amazon SES SMTP credentials",
    https://docs.aws.amazon.com/ses/latest/dg/smtp-credentials.html): the SigV4
    signing-key chain over the fixed date ``11111111``, the region, ``ses``
    and ``aws4_request``, an HMAC of ``SendRawEmail`` with it, the version
    byte 0x04 in front, base64.
    """

    def sign(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()

    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in ("11111111", region, SIGNING_NAME, "aws4_request", "SendRawEmail"):
        key = sign(key, part)
    return base64.b64encode(b"\x04" + key).decode("ascii")


def tag_value(value: str) -> str:
    """A value SES takes as a message tag: unsafe characters become ``_``."""
    return _TAG_UNSAFE.sub("_", value)[:256] or "_"


def message_tags(message: OutboundMessage) -> dict[str, str]:
    """Relay's ids (and the campaign) as tags; the recipient id only for one recipient."""
    tags = message.delivery_ids([a for a, _ in message.recipients])
    if message.campaign:
        tags[CAMPAIGN_TAG] = message.campaign
    return {name: tag_value(value) for name, value in tags.items()}


def send_email_body(message: OutboundMessage, configuration_set: str | None) -> dict[str, Any]:
    """The SendEmail request for one message."""
    raw = base64.b64encode(without_bcc(message.data)).decode("ascii")
    body: dict[str, Any] = {
        "Destination": {"ToAddresses": [address for address, _ in message.recipients]},
        "Content": {"Raw": {"Data": raw}},
        "EmailTags": [{"Name": k, "Value": v} for k, v in message_tags(message).items()],
    }
    if message.mail_from:  # the null sender (<>): SES takes the From field instead
        body["FromEmailAddress"] = message.mail_from
    if configuration_set:
        body["ConfigurationSetName"] = configuration_set
    return body


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def region_of(options: Mapping[str, Any]) -> str:
    return str(options.get("region") or "")


class SesApi(HttpApi):
    """The API leg of an Amazon SES provider (SES API v2, SigV4-signed)."""

    label = "Amazon SES"
    default_url = API_URL

    def _signed(self, method: str, path: str, body: bytes | None) -> dict[str, str]:
        """Signature Version 4 headers for this request, by botocore's signer."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = AWSRequest(method=method, url=self.api_url + path, data=body, headers=headers)
        credentials = Credentials(
            str(self.options.get("access_key_id") or ""),
            self.secrets.get("secret_access_key", Secret("")).reveal(),
        )
        SigV4Auth(credentials, SIGNING_NAME, region_of(self.options)).add_auth(request)
        return {k: str(v) for k, v in request.headers.items()}

    async def _call(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        if body is not None and len(body) > SIGN_OFF_LOOP:
            headers = await asyncio.to_thread(self._signed, method, path, body)
        else:
            headers = self._signed(method, path, body)
        return await self._request(method, path, body, headers=headers)

    def _error(self, response: httpx.Response) -> ProviderError:
        data = _json(response)
        code = error_code(response, data)
        cls = classify(response.status_code, code) or TransientError
        return cls(
            error_text(response, data),
            f"{response.status_code}/{code}" if code else response.status_code,
            transport="api",
            retry_after=_retry_after(response) if response.status_code in (429, 503) else None,
        )

    async def send(self, message: OutboundMessage) -> Receipt:
        if not message.recipients:
            raise PermanentError("no recipients", transport="api")
        if len(message.recipients) > MAX_RECIPIENTS:
            raise PayloadRejected(
                f"SES takes at most {MAX_RECIPIENTS} recipients a message", transport="api"
            )
        configuration_set = self.options.get("configuration_set") or None
        payload = send_email_body(message, configuration_set)
        response = await self._call("POST", SEND_PATH, json.dumps(payload).encode("ascii"))
        if classify(response.status_code, None) is None:
            data = _json(response)
            ident = data.get("MessageId") if isinstance(data, dict) else None
            count = len(message.recipients)
            return Receipt("api", str(ident) if ident else None, f"accepted {count} recipients")
        raise self._error(response)

    async def check(self) -> Health:
        """The account can send, and the test address (or its domain) is a verified identity."""
        try:
            response = await self._call("GET", "/v2/email/account")
            if response.status_code != 200:
                return Health(False, str(self._error(response)))
            account = _json(response)
            account = account if isinstance(account, dict) else {}
            if account.get("SendingEnabled") is False:
                status = account.get("EnforcementStatus") or "unknown"
                return Health(
                    False, f"SES: sending is paused for this account (EnforcementStatus {status})"
                )
            words = [f"{self.api_url}: account can send"]
            if account.get("ProductionAccessEnabled") is False:
                words.append("sandbox: only verified recipients")
            test = self.options.get("test_address")
            if test:
                verdict = await self._identity(str(test))
                if verdict is not None:
                    return Health(False, verdict)
                words.append(f"identity of {test} verified")
            return Health(True, "; ".join(words))
        except ProviderError as exc:
            return Health(False, str(exc))

    async def _identity(self, address: str) -> str | None:
        """Why ``address`` cannot send (its identity and its domain's), or None when it can."""
        domain = address.rpartition("@")[2]
        said = []
        for identity in (address, domain):
            response = await self._call("GET", "/v2/email/identities/" + quote(identity, safe=""))
            if response.status_code == 404:
                said.append(f"{identity}: not an identity in this account")
                continue
            if response.status_code != 200:
                raise self._error(response)
            data = _json(response)
            data = data if isinstance(data, dict) else {}
            # VerifiedForSendingStatus says it; VerificationStatus SUCCESS too
            # (an emulator may only set the latter).
            if data.get("VerifiedForSendingStatus") or data.get("VerificationStatus") == "SUCCESS":
                return None
            status = data.get("VerificationStatus") or "not verified"
            said.append(f"{identity}: VerificationStatus {status}")
        return "SES: the test address is not a verified identity (" + "; ".join(said) + ")"


def ses_smtp_login(options: Mapping[str, Any], secrets: Mapping[str, Any]) -> tuple[str, str]:
    """User and password for SES's SMTP interface: the key id and the derived password."""
    given = secrets.get("smtp_password")
    given = given.reveal() if isinstance(given, Secret) else given
    if given:
        return str(options.get("access_key_id") or ""), str(given)
    secret = secrets.get("secret_access_key")
    secret = secret.reveal() if isinstance(secret, Secret) else secret
    password = smtp_password(str(secret), region_of(options)) if secret else ""
    return str(options.get("access_key_id") or ""), password


def ses_headers(message: OutboundMessage, configuration_set: str | None) -> bytes:
    """``X-SES-CONFIGURATION-SET`` and ``X-SES-MESSAGE-TAGS`` (``name=value, ...``)."""
    tags = ", ".join(f"{k}={v}" for k, v in message_tags(message).items())
    out = header_field("X-SES-MESSAGE-TAGS", tags)
    if configuration_set:
        out = header_field("X-SES-CONFIGURATION-SET", tag_value(configuration_set)) + out
    return out


def smtp_preparer(options: Mapping[str, Any]) -> Prepare:
    """What the SMTP leg sends: SES's headers on top (a client's own win), Bcc removed."""
    configuration_set = options.get("configuration_set") or None

    def prepare(message: OutboundMessage) -> bytes:
        data = without_bcc(message.data)
        if has_field(data, "X-SES-MESSAGE-TAGS") or has_field(data, "X-SES-CONFIGURATION-SET"):
            return data
        return ses_headers(message, configuration_set) + data

    return prepare


def check_row(options: Mapping[str, Any], secrets: Mapping[str, Any] | None) -> None:
    """An SES row needs its region and key pair (the secret when secrets are checked)."""
    region = options.get("region")
    if not region or not REGION.match(str(region)):
        raise Invalid("an ses provider needs --region, an AWS region like us-east-1", "region")
    if not options.get("access_key_id"):
        raise Invalid("an ses provider needs --access-key-id", "access_key_id")
    if secrets is not None and not secrets.get("secret_access_key"):
        raise Invalid("an ses provider needs --secret-access-key", "secret_access_key")


KIND = ProviderKind(
    "ses",
    api=SesApi,
    api_url=API_URL,
    smtp=SmtpRelay(
        SMTP_HOST,
        SMTP_PORT,
        login=ses_smtp_login,
        prepare_for=smtp_preparer,
    ),
    check_row=check_row,
    test_send=False,  # the check reads the account and the identity; SES's sandbox bounces tests
    statuses=SES_STATUS,
    api_secret="secret_access_key",
    webhook=Webhook(
        ses_events.authenticate,
        ses_events.parse_events,
        ses_events.check_key,
        ses_events.SETUP,
        receive=ses_events.receive,
    ),
)
