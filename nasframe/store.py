"""The trial store: one SQLite database (WAL mode) in the run directory.

Written by the driver process only; workers return results. Each change is
one transaction, so a run killed at any point (``kill -9`` included) leaves a
consistent store: completed trials are never lost, trials that were running
are found with status ``running`` (with their last heartbeat) and run again
on resume, and the strategy state saved is the one that matches the trials
recorded with it.

A file nasframe did not write is never modified: a store is opened read-only
first and checked to be nasframe's (its tables and schema version) before
anything is written.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nasframe.architecture import Architecture
from nasframe.errors import ConfigError, RunError
from nasframe.objective import Provenance
from nasframe.trial import Trial, to_jsonable

SCHEMA_VERSION = 3
DB_NAME = "trials.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY,
    arch_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    "values" TEXT NOT NULL DEFAULT '{}',
    provenance TEXT NOT NULL DEFAULT '{}',
    feasible INTEGER,
    violation REAL NOT NULL DEFAULT 0,
    error TEXT,
    seed INTEGER NOT NULL,
    started REAL,
    finished REAL,
    attempt INTEGER NOT NULL DEFAULT 1,
    failure TEXT,
    heartbeat REAL,
    jobs TEXT NOT NULL DEFAULT '{}',
    intermediate TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS trials_arch ON trials(arch_id);
CREATE TABLE IF NOT EXISTS strategy_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    after_trial INTEGER,
    state TEXT NOT NULL,
    saved REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS strategy_journal (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    after_trial INTEGER,
    state TEXT NOT NULL,
    saved REAL NOT NULL
);
"""
#: columns added since schema 1 (an older store gets them when opened for writing)
_NEW_COLUMNS = (("failure", "TEXT"), ("heartbeat", "REAL"), ("jobs", "TEXT NOT NULL DEFAULT '{}'"),
                ("intermediate", "TEXT NOT NULL DEFAULT '{}'"))
#: a strategy state is written whole again once this many deltas follow the last whole one
#: (or as many as the run has trials, whichever is more): store writes stay O(1) per trial
SNAPSHOT_EVERY = 200


def _row_to_trial(row: sqlite3.Row, schema: int = SCHEMA_VERSION) -> Trial:
    feasible = row["feasible"]
    keys = row.keys()
    status = row["status"]
    if schema < 3 and status == "pruned":     # before schema 3, "pruned" meant infeasible
        status = "infeasible"
    return Trial(
        number=row["number"],
        arch=Architecture.from_json(row["arch"]),
        status=status,
        values=json.loads(row["values"]),
        provenance={k: Provenance.from_dict(v) for k, v in json.loads(row["provenance"]).items()},
        feasible=None if feasible is None else bool(feasible),
        violation=row["violation"],
        error=row["error"],
        seed=row["seed"],
        origin=row["origin"],
        started=row["started"],
        finished=row["finished"],
        attempt=row["attempt"],
        failure=row["failure"] if "failure" in keys else None,
        heartbeat=row["heartbeat"] if "heartbeat" in keys else None,
        jobs=json.loads(row["jobs"]) if "jobs" in keys and row["jobs"] else {},
        intermediate=json.loads(row["intermediate"]) if "intermediate" in keys
        and row["intermediate"] else {},
    )


