"""SQLite persistence: runs, parameter specs, every change, acknowledgements, every metric point.

The supervisor is the only writer (trainers talk gRPC, never SQLite), which
avoids "database is locked" entirely. WAL lets the read connection answer
queries while the writer commits. A change is committed with
``synchronous=FULL`` before it is sent to any trainer; metric batches use
``NORMAL``, which survives a killed process (the case that matters here) and
loses at most the last commits on power loss, which trainers then resend.

All methods are synchronous; the server calls them from one writer (a thread,
or with ``--db-writer process`` a child process, see ``supervisor.write_process``)
and one reader thread (see ``Database``). The writer commits whatever is queued together: one
transaction (and at most one fsync) for all the changes, acknowledgements and
metric rounds that arrived while the last one committed.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from supervisor.batches import MetricColumns

T = TypeVar("T")

SCHEMA_VERSION = 3
_BATCH_COLUMNS = (
    "run_id, session, rank, first_seq, last_seq, last_step, last_time, points, dropped,"
    " seqs, steps, times, counts, names, name_indexes, vals"
)
_MAX_SQL_VARIABLES = 32766  # SQLite's default limit since 3.32
_CURSOR_BATCH = 1 << 24  # a page cursor is batch id * this + value index

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    world_size INTEGER NOT NULL DEFAULT 1,
    version INTEGER NOT NULL DEFAULT 0,
    specs TEXT NOT NULL,
    vals TEXT NOT NULL,
    pinned TEXT NOT NULL DEFAULT '[]',
    outcome INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    version INTEGER,
    time REAL NOT NULL,
    kind INTEGER NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL,
    trigger_name TEXT,
    apply_at_step INTEGER,
    step INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_run ON changes(run_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS changes_by_version ON changes(run_id, version) WHERE version IS NOT NULL;
CREATE TABLE IF NOT EXISTS acks (
    run_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, version, rank)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    rank INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    UNIQUE (run_id, rank, session_id)
);
-- One row per metric batch as a trainer sent it, its columns packed (see MetricColumns.encode):
-- a row per batch, not per value, keeps the writer's cost per value near zero. A row with
-- no points only records a session's progress (migrated from schema 1).
CREATE TABLE IF NOT EXISTS metric_batches (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    session INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    last_time REAL NOT NULL,
    points INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    names TEXT NOT NULL,
    seqs BLOB,
    steps BLOB NOT NULL,
    times BLOB NOT NULL,
    counts BLOB NOT NULL,
    name_indexes BLOB NOT NULL,
    vals BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS metric_batches_by_run ON metric_batches(run_id, id);
CREATE INDEX IF NOT EXISTS metric_batches_by_session ON metric_batches(session, last_seq);
-- Each session's progress, kept up to date with every commit round (schema 3), so that
-- start-up reads a row per session instead of aggregating every stored batch.
CREATE TABLE IF NOT EXISTS session_progress (
    session INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    points INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    last_time REAL NOT NULL,
    dropped INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_state (
    policy TEXT NOT NULL,
    scope TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (policy, scope)
);
"""


@dataclass
class RunRow:
    id: int
    name: str
    created: float
    world_size: int
    version: int
    specs: dict[str, dict[str, Any]]
    values: dict[str, Any]
    pinned: list[str]
    outcome: int
    last_step: int
    last_seen: float
    points: int
    dropped: int


@dataclass
class ChangeRow:
    id: int
    version: int | None
    time: float
    kind: int
    source: str
    reason: str
    changes: dict[str, list[Any]]  # name -> [old, new]
    trigger: str | None
    apply_at_step: int | None
    step: int
    acks: list[tuple[int, int, float]]  # (rank, step, time)


@dataclass(frozen=True)
class AckRecord:
    """A trainer rank applied every version of a run in (after, up_to], at its step ``step`` and time ``when``."""

    run_id: int
    rank: int
    after: int
    up_to: int
    step: int
    when: float


