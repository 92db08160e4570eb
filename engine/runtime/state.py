"""How far a run's input has been acknowledged, kept in SQLite so a crash loses nothing.

A run is keyed by (bundle, absolute input path, fingerprint of the input's first KB). Its
checkpoint says:

- ``line``/``offset``: every item of lines <= ``line`` reached a final outcome (delivered,
  dropped or dead-lettered); a rerun seeks to ``offset`` and starts at ``line + 1``;
- ``acked``: items of later lines already acknowledged (requests finish out of order, so one
  slow request must not make a rerun send again everything that finished after it);
- ``fed``: lines <= ``fed`` were mapped before, so their mapping dead letters are written
  already and a rerun does not write them twice;
- ``complete``: the whole input (of ``size`` bytes) is done; a rerun sends nothing;
- ``hashed``/``digest``: the SHA-256 of the input's first ``hashed`` bytes, every byte any
  of the above speaks of. A rerun resumes only when the file still starts with exactly
  those bytes (an input that grew by appends does); any other file at the same path (a daily
  export with the same header) is read as a new input, from line 1, and the run says so.

Acknowledgements are committed as soon as they come (group commit: one transaction for all
that arrived during the previous one), in WAL mode, so only requests in flight at a crash, or
answered in the last moments, can go twice.

The file carries its format (``PRAGMA user_version``); a file of another format, or one that
is not SQLite at all, is a :class:`StateError` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
from moerules.engine.connector import Item
from moerules.engine.errors import StateError

__all__ = [
    "STATE_FORMAT",
    "AckTracker",
    "Checkpoint",
    "CheckpointStore",
    "InputHasher",
    "Resumption",
    "check_state_dir",
    "input_fingerprint",
]

FINGERPRINT_BYTES = 1024
STATE_FORMAT = 1  # PRAGMA user_version of a state.sqlite this code reads and writes
_HASH_BLOCK = 1 << 20

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
    hashed INTEGER NOT NULL DEFAULT 0,
    digest TEXT,
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
    """A hash of the first KB: survives appends (once the file holds a KB), tells files apart.

    It only picks the checkpoint; whether the checkpoint still applies is the prefix hash's
    call (see :class:`InputHasher`)."""
    with path.open("rb") as f:
        head = f.read(FINGERPRINT_BYTES)
    return hashlib.sha256(head).hexdigest()[:32]


class InputHasher:
    """The SHA-256 of an input file's first ``position`` bytes, carried forward as a run's
    checkpoint moves on. It reads the file through its own handle (the pages are cached:
    the reader has just read them), once over the whole run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self.position = 0

    def advance(self, offset: int) -> None:
        """Hash on to ``offset`` (or to the end of the file, if it is shorter)."""
        if offset <= self.position:
            return
        if self._file is None:
            self._file = self.path.open("rb")
            self._file.seek(self.position)
        read, update = self._file.read, self._hash.update
        while self.position < offset:
            block = read(min(_HASH_BLOCK, offset - self.position))
            if not block:
                break
            update(block)
            self.position += len(block)

    def digest(self) -> str:
        return self._hash.hexdigest()

    def restart(self) -> None:
        self.close()
        self._hash = hashlib.sha256()
        self.position = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A run's saved progress (see the module docstring)."""

    line: int = 0
    offset: int = 0
    fed: int = 0
    complete: bool = False
    size: int | None = None
    acked: frozenset[tuple[int, int]] = frozenset()
    hashed: int = 0
    digest: str | None = None


@dataclass
class Resumption:
    """Where a run over a file starts: its checkpoint (None: the input is done already), and
    what the runner should be told about it."""

    run: int
    checkpoint: Checkpoint | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def check_state_dir(path: Path) -> None:
    """StateError when ``path`` exists and is not a directory (missing ones are created)."""
    if path.exists() and not path.is_dir():
        raise StateError(
            f"the state directory {path} is a file; pass --state-dir a directory "
            "(it is created if missing)"
        )


