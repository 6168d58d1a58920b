"""Provider secrets encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from ``RELAY_SECRET_KEY`` (any string; it is stretched with
SHA-256). Without one, ``relay serve`` makes a random key once under var/ so
the embedded demo works; several nodes must share the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from relay.core.errors import ConfigError
from relay.core.files import private_dir, write_private
from relay.core.settings import Settings


def _fernet(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


class SecretBox:
    def __init__(self, key: str) -> None:
        if not key:
            raise ConfigError("RELAY_SECRET_KEY is empty")
        self._fernet = _fernet(key)
        # A separate key for digests, so that a digest never reveals the sealing key.
        self._mac_key = hashlib.sha256(b"relay digest\0" + key.encode()).digest()

    def digest(self, value: str) -> str:
        """HMAC-SHA256 of ``value``, hex. A short secret (a mailed code) stored
        this way cannot be found from a copy of the database alone: the key is
        not in it, so its few million candidates cannot be tried offline."""
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, values: dict[str, str]) -> str | None:
        clean = {k: v for k, v in values.items() if v}
        if not clean:
            return None
        return self._fernet.encrypt(json.dumps(clean).encode()).decode()

    def open(self, token: str | None) -> dict[str, str]:
        if not token:
            return {}
        try:
            data: dict[str, str] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise ConfigError(
                "provider secrets cannot be decrypted: RELAY_SECRET_KEY "
                "differs from the key they were stored with"
            ) from exc
        return data


def derive_key(key: str, label: str) -> bytes:
    """A 32-byte key for one purpose, from ``RELAY_SECRET_KEY``: HMAC-SHA256 with
    the label as the message (HKDF-Expand's single block, RFC 5869 2.3). A value
    made with it (an unsubscribe token) shows nothing of the sealing key, and a
    key for one purpose cannot stand in for another's."""
    if not key:
        raise ConfigError("RELAY_SECRET_KEY is empty")
    return hmac.new(key.encode(), b"relay " + label.encode() + b"\x01", hashlib.sha256).digest()


def mask(value: str | None) -> str:
    """Show that a secret is set without showing it: the last four characters at most."""
    if not value:
        return ""
    return "****" + (value[-4:] if len(value) >= 12 else "")


def load_or_create_key(configured: str, var_dir: Path) -> str:
    if configured:
        return configured
    path = var_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    private_dir(var_dir)
    key = secrets.token_urlsafe(32)
    write_private(path, (key + "\n").encode())
    return key


def secret_key(settings: Settings) -> str:
    """``RELAY_SECRET_KEY``, or the key made once under var/."""
    return load_or_create_key(settings.secrets.secret_key.reveal(), settings.var_path)


def secret_box(settings: Settings) -> SecretBox:
    """The box for this relay's provider secrets, from ``[secrets]`` or the key under var/."""
    return SecretBox(secret_key(settings))
