"""The transform vocabulary: the only operations a rule can apply to a value.

Each transform is compiled to a line or two of Python acting on a local; the heavier ones call
a function from this module. Every transform passes null through untouched (except
``default``), so a missing field stays missing instead of becoming ``"None"``. A value a cast
cannot convert raises TransformError, which dead-letters the record with the attribute named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from math import isfinite as _isfinite
from typing import Any

import orjson
from moerules.engine.compile.codegen import Codegen
from moerules.engine.errors import RecordError, TransformError

__all__ = ["CASTS", "TRANSFORMS", "Transform", "TransformSpecError", "emit_transform"]


class TransformSpecError(ValueError):
    """An unknown transform or a bad argument, found at load."""


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
    kind = ("an object" if isinstance(value, dict) else "a list" if isinstance(value, list | tuple)
            else "a string" if isinstance(value, str) else "a number"
            if isinstance(value, int | float) else type(value).__name__)
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

    return digest


HASHES = {"sha256": _hasher("sha256"), "sha1": _hasher("sha1"), "md5": _hasher("md5")}


def lookup_key(value: Any) -> Any:
    """Table keys are strings in YAML; look scalars up by their string form."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return to_string(value, "lookup")
    return None


@dataclass(frozen=True, slots=True)
class Transform:
    name: str
    doc: str
    argument: str | None = None  # what the argument is, when one is required


TRANSFORMS: dict[str, Transform] = {t.name: t for t in [
    Transform("string", "convert to a string (numbers without a trailing .0; objects as JSON)"),
    Transform("int", "convert to an integer (\"42\", 42.0 -> 42)"),
    Transform("float", "convert to a float (\"19.99\" -> 19.99)"),
    Transform("bool", "convert to true/false (true/yes/1, false/no/0)"),
    Transform("lower", "lowercase a string"),
    Transform("upper", "uppercase a string"),
    Transform("title", "title-case a string"),
    Transform("trim", "strip surrounding white space"),
    Transform("empty_to_null", "treat \"\" (or an empty list/object) as missing"),
    Transform("default", "use this value when missing, null or \"\"", "value"),
    Transform("hash", "hex digest: sha256, sha1 or md5", "algorithm"),
    Transform("sha256", "hex SHA-256 digest of the string form"),
    Transform("lookup", "replace through a lookup table (see `tables`)", "table name"),
    Transform("epoch_ms_to_s", "epoch milliseconds -> epoch seconds"),
    Transform("epoch_s_to_ms", "epoch seconds -> epoch milliseconds"),
    Transform("epoch_s_to_iso", "epoch seconds -> YYYY-MM-DDTHH:MM:SSZ"),
    Transform("epoch_ms_to_iso", "epoch milliseconds -> YYYY-MM-DDTHH:MM:SSZ"),
    Transform("iso_to_epoch_s", "ISO-8601 date -> epoch seconds"),
    Transform("iso_to_epoch_ms", "ISO-8601 date -> epoch milliseconds"),
    Transform("round", "round a number to N decimals", "digits"),
    Transform("truncate", "cut a string to N characters", "length"),
    Transform("prefix", "prepend a string", "text"),
    Transform("suffix", "append a string", "text"),
    Transform("replace", "replace text: {old: a, new: b}", "{old, new}"),
    Transform("split", "split a string into a list", "separator"),
    Transform("join", "join a list into a string", "separator"),
    Transform("json", "serialise an object or list to a JSON string"),
]}

CASTS = {
    "string": "string", "str": "string", "int": "int", "integer": "int", "float": "float",
    "number": "float", "bool": "bool", "boolean": "bool",
}