class CheckpointStore:
    """The SQLite file holding every run's checkpoint under a state directory."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._hashers: dict[int, InputHasher] = {}
        check_state_dir(path.parent)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state directory {path.parent}: "
                f"{exc.strerror or exc}; pass --state-dir a directory moerules "
                "can write"
            ) from None
        if path.is_dir():
            raise StateError(
                f"{path} is a directory, not a state file; move it away or pass another --state-dir"
            )
        try:
            # autocommit mode: transactions are explicit. Commits may run in a worker thread,
            # one at a time (the delivery's checkpoint task awaits each), hence
            # check_same_thread off.
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot open the state file {path}: {_reason(exc)}; check that "
                "its directory is writable, or pass another --state-dir"
            ) from None
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise StateError(
                    f"cannot write the state file {path}: {_reason(exc)}; pass "
                    "--state-dir a directory moerules can write"
                ) from None
            raise StateError(
                f"{path} is corrupt or not a moerules state file "
                f"({_reason(exc)}); move it away to start over (every input is "
                "then read from line 1), or pass another --state-dir"
            ) from None
        except StateError:
            self.db.close()
            raise

    def _setup(self) -> None:
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a killed process; only a power cut may lose the last commits
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and version == 0:  # a new file
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={STATE_FORMAT}")
            return
        if version > STATE_FORMAT:
            raise StateError(
                f"{self.path} was written by a newer moerules (state format "
                f"{version}; this one reads {STATE_FORMAT}): run that version, or "
                "pass another --state-dir"
            )
        if version < STATE_FORMAT or "runs" not in tables:
            raise StateError(
                f"{self.path} holds checkpoints in an older format ({version}; "
                f"this moerules reads {STATE_FORMAT}): finish those runs with the "
                "moerules that started them, or move the file away to start over"
            )
        db.executescript(_SCHEMA)  # a table dropped by hand comes back empty

    def close(self) -> None:
        for hasher in self._hashers.values():
            hasher.close()
        self._hashers.clear()
        self.db.close()

    def open_run(self, bundle: str, input_path: str, fingerprint: str) -> int:
        self.db.execute(
            "INSERT OR IGNORE INTO runs (bundle, input, fingerprint, updated) VALUES (?, ?, ?, ?)",
            (bundle, input_path, fingerprint, self.clock()),
        )
        row = self.db.execute(
            "SELECT id FROM runs WHERE bundle=? AND input=? AND fingerprint=?",
            (bundle, input_path, fingerprint),
        ).fetchone()
        return int(row[0])

    def resume(
        self, bundle: str, path: Path, *, from_start: bool = False, shown_as: str | None = None
    ) -> Resumption:
        """Open the run of ``bundle`` over the file ``path`` and decide where it starts.

        The checkpoint applies only when the file still starts with the bytes it speaks of
        (their hash is checked here, reading them once); otherwise the file is a new input,
        read from line 1. ``shown_as`` is how messages name the input (default: the path).
        """
        name = shown_as or str(path)
        run = self.open_run(bundle, str(path), input_fingerprint(path))
        hasher = self._hashers[run] = InputHasher(path)
        if from_start:
            self.reset(run)
        saved = self.load(run)
        resumed = Resumption(run, saved)
        if saved.hashed:
            hasher.advance(saved.hashed)
            if hasher.position < saved.hashed or hasher.digest() != saved.digest:
                how = (
                    f"it is shorter than the {saved.hashed} bytes read before"
                    if hasher.position < saved.hashed
                    else f"its first {saved.hashed} bytes differ"
                )
                changed = (
                    f"{name} is not the input its checkpoint in {self.path} was made from ({how})"
                )
                if saved.complete:
                    resumed.notes.append(f"{changed}: read as a new input, from line 1")
                else:
                    resumed.warnings.append(
                        f"{changed}; the unfinished run of that earlier input (stopped after "
                        f"line {saved.line}) cannot be resumed. {name} is read as a new input, "
                        "from line 1"
                    )
                self.reset(run)
                resumed.checkpoint = Checkpoint()
                return resumed
        size = path.stat().st_size
        if saved.complete and saved.size == size:
            resumed.checkpoint = None
            resumed.notes.append(
                f"already complete: {name} was fully delivered by an earlier run (checkpoint "
                f"in {self.path}); nothing sent. Use --from-start to send it again"
            )
        elif saved.line:
            resumed.notes.append(f"resumed after line {saved.line} (checkpoint in {self.path})")
        return resumed

    def load(self, run: int) -> Checkpoint:
        line, offset, fed, complete, size, hashed, digest = self.db.execute(
            "SELECT line, byte_offset, fed, complete, size, hashed, digest FROM runs WHERE id=?",
            (run,),
        ).fetchone()
        acked: set[tuple[int, int]] = set()
        for (refs,) in self.db.execute(
            "SELECT refs FROM acks WHERE run=? AND last_line>?", (run, line)
        ):
            acked.update((r[0], r[1]) for r in orjson.loads(refs) if r[0] > line)
        return Checkpoint(line, offset, fed, bool(complete), size, frozenset(acked), hashed, digest)

    def reset(self, run: int) -> None:
        """Forget the run's progress (``--from-start``, or another input at the path)."""
        with self._transaction():
            self.db.execute("DELETE FROM acks WHERE run=?", (run,))
            self.db.execute(
                "UPDATE runs SET line=0, byte_offset=0, fed=0, complete=0, "
                "size=NULL, hashed=0, digest=NULL, updated=? WHERE id=?",
                (self.clock(), run),
            )
        hasher = self._hashers.get(run)
        if hasher is not None:
            hasher.restart()

    def _hashed(self, run: int, fed_offset: int | None) -> tuple[int, str | None] | None:
        """(bytes hashed, digest) once the run's hash covers ``fed_offset``; None when no
        hasher follows the run (a store used without ``resume``)."""
        hasher = self._hashers.get(run)
        if hasher is None or fed_offset is None:
            return None
        hasher.advance(fed_offset)
        return hasher.position, hasher.digest()

    def save(
        self,
        run: int,
        acked: Iterable[tuple[int, int]],
        line: int,
        offset: int,
        fed: int,
        *,
        prune: bool,
        fed_offset: int | None = None,
    ) -> None:
        """Commit acknowledgements and the watermark in one transaction.

        ``fed_offset`` (where line ``fed`` ends) moves the input's prefix hash on, so the
        checkpoint vouches for every byte it speaks of."""
        refs = [ref for ref in acked if ref[0] > line]
        hashed = self._hashed(run, fed_offset)
        with self._transaction():
            if refs:
                self.db.execute(
                    "INSERT INTO acks (run, last_line, refs) VALUES (?, ?, ?)",
                    (run, max(r[0] for r in refs), orjson.dumps(refs)),
                )
            self.db.execute(
                "UPDATE runs SET line=?, byte_offset=?, fed=MAX(fed, ?), updated=? WHERE id=?",
                (line, offset, fed, self.clock(), run),
            )
            if hashed is not None:
                self.db.execute(
                    "UPDATE runs SET hashed=?, digest=? WHERE id=? AND hashed<=?",
                    (*hashed, run, hashed[0]),
                )
            if prune:
                self.db.execute("DELETE FROM acks WHERE run=? AND last_line<=?", (run, line))

    def complete(self, run: int, line: int, offset: int, size: int) -> None:
        hashed = self._hashed(run, size)
        with self._transaction():
            self.db.execute("DELETE FROM acks WHERE run=?", (run,))
            self.db.execute(
                "UPDATE runs SET line=?, byte_offset=?, fed=MAX(fed, ?), complete=1, "
                "size=?, updated=? WHERE id=?",
                (line, offset, line, size, self.clock(), run),
            )
            if hashed is not None:
                self.db.execute(
                    "UPDATE runs SET hashed=?, digest=? WHERE id=? AND hashed<=?",
                    (*hashed, run, hashed[0]),
                )

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
