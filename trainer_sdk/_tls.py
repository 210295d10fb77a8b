"""TLS for connections to a supervisor: which certificates a client trusts.

``tls_ca`` (``connect``'s argument, the CLI's ``--tls-ca``, or
``$SUPERVISOR_TLS_CA``) is either a PEM file of the certificate authority that
signed the supervisor's certificate (or that self-signed certificate itself),
or ``"system"`` for the system's trusted roots. Without it, connections are
plaintext, as before. The files are read once, when the session or client is
made, so a wrong path fails there with its name rather than at every reconnect.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SYSTEM_ROOTS = "system"
ENV_VAR = "SUPERVISOR_TLS_CA"


@dataclass(frozen=True)
class TlsTrust:
    """What a TLS client trusts: ``roots`` (PEM bytes), or the system's roots when None."""

    roots: bytes | None = None
    source: str = SYSTEM_ROOTS


def tls_trust(tls_ca: str | None) -> TlsTrust | None:
    """``tls_ca`` (or ``$SUPERVISOR_TLS_CA``) as what to trust; None for plaintext.

    Raises ValueError naming the file when it cannot be read or holds no PEM certificate.
    """
    tls_ca = tls_ca or os.environ.get(ENV_VAR) or None
    if tls_ca is None:
        return None
    if tls_ca == SYSTEM_ROOTS:
        return TlsTrust()
    try:
        with open(tls_ca, "rb") as file:
            roots = file.read()
    except OSError as exc:
        raise ValueError(
            f"cannot read the TLS certificate authority file {tls_ca!r} (tls_ca / --tls-ca / ${ENV_VAR}): "
            f"{exc.strerror or exc}; give a PEM file, or {SYSTEM_ROOTS!r} for the system's roots"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in roots:
        raise ValueError(
            f"{tls_ca!r} (tls_ca / --tls-ca / ${ENV_VAR}) holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            "give the certificate authority's certificate, or the supervisor's own if it is self-signed"
        )
    return TlsTrust(roots=roots, source=tls_ca)


def secure_or_insecure_channel(target: str, trust: TlsTrust | None, options: Sequence[tuple[str, Any]] = ()) -> Any:
    """A gRPC channel to ``target``: over TLS trusting ``trust``, or plaintext when it is None."""
    import grpc

    if trust is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=trust.roots), options=options)
