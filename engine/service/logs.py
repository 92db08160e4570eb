"""The service's log: one JSON object a line (one per request, one per delivery batch, and
life-cycle events), or the same as readable text when stderr is a terminal.

Every line passes the ``Scrubber``: the values of the bundles' secrets and of the routes'
credentials are replaced by ``***`` wherever they appear, so a secret a partner echoes in an
error, or one inside a URL, never reaches the log.

>>> log = service_logger(json_lines=True)                     # doctest: +SKIP
>>> log.info("request", extra={"fields": {"status": 202}})    # doctest: +SKIP
{"ts":"2026-01-01T00:00:00.000Z","level":"info","event":"request","status":202}
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson
from moerules.engine.secrets import Scrubber as SecretScrubber

__all__ = ["LOGGER", "Scrubber", "log_event", "service_logger"]

LOGGER = "moerules.service"


class Scrubber(logging.Filter):
    """Replaces secrets, in every form they travel in (engine/secrets.py: base64 in a Basic
    token, percent-encoded in a URL, escaped in JSON), in every field of a record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self._scrubber = SecretScrubber(())

    def update(self, secrets: Iterable[str]) -> None:
        """Scrub ``secrets`` too from now on (a reload may bring new ones)."""
        new = set(secrets) - self.secrets
        if new:
            self.secrets |= new
            self._scrubber = SecretScrubber(self.secrets)

    def scrub(self, text: str) -> str:
        return self._scrubber.text(text) if self._scrubber else text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(str(record.msg))
        if record.args:
            record.msg = self.scrub(record.getMessage())
            record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {
                k: self.scrub(v) if isinstance(v, str) else v for k, v in fields.items()
            }
        if record.exc_info and record.exc_info[1] is not None:
            # a traceback may quote a secret; the text is scrubbed, the frames dropped
            exc = record.exc_info[1]
            record.exc_text = self.scrub(f"{type(exc).__name__}: {exc}")
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "event", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        if record.name != LOGGER:
            entry["logger"] = record.name
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text:
            entry["error"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``12:00:00 info  request bundle=x status=202 ms=1.2``, for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [stamp, f"{record.levelname.lower():<7}", record.getMessage()]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                shown = (
                    value
                    if isinstance(value, str) and " " not in value
                    else (orjson.dumps(value, default=str).decode())
                )
                parts.append(f"{key}={shown}")
        if record.exc_text:
            parts.append(f"error={record.exc_text!r}")
        return " ".join(parts)


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


def service_logger(
    *, json_lines: bool | None = None, stream: IO[str] | None = None, level: int = logging.INFO
) -> tuple[logging.Logger, Scrubber]:
    """The service's logger (and uvicorn's, whose errors would else go nowhere), writing to
    ``stream`` (stderr): JSON unless ``json_lines`` is False, or by default unless the stream
    is a terminal."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    scrubber = Scrubber()
    handler.addFilter(scrubber)
    logger = logging.getLogger(LOGGER)
    for name in (LOGGER, "uvicorn", "uvicorn.error"):
        other = logging.getLogger(name)
        for old in list(other.handlers):
            other.removeHandler(old)
        other.propagate = False
        other.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    return logger, scrubber


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One log line: ``event`` with ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
