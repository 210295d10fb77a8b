"""Background connection to the supervisor: nothing here runs on the training thread.

Two daemon threads per session:

* the connection thread opens the gRPC stream (creating the channel lazily, in
  the process that uses it), reconnects with capped exponential backoff and full
  jitter, and handles what the supervisor sends (Welcome, Delta, MetricsAck, and
  a sharded supervisor's Redirect to the process that owns the run);
* the pump thread drains the training thread's queue, numbers the points,
  keeps them until the supervisor says they are stored, and sends points and
  acknowledgements in batches.

Points stay in ``unacked`` until a MetricsAck covers them, so a supervisor that
dies before storing them gets them again after the reconnect (its Welcome says
the last sequence number it has); the supervisor drops duplicates by sequence.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from typing import Any

import grpc

from trainer_sdk import _wire
from trainer_sdk._points import PointConverter
from trainer_sdk._state import Ack, ConnectOptions, Delta, SessionState
from trainer_sdk._tls import closed_at_hello, handshake_failed, secure_or_insecure_channel
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("trainer_sdk")

MAX_POINTS_PER_MESSAGE = 512
_CLOSE = object()
_METRICS = object()  # in the outbox: "build a metrics batch of what is unsent"
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


def _applied(ack: Ack) -> pb.Applied:
    return pb.Applied(version=ack.version, step=ack.step, time=ack.time)


def _tls_hint(details: str, tls: bool) -> str:
    """Advice when an outage looks like a TLS mismatch rather than a supervisor that is down."""
    if tls and handshake_failed(details):
        return (
            " - check that the supervisor serves TLS (--tls-cert), that tls_ca / $SUPERVISOR_TLS_CA holds the"
            " authority that signed its certificate, and that the certificate names the host in the address"
        )
    if not tls and closed_at_hello(details):
        return " - if the supervisor serves TLS (--tls-cert), connect with tls_ca= / $SUPERVISOR_TLS_CA"
    return ""


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's 'full jitter')."""

    def __init__(self, initial: float = 0.05, maximum: float = 5.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(self.initial / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class Transport:
    def __init__(self, state: SessionState, options: ConnectOptions) -> None:
        self.state = state
        self.address = options.address
        self.session_id = options.session_id
        self.requested_flush_interval = options.flush_interval
        self.paced_flush_interval = 0.0  # the supervisor's bound (Pacing), 0 until it sends one
        self.backoff = Backoff(maximum=options.backoff_max)
        self.tls = options.tls
        self.metadata = (("authorization", f"Bearer {options.token}"),) if options.token else ()
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self._send_lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Any] | None = None
        self._call: Any = None
        self._seq = itertools.count(1)
        self._unacked: deque[tuple[int, int, float, dict[str, float]]] = deque()
        self._sent_seq = 0
        self._metrics_queued = False  # a _METRICS token waits in the outbox
        self._dropped = 0
        self._in_doubt: deque[int] = deque()  # seqs trimmed from the buffer while in flight (see _drain)
        self._draining = False
        self._drains = 0  # drains finished (flushed() checks that none ran while it looked)
        self._converter = PointConverter(state)
        self._goodbye: pb.Goodbye | None = None
        self._flush_now = False
        self._rehello = False  # reconnect to send a fresh Hello (see SessionState.resync)
        self._route: str | None = None  # the process that owns the run, when a sharded supervisor redirected us
        self._ack_wanted = False  # someone waits to hear that every point is stored: batches say ack_now
        self._ack_asked = False  # ... and a message since then said so
        self._held_ack: Ack | None = None  # rides the next metric batch (its delta said ack_with_metrics)
        self._held_since = 0.0
        self._io = threading.Thread(target=self._connect_loop, name="trainer-sdk-connection", daemon=True)
        self._pump = threading.Thread(target=self._pump_loop, name="trainer-sdk-pump", daemon=True)

    def start(self) -> None:
        self._io.start()
        self._pump.start()

    # -- public views ----------------------------------------------------------------

    @property
    def flush_interval(self) -> float:
        """Seconds between metric batches in a steady stream: the session's, or the supervisor's if longer."""
        return max(self.requested_flush_interval, self.paced_flush_interval)

    @property
    def dropped(self) -> int:
        return self._dropped + self.state.overflow

    def flushed(self) -> bool:
        """True when every point reported so far is stored by the supervisor."""
        drains = self._drains  # a whole drain between the reads below would hide its points
        if self._draining or self.state.queue or self._unacked:
            return False
        return not self._draining and self._drains == drains

    def unstored(self) -> int:
        """Points reported but not yet stored by the supervisor (as far as this process knows)."""
        return len(self.state.queue) + len(self._unacked) + len(self._in_doubt)

    def rehello(self) -> None:
        """Reconnect at once, so the supervisor gets a Hello with the values this process uses now."""
        self._rehello = True
        call = self._call
        if call is not None:
            call.cancel()

    def poll(self) -> None:
        """Nothing to do: this transport's threads apply what arrives at once."""

    def is_connected(self) -> bool:
        return self.connected.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        return self.connected.wait(timeout)

    def flush(self, timeout: float | None) -> bool:
        """Send what is queued now; wait until the supervisor stored it, or ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout != 0:
            self.want_ack()
        self.request_flush()
        while not self.flushed():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- pump thread -----------------------------------------------------------------

    def want_ack(self) -> None:
        """Someone waits to hear that every point is stored: ask the supervisor to say so at once, not
        within its ack delay (the session says ``lazy_acks``: receipts may otherwise come late, together)."""
        with self._send_lock:
            self._ack_wanted = True
            self._ack_asked = False

    def request_flush(self) -> None:
        """Send every queued point now instead of at the next flush interval."""
        self._flush_now = True
        self.state.poke()

    def _pump_loop(self) -> None:
        """Acknowledgements go at once (those a delta let ride the next batch, with it); points go at most
        every ``flush_interval``.

        A point reported after a quiet spell goes at once (low latency for
        sparse events); in a steady stream points wait for the interval and go
        together, which keeps both the trainer's and the supervisor's cost per
        point low. report() wakes the pump only when it is idle, so a busy
        training loop never signals the pump thread.
        """
        state = self.state
        last_flush = 0.0
        while True:
            if state.queue:
                delay = last_flush + self.flush_interval - time.monotonic()
                if delay > 0 and not state.acks and not self._flush_now and not self.stopping.is_set():
                    state.wake.wait(delay)
            else:
                state.pump_idle = True
                if not state.queue and not state.acks and not self._flush_now and not self.stopping.is_set():
                    held = self._held_ack is not None and self._outbox is not None  # due within flush_interval
                    state.wake.wait(self.flush_interval if held else 1.0)
                state.pump_idle = False
            state.wake.clear()
            try:
                now = time.monotonic()
                due = now >= last_flush + self.flush_interval or self._flush_now or self.stopping.is_set()
                self._flush_now = False  # served now, whether or not anything was queued
                if state.queue and due:
                    last_flush = now
                    self._drain()
                self._send()
            except Exception:  # never let a bad point kill the pump
                log.exception("trainer_sdk pump failed on a batch; continuing")
            if self.stopping.is_set() and not state.queue:
                return

    def _drain(self) -> None:
        self._draining = True  # flushed() must not see the points between the queue and unacked
        try:
            converted = self._converter.drain(self.state.queue, self._seq)
            if not converted:
                return
            unacked = self._unacked
            capacity = self.state.buffer_size
            with self._send_lock:
                unacked.extend(converted)
                while len(unacked) > capacity:
                    seq = unacked.popleft()[0]
                    if seq <= self._sent_seq:  # sent, not acknowledged: probably stored, known at the next ack
                        self._in_doubt.append(seq)
                    else:
                        self._dropped += 1
        finally:
            self._drains += 1
            self._draining = False

    def _send(self) -> None:
        state = self.state
        with self._send_lock:
            outbox = self._outbox
            if outbox is None:
                return
            while state.acks:
                ack = state.acks.popleft()
                if not ack.with_metrics:
                    self._held_ack = None  # an acknowledgement covers every earlier version
                    outbox.put(pb.ConnectRequest(applied=_applied(ack)))
                elif self._held_ack is None:
                    self._held_ack, self._held_since = ack, time.monotonic()
                else:
                    self._held_ack = ack  # waits as long as the first one held, no longer
            unacked = self._unacked
            unsent = unacked and unacked[-1][0] > self._sent_seq
            held = self._held_ack
            if held is not None and (
                time.monotonic() - self._held_since >= self.flush_interval
                or not (unsent or self._metrics_queued or self._points_coming())
                or self.stopping.is_set()  # closing: no later batch will carry it
            ):
                outbox.put(pb.ConnectRequest(applied=_applied(held)))  # no batch took it, or none will
                self._held_ack = None
            if (unsent or unacked and self._ack_wanted and not self._ack_asked) and not self._metrics_queued:
                self._metrics_queued = True
                outbox.put(_METRICS)  # the sender builds the batch (or the bare request) when gRPC can take it
            if self._goodbye is not None and not state.queue:
                outbox.put(pb.ConnectRequest(goodbye=self._goodbye))
                self._goodbye = None

    def _points_coming(self) -> bool:
        """Points will go in a batch within ``flush_interval``, so a held acknowledgement may wait for it."""
        return bool(self.state.queue)

    def _batch(self, points: list[tuple[int, int, float, dict[str, float]]], ack_now: bool) -> pb.ConnectRequest:
        """Consecutive points as columns: building them costs a fraction of one message per point."""
        index: dict[str, int] = {}
        steps, times, counts, name_indexes, values = [], [], [], [], []
        for _, step, when, point_values in points:
            steps.append(step)
            times.append(when)
            counts.append(len(point_values))
            for name, value in point_values.items():
                i = index.get(name)
                if i is None:
                    i = index[name] = len(index)
                name_indexes.append(i)
                values.append(value)
        return pb.ConnectRequest(
            metrics=pb.MetricBatch(
                first_seq=points[0][0],
                steps=steps,
                times=times,
                value_counts=counts,
                names=list(index),
                name_indexes=name_indexes,
                values=values,
                dropped_total=self.dropped,
                ack_now=ack_now,
            )
        )

    # -- connection thread -------------------------------------------------------------

    def _connect_loop(self) -> None:
        outage_logged = False
        redirects = 0  # in a row, without a Welcome: a loop of them backs off like an outage
        while not self.stopping.is_set():
            target = self._route or self.address
            channel = secure_or_insecure_channel(target, self.tls, _CHANNEL_OPTIONS)
            outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
            redirected = False
            try:
                stub = pb_grpc.TrainerServiceStub(channel)
                call = stub.Connect(self._requests(outbox), metadata=self.metadata)
                self._call = call
                for response in call:
                    kind = response.WhichOneof("message")
                    if kind == "welcome":
                        self._on_welcome(response.welcome, outbox)
                        if outage_logged:
                            log.info("reconnected to the supervisor at %s", target)
                        outage_logged = False
                        redirects = 0
                        self.backoff.reset()
                    elif kind == "delta":
                        self._on_delta(response.delta)
                    elif kind == "metrics_ack":
                        self._on_metrics_ack(response.metrics_ack.seq)
                    elif kind == "pacing":
                        self._on_pacing(response.pacing)
                    elif kind == "redirect":
                        redirected = self._on_redirect(response.redirect)
                        redirects += 1
                        call.cancel()
                        break
            except grpc.RpcError as exc:
                if self.stopping.is_set():
                    break
                code = exc.code() if hasattr(exc, "code") else None
                if self._rehello and code == grpc.StatusCode.CANCELLED:
                    pass  # rehello() ended the call: not an outage
                elif code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    log.error(
                        "the supervisor refused this session: %s; training continues offline",
                        exc.details() if hasattr(exc, "details") else exc,
                    )
                    self._disconnect(outbox)
                    break
                else:
                    self._route = None  # after a redirect, the owning process is gone: ask the address given
                    if not outage_logged:
                        outage_logged = True
                        details = exc.details() if hasattr(exc, "details") else ""
                        log.warning(
                            "supervisor at %s unreachable (%s: %s)%s; training continues, reconnecting in the "
                            "background",
                            target,
                            code.name if code else type(exc).__name__,
                            details,
                            _tls_hint(details, self.tls is not None),
                        )
            except Exception:
                log.exception("trainer_sdk connection failed unexpectedly; reconnecting")
            finally:
                self._disconnect(outbox)
                channel.close()
            if self.stopping.is_set():
                break
            if self._rehello:
                self._rehello = False
                log.info("reconnecting to tell the supervisor the values this process uses (it adopted older ones)")
                continue
            if redirected and redirects <= 3:
                continue
            self.stopping.wait(self.backoff.next())

    def _on_redirect(self, redirect: pb.Redirect) -> bool:
        """Another process of a sharded supervisor owns this run: connect there next (False: cannot)."""
        target = redirect_target(self.address, redirect.host, redirect.port)
        if target is None:
            log.error("the supervisor redirects run %r to port %d, which %r cannot name; retrying",
                      self.state.run, redirect.port, self.address)
            self._route = None
            return False
        log.debug("run %r is served at %s", self.state.run, target)
        self._route = target
        return True

    def _requests(self, outbox: queue.SimpleQueue[Any]):
        version, values = self.state.snapshot()
        state = self.state
        yield pb.ConnectRequest(
            hello=pb.Hello(
                run=state.run,
                rank=state.rank,
                world_size=state.world_size,
                session_id=self.session_id,
                params=[_wire.spec_to_wire(name, param) for name, param in state.params.items()],
                values=_wire.values_to_wire(values),
                version=version,
                sdk_version=_sdk_version(),
                hostname=socket.gethostname(),
                pid=os.getpid(),
                lazy_acks=True,
                follows_redirects=True,
            )
        )
        while (message := outbox.get()) is not _CLOSE:
            if message is _METRICS:
                yield from self._unsent_batches(outbox)
            else:
                yield message

    def _unsent_batches(self, outbox: queue.SimpleQueue[Any]) -> list[pb.ConnectRequest]:
        """Every point not yet sent, as batches, built now that gRPC asks for the next message.

        At most one metrics message waits in the outbox: points reported while
        it waits join the next one. The batch size follows what the connection
        and this process's GIL can carry, and the queue of messages built but
        not sent can never grow (a trainer that flushes every millisecond while
        its threads are starved would otherwise queue a message per point).
        """
        with self._send_lock:
            self._metrics_queued = False
            if outbox is not self._outbox:
                return []
            held, self._held_ack = self._held_ack, None
            unacked = self._unacked
            start = max(0, self._sent_seq + 1 - unacked[0][0]) if unacked else 0
            points = list(itertools.islice(unacked, start, None))
            if not points:
                bare = []
                if unacked and self._ack_wanted and not self._ack_asked:  # all sent: ask for the receipt alone
                    self._ack_asked = True
                    bare.append(pb.ConnectRequest(metrics=pb.MetricBatch(ack_now=True, dropped_total=self.dropped)))
                if held is not None:
                    bare.append(pb.ConnectRequest(applied=_applied(held)))
                return bare
            self._sent_seq = points[-1][0]
            # At half the buffer, ask for the receipt rather than risk dropping points it would free.
            ack_now = self._ack_wanted or len(unacked) > self.state.buffer_size // 2
            self._ack_asked |= ack_now
        starts = range(0, len(points), MAX_POINTS_PER_MESSAGE)
        batches = [self._batch(points[i : i + MAX_POINTS_PER_MESSAGE], ack_now and i == starts[-1]) for i in starts]
        if held is not None:
            batches[-1].metrics.applied.CopyFrom(_applied(held))
        return batches

    def _on_welcome(self, welcome: pb.Welcome, outbox: queue.SimpleQueue[Any]) -> None:
        if self.state.resync(welcome.version):
            self.rehello()
        with self._send_lock:
            self._stored_up_to(welcome.last_seq)
            self._drop_in_doubt()  # the supervisor never stored them, and they are gone here
            self._sent_seq = welcome.last_seq  # resend everything after it
            self._ack_asked = False  # a request in the old stream is lost with it
            self._outbox = outbox
            self._metrics_queued = False  # the old outbox, and any token in it, is gone
        self.connected.set()
        self.state.poke()

    def _on_delta(self, message: pb.Delta) -> None:
        self.state.receive(
            Delta(
                version=message.version,
                changes=_wire.values_from_wire(message.changes),
                trigger=message.trigger,
                source=message.source,
                reason=message.reason,
                apply_at_step=message.apply_at_step if message.HasField("apply_at_step") else None,
                time=message.time,
                ack_with_metrics=message.ack_with_metrics,
            )
        )

    def _on_pacing(self, pacing: pb.Pacing) -> None:
        interval = pacing.min_flush_interval_seconds
        if interval != interval or interval < 0 or interval > 3600:
            log.warning("ignoring the supervisor's pacing of %r s between metric batches", interval)
            return
        if interval != self.paced_flush_interval:
            log.debug("the supervisor asks for metric batches at most every %.3g s", interval)
        self.paced_flush_interval = interval

    def _on_metrics_ack(self, seq: int) -> None:
        with self._send_lock:
            self._stored_up_to(seq)

    def _stored_up_to(self, seq: int) -> None:
        """The supervisor stored every point up to ``seq``: off the buffer, and out of doubt if trimmed in flight."""
        unacked = self._unacked
        while unacked and unacked[0][0] <= seq:
            unacked.popleft()
        # Told that everything is stored, unless points wait in the queue or in a drain (read in that order:
        # a drain empties the queue first; under the send lock none can reach unacked meanwhile).
        if not unacked and not self.state.queue and not self._draining:
            self._ack_wanted = self._ack_asked = False
        in_doubt = self._in_doubt
        while in_doubt and in_doubt[0] <= seq:
            in_doubt.popleft()

    def _drop_in_doubt(self) -> None:
        """Points trimmed in flight that no acknowledgement will settle now: count them as dropped."""
        self._dropped += len(self._in_doubt)
        self._in_doubt.clear()

    def _disconnect(self, outbox: queue.SimpleQueue[Any]) -> None:
        with self._send_lock:
            if self._outbox is outbox:
                self._outbox = None
        self.connected.clear()
        outbox.put(_CLOSE)

    # -- shutdown ------------------------------------------------------------------------

    def close(self, outcome: int, timeout: float) -> bool:
        """Flush, say goodbye, and stop; True if every point was stored in time."""
        deadline = time.monotonic() + timeout
        self._goodbye = pb.Goodbye(outcome=outcome)
        self.want_ack()
        self.request_flush()
        while (
            time.monotonic() < deadline
            and self.connected.is_set()
            and (not self.flushed() or self._goodbye is not None)
        ):
            time.sleep(0.01)
        flushed = self.flushed()
        self.stopping.set()
        self.state.poke()
        call = self._call
        if call is not None:
            call.cancel()
        self._pump.join(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        with self._send_lock:
            self._drop_in_doubt()  # never confirmed stored
        return flushed


def redirect_target(address: str, host: str, port: int) -> str | None:
    """The gRPC target for a Redirect: ``host:port``, or ``address``'s host with ``port`` if ``host`` is empty.

    None when that cannot be named (a Unix socket address, or a port out of range).
    """
    if not 0 < port < 65536:
        return None
    if host:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme, sep, rest = address.rpartition("///")  # dns:///host:port, ipv4:///...
    if address.startswith("unix") or ":" not in rest:
        return None
    return f"{scheme}{sep}{rest.rpartition(':')[0]}:{port}"


def _sdk_version() -> str:
    from trainer_sdk import __version__

    return __version__
