"""Metric storage: batches stored as packed rows, read back value by value, and schema 1 migrated."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.batches import MetricColumns
from supervisor.storage import SCHEMA_VERSION, Store, StoreError

# Schema 1 as released (one row per metric value; progress kept in runs and sessions).
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    world_size INTEGER NOT NULL DEFAULT 1, version INTEGER NOT NULL DEFAULT 0, specs TEXT NOT NULL,
    vals TEXT NOT NULL, pinned TEXT NOT NULL DEFAULT '[]', outcome INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER NOT NULL DEFAULT -1, last_seen REAL NOT NULL DEFAULT 0, points INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), version INTEGER, time REAL NOT NULL,
    kind INTEGER NOT NULL, source TEXT NOT NULL, reason TEXT NOT NULL, body TEXT NOT NULL, trigger_name TEXT,
    apply_at_step INTEGER, step INTEGER NOT NULL
);
CREATE TABLE acks (
    run_id INTEGER NOT NULL, version INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL,
    time REAL NOT NULL, PRIMARY KEY (run_id, version, rank)
) WITHOUT ROWID;
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    session_id TEXT NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, rank, session_id)
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, seq INTEGER NOT NULL, step INTEGER NOT NULL,
    time REAL NOT NULL, name TEXT NOT NULL, value REAL
);
CREATE INDEX metrics_by_run ON metrics(run_id, name);
CREATE TABLE policy_state (policy TEXT NOT NULL, scope TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (policy, scope));
INSERT INTO meta VALUES ('schema_version', '1');
"""


def _columns(points: list[tuple[int, int, dict[str, float]]]) -> MetricColumns:
    names: list[str] = []
    columns = MetricColumns([], [], [], [], names, [], [])
    for seq, step, values in points:
        columns.seqs.append(seq)
        columns.steps.append(step)
        columns.times.append(1000.0 + step)
        columns.counts.append(len(values))
        for name, value in values.items():
            if name not in names:
                names.append(name)
            columns.name_indexes.append(names.index(name))
            columns.values.append(value)
    return columns


def _all_pages(store: Store, run_id: int, name: str = "", limit: int = 3) -> list[tuple]:
    out, cursor, pages = [], 0, 0
    while True:
        page, cursor = store.metrics(run_id, name=name, after=cursor, limit=limit)
        out.extend(page)
        pages += 1
        assert pages < 1000, "paging does not end"
        if not cursor:
            return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        x[:5] == y[:5] and (x[5] == y[5] or (math.isnan(x[5]) and math.isnan(y[5]))) for x, y in zip(a, b, strict=True)
    )