class TrialStore:
    """Trials, the config snapshot and the strategy state of one run."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            self._db = _connect_read_only(self.path)
        else:
            try:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            except sqlite3.OperationalError as err:
                raise _explain(err, self.path) from None
        self._db.row_factory = sqlite3.Row
        #: the schema of the file (older ones are read as this one; migrated when written)
        self.schema = SCHEMA_VERSION
        self._deltas = 0            # strategy deltas written since the last whole state
        #: the file this store writes (device, inode) and its run id: checked before each write
        self._identity: tuple[int, int] | None = None
        self._run_id: str | None = None
        self.lost: str | None = None

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: dict[str, Any], config_text: str = "") -> TrialStore:
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: exists and is not a directory; choose a run directory "
                              "with --out DIR")
        path = run_dir / DB_NAME
        if path.exists():
            try:
                cls.open(run_dir, read_only=True).close()
            except (ConfigError, RunError) as err:
                raise ConfigError(f"{path} exists and is not a nasframe run ({err}); choose "
                                  "another directory with --out") from None
            raise ConfigError(f"{run_dir} already holds a run; continue it with `nasframe resume "
                              f"{run_dir}` or choose another directory with --out")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{run_dir}: cannot create the run directory ({err.strerror}); "
                              "choose another with --out") from None
        if not os.access(run_dir, os.W_OK):
            raise ConfigError(f"{run_dir}: not writable; choose another directory with --out")
        store = cls(path)
        store._run_id = uuid.uuid4().hex
        with store._tx(check=False):
            store._set_meta("run_id", store._run_id)
            store._set_meta("schema_version", SCHEMA_VERSION)
            store._set_meta("config", config)
            store._set_meta("config_text", config_text)
            store._set_meta("created", time.time())
            store._set_meta("elapsed", 0.0)
        store._watch()
        return store

    @classmethod
    def open(cls, run_dir: str | Path, read_only: bool = False) -> TrialStore:
        """The store of an existing run. It is first checked read-only to be a
        nasframe store (a file nasframe did not write is never modified); a
        schema-1 store gets schema 2's columns when opened for writing."""
        run_dir = Path(run_dir)
        if not run_dir.exists():
            raise ConfigError(f"{run_dir}: no such run directory; give the directory that "
                              "`nasframe run` wrote")
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: not a directory; give the directory that "
                              "`nasframe run` wrote")
        path = run_dir / DB_NAME
        if not path.is_file():
            raise ConfigError(f"{run_dir} is not a nasframe run directory (no {DB_NAME}); "
                              "give the directory that `nasframe run` wrote")
        probe = cls(path, read_only=True)
        try:
            version = probe.get_meta("schema_version")
            config = probe.get_meta("config")
        except sqlite3.DatabaseError as err:
            probe.close()
            raise ConfigError(f"{path}: a damaged nasframe trial store ({err}); restore it from a "
                              "backup or start a new run") from None
        if version not in (1, 2, SCHEMA_VERSION) or not isinstance(config, dict):
            probe.close()
            raise ConfigError(f"{path}: not a nasframe trial store of a known version "
                              f"(schema {version!r}, this nasframe reads 1 to {SCHEMA_VERSION})")
        if read_only:
            probe.schema = version
            return probe
        probe.close()
        store = cls(path)
        if version < SCHEMA_VERSION:
            store._migrate(version)
        store._count_deltas()
        store._run_id = store.get_meta("run_id")
        if store._run_id is None:          # a store written before run ids
            store._run_id = uuid.uuid4().hex
            store.set_meta("run_id", store._run_id)
        store._watch()
        return store

    def _migrate(self, version: int) -> None:
        """An older store brought to this schema: new columns; "pruned" (schema < 3: a broken
        constraint) becomes "infeasible"; the strategy state becomes the journal's first entry."""
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(trials)")}
        with self._tx(check=False):
            for name, kind in _NEW_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE trials ADD COLUMN {name} {kind}")
            if version < 3:
                self._db.execute("UPDATE trials SET status='infeasible' WHERE status='pruned'")
                row = self._db.execute("SELECT after_trial, state, saved FROM strategy_state "
                                       "WHERE id = 1").fetchone()
                if row is not None:
                    self._db.execute("INSERT INTO strategy_journal(kind, after_trial, state, saved) "
                                     "VALUES ('snapshot', ?, ?, ?)", tuple(row))
            self._set_meta("schema_version", SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    # -- the file is still ours --------------------------------------------
    def _watch(self) -> None:
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def check_identity(self) -> None:
        """Raise :class:`StoreLost` when the file at the store's path is no longer the one
        this store writes (deleted, or replaced by another file or another run's store).
        What this store holds is first saved next to it (``trials.recovered-*.db``)."""
        if self.lost is not None:
            raise StoreLost(self.lost)
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
            what = None if (st.st_dev, st.st_ino) == self._identity else "replaced by another file"
        except FileNotFoundError:
            what = "deleted"
        if what is None:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone()
            if row is None or json.loads(row[0]) != self._run_id:
                what = "overwritten by another run's store"
        if what is None:
            return
        saved = self._recover()
        self._disown_wal()
        self.lost = (f"the trial store {self.path} was {what} while this run was writing it; "
                     "nothing more is written there. "
                     + (f"Every trial of this run so far is saved in {saved}: move it back to "
                        f"{self.path} (after moving away what is there now), then "
                        f"`nasframe resume {self.path.parent}`" if saved else
                        "Its trials could not be saved elsewhere"))
        raise StoreLost(self.lost)

    def _disown_wal(self) -> None:
        """Remove this connection's ``-wal``/``-shm`` files from the store's path: left
        there, SQLite would apply this run's write-ahead log to whatever file now sits at
        the path (another run's store) the next time anyone opens it. Only files this
        process has open are removed (Linux: /proc/self/fd)."""
        mine = set()
        fds = Path("/proc/self/fd")
        if not fds.is_dir():
            return
        for fd in fds.iterdir():
            try:
                st = os.stat(fd)
            except OSError:
                continue
            mine.add((st.st_dev, st.st_ino))
        for suffix in ("-wal", "-shm"):
            p = self.path.with_name(self.path.name + suffix)
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in mine:
                with contextlib.suppress(OSError):
                    p.unlink()

    def _recover(self) -> Path | None:
        """Copy what this connection sees (the file it opened, even if deleted) to a new file."""
        target = self.path.with_name(f"trials.recovered-{time.strftime('%Y%m%d-%H%M%S')}-"
                                     f"{os.getpid()}.db")
        try:
            dest = sqlite3.connect(target)
            try:
                self._db.backup(dest)
            finally:
                dest.close()
            return target
        except (sqlite3.Error, OSError):
            return None

    def _tx(self, check: bool = True):
        if check:
            self.check_identity()
        return _Transaction(self._db, self.path)

    # -- meta ------------------------------------------------------------
    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                         (key, json.dumps(value)))

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx():
            self._set_meta(key, value)

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    @property
    def config(self) -> dict[str, Any]:
        return self.get_meta("config")

    # -- trials ----------------------------------------------------------
    def next_number(self) -> int:
        row = self._db.execute("SELECT MAX(number) AS n FROM trials").fetchone()
        return 0 if row["n"] is None else row["n"] + 1

    def start(self, trials: Sequence[Trial], strategy_state: dict[str, Any] | None = None) -> None:
        """Record trials as running (and the strategy state after the ask), atomically."""
        now = time.time()
        with self._tx():
            for t in trials:
                self._db.execute(
                    "INSERT OR REPLACE INTO trials(number, arch_id, arch, origin, status, seed, "
                    "started, attempt, heartbeat, jobs) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                    (t.number, t.arch.id, t.arch.to_json(), t.origin, t.seed, t.started, t.attempt,
                     now, json.dumps(dict(t.jobs))))
            if strategy_state is not None:
                self._save_state(strategy_state, None)

    def finish(self, trials: Iterable[Trial], strategy_state: dict[str, Any] | None = None,
               elapsed: float | None = None) -> None:
        """Record finished trials, the strategy state after telling them, and the run time."""
        last = None
        with self._tx():
            for t in trials:
                self._db.execute(
                    'UPDATE trials SET status=?, "values"=?, provenance=?, feasible=?, violation=?, '
                    "error=?, started=?, finished=?, attempt=?, failure=?, jobs=?, intermediate=? "
                    "WHERE number=?",
                    (t.status, json.dumps(to_jsonable(dict(t.values))),
                     json.dumps({k: p.to_dict() for k, p in t.provenance.items()}, default=str),
                     None if t.feasible is None else int(t.feasible),
                     t.violation if t.violation != float("inf") else 1e300,
                     t.error, t.started, t.finished, t.attempt, t.failure,
                     json.dumps(to_jsonable(dict(t.jobs)), default=str),
                     json.dumps(to_jsonable(dict(t.intermediate)), default=str), t.number))
                last = t.number
            if strategy_state is not None:
                self._save_state(strategy_state, last)
            if elapsed is not None:
                self._set_meta("elapsed", elapsed)

    def mark(self, numbers: Sequence[int], failure: str) -> None:
        """Note why running trials stopped without a result (``interrupted``), so that a
        resume re-runs them without counting an attempt."""
        with self._tx():
            self._db.executemany("UPDATE trials SET failure=? WHERE number=? AND status='running'",
                                 [(failure, n) for n in numbers])

    def set_jobs(self, number: int, jobs: dict[str, Any]) -> None:
        """Store a running trial's device-job references the moment they exist."""
        with self._tx():
            self._db.execute("UPDATE trials SET jobs=? WHERE number=?",
                             (json.dumps(to_jsonable(jobs), default=str), number))

    def trials(self, status: str | None = None) -> list[Trial]:
        if status is None:
            rows = self._db.execute("SELECT * FROM trials ORDER BY number").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM trials WHERE status=? ORDER BY number",
                                    (status,)).fetchall()
        return [_row_to_trial(r, self.schema) for r in rows]

    def trial(self, number: int) -> Trial:
        row = self._db.execute("SELECT * FROM trials WHERE number=?", (number,)).fetchone()
        if row is None:
            raise KeyError(number)
        return _row_to_trial(row, self.schema)

    def count(self, *statuses: str) -> int:
        marks = ",".join("?" * len(statuses))
        return self._db.execute(f"SELECT COUNT(*) FROM trials WHERE status IN ({marks})",
                                statuses).fetchone()[0]

    # -- strategy state --------------------------------------------------
    @property
    def deltas_since_snapshot(self) -> int:
        """Strategy deltas written after the last whole state (the journal's length)."""
        return self._deltas

    def _save_state(self, entry: Any, after_trial: int | None) -> None:
        """``entry``: a whole state (a dict, or ``("snapshot", dict)``) or ``("delta", dict)``
        appended to the journal; a whole state drops the entries before it."""
        kind, state = entry if isinstance(entry, tuple) else ("snapshot", entry)
        if state is None:
            return
        cur = self._db.execute("INSERT INTO strategy_journal(kind, after_trial, state, saved) "
                               "VALUES (?, ?, ?, ?)", (kind, after_trial, json.dumps(state),
                                                      time.time()))
        if kind == "snapshot":
            self._db.execute("DELETE FROM strategy_journal WHERE seq < ?", (cur.lastrowid,))
            self._deltas = 0
        else:
            self._deltas += 1

    def strategy_journal(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The last whole strategy state and the deltas written after it, in order."""
        if self.schema < 3:
            row = self._db.execute("SELECT state FROM strategy_state WHERE id = 1").fetchone()
            return (None if row is None else json.loads(row["state"])), []
        rows = self._db.execute("SELECT kind, state FROM strategy_journal ORDER BY seq").fetchall()
        snapshot, deltas = None, []
        for r in rows:
            if r["kind"] == "snapshot":
                snapshot, deltas = json.loads(r["state"]), []
            else:
                deltas.append(json.loads(r["state"]))
        return snapshot, deltas

    def strategy_state(self) -> dict[str, Any] | None:
        """The last whole strategy state (deltas after it are in :meth:`strategy_journal`)."""
        return self.strategy_journal()[0]

    def _count_deltas(self) -> None:
        if self.schema < 3:
            return
        row = self._db.execute("SELECT COUNT(*) FROM strategy_journal WHERE seq > (SELECT "
                               "COALESCE(MAX(seq), 0) FROM strategy_journal WHERE "
                               "kind = 'snapshot')").fetchone()
        self._deltas = int(row[0])

    def set_intermediate(self, number: int, intermediate: dict[str, Any]) -> None:
        """A running trial's intermediate values (pruning), stored as they arrive."""
        with self._tx():
            self._db.execute("UPDATE trials SET intermediate=? WHERE number=?",
                             (json.dumps(to_jsonable(intermediate)), number))


class Heartbeat:
    """Stamps the run's running trials (and the run) with the time, every ``every``
    seconds, from a thread with its own connection: a resume (or ``nasframe
    status``) tells a live run from a crashed one by how old the stamp is."""

    def __init__(self, path: Path, every: float = 5.0):
        import threading

        self.path, self.every = path, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nasframe-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            while not self._stop.wait(self.every):
                now = time.time()
                try:
                    db.execute("UPDATE trials SET heartbeat=? WHERE status='running'", (now,))
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('heartbeat', ?)",
                               (json.dumps(now),))
                except sqlite3.Error:
                    pass   # a busy database: the next beat tries again
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class StoreLost(RunError):
    """The run's trial store file was deleted or replaced while the run was writing it."""


