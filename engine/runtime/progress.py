"""Progress of a delivery run: a live line on a terminal, plain lines in logs, or nothing.

A runner watching a terminal wants a bar and rates; a cron job's log wants a line every few
seconds it can grep; ``--quiet`` wants silence. The display pulls a snapshot on each tick, so
the delivery path never waits for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["ProgressDisplay", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the run has done so far."""

    lines: int
    bytes_read: int
    delivered: int
    dead_lettered: int
    retries: int
    throttled: int


class ProgressDisplay:
    """Shows ``snapshot()`` every ``interval`` seconds until ``run`` is cancelled.

    On a TTY it is a rich progress bar (by bytes when the input size is known) refreshed by
    this task itself: rich's auto-refresh would start a thread.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        total_bytes: int | None = None,
        quiet: bool = False,
        stream: IO[str] | None = None,
        interval: float | None = None,
        tty: bool | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.total_bytes = total_bytes
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (0.25 if self.tty else 5.0)
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    async def run(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self._start_live()
        try:
            while True:
                await anyio.sleep(self.interval)
                self.show()
        finally:
            self.stop()

    def show(self) -> None:
        snap = self.snapshot()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = snap.lines / elapsed
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                completed=snap.bytes_read,
                lines=snap.lines,
                rate=rate,
                delivered=snap.delivered,
                dead=snap.dead_lettered,
                retries=snap.retries,
            )
            self._progress.refresh()
            return
        self.stream.write(
            f"moerules: {snap.lines} lines ({rate:.0f}/s), delivered "
            f"{snap.delivered}, dead-lettered {snap.dead_lettered}, retries "
            f"{snap.retries} ({snap.throttled} after 429)\n"
        )
        self.stream.flush()

    def _start_live(self) -> None:
        progress = Progress(
            TextColumn("[bold]moerules[/]"),
            BarColumn(),
            TextColumn("{task.fields[lines]} lines ({task.fields[rate]:.0f}/s)"),
            TextColumn("delivered [green]{task.fields[delivered]}[/]"),
            TextColumn("dead-lettered [red]{task.fields[dead]}[/]"),
            TextColumn("retries {task.fields[retries]}"),
            TimeElapsedColumn(),
            console=Console(file=self.stream),
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
        )
        self._task = progress.add_task(
            "deliver", total=self.total_bytes, lines=0, rate=0.0, delivered=0, dead=0, retries=0
        )
        progress.start()
        self._progress = progress

    def stop(self) -> None:
        """Draw the last state and release the terminal."""
        if self._progress is not None:
            self.show()
            self._progress.stop()
            self._progress = None