def test_batches_read_back_value_by_value_with_paging_and_a_name_filter(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    run_id = store.create_run("r", world_size=2, specs={}, values={}, version=0, now=0.0)
    s0, _, _ = store.open_session(run_id, 0, "a")
    s1, _, _ = store.open_session(run_id, 1, "b")
    first = _columns([(1, 0, {"loss": 2.0, "acc": 0.1}), (2, 1, {"loss": math.nan}), (5, 2, {"acc": 0.3})])
    second = _columns([(1, 0, {"loss": 9.0})])
    third = _columns([(6, 3, {"loss": 1.5, "gpu0_util": 80.0})])
    store.insert_metrics([(run_id, 0, s0, 0, first), (run_id, 1, s1, 4, second)])
    store.insert_metrics([(run_id, 0, s0, 2, third)])
    expected = [
        (0, 1, 0, 1000.0, "loss", 2.0), (0, 1, 0, 1000.0, "acc", 0.1), (0, 2, 1, 1001.0, "loss", math.nan),
        (0, 5, 2, 1002.0, "acc", 0.3), (1, 1, 0, 1000.0, "loss", 9.0), (0, 6, 3, 1003.0, "loss", 1.5),
        (0, 6, 3, 1003.0, "gpu0_util", 80.0),
    ]
    for limit in (1, 2, 3, 100):
        assert _same(_all_pages(store, run_id, limit=limit), expected), limit
        assert _same(_all_pages(store, run_id, "loss", limit), [e for e in expected if e[4] == "loss"]), limit
    assert _all_pages(store, run_id, "nope") == []
    # progress comes from the batches: points, last step, drops (latest per session, summed over sessions)
    (row,) = store.load_runs()
    assert (row.points, row.last_step, row.dropped, row.last_seen) == (5, 3, 2 + 4, 1003.0)
    assert store.open_session(run_id, 0, "a") == (s0, 6, True)
    assert store.open_session(run_id, 1, "b") == (s1, 1, True)


def test_recent_history_is_the_last_pairs_per_metric_below_a_step_oldest_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    run_id = store.create_run("r", world_size=1, specs={}, values={}, version=0, now=0.0)
    key, _, _ = store.open_session(run_id, 0, "a")
    uniform = _columns([(seq, seq, {"loss": float(seq), "acc": seq / 10}) for seq in range(1, 6)])
    mixed = _columns([(6, 6, {"loss": 6.0}), (7, 7, {"val_loss": 0.7}), (8, 8, {"loss": 8.0})])
    store.insert_metrics([(run_id, 0, key, 0, uniform)])
    store.insert_metrics([(run_id, 0, key, 0, mixed)])
    history = store.recent_history(run_id, before_step=8, per_metric=3)
    assert history == {
        "loss": ([4, 5, 6], [4.0, 5.0, 6.0]), "acc": ([3, 4, 5], [0.3, 0.4, 0.5]), "val_loss": ([7], [0.7])
    }
    # the scan stops after max_values: here only the newest batch is read
    assert store.recent_history(run_id, before_step=100, per_metric=10, max_values=1) == {
        "loss": ([6, 8], [6.0, 8.0]), "val_loss": ([7], [0.7])
    }
    assert store.recent_history(run_id, before_step=1, per_metric=10) == {}


def test_a_schema_1_database_is_migrated_without_losing_anything(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1)
    conn.execute(
        "INSERT INTO runs (id, name, created, specs, vals, last_step, points) VALUES (1, 'r', 0, '{}', '{}', 9, 3)"
    )
    conn.execute("INSERT INTO sessions VALUES (7, 1, 0, 'sess', 600, 11)")
    rows = [(1, 0, seq, seq * 10, 100.0 + seq, name, value) for seq in range(1, 601)
            for name, value in (("loss", 1.0 / seq), ("acc", None if seq == 3 else 0.5))]
    conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()

    store = Store(path)
    (row,) = store.load_runs()
    assert (row.points, row.last_step, row.dropped) == (600, 6000, 11)
    assert store.open_session(1, 0, "sess") == (7, 600, True)  # a reconnecting trainer resends nothing stored
    expected = [(r, q, s, t, n, math.nan if v is None else v) for _, r, q, s, t, n, v in rows]
    assert _same(_all_pages(store, 1, limit=250), expected)
    (version,) = store._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == str(SCHEMA_VERSION)
    store.close()
    Store(path).close()  # opens again as the current schema


def test_a_database_from_a_newer_supervisor_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99.*supervisor version that wrote it"):
        Store(path)


# -- group commit --------------------------------------------------------------------------------


def _change(version: int, lr: float) -> dict[str, Any]:
    """Keyword arguments of Store.record_change (passed as is: it is the write marked durable)."""
    return dict(version=version, kind=1, source="test", reason="r", changes={"lr": (None, lr)}, trigger=None,
                apply_at_step=None, step=0, now=1.0)


def _fail(store: Store, run_id: int) -> None:
    store.set_outcome(run_id, 2)
    raise ValueError("this write fails after writing")


def _traced(path: Path) -> tuple[Store, int, list[str]]:
    """A store with one run, and the list every statement it runs from now on is appended to (both connections)."""
    store = Store(path)
    run_id = store.create_run("r", world_size=1, specs={}, values={}, version=0, now=0.0)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store._full_connection().set_trace_callback(statements.append)
    return store, run_id, statements


def _disk_full(store: Store, full: bool) -> None:
    """A full disk, as SQLite sees one: no page beyond the current ones, on every connection of the writer."""
    for conn in (store._conn, store._full_connection()):
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages if full else 1073741823}")