def _explain(err: sqlite3.OperationalError, path: Path) -> RunError:
    """SQLite's "database is locked" / "readonly database" with the file and the fix."""
    text = str(err)
    if "locked" in text or "busy" in text:
        from nasframe.lock import open_by

        others = [p for p in open_by(path) if p != os.getpid()]
        who = (f"; processes with it open: {', '.join(map(str, others[:5]))}" if others else "")
        return RunError(f"{path}: the trial store stayed locked by another process for 30 s "
                        f"({text}){who}; stop that process (or wait for it), then resume")
    if "readonly" in text or "read-only" in text:
        return RunError(f"{path}: cannot write the trial store ({text}): the file or its folder "
                        f"{path.parent} is read-only (or owned by another user); make it writable, "
                        "or copy the run directory somewhere writable and resume there")
    if "disk" in text and "full" in text:
        return RunError(f"{path}: the disk is full ({text}); free space, then resume")
    return RunError(f"{path}: {text}")


class _Transaction:
    def __init__(self, db: sqlite3.Connection, path: Path | None = None):
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise _explain(err, self.path or Path("trials.db")) from None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as err:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise _explain(err, self.path or Path("trials.db")) from None
        else:
            self.db.execute("ROLLBACK")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that checks the file is a nasframe store; works in a
    read-only directory (``immutable`` when the WAL files cannot be created)."""
    uri = path.resolve().as_uri()
    writable = os.access(path.parent, os.W_OK)
    db = sqlite3.connect(f"{uri}?mode=ro" + ("" if writable else "&immutable=1"), uri=True,
                         isolation_level=None, timeout=30)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as err:
        db.close()
        raise ConfigError(f"{path}: not a nasframe trial store ({err}); give the run directory "
                          "that `nasframe run` wrote") from None
    if not {"meta", "trials", "strategy_state"} <= tables:
        db.close()
        what = "an empty file" if path.stat().st_size == 0 else "a database without nasframe's tables"
        raise ConfigError(f"{path}: not a nasframe trial store ({what}); give the run directory "
                          "that `nasframe run` wrote")
    return db
