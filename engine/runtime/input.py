"""The input: opening it with clear errors, and cutting it into lines of bounded size.

An input is a path or ``-`` (stdin). Regular files, pipes (``mkfifo``, ``<(...)``) and
character devices (``/dev/null``) are all inputs; only a regular file can be resumed. A path
that cannot be an input (missing, a directory, unreadable) is an :class:`InputError` whose
message says which and what to do, before anything is read.

Lines are cut from blocks (whatever a read returns) by one :class:`LineCutter`, used by the
dry run and the real run alike. A line longer than ``max_line_bytes`` is never held whole:
once it passes the limit only its first bytes are kept and the rest is counted, so memory
stays flat on a stream with no newline at all; the line comes out as a :class:`LongLine`
and is dead-lettered as "line too long". A UTF-8 byte-order mark at the very start of the
input is skipped (editors on Windows write one).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from moerules.engine.errors import InputError

__all__ = [
    "BOM",
    "DEFAULT_MAX_LINE_BYTES",
    "EXCERPT_BYTES",
    "LINE_TOO_LONG",
    "LineCutter",
    "LongLine",
    "check_input",
    "is_pollable",
    "is_regular",
    "open_input",
    "read_error",
]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
EXCERPT_BYTES = 1024  # what a "line too long" dead letter keeps of the line
LINE_TOO_LONG = "line too long"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line over the limit: its first ``EXCERPT_BYTES``, its length and the bytes it took.

    ``length`` counts the line's bytes without its newline (what the limit bounds); ``size``
    counts every byte it took in the input, newline included (where the next line starts).
    """

    excerpt: bytes
    length: int
    size: int
    limit: int

    @property
    def error(self) -> str:
        return (
            f"the line is {self.length} bytes long; the limit is {self.limit} bytes "
            "(--max-line-bytes)"
        )


