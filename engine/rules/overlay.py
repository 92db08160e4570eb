"""Finding bundles, ``extends:`` overlays, ``--set`` overrides and ``${ENV}`` settings.

Merge rules (also in the README):

* mappings merge key by key, recursively; the overlay's value wins;
* ``key: null`` in an overlay removes the key from the base;
* lists replace the base's list whole (an overlay's ``routing.projects`` is the project list),
  except ``events``, which merge by rule ``name``: a rule with a known name is merged into that
  rule in place, ``remove: true`` deletes it, and rules with new names are appended.

Every merged value keeps the position of the file it came from, so an error in an overlay
points at the overlay's line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from moerules.engine.errors import Position, Problem, RuleError
from moerules.engine.rules.loading import LDict, LList, load_yaml

__all__ = [
    "BUNDLE_FILE",
    "apply_sets",
    "find_bundle",
    "load_bundle_document",
    "resolve_env",
    "shipped_bundles",
]

BUNDLE_FILE = "bundle.yaml"
MAX_EXTENDS_DEPTH = 8
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def rules_dir() -> Path:
    return Path(str(resources.files("moerules.rules")))


def shipped_bundles() -> dict[str, Path]:
    """Shipped bundle name -> its bundle file."""
    out = {}
    for path in sorted(rules_dir().glob(f"*/{BUNDLE_FILE}")):
        out[path.parent.name] = path
    return out


def find_bundle(ref: str, relative_to: Path | None = None) -> Path | None:
    """A bundle file from a path (file or directory) or a shipped bundle's name."""
    candidates = [Path(ref)]
    if relative_to is not None and not Path(ref).is_absolute():
        candidates.insert(0, relative_to / ref)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and (candidate / BUNDLE_FILE).is_file():
            return candidate / BUNDLE_FILE
    return shipped_bundles().get(ref)


def copy_document(node: Any) -> Any:
    """A deep copy of loaded YAML data that keeps every position."""
    return _copy(node)


def _copy(node: Any) -> Any:
    if isinstance(node, LDict):
        out = LDict(node.pos)
        for k, v in node.items():
            out[k] = _copy(v)
        out.key_pos.update(node.key_pos)
        out.val_pos.update(node.val_pos)
        return out
    if isinstance(node, LList):
        seq = LList(node.pos)
        seq.extend(_copy(v) for v in node)
        seq.item_pos.extend(node.item_pos)
        return seq
    return node


def _merge(base: Any, over: Any, key: str | None) -> Any:
    if isinstance(base, LDict) and isinstance(over, LDict):
        out = _copy(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
                continue
            out[k] = _merge(base[k], v, k) if k in base else _copy(v)
            out.key_pos[k] = over.key_pos[k]
            out.val_pos[k] = over.val_pos[k]
        return out
    if key == "events" and isinstance(base, LList) and isinstance(over, LList):
        return _merge_rules(base, over)
    return _copy(over)


def _merge_rules(base: LList, over: LList) -> LList:
    out: LList = _copy(base)
    index = {r.get("name"): i for i, r in enumerate(out) if isinstance(r, LDict)}
    removed: set[int] = set()
    for pos, rule in zip(over.item_pos, over, strict=True):
        name = rule.get("name") if isinstance(rule, LDict) else None
        if name in index:
            i = index[name]
            if rule.get("remove") is True:
                removed.add(i)
                continue
            out[i] = _merge(out[i], rule, None)
            out.item_pos[i] = pos
        else:
            out.append(_copy(rule))
            out.item_pos.append(pos)
    if removed:
        kept = LList(out.pos)
        for i, (p, r) in enumerate(zip(out.item_pos, out, strict=True)):
            if i not in removed:
                kept.append(r)
                kept.item_pos.append(p)
        out = kept
    for r in out:
        if isinstance(r, LDict) and "remove" in r:
            r.pop("remove")
    return out


def load_bundle_document(path: Path, _chain: tuple[Path, ...] = ()) -> LDict:
    """Load a bundle file, resolving ``extends:`` chains into one merged document."""
    doc = load_yaml(path)
    if not isinstance(doc, LDict):
        raise RuleError([Problem(getattr(doc, "pos", Position(str(path))),
                                 "a bundle file must be a mapping of keys to values")])
    parent_ref = doc.get("extends")
    if parent_ref is None:
        return doc
    pos = doc.val_pos["extends"]
    if not isinstance(parent_ref, str):
        raise RuleError([Problem(pos, "`extends` takes a shipped bundle's name or a path")])
    parent = find_bundle(parent_ref, path.parent)
    if parent is None:
        from moerules.engine.rules.validation import did_you_mean

        hint = did_you_mean(parent_ref, shipped_bundles())
        raise RuleError([Problem(pos, f"cannot find bundle {parent_ref!r} to extend{hint}; "
                                      "give a shipped bundle's name or a path")])
    resolved = parent.resolve()
    if resolved in _chain or resolved == path.resolve() or len(_chain) >= MAX_EXTENDS_DEPTH:
        raise RuleError([Problem(pos, f"`extends` loops back to {parent} (or nests too deep)")])
    base = load_bundle_document(parent, (*_chain, path.resolve()))
    merged: LDict = _merge(base, doc, None)
    return merged


def apply_sets(doc: LDict, sets: list[str]) -> LDict:
    """Apply ``--set a.b.c=value`` overrides (values parsed as YAML) to a merged document."""
    out: LDict = _copy(doc)
    problems = []
    for item in sets:
        pos = Position(f"--set {item}")
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(Problem(pos, "--set takes KEY=VALUE, e.g. destination.data_center=02"))
            continue
        parts = key.split(".")
        if parts[0] in ("source", "destination") and len(parts) > 1 and parts[1] not in (
            "connector", "settings"
        ):
            parts.insert(1, "settings")  # --set destination.endpoint=... is a setting
        value = load_yaml(pos.path, f"v: {text}\n")["v"] if text.strip() else ""
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, LDict):
                child = LDict(pos)
                node[part] = child
                node.key_pos[part] = node.val_pos[part] = pos
            node = child
        node[parts[-1]] = value
        node.key_pos[parts[-1]] = node.val_pos[parts[-1]] = pos
    if problems:
        raise RuleError(problems)
    return out


def resolve_env(
    settings: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Substitute ``${VAR}`` in settings; unset variables stay as marked placeholders.

    Returns the settings and the names of variables that were not set.
    """
    env = os.environ if env is None else env
    missing: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        missing.append(name)
        return match.group(0)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return _ENV.sub(sub, value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    resolved = {k: walk(v) for k, v in settings.items()}
    return resolved, sorted(set(missing))
