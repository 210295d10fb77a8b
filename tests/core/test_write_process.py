"""The database writer in a process of its own: the same writes, results and errors as the thread, from a child."""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from supervisor.batches import MetricColumns
from supervisor.storage import AckRecord, Database, Store, StoreError
from tests.core.test_storage import _change, _fail


async def _database_with_a_run(path: Path) -> tuple[Database, int]:
    db = Database(path, writer="process")
    return db, await db.write(Store.create_run, "r", world_size=1, specs={}, values={}, version=0, now=0.0)


async def _noticed(db: Database) -> None:
    """Wait until the event loop has seen the writer process's output end."""
    for _ in range(500):
        if db._writer._failure is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer process's end went unnoticed")


def test_writes_run_in_the_child_and_return_their_results_and_errors(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "w.db")
        writer_pid = db._writer._proc.pid
        assert writer_pid != os.getpid()
        ids = await asyncio.gather(*(db.write(Store.record_change, run_id, **_change(v, v / 100))
                                     for v in range(1, 101)))
        assert ids == sorted(ids) and len(set(ids)) == 100
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):  # its type crosses back
            await db.write(Store.record_change, run_id, **_change(7, 0.5))
        key, last_seq, known = await db.write(Store.open_session, run_id, 0, "s")
        points = MetricColumns([1, 2], [10, 20], [1.0, 2.0], [1, 1], ["loss"], [0, 0], [0.5, 0.25])
        [newly] = await db.write(Store.insert_metrics, [(run_id, 0, key, 0, points)], [],
                                 [AckRecord(run_id, 0, 0, 3, 20, 2.0)])
        assert (last_seq, known) == (0, False) and [v for v, _ in newly] == [1, 2, 3]
        stored, _ = await db.read(Store.metrics, run_id)
        assert [(step, value) for _, _, step, _, _, value in stored] == [(10, 0.5), (20, 0.25)]
        assert await db.write_first(Store.record_change, run_id, **_change(101, 1.0))
        assert (await db.read(Store.load_runs))[0].version == 101
        db.close()
        assert db._writer._proc.returncode == 0

    asyncio.run(main())


def test_only_store_methods_cross_to_the_child(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "m.db")
        with pytest.raises(TypeError, match="Store methods only"):
            await db.write(_fail, run_id)
        with pytest.raises(Exception, match="pickle"):
            await db.write(Store.set_outcome, run_id, lambda: 1)
        assert await db.write(Store.set_outcome, run_id, 1) is None  # the writer goes on
        db.close()

    asyncio.run(main())


class _Unreadable:
    """Pickles in the supervisor, fails to unpickle in the writer process."""

    def __reduce__(self) -> tuple[Any, ...]:
        return operator.truediv, (1, 0)


def test_a_write_the_child_cannot_read_fails_alone_and_the_rest_are_stored(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "bad.db")
        before, bad, after = (asyncio.ensure_future(db.write(Store.record_change, run_id, **_change(v, lr)))
                              for v, lr in ((1, 0.1), (2, _Unreadable()), (3, 0.3)))
        with pytest.raises(RuntimeError, match="cannot read this write: ZeroDivisionError"):
            await bad
        assert await before and await after
        assert [row.version for row in await db.read(Store.history, run_id)] == [1, 3]
        db.close()

    asyncio.run(main())


def test_closing_stores_every_write_sent_before(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "close.db")
        sent = [asyncio.ensure_future(db.write(Store.record_change, run_id, **_change(v, v / 100)))
                for v in range(1, 201)]
        await asyncio.sleep(0)  # each write is sent to the child, none is committed yet
        await asyncio.get_running_loop().run_in_executor(None, db.close)
        assert len(await asyncio.wait_for(asyncio.gather(*sent), 10)) == 200
        assert [row.version for row in Store(tmp_path / "close.db").history(run_id)] == list(range(1, 201))

    asyncio.run(main())


def test_the_child_ignores_the_signals_meant_for_the_supervisor(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: the supervisor shuts down and still sends its last writes."""

    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "sig.db")
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(db._writer._proc.pid, sig)
        await asyncio.sleep(0.2)
        assert await db.write(Store.record_change, run_id, **_change(1, 0.1))
        db.close()

    asyncio.run(main())


def test_a_killed_writer_fails_every_write_with_its_exit_code_and_reads_go_on(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "kill.db")
        await db.write(Store.record_change, run_id, **_change(1, 0.1))
        os.kill(db._writer._proc.pid, signal.SIGSTOP)
        in_flight = asyncio.ensure_future(db.write(Store.record_change, run_id, **_change(2, 0.2)))
        await asyncio.sleep(0.05)
        db._writer._proc.kill()
        with pytest.raises(RuntimeError, match=r"not known to be stored: .* exited with code -9"):
            await asyncio.wait_for(in_flight, 5)
        with pytest.raises(RuntimeError, match=r"not stored: the database writer process exited with code -9"):
            await db.write(Store.record_change, run_id, **_change(2, 0.2))
        assert [row.version for row in await db.read(Store.history, run_id)] == [1]
        db.close()

    asyncio.run(main())


def test_the_child_of_a_killed_supervisor_exits_without_waiting(tmp_path: Path) -> None:
    """Its input ends without the stop: a supervisor started next on the file must not find it still writing."""
    from supervisor.write_process import WriterProcess

    writer = WriterProcess(str(tmp_path / "orphan.db"), lambda done: None)
    writer._to_child.write(b"\x10\x00")  # half a frame, then the end of its input: what the supervisor's death leaves
    writer._to_child.close()
    assert writer._proc.wait(10) == 0


def test_an_operators_change_when_the_writer_is_gone_is_unavailable_by_name(tmp_path: Path) -> None:
    import grpc

    from supervisor.core import Supervisor
    from supervisor.http_gateway import _Abort, _Context
    from supervisor.services import OperatorService
    from tests.core.test_bad_input import hello
    from trainer_sdk import _wire
    from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

    async def main() -> None:
        db = Database(tmp_path / "gone.db", writer="process")
        core = Supervisor(db)
        await core.start()
        stream, run, _ = await core.open_session(hello(run="r").hello, "peer")
        db._writer._proc.kill()
        await _noticed(db)
        request = pb.SetParamsRequest(run="r", changes=_wire.values_to_wire({"lr": 0.2}))
        with pytest.raises(_Abort) as info:
            await OperatorService(core).SetParams(request, _Context("test"))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "exited with code -9; the supervisor can store nothing more: restart it" in info.value.details
        assert (run.version, run.values["lr"]) == (0, 0.1)
        core.close_session(stream)
        await core.stop()
        db.close()

    asyncio.run(main())


def test_a_store_the_child_cannot_open_is_a_store_error(tmp_path: Path) -> None:
    from supervisor import write_process

    with pytest.raises(StoreError, match="writer process cannot use"):
        write_process.WriterProcess(str(tmp_path / "no-such-folder" / "x.db"), lambda done: None)
