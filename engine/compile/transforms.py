"""The transform vocabulary: the only operations a rule can apply to a value.

Each transform is registered once, here, with everything about it: its doc (``moerules schema``
and the README's table read it from here), what its argument is and how that argument is
checked at load, and the code it emits: a line or two of Python acting on a local in place,
calling a conversion (``conversions``) for the heavier ones. Every transform passes null through
untouched (except ``default``), so a missing field stays missing instead of becoming
``"None"``. A value a cast cannot convert dead-letters the record with the field named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import isfinite as _isfinite
from typing import Any, NamedTuple

from moerules.engine.compile.codegen import Codegen
from moerules.engine.compile.conversions import (
    HASHES,
    epoch_ms_to_iso,
    epoch_ms_to_s,
    epoch_s_to_iso,
    epoch_s_to_ms,
    iso_to_epoch_ms,
    iso_to_epoch_s,
    lookup_key,
    to_bool,
    to_float,
    to_int,
    to_string,
)
from moerules.engine.rules.validation import did_you_mean

__all__ = [
    "CASTS",
    "TRANSFORMS",
    "LookupTable",
    "Site",
    "Transform",
    "TransformSpecError",
    "call_source",
    "cast_source",
    "check_transform",
    "lookup_key",
    "transforms_table",
]


class TransformSpecError(ValueError):
    """An unknown transform or a bad argument, found at load."""


class LookupTable(NamedTuple):
    """A bundle's table as transforms use it: keys casefolded when it ignores case."""

    values: dict[str, Any]
    default: Any
    ignore_case: bool


class Site(NamedTuple):
    """Where a transform applies: local ``var`` of the code ``cg`` is writing, changed in
    place; ``what`` names the field in dead-letter reasons."""

    cg: Codegen
    var: str
    what: str
    tables: Mapping[str, LookupTable]


Emit = Callable[[Site, Any], None]
Check = Callable[[Any, Mapping[str, LookupTable]], str | None]


@dataclass(frozen=True, slots=True)
class Transform:
    """One transform: its doc, its argument (what it is, and its check), its code."""

    name: str
    doc: str
    emit: Emit
    argument: str | None = None  # what the argument is, when one is required
    check: Check | None = None  # the argument's problem, if it has one


TRANSFORMS: dict[str, Transform] = {}


def transform(
    name: str, doc: str, *, argument: str | None = None, check: Check | None = None
) -> Callable[[Emit], Emit]:
    """Register the decorated emitter as transform ``name``."""

    def register(emit: Emit) -> Emit:
        assert name not in TRANSFORMS, f"transform {name!r} registered twice"
        TRANSFORMS[name] = Transform(name, doc, emit, argument, check)
        return emit

    return register


# -- conversions done by a function ------------------------------------------------------------
_FUNCTIONS: dict[str, Callable[[Any, str], Any]] = {}
_IDENTITY_TYPE: dict[str, str] = {}  # the type a function returns unchanged: no call needed
_INT_INLINE: dict[str, str] = {}  # what it returns for an int (never a bool), as inline source


def _converter(
    name: str,
    function: Callable[[Any, str], Any],
    doc: str,
    *,
    keeps: str | None = None,
    int_inline: str | None = None,
) -> None:
    """Register a transform done by ``function``: skipped for the type it ``keeps``, written
    inline (``int_inline``) for an int, called for anything else that is not null."""
    _FUNCTIONS[name] = function
    if keeps is not None:
        _IDENTITY_TYPE[name] = keeps
    if int_inline is not None:
        _INT_INLINE[name] = int_inline

    def emit(at: Site, _: Any) -> None:
        cg, var = at.cg, at.var
        fn = cg.const(function, f"t_{name}")
        call = f"{fn}({var}, {cg.literal(at.what)})"
        if int_inline is not None:  # the common int input done inline, exactly as fn does it
            if keeps is None:
                cg.emit(f"if type({var}) is int: {var} = {int_inline.format(var)}")
                cg.emit(f"elif {var} is not None: {var} = {call}")
                return
            call = f"{int_inline.format(var)} if type({var}) is int else {call}"
        guard = (
            f"{var} is not None and type({var}) is not {keeps}" if keeps else (f"{var} is not None")
        )
        cg.emit(f"if {guard}: {var} = {call}")

    transform(name, doc)(emit)


def _in_place(name: str, doc: str, method: str) -> None:
    """Register a transform that is a string method (strings only; anything else passes)."""

    @transform(name, doc)
    def emit(at: Site, _: Any) -> None:
        at.cg.emit(f"if type({at.var}) is str: {at.var} = {at.var}.{method}()")


