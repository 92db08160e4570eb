"""How far a run's input has been acknowledged, kept in SQLite so a crash loses nothing.

A run is keyed by (bundle, absolute input path, fingerprint of the input's first KB). Its
checkpoint says:

- ``line``/``offset``: every item of lines <= ``line`` reached a final outcome (delivered,
  dropped or dead-lettered); a rerun seeks to ``offset`` and starts at ``line + 1``;
- ``acked``: items of later lines already acknowledged (requests finish out of order, so one
  slow request must not make a rerun send again everything that finished after it);
- ``fed``: lines <= ``fed`` were mapped before, so their mapping dead letters are written
  already and a rerun does not write them twice;
- ``complete``: the whole input (of ``size`` bytes) is done; a rerun sends nothing.

Acknowledgements are committed as soon as they come (group commit: one transaction for all
that arrived during the previous one), in WAL mode, so only requests in flight at a crash, or
answered in the last moments, can go twice.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from moerules.engine.connector import Item

__all__ = ["AckTracker", "Checkpoint", "CheckpointStore", "input_fingerprint"]

FINGERPRINT_BYTES = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    bundle TEXT NOT NULL,
    input TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    line INTEGER NOT NULL DEFAULT 0,
    byte_offset INTEGER NOT NULL DEFAULT 0,
    fed INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    updated REAL,
    UNIQUE (bundle, input, fingerprint)
);
CREATE TABLE IF NOT EXISTS acks (
    run INTEGER NOT NULL REFERENCES runs(id),
    last_line INTEGER NOT NULL,
    refs BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS acks_by_run ON acks (run, last_line);
"""


def input_fingerprint(path: Path) -> str:
    """A hash of the first KB: survives appends (once the file holds a KB), tells files apart."""
    with path.open("rb") as f:
        head = f.read(FINGERPRINT_BYTES)
    return hashlib.sha256(head).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A run's saved progress (see the module docstring)."""

    line: int = 0
    offset: int = 0
    fed: int = 0
    complete: bool = False
    size: int | None = None
    acked: frozenset[tuple[int, int]] = frozenset()


class CheckpointStore:
    """The SQLite file holding every run's checkpoint under a state directory."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        # autocommit mode: transactions are explicit. Commits may run in a worker thread, one
        # at a time (the delivery's checkpoint task awaits each), hence check_same_thread off.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a killed process; only a power cut may lose the last commits
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def open_run(self, bundle: str, input_path: str, fingerprint: str) -> int:
        self.db.execute("INSERT OR IGNORE INTO runs (bundle, input, fingerprint, updated) "
                        "VALUES (?, ?, ?, ?)", (bundle, input_path, fingerprint, self.clock()))
        row = self.db.execute("SELECT id FROM runs WHERE bundle=? AND input=? AND fingerprint=?",
                              (bundle, input_path, fingerprint)).fetchone()
        return int(row[0])

    def load(self, run: int) -> Checkpoint:
        line, offset, fed, complete, size = self.db.execute(
            "SELECT line, byte_offset, fed, complete, size FROM runs WHERE id=?", (run,)
        ).fetchone()
        acked: set[tuple[int, int]] = set()
        for (refs,) in self.db.execute("SELECT refs FROM acks WHERE run=? AND last_line>?",
                                       (run, line)):
            acked.update((r[0], r[1]) for r in orjson.loads(refs) if r[0] > line)
        return Checkpoint(line, offset, fed, bool(complete), size, frozenset(acked))

    def reset(self, run: int) -> None:
        """Forget the run's progress (``--from-start``)."""
        with self._transaction():
            self.db.execute("DELETE FROM acks WHERE run=?", (run,))
            self.db.execute("UPDATE runs SET line=0, byte_offset=0, fed=0, complete=0, "
                            "size=NULL, updated=? WHERE id=?", (self.clock(), run))

    def save(self, run: int, acked: Iterable[tuple[int, int]], line: int, offset: int,
             fed: int, *, prune: bool) -> None:
        """Commit acknowledgements and the watermark in one transaction."""
        refs = [ref for ref in acked if ref[0] > line]
        with self._transaction():
            if refs:
                self.db.execute("INSERT INTO acks (run, last_line, refs) VALUES (?, ?, ?)",
                                (run, max(r[0] for r in refs), orjson.dumps(refs)))
            self.db.execute("UPDATE runs SET line=?, byte_offset=?, fed=MAX(fed, ?), updated=? "
                            "WHERE id=?", (line, offset, fed, self.clock(), run))
            if prune:
                self.db.execute("DELETE FROM acks WHERE run=? AND last_line<=?", (run, line))

    def complete(self, run: int, line: int, offset: int, size: int) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM acks WHERE run=?", (run,))
            self.db.execute("UPDATE runs SET line=?, byte_offset=?, fed=MAX(fed, ?), complete=1, "
                            "size=?, updated=? WHERE id=?",
                            (line, offset, line, size, self.clock(), run))

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


class AckTracker:
    """Counts, per input line, the items not yet at a final outcome.

    Lines are fed in order; the watermark is the line before the oldest line with an open item
    (or the last line fed when none is open). ``offset`` is where the watermark's next line
    starts, so a rerun can seek straight to it.
    """

    def __init__(self, line: int = 0, offset: int = 0) -> None:
        self._open: dict[int, list[int]] = {}  # line -> [open items, start offset]
        self._order: deque[int] = deque()
        self._line_start = offset
        self.fed_line = line
        self.fed_offset = offset
        self.open_items = 0
        self.delivered = 0

    def begin_line(self, offset: int) -> None:
        self._line_start = offset

    def add(self, item: Item) -> None:
        line = item.ref[0]
        entry = self._open.get(line)
        if entry is None:
            self._open[line] = [1, self._line_start]
            self._order.append(line)
        else:
            entry[0] += 1
        self.open_items += 1

    def end_line(self, line: int, end_offset: int) -> None:
        self.fed_line = line
        self.fed_offset = end_offset

    def resolve(self, items: Iterable[Item], delivered: int) -> None:
        """``items`` reached a final outcome; ``delivered`` of them were delivered."""
        self.delivered += delivered
        for item in items:
            entry = self._open[item.ref[0]]
            entry[0] -= 1
            if entry[0] == 0:
                del self._open[item.ref[0]]
            self.open_items -= 1

    @property
    def watermark(self) -> tuple[int, int]:
        """(line, offset): everything up to ``line`` is final; its next line starts there."""
        order = self._order
        while order and order[0] not in self._open:
            order.popleft()
        if not order:
            return self.fed_line, self.fed_offset
        first = order[0]
        return first - 1, self._open[first][1]
