"""A client of the operator HTTP/JSON gateway that needs nothing but the standard library.

It exists for start-up time: a one-shot command that imports grpc and protobuf
spends about 100 ms doing so, and ``http.client`` alone costs some 20 ms (it
imports the ``email`` package), so this speaks the few lines of HTTP/1.1 it
needs over a plain socket (``_socket``, the C module under ``socket``, whose
own set-up of enums would cost a few ms more). Requests and responses are the proto3 JSON forms of
``OperatorService``'s messages (see ``supervisor.http_gateway``)::

    with HttpOperatorClient("http://127.0.0.1:50052") as client:
        client.call("SetParams", {"run": "digits-01", "changes": {"lr": {"stringValue": "0.01"}}})

Errors come back as OperatorError with the gRPC status name and the server's
message, which names the parameter and the reason for a refused change.
"""

from __future__ import annotations

import json
import os

try:
    import _socket as _net
except ImportError:  # an interpreter without CPython's module layout
    import socket as _net  # type: ignore[no-redef]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["HttpOperatorClient", "OperatorError", "parse_http_address"]


class OperatorError(Exception):
    """A call the supervisor refused or could not answer.

    ``code`` is the gRPC status name (``NOT_FOUND``, ``INVALID_ARGUMENT``,
    ``UNAUTHENTICATED``, ``UNAVAILABLE`` when nothing answers, ...), ``details``
    the server's message, ``status`` the HTTP status when there was an answer.
    """

    def __init__(self, code: str, details: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.status = status


def parse_http_address(address: str) -> tuple[str, int]:
    """``http(s)://HOST:PORT`` (a trailing ``/`` allowed, IPv6 hosts in brackets) -> (HOST, PORT)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"{address!r} is not an HTTP address: use http://HOST:PORT (https:// for TLS)")
    hostport = rest.rstrip("/")
    if "/" in hostport or "@" in hostport or "?" in hostport:
        raise ValueError(f"{address}: give only http://HOST:PORT, without a path, user or query")
    if hostport.startswith("["):
        host, sep, port = hostport[1:].partition("]:")
    else:
        host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{address}: give the gateway's host and port, http://HOST:PORT, as `supervisor serve` prints them"
        )
    return host, int(port)


class HttpOperatorClient:
    """Calls ``POST /v1/<Method>`` of a supervisor's HTTP gateway, one connection per call."""

    def __init__(
        self, address: str, *, token: str | None = None, timeout: float = 10.0, tls_ca: str | None = None
    ) -> None:
        """An ``https://`` address speaks TLS, trusting ``tls_ca`` (default ``$SUPERVISOR_TLS_CA``: a PEM file,
        or ``"system"``), else the system's roots."""
        self.address = address
        self.host, self.port = parse_http_address(address)
        self._tls = _tls_context(address, tls_ca)
        token = token or os.environ.get("SUPERVISOR_TOKEN")
        self._auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.timeout = timeout

    def close(self) -> None:
        """Nothing to release (connections last one call); for symmetry with OperatorClient."""

    def __enter__(self) -> HttpOperatorClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def call(
        self, method: str, request: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """One unary call: ``request`` and the result in proto3 JSON form. Raises OperatorError."""
        timeout = self.timeout if timeout is None else timeout
        body = json.dumps(request or {}, separators=(",", ":")).encode()
        host = f"[{self.host}]" if ":" in self.host else self.host
        head = (
            f"POST /v1/{method} HTTP/1.1\r\nHost: {host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{self._auth}Connection: close\r\n\r\n"
        )
        status, payload = self._exchange(head.encode() + body, timeout)
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise OperatorError(
                "UNKNOWN",
                f"{self.address} answered HTTP {status} without a JSON object: is this the supervisor's "
                "HTTP gateway (the address on the `http gateway on` line `supervisor serve` prints)?",
                status,
            )
        if status != 200:
            raise OperatorError(str(answer.get("code", "UNKNOWN")), str(answer.get("error", f"HTTP {status}")), status)
        return answer

    def _exchange(self, request: bytes, timeout: float) -> tuple[int, bytes]:
        try:
            sock = _connect(self.host, self.port, timeout)
            if self._tls is not None:
                sock = _handshake(self._tls, sock, self.host)
        except TimeoutError:
            raise OperatorError("UNAVAILABLE", f"no connection within {timeout:g}s") from None
        except OSError as exc:
            if self._tls is not None and _is_tls_error(exc):
                if "WRONG_VERSION_NUMBER" in str(exc):
                    raise OperatorError(
                        "INVALID_ARGUMENT",
                        f"{self.address} answers in plain HTTP (its supervisor runs without --tls-cert): use http://",
                    ) from None
                raise OperatorError("UNAVAILABLE", f"TLS handshake failed: {exc}") from None
            raise OperatorError("UNAVAILABLE", (exc.strerror or str(exc)).lower()) from None
        data = bytearray()
        try:
            try:
                sock.sendall(request)
                expected = -1  # total bytes of the answer, once its head is in
                while expected < 0 or len(data) < expected:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if expected < 0:
                        expected = _answer_length(data)
            finally:
                sock.close()
        except TimeoutError:
            raise OperatorError("DEADLINE_EXCEEDED", f"no answer from {self.address} within {timeout:g}s") from None
        except OSError as exc:
            raise OperatorError("UNAVAILABLE", f"the connection broke: {(exc.strerror or str(exc)).lower()}") from None
        head, sep, body = bytes(data).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if not sep or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            what = "closed the connection without an answer" if not data else "did not answer in HTTP/1.1"
            raise OperatorError(
                "UNKNOWN",
                f"{self.address} {what}: is this the supervisor's HTTP gateway (the address on the "
                "`http gateway on` line `supervisor serve` prints) rather than its gRPC port, and does it serve "
                "https:// (--tls-cert)?",
            )
        return int(status_line[1]), body


def _tls_context(address: str, tls_ca: str | None) -> Any:
    """The TLS context for ``address`` (None for http://). Raises ValueError for a CA file that cannot be used."""
    tls_ca = tls_ca or os.environ.get("SUPERVISOR_TLS_CA") or None
    if not address.lower().startswith("https://"):
        if tls_ca is not None:
            raise ValueError(
                f"{address} is plain HTTP, but a TLS certificate authority is given (--tls-ca / $SUPERVISOR_TLS_CA): "
                "use https://HOST:PORT"
            )
        return None
    import ssl  # only here: plain HTTP keeps its start-up time (and trainer_sdk._tls would import the SDK)

    if tls_ca is None or tls_ca == "system":  # the system's roots, as a browser would
        return ssl.create_default_context()
    where = "(--tls-ca / $SUPERVISOR_TLS_CA)"
    try:
        return ssl.create_default_context(cafile=tls_ca)
    except ssl.SSLError as exc:
        raise ValueError(f"{tls_ca!r} {where} holds a certificate that cannot be read ({exc.reason or exc})") from None
    except OSError as exc:
        raise ValueError(
            f"cannot read the TLS certificate authority file {tls_ca!r} {where}: {exc.strerror or exc}; give a PEM "
            "file, or 'system' for the system's roots"
        ) from None


def _handshake(context: Any, raw: Any, host: str) -> Any:
    """``raw`` (a ``_socket.socket``) wrapped in TLS, the certificate checked against ``host``."""
    import socket

    timeout = raw.gettimeout()
    sock = socket.socket(fileno=raw.detach())  # ssl wraps socket.socket, not the C type
    sock.settimeout(timeout)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _is_tls_error(exc: OSError) -> bool:
    import ssl

    return isinstance(exc, ssl.SSLError | ssl.CertificateError)


def _connect(host: str, port: int, timeout: float) -> Any:
    """socket.create_connection's loop over the host's addresses, on ``_net``."""
    # An ASCII host goes as bytes: as text, getaddrinfo would import the idna codec first.
    name = host.encode() if host.isascii() else host
    error: OSError | None = None
    for family, kind, proto, _, address in _net.getaddrinfo(name, port, _net.AF_UNSPEC, _net.SOCK_STREAM):
        sock = _net.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"{host} has no address")


def _answer_length(data: bytearray) -> int:
    """Head plus Content-Length once the head is complete; -1 before that or without a Content-Length (read to EOF)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return -1
    for line in bytes(data[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return end + 4 + int(value)
    return -1
