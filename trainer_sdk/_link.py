"""The framing between a training process and its sidecar: length-prefixed pickles over a socket pair.

Both ends are the same installation of this package (the sidecar is started
with the trainer's own interpreter and path), so pickle carries the SDK's own
types; nothing else ever writes to this socket.

Messages, trainer → sidecar::

    ("init", config)                          first, once: what connect() was given
    ("points", overflow, [Point, ...], flush) a batch in report order; flush: send it now
    ("acks", [(version, step, time), ...], version, values)
    ("rehello",)                              reconnect: the supervisor adopted older values than these
    ("close", outcome, timeout)

sidecar → trainer (followed by a ring of the bell, a shared byte the training
thread reads on every report, unless only the stored or dropped counts in a
status changed: the trainer reads those when it next ships or waits)::

    ("welcome", version)                      a (re)connection, before its deltas (SessionState.resync)
    ("delta", Delta)
    ("status", connected, flush_interval, dropped, points_stored)
    ("closed", flushed, points_received)
"""

from __future__ import annotations

import pickle
import socket
import threading
from typing import Any

_HEADER = 4
BELL_SIZE = 8


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER, "big") + body


def decode(buffer: bytearray) -> list[tuple[Any, ...]]:
    """Take every complete message off the front of ``buffer``."""
    messages = []
    while len(buffer) >= _HEADER:
        size = int.from_bytes(buffer[:_HEADER], "big")
        if len(buffer) < _HEADER + size:
            break
        messages.append(pickle.loads(buffer[_HEADER : _HEADER + size]))
        del buffer[: _HEADER + size]
    return messages


class BlockingLink:
    """The sidecar's end: blocking reads on one thread, sends from any thread, a bell after each send."""

    def __init__(self, sock: socket.socket, bell: Any) -> None:
        self._sock = sock
        self._bell = bell
        self._reader = sock.makefile("rb")
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...], *, ring: bool = True) -> None:
        """Send ``message``; ``ring=False`` leaves it for the trainer's next read (it reads whenever it ships)."""
        data = encode(message)
        with self._send_lock:
            self._sock.sendall(data)
            if ring:
                self._bell[0] = 1  # after the data: the trainer that sees the bell finds the message

    def receive(self) -> tuple[Any, ...]:
        """The next message; EOFError when the trainer's end is closed (it exited or was killed)."""
        header = self._reader.read(_HEADER)
        if len(header) < _HEADER:
            raise EOFError
        size = int.from_bytes(header, "big")
        body = self._reader.read(size)
        if len(body) < size:
            raise EOFError
        return pickle.loads(body)
