"""Structural validation of a loaded rule document: keys first (with did-you-mean), then types.

Pydantic's own message for an unknown key names no alternative, so keys are checked here
against the models' fields before pydantic runs; pydantic then reports types and missing keys.
Every problem carries the file position of the key or value it is about.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from moerules.engine.errors import Position, Problem
from moerules.engine.rules.loading import LDict, LList, position_of
from pydantic import BaseModel, ValidationError

__all__ = ["did_you_mean", "validate_document"]

M = TypeVar("M", bound=BaseModel)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else an empty string."""
    options = list(choices)
    folded = {o.casefold(): o for o in options}
    if word.casefold() in folded:  # a case slip is the likeliest mistake: say so first
        close = [folded[word.casefold()]]
    else:
        close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_in(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('model'|'list'|'dict', Model) when an annotation holds a model we can key-check."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
        return None
    if origin is list:
        inner = _model_in(typing.get_args(annotation)[0])
        return ("list", inner[1]) if inner and inner[0] == "model" else None
    if origin is dict:
        inner = _model_in(typing.get_args(annotation)[1])
        return ("dict", inner[1]) if inner and inner[0] == "model" else None
    return None


def _check_keys(node: Any, model: type[BaseModel], problems: list[Problem]) -> None:
    """Report unknown keys (with a suggestion) and remove them, so the rest can be checked."""
    if not isinstance(node, LDict):
        return
    marker = getattr(model, "shorthand_marker", None)
    if isinstance(marker, str) and marker not in node:
        return  # the short form (e.g. a table written as its values); no keys to check
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    unknown: list[str] = []
    for key in node:
        info = fields.get(key)
        if info is None:
            hint = did_you_mean(key, fields)
            allowed = ", ".join(sorted(fields))
            problems.append(
                Problem(node.key_pos[key], f"unknown key {key!r}{hint}; allowed here: {allowed}")
            )
            unknown.append(key)
            continue
        found = _model_in(info.annotation)
        if not found:
            continue
        kind, inner = found
        value = node[key]
        if kind == "model":
            _check_keys(value, inner, problems)
        elif kind == "list" and isinstance(value, LList):
            for item in value:
                _check_keys(item, inner, problems)
        elif kind == "dict" and isinstance(value, LDict):
            for item in value.values():
                _check_keys(item, inner, problems)
    for key in unknown:
        del node[key]


def _describe(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_document(raw: Any, model: type[M], path: str) -> tuple[M | None, list[Problem]]:
    """Validate ``raw`` against ``model``; return the model (or None) and all problems found.

    Unknown keys are reported and then ignored, so one pass also finds the type errors (and,
    in the compiler, the semantic errors) of everything else.
    """
    problems: list[Problem] = []
    if not isinstance(raw, LDict):
        pos = getattr(raw, "pos", Position(path))
        return None, [Problem(pos, "a rule file must be a mapping of keys to values")]
    from moerules.engine.rules.overlay import copy_document

    raw = copy_document(raw)  # unknown keys are removed from this copy, not the caller's
    _check_keys(raw, model, problems)
    # A wrong value is reported, then removed from the copy and validation tried again, so
    # one pass reports the rest of the file too. Removing a required key ends the attempt.
    for attempt in range(5):
        try:
            return model.model_validate(raw), problems
        except ValidationError as exc:
            errors = exc.errors()
        missing = any(err["type"] == "missing" for err in errors)
        if attempt and missing:
            break  # caused by a removal: the first round's problems are the real ones
        problems += [p for p in _problems(raw, errors) if p not in problems]
        if missing or not all(_remove(raw, err["loc"]) for err in errors):
            break
    return None, _dedupe(problems)


def _remove(raw: Any, loc: tuple[Any, ...]) -> bool:
    """Delete the optional value at ``loc`` from a document copy; False if it cannot."""
    doc_loc = _trim_to_document(raw, loc)
    if not doc_loc or not isinstance(doc_loc[-1], str):
        return False
    node = raw
    for part in doc_loc[:-1]:
        node = node[part]
    if not isinstance(node, dict):
        return False
    node.pop(doc_loc[-1], None)
    return True


def _problems(raw: Any, errors: list[Any]) -> list[Problem]:
    problems: list[Problem] = []
    for err in errors:
        if err["type"] == "extra_forbidden":
            continue  # reported above, with a suggestion
        loc = _trim_to_document(raw, tuple(err["loc"]))
        pos = position_of(raw, loc, key=err["type"] == "missing") or raw.pos
        message = err["msg"]
        if err["type"] == "missing":
            message = f"missing required key {err['loc'][-1]!r}"
            where = _describe(loc)
            if where:
                message += f" in {where}"
        else:
            where = _describe(loc)
            message = f"{where}: {message}" if where else message
        problems.append(Problem(pos, message))
    return problems


def _trim_to_document(raw: Any, loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """The longest prefix of ``loc`` that exists in the document."""
    node = raw
    kept: list[str | int] = []
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue  # a union branch label such as "str" or "dict[str,any]": skip it
        kept.append(part)
    return tuple(kept)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Position, str]] = set()
    out = []
    for p in problems:
        if (p.position, p.message) not in seen:
            seen.add((p.position, p.message))
            out.append(p)
    return out
