"""TLS for the listeners: the operator's certificate, or a self-signed one made once."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from relay.core.errors import ConfigError
from relay.core.files import private_dir, write_private
from relay.core.settings import Settings


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    private_dir(cert_path.parent)
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_paths(settings: Settings) -> tuple[Path, Path]:
    """The configured pair, or var/tls/ with a self-signed pair made if missing."""
    if settings.tls.cert or settings.tls.key:
        if not (settings.tls.cert and settings.tls.key):
            raise ConfigError("[tls] cert and key go together")
        return Path(settings.tls.cert), Path(settings.tls.key)
    cert = settings.var_path / "tls" / "selfsigned.crt"
    key = settings.var_path / "tls" / "selfsigned.key"
    if not (cert.exists() and key.exists()):
        make_self_signed(cert, key, settings.server.hostname)
    return cert, key


def server_context(settings: Settings) -> ssl.SSLContext:
    cert, key = certificate_paths(settings)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls] cannot load {cert} / {key}: {exc}") from exc
    return ctx