_FUNCTIONS: dict[str, Callable[[Any, str], Any]] = {
    "string": to_string, "int": to_int, "float": to_float, "bool": to_bool,
    "epoch_ms_to_s": epoch_ms_to_s, "epoch_s_to_ms": epoch_s_to_ms,
    "epoch_s_to_iso": epoch_s_to_iso, "epoch_ms_to_iso": epoch_ms_to_iso,
    "iso_to_epoch_s": iso_to_epoch_s, "iso_to_epoch_ms": iso_to_epoch_ms,
    "sha256": HASHES["sha256"],
}
# Fast paths: the type a function would return unchanged, so the call can be skipped.
_IDENTITY_TYPE = {"string": "str", "int": "int", "float": "float", "bool": "bool"}
# What the function returns for an int (never a bool: ``type(x) is int``), as inline source.
_INT_INLINE = {"string": "str({})", "float": "float({})", "epoch_ms_to_s": "{} // 1000",
               "epoch_s_to_ms": "{} * 1000"}


def call_source(cg: Codegen, var: str, name: str, what: str) -> tuple[str | None, str]:
    """For a transform done by a function (``epoch_ms_to_s``...): (the source of its result
    for an int ``var``, written inline, or None; the source of the call, for any other value).
    """
    fn = cg.const(_FUNCTIONS[name], f"t_{name}")
    inline = _INT_INLINE[name].format(var) if name in _INT_INLINE else None
    return inline, f"{fn}({var}, {cg.literal(what)})"


def cast_source(cg: Codegen, var: str, name: str, what: str, *,
                fast: bool = False) -> tuple[str, str]:
    """For cast ``name``: (the Python type it keeps as is, source converting any other value).

    The conversion is for a ``var`` that is not null. Ints (and floats, to string) convert
    inline where the cast's function would do exactly that. With ``fast``, strings convert
    inline too, with Python's own ``float``/``int``, which take what the cast functions take
    but raise ValueError where they raise TransformError: code built with ``fast`` must redo
    the record with code built without it on ValueError (see _Compiler.function).
    """
    fn = cg.const(_FUNCTIONS[name], f"t_{name}")
    call = f"{fn}({var}, {cg.literal(what)})"
    if fast and name == "float":
        x, finite = cg.name("x"), cg.const(_isfinite, "isfinite")
        call = (f"({x} if {finite}({x} := float({var})) else {call}) if type({var}) is str "
                f"else {call}")
    elif fast and name == "int":
        call = f"int({var}) if type({var}) is str else {call}"
    elif name == "string":
        call = (f"(str(int({var})) if {var}.is_integer() else str({var})) if type({var}) is float "
                f"else {call}")
    if name in _INT_INLINE:
        call = f"{_INT_INLINE[name].format(var)} if type({var}) is int else {call}"
    return _IDENTITY_TYPE[name], call


