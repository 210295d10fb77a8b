"""The operator API as HTTP/1.1 + JSON, for clients that cannot afford gRPC's start-up.

A one-shot command such as ``supervisor set RUN lr=0.01`` spends most of its
time importing grpc and protobuf (about 100 ms) before it sends a byte. This
gateway lets such a client speak plain HTTP with the standard library alone.

It adds no operator logic of its own: ``POST /v1/<Method>`` with the proto3
JSON form of ``<Method>Request`` calls the very same ``OperatorService``
coroutine the gRPC server calls, on the server's event loop, and answers with
the proto3 JSON form of the response (``MessageToDict``: lowerCamelCase names,
int64 as strings, enums by name, every field present). A status the servicer
aborts with becomes an HTTP status and ``{"error": details, "code": "NOT_FOUND"}``.
The same bearer token as gRPC guards it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from supervisor.services import UNAUTHENTICATED_DETAILS, OperatorService
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

__all__ = ["HTTP_STATUS", "HttpGateway"]

log = logging.getLogger("supervisor.http")

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body; operator requests are a few hundred bytes."""
MAX_LINE_BYTES = 16 * 1024
"""Longest request line or header line."""
MAX_HEADERS = 100
IDLE_TIMEOUT = 30.0
"""Seconds a kept-alive connection may sit between requests before it is closed."""
READ_TIMEOUT = 10.0
"""Seconds a client has to send a request's headers and body once it started it."""

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status -> HTTP status of the answer; anything else is 500."""

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Abort(Exception):
    """What the gateway's ``context.abort`` raises: the servicer's status, carried to the HTTP answer."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _HttpError(Exception):
    """A request the gateway cannot take. Raised while reading, it ends the connection (its framing can no
    longer be trusted); raised while dispatching a complete request, the connection stays open."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the operator servicer uses, for calls that came over HTTP."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = None) -> NoReturn:
        raise _Abort(code, details)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[()]:
        return ()


@dataclass(frozen=True)
class _Method:
    name: str
    request: type[Message]
    call: Callable[[Any, Any], Any]


@dataclass
class _Request:
    verb: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class HttpGateway:
    """``POST /v1/<Method>`` onto an ``OperatorService``; started and stopped on the server's event loop.

    Every unary method of the service is served, found through the proto's
    descriptor, so a method added to the proto is served here as well.
    """

    def __init__(
        self, service: OperatorService, *, token: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._tls = tls
        descriptor = pb.DESCRIPTOR.services_by_name["OperatorService"]
        self._methods = {
            m.name: _Method(m.name, getattr(pb, m.input_type.name), getattr(service, m.name))
            for m in descriptor.methods
            if not m.client_streaming and not m.server_streaming
        }
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # handler -> busy with a call
        self._closing = False

    @property
    def methods(self) -> list[str]:
        return sorted(self._methods)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the bound port. Raises OSError if it cannot bind."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_LINE_BYTES, ssl=self._tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting; close idle connections at once and give calls in flight ``grace`` seconds."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        pending = list(self._connections)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- one connection ----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        peer = _peer(writer.get_extra_info("peername"))
        try:
            while not self._closing:
                try:
                    request = await self._read_request(reader, writer)
                except _HttpError as exc:
                    await self._send(writer, exc.status, {"error": exc.message, "code": exc.code}, close=True)
                    return
                if request is None:
                    return
                self._connections[task] = True
                status, payload = await self._dispatch(request, peer)
                keep = request.keep_alive and not self._closing
                await self._send(writer, status, payload, close=not keep)
                self._connections[task] = False
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # stopping
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Request | None:
        """The next request, None when the client closed or idled out; _HttpError when it is malformed."""
        try:
            line = await asyncio.wait_for(_read_line(reader, "request line", 414), IDLE_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        if not line.strip():
            try:  # tolerate one stray CRLF between requests (RFC 9112, 2.2)
                line = await asyncio.wait_for(_read_line(reader, "request line", 414), READ_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError):
                return None
        try:
            return await asyncio.wait_for(self._read_rest(line, reader, writer), READ_TIMEOUT)
        except TimeoutError:
            raise _HttpError(
                408,
                "DEADLINE_EXCEEDED",
                f"the request was not complete within {READ_TIMEOUT:g}s: "
                "are its headers ended by an empty line, and is its body as long as its Content-Length?",
            ) from None

    async def _read_rest(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Request:
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _HttpError(400, "INVALID_ARGUMENT", f"not an HTTP/1.x request line: {line[:80]!r}")
        verb, target, version = parts
        headers: dict[str, str] = {}
        while True:
            raw = await _read_line(reader, "header line", 431)
            if raw in (b"\r\n", b"\n"):
                break
            if len(headers) >= MAX_HEADERS:
                raise _HttpError(431, "INVALID_ARGUMENT", f"more than {MAX_HEADERS} header lines")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _HttpError(400, "INVALID_ARGUMENT", f"malformed header line {raw[:80]!r}")
            headers[name.lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        if "transfer-encoding" in headers:
            raise _HttpError(
                501, "UNIMPLEMENTED", "chunked request bodies are not supported: send a Content-Length header"
            )
        length_text = headers.get("content-length")
        if length_text is None:
            if verb == "POST":
                raise _HttpError(411, "INVALID_ARGUMENT", "a POST needs a Content-Length header")
            length = 0
        else:
            if not length_text.isdigit():
                raise _HttpError(400, "INVALID_ARGUMENT", f"Content-Length {length_text!r} is not a byte count")
            length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _HttpError(
                413, "RESOURCE_EXHAUSTED", f"the request body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit"
            )
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        return _Request(verb, target.split("?", 1)[0], headers, body, keep_alive)

    # -- one call ----------------------------------------------------------------------------------

    async def _dispatch(self, request: _Request, peer: str) -> tuple[int, dict[str, Any]]:
        try:
            method = self._route(request)
            self._authenticate(request)
            message = self._parse(method, request.body)
            try:
                response = await method.call(message, _Context(peer))
            except _Abort as exc:
                log.debug("%s %s -> %s: %s", peer, method.name, exc.code.name, exc.details)
                return HTTP_STATUS.get(exc.code, 500), {"error": exc.details, "code": exc.code.name}
            return 200, json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        except _HttpError as exc:
            return exc.status, {"error": exc.message, "code": exc.code}
        except Exception as exc:  # a bug: answer, log, and keep serving
            log.exception("HTTP call %s failed", request.path)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}", "code": "INTERNAL"}

    def _route(self, request: _Request) -> _Method:
        prefix, _, name = request.path.rpartition("/")
        method = self._methods.get(name) if prefix == "/v1" else None
        if method is None:
            raise _HttpError(
                404,
                "UNIMPLEMENTED",
                f"no method at {request.path!r}: POST one of " + ", ".join(f"/v1/{n}" for n in self.methods),
            )
        if request.verb != "POST":
            raise _HttpError(405, "UNIMPLEMENTED", f"{request.path} takes POST, not {request.verb}")
        return method

    def _authenticate(self, request: _Request) -> None:
        if self._expected is None:
            return
        supplied = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(supplied, self._expected):
            raise _HttpError(401, "UNAUTHENTICATED", UNAUTHENTICATED_DETAILS)

    @staticmethod
    def _parse(method: _Method, body: bytes) -> Message:
        what = method.request.DESCRIPTOR.name
        try:
            data = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _HttpError(
                400, "INVALID_ARGUMENT", f"the body is not valid JSON ({exc}): send the proto3 JSON form of {what}"
            ) from None
        if not isinstance(data, dict):
            raise _HttpError(
                400,
                "INVALID_ARGUMENT",
                f"the body must be a JSON object (the proto3 JSON form of {what}), not a {type(data).__name__}",
            )
        try:
            return json_format.ParseDict(data, method.request())
        except json_format.ParseError as exc:
            raise _HttpError(400, "INVALID_ARGUMENT", f"bad {what}: {exc}") from None

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any], *, close: bool) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Allow: POST\r\n" if status == 405 else "")
            + ('WWW-Authenticate: Bearer realm="supervisor"\r\n' if status == 401 else "")
            + f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()


async def _read_line(reader: asyncio.StreamReader, what: str, status: int) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _HttpError(status, "INVALID_ARGUMENT", f"the {what} is longer than {MAX_LINE_BYTES} bytes") from None


def _peer(address: Any) -> str:
    """``context.peer()``'s form: ``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return str(address)
