"""The engine's Python API; the CLI is a thin layer over these functions.

>>> from moerules.engine.api import load_bundle, dry_run
>>> compiled = load_bundle("mparticle-to-moengage")          # doctest: +SKIP
>>> report = dry_run(compiled, ["input.jsonl"], sys.stdout.buffer)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
from moerules.engine.compile.compiler import CompiledBundle, compile_bundle
from moerules.engine.connector import WireRequest
from moerules.engine.errors import Position, Problem, RuleError
from moerules.engine.rules.loading import LDict, load_yaml, top_level_keys
from moerules.engine.rules.overlay import BUNDLE_FILE, apply_sets, find_bundle, load_bundle_document
from moerules.engine.rules.validation import did_you_mean
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.pipeline import Pipeline
from moerules.engine.runtime.report import RunReport

__all__ = [
    "collect_rule_files",
    "dry_run",
    "iter_lines",
    "load_bundle",
    "request_json",
    "resolve_bundle",
    "validate_paths",
]


def resolve_bundle(ref: str) -> Path:
    """A bundle file from a path or a shipped name; RuleError naming the alternatives if not."""
    path = find_bundle(ref)
    if path is None:
        from moerules.engine.rules.overlay import shipped_bundles

        hint = did_you_mean(ref, shipped_bundles())
        raise RuleError([Problem(Position(ref), f"no bundle file or shipped bundle named "
                                 f"{ref!r}{hint}; `moerules bundles` lists the shipped ones")])
    return path


def load_bundle(ref: str | Path, sets: Iterable[str] = (), *, trace: bool = False,
                env: Mapping[str, str] | None = None, text: str | None = None
                ) -> CompiledBundle:
    """Load, overlay, override and compile a bundle; RuleError lists every problem.

    ``text`` stands for the bundle file's content (an unsaved edit).
    """
    path = ref if isinstance(ref, Path) else resolve_bundle(ref)
    doc = load_bundle_document(path, text=text)
    sets = list(sets)
    if sets:
        doc = apply_sets(doc, sets)
    return compile_bundle(doc, trace=trace, env=env)


def collect_rule_files(paths: Iterable[str]) -> tuple[list[Path], list[Path], list[Problem]]:
    """Bundle files and test files under ``paths`` (files, directories or shipped names).

    In a directory, ``bundle.yaml`` files are bundles and YAML files in a ``tests`` folder are
    test files; any other YAML file is parsed (capped, depth-bounded, no values built) and is
    a bundle when its top-level mapping has ``bundle`` or ``extends``, a test file when it has
    ``cases``. A file that cannot be parsed is reported, since it may be a bundle. Symbolic
    links to folders are not followed (a link cycle cannot make the walk endless).
    """
    bundles: list[Path] = []
    tests: list[Path] = []
    problems: list[Problem] = []
    for ref in paths:
        path = Path(ref)
        if path.is_dir():
            files = sorted(_yaml_files(path))
        elif path.is_file():
            files = [path]
        else:
            shipped = find_bundle(ref)
            if shipped is not None:
                files = [shipped, *sorted((shipped.parent / "tests").glob("*.y*ml"))]
            else:
                problems.append(Problem(Position(ref), "no such file, directory or shipped "
                                                       "bundle"))
                continue
        for file in files:
            try:
                kind = _kind(file)
            except RuleError as exc:
                problems += exc.problems
                continue
            if kind == "bundle":
                bundles.append(file)
            elif kind == "tests":
                tests.append(file)
    return bundles, tests, problems


def _yaml_files(folder: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            file = Path(root, name)
            if file.suffix in (".yaml", ".yml") and file.is_file():
                yield file


def _kind(path: Path) -> str | None:
    if path.name == BUNDLE_FILE:
        return "bundle"
    if path.parent.name == "tests":
        return "tests"
    keys = top_level_keys(path)
    if "bundle" in keys or "extends" in keys:
        return "bundle"
    if "cases" in keys:
        return "tests"
    return None


def validate_paths(paths: Iterable[str], *, warnings: bool = False
                   ) -> tuple[int, list[Problem]]:
    """Validate every bundle and test file under ``paths``; (files checked, problems).

    With ``warnings``, the problems also hold warnings (``severity == "warning"``): rule paths
    the source's records never contain (``engine/authoring/path_checks.py``).
    """
    from moerules.engine.authoring.testing import load_test_file

    bundles, tests, problems = collect_rule_files(paths)
    for path in bundles:
        try:
            raw = load_bundle_document(path)
            compiled = compile_bundle(raw)
        except RuleError as exc:
            problems += exc.problems
            continue
        if warnings:
            from moerules.engine.authoring.path_checks import record_path_warnings

            problems += record_path_warnings(raw, compiled)
    for path in tests:
        try:
            load_test_file(path)
        except RuleError as exc:
            problems += exc.problems
    return len(bundles) + len(tests), problems


_READ = 1 << 20  # bytes a read asks for: lines are cut from blocks, not read one by one


def iter_lines(source: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every non-blank line of a file, or of stdin for ``-``.

    Each line keeps its ``\n``, as file iteration gives it. The input is read in blocks
    (``read1``: whatever is available, so a pipe's lines come as they arrive) and cut at
    each newline, which costs less than a read per line.
    """
    stream: IO[bytes] = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    read = getattr(stream, "read1", stream.read)
    number = 0
    head: list[bytes] = []  # the start of a line that began in earlier blocks
    try:
        while block := read(_READ):
            find = block.find
            end = find(b"\n")
            if end < 0:
                head.append(block)
                continue
            start = 0
            if head:  # finish the line the earlier blocks began
                head.append(block[:end + 1])
                number += 1
                line = b"".join(head)
                head = []
                if not line.isspace():
                    yield number, line
                start = end + 1
                end = find(b"\n", start)
            while end >= 0:
                number += 1
                line = block[start:end + 1]
                start = end + 1
                if not line.isspace():  # not blank (no stripped copy of every line)
                    yield number, line
                end = find(b"\n", start)
            if start < len(block):
                head.append(block[start:])
        last = b"".join(head)
        if last and not last.isspace():  # the last line, without a final newline
            yield number + 1, last
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def request_json(request: WireRequest, secret_headers: frozenset[str],
                 secrets: frozenset[str] = frozenset()) -> bytes:
    """One dry-run output line: method, url, redacted headers and the body, as JSON."""
    head = orjson.dumps({"method": request.method, "url": request.url,
                         "headers": request.redacted_headers(secret_headers)})
    line = head[:-1] + b',"body":' + request.body + b"}\n"
    for secret in secrets:
        line = line.replace(secret.encode(), b"***")
    return line


