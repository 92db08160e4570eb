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
from moerules.engine.rules.loading import MAX_DEPTH, LDict, LList, load_value, load_yaml

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


def find_bundle(ref: str) -> Path | None:
    """A bundle file from a path given by the user (file or directory) or a shipped name.

    For command-line arguments: what the user names is read. ``extends:`` in a file goes
    through the stricter ``_extended``.
    """
    candidate = Path(ref)
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


def load_bundle_document(
    path: Path,
    _chain: tuple[Path, ...] = (),
    _project: Path | None = None,
    *,
    text: str | None = None,
) -> LDict:
    """Load a bundle file, resolving ``extends:`` chains into one merged document.

    ``extends:`` names a shipped bundle, or a file (or a folder holding ``bundle.yaml``)
    inside the project folder: the folder of the bundle file being loaded, and everything
    under it. The project folder is fixed by the first file of the chain, so a base file may
    extend another file of the same project. Anything else (``/etc/...``, ``../..``, a
    symbolic link that leads out) is refused by its path alone: it is never opened.

    ``text``, when given, is the file's content (an edit not saved yet, as the playground
    has it); what it extends is still found from ``path``.
    """
    resolved = path.resolve()
    project = _project or resolved.parent
    doc = load_yaml(path) if text is None else load_yaml(path, text)
    if not isinstance(doc, LDict):
        raise RuleError(
            [
                Problem(
                    getattr(doc, "pos", Position(str(path))),
                    "a bundle file must be a mapping of keys to values",
                )
            ]
        )
    parent_ref = doc.get("extends")
    if parent_ref is None:
        return doc
    pos = doc.val_pos["extends"]
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise RuleError([Problem(pos, "`extends` takes a shipped bundle's name or a path")])
    parent, parent_project = _extended(parent_ref, path, project, pos)
    parent_resolved = parent.resolve()
    if parent_resolved in _chain or parent_resolved == resolved or len(_chain) >= MAX_EXTENDS_DEPTH:
        raise RuleError([Problem(pos, f"`extends` loops back to {parent} (or nests too deep)")])
    base = load_bundle_document(parent, (*_chain, resolved), parent_project)
    merged: LDict = _merge(base, doc, None)
    return merged


def _extended(ref: str, path: Path, project: Path, pos: Position) -> tuple[Path, Path]:
    """The file ``extends: ref`` names and the project folder it belongs to."""
    candidate = (path.parent / ref).resolve()  # absolute refs stay absolute
    if candidate.is_relative_to(project):
        if candidate.is_file():
            return candidate, project
        if candidate.is_dir() and (candidate / BUNDLE_FILE).is_file():
            return candidate / BUNDLE_FILE, project
    shipped = shipped_bundles().get(ref)
    if shipped is not None:
        return shipped, rules_dir().resolve()
    if not candidate.is_relative_to(project):
        raise RuleError(
            [
                Problem(
                    pos,
                    f"`extends` may name a shipped bundle or a file inside "
                    f"this bundle's folder {project}; {ref!r} is outside it",
                )
            ]
        )
    from moerules.engine.rules.validation import did_you_mean

    hint = did_you_mean(ref, shipped_bundles())
    raise RuleError(
        [
            Problem(
                pos,
                f"cannot find bundle {ref!r} to extend{hint}; "
                "give a shipped bundle's name or a path",
            )
        ]
    )


_SET_USAGE = "--set takes KEY=VALUE, e.g. destination.data_center=02"


def apply_sets(doc: LDict, sets: list[str]) -> LDict:
    """Apply ``--set a.b.c=value`` overrides (values parsed as YAML) to a merged document.

    Problems are positioned at ``--set KEY`` (with the column inside the value); the value
    itself is never part of a message, as it may be a secret (``destination.data_api_key``).
    """
    out: LDict = _copy(doc)
    problems = []
    for n, item in enumerate(sets, 1):
        key, sep, text = item.partition("=")
        parts = key.split(".")
        label = f"--set {key if len(key) <= 80 else key[:80] + '...'}"
        if not sep or not key or not all(parts):
            problems.append(Problem(Position(f"--set #{n}"), _SET_USAGE))
            continue
        if (
            parts[0] in ("source", "destination")
            and len(parts) > 1
            and parts[1] not in ("connector", "settings")
        ):
            parts.insert(1, "settings")  # --set destination.endpoint=... is a setting
        depth = MAX_DEPTH - len(parts)
        if depth < 1:
            problems.append(Problem(Position(label), f"KEY has more than {MAX_DEPTH - 1} parts"))
            continue
        pos = Position(label)
        try:
            value = load_value(label, text, depth) if text.strip() else ""
        except RuleError as exc:
            problems += [_without(p, text) for p in exc.problems]
            continue
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


def _without(problem: Problem, text: str) -> Problem:
    """A problem whose message cannot quote the value, in case the value is a secret."""
    value = text.strip()
    if len(value) < 4 or value not in problem.message:
        return problem
    return Problem(problem.position, problem.message.replace(value, "***"))


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
