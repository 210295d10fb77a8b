"""The supervisor's TLS certificate: ``serve --tls-cert FILE --tls-key FILE``.

Both ports an operator or a trainer reaches, gRPC and the HTTP gateway, then
speak TLS only; /metrics stays plain HTTP for Prometheus (bind it to a private
address with ``--metrics-host``). The files are checked when the server starts
(readable, PEM, the key matching the certificate), so a mistake stops ``serve``
with the file's name instead of failing every handshake later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(Exception):
    """The certificate or key given to ``serve`` cannot be used."""


@dataclass(frozen=True)
class ServerCertificate:
    chain: bytes
    """PEM: the server's certificate, then any intermediates."""
    key: bytes
    """PEM: its private key."""
    context: ssl.SSLContext
    """For the HTTP gateway (asyncio's TLS)."""

    @classmethod
    def load(cls, cert: Path, key: Path) -> ServerCertificate:
        chain, secret = _read(cert, "--tls-cert"), _read(key, "--tls-key")
        if b"-----BEGIN CERTIFICATE-----" not in chain:
            raise TlsError(f"--tls-cert {cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        if b"PRIVATE KEY-----" not in secret:
            raise TlsError(f"--tls-key {key} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)")
        if b"ENCRYPTED" in secret:
            raise TlsError(f"--tls-key {key} is encrypted: give the key without a passphrase, in a file only you read")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key, password=_no_passphrase)  # never a prompt on the terminal
        except (ssl.SSLError, TlsError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TlsError(f"--tls-cert {cert} and --tls-key {key} do not go together: {reason}") from None
        return cls(chain=chain, key=secret, context=context)

    def grpc_credentials(self) -> object:
        import grpc

        return grpc.ssl_server_credentials([(self.key, self.chain)])


def _no_passphrase() -> bytes:
    raise TlsError("--tls-key asks for a passphrase: give the key without one")


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
