"""The database writer in a process of its own (``Database(path, writer="process")``).

Why: each SQLite statement releases the GIL and must take it back, and under
load the supervisor's event loop holds it most of the time, so a commit made on
one of the supervisor's threads waits its turn once per statement: 19 to 35 ms
of an operator's change at a thousand streams (BENCHMARKS.md, benchmark 5). In
a process of its own the writer's statements wait for nobody. The supervisor
pays a pickle per write and a pipe write per event-loop turn that wrote, and
one thread handoff per commit.

The child speaks on its stdin and stdout. In: a job is a header (body length,
job id) and a pickled ``(first, Store method name, args, kwargs)``; a header
with no body asks it to stop once everything sent is stored. Out: frames of a
4-byte length and a pickle: an empty list once the store is open (or
``("failed", message)``), then a list of ``(job id, result or exception)`` per
committed group. When its input ends without that stop (the supervisor was
killed), it exits at once: a supervisor started next on the file must not find
writes landing behind it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import IO, Any

from supervisor.storage import GroupWriter, Settle, Store, StoreError, WriterUnavailable

log = logging.getLogger(__name__)

_JOB = struct.Struct("<IQ")  # body length, job id
_LENGTH = struct.Struct("<I")
_PIPE_BYTES = 1 << 20
"""Room in each pipe, so a metrics round of a thousand streams is one write that does not wait."""

# -P: the current folder must not put another ``supervisor`` package ahead of this one. The package's
# folder goes first only when it is not on the path already (a source checkout, not site-packages).
_CHILD = (
    "import sys; root = sys.argv.pop(1); root in sys.path or sys.path.insert(0, root); "
    "from supervisor.write_process import main; sys.exit(main(sys.argv[1:]))"
)


class WriterProcess:
    """The supervisor's side: sends writes to the child, hands each result to ``settle`` with its token.

    ``put`` runs on an event loop's thread. A pipe write releases the GIL, and
    taking it back can mean waiting for another thread's turn, so the frames of
    one loop turn go together in one write at its end; a ``first`` write (an
    operator waits on it) goes at once, after them.
    """

    def __init__(self, path: str, settle: Settle) -> None:
        self._settle = settle
        self._pending: dict[int, Any] = {}  # job id -> token, until its result comes back
        self._ids = count()
        self._send_lock = threading.Lock()
        self._outbox: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._closing = False
        self._failure: str | None = None
        package_root = str(Path(__file__).resolve().parents[1])
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _CHILD, package_root, path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C or hangup meant for the supervisor must not stop its writer first
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to_child: IO[bytes] = self._proc.stdin
        self._from_child: IO[bytes] = self._proc.stdout
        _widen(self._to_child)
        hello = _read_frame(self._from_child)
        if hello is None or hello and hello[0] == "failed":
            self._to_child.close()
            self._from_child.close()
            code = self._proc.wait()
            detail = hello[1] if hello is not None else f"it exited with code {code} before opening it"
            raise StoreError(f"the database writer process cannot use {path}: {detail}")
        self._receiver = threading.Thread(target=self._receive, name="db-writer-results", daemon=True)
        self._receiver.start()

    def put(self, job: tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]], first: bool) -> None:
        token, fn, args, kwargs = job
        name = getattr(fn, "__name__", "")
        if getattr(Store, name, None) is not fn:
            raise TypeError(f"the database writer process runs Store methods only, not {fn!r}")
        if self._failure is not None:
            raise WriterUnavailable(f"not stored: {self._failure}")
        body = pickle.dumps((first, name, args, kwargs), pickle.HIGHEST_PROTOCOL)
        job_id = next(self._ids)
        self._pending[job_id] = token
        self._outbox.append((job_id, _JOB.pack(len(body), job_id) + body))
        if first:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        sent, self._outbox = self._outbox, []
        if sent:
            self._send(b"".join(frame for _, frame in sent), [job_id for job_id, _ in sent])

    def _send(self, data: bytes, job_ids: list[int]) -> None:
        try:
            with self._send_lock:
                self._to_child.write(data)
                self._to_child.flush()
        except (OSError, ValueError) as exc:  # the child is gone: these writes never reached it
            lost = [(token, WriterUnavailable(f"not stored: the database writer process is gone ({exc})"))
                    for token in (self._pending.pop(job_id, None) for job_id in job_ids) if token is not None]
            if lost:
                self._settle(lost)

    def _receive(self) -> None:
        try:
            while (done := _read_frame(self._from_child)) is not None:
                self._settle([(self._pending.pop(job_id), result) for job_id, result in done])
        except BaseException:  # a frame it cannot read: nothing after it can be trusted
            log.exception("the database writer process sent what the supervisor cannot read; stopping it")
            self._proc.kill()
        finally:
            code = self._proc.wait()
            if not self._closing or code != 0:
                self._failure = f"the database writer process exited with code {code}"
                log.error("%s: no write can be stored until the supervisor restarts", self._failure)
            lost = [(self._pending.pop(job_id), WriterUnavailable(
                f"not known to be stored: {self._failure or 'the database writer process exited'}"))
                for job_id in list(self._pending)]
            if lost:
                self._settle(lost)

    def close(self) -> None:
        """Send what is left and the stop, wait for the child to store it all, and for its results."""
        self._closing = True
        sent, self._outbox = self._outbox, []
        self._send(b"".join(frame for _, frame in sent) + _JOB.pack(0, 0), [job_id for job_id, _ in sent])
        with self._send_lock:
            try:
                self._to_child.close()
            except OSError:
                pass
        self._receiver.join()
        self._from_child.close()


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = _read_exactly(stream, _LENGTH.size)
    if header is None:
        return None
    body = _read_exactly(stream, _LENGTH.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _results_frame(done: list[tuple[Any, Any]]) -> bytes:
    """A group's results; one that cannot be pickled (an odd exception) goes back as its description."""
    try:
        return _frame(done)
    except Exception:  # whatever the pickle refused
        kept = []
        for job_id, result in done:
            try:
                pickle.loads(pickle.dumps(result))
            except Exception:
                result = RuntimeError(f"{type(result).__name__}: {result}")
            kept.append((job_id, result))
        return _frame(kept)


