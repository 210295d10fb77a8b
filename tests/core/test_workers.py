"""The policy host's worker threads: results and errors come back to the right awaiting coroutine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from supervisor.workers import Workers


def test_results_errors_and_threads() -> None:
    async def main() -> None:
        workers = Workers(asyncio.get_running_loop(), max_workers=4, name="test")
        names: set[str] = set()

        def square(x: int) -> int:
            names.add(threading.current_thread().name)
            time.sleep(0.001)
            return x * x

        results = await asyncio.gather(*(workers.submit(square, i) for i in range(200)))
        assert results == [i * i for i in range(200)]
        assert 1 <= len(names) <= 4 and all(n.startswith("test_") for n in names)

        def fail() -> None:
            raise ValueError("bad policy")

        with pytest.raises(ValueError, match="bad policy"):
            await workers.submit(fail)
        assert await workers.submit(square, 7) == 49  # the thread that raised goes on
        workers.shutdown()

    asyncio.run(main())


def test_a_stuck_call_keeps_only_its_thread_and_a_future_given_up_on_is_left_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        workers = Workers(loop, max_workers=2, name="test")
        release = threading.Event()
        stuck_thread: list[str] = []

        def stuck_call() -> str:
            stuck_thread.append(threading.current_thread().name)
            release.wait(10)
            return "late"

        stuck = workers.submit(stuck_call)
        free = await asyncio.wait_for(workers.submit(lambda: threading.current_thread().name), 5)
        assert stuck_thread and free != stuck_thread[0]  # the other thread took it
        stuck.set_result("given up")  # as the policy host's timekeeper does
        release.set()
        assert await asyncio.wait_for(workers.submit(lambda: "after"), 5) == "after"
        await asyncio.sleep(0.05)  # the late result has been delivered (and skipped) by now
        assert stuck.result() == "given up"
        assert errors == []  # delivering to a future already done raised nothing
        workers.shutdown()

    asyncio.run(main())
