"""``connect()`` and the Session a training loop reads its live parameters from."""

from __future__ import annotations

import atexit
import keyword
import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from trainer_sdk._params import Param, ParamValue, as_param
from trainer_sdk._points import cpu_tensors_to_floats
from trainer_sdk._state import ChangeEvent, ConnectOptions, SessionState
from trainer_sdk._tls import tls_trust

log = logging.getLogger("trainer_sdk")

DEFAULT_BUFFER_SIZE = 65_536
"""Metric points a session holds until the supervisor has stored them; past it the oldest are dropped."""
DEFAULT_FLUSH_INTERVAL = 0.25
"""Seconds between metric batches in a steady stream, unless the supervisor paces for longer."""

_live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


class Session:
    """The live parameters of one training process, and its metric stream.

    Read parameters as attributes or items (``hp.lr``, ``hp["lr"]``): both are
    plain local lookups, no lock and no I/O, and return the last values the
    supervisor sent (the declared defaults until then). Parameters are changed
    only by the supervisor; assigning to them raises.
    """

    __slots__ = ("_state", "_transport", "__dict__", "__weakref__")

    if TYPE_CHECKING:  # parameters are dynamic attributes

        def __getattr__(self, name: str) -> Any: ...

    def __init__(self) -> None:  # pragma: no cover - built by connect()
        raise TypeError("use trainer_sdk.connect(...) to create a Session")

    # -- reading ------------------------------------------------------------------

    def __getitem__(self, name: str) -> ParamValue:  # replaced per session by the dict's own method
        return self.__dict__[name]

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.__dict__))

    def __len__(self) -> int:
        return len(self.__dict__)

    def as_dict(self) -> dict[str, ParamValue]:
        """A consistent snapshot of every parameter."""
        if self._transport is not None:
            self._transport.poll()
        return self._state.snapshot()[1]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"cannot assign {name!r}: live parameters are changed by the supervisor "
            f"(`supervisor set {self._state.run} {name}=...`), not by the training script"
        )

    __setitem__ = __setattr__

    def __repr__(self) -> str:
        status = "connected" if self.connected else "offline" if self._transport is None else "disconnected"
        state = self._state
        return f"<Session run={state.run!r} rank={state.rank} version={self.version} {status} {self.as_dict()!r}>"

    # -- reporting ------------------------------------------------------------------

    def report(self, step: int, /, **metrics: Any) -> None:  # replaced per session by a closure
        """Queue one metric point; never blocks and never raises for a bad value.

        Values may be Python numbers or one-element tensors: a CPU tensor is
        read at once (it waits for nothing), a CUDA tensor later with the rest
        of its batch, so the training thread does not wait for the device at
        every step. When the bounded buffer is full the oldest point is
        dropped and counted (``dropped``).
        """
        raise NotImplementedError

    # -- changes ---------------------------------------------------------------------

    def on_change(self, callback: Callable[[ChangeEvent], Any]) -> Callable[[ChangeEvent], Any]:
        """Call ``callback(event)`` after each applied change, on a background thread.

        Usable as a decorator. Exceptions in the callback are logged, not raised.
        """
        self._state.add_callback(callback)
        return callback

    def triggered(self, name: str) -> bool:
        """True once after the supervisor fired trigger ``name`` (e.g. "checkpoint", "stop")."""
        if self._transport is not None:
            self._transport.poll()
        fired = self._state.fired
        if name in fired:
            fired.discard(name)
            return True
        return False

    # -- status ----------------------------------------------------------------------

    @property
    def run(self) -> str:
        return self._state.run

    @property
    def rank(self) -> int:
        return self._state.rank

    @property
    def world_size(self) -> int:
        return self._state.world_size

    @property
    def version(self) -> int:
        """Version of the values now visible; 0 for the declared defaults."""
        if self._transport is not None:
            self._transport.poll()
        return self._state.version

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._transport.is_connected()

    @property
    def dropped(self) -> int:
        """Metric points dropped because the buffer was full."""
        if self._transport is None:
            return 0
        self._transport.poll()
        return self._transport.dropped

    @property
    def flush_interval(self) -> float:
        """Seconds between metric batches in a steady stream: ``connect``'s, or the supervisor's pacing if longer."""
        if self._transport is None:
            return 0.0
        return self._transport.flush_interval

    @property
    def specs(self) -> Mapping[str, Param]:
        return dict(self._state.params)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected (for scripts and tests; a training loop never needs it)."""
        if self._transport is None:
            return False
        return self._transport.wait_connected(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now; block until it is stored by the supervisor, or timeout.

        ``flush(0)`` sends without waiting: call it after points a policy should
        see at once (epoch-level validation metrics, say), since in a steady
        stream points otherwise wait up to ``flush_interval`` to go in one batch.
        """
        if self._transport is None:
            return False
        return self._transport.flush(timeout)

    def close(self, *, timeout: float = 5.0, failed: bool = False) -> None:
        """Send what is buffered (waiting up to ``timeout`` seconds), say goodbye, stop threads."""
        transport = self._transport
        if transport is None or transport.stopping.is_set():
            return
        from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

        outcome = pb.RUN_OUTCOME_FAILED if failed else pb.RUN_OUTCOME_COMPLETED
        if not transport.close(outcome, timeout):
            log.warning(
                "closing run %r with %d metric points not stored by the supervisor",
                self._state.run,
                transport.unstored(),
            )
        self._state.stop_callbacks()
        sampler = getattr(self._state, "sampler", None)
        if sampler is not None:
            sampler.stop()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(failed=exc_type is not None)