class LineCutter:
    """Cuts blocks of a stream into lines, each with its newline, as file iteration would.

    ``feed`` returns the lines a block completes, ``end`` the last line when it has no
    newline. A line over ``max_line_bytes`` comes out as a :class:`LongLine`. ``skipped``
    counts bytes that belong to no line (a byte-order mark); ``take_skipped`` hands them
    over to whoever tracks byte offsets.
    """

    __slots__ = ("_excerpt", "_lead", "_long", "_parts", "_size", "limit", "skipped")

    def __init__(
        self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, at_start: bool = True
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be >= 1")
        self.limit = max_line_bytes
        self._parts: list[bytes] = []  # the start of a line that began in earlier blocks
        self._size = 0  # bytes in _parts
        self._long = False  # the current line passed the limit: only counting its bytes
        self._excerpt = b""
        # the first bytes of the stream, until they show whether a BOM starts it
        self._lead: bytes | None = b"" if at_start else None
        self.skipped = 0

    def take_skipped(self) -> int:
        skipped, self.skipped = self.skipped, 0
        return skipped

    def feed(self, block: bytes) -> list[bytes | LongLine]:
        if self._lead is not None:
            block = self._lead + block
            if len(block) < len(BOM) and BOM.startswith(block):
                self._lead = block  # too short to tell yet
                return []
            self._lead = None
            if block.startswith(BOM):
                block = block[len(BOM) :]
                self.skipped += len(BOM)
        out: list[bytes | LongLine] = []
        if not block:
            return out
        find, limit = block.find, self.limit
        start = 0
        end = find(b"\n")
        if end < 0:
            self._grow(block)
            return out
        if self._size or self._long:  # finish the line the earlier blocks began
            out.append(self._finish(block[: end + 1], newline=True))
            start = end + 1
            end = find(b"\n", start)
        append = out.append
        while end >= 0:
            if end - start > limit:
                append(
                    LongLine(
                        block[start : min(end, start + EXCERPT_BYTES)],
                        end - start,
                        end - start + 1,
                        limit,
                    )
                )
            else:
                append(block[start : end + 1])
            start = end + 1
            end = find(b"\n", start)
        if start < len(block):
            self._grow(block[start:] if start else block)
        return out

    def end(self) -> list[bytes | LongLine]:
        """The last line, when the input does not end with a newline."""
        if self._lead:  # an input shorter than a BOM
            lead, self._lead = self._lead, None
            self._grow(lead)
        if not (self._size or self._long):
            return []
        return [self._finish(b"", newline=False)]

    def _grow(self, piece: bytes) -> None:
        if self._long:
            self._size += len(piece)
            if len(self._excerpt) < EXCERPT_BYTES:  # a limit under the excerpt's size
                self._excerpt += piece[: EXCERPT_BYTES - len(self._excerpt)]
            return
        if self._size + len(piece) <= self.limit:
            self._parts.append(piece)
            self._size += len(piece)
            return
        # past the limit: keep the excerpt, count the rest, hold nothing else
        head = b""
        for part in (*self._parts, piece):  # no copy of what is dropped
            head += part[: EXCERPT_BYTES - len(head)]
            if len(head) >= EXCERPT_BYTES:
                break
        self._excerpt = head
        self._size += len(piece)
        self._parts = []
        self._long = True

    def _finish(self, tail: bytes, *, newline: bool) -> bytes | LongLine:
        """The line that ``tail`` (its last bytes, newline included) completes."""
        length = self._size + len(tail) - newline
        if self._long:
            room = EXCERPT_BYTES - len(self._excerpt)
            excerpt = self._excerpt + tail[: max(0, min(room, len(tail) - newline))]
            line: bytes | LongLine = LongLine(excerpt, length, length + newline, self.limit)
        else:
            self._parts.append(tail)
            whole = b"".join(self._parts)
            line = (
                whole
                if length <= self.limit
                else LongLine(
                    whole[: min(length, EXCERPT_BYTES)], length, length + newline, self.limit
                )
            )
        self._parts = []
        self._size = 0
        self._long = False
        self._excerpt = b""
        return line


# -- opening ---------------------------------------------------------------------------------
def _describe(source: str) -> str:
    return "stdin" if source == "-" else f"input {source}"


def check_input(source: str) -> str:
    """What ``source`` is ("stdin", "file", "pipe", "device"); InputError when it cannot be
    an input. A regular file is opened and its first byte read (``/proc/self/mem`` opens,
    then fails to read); a pipe is not opened here, which would take a writer's data."""
    if source == "-":
        return "stdin"
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise InputError(
            f"input {source} does not exist; --input takes a JSON Lines file, or - for stdin"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot use input {source}: {exc.strerror or exc}") from None
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise InputError(
            f"input {source} is a directory; --input takes a JSON Lines file, or - for stdin"
        )
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        if not os.access(source, os.R_OK):
            raise InputError(f"cannot read input {source}: permission denied")
        return "pipe"
    if stat.S_ISCHR(mode):
        return "device"
    if not stat.S_ISREG(mode):
        raise InputError(
            f"input {source} is not a file, a pipe or a device; --input takes a "
            "JSON Lines file, or - for stdin"
        )
    stream = open_input(source)
    try:
        os.pread(stream.fileno(), 1, 0)
    except OSError as exc:
        raise InputError(f"cannot read input {source}: {exc.strerror or exc}") from None
    finally:
        stream.close()
    return "file"


def open_input(source: str) -> IO[bytes]:
    """The input as a binary stream (stdin for ``-``); InputError naming the problem."""
    if source == "-":
        return sys.stdin.buffer
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise InputError(
            f"input {source} does not exist; --input takes a JSON Lines file, or - for stdin"
        ) from None
    except IsADirectoryError:
        raise InputError(
            f"input {source} is a directory; --input takes a JSON Lines file, or - for stdin"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot open input {source}: {exc.strerror or exc}") from None


def read_error(source: str, exc: OSError, offset: int | None = None) -> InputError:
    """The error for a read that failed part-way (an I/O error, a vanished mount)."""
    where = f" at byte {offset}" if offset else ""
    return InputError(f"reading {_describe(source)} failed{where}: {exc.strerror or exc}")


def is_pollable(stream: IO[bytes]) -> bool:
    """True for a pipe, socket or terminal: a read may wait, so wait on the event loop.
    Regular files and other devices (``/dev/null``) never wait, and epoll refuses them."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):  # no descriptor: an in-memory stream
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def is_regular(source: str) -> bool:
    """True when ``source`` names a regular file (one that can be checkpointed)."""
    return source != "-" and Path(source).is_file()
