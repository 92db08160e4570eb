"""The spool: payloads acknowledged to a partner, kept until their delivery is final.

``Spool`` is the interface the service uses, shaped like a message broker's so that a shared
one (NATS JetStream: publish with a message id, a pull consumer per bundle, ack/nak with a
delay) can take the embedded spool's place when one machine is not enough:

- ``put`` returns once the payload is durable; only then does the ingest route answer 2xx;
- ``claim`` hands out ready messages of one bundle (waiting for some, as a pull consumer's
  fetch does); a claimed message stays in the spool, in flight;
- ``ack`` removes a message whose items all reached their outcome; ``nack`` makes it ready
  again, after a delay;
- a message claimed but never acknowledged (the process died, ``kill -9`` included) is handed
  out again: delivery is at least once, never at most once.

``SqliteSpool`` is the single-machine default: one SQLite file in WAL mode under the state
directory. Writes go through one writer thread that commits whatever has queued up meanwhile in
one transaction (group commit), with ``synchronous=FULL`` so a 2xx survives a power cut, not
only a killed process. The index of what is ready and in flight lives in memory (one process
owns the file: a lock says so), so back-pressure checks cost no query.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Protocol

__all__ = ["Message", "Spool", "SpoolLocked", "SqliteSpool"]

SPOOL_FILE = "spool.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_bundle ON messages (bundle, id);
"""

_GROUP = 512  # most writes committed in one transaction


@dataclass(frozen=True, slots=True)
class Message:
    """One spooled payload. ``redelivered``: it may have been handed out before (a restart, a
    nack), so part of it may have reached the partner already."""

    id: int
    bundle: str
    body: bytes
    enqueued: float  # wall-clock seconds
    redelivered: bool = False


class Spool(Protocol):
    """What the service needs of a spool (see the module docstring)."""

    async def put(self, bundle: str, body: bytes) -> int:
        """Store ``body`` for ``bundle``; returns its id once it is durable."""
        ...

    async def claim(self, bundle: str, limit: int) -> list[Message]:
        """Up to ``limit`` ready messages of ``bundle`` in order, waiting until there is one.

        Cancelled while waiting, it claims nothing."""
        ...

    def ack(self, ids: Sequence[int]) -> None:
        """The messages are done: they leave the spool (committed in the background)."""
        ...

    def nack(self, ids: Sequence[int], delay: float = 0.0) -> None:
        """The messages are ready again after ``delay`` seconds."""
        ...

    def depth(self, bundle: str) -> int:
        """Messages of ``bundle`` not yet acknowledged (ready, waiting or in flight)."""
        ...

    def size_bytes(self, bundle: str) -> int:
        """Bytes of the bodies of those messages."""
        ...

    def oldest_age(self, bundle: str) -> float | None:
        """Seconds since the oldest of those messages was put; None when there is none."""
        ...


@dataclass(frozen=True, slots=True)
class _Put:
    bundle: str
    body: bytes
    enqueued: float


@dataclass(frozen=True, slots=True)
class _Write:
    """One write for the writer thread: a put (answered through ``future``) or acks."""

    put: _Put | None
    acks: Sequence[int]
    future: asyncio.Future[int] | None


