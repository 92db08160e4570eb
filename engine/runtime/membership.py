"""The membership state of cohort flows: what each partner asked, what the destination holds.

Per cohort (keyed by the destination account, the partner and the partner's cohort id) the
state keeps, for every user it has heard of:

- ``wanted``: in or out, as the partner's latest word on that user says, with that word's
  *version* (``at``, ``seq``): the partner's computation time (ms, 0 when it gives none) and
  the order in which its message was first seen. A word older than the one kept changes
  nothing, so repeats and messages out of order cannot undo a later change;
- ``synced``: in or out, as the destination acknowledged it. It is written only after the
  destination answered that it took the change: a crash never records a change that was not
  made, and the next run sends what is still different;
- ``pending``: a change for the user was sent (or was about to be) and its answer has not
  come. Marked before the request leaves, cleared by the answer: after a crash the
  destination may or may not have made it, so the next run sends the partner's latest word
  for that user again, whatever ``synced`` says (adding or removing twice is harmless;
  guessing wrong is not).

Besides: the version of the latest full export applied (``floor``: a user without a row is
out as of it), the messages seen (their key and ``seq``, whether an export is complete) and
the pages of exports not complete yet. A wanted word, a message or a page is written as it
arrives, in one transaction per input line: it is the partner's input, not a change made.

The state lives in one SQLite file (WAL). A dry run reads it and never writes it (read-only,
not even created); ``:memory:`` keeps nothing between runs. Either way the state of the
cohorts a run touches lives in memory as ``Cohort`` objects, loaded whole on first touch.

>>> store = MembershipStore(".moerules/cohorts.sqlite", durable=True)   # doctest: +SKIP
>>> cohort = store.cohort(CohortKey("WS@api-01.moengage.com", "mixpanel", "1234"))  # doctest: +SKIP
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from moerules.engine import errors
from moerules.engine.cohorts import MEMORY

__all__ = [
    "STATE_FORMAT",
    "Cohort",
    "CohortKey",
    "CohortSummary",
    "Export",
    "Member",
    "MembershipStore",
    "StateError",
    "Version",
    "members_of",
    "summarise",
]

STATE_FORMAT = 1

Version = tuple[int, int]
"""(partner time in ms or 0, order of first sight): compared as a tuple."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cohorts (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    partner TEXT NOT NULL,
    cohort_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    segment TEXT NOT NULL DEFAULT '',
    description TEXT,
    floor_at INTEGER NOT NULL DEFAULT 0,
    floor_seq INTEGER NOT NULL DEFAULT 0,
    updated REAL,
    UNIQUE (scope, partner, cohort_id)
);
CREATE TABLE IF NOT EXISTS members (
    cohort INTEGER NOT NULL REFERENCES cohorts(id),
    uid TEXT NOT NULL,
    wanted INTEGER NOT NULL,
    at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    synced INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cohort, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    cohort INTEGER NOT NULL REFERENCES cohorts(id),
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cohort, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pages (
    cohort INTEGER NOT NULL REFERENCES cohorts(id),
    key TEXT NOT NULL,
    page INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    uids BLOB NOT NULL,
    PRIMARY KEY (cohort, key, page)
) WITHOUT ROWID;
"""


class StateError(errors.StateError):
    """A membership state file this moerules cannot use (another format, not SQLite,
    unreadable): a one-line setup error."""


class CohortKey(NamedTuple):
    scope: str  # the destination account (workspace and host)
    partner: str
    cohort_id: str


@dataclass(slots=True)
class Member:
    wanted: bool
    at: int
    seq: int
    synced: bool
    pending: bool = False

    @property
    def version(self) -> Version:
        return self.at, self.seq


@dataclass(slots=True)
class Export:
    """A full export whose pages are arriving: page number -> the user ids it listed."""

    key: str
    pages: int
    version: Version
    got: dict[int, list[str]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.got) >= self.pages


@dataclass(slots=True)
class Cohort:
    """One cohort's state, in memory for the run (see the module docstring)."""

    key: CohortKey
    row: int | None  # its id in the file; None when nothing is written
    name: str = ""
    segment: str = ""
    description: str | None = None
    floor: Version = (0, 0)
    members: dict[str, Member] = field(default_factory=dict)
    exports: dict[str, Export] = field(default_factory=dict)  # incomplete ones, by key
    messages: dict[str, tuple[int, bool]] = field(default_factory=dict)  # key -> (seq, complete)

    def wanted_count(self) -> int:
        return sum(1 for m in self.members.values() if m.wanted)


@dataclass(frozen=True, slots=True)
class CohortSummary:
    """What ``moerules cohorts`` shows of one cohort."""

    scope: str
    partner: str
    cohort_id: str
    name: str
    segment: str
    synced: int  # users the destination acknowledged as in
    wanted: int  # users the partner's latest word has in
    to_add: int  # what the next run sends: not acknowledged, or unconfirmed (a crash)
    to_remove: int
    pending_exports: list[tuple[str, int, int]]  # (key, pages arrived, pages)
    updated: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "partner": self.partner,
            "cohort_id": self.cohort_id,
            "name": self.name,
            "segment": self.segment,
            "members": self.synced,
            "wanted": self.wanted,
            "to_add": self.to_add,
            "to_remove": self.to_remove,
            "pending_exports": [
                {"key": k, "pages_arrived": n, "pages": t} for k, n, t in self.pending_exports
            ],
            "updated": self.updated,
        }


