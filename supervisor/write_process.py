"""The database writer in a process of its own (``Database(path, writer="process")``).

Why: each SQLite statement releases the GIL and must take it back, and under
load the supervisor's event loop holds it most of the time, so a commit made on
one of the supervisor's threads waits its turn once per statement: 19 to 35 ms
of an operator's change at a thousand streams (BENCHMARKS.md, benchmark 5). In
a process of its own the writer's statements wait for nobody. The supervisor
pays a pickle and a pipe write per write, and one thread handoff per commit.

The child speaks on its stdin and stdout in frames: a 4-byte little-endian
length, then a pickle. In: ``(job id, first, Store method name, args, kwargs)``,
or end of input to stop once everything sent is stored. Out: an empty list
once the store is open (or ``("failed", message)``), then a list of
``(job id, result or exception)`` per committed group.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import IO, Any

from supervisor.storage import GroupWriter, Settle, Store, StoreError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
_PIPE_BYTES = 1 << 20
"""Room in each pipe, so a metrics round of a thousand streams is one write that does not wait."""


class WriterProcess:
    """The supervisor's side: sends writes to the child, hands each result to ``settle`` with its token."""

    def __init__(self, path: str, settle: Settle) -> None:
        self._settle = settle
        self._pending: dict[int, Any] = {}  # job id -> token, until its result comes back
        self._ids = count()
        self._send_lock = threading.Lock()
        self._closing = False
        self._failure: str | None = None
        package_root = str(Path(__file__).resolve().parents[1])  # the child imports this same code
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.write_process", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to_child: IO[bytes] = self._proc.stdin
        self._from_child: IO[bytes] = self._proc.stdout
        _widen(self._to_child)
        hello = _read_frame(self._from_child)
        if hello is None or hello and hello[0] == "failed":
            self._to_child.close()
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
            raise RuntimeError(f"not stored: {self._failure}")
        job_id = next(self._ids)
        frame = _frame((job_id, first, name, args, kwargs))
        self._pending[job_id] = token
        try:
            with self._send_lock:
                self._to_child.write(frame)
                self._to_child.flush()
        except (OSError, ValueError) as exc:  # the child is gone; _receive fails what it had
            self._pending.pop(job_id, None)
            raise RuntimeError(f"not stored: the database writer process is gone ({exc})") from exc

    def _receive(self) -> None:
        try:
            while (done := _read_frame(self._from_child)) is not None:
                self._settle([(self._pending.pop(job_id), result) for job_id, result in done])
        finally:
            code = self._proc.wait()
            if not self._closing or code != 0:
                self._failure = f"the database writer process exited with code {code}"
                log.error("%s: no write can be stored until the supervisor restarts", self._failure)
            lost = [(self._pending.pop(job_id), RuntimeError(
                f"not known to be stored: {self._failure or 'the database writer process exited'}"))
                for job_id in list(self._pending)]
            if lost:
                self._settle(lost)

    def close(self) -> None:
        """Let the child store everything sent, then wait for it and its results."""
        self._closing = True
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


def _read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def _results_frame(done: list[tuple[Any, Any]]) -> bytes:
    """A group's results; one that cannot be pickled (an odd exception) goes back as its description."""
    try:
        return _frame(done)
    except Exception:  # whatever the pickle refused
        kept = []
        for job_id, result in done:
            try:
                pickle.dumps(result)
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
    """The child: open the store, then run every write it is sent until its input ends."""
    # Only the end of its input stops it: a Ctrl-C or SIGTERM meant for the supervisor reaches the
    # whole process group, and the supervisor, shutting down, still sends its last writes.
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

    def send(done: list[tuple[Any, Any]]) -> None:
        out.write(_results_frame(done))
        out.flush()

    writer = GroupWriter(store, send)
    send([])  # any frame but "failed" says ready: the supervisor reads the first one as its hello
    thread = threading.Thread(target=writer.run, name="db-writer")
    thread.start()
    inp = sys.stdin.buffer
    while (job := _read_frame(inp)) is not None:
        job_id, first, name, args, kwargs = job
        writer.put((job_id, getattr(Store, name), args, kwargs), first)
    writer.stop()
    thread.join()
    store.close()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
