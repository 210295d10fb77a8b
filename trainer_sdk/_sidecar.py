"""The sidecar process of ``connect(..., transport="process")``: the whole gRPC connection, out of the trainer.

Started by the training process with its own interpreter; runs the same
:class:`~trainer_sdk._transport.Transport` as the thread transport, so
reconnects, pacing, buffering until stored and de-duplication are the same
code. What differs is where values apply: a Delta is forwarded to the
training process, which applies it on its own thread at its next ``report``
and only then acknowledges it, so an acknowledgement means the training
loop's next read returns the new value.

The trainer's ``report`` reads one shared byte (the bell) to learn that a
message is waiting; it never waits on this process.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import operator
import signal
import socket
import sys
import threading
import time
from typing import Any

from trainer_sdk._link import BELL_SIZE, SHIP_AND_TELL, SHIP_IN_TIME, BlockingLink
from trainer_sdk._state import Ack, ConnectOptions, Delta, SessionState
from trainer_sdk._transport import Transport

log = logging.getLogger("trainer_sdk")

ABANDONED_FLUSH_SECONDS = 10.0
"""How long a sidecar whose trainer died keeps trying to store what it was sent (through a reconnect, say)."""


class RelayState(SessionState):
    """The sidecar's copy of the session: deltas are forwarded, not applied; values follow the trainer's acks."""

    link: BlockingLink

    def receive(self, delta: Delta) -> None:
        with self.apply_lock:
            if delta.version <= self.received_version:
                return
            self.received_version = delta.version
        try:
            self.link.send(("delta", *_fields(delta)))
        except OSError:  # the trainer is gone; the relay loop sees it and stores what it has
            pass


_fields = operator.attrgetter(*(field.name for field in dataclasses.fields(Delta)))
"""A Delta's fields in the order ``Delta(*fields)`` takes them: a tuple of builtins unpickles faster."""


class SidecarTransport(Transport):
    """The thread transport, telling the trainer whenever its connection, pacing or stored points change."""

    def __init__(self, state: RelayState, link: BlockingLink, options: ConnectOptions) -> None:
        super().__init__(state, options)
        self.link = link
        self.points_received = 0  # from the trainer, all in state.queue or beyond
        self.relay_overflow = 0  # points this process dropped because its own queue was full
        self.relay_lock = threading.Lock()
        self._last_status: tuple[Any, ...] = ()
        self._stored = 0  # points received that the supervisor has stored, as last published
        self._tell_stored = False
        self.points_at = 0.0  # when the trainer last shipped points (time.monotonic())

    def _points_coming(self) -> bool:
        """The trainer holds its points between shipments: one that shipped within ``flush_interval`` will
        ship again."""
        return super()._points_coming() or time.monotonic() - self.points_at < self.flush_interval

    def take_points(self, overflow: int, points: list[Any], ship: int) -> None:
        """Queue a shipment from the trainer (``overflow``: what it dropped so far) and send it as ``ship`` says."""
        state = self.state
        if ship == SHIP_AND_TELL:
            self.want_ack()  # a flush waits for the receipt: the batch these points go in asks for it
        with self.relay_lock:
            room = state.buffer_size - len(state.queue)
            if len(points) > room:
                self.relay_overflow += len(points) - room
            state.overflow = overflow + self.relay_overflow
            state.queue.extend(points)  # a deque with maxlen: the oldest go first
            self.points_received += len(points)
            if points:  # a shipment with none (the trainer's timer came due in a quiet loop) promises nothing
                self.points_at = time.monotonic()
                state.last_step = points[-1][0]
        if ship != SHIP_IN_TIME:
            self.request_flush()
        elif state.pump_idle:
            state.poke()
        self.push_status(tell_stored=ship == SHIP_AND_TELL)

    def push_status(self, tell_stored: bool = False) -> None:
        """Publish the counts, and tell the trainer what it reads between shipments or waits for.

        Under the lock, so two threads' statuses cannot cross. ``tell_stored``:
        a flush waits; say "stored" once every point received is stored.
        """
        with self.relay_lock:
            self._tell_stored |= tell_stored
            flushed = self.flushed()
            if flushed:
                self._stored = self.points_received
            self.link.write_counts(self._dropped + self.relay_overflow, self._stored)
            status = ("status", self.connected.is_set(), self.flush_interval)
            try:
                if status != self._last_status:
                    self._last_status = status
                    self.link.send(status)
                if self._tell_stored and flushed:
                    self._tell_stored = False
                    self.link.send(("stored",), ring=False)  # the waiting flush reads it; the loop need not
            except OSError:  # the trainer is gone; the relay loop sees it too
                pass

    def _on_welcome(self, welcome: Any, outbox: Any) -> None:
        super()._on_welcome(welcome, outbox)
        try:  # before any delta of this stream: deltas forwarded earlier may be stale (SessionState.resync)
            self.link.send(("welcome", welcome.version))
        except OSError:  # the trainer is gone; the relay loop sees it too
            pass
        self.push_status()

    def _disconnect(self, outbox: Any) -> None:
        super()._disconnect(outbox)
        self.push_status()

    def _on_pacing(self, pacing: Any) -> None:
        super()._on_pacing(pacing)
        self.push_status()

    def _on_metrics_ack(self, seq: int) -> None:
        super()._on_metrics_ack(seq)
        self.push_status()