class MembershipStore:
    """The state file and the in-memory cohorts of one run.

    ``durable``: every change is written through (a real run). Otherwise the file, if there
    is one, is only read (a dry run, ``moerules explain``) and changes stay in memory.
    """

    def __init__(self, path: str | Path, *, durable: bool, clock: Any = time.time) -> None:
        self.path = str(path)
        self.clock = clock
        self.durable = durable and self.path != MEMORY
        self.db: sqlite3.Connection | None = None
        self._cohorts: dict[CohortKey, Cohort] = {}
        self._seq = 0
        if self.path == MEMORY:
            return
        file = Path(self.path)
        if file.exists() and not file.is_file():
            raise StateError(
                f"{self.path}: the membership state must be a file, not a "
                "directory or a device; set the destination's `state` to a file"
            )
        if self.durable:
            file.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._connect(file, f"file:{file}")
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL survives a killed process; only a power cut may lose the last
                # commits, and what is lost is sent again (the difference is recomputed)
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                self.close()
                raise StateError(f"{self.path}: not a moerules membership state ({exc})") from None
            self._check_format(write=True)
        elif file.is_file():
            self.db = self._connect(file, f"file:{file}?mode=ro")
            self._check_format(write=False)
        if self.db is not None:
            row = self._one("SELECT value FROM meta WHERE key='seq'")
            self._seq = int(row[0]) if row else 0

    def _connect(self, file: Path, uri: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
            return db
        except sqlite3.Error as exc:
            raise StateError(f"{file}: cannot open the membership state ({exc})") from None

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        assert self.db is not None
        try:
            return self.db.execute(sql, args).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: not a moerules membership state ({exc})") from None

    def _check_format(self, *, write: bool) -> None:
        assert self.db is not None
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.OperationalError as exc:
            self.close()
            if write or "no such table" not in str(exc):
                raise StateError(f"{self.path}: not a moerules membership state ({exc})") from None
            return  # an empty SQLite file: nothing stored yet
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StateError(f"{self.path}: not a moerules membership state ({exc})") from None
        if row is None:
            if write:
                self._exec(
                    "INSERT INTO meta (key, value) VALUES ('format', ?)", (str(STATE_FORMAT),)
                )
            return
        if str(row[0]) != str(STATE_FORMAT):
            self.close()
            raise StateError(
                f"{self.path}: membership state format {row[0]}; this moerules "
                f"reads format {STATE_FORMAT}"
            )

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        assert self.db is not None
        self.db.execute(sql, args)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # -- transactions: one per input line, one per acknowledged request --------------------
    def begin(self) -> None:
        if self.durable:
            self._exec("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self.durable:
            self._exec("COMMIT")

    def rollback(self) -> None:
        if self.durable:
            self._exec("ROLLBACK")

    # -- reading ---------------------------------------------------------------------------
    def cohort(self, key: CohortKey) -> Cohort:
        """The cohort's state, loaded whole on first touch (created when it is new)."""
        found = self._cohorts.get(key)
        if found is not None:
            return found
        cohort = Cohort(key, None)
        if self.db is not None:
            row = self._one(
                "SELECT id, name, segment, description, floor_at, floor_seq FROM "
                "cohorts WHERE scope=? AND partner=? AND cohort_id=?",
                tuple(key),
            )
            if row is None and self.durable:
                self._exec(
                    "INSERT INTO cohorts (scope, partner, cohort_id, updated) VALUES (?, ?, ?, ?)",
                    (*key, self.clock()),
                )
                row = self._one(
                    "SELECT id, name, segment, description, floor_at, floor_seq "
                    "FROM cohorts WHERE scope=? AND partner=? AND cohort_id=?",
                    tuple(key),
                )
            if row is not None:
                self._load(cohort, row)
        self._cohorts[key] = cohort
        return cohort

    def _load(self, cohort: Cohort, row: tuple[Any, ...]) -> None:
        assert self.db is not None
        cohort.row, cohort.name, cohort.segment, cohort.description = row[:4]
        cohort.floor = (int(row[4]), int(row[5]))
        for uid, wanted, at, seq, synced, pending in self.db.execute(
            "SELECT uid, wanted, at, seq, synced, pending FROM members WHERE cohort=?",
            (cohort.row,),
        ):
            cohort.members[uid] = Member(bool(wanted), at, seq, bool(synced), bool(pending))
        for key, page, pages, at, seq, uids in self.db.execute(
            "SELECT key, page, pages, at, seq, uids FROM pages WHERE cohort=? ORDER BY key, page",
            (cohort.row,),
        ):
            export = cohort.exports.get(key)
            if export is None:
                export = cohort.exports[key] = Export(key, pages, (at, seq))
            export.got[page] = list(orjson.loads(uids))

    def message(self, cohort: Cohort, key: str) -> tuple[int, bool] | None:
        """(seq, complete) of a message seen before, or None."""
        found = cohort.messages.get(key)
        if found is None and self.db is not None and cohort.row is not None:
            row = self._one(
                "SELECT seq, complete FROM messages WHERE cohort=? AND key=?", (cohort.row, key)
            )
            if row is not None:
                found = cohort.messages[key] = (int(row[0]), bool(row[1]))
        return found

    def cohorts(self) -> list[Cohort]:
        """The cohorts touched in this run."""
        return list(self._cohorts.values())

    # -- writing (memory always; the file when durable) -------------------------------------
    def new_message(self, cohort: Cohort, key: str) -> int:
        """Note a message seen for the first time; its ``seq`` (the order of first sight)."""
        self._seq += 1
        cohort.messages[key] = (self._seq, False)
        if self.durable and cohort.row is not None:
            self._exec(
                "INSERT OR REPLACE INTO messages (cohort, key, seq) VALUES (?, ?, ?)",
                (cohort.row, key, self._seq),
            )
            self._exec(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?)", (str(self._seq),)
            )
        return self._seq

    def complete_message(self, cohort: Cohort, key: str) -> None:
        seq, _ = cohort.messages[key]
        cohort.messages[key] = (seq, True)
        if self.durable and cohort.row is not None:
            self._exec("UPDATE messages SET complete=1 WHERE cohort=? AND key=?", (cohort.row, key))

    def name(self, cohort: Cohort, name: str, segment: str, description: str | None) -> None:
        if (cohort.name, cohort.segment, cohort.description) == (name, segment, description):
            return
        cohort.name, cohort.segment, cohort.description = name, segment, description
        if self.durable and cohort.row is not None:
            self._exec(
                "UPDATE cohorts SET name=?, segment=?, description=?, updated=? WHERE id=?",
                (name, segment, description, self.clock(), cohort.row),
            )

    def want(self, cohort: Cohort, uid: str, wanted: bool, version: Version) -> Member:
        """The partner's latest word on ``uid`` (the caller checked it is later)."""
        member = cohort.members.get(uid)
        if member is None:
            member = cohort.members[uid] = Member(wanted, version[0], version[1], False)
        else:
            member.wanted, member.at, member.seq = wanted, version[0], version[1]
        if self.durable and cohort.row is not None:
            self._exec(
                "INSERT INTO members (cohort, uid, wanted, at, seq) VALUES (?, ?, ?, ?, "
                "?) ON CONFLICT (cohort, uid) DO UPDATE SET wanted=excluded.wanted, "
                "at=excluded.at, seq=excluded.seq",
                (cohort.row, uid, int(wanted), *version),
            )
        return member

    def floor(self, cohort: Cohort, version: Version) -> None:
        cohort.floor = version
        if self.durable and cohort.row is not None:
            self._exec(
                "UPDATE cohorts SET floor_at=?, floor_seq=?, updated=? WHERE id=?",
                (*version, self.clock(), cohort.row),
            )

    def forget(self, cohort: Cohort, uids: Iterable[str]) -> None:
        """Drop rows the floor makes redundant (out, acknowledged out, older than it)."""
        uids = list(uids)
        for uid in uids:
            cohort.members.pop(uid, None)
        if self.durable and cohort.row is not None and uids:
            assert self.db is not None
            self.db.executemany(
                "DELETE FROM members WHERE cohort=? AND uid=?", [(cohort.row, uid) for uid in uids]
            )

    def page(self, cohort: Cohort, export: Export, page: int, uids: list[str]) -> None:
        export.got[page] = uids
        cohort.exports.setdefault(export.key, export)
        if self.durable and cohort.row is not None:
            self._exec(
                "INSERT OR REPLACE INTO pages (cohort, key, page, pages, at, seq, uids) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cohort.row, export.key, page, export.pages, *export.version, orjson.dumps(uids)),
            )

    def drop_export(self, cohort: Cohort, key: str) -> None:
        """An export is applied (its changes reached their outcomes) or superseded."""
        cohort.exports.pop(key, None)
        if self.durable and cohort.row is not None:
            self._exec("DELETE FROM pages WHERE cohort=? AND key=?", (cohort.row, key))

    def pending(self, cohort: Cohort, uid: str) -> None:
        """A change for ``uid`` is about to be sent (inside the line's transaction)."""
        found = cohort.members.get(uid)
        if found is not None:
            found.pending = True
        if self.durable and cohort.row is not None:
            self._exec("UPDATE members SET pending=1 WHERE cohort=? AND uid=?", (cohort.row, uid))

    def unsent(self, cohort: Cohort, uid: str) -> None:
        """The change for ``uid`` was never sent (the sink could not encode it)."""
        found = cohort.members.get(uid)
        if found is not None:
            found.pending = False
        if self.durable and cohort.row is not None:
            self._exec("UPDATE members SET pending=0 WHERE cohort=? AND uid=?", (cohort.row, uid))

    def synced(
        self, cohort: Cohort, uids: Iterable[str], member: bool, *, settled: Iterable[str] = ()
    ) -> None:
        """The destination acknowledged these changes: written at once, in one transaction.
        ``settled``: of those, the users with no later change on its way (no longer
        pending)."""
        done = set(settled)
        rows = []
        for uid in uids:
            found = cohort.members.get(uid)
            if found is not None:
                found.synced = member
                if uid in done:
                    found.pending = False
            rows.append((int(member), int(uid not in done), cohort.row, uid))
        if self.durable and cohort.row is not None and rows:
            assert self.db is not None
            with _Transaction(self.db):
                self.db.executemany(
                    "UPDATE members SET synced=?, pending=pending AND ? WHERE cohort=? AND uid=?",
                    rows,
                )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def summarise(path: str | Path) -> Iterator[CohortSummary]:
    """Every cohort a state file holds (``moerules cohorts``); StateError when it is not
    one."""
    file = Path(path)
    if not file.is_file():
        raise StateError(f"{file}: no such membership state file")
    store = MembershipStore(file, durable=False)
    try:
        db = store.db
        if db is None:
            return
        try:
            rows = db.execute(
                "SELECT c.id, c.scope, c.partner, c.cohort_id, c.name, c.segment, c.updated, "
                "COALESCE(SUM(m.synced), 0), COALESCE(SUM(m.wanted), 0), "
                "COALESCE(SUM(m.wanted AND (m.pending OR NOT m.synced)), 0), "
                "COALESCE(SUM(NOT m.wanted AND (m.pending OR m.synced)), 0) "
                "FROM cohorts c LEFT JOIN members m ON m.cohort = c.id "
                "GROUP BY c.id ORDER BY c.scope, c.partner, c.name, c.cohort_id"
            ).fetchall()
            pending: dict[int, list[tuple[str, int, int]]] = {}
            for cohort, key, got, pages in db.execute(
                "SELECT cohort, key, COUNT(*), MAX(pages) FROM pages GROUP BY cohort, key "
                "ORDER BY cohort, key"
            ):
                pending.setdefault(cohort, []).append((key, got, pages))
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{file}: not a moerules membership state ({exc})") from None
        for row in rows:
            yield CohortSummary(
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                int(row[7]),
                int(row[8]),
                int(row[9]),
                int(row[10]),
                pending.get(row[0], []),
                row[6],
            )
    finally:
        store.close()


def members_of(path: str | Path, cohort_id: str) -> dict[tuple[str, str], list[str]]:
    """The users the destination acknowledged in cohort ``cohort_id``, by (scope, partner)."""
    file = Path(path)
    if not file.is_file():
        raise StateError(f"{file}: no such membership state file")
    store = MembershipStore(file, durable=False)
    out: dict[tuple[str, str], list[str]] = {}
    try:
        if store.db is None:
            return out
        try:
            for scope, partner, uid in store.db.execute(
                "SELECT c.scope, c.partner, m.uid FROM cohorts c JOIN members m ON "
                "m.cohort = c.id WHERE c.cohort_id = ? AND m.synced = 1 "
                "ORDER BY c.scope, c.partner, m.uid",
                (cohort_id,),
            ):
                out.setdefault((scope, partner), []).append(uid)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{file}: not a moerules membership state ({exc})") from None
        return out
    finally:
        store.close()
