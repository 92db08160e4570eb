"""Bounds on what one rule expression may cost, so that no rule file can exhaust the process.

The JMESPath and Jinja parsers recurse once per level of nesting, and so do the walkers that
check and compile their trees: text nested thousands deep would exhaust the stack (a
RecursionError, or a crash in C). So the nesting of an expression is measured on its text, by
a loop, before any parser sees it (``MAX_NESTING``), and the depth of the tree a parser built is
measured by a loop before anything walks it recursively (``MAX_DEPTH``). Both limits sit far
above anything a mapping needs and far below what the stack holds.

``MAX_TEMPLATE_OUTPUT`` caps the text one template may produce, and every value it builds on
the way (see ``templates``): an event whose template would make more is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["MAX_DEPTH", "MAX_NESTING", "MAX_TEMPLATE_OUTPUT", "excerpt", "tree_depth"]

MAX_NESTING = 32
"""Brackets, blocks and prefix operators one expression may nest, measured on its text."""

MAX_DEPTH = 64
"""Levels of the parsed tree: operators, filters and attributes applied one to another."""

MAX_TEMPLATE_OUTPUT = 65_536
"""Characters (or list items) a template may produce, in all and at every step."""

T = TypeVar("T")


def tree_depth(
    root: T,
    children: Callable[[T], Iterable[T]],
    limit: int = MAX_DEPTH,
    key: Callable[[T], int] | None = None,
) -> int:
    """The depth of the tree under ``root``, walked with a loop; stops counting past ``limit``
    (so a tree of any depth costs at most its size). With ``key``, a node's depth is
    ``key(node)`` (for trees whose edges weigh more than one) instead of its level."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, level = stack.pop()
        depth = key(node) if key is not None else level
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, level + 1) for child in children(node))
    return deepest


def excerpt(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut short when long (an error never echoes a megabyte)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"
