"""A small Python source emitter for the compiler.

Generated code is built only from validated rule structure: every value that came from a rule
file enters the namespace as a constant (``self.const``) and is referenced by a generated name,
never spliced into the source text, so no rule file can inject code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Codegen", "PathCache"]


class Codegen:
    """Collects lines of one module and the constants it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {}
        self._indent = 0
        self._counter = 0
        self._const_ids: dict[tuple[Any, Any], str] = {}

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, value: Any, prefix: str = "K") -> str:
        """A name bound to ``value`` in the generated module's namespace."""
        key: tuple[Any, Any]
        try:
            key = (type(value), value)
            hash(key)
        except TypeError:  # an object (a table): the same one is bound once
            key = (id, id(value))
        if key in self._const_ids:
            return self._const_ids[key]
        name = self.name(prefix)
        self.namespace[name] = value  # (which keeps it alive: its id stays its own)
        self._const_ids[key] = name
        return name

    def literal(self, value: Any) -> str:
        """Source for a small immutable literal, or a constant's name for anything else."""
        if value is None or isinstance(value, bool | int | float):
            return repr(value)
        if isinstance(value, str) and len(value) < 200:
            return repr(value)
        return self.const(value)

    def emit(self, line: str) -> None:
        self.lines.append("    " * self._indent + line)

    def insert(self, mark: int, line: str) -> None:
        """Emit ``line`` before the lines emitted since ``len(self.lines)`` was ``mark``."""
        self.lines.insert(mark, "    " * self._indent + line)

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.emit(header)
        self._indent += 1
        mark = len(self.lines)
        try:
            yield
        finally:
            if len(self.lines) == mark:
                self.emit("pass")
            self._indent -= 1

    def source(self) -> str:
        return "\n".join(self.lines) + "\n"

    def build(self, filename: str) -> dict[str, Any]:
        """Compile the module and return its namespace (functions included)."""
        code = compile(self.source(), filename, "exec")
        namespace = dict(self.namespace)
        exec(code, namespace)
        return namespace


class PathCache:
    """Locals already holding a path's value in the current block (common-prefix reuse).

    A child cache sees its parent's entries but keeps its own to itself, so a value computed
    inside a branch is never referenced outside it.
    """

    def __init__(self, roots: dict[str, str], parent: PathCache | None = None) -> None:
        self.roots = roots
        self.parent = parent
        self._locals: dict[tuple[str | int, ...], str] = {}

    def child(self, roots: dict[str, str] | None = None) -> PathCache:
        return PathCache(roots if roots is not None else self.roots, self)

    def get(self, path: tuple[str | int, ...]) -> str | None:
        cache: PathCache | None = self
        while cache is not None:
            if path in cache._locals:
                return cache._locals[path]
            cache = cache.parent
        return None

    def put(self, path: tuple[str | int, ...], local: str) -> None:
        self._locals[path] = local