_GC_YOUNG = 20_000  # allocations between young-generation collections during a dry run


def dry_run(compiled: CompiledBundle, lines: Iterable[tuple[int, bytes]], out: IO[bytes],
            *, dead_letter: Path | None = None, report: RunReport | None = None) -> RunReport:
    """Map every line and write the requests that would be sent; nothing goes on the wire."""
    report = report or RunReport(bundle=compiled.model.bundle, dry_run=True)
    dead = DeadLetterWriter(dead_letter, compiled.model.bundle, compiled.secrets)
    pipeline = Pipeline(compiled, report, dead)
    secret_headers = compiled.sink.secret_headers
    started = time.perf_counter()
    write = out.write
    # Every record allocates dozens of containers and creates no reference cycles, so the
    # cyclic collector's frequent young-generation passes find nothing; run them less often.
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], _GC_YOUNG), *threshold[1:])
    try:
        for request in pipeline.run(iter(lines)):
            report.requests += 1
            report.request_bytes += len(request.body)
            write(request_json(request, secret_headers, compiled.secrets))
    finally:
        gc.set_threshold(*threshold)
        dead.close()
        report.elapsed_seconds = time.perf_counter() - started
    if compiled.missing_env:
        report.warnings.append("not set, shown as placeholders: " + ", ".join(
            compiled.missing_env))
    return report


def load_document(path: Path) -> Any:
    """A YAML file as LDict/LList data (test files, overlays)."""
    doc = load_yaml(path)
    if not isinstance(doc, LDict):
        raise RuleError([Problem(getattr(doc, "pos", Position(str(path))),
                                 "expected a mapping at the top of the file")])
    return doc
