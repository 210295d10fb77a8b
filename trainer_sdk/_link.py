"""The framing between a training process and its sidecar: length-prefixed pickles over a socket pair.

Both ends are the same installation of this package (the sidecar is started
with the trainer's own interpreter and path), so pickle carries the SDK's own
types; nothing else ever writes to this socket.

Messages, trainer → sidecar::

    ("init", config)                          first, once: what connect() was given
    ("points", overflow, [Point, ...], ship)  a batch in report order; ship: SHIP_IN_TIME, SHIP_NOW or
                                              SHIP_AND_TELL (send now; say "stored" when all is stored)
    ("acks", [Ack fields, ...], version, values)  each an Ack as a plain tuple
    ("rehello",)                              reconnect: the supervisor adopted older values than these
    ("close", outcome, timeout)

sidecar → trainer, each followed by a ring of the bell (a shared byte the
training thread reads on every report) except "stored", which only a waiting
flush reads::

    ("welcome", version)                      a (re)connection, before its deltas (SessionState.resync)
    ("delta", *Delta fields)                  in Delta(*fields) order: builtins unpickle without a class lookup
    ("status", connected, flush_interval)     when either changes
    ("stored",)                               after SHIP_AND_TELL, once every point received is stored
    ("closed", flushed, points_received)

Two counts the trainer needs only when asked (``hp.flush``, ``hp.dropped``,
``close``) are not messages: the sidecar writes them into the shared bytes
beside the bell (:func:`read_count`). As messages they were one more read and
unpickle on the training thread at every shipment.
"""

from __future__ import annotations

import pickle
import socket
import threading
from typing import Any

_HEADER = 4
BELL_SIZE = 24
"""The shared bytes: [0] the bell; [8:16] and [16:24] the counts DROPPED and STORED, little-endian."""
DROPPED = slice(8, 16)
"""Points the sidecar dropped (its buffer was full, or the supervisor never stored them)."""
STORED = slice(16, 24)
"""Points received from the trainer that the supervisor has stored."""
SHIP_IN_TIME, SHIP_NOW, SHIP_AND_TELL = 0, 1, 2


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


def read_count(shared: Any, where: slice) -> int:
    """A count the other process writes; read until two reads agree, as a write of 8 bytes may be seen half done."""
    value = shared[where]
    while (again := shared[where]) != value:
        value = again
    return int.from_bytes(value, "little")


class BlockingLink:
    """The sidecar's end: blocking reads on one thread, sends from any thread, a bell after each send."""

    def __init__(self, sock: socket.socket, bell: Any) -> None:
        self._sock = sock
        self._bell = bell
        self._reader = sock.makefile("rb")
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...], *, ring: bool = True) -> None:
        """Send ``message``; ``ring=False`` leaves it for the trainer's next read (a waiting flush reads at once)."""
        data = encode(message)
        with self._send_lock:
            self._sock.sendall(data)
            if ring:
                self._bell[0] = 1  # after the data: the trainer that sees the bell finds the message

    def write_counts(self, dropped: int, stored: int) -> None:
        """Publish the counts the trainer reads when it needs them (:func:`read_count`)."""
        self._bell[DROPPED] = dropped.to_bytes(8, "little")
        self._bell[STORED] = stored.to_bytes(8, "little")

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