def test_a_group_commits_every_write_but_the_one_that_failed(tmp_path: Path) -> None:
    store, run_id, statements = _traced(tmp_path / "g.db")
    on_full: list[str] = []
    store._full_connection().set_trace_callback(lambda sql: (on_full.append(sql), statements.append(sql)))
    change = Store.record_change
    results = store.run_group([(change, (run_id,), _change(1, 0.1)), (_fail, (run_id,), {}),
                               (change, (run_id,), _change(2, 0.2))])
    assert isinstance(results[1], ValueError) and results[0] and results[2]
    assert [row.version for row in store.history(run_id)] == [1, 2]
    assert store.load_runs()[0].outcome == 0  # the failed write's own change is rolled back
    # one transaction, committed by the connection that is always synchronous=FULL (2); no mode switches
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1 and "COMMIT" in on_full
    assert not any(sql.startswith("PRAGMA synchronous") for sql in statements)
    assert store._full_connection().execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # the other writes' stays NORMAL
    assert not store._conn.in_transaction and not store._full_connection().in_transaction
    # a group without a durable write commits on the NORMAL connection
    on_full.clear()
    assert store.run_group([(Store.set_outcome, (run_id, 1), {})]) == [None] and on_full == []


def test_a_lone_write_runs_without_a_savepoint_and_a_failing_one_leaves_nothing(tmp_path: Path) -> None:
    store, run_id, statements = _traced(tmp_path / "lone.db")
    assert store.run_group([(Store.record_change, (run_id,), _change(1, 0.1))])[0]
    assert not any(s.startswith("SAVEPOINT") for s in statements)  # each statement retakes the GIL
    assert store.load_runs()[0].version == 1
    [result] = store.run_group([(_fail, (run_id,), {})])
    assert isinstance(result, ValueError)
    assert store.load_runs()[0].outcome == 0  # what it wrote before failing is rolled back
    assert not store._conn.in_transaction
    assert store.run_group([(Store.set_outcome, (run_id, 1), {})]) == [None]  # the connection still writes
    assert store.load_runs()[0].outcome == 1


def test_an_atomic_write_that_fails_midway_in_a_group_is_undone_alone(tmp_path: Path) -> None:
    store, run_id, statements = _traced(tmp_path / "atomic.db")
    change = Store.record_change
    unserialisable = {**_change(2, 0.2), "values": {"lr": object()}}  # fails after its INSERT, before its UPDATE
    results = store.run_group([(change, (run_id,), _change(1, 0.1)), (change, (run_id,), unserialisable),
                               (change, (run_id,), _change(3, 0.3))])
    assert isinstance(results[1], TypeError) and results[0] and results[2]
    assert [row.version for row in store.history(run_id)] == [1, 3]
    assert store.load_runs()[0].version == 3
    assert statements.count("SAVEPOINT job") == 3 and not any("SAVEPOINT txn" in s for s in statements)


