"""Prometheus metrics. Names follow Prometheus conventions; no label carries
a username, an address or a campaign: only account names, listener names,
provider names, and closed sets (kind, outcome, transport, result, code).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

# Accept latency is short (group commit); delivery includes provider round trips.
_ACCEPT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.recipients = Counter(
            "relay_recipients",
            "Recipients by account, class and outcome",
            ["account", "kind", "outcome"],
            registry=r,
        )
        self.messages = Counter(
            "relay_messages", "Messages by account and outcome", ["account", "outcome"], registry=r
        )
        self.message_bytes = Counter(
            "relay_message_bytes", "Bytes of accepted messages", registry=r
        )
        self.smtp_sessions = Gauge(
            "relay_smtp_sessions",
            "Open SMTP sessions",
            ["listener"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.smtp_replies = Counter(
            "relay_smtp_replies", "Replies to DATA by code", ["code"], registry=r
        )
        self.auth_failures = Counter(
            "relay_auth_failures", "Failed SMTP logins", ["listener"], registry=r
        )
        # scope: ip (an address locked), user_ip (a username locked from one
        # address), user (a username slowed: failing from many addresses).
        self.auth_lockouts = Counter(
            "relay_auth_lockouts",
            "SMTP login lock-outs (and slow-downs) engaged",
            ["listener", "scope"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            "relay_delivery_attempts",
            "Delivery attempts",
            ["provider", "transport", "result"],
            registry=r,
        )
        self.delivery_duration = Histogram(
            "relay_delivery_duration_seconds",
            "Time of one delivery attempt",
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.accept_duration = Histogram(
            "relay_accept_duration_seconds",
            "End of DATA to the reply",
            buckets=_ACCEPT_BUCKETS,
            registry=r,
        )
        self.queue_messages = Gauge(
            "relay_queue_messages",
            "Messages in the queue by state",
            ["state"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.spool_healthy = Gauge(
            "relay_spool_healthy",
            "1 while the spool commits, 0 after a failed commit",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.provider_fallbacks = Counter(
            "relay_provider_fallbacks",
            "Messages sent by SMTP after the API failed",
            ["provider"],
            registry=r,
        )
        # reason: rate (max_rate) | connections (max_connections) | retry_after
        # (paused after the provider's 429/Retry-After); once per waiting delivery.
        self.provider_throttled = Counter(
            "relay_provider_throttled",
            "Deliveries held back by a provider's ceiling or pause",
            ["provider", "reason"],
            registry=r,
        )
        # In-flow control (relay.queue.inflow): sessions slowed at MAIL FROM.
        self.in_flow_waits = Counter(
            "relay_in_flow_waits",
            "MAIL FROM commands that waited for a delivery while the queue was behind",
            registry=r,
        )
        self.in_flow_wait_seconds = Counter(
            "relay_in_flow_wait_seconds",
            "Seconds MAIL FROM commands waited while the queue was behind",
            registry=r,
        )
        self.provider_paused = Gauge(
            "relay_provider_paused_seconds",
            "Seconds left of the pause a provider's 429/Retry-After asked for (0: none)",
            ["provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # result: stored | duplicate (an event id already stored, or a batch
        # already taken) | unmatched (no message of this provider's accounts)
        # | refused (authentication failed; type "none").
        self.webhook_events = Counter(
            "relay_webhook_events",
            "Provider webhook events by provider kind, type and result",
            ["provider_kind", "type", "result"],
            registry=r,
        )
        # Reputation (relay.reputation): refreshed from the database by the gauge
        # loop of each process, so every process holds the same values;
        # "mostrecent" shows the latest write instead of summing the processes.
        self.account_bounce_rate = Gauge(
            "relay_account_bounce_rate",
            "Hard bounces over delivered recipients, by rolling window",
            ["account", "window"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.account_complaint_rate = Gauge(
            "relay_account_complaint_rate",
            "Complaints over delivered recipients, by rolling window",
            ["account", "window"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.account_suspended = Gauge(
            "relay_account_suspended",
            "1 while the account is suspended for its bounce or complaint rate",
            ["account"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # Sending limits (relay.limits). limit: messages_per_minute,
        # messages_per_hour, recipients_per_hour, recipients_per_day, sessions,
        # each also with "credential_" before it when a credential's own limit
        # refused; account: the account whose limit it is (an agency's for its tree).
        self.limited = Counter(
            "relay_limited",
            "Sessions, messages and recipients refused by an account or credential limit",
            ["account", "limit"],
            registry=r,
        )
        # Taken over allowed in the current window, per account and limit, read
        # from the shared counters by each process's gauge loop ("mostrecent").
        self.quota_used_ratio = Gauge(
            "relay_quota_used_ratio",
            "Units taken over the limit in the current window, by account and limit",
            ["account", "limit"],
            registry=r,
            multiprocess_mode="mostrecent",
        )


def scrape_registry(metrics: Metrics) -> CollectorRegistry:
    """What /metrics shows: this process, or with several processes their sum.

    ``relay serve --processes N`` sets PROMETHEUS_MULTIPROC_DIR before the
    processes start, so prometheus-client keeps every value in shared files
    and one scrape of any process reads them all.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return metrics.registry
