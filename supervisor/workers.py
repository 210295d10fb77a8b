"""Worker threads for policy calls, with results handed back to the event loop in bulk.

``loop.run_in_executor`` costs the event loop a concurrent Future, a Condition,
a wrapping asyncio Future, chained callbacks and one wake-up of the loop per
call. The policy host makes one call per run and stored batch, about a thousand
a second at scale, and the event loop is the supervisor's scarcest resource.
Here a call is one queue put and one asyncio Future; finished calls are
collected and delivered together, with one wake-up of the loop for all the
calls that finished since the last one.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("supervisor.workers")

_STOP = object()


class Workers:
    """Up to ``max_workers`` threads, started as calls need them (a call stuck in a policy keeps its thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_workers: int = 32, name: str = "policy") -> None:
        self._loop = loop
        self._max_workers = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._finished: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._delivery_pending = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker thread; call from the event loop thread."""
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            start = self._idle == 0 and len(self._threads) < self._max_workers
            if start:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
            else:
                self._idle -= 1  # claimed: the next idle thread takes this call
        if start:
            thread.start()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Stop idle threads; a thread inside a call stops after it (they are daemon threads)."""
        for _ in self._threads:
            self._jobs.put(_STOP)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            future, fn, args = job
            try:
                result, ok = fn(*args), True
            except BaseException as exc:  # delivered to the awaiting coroutine
                result, ok = exc, False
            with self._lock:
                self._idle += 1
                self._finished.append((future, ok, result))
                wake = not self._delivery_pending
                self._delivery_pending = True
            if wake:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._delivery_pending = False
        for future, ok, result in finished:
            if future.done():  # cancelled, or given up on by a watchdog
                continue
            try:
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(result)
            except Exception as exc:  # e.g. StopIteration cannot be set: the caller still hears of it
                future.set_exception(RuntimeError(f"policy call failed: {type(result).__name__}: {result}"))
                log.debug("delivering %r failed: %s", result, exc)
