"""The exceptions moerules raises, and the positions rule errors point at.

Hierarchy::

    MoerulesError
    ├── RuleError                 a bundle or test file is wrong; carries Problems
    ├── RecordError               one input record cannot be processed (dead-lettered)
    │   └── TransformError        a transform could not apply to a value
    ├── SetupError                a path the run needs cannot be used (CLI exit 2)
    │   ├── InputError            the input cannot be opened or read
    │   └── StateError            the state directory or its state.sqlite cannot be used
    └── DeliveryError             a partner answered badly or not at all
        ├── RetryableError        5xx, timeouts, dropped connections: try again
        │   └── ThrottledError    429: try again after Retry-After
        └── PermanentError        other 4xx: dead-letter, do not retry
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DeliveryError",
    "InputError",
    "MoerulesError",
    "PermanentError",
    "Position",
    "Problem",
    "RecordError",
    "RetryableError",
    "RuleError",
    "SetupError",
    "StateError",
    "ThrottledError",
    "TransformError",
]


@dataclass(frozen=True, slots=True)
class Position:
    """Where something stands in a file: 1-based line and column, as editors count."""

    path: str
    line: int = 1
    col: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rule file, rendered as ``PATH:LINE:COL: error: message``.

    A ``warning`` (``PATH:LINE:COL: warning: message``) is a likely mistake that does not stop
    the bundle from running, such as a path the source's records never contain; ``validate
    --strict`` counts warnings as errors. RuleError only ever holds errors.
    """

    position: Position
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.position}: {self.severity}: {self.message}"


class MoerulesError(Exception):
    """Base of every error moerules raises on purpose."""


class RuleError(MoerulesError):
    """A bundle (or a test file) is invalid. ``problems`` lists every problem found in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(
            problems, key=lambda p: (p.position.path, p.position.line, p.position.col)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class RecordError(MoerulesError):
    """One input record cannot be processed; it is dead-lettered with ``reason``.

    ``rule`` names the rule that was being applied, when the code raising knows it (a
    template renders for one rule), so the dead letter can say which rule failed.
    """

    def __init__(self, reason: str, detail: str = "", *, rule: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.rule = rule
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TransformError(RecordError):
    """A transform met a value it cannot convert (``float('abc')``)."""


class SetupError(MoerulesError):
    """Something the run needs before its first record cannot be used: a path that is missing,
    unreadable or unwritable. The message is one line naming the thing and what to do; the
    CLI prints it and exits 2 (a usage error)."""


class InputError(SetupError):
    """The input cannot be opened or read (a directory, a missing file, an I/O error)."""


class StateError(SetupError):
    """The state directory, or the ``state.sqlite`` in it, cannot be used."""


class DeliveryError(MoerulesError):
    """A destination did not accept a request."""

    def __init__(self, message: str, status: int | None = None, excerpt: str = "") -> None:
        self.status = status
        self.excerpt = excerpt
        super().__init__(message)


class RetryableError(DeliveryError):
    """Worth another try: 5xx, 408, timeouts, connection errors."""


class ThrottledError(RetryableError):
    """HTTP 429; ``retry_after`` seconds when the partner said so."""

    def __init__(
        self,
        message: str,
        status: int | None = 429,
        excerpt: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, excerpt)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Retrying cannot help (4xx other than 408/429): dead-letter the records."""