def relay(link: BlockingLink, transport: SidecarTransport) -> None:
    """Carry the trainer's messages into the transport until it closes the session or goes away."""
    state = transport.state
    while True:
        try:
            message = link.receive()
        except (EOFError, OSError):
            abandon(transport)
            return
        except Exception:  # a message that does not decode: the stream cannot be trusted past it
            log.exception("unreadable message from the trainer; storing what arrived and stopping")
            abandon(transport)
            return
        kind = message[0]
        if kind == "points":
            _, overflow, points, ship = message
            transport.take_points(overflow, points, ship)
        elif kind == "acks":
            _, acks, version, values = message
            with state.apply_lock:
                state.values.update(values)
                state.version = version  # what the trainer's next Hello says it holds
            state.acks.extend(Ack(*ack) for ack in acks)
            state.poke()
        elif kind == "rehello":  # the supervisor adopted older values than the trainer uses (after its acks)
            transport.rehello()
        elif kind == "close":
            _, outcome, timeout = message
            flushed = transport.close(outcome, timeout)
            transport.push_status()  # the final dropped count (close() counts points never confirmed stored)
            try:
                link.send(("closed", flushed, transport.points_received))
            except OSError:
                pass
            return


def abandon(transport: SidecarTransport) -> None:
    """The trainer exited without closing (killed, crashed): store what it sent, then drop the stream.

    It keeps trying for ``ABANDONED_FLUSH_SECONDS``, so points survive a trainer
    and a supervisor that fail together, as long as the supervisor is back by then.

    No Goodbye: the supervisor records the session as lost, as it would for a
    thread transport whose process died.
    """
    transport.flush(ABANDONED_FLUSH_SECONDS)
    transport.stopping.set()
    transport.state.poke()
    call = transport._call
    if call is not None:
        call.cancel()


def main(argv: list[str]) -> int:
    # Ctrl-C, a closed terminal, and a scheduler's SIGTERM to every process of the job are
    # the trainer's to handle: its close() (or atexit) needs this process to flush and say
    # goodbye. This process exits when the trainer's end of the socket closes, however it dies.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s trainer_sdk sidecar %(levelname)s %(message)s")
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    bell = mmap.mmap(int(argv[1]), BELL_SIZE)
    link = BlockingLink(sock, bell)
    try:
        kind, config = link.receive()
    except (EOFError, OSError):
        return 0
    if kind != "init":
        log.error("expected the session's configuration first, got %r", kind)
        return 2
    state = RelayState(
        run=config["run"],
        rank=config["rank"],
        world_size=config["world_size"],
        params=config["params"],
        values=config["values"],
        buffer_size=config["buffer_size"],
    )
    state.link = link
    transport = SidecarTransport(state, link, config["options"])
    transport.start()
    sampler = _start_telemetry(transport, config["telemetry"]) if config.get("telemetry") else None
    try:
        relay(link, transport)
    finally:
        if sampler is not None:
            sampler.stop(timeout=1.0)
    return 0


def _start_telemetry(transport: SidecarTransport, interval: float) -> Any:
    """GPU (or host) readings, sampled here rather than by a thread in the training process."""
    from trainer_sdk.telemetry import TelemetrySampler

    state = transport.state

    def emit(values: dict[str, float]) -> None:
        with transport.relay_lock:
            if len(state.queue) >= state.buffer_size:
                transport.relay_overflow += 1
            state.queue.append((max(state.last_step, 0), time.time(), values))

    return TelemetrySampler(emit, interval=interval).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
