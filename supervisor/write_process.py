"""The database writer in a process of its own (``Database(path, writer="process")``).

Why: each SQLite statement releases the GIL and must take it back, and under
load the supervisor's event loop holds it most of the time, so a commit made on
one of the supervisor's threads waits its turn once per statement: 19 to 35 ms
of an operator's change at a thousand streams (BENCHMARKS.md, benchmark 5). In
a process of its own the writer's statements wait for nobody. The supervisor
pays a pickle per write, a pipe write per event-loop turn that wrote, and a
pipe read per commit, all on its event loop: no thread of its own takes the GIL.

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
import select
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
    """The supervisor's side: sends writes to the child, and settles each one's future when its result comes.

    Both directions avoid a thread's handoff. ``put`` runs on the event loop:
    a pipe write releases the GIL, and taking it back can mean waiting for
    another thread's turn, so the frames of one loop turn go together in one
    write at its end (a ``first`` write, which an operator waits on, at once).
    The results are read by the event loop itself, when the pipe is readable.
    """

    def __init__(self, path: str, settle: Settle) -> None:
        self._settle = settle
        self._pending: dict[int, Any] = {}  # job id -> token, until its result comes back
        self._ids = count()
        self._send_lock = threading.Lock()
        self._outbox: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the one reading the results
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
        _widen(self._to_child.fileno())
        self._results = _Frames(self._proc.stdout.fileno(), _LENGTH)
        frames: list[Any] = []
        while not frames and not self._results.ended:
            frames = self._results.read(block=True)
        hello = pickle.loads(frames[0][1]) if frames else ("failed", "it exited before opening it")
        if hello != []:  # any frame but ("failed", why) says ready
            detail = hello[1]
            self._to_child.close()
            self._proc.stdout.close()
            self._proc.wait()
            raise StoreError(f"the database writer process cannot use {path}: {detail}")

    def put(self, job: tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]], first: bool) -> None:
        token, fn, args, kwargs = job
        name = getattr(fn, "__name__", "")
        if getattr(Store, name, None) is not fn:
            raise TypeError(f"the database writer process runs Store methods only, not {fn!r}")
        if self._failure is not None:
            raise WriterUnavailable(f"not stored: {self._failure}")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._read_on(loop)
        body = pickle.dumps((first, name, args, kwargs), pickle.HIGHEST_PROTOCOL)
        job_id = next(self._ids)
        self._pending[job_id] = token
        self._outbox.append((job_id, _JOB.pack(len(body), job_id) + body))
        if first:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _read_on(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("a Database with a writer process serves one event loop at a time")
        loop.add_reader(self._results.fd, self._on_results)
        self._loop = loop

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
            self._fail(job_ids, WriterUnavailable(f"not stored: the database writer process is gone ({exc})"))

    def _on_results(self) -> None:
        """On the event loop, when the child has written: settle what came; notice when it has gone."""
        try:
            self._take_results(self._results.read(block=False))
        except BaseException:  # a frame it cannot read: nothing after it can be trusted
            log.exception("the database writer process sent what the supervisor cannot read; stopping it")
            self._proc.kill()
            self._results.ended = True
        if self._results.ended and self._loop is not None:
            self._loop.remove_reader(self._results.fd)
            self._loop = None
            self._exited()

    def _take_results(self, frames: list[tuple[tuple[int, ...], bytes]]) -> None:
        for _, body in frames:
            self._settle([(self._pending.pop(job_id), result) for job_id, result in pickle.loads(body)])

    def _exited(self) -> None:
        """The child's output ended: wait for it, and fail every write it did not answer."""
        try:
            code = self._proc.wait(10)
        except subprocess.TimeoutExpired:  # it closed its output and lives on: it cannot write for us any more
            self._proc.kill()
            code = self._proc.wait()
        if not self._closing or code != 0:
            self._failure = f"the database writer process exited with code {code}"
            log.error("%s: no write can be stored until the supervisor restarts", self._failure)
        self._fail(list(self._pending), WriterUnavailable(
            f"not known to be stored: {self._failure or 'the database writer process exited'}"))

    def _fail(self, job_ids: list[int], error: Exception) -> None:
        lost = [(token, error) for token in (self._pending.pop(job_id, None) for job_id in job_ids)
                if token is not None]
        if lost:
            self._settle(lost)

    def close(self) -> None:
        """Send what is left and the stop, and wait until the child has stored it all and answered."""
        self._closing = True
        self._flush()
        self._send(_JOB.pack(0, 0), [])  # the stop
        with self._send_lock:
            try:
                self._to_child.close()
            except OSError:
                pass
        self._stop_reading_on_the_loop()
        while not self._results.ended:
            self._take_results(self._results.read(block=True))
        self._exited()
        assert self._proc.stdout is not None
        self._proc.stdout.close()

    def _stop_reading_on_the_loop(self) -> None:
        """From here on ``close`` reads the results; the loop's reader must be gone first, from the loop's thread."""
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed() or self._results.ended:
            return
        if not loop.is_running() or asyncio._get_running_loop() is loop:
            loop.remove_reader(self._results.fd)
            return
        removed = threading.Event()

        def remove() -> None:
            loop.remove_reader(self._results.fd)
            removed.set()

        loop.call_soon_threadsafe(remove)
        removed.wait()


