"""Per-account reputation: hard-bounce and complaint rates, warnings, suspension.

``rates`` computes the rates over rolling windows, ``judge`` compares them with
``[reputation]``, ``sink`` re-judges accounts as provider events arrive (an
``EventSink``) and suspends, ``suspension`` is the cheap read the SMTP front
makes at MAIL FROM. Layer: beside auth, routing, queue and providers.
"""
