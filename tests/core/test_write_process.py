"""The database writer in a process of its own: the same writes, results and errors as the thread, from a child."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from supervisor.batches import MetricColumns
from supervisor.storage import AckRecord, Database, Store, StoreError
from tests.core.test_storage import _change, _fail


async def _database_with_a_run(path: Path) -> tuple[Database, int]:
    db = Database(path, writer="process")
    return db, await db.write(Store.create_run, "r", world_size=1, specs={}, values={}, version=0, now=0.0)


def test_writes_run_in_the_child_and_return_their_results_and_errors(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "w.db")
        writer_pid = db._writer._proc.pid
        assert writer_pid != os.getpid()
        ids = await asyncio.gather(*(db.write(Store.record_change, run_id, **_change(v, v / 100))
                                     for v in range(1, 101)))
        assert ids == sorted(ids) and len(set(ids)) == 100
        with pytest.raises(Exception, match="UNIQUE constraint failed"):  # sqlite3.IntegrityError, pickled back
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


def test_a_store_the_child_cannot_open_is_a_store_error(tmp_path: Path) -> None:
    from supervisor import write_process

    with pytest.raises(StoreError, match="writer process cannot use"):
        write_process.WriterProcess(str(tmp_path / "no-such-folder" / "x.db"), lambda done: None)