class _Frames:
    """Whole frames from a pipe read without blocking: each as (its header's fields, its body)."""

    def __init__(self, fd: int, header: struct.Struct) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.header = header
        self.buffer = bytearray()
        self.ended = False

    def read(self, block: bool) -> list[tuple[tuple[int, ...], bytes]]:
        """The frames complete so far; with ``block``, wait until something (or the end) comes first."""
        if block and not self.ended:
            select.select([self.fd], [], [])
        while not self.ended:
            try:
                chunk = os.read(self.fd, _PIPE_BYTES)
            except BlockingIOError:
                break
            if not chunk:
                self.ended = True
            self.buffer += chunk
        frames, start, size = [], 0, self.header.size
        while len(self.buffer) - start >= size:
            fields = self.header.unpack_from(self.buffer, start)
            end = start + size + fields[0]
            if end > len(self.buffer):
                break
            frames.append((fields, bytes(self.buffer[start + size : end])))
            start = end
        del self.buffer[:start]
        return frames


class _PipeWriter(GroupWriter):
    """The child's writer: one thread that reads its jobs from the pipe and commits them.

    Between a group's jobs it reads what has come, so a ``first`` write that
    arrives mid-group cuts the group as it does in the supervisor's thread.
    """

    def __init__(self, store: Store, settle: Settle, jobs: _Frames) -> None:
        super().__init__(store, settle)
        self._jobs = jobs
        self._told_to_stop = False

    def _collect(self, block: bool) -> bool:
        for (size, job_id), body in self._jobs.read(block):
            if size == 0:
                self._told_to_stop = True
                continue
            try:
                first, name, args, kwargs = pickle.loads(body)
                job = (job_id, getattr(Store, name), args, kwargs)
            except Exception as exc:  # this write fails alone, with what was wrong
                self._settle([(job_id, RuntimeError(f"the database writer process cannot read this write: {exc!r}"))])
                continue
            (self._first if first else self._waiting).append(job)
        if self._jobs.ended and not self._told_to_stop:
            os._exit(0)  # the supervisor is gone: store nothing more (a transaction in progress rolls back)
        return self._told_to_stop

    def _cut(self) -> bool:
        self._collect(block=False)
        return bool(self._first)


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


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


def _widen(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
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
    _widen(out.fileno())
    try:
        store = Store(argv[0])
    except Exception as exc:  # whatever it is, the supervisor reports it
        out.write(_frame(("failed", str(exc))))
        out.flush()
        return 1

    def send(done: list[tuple[Any, Any]]) -> None:
        out.write(_results_frame(done))
        out.flush()

    send([])  # any frame but "failed" says ready: the supervisor reads the first one as its hello
    try:
        _PipeWriter(store, send, _Frames(sys.stdin.fileno(), _JOB)).run()
    except BaseException:  # exit, so the supervisor fails what it waits for instead of waiting forever
        traceback.print_exc()
        os._exit(1)
    store.close()
    out.close()
    return 0