def emit_transform(
    cg: Codegen, var: str, name: str, argument: Any, what: str,
    tables: dict[str, tuple[dict[str, Any], Any, bool]],
) -> None:
    """Emit code that applies transform ``name`` to local ``var`` in place."""
    label = cg.literal(what)
    if name == "default":
        # `not var` first: one truth test settles the common, non-empty value
        with cg.block(f"if not {var} and ({var} is None or {var} == ''):"):
            cg.emit(f"{var} = {cg.literal(argument)}")
        return
    if name == "empty_to_null":
        cg.emit(f"if not {var} and ({var} == '' or {var} == [] or {var} == {{}}): {var} = None")
        return
    if name in _FUNCTIONS:
        fn = cg.const(_FUNCTIONS[name], f"t_{name}")
        fast = _IDENTITY_TYPE.get(name)
        call = f"{fn}({var}, {label})"
        if name in _INT_INLINE:  # the common int input done inline, exactly as fn does it
            if fast is None:
                cg.emit(f"if type({var}) is int: {var} = {_INT_INLINE[name].format(var)}")
                cg.emit(f"elif {var} is not None: {var} = {call}")
                return
            call = f"{_INT_INLINE[name].format(var)} if type({var}) is int else {call}"
        guard = f"{var} is not None and type({var}) is not {fast}" if fast else f"{var} is not None"
        cg.emit(f"if {guard}: {var} = {call}")
        return
    if name in ("lower", "upper", "title"):
        cg.emit(f"if type({var}) is str: {var} = {var}.{name}()")
        return
    if name == "trim":
        cg.emit(f"if type({var}) is str: {var} = {var}.strip()")
        return
    if name == "hash":
        fn = cg.const(HASHES[argument], f"t_{argument}")
        cg.emit(f"if {var} is not None: {var} = {fn}({var}, {label})")
        return
    if name == "lookup":
        values, default, ignore_case = tables[argument]
        table = cg.const(values, "table")
        key_fn = cg.const(lookup_key, "lookup_key")
        key = cg.name("k")
        with cg.block(f"if {var} is not None:"):
            cg.emit(f"{key} = {var} if type({var}) is str else {key_fn}({var})")
            if ignore_case:
                cg.emit(f"if {key} is not None: {key} = {key}.casefold()")
            fallback = var if default is None else cg.literal(default)
            cg.emit(f"{var} = {table}.get({key}, {fallback})")
        return
    if name == "json":
        dumps = cg.const(to_string, "t_json")
        cg.emit(f"if {var} is not None and type({var}) is not str: {var} = {dumps}({var}, {label})")
        return
    if name == "round":
        cg.emit(f"if type({var}) is float or type({var}) is int: "
                f"{var} = round({var}, {int(argument)})")
        return
    if name == "truncate":
        cg.emit(f"if type({var}) is str: {var} = {var}[:{int(argument)}]")
        return
    if name in ("prefix", "suffix"):
        text = cg.literal(str(argument))
        expr = f"{text} + {var}" if name == "prefix" else f"{var} + {text}"
        cg.emit(f"if type({var}) is str: {var} = {expr}")
        return
    if name == "replace":
        old, new = cg.literal(str(argument["old"])), cg.literal(str(argument["new"]))
        cg.emit(f"if type({var}) is str: {var} = {var}.replace({old}, {new})")
        return
    if name == "split":
        cg.emit(f"if type({var}) is str: {var} = {var}.split({cg.literal(str(argument))})")
        return
    if name == "join":
        stringify = cg.const(to_string, "t_string")
        sep = cg.literal(str(argument))
        cg.emit(f"if type({var}) is list: "
                f"{var} = {sep}.join({stringify}(x, {label}) for x in {var} if x is not None)")
        return
    raise TransformSpecError(f"unknown transform {name!r}")  # pragma: no cover - checked first


def check_transform(
    step: Any, tables: dict[str, Any]
) -> tuple[str, Any]:
    """Validate one step (``lower`` or ``{round: 2}``) and return (name, argument)."""
    if isinstance(step, str):
        name, argument = step, None
    elif isinstance(step, dict) and len(step) == 1:
        ((name, argument),) = step.items()
    else:
        raise TransformSpecError(
            "a transform is a name (`lower`) or a one-key mapping (`{default: x}`)"
        )
    if name not in TRANSFORMS:
        raise TransformSpecError(f"unknown transform {name!r}")
    spec = TRANSFORMS[name]
    if spec.argument is not None and isinstance(step, str):
        raise TransformSpecError(f"transform {name!r} needs an argument ({spec.argument}): "
                                 f"write `{{{name}: ...}}`")
    if spec.argument is None and not isinstance(step, str):
        raise TransformSpecError(f"transform {name!r} takes no argument: write `{name}`")
    if name == "hash" and argument not in HASHES:
        raise TransformSpecError(f"hash algorithm must be one of {', '.join(HASHES)}")
    if name == "lookup" and argument not in tables:
        raise TransformSpecError(f"unknown table {argument!r}")
    if name in ("round", "truncate") and (not isinstance(argument, int) or argument < 0):
        raise TransformSpecError(f"{name} takes a whole number")
    if name == "replace" and not (
        isinstance(argument, dict) and set(argument) == {"old", "new"}
    ):
        raise TransformSpecError("replace takes {old: ..., new: ...}")
    return name, argument
