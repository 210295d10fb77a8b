"""The supervisor's TLS certificate: ``serve --tls-cert FILE --tls-key FILE``.

Both ports an operator or a trainer reaches, gRPC and the HTTP gateway, then
speak TLS only; /metrics stays plain HTTP for Prometheus (bind it to a private
address with ``--metrics-host``). The files are checked when the server starts
(readable, PEM, the key matching the certificate), so a mistake stops ``serve``
with the file's name instead of failing every handshake later.

Certificates are short-lived where they are managed (cert-manager renews them
in place in a mounted Secret), so the files are watched: a new pair is taken
for the next connections, gRPC's and the gateway's, without a restart; a pair
that does not go together is logged and the current one kept.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("supervisor")


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


def _no_passphrase() -> bytes:
    raise TlsError("--tls-key asks for a passphrase: give the key without one")


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


class RotatingCertificate:
    """The current ``ServerCertificate`` of a pair of files, taken again whenever the files change.

    ``refresh`` compares the files' modification times, sizes and inodes (two ``stat`` calls); gRPC
    calls ``_fetch`` before every new connection's handshake, and the server calls ``refresh`` every
    few seconds for the HTTP gateway, whose ``context`` is updated in place.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.current = ServerCertificate.load(cert, key)
        self.context = self.current.context
        self._stamp = self._stat()
        self._generation = 0
        self._served = 0  # the generation gRPC has
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, ...]:
        try:
            cert, key = os.stat(self.cert), os.stat(self.key)
        except OSError:
            return ()
        return cert.st_mtime_ns, cert.st_size, cert.st_ino, key.st_mtime_ns, key.st_size, key.st_ino

    def refresh(self) -> bool:
        """Take the files again if they changed; True when a new pair is in use."""
        with self._lock:
            stamp = self._stat()
            if not stamp or stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                loaded = ServerCertificate.load(self.cert, self.key)
                self.context.load_cert_chain(self.cert, self.key, password=_no_passphrase)
            except (TlsError, ssl.SSLError, OSError) as exc:  # half-written, or a mismatch: keep serving
                log.error("TLS certificate files changed but cannot be used, keeping the current pair: %s", exc)
                return False
            self.current = loaded
            self._generation += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

    def grpc_credentials(self) -> Any:
        import grpc

        initial = grpc.ssl_server_certificate_configuration([(self.current.key, self.current.chain)])
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch)

    def _fetch(self) -> Any:
        """gRPC's hook before each new connection's handshake: a new configuration, or None for no change."""
        import grpc

        try:
            self.refresh()
            if self._served == self._generation:
                return None
            self._served = self._generation
            return grpc.ssl_server_certificate_configuration([(self.current.key, self.current.chain)])
        except Exception:  # an exception here would fail the handshake: keep the current pair
            log.exception("checking the TLS certificate files failed")
            return None
