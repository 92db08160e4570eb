"""Value conversions the generated code calls: casts, dates, digests, and the checks of a value's
shape. Each takes the value and ``what`` (the field, for the dead letter's reason); a value it
cannot convert raises TransformError, one of the wrong shape RecordError, and the record is
dead-lettered with the field named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from math import isfinite as _isfinite
from typing import Any

import orjson
from moerules.engine.errors import RecordError, TransformError

__all__ = [
    "EPOCH_LIMIT",
    "HASHES",
    "describe",
    "epoch_ms_to_iso",
    "epoch_ms_to_s",
    "epoch_s_to_iso",
    "epoch_s_to_ms",
    "iso_to_epoch_ms",
    "iso_to_epoch_s",
    "lookup_key",
    "scalar_text",
    "to_bool",
    "to_float",
    "to_int",
    "to_string",
    "wrong_shape",
]


def to_string(value: Any, what: str) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def describe(value: Any) -> str:
    """A value's kind and an excerpt of it, for a dead letter's detail."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    kind = (
        "an object"
        if isinstance(value, dict)
        else "a list"
        if isinstance(value, list | tuple)
        else "a string"
        if isinstance(value, str)
        else "a number"
        if isinstance(value, int | float)
        else type(value).__name__
    )
    text = repr(value) if isinstance(value, str) else to_string(value, "")
    return f"{kind}: {text if len(text) <= 80 else text[:77] + '...'}"


def wrong_shape(what: str, expected: str, value: Any) -> RecordError:
    """The error for a value of the wrong shape where ``what`` needs ``expected``: the record
    is dead-lettered with the reason, never sent converted (an object as its JSON text, or an
    empty object made of a number)."""
    return RecordError(f"{what}: expected {expected}", f"got {describe(value)}")


def scalar_text(value: Any, what: str) -> str:
    """A string, number or boolean as text (``to_string``); an object or a list is the wrong
    shape for ``what`` (an identity, an event name)."""
    if isinstance(value, dict | list):
        raise wrong_shape(what, "text or a number", value)
    text: str = to_string(value, what)
    return text


def to_int(value: Any, what: str) -> Any:
    """Whole numbers only: 42, 42.0 and "42" convert; 2.5 is an error, never silently cut."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
    if number is not None and number.is_integer():
        return int(number)
    raise TransformError(f"{what}: cannot convert to int", repr(value)[:80])


def to_float(value: Any, what: str) -> Any:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
            if _isfinite(number):  # not NaN or ±inf
                return number
        except ValueError:
            pass
    raise TransformError(f"{what}: cannot convert to float", repr(value)[:80])


_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f"}


def to_bool(value: Any, what: str) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise TransformError(f"{what}: cannot convert to bool", repr(value)[:80])


EPOCH_LIMIT = 1e15
"""Larger magnitudes are no timestamp in s or ms; their conversions would not fit 64 bits."""


def _epoch_number(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return float(iso_to_epoch_s(value, what))
    else:
        raise TransformError(f"{what}: not a timestamp", repr(value)[:80])
    if not _isfinite(number) or abs(number) > EPOCH_LIMIT:  # "nan", "inf", 1e300
        raise TransformError(f"{what}: timestamp out of range", repr(value)[:80])
    return number


def epoch_ms_to_s(value: Any, what: str) -> Any:
    return int(_epoch_number(value, what) // 1000)


def epoch_s_to_ms(value: Any, what: str) -> Any:
    return int(_epoch_number(value, what) * 1000)


def epoch_s_to_iso(value: Any, what: str) -> Any:
    seconds = _epoch_number(value, what)
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        raise TransformError(f"{what}: timestamp out of range", repr(value)[:80]) from None


def epoch_ms_to_iso(value: Any, what: str) -> Any:
    return epoch_s_to_iso(_epoch_number(value, what) / 1000, what)


def iso_to_epoch_s(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise TransformError(f"{what}: not an ISO-8601 date", repr(value)[:80])
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TransformError(f"{what}: not an ISO-8601 date", repr(value)[:80]) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def iso_to_epoch_ms(value: Any, what: str) -> Any:
    return iso_to_epoch_s(value, what) * 1000


def _hasher(algorithm: str) -> Callable[[Any, str], Any]:
    def digest(value: Any, what: str) -> Any:
        text = value if isinstance(value, str) else to_string(value, what)
        return hashlib.new(algorithm, text.encode()).hexdigest()

    digest.__name__ = digest.__qualname__ = f"{algorithm}_digest"  # as listings show it
    return digest


HASHES = {"sha256": _hasher("sha256"), "sha1": _hasher("sha1"), "md5": _hasher("md5")}


def lookup_key(value: Any) -> Any:
    """Table keys are strings in YAML; look scalars up by their string form."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return to_string(value, "lookup")
    return None
