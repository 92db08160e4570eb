"""Bundles the service serves, and reloading them: validate first, swap only when valid.

A ``ServedBundle`` remembers how a bundle was named on the command line (a path or a shipped
name, with its ``--set`` overrides) and which files it was read from, so that a SIGHUP or a
changed file loads it again. A new version replaces the running one only when it compiles
without a problem and keeps the bundle's name (the route, the spool and the dead letters
are keyed by it); otherwise the old one keeps serving and every problem is logged at its
``file:line:col``.

Watched files: the bundle file and the other YAML files in its folder (an overlay and the
file it extends live together); a change anywhere else (a shipped bundle it extends, the
environment) is picked up on SIGHUP. A change is acted on once the files have stayed the same
for one more look, so a file being written is not read halfway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moerules.engine.api import load_bundle, resolve_bundle
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.errors import Position, Problem, RuleError
from moerules.engine.service.logs import LOGGER, log_event

__all__ = ["ServedBundle", "load_served"]

_log = logging.getLogger(LOGGER)


@dataclass
class ServedBundle:
    """One bundle of the service: where it comes from and the version that serves."""

    ref: str
    sets: list[str]
    path: Path
    compiled: CompiledBundle
    env: Mapping[str, str] | None = None
    stamps: dict[Path, tuple[int, int]] = field(default_factory=dict)
    on_swap: list[Callable[[CompiledBundle], None]] = field(default_factory=list)
    _settling: dict[Path, tuple[int, int]] | None = None  # seen changed once, not yet settled

    @property
    def name(self) -> str:
        return self.compiled.model.bundle

    def watched(self) -> list[Path]:
        folder = self.path.parent
        files = {self.path}
        with contextlib.suppress(OSError):  # the folder went away: the file alone
            files.update(
                p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        return sorted(files)

    def stamp(self) -> dict[Path, tuple[int, int]]:
        """(mtime ns, size) of every watched file; a missing file has none."""
        out: dict[Path, tuple[int, int]] = {}
        for path in self.watched():
            try:
                st = path.stat()
            except OSError:
                continue
            out[path] = (st.st_mtime_ns, st.st_size)
        return out

    def changed(self) -> bool:
        """True once the watched files changed and then stayed the same for one more look:
        an editor that writes a file in several steps is not caught halfway."""
        stamps = self.stamp()
        if stamps == self.stamps:
            self._settling = None
            return False
        if stamps != self._settling:
            self._settling = stamps
            return False
        self.stamps = stamps
        self._settling = None
        return True

    def reload(self, why: str) -> bool:
        """Load the bundle again; swap it in when valid. True when swapped."""
        self.stamps = self.stamp()
        try:
            compiled = load_bundle(self.path, self.sets, env=self.env)
        except RuleError as exc:
            _reject(self.name, self.path, why, exc.problems)
            return False
        if compiled.model.bundle != self.name:
            _reject(
                self.name,
                self.path,
                why,
                [
                    Problem(
                        Position(str(self.path)),
                        f"the bundle is named {compiled.model.bundle!r} now; "
                        f"the service serves it as {self.name!r} (its route, spool and dead "
                        "letters are keyed by the name): restart the service to rename it",
                    )
                ],
            )
            return False
        if compiled.missing_env:
            _reject(
                self.name,
                self.path,
                why,
                [
                    Problem(
                        Position(str(self.path)),
                        "these environment variables are not set: "
                        + ", ".join(compiled.missing_env),
                    )
                ],
            )
            return False
        self.compiled = compiled
        for callback in self.on_swap:
            callback(compiled)
        log_event(_log, "reloaded", bundle=self.name, file=str(self.path), trigger=why)
        return True


def _reject(name: str, path: Path, why: str, problems: Sequence[Problem]) -> None:
    log_event(
        _log,
        "reload rejected",
        logging.ERROR,
        bundle=name,
        file=str(path),
        trigger=why,
        problems=[str(p) for p in problems],
        note="the previous version keeps serving",
    )
    for problem in problems:  # one line each too, so `grep file:line` finds it
        log_event(_log, str(problem), logging.ERROR, bundle=name)


def load_served(
    ref: str, sets: Sequence[str], env: Mapping[str, str] | None = None
) -> ServedBundle:
    """A bundle for the service; RuleError as ``moerules run`` reports it."""
    path = resolve_bundle(ref)
    compiled = load_bundle(path, sets, env=env)
    served = ServedBundle(ref, list(sets), path, compiled, env)
    served.stamps = served.stamp()
    return served