# -- construction ------------------------------------------------------------------------

_RESERVED = frozenset(dir(Session))


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"parameter name {name!r} must be a Python identifier (it is read as hp.{name})")
    if name.startswith("_") or name in _RESERVED:
        raise ValueError(
            f"parameter name {name!r} is reserved by the Session API "
            f"({'private' if name.startswith('_') else 'hp.' + name + ' is a method or property'}); choose another name"
        )


def _make_report(state: SessionState) -> Callable[..., None]:
    """The training thread's only call into the SDK, specialised per session.

    Closing over the queue's bound ``append`` avoids attribute lookups on the
    hot path: it costs one append, one comparison and two attribute stores.
    """
    q = state.queue
    append = q.append
    capacity = state.buffer_size
    now = time.time

    def report(step: int, /, **metrics: Any) -> None:
        for value in metrics.values():
            if type(value) is not float:
                cpu_tensors_to_floats(metrics)
                break
        if len(q) >= capacity:
            state.overflow += 1
        append((step, now(), metrics))
        state.last_step = step
        if step >= state.gate:
            state.apply_due(step)
        if state.pump_idle:
            state.poke()

    return report


def _make_process_report(state: SessionState, transport: Any) -> Callable[..., None]:
    """``report`` for ``transport="process"``: the thread transport's, plus this process's share of the I/O.

    On top of the append it reads the bell (one shared byte) and compares the
    time with when points are next due; only then does it call into the
    transport, which converts and ships points or applies what arrived.
    """
    q = state.queue
    append = q.append
    capacity = state.buffer_size
    now = time.time
    bell = transport.bell
    due = transport.due
    service = transport.service
    ship_at = min(capacity, transport.ship_at_points)

    def report(step: int, /, **metrics: Any) -> None:
        for value in metrics.values():
            if type(value) is not float:
                cpu_tensors_to_floats(metrics)
                break
        n = len(q)
        if n >= capacity:
            state.overflow += 1
        t = now()
        append((step, t, metrics))
        state.last_step = step
        if step >= state.gate:
            state.apply_due(step)
            service()
        elif bell[0] or t >= due[0] or n >= ship_at:
            service()

    return report


def _offline_report(step: int, /, **metrics: Any) -> None:
    return None


def _specialise(session: Session, values: dict[str, ParamValue], report: Callable[..., None]) -> None:
    # A class per session lets ``hp["lr"]`` call the values dict's C-level
    # __getitem__ directly (about 2x faster than a Python method) and makes
    # ``report`` a closure without attribute lookups.
    cls = type(
        "Session",
        (Session,),
        {
            "__slots__": (),
            "__getitem__": staticmethod(values.__getitem__),
            "report": staticmethod(report),
            "__module__": Session.__module__,
            "__doc__": Session.__doc__,
        },
    )
    object.__setattr__(session, "__class__", cls)


