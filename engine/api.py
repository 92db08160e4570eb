"""The engine's Python API; the CLI is a thin layer over these functions.

>>> from moerules.engine.api import load_bundle, dry_run
>>> compiled = load_bundle("mparticle-to-moengage")          # doctest: +SKIP
>>> report = dry_run(compiled, ["input.jsonl"], sys.stdout.buffer)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
from moerules.engine.compile.compiler import CompiledBundle, compile_bundle
from moerules.engine.connector import WireRequest, connector_names, load_connector
from moerules.engine.errors import InputError, Position, Problem, RuleError
from moerules.engine.rules.loading import LDict, load_yaml, top_level_keys
from moerules.engine.rules.overlay import BUNDLE_FILE, apply_sets, find_bundle, load_bundle_document
from moerules.engine.rules.validation import did_you_mean
from moerules.engine.runtime.cohorts import feed_for
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.input import (
    DEFAULT_MAX_LINE_BYTES,
    LineCutter,
    LongLine,
    open_input,
    read_error,
)
from moerules.engine.runtime.report import RunReport
from moerules.engine.secrets import MIN_SECRET_LENGTH, Scrubber, scrubber

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
        raise RuleError(
            [
                Problem(
                    Position(ref),
                    f"no bundle file or shipped bundle named "
                    f"{ref!r}{hint}; `moerules bundles` lists the shipped ones",
                )
            ]
        )
    return path


def load_bundle(
    ref: str | Path,
    sets: Iterable[str] = (),
    *,
    trace: bool = False,
    env: Mapping[str, str] | None = None,
    text: str | None = None,
) -> CompiledBundle:
    """Load, overlay, override and compile a bundle; RuleError lists every problem.

    ``text`` stands for the bundle file's content (an unsaved edit). A problem never shows a
    secret: one given by ``--set`` (``destination.data_api_key=...``) or taken from the
    environment for a secret setting is ``***`` in every message.
    """
    path = ref if isinstance(ref, Path) else resolve_bundle(ref)
    doc = load_bundle_document(path, text=text)
    sets = list(sets)
    try:
        if sets:
            doc = apply_sets(doc, sets)
        return compile_bundle(doc, trace=trace, env=env)
    except RuleError as exc:
        scrub = scrubber(_secrets_given(doc, sets, os.environ if env is None else env))
        if not scrub:
            raise
        raise RuleError(
            [
                Problem(
                    Position(scrub(p.position.path), p.position.line, p.position.col),
                    scrub(p.message),
                )
                for p in exc.problems
            ]
        ) from None


def _secret_setting_names(connector: Any) -> frozenset[str]:
    """The secret settings of the connector named ``connector`` (none if there is none)."""
    from moerules.engine.rules.settings import secret_fields, settings_model_of

    cls = load_connector(connector) if isinstance(connector, str) else None
    if cls is None:
        return frozenset()
    declared: frozenset[str] = getattr(cls, "secret_settings", frozenset())
    return declared | secret_fields(settings_model_of(cls))


def _secrets_given(doc: Any, sets: list[str], env: Mapping[str, str]) -> set[str]:
    """The secret values a bundle that did not compile was given: ``--set`` values of secret
    settings (of any connector: the bundle's may be the thing that is wrong), and the
    environment's values for the bundle's secret settings."""
    every = frozenset().union(*(_secret_setting_names(n) for n in connector_names()))
    found: set[str] = set()
    for item in sets:
        key, _, text = item.partition("=")
        if key.rsplit(".", 1)[-1] in every and text.strip():
            found |= {text, text.strip(), text.strip().strip("'\"")}
    for role in ("source", "destination"):
        part = doc.get(role) if isinstance(doc, Mapping) else None
        if not isinstance(part, Mapping) or not isinstance(part.get("settings"), Mapping):
            continue
        settings = part["settings"]
        for key in _secret_setting_names(part.get("connector")) & set(settings):
            value = str(settings[key])
            names = re.findall(r"\$\{(\w+)\}", value)
            found |= {env[name] for name in names if name in env} if names else {value}
    return {value for value in found if len(value) >= MIN_SECRET_LENGTH}


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
                problems.append(Problem(Position(ref), "no such file, directory or shipped bundle"))
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


def validate_paths(paths: Iterable[str], *, warnings: bool = False) -> tuple[int, list[Problem]]:
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


def iter_lines(
    source: str | IO[bytes],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[int, bytes | LongLine]]:
    """(line number, line) for every non-blank line of a file, of stdin for ``-``, or of an
    open binary stream.

    Each line keeps its ``\n``, as file iteration gives it. The input is read in blocks
    (``read1``: whatever is available, so a pipe's lines come as they arrive) and cut by a
    :class:`LineCutter`: a line over ``max_line_bytes`` comes as a :class:`LongLine` (its
    excerpt), never whole; a UTF-8 BOM at the start is skipped. InputError when the input
    cannot be opened or a read fails.
    """
    name = source if isinstance(source, str) else getattr(source, "name", "input")
    stream: IO[bytes] = open_input(source) if isinstance(source, str) else source
    read = getattr(stream, "read1", stream.read)
    cutter = LineCutter(max_line_bytes)
    feed = cutter.feed
    number = 0
    offset = 0
    try:
        while True:
            try:
                block = read(_READ)
            except OSError as exc:
                raise read_error(str(name), exc, offset) from None
            if not block:
                break
            offset += len(block)
            for line in feed(block):
                number += 1
                # not blank (no stripped copy of every line); a long line always counts
                if line.__class__ is not bytes or not line.isspace():
                    yield number, line
        for line in cutter.end():
            if line.__class__ is not bytes or not line.isspace():
                yield number + 1, line
    finally:
        if isinstance(source, str) and stream is not sys.stdin.buffer:
            stream.close()


def request_json(
    request: WireRequest,
    secret_headers: frozenset[str],
    secrets: frozenset[str] | Scrubber = frozenset(),
) -> bytes:
    """One dry-run output line: method, url, redacted headers and the body, as JSON.

    Every form of a secret (``secrets``, or their scrubber) anywhere in the line is ``***``.
    """
    head = orjson.dumps(
        {
            "method": request.method,
            "url": request.url,
            "headers": request.redacted_headers(secret_headers),
        }
    )
    line = head[:-1] + b',"body":' + request.body + b"}\n"
    scrub = secrets if isinstance(secrets, Scrubber) else scrubber(secrets)
    return scrub.bytes(line)


_GC_YOUNG = 20_000  # allocations between young-generation collections during a dry run


def dry_run(
    compiled: CompiledBundle,
    lines: Iterable[tuple[int, bytes | LongLine]],
    out: IO[bytes],
    *,
    dead_letter: Path | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Map every line and write the requests that would be sent; nothing goes on the wire.

    ``dead_letter`` receives this run's dead letters only: a file left by an earlier dry run
    is emptied first, so the file and the report always describe the same run. A read that
    fails part-way stops the run there: what was read is mapped and written, and the report
    says where it stopped (``interrupted``).
    """
    report = report or RunReport(bundle=compiled.model.bundle, dry_run=True)
    if dead_letter is not None and dead_letter.is_file():
        dead_letter.open("wb").close()
    dead = DeadLetterWriter(dead_letter, compiled.model.bundle, compiled.secrets)
    pipeline = feed_for(compiled, report, dead, dry_run=True)
    secret_headers = compiled.sink.secret_headers
    scrub = dead.scrub
    started = time.perf_counter()
    write = out.write
    # Every record allocates dozens of containers and creates no reference cycles, so the
    # cyclic collector's frequent young-generation passes find nothing; run them less often.
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], _GC_YOUNG), *threshold[1:])
    try:
        for request in pipeline.run(_until_read_fails(lines, report)):
            report.requests += 1
            report.request_bytes += len(request.body)
            write(request_json(request, secret_headers, scrub))
    finally:
        gc.set_threshold(*threshold)
        dead.close()
        if hasattr(pipeline, "close"):  # a cohort flow's membership state
            pipeline.close()
        report.elapsed_seconds = time.perf_counter() - started
    if compiled.missing_env:
        report.warnings.append("not set, shown as placeholders: " + ", ".join(compiled.missing_env))
    return report


def _until_read_fails(
    lines: Iterable[tuple[int, bytes | LongLine]], report: RunReport
) -> Iterator[tuple[int, bytes | LongLine]]:
    try:
        yield from lines
    except InputError as exc:
        report.interrupted = True
        report.warnings.append(str(exc))


def load_document(path: Path) -> Any:
    """A YAML file as LDict/LList data (test files, overlays)."""
    doc = load_yaml(path)
    if not isinstance(doc, LDict):
        raise RuleError(
            [
                Problem(
                    getattr(doc, "pos", Position(str(path))),
                    "expected a mapping at the top of the file",
                )
            ]
        )
    return doc