def test_concurrent_writes_each_return_after_their_commit(tmp_path: Path) -> None:
    from supervisor.storage import Database

    async def main() -> list[int]:
        db = Database(tmp_path / "d.db")
        run_id = await db.write(Store.create_run, "r", world_size=1, specs={}, values={}, version=0, now=0.0)
        commits: list[str] = []
        for conn in (db.store._conn, db.store._full_connection()):
            conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        ids = await asyncio.gather(*(db.write(Store.record_change, run_id, **_change(v, v / 100))
                                     for v in range(1, 201)))
        assert len(commits) < 50, f"{len(commits)} commits for 200 writes queued together"
        with pytest.raises(ValueError, match="fails after writing"):
            await db.write(_fail, run_id)
        versions = [row.version for row in await db.read(Store.history, run_id)]
        db.close()
        with pytest.raises(RuntimeError, match="closed"):
            await db.write(Store.set_outcome, run_id, 1)
        assert versions == list(range(1, 201))
        return ids

    ids = asyncio.run(main())
    assert ids == sorted(ids) and len(set(ids)) == 200


def test_a_group_cut_short_commits_what_it_ran_and_returns_only_those_results(tmp_path: Path) -> None:
    store, run_id, statements = _traced(tmp_path / "cut.db")
    change = Store.record_change
    asked: list[int] = []
    results = store.run_group([(change, (run_id,), _change(v, v / 10)) for v in (1, 2, 3)],
                              cut=lambda: asked.append(1) or len(asked) == 2)
    assert len(results) == 2 and all(results)  # asked after the first job (no) and the second (yes)
    assert [row.version for row in store.history(run_id)] == [1, 2]
    assert statements.count("COMMIT") == 1 and not store._full_connection().in_transaction
    assert store.run_group([(change, (run_id,), _change(3, 0.3))])[0]  # the rest goes on later


def _hold(store: Store, started: threading.Event, release: threading.Event) -> None:
    """A write that keeps the writer busy until the test lets it go."""
    started.set()
    assert release.wait(10), "the test never released the writer"


async def _hold_the_writer(db: Any) -> tuple[asyncio.Future[Any], threading.Event]:
    """Keep ``db``'s writer busy in a group of its own: the write, and the event that ends it."""
    started, release = threading.Event(), threading.Event()
    held = asyncio.ensure_future(db.write(_hold, started, release))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    return held, release


async def _database_with_a_run(path: Path) -> tuple[Any, int]:
    from supervisor.storage import Database

    db = Database(path)
    return db, await db.write(Store.create_run, "r", world_size=1, specs={}, values={}, version=0, now=0.0)


def test_a_write_first_overtakes_the_queue_and_cuts_the_group_in_progress(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "first.db")
        loop = asyncio.get_running_loop()
        held, first_release = await _hold_the_writer(db)
        # queued while the writer is busy: they will run as one group, which the test holds in its middle
        started, release = threading.Event(), threading.Event()
        before = [asyncio.ensure_future(db.write(Store.record_change, run_id, **_change(v, v / 100))) for v in (1, 2)]
        middle = asyncio.ensure_future(db.write(_hold, started, release))
        after = [asyncio.ensure_future(db.write(Store.record_change, run_id, **_change(v, v / 100)))
                 for v in range(3, 50)]
        await asyncio.sleep(0.01)  # every write above is in the queue
        first_release.set()
        await loop.run_in_executor(None, started.wait)  # the group of the 49 runs, held after its first two
        operator = asyncio.ensure_future(db.write_first(Store.record_change, run_id, **_change(100, 1.0)))
        await asyncio.sleep(0.01)
        release.set()
        operator_id = await operator
        ids = await asyncio.gather(*before, middle, *after, held)
        assert max(ids[:2]) < operator_id < min(ids[3:-1]), "the operator's write did not go ahead of the queue"
        versions = [row.version for row in await db.read(Store.history, run_id)]
        assert sorted(versions) == [*range(1, 50), 100] and versions.index(100) == 2
        db.close()

    asyncio.run(main())


def test_the_mark_of_a_write_first_taken_with_an_earlier_group_does_not_stop_the_writer(tmp_path: Path) -> None:
    """A write_first files its job, then its mark: a busy writer can take the job before the mark arrives."""
    from supervisor.storage import _FIRST

    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "mark.db")
        db._writer._writes.put(_FIRST)  # the late mark, with nothing left in the first lane
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(db.write(Store.record_change, run_id, **_change(1, 0.1)), 5)
        db.close()

    asyncio.run(main())


