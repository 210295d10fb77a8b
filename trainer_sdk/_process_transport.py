"""``transport="process"``: the training process keeps no SDK thread; a sidecar process holds the connection.

Why: with the thread transport, every batch sent and every change received
wakes Python threads in the training process, and each wake-up makes the
training thread wait for the GIL after its next torch call (measured: about
six waits per flushed batch). Here the training thread does all of this
process's SDK work itself, inside ``report``, and only when there is work:

* every ``flush_interval`` it converts the queued points to floats and writes
  them to the sidecar in one non-blocking socket write;
* when the sidecar rings the bell (one shared byte, read on every report) it
  reads what arrived: deltas, applied there and then and acknowledged at
  once, and the connection's status.

So a change becomes visible at the training loop's next ``report`` (or
``hp.version``, ``hp.connected``, ``hp.flush``), and its acknowledgement
means exactly that. A loop that stops reporting for a while (a long
evaluation) sees changes when it reports again.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # signal.signal's C function: the same call without the enum conversions, which cost
    import _signal  # tens of µs per shipment in a training loop (measured: 78 µs for both calls)
except ImportError:  # not CPython
    _signal = signal  # type: ignore[assignment]

from trainer_sdk import _link
from trainer_sdk._points import PointConverter
from trainer_sdk._state import ConnectOptions, Delta, SessionState

log = logging.getLogger("trainer_sdk")

_READ_SIZE = 1 << 16
_RETRY_BLOCKED = 0.05  # seconds before trying again to write to a sidecar that is not reading
SHIP_AT_POINTS = 4096
"""Points that go at once, due or not: bounds a message, and ships even if the wall clock stepped back."""


class ProcessTransport:
    """The training process's end of the sidecar; driven by the training thread, never by a thread of its own."""

    ship_at_points = SHIP_AT_POINTS

    def __init__(self, state: SessionState, options: ConnectOptions, telemetry: float | None = None) -> None:
        self.state = state
        state.pumped = False  # this thread ships and acknowledges itself, inside report()
        self.stopping = threading.Event()
        self.due = [0.0]  # time.time() at which report() next ships points; a list so report's closure reads it
        self._flush_interval = options.flush_interval
        self._connected = False
        self._points_shipped = 0  # written to the sidecar (or waiting in _out)
        self._flush_wanted = False
        self._tell_stored = False  # a flush waits: the sidecar should say when everything is stored
        self._closed: bool | None = None  # the sidecar's answer to "close": everything stored
        self._dead = False
        self._rehello = False  # the sidecar should reconnect with the values in use (SessionState.resync)
        self._out = bytearray()
        self._in = bytearray()
        self._lock = threading.Lock()
        self._converter = PointConverter(state)
        self._config = {
            "run": state.run,
            "rank": state.rank,
            "world_size": state.world_size,
            "params": state.params,
            "values": dict(state.values),
            "buffer_size": state.buffer_size,
            "options": options,
            "telemetry": telemetry,  # GPU and host readings are machine-wide: the sidecar samples them
        }
        self._bell_file = tempfile.TemporaryFile()
        self._bell_file.truncate(_link.BELL_SIZE)
        self.bell = mmap.mmap(self._bell_file.fileno(), _link.BELL_SIZE)
        self._sock, self._child_sock = socket.socketpair()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)  # the sidecar imports this same trainer_sdk
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        fds = (self._child_sock.fileno(), self._bell_file.fileno())
        try:
            self._proc = subprocess.Popen(
                # -P: not the working directory first on the path, which would import a trainer_sdk folder
                # found there (a checkout of another version, say) instead of this one
                [sys.executable, "-P", "-m", "trainer_sdk._sidecar", *map(str, fds)],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the trainer's stdout is its own; the sidecar logs to stderr
                start_new_session=True,  # a terminal's Ctrl-C or hang-up goes to the trainer alone, even at start-up
            )
        except OSError as exc:
            self._lost(exc)
            return
        finally:
            self._child_sock.close()
        self._sock.setblocking(False)
        with self._lock:
            self._out += _link.encode(("init", self._config))
            self._write()

    # -- the training thread's entry point ---------------------------------------------

    def service(self, ship: bool = False) -> None:
        """Read what the sidecar sent, apply it, acknowledge it, and ship points when due.

        Called by ``report`` when the bell rang or points are due; never blocks
        (a second caller at the same moment returns at once).
        """
        if ship:
            self._flush_wanted = True  # served by whoever holds the lock now, or by the next call
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._service_uninterrupted()
        finally:
            self._lock.release()

    def _service_uninterrupted(self) -> None:
        if threading.current_thread() is threading.main_thread():
            _with_interrupts_deferred(self._service)
        else:
            self._service()

    def _service(self) -> None:
        if self._dead:
            self.state.overflow += len(self.state.queue)  # counted as dropped: nobody will store them
            self.state.queue.clear()
            self.bell[0] = 0
            self.due[0] = float("inf")
            return
        now = time.time()
        state = self.state
        shipping = self._flush_wanted or now >= self.due[0] or len(state.queue) >= self.ship_at_points
        if self.bell[0]:
            self.bell[0] = 0  # before reading: a message sent after this rings again
            self._read()
        blocked = bool(self._out)  # the sidecar has not read what was written before
        if state.acks or self._rehello:  # a rehello follows the values in use, which "acks" carries
            acks = []
            while state.acks:
                ack = state.acks.popleft()
                acks.append(tuple(ack))  # builtins unpickle without a class lookup
            version, values = state.snapshot()
            self._out += _link.encode(("acks", acks, version, values))
        if self._rehello:
            self._rehello = False
            self._out += _link.encode(("rehello",))
        if blocked:
            self.due[0] = now + _RETRY_BLOCKED
        elif shipping:
            tell = self._tell_stored  # a flush on another thread may set it at any moment: clear only what is sent
            try:
                points = self._converter.drain(state.queue, limit=self.ship_at_points)
                if tell:
                    ship = _link.SHIP_AND_TELL
                else:
                    ship = _link.SHIP_NOW if self._flush_wanted else _link.SHIP_IN_TIME
                message = _link.encode(("points", state.overflow, points, ship))
            except Exception:  # never into the training loop; the converter drops bad values itself
                log.exception("trainer_sdk could not ship a batch of points; continuing")
                points, message = [], b""
            if message:
                self._out += message
                self._points_shipped += len(points)
            self._flush_wanted = False
            if tell:
                self._tell_stored = False
            # The rest of a long backlog goes at the next report, one bounded message at a time.
            self.due[0] = now if state.queue else now + self.flush_interval
        self._write()

    def _write(self) -> None:
        if not self._out or self._dead:
            return
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._out[:sent]

    def _read(self) -> None:
        lost: BaseException | bool = False
        while True:  # one recv, as a rule: a short read means the socket is empty (no exception to raise)
            try:
                data = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                lost = exc
                break
            if not data:
                lost = True
                break
            self._in += data
            if len(data) < _READ_SIZE:
                break
        for message in _link.decode(self._in):  # what came before an end of stream still counts ("closed")
            self._handle(message)
        if lost is not False:
            self._lost(None if lost is True else lost)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "delta":
            self.state.receive(Delta(*message[1:]))  # applied now (or held for its step); acked by this service
        elif kind == "welcome":
            if self.state.resync(message[1]):
                self._rehello = True  # asked for after this service's acks, which carry the values in use
        elif kind == "status":
            _, self._connected, self._flush_interval = message
        elif kind == "closed":
            _, flushed, received = message
            self._closed = flushed and received == self._points_shipped
        # "stored" needs nothing: it only woke a waiting flush, which reads the count itself

    def _lost(self, exc: BaseException | None) -> None:
        if self._dead:
            return
        self._dead = True
        self._connected = False
        if self._closed is not None:
            return  # it answered "close" and exited, as asked
        code = self._proc.poll() if self._proc is not None else None
        log.error(
            "the trainer_sdk sidecar process is gone (%s); run %r continues offline on its current values",
            f"exit code {code}" if code is not None else exc or "connection closed",
            self.state.run,
        )

    # -- waiting (never on the training loop's path unless it asks) -------------------

    def _wait(self, done: Callable[[], bool], timeout: float | None, ship: bool = False) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        if ship:
            self._flush_wanted = True
        while True:
            with self._lock:
                self.bell[0] = 0
                if not self._dead:
                    self._read()
                self._service_uninterrupted()
                if done():
                    return True
                if self._dead:
                    return False
                writing = [self._sock] if self._out else []
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            select.select([self._sock], writing, [], 0.05 if left is None else min(left, 0.05))

    def poll(self) -> None:
        """Apply what the sidecar sent, if anything (for status reads between reports)."""
        if self.bell[0] and not self._dead:
            self.service()

    def is_connected(self) -> bool:
        self.poll()
        return self._connected

    def wait_connected(self, timeout: float | None) -> bool:
        return self._wait(lambda: self._connected, timeout)

    def flushed(self) -> bool:
        return (
            not self.state.queue
            and not self._out
            and not self._flush_wanted
            and _link.read_count(self.bell, _link.STORED) >= self._points_shipped
        )

    def flush(self, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            self.service(ship=True)
            return self.flushed()
        self._tell_stored = True  # wakes this wait when the supervisor has stored everything
        return self._wait(self.flushed, timeout, ship=True)

    def unstored(self) -> int:
        return len(self.state.queue) + self._points_shipped - _link.read_count(self.bell, _link.STORED)

    @property
    def dropped(self) -> int:
        return self.state.overflow + _link.read_count(self.bell, _link.DROPPED)

    @property
    def flush_interval(self) -> float:
        return self._flush_interval

    def close(self, outcome: int, timeout: float) -> bool:
        """Ship everything, let the sidecar flush and say goodbye, and wait for it to exit."""
        deadline = time.monotonic() + timeout
        # Every point written before "close": the sidecar reads nothing after it.
        self._wait(lambda: not self._out and not self._flush_wanted and not self.state.queue, timeout, ship=True)
        with self._lock:
            if not self._dead:
                self._out += _link.encode(("close", outcome, max(0.0, deadline - time.monotonic())))
        self._wait(lambda: self._closed is not None, max(0.0, deadline - time.monotonic()) + 1.0)
        flushed = bool(self._closed)
        self.stopping.set()
        self._sock.close()
        self.due[0] = float("inf")
        if self._proc is not None:
            try:
                self._proc.wait(max(0.5, deadline - time.monotonic() + 1.0))
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return flushed

    def forget_in_child(self) -> None:
        """In a forked child (a DataLoader worker): drop this end so the sidecar sees the trainer's exit."""
        try:
            self._sock.close()
        except OSError:
            pass


def _with_interrupts_deferred(work: Callable[[], None]) -> None:
    """Run ``work`` with Ctrl-C held until it returns (main thread only).

    A KeyboardInterrupt in the middle of a shipment would lose the points
    already taken off the queue, or cut a message in two. Held only if the
    trainer has not installed a SIGINT handler of its own.
    """
    previous = _signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        work()
        return
    held: list[int] = []
    _signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        work()
    finally:
        _signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
