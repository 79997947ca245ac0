"""The results database: SQLite in WAL mode at `<out>/results.db`, written by the driver only.

    runs(id, name, config, status, started, finished, summary, error)
    epochs(run_id, epoch, split, metric, value)

A run's summary and all its epoch rows are written in one transaction when it finishes,
so a sweep killed at any moment leaves no half-written run: a run still marked `running`
was interrupted and is run again on resume.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dpmed.bench.sweep import PlannedRun
from dpmed.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    started REAL,
    finished REAL,
    summary TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    split TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, epoch, split, metric)
);
"""


TABLES = {"runs", "epochs"}


class ResultsStore:
    """The database at `path`, created when absent. `read_only` (for readers such as the
    report) never writes it nor creates a file beside it, and needs dpmed's tables.
    A file that is not SQLite, or a SQLite database of other tables, is refused."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.db = _connect(path, read_only=read_only)
        if not read_only:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)

    @staticmethod
    def check(path: Path) -> None:
        """Refuse `path` before any work unless it is absent, empty or a dpmed results
        database; nothing is written."""
        if path.exists() and path.stat().st_size:
            ResultsStore(path, read_only=True).close()

    def close(self) -> None:
        self.db.close()

    def plan(self, runs: Iterable[PlannedRun]) -> None:
        """Add runs not yet in the database as pending; known runs keep their status."""
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO runs (id, name, config, status) VALUES (?, ?, ?, 'pending')",
                [(r.id, r.name, json.dumps(r.config.to_dict())) for r in runs],
            )

    def status(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id, status FROM runs WHERE id IN ({marks})", ids)
        return dict(rows.fetchall())

    def start(self, run_id: str) -> None:
        with self._transaction():
            self.db.execute(
                "UPDATE runs SET status='running', started=?, finished=NULL, error=NULL WHERE id=?",
                (time.time(), run_id),
            )

    def finish(self, run_id: str, summary: dict[str, Any], epochs: list[dict]) -> None:
        """The summary and every epoch row, in one transaction."""
        rows = [
            (run_id, e["epoch"], split, metric, value)
            for e in epochs
            for split, metrics in e["metrics"].items()
            for metric, value in metrics.items()
        ]
        with self._transaction():
            self.db.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            self.db.executemany("INSERT INTO epochs VALUES (?, ?, ?, ?, ?)", rows)
            self.db.execute(
                "UPDATE runs SET status='finished', finished=?, summary=?, error=NULL WHERE id=?",
                (time.time(), json.dumps(summary), run_id),
            )

    def fail(self, run_id: str, error: str) -> None:
        with self._transaction():
            self.db.execute(
                "UPDATE runs SET status='failed', finished=?, error=? WHERE id=?",
                (time.time(), error, run_id),
            )

    def finished_runs(self) -> list[dict[str, Any]]:
        """Every finished run: id, name, config, summary (parsed), started and finished
        (Unix times), in name order."""
        rows = self.db.execute(
            "SELECT id, name, config, summary, started, finished FROM runs "
            "WHERE status='finished' ORDER BY name"
        )
        return [
            {
                "id": i,
                "name": n,
                "config": json.loads(c),
                "summary": json.loads(s),
                "started": start,
                "finished": end,
            }
            for i, n, c, s, start, end in rows
        ]

    def epochs(self, run_id: str) -> list[tuple[int, str, str, float | None]]:
        rows = self.db.execute(
            "SELECT epoch, split, metric, value FROM epochs WHERE run_id=? ORDER BY epoch",
            (run_id,),
        )
        return rows.fetchall()

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection to `path`; a DataError unless it is SQLite holding dpmed's tables (or,
    opened to write, no tables yet)."""
    db = None
    try:
        if read_only:
            db = sqlite3.connect(_read_only_uri(path), uri=True)
        else:
            db = sqlite3.connect(path, isolation_level=None)  # explicit transactions
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        if db:
            db.close()
        raise DataError(
            f"{path} is not a SQLite database ({exc}); move it away or choose another folder"
        ) from None
    if (tables or read_only) and not TABLES.issubset(tables):
        db.close()
        raise DataError(
            f"{path} is not a dpmed results database (tables: "
            f"{', '.join(sorted(tables)) or 'none'}); move it away or choose another folder"
        )
    return db


def _read_only_uri(path: Path) -> str:
    """SQLite's URI for reading `path` without writing anything: `mode=ro`, and where no
    writer holds it (no -wal file beside it) `immutable=1`, since a read-only connection to
    a WAL database would otherwise create its -wal and -shm files."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return uri if Path(f"{path}-wal").exists() else uri + "&immutable=1"