_converter(
    "string",
    to_string,
    "convert to a string (numbers without a trailing .0; objects and lists as JSON)",
    keeps="str",
    int_inline="str({})",
)
_converter(
    "int",
    to_int,
    'convert to an integer ("42", 42.0 -> 42; 2.5 or "x" will not '
    "convert: the event is dead-lettered)",
    keeps="int",
)
_converter(
    "float",
    to_float,
    'convert to a float ("19.99" -> 19.99; "abc" will not convert: the event is dead-lettered)',
    keeps="float",
    int_inline="float({})",
)
_converter(
    "bool",
    to_bool,
    "convert to true/false (true/yes/1, false/no/0; anything else is dead-lettered)",
    keeps="bool",
)
_in_place("lower", "lowercase a string", "lower")
_in_place("upper", "uppercase a string", "upper")
_in_place("title", "title-case a string", "title")
_in_place("trim", "strip surrounding white space", "strip")


@transform("empty_to_null", 'treat "" (or an empty list/object) as missing')
def _empty_to_null(at: Site, _: Any) -> None:
    v = at.var
    at.cg.emit(f"if not {v} and ({v} == '' or {v} == [] or {v} == {{}}): {v} = None")


@transform("default", 'use this value when missing, null or ""', argument="value")
def _default(at: Site, value: Any) -> None:
    # `not var` first: one truth test settles the common, non-empty value
    with at.cg.block(f"if not {at.var} and ({at.var} is None or {at.var} == ''):"):
        at.cg.emit(f"{at.var} = {at.cg.literal(value)}")


def _check_hash(algorithm: Any, _: Mapping[str, LookupTable]) -> str | None:
    return None if algorithm in HASHES else (f"hash algorithm must be one of {', '.join(HASHES)}")


@transform("hash", "hex digest: sha256, sha1 or md5", argument="algorithm", check=_check_hash)
def _hash(at: Site, algorithm: Any) -> None:
    fn = at.cg.const(HASHES[algorithm], f"t_{algorithm}")
    at.cg.emit(f"if {at.var} is not None: {at.var} = {fn}({at.var}, {at.cg.literal(at.what)})")


_converter("sha256", HASHES["sha256"], "hex SHA-256 digest of the string form")


def _check_table(name: Any, tables: Mapping[str, LookupTable]) -> str | None:
    return None if name in tables else (f"unknown table {name!r}{did_you_mean(str(name), tables)}")


@transform(
    "lookup",
    "replace through a lookup table (see `tables`)",
    argument="table name",
    check=_check_table,
)
def _lookup(at: Site, name: Any) -> None:
    cg, var = at.cg, at.var
    values, default, ignore_case = at.tables[name]
    table = cg.const(values, "table")
    key_fn = cg.const(lookup_key, "lookup_key")
    key = cg.name("k")
    with cg.block(f"if {var} is not None:"):
        cg.emit(f"{key} = {var} if type({var}) is str else {key_fn}({var})")
        if ignore_case:
            cg.emit(f"if {key} is not None: {key} = {key}.casefold()")
        fallback = var if default is None else cg.literal(default)
        cg.emit(f"{var} = {table}.get({key}, {fallback})")


_converter(
    "epoch_ms_to_s", epoch_ms_to_s, "epoch milliseconds -> epoch seconds", int_inline="{} // 1000"
)
_converter(
    "epoch_s_to_ms", epoch_s_to_ms, "epoch seconds -> epoch milliseconds", int_inline="{} * 1000"
)
_converter("epoch_s_to_iso", epoch_s_to_iso, "epoch seconds -> YYYY-MM-DDTHH:MM:SSZ")
_converter("epoch_ms_to_iso", epoch_ms_to_iso, "epoch milliseconds -> YYYY-MM-DDTHH:MM:SSZ")
_converter("iso_to_epoch_s", iso_to_epoch_s, "ISO-8601 date -> epoch seconds")
_converter("iso_to_epoch_ms", iso_to_epoch_ms, "ISO-8601 date -> epoch milliseconds")


def _check_count(what: str) -> Check:
    def check(argument: Any, _: Mapping[str, LookupTable]) -> str | None:
        ok = type(argument) is int and argument >= 0
        return None if ok else f"{what} takes a whole number"

    return check


@transform("round", "round a number to N decimals", argument="digits", check=_check_count("round"))
def _round(at: Site, digits: Any) -> None:
    v = at.var
    at.cg.emit(f"if type({v}) is float or type({v}) is int: {v} = round({v}, {int(digits)})")


@transform(
    "truncate", "cut a string to N characters", argument="length", check=_check_count("truncate")
)
def _truncate(at: Site, length: Any) -> None:
    at.cg.emit(f"if type({at.var}) is str: {at.var} = {at.var}[:{int(length)}]")


@transform("prefix", "prepend a string", argument="text")
def _prefix(at: Site, text: Any) -> None:
    at.cg.emit(f"if type({at.var}) is str: {at.var} = {at.cg.literal(str(text))} + {at.var}")


@transform("suffix", "append a string", argument="text")
def _suffix(at: Site, text: Any) -> None:
    at.cg.emit(f"if type({at.var}) is str: {at.var} = {at.var} + {at.cg.literal(str(text))}")


def _check_replace(argument: Any, _: Mapping[str, LookupTable]) -> str | None:
    ok = isinstance(argument, dict) and set(argument) == {"old", "new"}
    return None if ok else "replace takes {old: ..., new: ...}"


