"""TLS for connections to a supervisor: which certificates a client trusts.

``tls_ca`` (``connect``'s argument, the CLI's ``--tls-ca``, or
``$SUPERVISOR_TLS_CA``) is either a PEM file of the certificate authority that
signed the supervisor's certificate (or that self-signed certificate itself),
or ``"system"`` for the operating system's trusted roots (not the bundle inside
grpcio). Without it, connections are plaintext, as before. The files are read
once, when the session or client is made, so a wrong path fails there with its
name rather than at every reconnect.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SYSTEM_ROOTS = "system"
ENV_VAR = "SUPERVISOR_TLS_CA"


class TlsConfigError(ValueError):
    """``tls_ca`` names nothing a client can trust: the message says which file and why."""


@dataclass(frozen=True)
class TlsTrust:
    """What a TLS client trusts: ``roots`` (PEM bytes), read from ``source`` (a file, or "system")."""

    roots: bytes
    source: str


def tls_trust(tls_ca: str | None) -> TlsTrust | None:
    """``tls_ca`` (or ``$SUPERVISOR_TLS_CA``) as what to trust; None for plaintext.

    Raises TlsConfigError (a ValueError) naming the file when it cannot be read or holds no usable PEM certificate.
    """
    tls_ca = tls_ca or os.environ.get(ENV_VAR) or None
    if tls_ca is None:
        return None
    if tls_ca == SYSTEM_ROOTS:
        return TlsTrust(roots=_system_roots(), source=SYSTEM_ROOTS)
    try:
        with open(tls_ca, "rb") as file:
            roots = file.read()
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read the TLS certificate authority file {tls_ca!r} (tls_ca / --tls-ca / ${ENV_VAR}): "
            f"{exc.strerror or exc}; give a PEM file, or {SYSTEM_ROOTS!r} for the system's roots"
        ) from None
    problem = _pem_problem(roots)
    if problem:
        raise TlsConfigError(
            f"{tls_ca!r} (tls_ca / --tls-ca / ${ENV_VAR}) {problem}: give the certificate authority's certificate "
            "(PEM), or the supervisor's own if it is self-signed"
        )
    return TlsTrust(roots=roots, source=tls_ca)


_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora
    "/etc/ssl/cert.pem",  # Alpine, macOS
)


def _system_roots() -> bytes:
    """The operating system's trusted roots as PEM (what ``ssl`` trusts, ``$SSL_CERT_FILE`` included).

    gRPC's own default would be the bundle shipped inside grpcio, which ignores authorities an
    organisation installs on its machines.
    """
    import ssl

    for path in (ssl.get_default_verify_paths().cafile, *_SYSTEM_BUNDLES):
        if path and os.path.isfile(path):
            with open(path, "rb") as file:
                return file.read()
    raise TlsConfigError(
        f"found no certificate bundle of this system (set $SSL_CERT_FILE, or give tls_ca / --tls-ca / ${ENV_VAR} "
        "a PEM file)"
    )


def _pem_problem(roots: bytes) -> str:
    """Why ``roots`` cannot be trusted as PEM certificates ("" when they can)."""
    if b"-----BEGIN CERTIFICATE-----" not in roots:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    import ssl

    try:
        ssl.create_default_context(cadata=roots.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        return f"holds a certificate that cannot be read ({getattr(exc, 'reason', None) or exc})"
    return ""


def secure_or_insecure_channel(target: str, trust: TlsTrust | None, options: Sequence[tuple[str, Any]] = ()) -> Any:
    """A gRPC channel to ``target``: over TLS trusting ``trust``, or plaintext when it is None."""
    import grpc

    if trust is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=trust.roots), options=options)


def handshake_failed(details: str) -> bool:
    """Whether a failed call's details say the TLS handshake failed: an authority that did not sign the
    certificate, a certificate for another name, or a peer that does not speak TLS."""
    lowered = details.lower()
    return any(word in lowered for word in ("handshake", "ssl", "certificate", "verification"))


def closed_at_hello(details: str) -> bool:
    """Whether the peer closed the connection at once, as a TLS-only server does to a plaintext client."""
    return "Socket closed" in details