def _fail(futures: list[asyncio.Future[int]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class SpoolLocked(RuntimeError):
    """Another process holds the spool of this state directory."""


@dataclass
class _Queue:
    """One bundle's messages, as the in-memory index holds them."""

    ready: deque[int] = field(default_factory=deque)
    delayed: list[tuple[float, int]] = field(default_factory=list)  # (ready at, id) heap
    meta: dict[int, tuple[int, float]] = field(default_factory=dict)  # id -> (bytes, enqueued)
    order: deque[int] = field(default_factory=deque)  # unacknowledged ids, oldest first
    redelivered: set[int] = field(default_factory=set)
    bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SqliteSpool:
    """The embedded spool: ``<state dir>/spool.sqlite`` (see the module docstring).

    Use ``async with SqliteSpool(dir)`` (or ``open``/``close``) inside the event loop that
    calls it.
    """

    def __init__(
        self, state_dir: Path, *, synchronous: str = "FULL", clock: Callable[[], float] = time.time
    ) -> None:
        self.path = state_dir / SPOOL_FILE
        self.synchronous = synchronous
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.redelivered_at_open = 0

    # -- life cycle --------------------------------------------------------------------------
    async def __aenter__(self) -> SqliteSpool:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Lock the state directory's spool, load its index, start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = (self.path.parent / (SPOOL_FILE + ".lock")).open("ab")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLocked(f"{self.path} is in use by another moerules process") from None
        self._loop = asyncio.get_running_loop()
        writer = self._connect()
        writer.executescript(_SCHEMA)
        self._reader = self._connect()
        # everything left over was acknowledged to a partner and not delivered: ready again
        for id_, bundle, size, enqueued in self._reader.execute(
            "SELECT id, bundle, length(body), enqueued FROM messages ORDER BY id"
        ):
            q = self._queue(bundle)
            q.ready.append(id_)
            q.order.append(id_)
            q.meta[id_] = (size, enqueued)
            q.bytes += size
            q.redelivered.add(id_)
            self.redelivered_at_open += 1
        self._writer = threading.Thread(
            target=self._write_loop, args=(writer,), name="moerules-spool", daemon=True
        )
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    async def close(self) -> None:
        """Commit what is queued, stop the writer, release the lock."""
        if self._writer is not None:
            self._writes.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- the writer thread -------------------------------------------------------------------
    def _write_loop(self, db: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._writes.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < _GROUP:
                    try:
                        op = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stop = True
                        break
                    batch.append(op)
                self._commit(db, batch)
                if stop:
                    return
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, batch: list[_Write]) -> None:
        stored: list[tuple[_Write, int]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for write in batch:
                if write.put is not None:
                    cursor = db.execute(
                        "INSERT INTO messages (bundle, body, enqueued) VALUES (?, ?, ?)",
                        (write.put.bundle, write.put.body, write.put.enqueued),
                    )
                    stored.append((write, int(cursor.lastrowid or 0)))
                else:
                    db.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in write.acks])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            error = OSError(f"the spool could not store the payload: {exc}")
            futures = [w.future for w in batch if w.future is not None]
            self._call(partial(_fail, futures, error))
            return
        if stored:
            self._call(lambda: self._stored(stored))

    def _call(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the event loop (the index and the futures live there)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback)

    def _stored(self, stored: list[tuple[_Write, int]]) -> None:
        """Payloads are durable: index them (in commit order) and answer their requests."""
        for write, id_ in stored:
            put = write.put
            assert put is not None and write.future is not None
            q = self._queue(put.bundle)
            q.ready.append(id_)
            q.order.append(id_)
            q.meta[id_] = (len(put.body), put.enqueued)
            q.bytes += len(put.body)
            q.wake.set()
            if not write.future.done():
                write.future.set_result(id_)

    # -- Spool -------------------------------------------------------------------------------
    def _queue(self, bundle: str) -> _Queue:
        q = self._queues.get(bundle)
        if q is None:
            q = self._queues[bundle] = _Queue()
        return q

    async def put(self, bundle: str, body: bytes) -> int:
        assert self._loop is not None, "the spool is not open"
        future: asyncio.Future[int] = self._loop.create_future()
        self._writes.put(_Write(_Put(bundle, body, self.clock()), (), future))
        # shielded: a request cancelled once its payload is queued leaves the write alone
        return await asyncio.shield(future)

    async def claim(self, bundle: str, limit: int) -> list[Message]:
        q = self._queue(bundle)
        while True:
            self._release_due(q)
            if q.ready:
                break
            q.wake.clear()
            timeout = (q.delayed[0][0] - time.monotonic()) if q.delayed else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(q.wake.wait(), timeout)
        # from here on nothing awaits: a cancellation cannot lose what is claimed
        ids: list[int] = []
        while q.ready and len(ids) < limit:
            id_ = q.ready.popleft()
            if id_ in q.meta:  # not acknowledged meanwhile
                ids.append(id_)
        return self._read(bundle, q, ids)

    def _read(self, bundle: str, q: _Queue, ids: list[int]) -> list[Message]:
        assert self._reader is not None
        if not ids:
            return []
        bodies: dict[int, bytes] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for id_, body in self._reader.execute(
                f"SELECT id, body FROM messages WHERE id IN ({marks})", chunk
            ):
                bodies[id_] = bytes(body)
        out = []
        for id_ in ids:
            body = bodies.get(id_)
            if body is None:  # committed but not visible yet cannot happen; gone: skip it
                continue
            out.append(Message(id_, bundle, body, q.meta[id_][1], id_ in q.redelivered))
        return out

    def _release_due(self, q: _Queue) -> None:
        now = time.monotonic()
        while q.delayed and q.delayed[0][0] <= now:
            _, id_ = heapq.heappop(q.delayed)
            if id_ in q.meta:
                q.ready.append(id_)

    def ack(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        for id_ in ids:
            for q in self._queues.values():
                meta = q.meta.pop(id_, None)
                if meta is not None:
                    q.bytes -= meta[0]
                    q.redelivered.discard(id_)
                    break
        self._writes.put(_Write(None, list(ids), None))

    def nack(self, ids: Sequence[int], delay: float = 0.0) -> None:
        at = time.monotonic() + delay
        for id_ in ids:
            for q in self._queues.values():
                if id_ in q.meta:
                    q.redelivered.add(id_)
                    if delay <= 0:
                        q.ready.append(id_)
                    else:
                        heapq.heappush(q.delayed, (at, id_))
                    q.wake.set()
                    break
        for q in self._queues.values():  # keep the order of the ids: oldest first
            if len(q.ready) > 1:
                q.ready = deque(sorted(q.ready))

    def depth(self, bundle: str) -> int:
        q = self._queues.get(bundle)
        return len(q.meta) if q is not None else 0

    def size_bytes(self, bundle: str) -> int:
        q = self._queues.get(bundle)
        return q.bytes if q is not None else 0

    def oldest_age(self, bundle: str) -> float | None:
        q = self._queues.get(bundle)
        if q is None:
            return None
        while q.order and q.order[0] not in q.meta:
            q.order.popleft()
        if not q.order:
            return None
        return max(0.0, self.clock() - q.meta[q.order[0]][1])

    def bundles(self) -> list[str]:
        """Bundles with messages or consumers, for metrics."""
        return sorted(self._queues)