@transform("replace", "replace text: {old: a, new: b}", argument="{old, new}", check=_check_replace)
def _replace(at: Site, argument: Any) -> None:
    old, new = at.cg.literal(str(argument["old"])), at.cg.literal(str(argument["new"]))
    at.cg.emit(f"if type({at.var}) is str: {at.var} = {at.var}.replace({old}, {new})")


@transform("split", "split a string into a list", argument="separator")
def _split(at: Site, separator: Any) -> None:
    sep = at.cg.literal(str(separator))
    at.cg.emit(f"if type({at.var}) is str: {at.var} = {at.var}.split({sep})")


@transform("join", "join a list into a string", argument="separator")
def _join(at: Site, separator: Any) -> None:
    cg, v = at.cg, at.var
    stringify = cg.const(to_string, "t_string")
    cg.emit(
        f"if type({v}) is list: {v} = {cg.literal(str(separator))}.join("
        f"{stringify}(x, {cg.literal(at.what)}) for x in {v} if x is not None)"
    )


@transform("json", "serialise an object or list to a JSON string")
def _json(at: Site, _: Any) -> None:
    dumps = at.cg.const(to_string, "t_json")
    at.cg.emit(
        f"if {at.var} is not None and type({at.var}) is not str: "
        f"{at.var} = {dumps}({at.var}, {at.cg.literal(at.what)})"
    )


CASTS = {
    "string": "string",
    "str": "string",
    "int": "int",
    "integer": "int",
    "float": "float",
    "number": "float",
    "bool": "bool",
    "boolean": "bool",
}
"""``as:`` names, each for the transform it applies last."""


# -- checking and applying steps ---------------------------------------------------------------
def check_transform(step: Any, tables: Mapping[str, LookupTable]) -> tuple[Transform, Any]:
    """One step (``lower`` or ``{round: 2}``) as (its transform, its argument); a
    TransformSpecError, whose message is the problem to report, when it is not one."""
    if isinstance(step, str):
        name, argument = step, None
    elif isinstance(step, dict) and len(step) == 1:
        ((name, argument),) = step.items()
    else:
        raise TransformSpecError(
            "a transform is a name (`lower`) or a one-key mapping (`{default: x}`)"
        )
    spec = TRANSFORMS.get(name)
    if spec is None:
        raise TransformSpecError(f"unknown transform {name!r}{did_you_mean(str(name), TRANSFORMS)}")
    if spec.argument is not None and isinstance(step, str):
        raise TransformSpecError(
            f"transform {name!r} needs an argument ({spec.argument}): write `{{{name}: ...}}`"
        )
    if spec.argument is None and not isinstance(step, str):
        raise TransformSpecError(f"transform {name!r} takes no argument: write `{name}`")
    problem = spec.check(argument, tables) if spec.check is not None else None
    if problem is not None:
        raise TransformSpecError(problem)
    return spec, argument


def call_source(cg: Codegen, var: str, name: str, what: str) -> tuple[str | None, str]:
    """For a transform done by a function (``epoch_ms_to_s``...): (the source of its result
    for an int ``var``, written inline, or None; the source of the call, for any other value).
    """
    fn = cg.const(_FUNCTIONS[name], f"t_{name}")
    inline = _INT_INLINE[name].format(var) if name in _INT_INLINE else None
    return inline, f"{fn}({var}, {cg.literal(what)})"


def cast_source(
    cg: Codegen, var: str, name: str, what: str, *, fast: bool = False
) -> tuple[str, str]:
    """For cast ``name``: (the Python type it keeps as is, source converting any other value).

    The conversion is for a ``var`` that is not null. Ints (and floats, to string) convert
    inline where the cast's function would do exactly that. With ``fast``, strings convert
    inline too, with Python's own ``float``/``int``, which take what the cast functions take
    but raise ValueError where they raise TransformError: code built with ``fast`` must redo
    the record with code built without it on ValueError (see ``sections.BundleCode.function``).
    """
    fn = cg.const(_FUNCTIONS[name], f"t_{name}")
    call = f"{fn}({var}, {cg.literal(what)})"
    if fast and name == "float":
        x, finite = cg.name("x"), cg.const(_isfinite, "isfinite")
        call = (
            f"({x} if {finite}({x} := float({var})) else {call}) if type({var}) is str else {call}"
        )
    elif fast and name == "int":
        call = f"int({var}) if type({var}) is str else {call}"
    elif name == "string":
        call = (
            f"(str(int({var})) if {var}.is_integer() else str({var})) if type({var}) is float "
            f"else {call}"
        )
    if name in _INT_INLINE:
        call = f"{_INT_INLINE[name].format(var)} if type({var}) is int else {call}"
    return _IDENTITY_TYPE[name], call


def transforms_table() -> str:
    """The README's table of transforms, from the registry."""
    rows = ["| transform | effect |", "|---|---|"]
    for spec in TRANSFORMS.values():
        shown = f"`{{{spec.name}: {spec.argument}}}`" if spec.argument else f"`{spec.name}`"
        rows.append(f"| {shown} | {spec.doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