def connect(
    run: str,
    params: Mapping[str, Any],
    *,
    address: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    token: str | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    backoff_max: float = 5.0,
    telemetry: bool | float = True,
    transport: str = "thread",
    tls_ca: str | None = None,
) -> Session:
    """Declare live parameters for ``run`` and start talking to the supervisor in the background.

    Returns at once, whether or not the supervisor is reachable. ``address``
    defaults to ``$SUPERVISOR_ADDR``; with neither, the session runs offline on
    the defaults (one warning, no exception). ``rank`` and ``world_size``
    default to torchrun's ``$RANK`` and ``$WORLD_SIZE``. ``params`` maps names
    to a Float/Int/Bool/Choice declaration or a plain default (number, bool,
    string: no bounds). ``telemetry`` samples GPU (or host) usage every 5 s,
    or every ``telemetry`` seconds if a number is given. Metric points go to
    the supervisor at most every ``flush_interval`` seconds in a steady stream
    (at once after a quiet spell), or less often when the supervisor asks for
    it (it paces its trainers as their number grows; ``hp.flush_interval``
    says what is in force); acknowledgements of changes go at once.

    ``transport`` says where the connection lives. ``"thread"`` (the default):
    background threads in this process, which apply a change the moment it
    arrives. ``"process"``: a sidecar process started with this interpreter
    holds the connection and samples telemetry; the training process runs no
    SDK thread (``on_change`` callbacks aside), and a change is applied (and
    acknowledged) at the next ``report`` or status read (``hp.version``,
    ``hp.connected``, ``hp.as_dict()``, ``hp.flush``). The training thread
    converts and ships its points itself every ``flush_interval`` (0-d CUDA
    tensors: one device sync per shipment). It costs the training loop fewer
    GIL waits (see BENCHMARKS.md) but needs a loop that reports.

    ``tls_ca`` (default ``$SUPERVISOR_TLS_CA``) connects over TLS to a
    supervisor started with ``--tls-cert``: a PEM file of the certificate
    authority that signed its certificate (or the self-signed certificate
    itself), or ``"system"`` for the system's roots. ``token`` (default
    ``$SUPERVISOR_TOKEN``) authenticates; without TLS it travels in the clear.
    """
    if transport not in ("thread", "process"):
        raise ValueError(f'transport must be "thread" or "process", got {transport!r}')
    if not isinstance(run, str) or not run.strip() or len(run) > 200 or not run.isprintable():
        raise ValueError(f"run must be a non-empty printable name of at most 200 characters, got {run!r}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of name to declaration, got {type(params).__name__}")
    declared: dict[str, Param] = {}
    for name, declaration in params.items():
        _check_name(name)
        declared[name] = as_param(name, declaration)
    rank = _env_int("RANK", 0) if rank is None else int(rank)
    world_size = _env_int("WORLD_SIZE", 1) if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be positive, got {buffer_size}")

    values: dict[str, ParamValue] = {name: param.check(param.default, name=name) for name, param in declared.items()}
    state = SessionState(
        run=run, rank=rank, world_size=world_size, params=declared, values=values, buffer_size=buffer_size
    )
    session = object.__new__(Session)
    object.__setattr__(session, "_state", state)
    object.__setattr__(session, "__dict__", values)
    address = address or os.environ.get("SUPERVISOR_ADDR") or None
    if address is not None and address.lower().startswith(("http://", "https://")):
        raise ValueError(
            f"supervisor address {address!r} is the HTTP gateway for operators' commands; a trainer needs the "
            "supervisor's gRPC address, HOST:PORT (the `listening on` line of `supervisor serve`)"
        )
    if address is None:
        log.warning("no supervisor address (address= or $SUPERVISOR_ADDR): run %r uses its defaults offline", run)
        object.__setattr__(session, "_transport", None)
        _specialise(session, values, _offline_report)
        return session

    options = ConnectOptions(
        address=address,
        session_id=uuid.uuid4().hex,
        token=token or os.environ.get("SUPERVISOR_TOKEN") or None,
        flush_interval=flush_interval,
        backoff_max=backoff_max,
        tls=tls_trust(tls_ca),
    )
    interval = (5.0 if telemetry is True else float(telemetry)) if telemetry else None
    if transport == "process":
        from trainer_sdk._process_transport import ProcessTransport

        connection: Any = ProcessTransport(state, options, telemetry=interval)  # sampled in the sidecar
        interval = None
        report = _make_process_report(state, connection)
    else:
        from trainer_sdk._transport import Transport

        connection = Transport(state, options)
        report = _make_report(state)
    object.__setattr__(session, "_transport", connection)
    _specialise(session, values, report)
    _live_sessions.add(session)
    connection.start()
    if interval:
        _start_telemetry(session, interval)
    return session


def _start_telemetry(session: Session, interval: float) -> None:
    try:
        from trainer_sdk.telemetry import TelemetrySampler
    except ImportError:  # pragma: no cover - telemetry module is part of the SDK
        return
    state = session._state
    queue = state.queue
    append = queue.append

    def emit(values: dict[str, float]) -> None:
        if len(queue) >= state.buffer_size:
            state.overflow += 1
        # Not through report(): the sampler's thread must neither apply step-gated
        # deltas nor move last_step, which belong to the training thread.
        append((max(state.last_step, 0), time.time(), values))

    sampler = TelemetrySampler(emit, interval=interval)
    state.sampler = sampler
    sampler.start()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {raw!r}") from None


def _after_fork_in_child() -> None:
    # A forked child (a DataLoader worker, say) has copies of the sessions but
    # not their threads: make them inert there instead of growing a queue nobody drains.
    for session in list(_live_sessions):
        _specialise(session, session.__dict__, _offline_report)
        forget = getattr(session._transport, "forget_in_child", None)
        if forget is not None:
            forget()
        object.__setattr__(session, "_transport", None)
    _live_sessions.clear()


def _close_all_at_exit() -> None:
    for session in list(_live_sessions):
        try:
            session.close(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
