"""The trial store: one SQLite database (WAL mode) in the run directory.

Written by the driver process only; workers return results. Each change is
one transaction, so a run killed at any point (``kill -9`` included) leaves a
consistent store: completed trials are never lost, trials that were running
are found with status ``running`` and run again on resume, and the strategy
state saved is the one that matches the trials recorded with it.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nasframe.architecture import Architecture
from nasframe.errors import ConfigError, RunError
from nasframe.objective import Provenance
from nasframe.trial import Trial, to_jsonable

SCHEMA_VERSION = 1
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
    attempt INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS trials_arch ON trials(arch_id);
CREATE TABLE IF NOT EXISTS strategy_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    after_trial INTEGER,
    state TEXT NOT NULL,
    saved REAL NOT NULL
);
"""


def _row_to_trial(row: sqlite3.Row) -> Trial:
    feasible = row["feasible"]
    return Trial(
        number=row["number"],
        arch=Architecture.from_json(row["arch"]),
        status=row["status"],
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
    )


class TrialStore:
    """Trials, the config snapshot and the strategy state of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: dict[str, Any], config_text: str = "") -> TrialStore:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / DB_NAME
        if path.exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with `nasframe resume {run_dir}` "
                           "or choose another directory with --out")
        store = cls(path)
        with store._tx():
            store._set_meta("schema_version", SCHEMA_VERSION)
            store._set_meta("config", config)
            store._set_meta("config_text", config_text)
            store._set_meta("created", time.time())
            store._set_meta("elapsed", 0.0)
        return store

    @classmethod
    def open(cls, run_dir: str | Path) -> TrialStore:
        path = Path(run_dir) / DB_NAME
        if not path.is_file():
            raise ConfigError(f"{run_dir} is not a nasframe run directory (no {DB_NAME}); "
                           "give the directory that `nasframe run` wrote")
        store = cls(path)
        version = store.get_meta("schema_version")
        if version != SCHEMA_VERSION:
            raise RunError(f"{path}: store schema {version} is not supported (expected {SCHEMA_VERSION})")
        return store

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return _Transaction(self._db)

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
        with self._tx():
            for t in trials:
                self._db.execute(
                    "INSERT OR REPLACE INTO trials(number, arch_id, arch, origin, status, seed, started, attempt)"
                    " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                    (t.number, t.arch.id, t.arch.to_json(), t.origin, t.seed, t.started, t.attempt))
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
                    "error=?, started=?, finished=?, attempt=? WHERE number=?",
                    (t.status, json.dumps(to_jsonable(dict(t.values))),
                     json.dumps({k: p.to_dict() for k, p in t.provenance.items()}, default=str),
                     None if t.feasible is None else int(t.feasible),
                     t.violation if t.violation != float("inf") else 1e300,
                     t.error, t.started, t.finished, t.attempt, t.number))
                last = t.number
            if strategy_state is not None:
                self._save_state(strategy_state, last)
            if elapsed is not None:
                self._set_meta("elapsed", elapsed)

    def trials(self, status: str | None = None) -> list[Trial]:
        if status is None:
            rows = self._db.execute("SELECT * FROM trials ORDER BY number").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM trials WHERE status=? ORDER BY number",
                                    (status,)).fetchall()
        return [_row_to_trial(r) for r in rows]

    def trial(self, number: int) -> Trial:
        row = self._db.execute("SELECT * FROM trials WHERE number=?", (number,)).fetchone()
        if row is None:
            raise KeyError(number)
        return _row_to_trial(row)

    def count(self, *statuses: str) -> int:
        marks = ",".join("?" * len(statuses))
        return self._db.execute(f"SELECT COUNT(*) FROM trials WHERE status IN ({marks})",
                                statuses).fetchone()[0]

    # -- strategy state --------------------------------------------------
    def _save_state(self, state: dict[str, Any], after_trial: int | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO strategy_state(id, after_trial, state, saved) "
                         "VALUES (1, ?, ?, ?)", (after_trial, json.dumps(state), time.time()))

    def strategy_state(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT state FROM strategy_state WHERE id = 1").fetchone()
        return None if row is None else json.loads(row["state"])


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
