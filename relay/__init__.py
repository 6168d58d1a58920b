"""Relay: a self-hosted, multi-tenant SMTP relay."""

__version__ = "0.1.0"
