"""The provider emulator: fake SendGrid and SparkPost APIs and an SMTP sink, on loopback.

They check requests the way the real services do, remember what they got,
and can be told to fail, stall or rate-limit, from Python or over HTTP
(``/_emulator/*``). Tests use :func:`serve_emulator`; operators run
``relay emulate`` (:func:`main`) and point a provider's ``api_url`` and
``smtp_host``/``smtp_port`` at it.
"""

from relay.emulator.faults import ApiState, Received
from relay.emulator.server import DEFAULT_API_KEY, Emulator, main, serve_emulator
from relay.emulator.smtp import SinkMessage, SmtpSink

__all__ = [
    "DEFAULT_API_KEY",
    "ApiState",
    "Emulator",
    "Received",
    "SinkMessage",
    "SmtpSink",
    "main",
    "serve_emulator",
]