def test_closing_the_database_stores_every_write_queued_before(tmp_path: Path) -> None:
    async def main() -> None:
        db, run_id = await _database_with_a_run(tmp_path / "close.db")
        loop = asyncio.get_running_loop()
        held, release = await _hold_the_writer(db)
        queued = [asyncio.ensure_future(db.write(Store.record_change, run_id, **_change(v, v / 100))) for v in (1, 2)]
        queued.append(asyncio.ensure_future(db.write_first(Store.record_change, run_id, **_change(3, 0.03))))
        await asyncio.sleep(0.01)
        release.set()
        await loop.run_in_executor(None, db.close)  # waits for the writer, which stores what was queued first
        await asyncio.wait_for(asyncio.gather(held, *queued), 5)
        assert sorted(row.version for row in Store(tmp_path / "close.db").history(run_id)) == [1, 2, 3]

    asyncio.run(main())


def _interrupt(store: Store, run_id: int) -> None:
    raise KeyboardInterrupt


def test_a_group_that_fails_as_a_whole_stores_nothing_and_tells_every_writer(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    run_id = store.create_run("r", world_size=1, specs={}, values={}, version=0, now=0.0)
    change = Store.record_change
    results = store.run_group([(change, (run_id,), _change(1, 0.1)), (_interrupt, (run_id,), {}),
                               (change, (run_id,), _change(2, 0.2))])
    assert all(isinstance(r, RuntimeError) and isinstance(r.__cause__, KeyboardInterrupt) for r in results)
    assert len({id(r) for r in results}) == 3  # each writer gets its own exception
    assert store.history(run_id) == [] and not store._conn.in_transaction
    assert not store._full_connection().in_transaction
    assert store.run_group([(change, (run_id,), _change(1, 0.1))])[0]  # the next group goes on


def _set_outcome_then_fail_inside(store: Store, run_id: int) -> None:
    try:
        with store._txn():
            store._conn.execute("UPDATE runs SET outcome = 2 WHERE id = ?", (run_id,))
            raise ValueError("inner")
    except ValueError:
        pass  # a Store method that handles its own failure: its partial write must still be undone
    store._conn.execute("UPDATE runs SET world_size = 3 WHERE id = ?", (run_id,))


def test_a_nested_transaction_inside_a_group_rolls_back_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.db")
    run_id = store.create_run("r", world_size=1, specs={}, values={}, version=0, now=0.0)
    assert store.run_group([(_set_outcome_then_fail_inside, (run_id,), {})]) == [None]
    row = store.load_runs()[0]
    assert (row.outcome, row.world_size) == (0, 3)


# -- progress per session (schema 3) -----------------------------------------------------------------

_AGGREGATE_OF_BATCHES = (  # schema 2's start-up query: the reference session_progress must agree with
    "SELECT run_id, SUM(points), MAX(last_step), MAX(last_time), SUM(dropped) FROM"
    " (SELECT run_id, SUM(points) AS points, MAX(last_step) AS last_step, MAX(last_time) AS last_time,"
    " MAX(dropped) AS dropped FROM metric_batches GROUP BY session, run_id) GROUP BY run_id ORDER BY run_id"
)


def _progress(store: Store) -> list[tuple[int, int, int, float, int]]:
    by_name = {row.name: row for row in store.load_runs()}
    ids = dict(store._conn.execute("SELECT name, id FROM runs").fetchall())
    return sorted((ids[n], r.points, r.last_step, r.last_seen, r.dropped) for n, r in by_name.items() if r.points)


def _fill(store: Store) -> None:
    a = store.create_run("a", world_size=2, specs={}, values={}, version=0, now=0.0)
    b = store.create_run("b", world_size=1, specs={}, values={}, version=0, now=0.0)
    a0, a1, b0 = store.open_session(a, 0, "x")[0], store.open_session(a, 1, "y")[0], store.open_session(b, 0, "z")[0]
    seq = {a0: 1, a1: 1, b0: 1}
    for round_ in range(5):
        batches = []
        for run, rank, session, n in ((a, 0, a0, 3), (a, 1, a1, 2), (b, 0, b0, 4), (a, 0, a0, 1)):  # a0 twice a round
            points = [(seq[session] + i, round_ * 10 + i, {"loss": 1.0}) for i in range(n)]
            seq[session] += n
            batches.append((run, rank, session, round_ + rank, _columns(points)))
        store.insert_metrics(batches)


def test_progress_kept_per_round_equals_aggregating_every_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    _fill(store)
    reference = [tuple(row) for row in store._conn.execute(_AGGREGATE_OF_BATCHES)]
    assert _progress(store) == reference and len(reference) == 2


def test_a_schema_2_database_gets_its_progress_table(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    store = Store(path)
    _fill(store)
    before = _progress(store)
    store._conn.execute("DROP TABLE session_progress")
    store._conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store.close()
    migrated = Store(path)
    assert _progress(migrated) == before
    (version,) = migrated._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == str(SCHEMA_VERSION) == "3"


async def _ingest_writer(path: Path) -> tuple[Any, int, Any, Any, list[Any]]:
    """A database with run "r", its IngestWriter started, a stream of session "s", and the list of stored items."""
    from supervisor.connections import IngestWriter, TrainerStream
    from supervisor.storage import Database

    db = Database(path)
    run_id = await db.write(Store.create_run, "r", world_size=1, specs={}, values={}, version=0, now=0.0)
    key, _, _ = await db.write(Store.open_session, run_id, 0, "s")
    stored: list[Any] = []
    writer = IngestWriter(db, stored.extend)
    writer.start()
    stream = TrainerStream(run="r", rank=0, session_id="s", session_key=key, last_seq=0, peer="p")
    return db, run_id, writer, stream, stored


def test_acknowledgements_ride_the_ingest_commit_and_return_what_they_newly_recorded(tmp_path: Path) -> None:
    from supervisor.connections import IngestItem
    from supervisor.storage import AckRecord

    async def main() -> None:
        db, run_id, writer, stream, _ = await _ingest_writer(tmp_path / "a.db")
        for version in (1, 2, 3):
            await db.write(Store.record_change, run_id, **_change(version, version / 10))
        await writer.submit(IngestItem(run_id, "r", stream, 0, _columns([(1, 0, {"loss": 1.0})])))
        first = writer.record_acks(AckRecord(run_id, 0, after=0, up_to=2, step=5, when=2.0))
        overlapping = writer.record_acks(AckRecord(run_id, 0, after=0, up_to=3, step=6, when=3.0))
        assert await first == [(1, 1.0), (2, 1.0)]  # (version, the time the change was recorded)
        assert await overlapping == [(3, 1.0)]  # versions 1 and 2 were recorded a statement before
        history = await db.read(Store.history, run_id)
        assert [row.acks for row in history] == [[(0, 5, 2.0)], [(0, 5, 2.0)], [(0, 6, 3.0)]]
        await writer.stop()
        db.close()

    asyncio.run(main())


def test_points_whose_commit_failed_are_kept_and_stored_once_the_disk_has_room(tmp_path: Path, caplog) -> None:
    from supervisor.connections import IngestItem

    async def main() -> None:
        db, run_id, writer, stream, stored = await _ingest_writer(tmp_path / "full.db")
        _disk_full(db.store, True)
        points = _columns([(seq, seq, {"loss": float(seq)}) for seq in range(1, 3001)])
        await writer.submit(IngestItem(run_id, "r", stream, 0, points))
        await asyncio.sleep(1.0)  # the first commit and at least one retry fail
        assert stored == []
        _disk_full(db.store, False)
        conn = db.store._conn
        await asyncio.wait_for(writer.settled("s"), 15)  # before the fix the writer had died: it never came
        assert len(stored) == 1
        (count,) = conn.execute("SELECT SUM(points) FROM metric_batches").fetchone()
        assert count == 3000
        await writer.stop()
        db.close()

    with caplog.at_level("WARNING", logger="supervisor"):
        asyncio.run(main())
    assert "cannot store metric points (database or disk is full)" in caplog.text
    assert "stored again, after" in caplog.text


def test_a_reconnecting_session_finds_its_previous_streams_batches_stored(tmp_path: Path) -> None:
    from supervisor.connections import IngestItem

    async def main() -> None:
        db, run_id, writer, old_stream, stored = await _ingest_writer(tmp_path / "d.db")
        batch = _columns([(1, 0, {"loss": 1.0}), (2, 1, {"loss": 0.5})])
        await writer.submit(IngestItem(run_id, "r", old_stream, 0, batch))
        await writer.settled("another")  # nothing of it waits: returns before the writer even ran
        assert stored == []
        await writer.settled("s")  # the old stream's batch is committed before the new stream's Welcome
        assert len(stored) == 1
        _, last_seq, known = await db.write(Store.open_session, run_id, 0, "s")
        assert (last_seq, known) == (2, True)
        await writer.stop()
        db.close()

    asyncio.run(main())


def test_a_change_the_database_cannot_take_is_refused_by_name_and_changes_nothing(tmp_path: Path) -> None:
    import grpc

    from supervisor.core import Supervisor
    from supervisor.http_gateway import _Abort, _Context
    from supervisor.services import OperatorService
    from supervisor.storage import Database
    from tests.core.test_bad_input import hello
    from trainer_sdk import _wire
    from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

    async def main() -> None:
        db = Database(tmp_path / "full.db")
        core = Supervisor(db)
        await core.start()
        stream, run, _ = await core.open_session(hello(run="r").hello, "peer")
        _disk_full(db.store, True)
        service = OperatorService(core)
        request = pb.SetParamsRequest(run="r", changes=_wire.values_to_wire({"lr": 0.2}), reason="x" * 20_000)
        with pytest.raises(_Abort) as info:  # the HTTP gateway's context, as a call over HTTP gets it
            await service.SetParams(request, _Context("test"))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "cannot write its database (database or disk is full); nothing was changed" in info.value.details
        assert (run.version, run.values["lr"]) == (0, 0.1)
        _disk_full(db.store, False)
        assert (await service.SetParams(request, _Context("test"))).version == 1
        core.close_session(stream)
        await core.stop()
        db.close()

    asyncio.run(main())


def test_an_operators_change_is_stored_ahead_of_the_policies_changes_queued_before_it(tmp_path: Path) -> None:
    from supervisor.core import Supervisor
    from supervisor.storage import Database
    from tests.core.test_bad_input import hello

    async def main() -> None:
        db = Database(tmp_path / "operator.db")
        core = Supervisor(db)
        await core.start()
        opened = [await core.open_session(hello(run=name, session_id=name).hello, "peer") for name in ("a", "b")]
        held, release = await _hold_the_writer(db)
        policy = asyncio.ensure_future(
            core.set_params("a", {"lr": 0.2}, reason="plateau", source="policy:p", pin=False)
        )
        await asyncio.sleep(0.01)  # the policy's change is queued behind the held write
        operator = asyncio.ensure_future(core.set_params("b", {"lr": 0.3}, reason="by hand"))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(held, policy, operator)
        [policy_row] = [row for row in await core.history("a") if row.source == "policy:p"]
        [operator_row] = [row for row in await core.history("b") if row.source == "operator"]
        assert operator_row.id < policy_row.id
        for stream, _, _ in opened:
            core.close_session(stream)
        await core.stop()
        db.close()

    asyncio.run(main())
