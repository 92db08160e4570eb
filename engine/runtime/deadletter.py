"""The dead-letter file: JSON Lines, one record a line, with why it could not be delivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["DeadLetterWriter"]


class DeadLetterWriter:
    """Appends dead letters; the file is created only when the first one arrives.

    Each line holds ``record`` (the input, or the raw line when it was not JSON), ``reason``,
    ``error``, ``line``, ``bundle``, ``rule`` and, for delivery failures, ``status``,
    ``response`` (an excerpt) and ``attempts``. Secret values are scrubbed before writing.
    """

    def __init__(self, path: Path | None, bundle: str, secrets: frozenset[str] = frozenset()):
        self.path = path
        self.bundle = bundle
        self.secrets = secrets
        self.count = 0
        self._file: IO[bytes] | None = None

    def write(self, reason: str, *, record: Any = None, raw: bytes | None = None,
              error: str = "", line: int | None = None, rule: str | None = None,
              **extra: Any) -> None:
        self.count += 1
        if self.path is None:
            return
        entry: dict[str, Any] = {"reason": reason, "error": error, "line": line,
                                 "bundle": self.bundle, "rule": rule}
        if record is not None:
            entry["record"] = record
        elif raw is not None:
            entry["raw"] = raw.decode("utf-8", "replace")
        entry.update(extra)
        try:
            data = orjson.dumps(entry, default=str)
        except TypeError:  # an integer beyond 64 bits (orjson refuses): the stdlib writes it
            data = json.dumps(entry, default=str, ensure_ascii=False,
                              separators=(",", ":")).encode()
        for secret in self.secrets:
            data = data.replace(secret.encode(), b"***")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        self._file.write(data + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