def _widen(pipe: IO[bytes]) -> None:
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or above the system's limit: the default will do
        pass


def main(argv: list[str]) -> int:
    """The child: open the store, then run every write it is sent until it is told to stop."""
    # Only the supervisor stops it (a stop, or its input ending): the supervisor, shutting down,
    # still sends its last writes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print goes to stderr, never into the frames
    _widen(out)
    try:
        store = Store(argv[0])
    except Exception as exc:  # whatever it is, the supervisor reports it
        out.write(_frame(("failed", str(exc))))
        out.flush()
        return 1
    out_lock = threading.Lock()

    def send(done: list[tuple[Any, Any]]) -> None:
        frame = _results_frame(done)
        with out_lock:
            out.write(frame)
            out.flush()

    writer = GroupWriter(store, _exit_on_failure(send))
    send([])  # any frame but "failed" says ready: the supervisor reads the first one as its hello
    thread = threading.Thread(target=_exit_on_failure(writer.run), name="db-writer")
    thread.start()
    inp = sys.stdin.buffer
    while (header := _read_exactly(inp, _JOB.size)) is not None:
        size, job_id = _JOB.unpack(header)
        if size == 0:
            writer.stop()
            thread.join()
            store.close()
            out.close()
            return 0
        body = _read_exactly(inp, size)
        if body is None:
            break
        try:
            first, name, args, kwargs = pickle.loads(body)
            fn = getattr(Store, name)
        except Exception as exc:  # this write fails alone, with what was wrong
            send([(job_id, RuntimeError(f"the database writer process cannot read this write: {exc!r}"))])
            continue
        writer.put((job_id, fn, args, kwargs), first)
    os._exit(0)  # the supervisor is gone: store nothing more (a transaction in progress rolls back)


def _exit_on_failure(fn: Callable[..., None]) -> Callable[..., None]:
    """The writer's threads must not die alone: the supervisor would wait for results forever."""

    def run(*args: Any) -> None:
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            os._exit(1)

    return run
