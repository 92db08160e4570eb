"""Bundles as they were at a git revision: ``rules/x/bundle.yaml@HEAD~1``.

``moerules diff`` compares a bundle file with itself at an earlier commit. The file at that
revision is written to a temporary directory under its path in the repository, together with
the files its ``extends:`` chain names by relative path (at the same revision), so an overlay
at ``HEAD~1`` extends its base at ``HEAD~1`` too. A shipped bundle's name in ``extends:``
resolves to the installed bundle. Positions in errors name ``PATH@REV``, not the copy.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from moerules.engine.errors import Position, Problem, RuleError
from moerules.engine.rules.loading import LDict, load_yaml
from moerules.engine.rules.overlay import BUNDLE_FILE

__all__ = ["bundle_at_revision", "split_revision"]


def split_revision(ref: str) -> tuple[str, str | None]:
    """``path@rev`` -> (path, rev); a ref that names an existing file keeps its ``@``."""
    if "@" not in ref or Path(ref).exists():
        return ref, None
    path, _, rev = ref.rpartition("@")
    return (path, rev) if path and rev else (ref, None)


def _git(top: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(top), *args], capture_output=True, check=False, timeout=60
    )


@contextmanager
def bundle_at_revision(path: str, rev: str) -> Iterator[Path]:
    """The bundle file ``path`` as it was at git revision ``rev``, in a temporary copy."""
    label = f"{path}@{rev}"
    target = Path(path)
    if target.is_dir():
        target = target / BUNDLE_FILE
    where = next((p for p in (target.parent, *target.parent.parents) if p.is_dir()), Path("."))
    try:
        found = _git(where, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuleError([Problem(Position(label), f"cannot run git: {exc}")]) from None
    if found.returncode != 0:
        raise RuleError(
            [
                Problem(
                    Position(label),
                    f"{where} is not in a git repository, so {rev!r} names no revision of it",
                )
            ]
        )
    top = Path(found.stdout.decode().strip())
    relative = PurePosixPath(target.resolve().relative_to(top.resolve()).as_posix())
    with tempfile.TemporaryDirectory(prefix="moerules-rev-") as tmp:
        root = Path(tmp)
        _materialise(top, rev, relative, root, label, set())
        copy = root / relative
        try:
            yield copy
        except RuleError as exc:
            names = {str(copy): path}  # the file asked for, named as the user named it
            raise RuleError([_relabel(p, root, rev, names) for p in exc.problems]) from None


def _materialise(
    top: Path, rev: str, relative: PurePosixPath, root: Path, label: str, seen: set[PurePosixPath]
) -> None:
    """Write ``relative`` at ``rev`` under ``root``, then what its ``extends:`` names."""
    if relative in seen or len(seen) > 8:
        return
    seen.add(relative)
    shown = _git(top, "show", f"{rev}:{relative}")
    if shown.returncode != 0:
        if seen == {relative}:  # the file asked for, not a base it names
            message = shown.stderr.decode("utf-8", "replace").strip().splitlines()
            raise RuleError(
                [
                    Problem(
                        Position(label),
                        f"cannot read {relative} at revision "
                        f"{rev!r}: {message[-1] if message else 'git failed'}",
                    )
                ]
            )
        return
    copy = root / relative
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(shown.stdout)
    try:
        doc = load_yaml(copy)
    except RuleError:
        return  # loading it for real reports the problem
    parent = doc.get("extends") if isinstance(doc, LDict) else None
    if isinstance(parent, str) and not Path(parent).is_absolute():
        # a path relative to this file, as of the same revision (else a shipped name)
        base = _normal(relative.parent / parent)
        if _git(top, "cat-file", "-e", f"{rev}:{base}/{BUNDLE_FILE}").returncode == 0:
            base = base / BUNDLE_FILE
        _materialise(top, rev, base, root, label, seen)


def _normal(path: PurePosixPath) -> PurePosixPath:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts)


def _relabel(problem: Problem, root: Path, rev: str, names: dict[str, str]) -> Problem:
    path = problem.position.path
    prefix = str(root) + "/"
    if not path.startswith(prefix):
        return problem
    name = names.get(path, path[len(prefix) :])
    position = Position(f"{name}@{rev}", problem.position.line, problem.position.col)
    return Problem(position, problem.message)