def _durable(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a write that must reach the disk (synchronous=FULL) before its caller goes on."""
    method.durable = True  # type: ignore[attr-defined]
    return method


def _atomic(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a write whose every statement is inside one ``_txn`` and that handles no failure inside it.

    In ``run_group`` such a write needs no savepoint of its own: its job's
    savepoint (or, alone in its group, the group's rollback) undoes all of it.
    Each statement saved matters there: each one releases and retakes the GIL.
    """
    method.atomic = True  # type: ignore[attr-defined]
    return method


class WriterUnavailable(RuntimeError):
    """The database writer process is gone: nothing more can be stored until the supervisor restarts."""


class StoreError(Exception):
    """The database file cannot be used: missing folder, no permission, not SQLite, or a newer schema."""


class Store:
    """One SQLite file: the writer's connections (a second one for durable groups); ``reader()`` for another thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._job_is_atomic = False
        self._full: sqlite3.Connection | None = None
        try:
            self._open()
        except BaseException as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(
                    f"cannot use the database {self.path}: {exc} (--db must name an SQLite file, or a new one, in a "
                    "folder that exists and that this user can write)"
                ) from exc
            raise

    def _open(self) -> None:
        """Connect, and create or migrate the schema."""
        conn = self._connect()
        self._conn = conn
        with self._txn():
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = SCHEMA_VERSION if row is None else int(row[0])
            if found == 1:
                _migrate_from_1(conn)
                found = 2
            if found == 2:
                _migrate_from_2(conn)
            elif found != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {found}, but this supervisor reads {SCHEMA_VERSION}: "
                    "open it with the supervisor version that wrote it"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:  # not an SQLite file: close it, untouched
            conn.close()
            raise
        return conn

    def reader(self) -> Store:
        """A second handle on the same file for queries (WAL readers do not block the writer)."""
        other = object.__new__(Store)
        other.path = self.path
        other._conn = self._connect()
        other._full = None
        other._job_is_atomic = False
        return other

    def _full_connection(self) -> sqlite3.Connection:
        """A second connection on the file, always ``synchronous=FULL``, for the groups that hold a durable write.

        Why: one connection would switch its mode before and after every such group (the mode cannot
        change inside a transaction), two statements on the path of every change to its trainers.
        """
        if self._full is None:
            conn = self._connect()
            try:
                conn.execute("PRAGMA synchronous=FULL")
            except BaseException:
                conn.close()
                raise
            self._full = conn
        return self._full

    def close(self) -> None:
        self._conn.close()
        if self._full is not None:
            self._full.close()

    # -- runs --------------------------------------------------------------------------

    def load_runs(self) -> list[RunRow]:
        progress = {
            run_id: (points, last_step, last_time, dropped)
            for run_id, points, last_step, last_time, dropped in self._conn.execute(
                "SELECT run_id, SUM(points), MAX(last_step), MAX(last_time), SUM(dropped) FROM session_progress"
                " GROUP BY run_id"
            )
        }
        rows = self._conn.execute(
            "SELECT id, name, created, world_size, version, specs, vals, pinned, outcome FROM runs ORDER BY name"
        ).fetchall()
        out = []
        for r in rows:
            points, last_step, last_time, dropped = progress.get(r[0], (0, -1, 0.0, 0))
            out.append(
                RunRow(
                    id=r[0],
                    name=r[1],
                    created=r[2],
                    world_size=r[3],
                    version=r[4],
                    specs=json.loads(r[5]),
                    values=json.loads(r[6]),
                    pinned=json.loads(r[7]),
                    outcome=r[8],
                    last_step=last_step,
                    last_seen=last_time,
                    points=points,
                    dropped=dropped,
                )
            )
        return out

    def create_run(
        self, name: str, *, world_size: int, specs: dict[str, Any], values: dict[str, Any], version: int, now: float
    ) -> int:
        with self._txn():
            cur = self._conn.execute(
                "INSERT INTO runs (name, created, world_size, version, specs, vals) VALUES (?, ?, ?, ?, ?, ?)",
                (name, now, world_size, version, json.dumps(specs), json.dumps(values)),
            )
            return int(cur.lastrowid or 0)

    def update_declaration(
        self, run_id: int, *, world_size: int, specs: dict[str, Any], values: dict[str, Any]
    ) -> None:
        with self._txn():
            self._conn.execute(
                "UPDATE runs SET world_size = ?, specs = ?, vals = ?, outcome = 0 WHERE id = ?",
                (world_size, json.dumps(specs), json.dumps(values), run_id),
            )

    def set_outcome(self, run_id: int, outcome: int) -> None:
        with self._txn():
            self._conn.execute("UPDATE runs SET outcome = ? WHERE id = ?", (outcome, run_id))

    # -- changes -------------------------------------------------------------------------

    @_atomic
    @_durable
    def record_change(
        self,
        run_id: int,
        *,
        version: int | None,
        kind: int,
        source: str,
        reason: str,
        changes: dict[str, tuple[Any, Any]],
        trigger: str | None,
        apply_at_step: int | None,
        step: int,
        now: float,
        values: dict[str, Any] | None = None,
        pinned: Iterable[str] | None = None,
    ) -> int:
        """Append to the history; with ``values`` also make them the run's current state.

        Marked ``@_durable``: the commit that holds it (``run_group``) runs with
        synchronous=FULL, since an entry must survive before any trainer hears of it.
        """
        body = json.dumps({"changes": {name: [old, new] for name, (old, new) in changes.items()}})
        with self._txn():
            cur = self._conn.execute(
                "INSERT INTO changes (run_id, version, time, kind, source, reason, body, trigger_name,"
                " apply_at_step, step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, version, now, kind, source, reason, body, trigger, apply_at_step, step),
            )
            if version is not None or values is not None or pinned is not None:
                self._conn.execute(  # one statement: each one retakes the GIL, which is busy under load
                    "UPDATE runs SET version = COALESCE(?, version), vals = COALESCE(?, vals),"
                    " pinned = COALESCE(?, pinned) WHERE id = ?",
                    (
                        version,
                        None if values is None else json.dumps(values),
                        None if pinned is None else json.dumps(sorted(pinned)),
                        run_id,
                    ),
                )
            return int(cur.lastrowid or 0)

    def history(self, run_id: int, *, after_version: int | None = None) -> list[ChangeRow]:
        if after_version is None:
            rows = self._conn.execute(
                "SELECT id, version, time, kind, source, reason, body, trigger_name, apply_at_step, step"
                " FROM changes WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT id, version, time, kind, source, reason, body, trigger_name, apply_at_step, step"
                " FROM changes WHERE run_id = ? AND version > ? ORDER BY version",
                (run_id, after_version),
            ).fetchall()
        acks: dict[int, list[tuple[int, int, float]]] = {}
        for version, rank, step, when in self._conn.execute(
            "SELECT version, rank, step, time FROM acks WHERE run_id = ? ORDER BY version, rank", (run_id,)
        ):
            acks.setdefault(version, []).append((rank, step, when))
        return [
            ChangeRow(
                id=r[0],
                version=r[1],
                time=r[2],
                kind=r[3],
                source=r[4],
                reason=r[5],
                changes=json.loads(r[6])["changes"],
                trigger=r[7],
                apply_at_step=r[8],
                step=r[9],
                acks=acks.get(r[1], []) if r[1] is not None else [],
            )
            for r in rows
        ]

    def _insert_acks(self, ack: AckRecord) -> list[tuple[int, float]]:
        """Record that ``ack.rank`` applied every version in (after, up_to]; return (version, recorded time)."""
        newly = self._conn.execute(
            "SELECT version, time FROM changes WHERE run_id = ? AND version > ? AND version <= ?"
            " AND version NOT IN (SELECT version FROM acks WHERE run_id = ? AND rank = ?)",
            (ack.run_id, ack.after, ack.up_to, ack.run_id, ack.rank),
        ).fetchall()
        self._conn.executemany(
            "INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?, ?)",
            [(ack.run_id, version, ack.rank, ack.step, ack.when) for version, _ in newly],
        )
        return [(int(v), float(t)) for v, t in newly]

    def acked_version(self, run_id: int, rank: int) -> int:
        row = self._conn.execute(
            "SELECT MAX(version) FROM acks WHERE run_id = ? AND rank = ?", (run_id, rank)
        ).fetchone()
        return int(row[0] or 0)

    # -- sessions and metrics ------------------------------------------------------------------

    def open_session(self, run_id: int, rank: int, session_id: str) -> tuple[int, int, bool]:
        """Return (session key, last stored seq, whether the session was known)."""
        with self._txn():
            row = self._conn.execute(
                "SELECT id FROM sessions WHERE run_id = ? AND rank = ? AND session_id = ?",
                (run_id, rank, session_id),
            ).fetchone()
            if row is not None:
                (last,) = self._conn.execute(
                    "SELECT MAX(last_seq) FROM metric_batches WHERE session = ?", (row[0],)
                ).fetchone()
                return int(row[0]), int(last or 0), True
            cur = self._conn.execute(
                "INSERT INTO sessions (run_id, rank, session_id) VALUES (?, ?, ?)", (run_id, rank, session_id)
            )
            return int(cur.lastrowid or 0), 0, False

    @_atomic
    def insert_metrics(
        self,
        batches: Sequence[tuple[int, int, int, int, MetricColumns]],
        policy_states: Iterable[tuple[str, str, str]] = (),
        acks: Sequence[AckRecord] = (),
    ) -> list[list[tuple[int, float]]]:
        """Store batches of (run_id, rank, session key, dropped_total, points) in one transaction.

        Policy state saved since the last round (as JSON text), and trainers' acknowledgements
        (``IngestWriter.record_acks``; returned in order, each as the versions
        it newly recorded), go into the same transaction.
        Callers pass only points newer than the session's stored seq, in order;
        the batch row carries its seqs, so a crash never leaves points stored
        without the seq that de-duplicates them. A few multi-row statements per
        round, rather than a statement per row, keep this thread off the GIL
        while SQLite works.
        """
        rows = [
            (
                run_id, session, rank, columns.seqs[0], columns.last_seq, max(columns.steps), max(columns.times),
                len(columns), dropped, *columns.encode(),
            )
            for run_id, rank, session, dropped, columns in batches
            if len(columns)
        ]
        with self._txn():
            width = len(rows[0]) if rows else 1
            chunk = _MAX_SQL_VARIABLES // width
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                self._conn.execute(
                    f"INSERT INTO metric_batches ({_BATCH_COLUMNS}) VALUES "
                    + ",".join(["(" + ",".join("?" * width) + ")"] * len(part)),
                    [value for row in part for value in row],
                )
            self._add_progress(rows)
            self._put_policy_states(policy_states)
            return [self._insert_acks(ack) for ack in acks]

    def _add_progress(self, rows: list[tuple[Any, ...]]) -> None:
        """Fold a round's batch rows into ``session_progress``: one statement per few hundred sessions."""
        progress: dict[int, list[Any]] = {}
        for run_id, session, _, _, _, last_step, last_time, points, dropped, *_ in rows:
            p = progress.get(session)
            if p is None:
                progress[session] = [session, run_id, points, last_step, last_time, dropped]
            else:
                p[2] += points
                p[3], p[4], p[5] = max(p[3], last_step), max(p[4], last_time), max(p[5], dropped)
        entries = list(progress.values())
        chunk = _MAX_SQL_VARIABLES // 6
        for start in range(0, len(entries), chunk):
            part = entries[start : start + chunk]
            self._conn.execute(
                "INSERT INTO session_progress (session, run_id, points, last_step, last_time, dropped) VALUES "
                + ",".join(["(?,?,?,?,?,?)"] * len(part))
                + " ON CONFLICT (session) DO UPDATE SET points = points + excluded.points,"
                " last_step = MAX(last_step, excluded.last_step), last_time = MAX(last_time, excluded.last_time),"
                " dropped = MAX(dropped, excluded.dropped)",
                [value for entry in part for value in entry],
            )

    def metrics(
        self, run_id: int, *, name: str = "", after: int = 0, limit: int = 10_000
    ) -> tuple[list[tuple[int, int, int, float, str, float]], int]:
        """A page of (rank, seq, step, time, name, value) in storage order, and the cursor to go on from.

        The cursor is ``batch id << 24 | index of the next value``; 0 means there is no more.
        """
        first_batch, skip = divmod(max(after, 0), _CURSOR_BATCH)
        out: list[tuple[int, int, int, float, str, float]] = []
        query = self._conn.execute(
            "SELECT id, rank, first_seq, seqs, steps, times, counts, names, name_indexes, vals FROM metric_batches"
            " WHERE run_id = ? AND id >= ? AND points > 0 ORDER BY id",
            (run_id, first_batch),
        )
        for batch_id, rank, first_seq, *packed in query:
            start = skip if batch_id == first_batch else 0
            if name and json.dumps(name) not in packed[4]:
                continue  # the batch has no such metric: skip it without decoding
            columns = MetricColumns.decode(first_seq, *packed)
            if name and name not in columns.names:
                continue
            wanted = columns.names.index(name) if name else -1
            index = 0
            for seq, step, when, count in zip(columns.seqs, columns.steps, columns.times, columns.counts, strict=True):
                for _ in range(count):
                    if index >= start and (wanted < 0 or columns.name_indexes[index] == wanted):
                        if len(out) == limit:
                            query.close()
                            return out, batch_id * _CURSOR_BATCH + index
                        out.append(
                            (rank, seq, step, when, columns.names[columns.name_indexes[index]], columns.values[index])
                        )
                    index += 1
        return out, 0

    def recent_history(
        self, run_id: int, *, before_step: int, per_metric: int, max_values: int = 20_000
    ) -> dict[str, tuple[list[int], list[float]]]:
        """The last ``per_metric`` stored (step, value) pairs per metric at steps below ``before_step``, oldest first.

        For a policy host started after the run began: its policies' history
        picks up where the previous supervisor's left off. Reads batches newest
        first and stops after ``max_values`` values, so a restarted supervisor
        with a thousand long runs pays a bounded read for each, and a metric
        reported rarely may come back with fewer pairs than it had.
        """
        newest_first: dict[str, tuple[list[int], list[float]]] = {}
        scanned = 0
        query = self._conn.execute(
            "SELECT first_seq, seqs, steps, times, counts, names, name_indexes, vals FROM metric_batches"
            " WHERE run_id = ? AND points > 0 ORDER BY id DESC",
            (run_id,),
        )
        for first_seq, *packed in query:
            columns = MetricColumns.decode(first_seq, *packed)
            for name, steps, values in columns.series(0, len(columns)):
                pair = newest_first.get(name)
                if pair is None:
                    pair = newest_first[name] = ([], [])
                room = per_metric - len(pair[0])
                for step, value in zip(reversed(steps), reversed(values), strict=True):
                    if room <= 0:
                        break
                    if step < before_step:
                        pair[0].append(step)
                        pair[1].append(value)
                        room -= 1
            scanned += len(columns.values)
            if scanned >= max_values:
                query.close()
                break
        return {name: (steps[::-1], values[::-1]) for name, (steps, values) in newest_first.items() if steps}

    # -- policy state ------------------------------------------------------------------------

    def _put_policy_states(self, items: Iterable[tuple[str, str, str]]) -> None:
        """Save (policy, scope, state as JSON text) rows."""
        self._conn.executemany(
            "INSERT INTO policy_state VALUES (?, ?, ?)"
            " ON CONFLICT (policy, scope) DO UPDATE SET state = excluded.state",
            list(items),
        )

    def load_policy_state(self) -> dict[tuple[str, str], Any]:
        return {(p, s): json.loads(state) for p, s, state in self._conn.execute("SELECT * FROM policy_state")}

    # -- plumbing ---------------------------------------------------------------------------

    def _txn(self) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN ... COMMIT, or a savepoint inside a group; nothing for an ``@_atomic`` write in a group."""
        return nullcontext(self._conn) if self._job_is_atomic else _Transaction(self._conn)

    def run_group(
        self,
        jobs: Sequence[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        cut: Callable[[], bool] | None = None,
    ) -> list[Any]:
        """Run writes in one transaction, each alone if it fails; a result or the exception per job.

        A job that raises is rolled back alone and the others commit. The commit
        is ``synchronous=FULL`` when any job is a durable write (``record_change``):
        such a group runs on the store's second connection, which is always FULL.
        Every statement releases and retakes the GIL, which the event loop keeps
        busy under load, so a group runs none it does not need: a lone job (most
        groups under load) needs no savepoint of its own, and an ``@_atomic``
        write no nested one.

        ``cut`` is asked between jobs: when it says so, the group commits what
        it has run, and the results cover only those jobs (a prefix of ``jobs``).
        """
        main = conn = self._conn
        durable = any(getattr(fn, "durable", False) for fn, _, _ in jobs)
        results: list[Any] = []
        alone = len(jobs) == 1
        ran = len(jobs)
        try:
            if durable:
                conn = self._conn = self._full_connection()  # the jobs write through self._conn
            conn.execute("BEGIN IMMEDIATE")
            for i, (fn, args, kwargs) in enumerate(jobs):
                if i and cut is not None and cut():
                    ran = i
                    break
                if not alone:
                    conn.execute("SAVEPOINT job")
                self._job_is_atomic = getattr(fn, "atomic", False)
                try:
                    results.append(fn(self, *args, **kwargs))
                except Exception as exc:
                    if alone:  # nothing else to keep: undo all of it
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        return [exc]
                    try:
                        conn.execute("ROLLBACK TO job")
                    except sqlite3.Error:
                        raise exc from None  # SQLite dropped the whole transaction: the group fails on this
                    results.append(exc)
                if not alone:
                    conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except BaseException as exc:  # the group as a whole failed (disk full, I/O error, ...): none of it is stored
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            return [_group_failure(exc) for _ in jobs[:ran]]
        finally:
            self._conn = main
            self._job_is_atomic = False
        return results


def _migrate_from_2(conn: sqlite3.Connection) -> None:
    """Schema 2 derived each run's progress from every stored batch at start-up: keep it per session instead."""
    for statement in _SCHEMA.split(";"):
        if "session_progress" in statement:
            conn.execute(statement)
    conn.execute(
        "INSERT INTO session_progress (session, run_id, points, last_step, last_time, dropped)"
        " SELECT session, MAX(run_id), SUM(points), MAX(last_step), MAX(last_time), MAX(dropped)"
        " FROM metric_batches GROUP BY session"
    )


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 stored a row per metric value and each session's progress in ``sessions``.

    Values become batches of up to 512 points per run and rank (in their stored
    order), and each session's stored seq and drop count become a batch row
    without points, so a trainer that reconnects still resends only what is missing.
    """
    for statement in _SCHEMA.split(";"):
        if "metric_batches" in statement:
            conn.execute(statement)
    insert = f"INSERT INTO metric_batches ({_BATCH_COLUMNS}) VALUES ({','.join('?' * 16)})"
    empty = MetricColumns([], [], [], [], [], [], []).encode()
    for key, run_id, rank, last_seq, dropped in conn.execute(
        "SELECT id, run_id, rank, last_seq, dropped FROM sessions"
    ).fetchall():
        conn.execute(insert, (run_id, key, rank, last_seq, last_seq, -1, 0.0, 0, dropped, *empty))

    def store(run_id: int, rank: int, columns: MetricColumns) -> None:
        conn.execute(
            insert,
            (run_id, 0, rank, columns.seqs[0], columns.last_seq, max(columns.steps), max(columns.times),
             len(columns), 0, *columns.encode()),
        )

    open_batches: dict[tuple[int, int], MetricColumns] = {}
    for run_id, rank, seq, step, when, name, value in conn.execute(
        "SELECT run_id, rank, seq, step, time, name, value FROM metrics ORDER BY rowid"
    ):
        columns = open_batches.get((run_id, rank))
        if columns is None or (columns.seqs[-1] != seq and len(columns) >= 512):
            if columns is not None:
                store(run_id, rank, columns)
            columns = open_batches[(run_id, rank)] = MetricColumns([], [], [], [], [], [], [])
        if not columns.seqs or columns.seqs[-1] != seq:
            columns.seqs.append(seq)
            columns.steps.append(step)
            columns.times.append(when)
            columns.counts.append(0)
        if name not in columns.names:
            columns.names.append(name)
        columns.counts[-1] += 1
        columns.name_indexes.append(columns.names.index(name))
        columns.values.append(math.nan if value is None else value)
    for (run_id, rank), columns in open_batches.items():
        store(run_id, rank, columns)
    conn.execute("DROP TABLE metrics")
    for table, column in [("runs", "last_step"), ("runs", "last_seen"), ("runs", "points"),
                          ("sessions", "last_seq"), ("sessions", "dropped")]:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


class _Transaction:
    """BEGIN ... COMMIT; inside ``run_group``'s transaction, a savepoint that rolls back alone."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        self.outer = not self.conn.in_transaction
        self.conn.execute("BEGIN IMMEDIATE" if self.outer else "SAVEPOINT txn")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        else:
            if exc_type is not None:
                self.conn.execute("ROLLBACK TO txn")
            self.conn.execute("RELEASE txn")


MAX_WRITES_PER_COMMIT = 512

Settle = Callable[[list[tuple[Any, Any]]], None]
"""Takes a committed group's (token, result or exception) pairs, on the writer's thread."""


class GroupWriter:
    """The write loop: commits whatever is queued as one group, with a lane for writes someone waits on.

    A job is (token, fn, args, kwargs); ``settle`` gets each group's tokens
    with their results. Subclasses say where jobs come from (``_collect``):
    ``Database``'s thread takes them from a queue, the writer process
    (``supervisor.write_process``) reads them from a pipe.
    """

    def __init__(self, store: Store, settle: Settle) -> None:
        self.store = store
        self._settle = settle
        self._first: deque[Any] = deque()  # writes someone waits on
        self._waiting: deque[Any] = deque()  # the others in order; a cut group's rest goes back to the front

    def run(self) -> None:
        """Commit groups until told to stop and nothing is left."""
        stop = False
        while True:
            stop = self._collect(block=not self._waiting and not self._first and not stop) or stop
            if self._first:
                lane, cut = self._first, None
            elif self._waiting:
                lane, cut = self._waiting, self._cut
            elif stop:
                return  # nothing is left to write
            else:
                continue  # woken by nothing to write (the mark of a write_first an earlier group already took)
            group = [lane.popleft() for _ in range(min(len(lane), MAX_WRITES_PER_COMMIT))]
            try:
                results = self.store.run_group([(fn, args, kwargs) for _, fn, args, kwargs in group], cut)
            except BaseException as exc:  # the writer must outlive any one group
                results = [_group_failure(exc) for _ in group]
            self._waiting.extendleft(reversed(group[len(results):]))
            self._settle([(token, result) for (token, *_), result in zip(group[: len(results)], results, strict=True)])

    def _collect(self, block: bool) -> bool:
        """File the jobs that came into ``_first`` and ``_waiting`` (waiting for something if ``block``);
        True once told to stop."""
        raise NotImplementedError

    def _cut(self) -> bool:
        """Asked between a group's jobs: whether a write someone waits on has come."""
        return bool(self._first)


class Database:
    """Async access to a Store: one writer, one reader thread; the event loop never blocks.

    Writes are group-committed: the writer takes every write queued while it
    was busy and commits them in one transaction (``Store.run_group``). Under
    load that turns hundreds of commits a second (each durable change, each
    acknowledgement of one, each metrics round) into a few dozen; idle, a
    write commits at once as before. Each ``write`` returns after the commit
    that contains it.

    A write an operator waits on (``write_first``) does not queue behind that
    work: at a thousand streams a wave of policy decisions fills groups of
    dozens of durable changes, tens of milliseconds each, and an operator's
    change queued behind them waited for the group in progress and then its own.

    ``writer="process"`` runs the writer in a process of its own
    (``supervisor.write_process``): every SQLite statement releases and
    retakes the GIL, and under load the event loop holds it, so a commit made
    on a thread of this process waits its turn for each statement. Its writes
    must then be ``Store`` methods, and their arguments and results picklable.
    """

    def __init__(self, path: str | Path, *, writer: str = "thread") -> None:
        if writer not in ("thread", "process"):
            raise ValueError(f"writer={writer!r}: use 'thread' or 'process'")
        self.store = Store(path)
        self._closed = False
        self._writer: Any
        try:
            self._reader = self.store.reader()
            if writer == "process":
                from supervisor.write_process import WriterProcess

                self._writer = WriterProcess(self.store.path, _settle_by_loop)
            else:
                self._writer = _WriterThread(self.store, _settle_by_loop)
        except BaseException:
            self.store.close()
            if hasattr(self, "_reader"):
                self._reader.close()
            raise
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="db-reader")

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._submit(False, fn, args, kwargs)

    async def write_first(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``write``, ahead of every write queued: for a write someone is waiting on.

        The group being committed stops after the job it is running and commits;
        this write then commits in a group of its own (with any other ``write_first``
        that arrived meanwhile), and the rest follow in their order. A group always
        runs at least one job, so even a flood of these alternates with the other
        writes instead of starving them (a metrics round is one job).
        """
        return await self._submit(True, fn, args, kwargs)

    async def _submit(self, first: bool, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._closed:
            raise RuntimeError("the database is closed: the supervisor is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writer.put(((loop, future), fn, args, kwargs), first)
        return await future

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, lambda: fn(self._reader, *args, **kwargs))

    def close(self) -> None:
        """Store every write queued so far, then close."""
        self._closed = True
        self._writer.close()
        self._read_pool.shutdown(wait=True)
        self.store.close()
        self._reader.close()


class _WriterThread(GroupWriter):
    """The writer on a thread of this process, fed through a queue."""

    def __init__(self, store: Store, settle: Settle) -> None:
        super().__init__(store, settle)
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        """What wakes the writer: a job, ``_FIRST`` (one waits in ``_first``), or None to stop."""
        self._thread = threading.Thread(target=self.run, name="db-writer", daemon=True)
        self._thread.start()

    def put(self, job: tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]], first: bool) -> None:
        if first:
            self._first.append(job)
            self._writes.put(_FIRST)
        else:
            self._writes.put(job)

    def close(self) -> None:
        """Return once every write queued before this is stored."""
        self._writes.put(None)
        self._thread.join()

    def _collect(self, block: bool) -> bool:
        stop = False
        if block:
            stop = self._file(self._writes.get())
        while True:
            try:
                item = self._writes.get_nowait()
            except queue.Empty:
                return stop
            stop = self._file(item) or stop

    def _file(self, item: Any) -> bool:
        if item is None:
            return True
        if item is not _FIRST:
            self._waiting.append(item)
        return False


_FIRST = object()


def _group_failure(exc: BaseException) -> Exception:
    """What each write of a failed group gets: its own exception, caused by the group's."""
    failure = RuntimeError(f"not stored: the transaction it shared failed with {type(exc).__name__}: {exc}")
    failure.__cause__ = exc
    return failure


def _settle_by_loop(done: list[tuple[Any, Any]]) -> None:
    """Hand each ((loop, future), result) to its future, on the future's loop (at once when that is this one)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for (loop, future), result in done:
        by_loop.setdefault(loop, []).append((future, result))
    here = asyncio._get_running_loop()
    for loop, settled in by_loop.items():
        if loop is here:
            _settle(settled)
            continue
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody waits for these
            pass


def _settle(done: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in done:
        if future.done():  # the caller was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
